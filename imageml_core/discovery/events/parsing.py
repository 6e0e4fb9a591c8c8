"""Parsing S3 notification and EventBridge "Object Created" messages."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from imageml_core.uris import S3Uri


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
        """``s3://<bucket>/<key>`` of the created object."""
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


def supersedes(new: ObjectCreated, old: ObjectCreated) -> bool:
    """Whether ``new`` describes a later state of the key than ``old``."""
    if new.sequencer and old.sequencer:
        return sequencer_newer(new.sequencer, old.sequencer)
    if new.event_time and old.event_time and new.event_time != old.event_time:
        return new.event_time > old.event_time
    return False  # no way to order them: keep the first seen
