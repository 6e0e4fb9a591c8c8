"""Event-driven discovery: S3 "Object Created" notifications delivered through SQS.

Plain Python with no Dagster import; the SQS sensor in :mod:`imageml_assets` is a thin
wrapper around :func:`consume_once`.

Accepted message bodies (what S3 and EventBridge put on a queue):

- S3 event notifications: ``{"Records": [{"eventSource": "aws:s3", "eventName":
  "ObjectCreated:Put", "s3": {"bucket": {"name": ...}, "object": {"key": ...}}}]}``. Keys
  are URL-encoded with spaces as ``+`` and are decoded here. The ``s3:TestEvent`` S3 sends
  when a notification is configured is ignored.
- The same wrapped in an SNS envelope (S3 -> SNS -> SQS without raw message delivery):
  ``{"Type": "Notification", "TopicArn": ..., "Message": "<the S3 event as a string>"}``.
- EventBridge events: ``{"source": "aws.s3", "detail-type": "Object Created", "detail":
  {"bucket": {"name": ...}, "object": {"key": ...}}}``; keys are not URL-encoded there.

Events that are valid but not about a new object (ObjectRemoved, Object Deleted, restores)
parse to ``[]``. Anything else raises :class:`UnrecognizedEvent` with the reason.

Delivery is at-least-once, and :func:`consume_once` keeps it that way end to end:
receive -> parse -> plan (manifest store) -> hand batches to the caller -> delete. Messages
are deleted only after the caller took the batches; if anything before that fails, nothing
is deleted and SQS redelivers after the visibility timeout. Redelivered and duplicated
events are harmless: the manifest store decides what is new by (URI, ETag), and batches
planned earlier but not yet published are handed over again (their run key makes Dagster
skip a run already launched). Poison-message rule: a message that does not parse is
logged with its reason, reported in :class:`ConsumeResult` and deleted in the same pass,
so it cannot loop forever; anything it announced is still found by the polling sensor's
periodic full scan.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

import boto3
from botocore.config import Config

from imageml_core.discovery import PlannedBatch, group_into_batches, is_candidate
from imageml_core.manifest import INGEST, BatchMember, ManifestStore, ObjectVersion
from imageml_core.object_store import ObjectInfo
from imageml_core.uris import S3Uri

log = logging.getLogger(__name__)

SQS_BATCH = 10  # ReceiveMessage and DeleteMessageBatch take at most 10 messages
_SQS_REGION_RE = re.compile(r"sqs[.-]([a-z0-9-]+)\.amazonaws\.com")


class UnrecognizedEvent(ValueError):
    """A message body that is not an S3/EventBridge object event (or an SNS envelope of one)."""


@dataclass(frozen=True)
class ObjectCreated:
    """One "object created" event. ``key`` is decoded; ``etag`` is without quotes.

    ``size`` is in bytes. ``sequencer`` is S3's per-key ordering token (hex, compare with
    :func:`sequencer_newer`); ``event_time`` is timezone-aware UTC when the event had one.
    """

    bucket: str
    key: str
    etag: str
    size: int
    sequencer: str | None = None
    event_time: datetime | None = None
    version_id: str | None = None

    @property
    def uri(self) -> S3Uri:
        return S3Uri(self.bucket, self.key)


# --------------------------------------------------------------------------- parsing
def parse_message(body: str) -> list[ObjectCreated]:
    """The "object created" events in one SQS message body, in the order they appear.

    Returns ``[]`` for S3 test events and for S3 events of other kinds; raises
    :class:`UnrecognizedEvent` for anything that is not an S3 or EventBridge S3 event.
    """
    return _parse_document(_load_json(body, "message body"), in_sns=False)


def _load_json(text: Any, what: str) -> Any:
    if not isinstance(text, str):
        raise UnrecognizedEvent(f"{what} is {type(text).__name__}, not a JSON string")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UnrecognizedEvent(f"{what} is not JSON ({exc}): {text[:80]!r}") from None


def _parse_document(doc: Any, *, in_sns: bool) -> list[ObjectCreated]:
    if not isinstance(doc, dict):
        raise UnrecognizedEvent(f"expected a JSON object, got {type(doc).__name__}")
    if "TopicArn" in doc and "Type" in doc:
        if in_sns:
            raise UnrecognizedEvent("SNS envelope nested inside an SNS envelope")
        if doc["Type"] != "Notification":
            raise UnrecognizedEvent(
                f"SNS {doc['Type']} message, not a notification "
                "(confirm the subscription or enable raw message delivery)"
            )
        return _parse_document(_load_json(doc.get("Message"), "SNS Message"), in_sns=True)
    if doc.get("Event") == "s3:TestEvent":
        return []
    if "Records" in doc:
        records = doc["Records"]
        if not isinstance(records, list):
            raise UnrecognizedEvent("'Records' is not a list")
        out: list[ObjectCreated] = []
        for i, record in enumerate(records):
            event = _parse_s3_record(record, f"Records[{i}]")
            if event is not None:
                out.append(event)
        return out
    if "detail-type" in doc and "source" in doc:
        return _parse_eventbridge(doc)
    keys = ", ".join(sorted(map(str, doc))[:8]) or "none"
    raise UnrecognizedEvent(
        "not an S3 event notification, an EventBridge S3 event, or an SNS envelope of one "
        f"(top-level keys: {keys})"
    )


def _field(obj: Any, name: str, where: str) -> Any:
    if not isinstance(obj, dict) or name not in obj:
        raise UnrecognizedEvent(f"{where}: missing {name!r}")
    return obj[name]


def _text(obj: Any, name: str, where: str) -> str:
    value = _field(obj, name, where)
    if not isinstance(value, str) or not value:
        raise UnrecognizedEvent(f"{where}.{name}: expected a non-empty string, got {value!r}")
    return value


def _size(obj: Any, where: str) -> int:
    value = _field(obj, "size", where)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UnrecognizedEvent(f"{where}.size: expected bytes >= 0, got {value!r}")
    return value


def _optional_text(obj: Mapping[str, Any], name: str) -> str | None:
    value = obj.get(name)
    return value if isinstance(value, str) and value else None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _parse_s3_record(record: Any, where: str) -> ObjectCreated | None:
    if not isinstance(record, dict):
        raise UnrecognizedEvent(f"{where}: expected an object, got {type(record).__name__}")
    source = record.get("eventSource")
    if source != "aws:s3":
        raise UnrecognizedEvent(f"{where}: eventSource {source!r} is not 'aws:s3'")
    name = _text(record, "eventName", where)
    if not name.startswith("ObjectCreated:"):
        return None  # ObjectRemoved, ObjectRestore, ... : nothing new to ingest
    s3 = _field(record, "s3", where)
    obj = _field(s3, "object", f"{where}.s3")
    return ObjectCreated(
        bucket=_text(_field(s3, "bucket", f"{where}.s3"), "name", f"{where}.s3.bucket"),
        key=unquote_plus(_text(obj, "key", f"{where}.s3.object")),
        etag=_text(obj, "eTag", f"{where}.s3.object").strip('"'),
        size=_size(obj, f"{where}.s3.object"),
        sequencer=_optional_text(obj, "sequencer"),
        event_time=_time(record.get("eventTime")),
        version_id=_optional_text(obj, "versionId"),
    )


def _parse_eventbridge(doc: dict[str, Any]) -> list[ObjectCreated]:
    if doc["source"] != "aws.s3":
        raise UnrecognizedEvent(f"EventBridge event from {doc['source']!r}, not 'aws.s3'")
    if doc["detail-type"] != "Object Created":
        return []  # Object Deleted, Object Restore Completed, ...
    detail = _field(doc, "detail", "event")
    obj = _field(detail, "object", "detail")
    return [
        ObjectCreated(
            bucket=_text(_field(detail, "bucket", "detail"), "name", "detail.bucket"),
            key=_text(obj, "key", "detail.object"),  # not URL-encoded in EventBridge events
            etag=_text(obj, "etag", "detail.object").strip('"'),
            size=_size(obj, "detail.object"),
            sequencer=_optional_text(obj, "sequencer"),
            event_time=_time(doc.get("time")),
            version_id=_optional_text(obj, "version-id"),
        )
    ]


def sequencer_newer(a: str, b: str) -> bool:
    """True if sequencer ``a`` is later than ``b`` (same key only).

    S3's rule: right-pad the shorter hex string with zeros, then compare lexicographically.
    """
    width = max(len(a), len(b))
    return a.upper().ljust(width, "0") > b.upper().ljust(width, "0")


def _supersedes(new: ObjectCreated, old: ObjectCreated) -> bool:
    """Whether ``new`` describes a later state of the key than ``old``."""
    if new.sequencer and old.sequencer:
        return sequencer_newer(new.sequencer, old.sequencer)
    if new.event_time and old.event_time and new.event_time != old.event_time:
        return new.event_time > old.event_time
    return False  # no way to order them: keep the first seen


# --------------------------------------------------------------------------- planning
@dataclass
class EventPlan:
    """What planning one poll's events did; ``batches`` are new, ``resent`` planned earlier."""

    batches: list[PlannedBatch] = field(default_factory=list)
    resent: list[PlannedBatch] = field(default_factory=list)
    events: int = 0
    not_under_prefix: int = 0
    not_candidates: int = 0  # hidden files and folder markers, as the polling path skips
    duplicates_dropped: int = 0  # same key twice in the poll (duplicate or superseded)
    already_known: int = 0  # processed by ingest or already in a planned batch
    new_objects: int = 0


def plan_events(
    events: Iterable[ObjectCreated],
    objects_under: S3Uri,
    manifest: ManifestStore,
    *,
    max_objects: int,
    max_bytes: int,
    source: str = "event",
) -> EventPlan:
    """Plan the objects these events announce into ingest batches, with counts.

    Keeps events for keys under ``objects_under`` (same rule as a listing of its prefix),
    keeps one event per key (highest sequencer: delivery can be out of order), drops
    (URI, ETag) versions the manifest store already processed or planned, and records the
    rest as batches with ``manifest.plan_batch(..., source)``. Batches planned earlier that
    hold one of these versions and are not yet published are returned in ``resent``, so a
    crash between planning and launching is healed by the redelivered message.
    """
    plan = EventPlan()
    latest: dict[tuple[str, str], ObjectCreated] = {}
    for event in events:
        plan.events += 1
        if event.bucket != objects_under.bucket or not event.key.startswith(objects_under.prefix):
            plan.not_under_prefix += 1
            continue
        info = ObjectInfo(event.uri, event.etag, event.size, event.event_time)
        if not is_candidate(info):
            plan.not_candidates += 1
            continue
        slot = (event.bucket, event.key)
        previous = latest.get(slot)
        if previous is not None:
            plan.duplicates_dropped += 1
            if not _supersedes(event, previous):
                continue
        latest[slot] = event

    chosen = list(latest.values())
    versions = [ObjectVersion(str(e.uri), e.etag) for e in chosen]
    processed = manifest.processed_among(INGEST, versions)
    planned = manifest.planned_among(versions)
    known = processed | planned
    fresh = [e for e, v in zip(chosen, versions, strict=True) if v not in known]
    plan.new_objects = len(fresh)
    plan.already_known = len(chosen) - len(fresh)

    members = [BatchMember(str(e.uri), e.etag, e.size) for e in fresh]
    plan.batches = group_into_batches(members, max_objects=max_objects, max_bytes=max_bytes)
    for batch in plan.batches:
        manifest.plan_batch(batch.batch_id, batch.members, source)
    plan.resent = _unpublished_batches_with(
        manifest, planned - processed, exclude={b.batch_id for b in plan.batches}
    )
    return plan


def plan_from_events(
    events: Iterable[ObjectCreated],
    objects_under: S3Uri,
    manifest: ManifestStore,
    max_objects: int,
    max_bytes: int,
    source: str = "event",
) -> list[PlannedBatch]:
    """The batches to launch for these events: newly planned ones, then resent ones.

    See :func:`plan_events` for the rules and the counts.
    """
    plan = plan_events(
        events,
        objects_under,
        manifest,
        max_objects=max_objects,
        max_bytes=max_bytes,
        source=source,
    )
    return plan.batches + plan.resent


def _unpublished_batches_with(
    manifest: ManifestStore, versions: set[ObjectVersion], *, exclude: set[str]
) -> list[PlannedBatch]:
    """Unpublished ingest batches holding any of ``versions`` (planned, not processed).

    Costs one query per unpublished batch until all versions are found; only runs when a
    poll saw events for objects in flight, which is rare outside redelivery.
    """
    if not versions:
        return []
    remaining = set(versions)
    found: list[PlannedBatch] = []
    for batch_id in manifest.unpublished_batch_ids(INGEST):
        if batch_id in exclude:
            continue
        members = manifest.batch_members(batch_id)
        hits = {ObjectVersion(m.uri, m.etag) for m in members} & remaining
        if hits:
            found.append(PlannedBatch(batch_id, tuple(members)))
            remaining -= hits
            if not remaining:
                break
    return found


# --------------------------------------------------------------------------- SQS
@dataclass(frozen=True)
class ReceivedMessage:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int = 1  # ApproximateReceiveCount: > 1 means a redelivery


@dataclass(frozen=True)
class DeleteFailure:
    message_id: str
    code: str
    reason: str
    sender_fault: bool


@dataclass
class DeleteReport:
    deleted: int = 0
    failed: list[DeleteFailure] = field(default_factory=list)


class SqsEventSource:
    """A queue of S3/EventBridge events, read through a boto3 SQS client.

    ``endpoint_url`` empty means AWS (region then defaults to the one in the queue URL);
    anything else is an SQS-compatible server (moto, LocalStack, ElasticMQ).
    """

    def __init__(
        self,
        queue_url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        max_attempts: int = 5,
        client: Any = None,
    ) -> None:
        if not queue_url:
            raise ValueError("an SQS queue URL is required")
        self.queue_url = queue_url
        self.endpoint_url = endpoint_url or None
        match = _SQS_REGION_RE.search(queue_url)
        self.region = region or (match.group(1) if match else "us-east-1")
        self.client = client or boto3.client(
            "sqs",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=Config(retries={"max_attempts": max(1, max_attempts), "mode": "standard"}),
        )

    def __repr__(self) -> str:
        return f"SqsEventSource({self.queue_url!r})"

    def receive(
        self, max_messages: int = 100, wait_seconds: int = 0, visibility_timeout: int = 300
    ) -> list[ReceivedMessage]:
        """Up to ``max_messages`` messages, hidden from other consumers for
        ``visibility_timeout`` seconds.

        Calls ReceiveMessage in batches of 10. Only the first call long-polls (up to
        ``wait_seconds``); the loop stops at the first empty answer, so a tick never waits
        longer than ``wait_seconds`` for an empty queue. A message seen twice in one pass
        (visibility expired meanwhile) is returned once, with its latest receipt handle.
        """
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        if not 0 <= wait_seconds <= 20:
            raise ValueError(f"wait_seconds must be 0-20 (SQS limit), got {wait_seconds}")
        if not 0 <= visibility_timeout <= 43200:
            raise ValueError(f"visibility_timeout must be 0-43200 s, got {visibility_timeout}")
        received: dict[str, ReceivedMessage] = {}
        wait = wait_seconds
        while len(received) < max_messages:
            resp = self.client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(SQS_BATCH, max_messages - len(received)),
                WaitTimeSeconds=wait,
                VisibilityTimeout=visibility_timeout,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
            batch = resp.get("Messages", [])
            if not batch:
                break
            for m in batch:
                count = m.get("Attributes", {}).get("ApproximateReceiveCount", "1")
                received[m["MessageId"]] = ReceivedMessage(
                    m["MessageId"], m["ReceiptHandle"], m.get("Body", ""), int(count)
                )
            wait = 0
        return list(received.values())

    def delete(self, messages: Sequence[ReceivedMessage]) -> DeleteReport:
        """Delete ``messages`` with DeleteMessageBatch, 10 at a time; failures are reported.

        A message that failed to delete is redelivered later and deduplicated by the
        manifest store, so failures are logged, not raised.
        """
        report = DeleteReport()
        for start in range(0, len(messages), SQS_BATCH):
            chunk = messages[start : start + SQS_BATCH]
            entries = [
                {"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(chunk)
            ]
            resp = self.client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            report.deleted += len(resp.get("Successful", []))
            for failure in resp.get("Failed", []):
                message = chunk[int(failure["Id"])]
                report.failed.append(
                    DeleteFailure(
                        message.message_id,
                        failure.get("Code", ""),
                        failure.get("Message", ""),
                        bool(failure.get("SenderFault", False)),
                    )
                )
        for f in report.failed:
            log.warning("could not delete SQS message %s: %s %s", f.message_id, f.code, f.reason)
        return report


# --------------------------------------------------------------------------- consuming
@dataclass
class ConsumeResult:
    """What one :func:`consume_once` pass did."""

    messages: int = 0
    redelivered: int = 0  # messages received before (ApproximateReceiveCount > 1)
    events: int = 0
    ignored_messages: int = 0  # parsed, but held no "object created" event (test events...)
    duplicates_dropped: int = 0
    not_under_prefix: int = 0
    not_candidates: int = 0
    already_known: int = 0
    new_objects: int = 0
    planned: list[PlannedBatch] = field(default_factory=list)
    resent: list[PlannedBatch] = field(default_factory=list)
    unrecognized: list[tuple[str, str]] = field(default_factory=list)  # (message id, reason)
    deleted: int = 0
    delete_failures: list[DeleteFailure] = field(default_factory=list)
    received: list[ReceivedMessage] = field(default_factory=list)  # for a deferred delete

    @property
    def batches(self) -> int:
        """Newly planned batches (``resent`` ones are not counted)."""
        return len(self.planned)


def consume_once(
    source: SqsEventSource,
    manifest: ManifestStore,
    raw_uri: S3Uri,
    max_objects: int,
    max_bytes: int,
    on_batches: Callable[[list[PlannedBatch]], None],
    max_messages: int = 100,
    *,
    wait_seconds: int = 0,
    visibility_timeout: int = 300,
    plan_source: str = "event",
    delete: bool = True,
) -> ConsumeResult:
    """One poll: receive, parse, plan, ``on_batches(new + resent)``, then delete.

    ``on_batches`` is called only when there is a batch to launch (the SQS sensor emits
    its run requests there). Messages are deleted only after it returned: if it, the
    planning or the manifest store raises, nothing is deleted and the messages come back
    after ``visibility_timeout`` seconds. Unparseable messages are deleted in the same
    pass and reported in ``unrecognized`` (poison-message rule, see the module docstring).
    ``visibility_timeout`` must cover the whole pass, or another consumer may see the
    messages meanwhile (harmless, only wasted work).

    With ``delete=False`` nothing is deleted here: ``result.received`` holds the messages
    for the caller to delete once what ``on_batches`` produced is durable (the Dagster
    sensor deletes them on its next tick, after its run requests were committed).
    """
    messages = source.receive(max_messages, wait_seconds, visibility_timeout)
    result = ConsumeResult(
        messages=len(messages),
        redelivered=sum(m.receive_count > 1 for m in messages),
        received=list(messages),
    )
    if not messages:
        return result
    events: list[ObjectCreated] = []
    for message in messages:
        try:
            found = parse_message(message.body)
        except UnrecognizedEvent as exc:
            log.warning("dropping unrecognized SQS message %s: %s", message.message_id, exc)
            result.unrecognized.append((message.message_id, str(exc)))
            continue
        if not found:
            result.ignored_messages += 1
        events.extend(found)

    plan = plan_events(
        events,
        raw_uri,
        manifest,
        max_objects=max_objects,
        max_bytes=max_bytes,
        source=plan_source,
    )
    result.events = plan.events
    result.duplicates_dropped = plan.duplicates_dropped
    result.not_under_prefix = plan.not_under_prefix
    result.not_candidates = plan.not_candidates
    result.already_known = plan.already_known
    result.new_objects = plan.new_objects
    result.planned = plan.batches
    result.resent = plan.resent
    if plan.batches or plan.resent:
        on_batches(plan.batches + plan.resent)

    if not delete:
        return result
    report = source.delete(messages)
    result.deleted = report.deleted
    result.delete_failures = report.failed
    return result
