"""In-memory stand-ins for the external systems behind the Dagster resources, for unit tests
of sensor cursor logic: no network, no S3 server, no SQS.

Dagster re-instantiates a ``ConfigurableResource`` from its config when it builds a sensor
context, so a fake's state cannot live on the resource instance (a ``PrivateAttr`` is lost).
Each fake resource instead carries a ``fake_id`` config field naming its in-memory backend
in a module-level registry; build one with :func:`fake_object_store_resource` or
:func:`fake_event_queue_resource`, which register the backend for as long as the test holds
a reference to it.
"""

from __future__ import annotations

import itertools
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from imageml_core.discovery.events import DeleteFailure, DeleteReport, ReceivedMessage
from imageml_core.storage.object_store import ObjectInfo
from imageml_core.uris import S3Uri, parse_s3_uri
from imageml_resources import EventQueueResource, ObjectStoreResource

_backends: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def _register(backend: Any) -> str:
    fake_id = uuid.uuid4().hex
    _backends[fake_id] = backend
    return fake_id


def _backend(fake_id: str) -> Any:
    try:
        return _backends[fake_id]
    except KeyError:
        raise LookupError(
            f"fake backend {fake_id} is gone: keep a reference to it for the whole test"
        ) from None


# --------------------------------------------------------------------------- object store
@dataclass(frozen=True)
class ListCall:
    """One ``list_objects`` call: where, after which key, and the keys the caller consumed."""

    location: S3Uri
    start_after: str | None
    yielded: list[str] = field(default_factory=list, compare=False)


class InMemoryObjectStore:
    """Objects by (bucket, key); lists like S3 ``ListObjectsV2``: key order, ``start_after``
    exclusive. Unlike :class:`~imageml_core.storage.object_store.ObjectStore` it does not drop
    zero-byte folder markers, so the sensor's own candidate filter is what tests see."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], ObjectInfo] = {}
        self.list_calls: list[ListCall] = []
        self._etags = itertools.count(1)

    def put(self, uri: str | S3Uri, size: int = 100, etag: str | None = None) -> ObjectInfo:
        """Store (or overwrite) an object; the ETag defaults to a new unique value."""
        location = parse_s3_uri(uri) if isinstance(uri, str) else uri
        info = ObjectInfo(location, etag or f"etag-{next(self._etags):04d}", size)
        self.objects[(location.bucket, location.key)] = info
        return info

    def list_objects(
        self,
        location: S3Uri,
        *,
        start_after: str | None = None,
        page_size: int = 1000,
        folder_markers: bool = False,
    ) -> Iterator[ObjectInfo]:
        """As the real store: key order, after ``start_after``; empty ``.../`` keys only
        with ``folder_markers``."""
        if start_after is not None and not isinstance(start_after, str):
            # botocore rejects it too (ParamValidationError: Invalid type for StartAfter)
            raise TypeError(f"start_after must be a key (str), got {start_after!r}")
        call = ListCall(location, start_after)
        self.list_calls.append(call)  # recorded even if the caller never iterates
        keys = sorted(
            key
            for bucket, key in self.objects
            if bucket == location.bucket
            and key.startswith(location.prefix)
            and (not start_after or key > start_after)
            and (
                folder_markers or not (key.endswith("/") and self.objects[(bucket, key)].size == 0)
            )
        )

        def _iterate() -> Iterator[ObjectInfo]:
            for key in keys:
                call.yielded.append(key)
                yield self.objects[(location.bucket, key)]

        return _iterate()


class FakeObjectStoreResource(ObjectStoreResource):
    """:class:`ObjectStoreResource` whose client is an :class:`InMemoryObjectStore`."""

    region: str = "us-east-1"
    fake_id: str

    def get_client(self) -> Any:
        return _backend(self.fake_id)


def fake_object_store_resource(store: InMemoryObjectStore) -> FakeObjectStoreResource:
    return FakeObjectStoreResource(fake_id=_register(store))


# --------------------------------------------------------------------------- event queue
@dataclass
class _Message:
    message_id: str
    body: str
    receive_count: int = 0
    receipt_handle: str | None = None  # of the latest receive
    in_flight: bool = False  # received and not yet visible again


@dataclass(frozen=True)
class ReceiveCall:
    max_messages: int
    wait_seconds: int
    visibility_timeout: int


class InMemoryQueue:
    """An SQS queue: ``receive`` hides visible messages (in flight) under a fresh receipt
    handle; :meth:`expire_visibility` makes in-flight messages visible again (the visibility
    timeout ran out); ``delete`` removes a message given its latest receipt handle, and fails
    for an older one (the message was received again since, by someone else).

    ``calls`` records ``("receive", ...)`` and ``("delete", ...)`` in order; ``deleted`` the
    (message id, receipt handle) pairs actually deleted."""

    def __init__(self) -> None:
        self.messages: dict[str, _Message] = {}
        self.calls: list[tuple[str, Any]] = []
        self.deleted: list[tuple[str, str]] = []
        self._ids = itertools.count(1)
        self._handles = itertools.count(1)

    def send(self, body: str) -> str:
        message_id = f"msg-{next(self._ids):03d}"
        self.messages[message_id] = _Message(message_id, body)
        return message_id

    @property
    def visible(self) -> list[str]:
        return [m.message_id for m in self.messages.values() if not m.in_flight]

    @property
    def in_flight(self) -> list[str]:
        return [m.message_id for m in self.messages.values() if m.in_flight]

    def expire_visibility(self) -> None:
        for m in self.messages.values():
            m.in_flight = False

    def receive(
        self, max_messages: int = 100, wait_seconds: int = 0, visibility_timeout: int = 300
    ) -> list[ReceivedMessage]:
        self.calls.append(("receive", ReceiveCall(max_messages, wait_seconds, visibility_timeout)))
        out: list[ReceivedMessage] = []
        for m in self.messages.values():
            if len(out) >= max_messages:
                break
            if m.in_flight:
                continue
            m.in_flight = True
            m.receive_count += 1
            m.receipt_handle = f"rh-{next(self._handles):03d}-{m.message_id}"
            out.append(ReceivedMessage(m.message_id, m.receipt_handle, m.body, m.receive_count))
        return out

    def delete(self, messages: Sequence[ReceivedMessage]) -> DeleteReport:
        self.calls.append(("delete", [(m.message_id, m.receipt_handle) for m in messages]))
        report = DeleteReport()
        for r in messages:
            current = self.messages.get(r.message_id)
            if current is None or current.receipt_handle != r.receipt_handle:
                report.failed.append(
                    DeleteFailure(r.message_id, "ReceiptHandleIsInvalid", "stale handle", True)
                )
                continue
            del self.messages[r.message_id]
            self.deleted.append((r.message_id, r.receipt_handle))
            report.deleted += 1
        return report


class FakeEventQueueResource(EventQueueResource):
    """:class:`EventQueueResource` whose source is an :class:`InMemoryQueue` (event mode on)."""

    queue_url: str | None = "https://sqs.us-east-1.amazonaws.com/000000000000/fake-raw-events"
    fake_id: str

    def get_source(self) -> Any:
        return _backend(self.fake_id)


def fake_event_queue_resource(queue: InMemoryQueue, **config: Any) -> FakeEventQueueResource:
    return FakeEventQueueResource(fake_id=_register(queue), **config)
