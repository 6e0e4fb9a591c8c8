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

from imageml_core.discovery.events.consume import ConsumeResult, consume_once
from imageml_core.discovery.events.parsing import (
    ObjectCreated,
    UnrecognizedEvent,
    parse_message,
    sequencer_newer,
)
from imageml_core.discovery.events.planning import EventPlan, plan_events
from imageml_core.discovery.events.sqs import (
    DeleteFailure,
    DeleteReport,
    ReceivedMessage,
    SqsEventSource,
)

__all__ = [
    "ConsumeResult",
    "DeleteFailure",
    "DeleteReport",
    "EventPlan",
    "ObjectCreated",
    "ReceivedMessage",
    "SqsEventSource",
    "UnrecognizedEvent",
    "consume_once",
    "parse_message",
    "plan_events",
    "sequencer_newer",
]
