"""One at-least-once consuming pass: receive, parse, plan, hand over, delete."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from imageml_core.discovery.batches import PlannedBatch
from imageml_core.discovery.events.parsing import ObjectCreated, UnrecognizedEvent, parse_message
from imageml_core.discovery.events.planning import plan_events
from imageml_core.discovery.events.sqs import DeleteFailure, ReceivedMessage, SqsEventSource
from imageml_core.manifest import ManifestStore
from imageml_core.uris import S3Uri

log = logging.getLogger(__name__)


@dataclass
class ConsumeResult:
    """What one :func:`consume_once` pass did."""

    messages: int = 0
    redelivered: int = 0  # messages received before (ApproximateReceiveCount > 1)
    events: int = 0
    ignored_messages: int = 0  # parsed, but held no "object created" event (test events...)
    duplicates_dropped: int = 0
    not_under_prefix: int = 0
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
