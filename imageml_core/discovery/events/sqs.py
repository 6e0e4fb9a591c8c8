"""The SQS queue the events arrive on."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

log = logging.getLogger(__name__)

SQS_BATCH = 10  # ReceiveMessage and DeleteMessageBatch take at most 10 messages
_SQS_REGION_RE = re.compile(r"sqs[.-]([a-z0-9-]+)\.amazonaws\.com")


@dataclass(frozen=True)
class ReceivedMessage:
    """One SQS message: ``receipt_handle`` deletes it; ``body`` is the raw message text;
    ``receive_count`` is SQS's ApproximateReceiveCount."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int = 1  # ApproximateReceiveCount: > 1 means a redelivery


@dataclass(frozen=True)
class DeleteFailure:
    """A message DeleteMessageBatch did not delete: SQS's error ``code`` and message
    (``reason``), and whether SQS blamed the request (``sender_fault``)."""

    message_id: str
    code: str
    reason: str
    sender_fault: bool


@dataclass
class DeleteReport:
    """Outcome of :meth:`SqsEventSource.delete`: how many messages were deleted; the failures."""

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
