"""Stage 1 triggers, one tick at a time: cursor in, run requests and cursor out.

The sensors run with ``dg.build_sensor_context`` against in-memory fakes of the object store
and the SQS queue (``tests.unit.fakes``) and a real SQLite manifest store in ``tmp_path``.
The same sensors against a real S3 server and moto's SQS are in ``tests/integration``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import dagster as dg
import pytest

from imageml_assets.defs.ingest.sensors import (
    MAX_BATCHES_PER_TICK,
    raw_events_sensor,
    raw_objects_sensor,
)
from imageml_core.discovery import DiscoveryCursor, batch_id_for
from imageml_core.discovery.events import consume_once
from imageml_core.manifest import (
    INGEST,
    BatchMember,
    ManifestPublication,
    ProcessedObject,
    SqlManifestStore,
)
from imageml_core.storage.object_store import ObjectInfo
from imageml_core.uris import S3Uri
from imageml_resources import DataLayoutResource, EventQueueResource, ManifestStoreResource
from tests.unit.fakes import (
    InMemoryObjectStore,
    InMemoryQueue,
    ListCall,
    ReceiveCall,
    fake_event_queue_resource,
    fake_object_store_resource,
)

BUCKET = "raw-bucket"
RAW = S3Uri(BUCKET, "raw")
POLL = {"imageml/trigger": "poll"}
EVENT = {"imageml/trigger": "event"}


# --------------------------------------------------------------------------- helpers
def _layout(**overrides: Any) -> DataLayoutResource:
    values: dict[str, Any] = {
        "raw_uri": str(RAW),
        "bronze_uri": "s3://lake/bronze",
        "augmented_uri": "s3://lake/augmented",
        "normalized_uri": "s3://lake/silver",
        "training_uri": "s3://lake/gold",
        "inference_input_uri": "s3://lake/inference-input",
        "hitl_uri": "s3://lake/hitl",
        "final_output_uri": None,
        "dataset_name": "imageml",
        "ingest_batch_max_objects": 2,
        "ingest_batch_max_mb": 1024,
        "raw_full_scan_every_ticks": 3,
        "max_image_pixels": 178_956_970,
    }
    return DataLayoutResource(**(values | overrides))


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    """One ephemeral instance for the module: building one per tick costs a schema stamp."""
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'm.db'}"


@pytest.fixture
def store(db_url: str) -> Iterator[SqlManifestStore]:
    store = SqlManifestStore(db_url)
    store.migrate()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def objects() -> InMemoryObjectStore:
    return InMemoryObjectStore()


@pytest.fixture
def queue() -> InMemoryQueue:
    return InMemoryQueue()


def _tick(
    sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None, **resources: Any
) -> Any:
    with dg.build_sensor_context(cursor=cursor, resources=resources, instance=instance) as ctx:
        return sensor(ctx)


def _member(info: ObjectInfo) -> BatchMember:
    return BatchMember(str(info.uri), info.etag, info.size)


def _batch(*infos: ObjectInfo) -> str:
    return batch_id_for(_member(i) for i in infos)


def _requests(result: dg.SensorResult) -> list[tuple[str | None, str | None, dict[str, str]]]:
    return [(r.run_key, r.partition_key, dict(r.tags)) for r in result.run_requests]


def _added_partitions(result: dg.SensorResult) -> list[tuple[str, list[str]]]:
    return [
        (r.partitions_def_name, list(r.partition_keys))  # type: ignore[union-attr]
        for r in result.dynamic_partitions_requests or []
    ]


def _publish_ingest(store: SqlManifestStore, batch_id: str) -> None:
    """What a finished ingest run leaves behind: its manifest and ledger entries."""
    members = store.batch_members(batch_id)
    assert store.publish(
        ManifestPublication(
            step=INGEST,
            partition_key=batch_id,
            dataset_name="imageml",
            manifest_uri=f"s3://lake/bronze/manifests/ingest/{batch_id}.json",
            content_sha256="0" * 64,
            details={},
            objects=[ProcessedObject(m.uri, m.etag) for m in members],
        )
    )


# --------------------------------------------------------------------------- polling sensor
class _Poller:
    """Ticks ``raw_objects_sensor`` with the fake object store and a real manifest store."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        objects: InMemoryObjectStore,
        db_url: str,
        **layout: Any,
    ) -> None:
        self.instance = instance
        self.objects = objects
        self.resources = {
            "object_store": fake_object_store_resource(objects),
            "manifest_store": ManifestStoreResource(url=db_url),
            "layout": _layout(**layout),
        }

    def tick(self, cursor: str | None) -> dg.SensorResult:
        result = _tick(raw_objects_sensor, self.instance, cursor, **self.resources)
        assert isinstance(result, dg.SensorResult)
        return result

    @property
    def last_call(self) -> ListCall:
        return self.objects.list_calls[-1]


def _cursor(result: dg.SensorResult) -> DiscoveryCursor:
    return DiscoveryCursor.parse(result.cursor)


def test_first_tick_is_a_full_scan_that_plans_every_object_in_batches(
    instance: dg.DagsterInstance,
    objects: InMemoryObjectStore,
    store: SqlManifestStore,
    db_url: str,
) -> None:
    """Every object under the prefix is planned, hidden files and folder markers too:
    ingest records them as skipped with a reason (one recorded state per object)."""
    shots = [objects.put(RAW.join(f"a/{i}.jpg")) for i in range(5)]
    hidden = objects.put(RAW.join("a/.DS_Store"))
    marker_a = objects.put(S3Uri(BUCKET, "raw/a/"), size=0)
    marker_b = objects.put(S3Uri(BUCKET, "raw/b/"), size=0)  # the greatest key
    objects.put(S3Uri(BUCKET, "raw-old/x.jpg"))  # beside the prefix, not under it
    objects.put(S3Uri("other-bucket", "raw/y.jpg"))
    poller = _Poller(instance, objects, db_url)

    first = poller.tick(None)

    listed = [marker_a, hidden, *shots, marker_b]  # key order
    groups = [listed[0:2], listed[2:4], listed[4:6], listed[6:8]]
    expected = [_batch(*group) for group in groups]
    assert _requests(first) == [(b, b, POLL) for b in expected]
    assert _added_partitions(first) == [("ingest_batches", expected)]
    assert [store.batch_members(b) for b in expected] == [
        [_member(s) for s in group] for group in groups
    ]
    assert objects.list_calls == [ListCall(RAW, None)]
    assert objects.list_calls[0].yielded == [
        "raw/a/",
        "raw/a/.DS_Store",
        *(f"raw/a/{i}.jpg" for i in range(5)),
        "raw/b/",
    ]
    # The cursor is the greatest key *listed*, candidate or not.
    assert json.loads(first.cursor or "") == {"last_key": "raw/b/", "ticks_since_full_scan": 0}


def test_a_batch_is_bounded_by_bytes_too(
    instance: dg.DagsterInstance,
    objects: InMemoryObjectStore,
    store: SqlManifestStore,
    db_url: str,
) -> None:
    mib = 1024 * 1024
    sizes = [600_000, 400_000, 2 * mib, 600_000, 10]
    shots = [objects.put(RAW.join(f"{i}.jpg"), size=s) for i, s in enumerate(sizes)]
    poller = _Poller(instance, objects, db_url, ingest_batch_max_objects=10, ingest_batch_max_mb=1)

    first = poller.tick(None)

    # 1 MiB per batch: 0+1 fit, the 2 MiB object gets a batch of its own, 3+4 fit.
    expected = [_batch(*shots[0:2]), _batch(shots[2]), _batch(*shots[3:5])]
    assert _requests(first) == [(b, b, POLL) for b in expected]


def test_a_quiet_tick_lists_after_the_cursor_and_counts_itself(
    instance: dg.DagsterInstance,
    objects: InMemoryObjectStore,
    store: SqlManifestStore,
    db_url: str,
) -> None:
    for i in range(3):
        objects.put(RAW.join(f"a/{i}.jpg"))
    poller = _Poller(instance, objects, db_url)
    first = poller.tick(None)

    second = poller.tick(first.cursor)

    assert second.run_requests == []
    assert _added_partitions(second) == []
    assert poller.last_call == ListCall(RAW, "raw/a/2.jpg")
    assert poller.last_call.yielded == []
    assert _cursor(second) == DiscoveryCursor("raw/a/2.jpg", 1)


def test_a_key_before_the_cursor_waits_for_the_periodic_full_scan(
    instance: dg.DagsterInstance,
    objects: InMemoryObjectStore,
    store: SqlManifestStore,
    db_url: str,
) -> None:
    shots = [objects.put(RAW.join(f"a/{i}.jpg")) for i in range(5)]
    poller = _Poller(instance, objects, db_url, raw_full_scan_every_ticks=3)
    b1, b2, b3 = _batch(*shots[0:2]), _batch(*shots[2:4]), _batch(shots[4])

    first = poller.tick(None)  # tick 1: full scan
    assert [r.run_key for r in first.run_requests] == [b1, b2, b3]
    _publish_ingest(store, b1)  # b1's run finished; b2 and b3 were never launched

    second = poller.tick(first.cursor)  # tick 2: after the cursor
    assert second.run_requests == []
    assert _cursor(second) == DiscoveryCursor("raw/a/4.jpg", 1)

    early = objects.put(RAW.join("0-early.jpg"))  # sorts before the cursor
    late = objects.put(RAW.join("c/new.jpg"))  # sorts after it
    third = poller.tick(second.cursor)  # tick 3: after the cursor; the early key is missed
    assert poller.last_call == ListCall(RAW, "raw/a/4.jpg")
    assert poller.last_call.yielded == ["raw/c/new.jpg"]
    b4 = _batch(late)
    assert _requests(third) == [(b4, b4, POLL)]
    assert _cursor(third) == DiscoveryCursor("raw/c/new.jpg", 2)

    fourth = poller.tick(third.cursor)  # tick 4: 2 + 1 ticks reach the period: full scan
    assert poller.last_call == ListCall(RAW, None)
    b5 = _batch(early)
    # New batches first, then every planned batch without an ingest manifest (b1 has one).
    pending = sorted([b2, b3, b4])
    assert _requests(fourth) == [(b, b, POLL) for b in [b5, *pending]]
    assert _added_partitions(fourth) == [("ingest_batches", [b5, *pending])]
    assert store.batch_members(b5) == [_member(early)]
    assert _cursor(fourth) == DiscoveryCursor("raw/c/new.jpg", 0)

    fifth = poller.tick(fourth.cursor)  # the period starts over
    assert poller.last_call == ListCall(RAW, "raw/c/new.jpg")
    assert fifth.run_requests == []
    assert _cursor(fifth) == DiscoveryCursor("raw/c/new.jpg", 1)


@pytest.mark.parametrize(
    ("every", "full_scans"),
    [
        (0, [True, False, False, False, False, False, False]),  # 0: only the first tick
        (1, [True, True, True, True, True, True, True]),
        (3, [True, False, False, True, False, False, True]),
    ],
)
def test_full_scan_period(
    instance: dg.DagsterInstance,
    objects: InMemoryObjectStore,
    db_url: str,
    every: int,
    full_scans: list[bool],
) -> None:
    objects.put(RAW.join("a.jpg"))
    poller = _Poller(instance, objects, db_url, raw_full_scan_every_ticks=every)
    cursor = None
    for _ in full_scans:
        cursor = poller.tick(cursor).cursor
    assert [c.start_after is None for c in objects.list_calls] == full_scans
    assert all(c.start_after in (None, "raw/a.jpg") for c in objects.list_calls)


def test_a_cheap_tick_lists_a_bounded_number_of_new_objects(
    instance: dg.DagsterInstance,
    objects: InMemoryObjectStore,
    store: SqlManifestStore,
    db_url: str,
) -> None:
    objects.put(RAW.join("a/0000.jpg"))
    poller = _Poller(
        instance, objects, db_url, ingest_batch_max_objects=2, raw_full_scan_every_ticks=0
    )
    first = poller.tick(None)
    limit = 2 * MAX_BATCHES_PER_TICK
    backlog = [objects.put(RAW.join(f"b/{i:04d}.jpg")) for i in range(limit + 5)]

    second = poller.tick(first.cursor)

    assert len(poller.last_call.yielded) == limit  # the listing was not read further
    assert [r.run_key for r in second.run_requests] == [
        _batch(*backlog[i : i + 2]) for i in range(0, limit, 2)
    ]
    assert _cursor(second) == DiscoveryCursor(f"raw/b/{limit - 1:04d}.jpg", 1)

    third = poller.tick(second.cursor)  # the rest, from the advanced cursor
    assert poller.last_call.start_after == f"raw/b/{limit - 1:04d}.jpg"
    assert [r.run_key for r in third.run_requests] == [
        _batch(*backlog[limit : limit + 2]),
        _batch(*backlog[limit + 2 : limit + 4]),
        _batch(backlog[limit + 4]),
    ]
    assert _cursor(third) == DiscoveryCursor(f"raw/b/{limit + 4:04d}.jpg", 2)


@pytest.mark.parametrize(
    "garbage",
    ["not json", "[]", "null", '"raw/a/1.jpg"', '{"ticks_since_full_scan": "x"}', "{"],
)
def test_an_unreadable_cursor_costs_one_full_scan(
    instance: dg.DagsterInstance,
    objects: InMemoryObjectStore,
    store: SqlManifestStore,
    db_url: str,
    garbage: str,
) -> None:
    shots = [objects.put(RAW.join(f"a/{i}.jpg")) for i in range(3)]
    poller = _Poller(instance, objects, db_url, raw_full_scan_every_ticks=0)
    first = poller.tick(None)
    planned = [_batch(*shots[0:2]), _batch(shots[2])]
    assert [r.run_key for r in first.run_requests] == planned

    result = poller.tick(garbage)

    assert poller.last_call == ListCall(RAW, None)
    # A full scan: nothing new, but the unpublished batches are asked for again (same keys).
    assert _requests(result) == [(b, b, POLL) for b in sorted(planned)]
    assert _cursor(result) == DiscoveryCursor("raw/a/2.jpg", 0)


def test_a_cursor_with_a_non_string_key_costs_one_full_scan(
    instance: dg.DagsterInstance,
    objects: InMemoryObjectStore,
    store: SqlManifestStore,
    db_url: str,
) -> None:
    objects.put(RAW.join("a/0.jpg"))
    poller = _Poller(instance, objects, db_url)

    result = poller.tick('{"last_key": 7, "ticks_since_full_scan": 0}')

    assert poller.last_call == ListCall(RAW, None)
    assert _cursor(result) == DiscoveryCursor("raw/a/0.jpg", 0)


# --------------------------------------------------------------------------- event sensor
def _s3_event(info: ObjectInfo, sequencer: int = 1, *, times: int = 1) -> str:
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": info.uri.bucket},
            "object": {
                "key": quote_plus(info.uri.key),
                "size": info.size,
                "eTag": f'"{info.etag}"',
                "sequencer": f"{sequencer:016X}",
            },
        },
    }
    return json.dumps({"Records": [record] * times})


def _info(key: str, etag: str = "e1", size: int = 100) -> ObjectInfo:
    return ObjectInfo(S3Uri(BUCKET, key), etag, size)


class _Listener:
    """Ticks ``raw_events_sensor`` with the fake queue and a real manifest store."""

    def __init__(
        self, instance: dg.DagsterInstance, queue: InMemoryQueue, db_url: str, **layout: Any
    ) -> None:
        self.instance = instance
        self.queue = queue
        self.resources = {
            "event_queue": fake_event_queue_resource(
                queue, max_messages=10, visibility_timeout_s=120
            ),
            "manifest_store": ManifestStoreResource(url=db_url),
            "layout": _layout(**layout),
        }

    def tick(self, cursor: str | None) -> dg.SensorResult:
        result = _tick(raw_events_sensor, self.instance, cursor, **self.resources)
        assert isinstance(result, dg.SensorResult)
        return result

    def handles(self, message_ids: Sequence[str]) -> list[list[str]]:
        return [[m, self.queue.messages[m].receipt_handle or ""] for m in message_ids]


def _to_delete(result: dg.SensorResult) -> list[list[str]]:
    state = json.loads(result.cursor or "")
    assert set(state) == {"delete"}
    return state["delete"]


@pytest.mark.parametrize("queue_url", [None, ""])
def test_event_mode_off_skips(
    instance: dg.DagsterInstance, db_url: str, queue_url: str | None
) -> None:
    result = _tick(
        raw_events_sensor,
        instance,
        None,
        event_queue=EventQueueResource(queue_url=queue_url),
        manifest_store=ManifestStoreResource(url=db_url),
        layout=_layout(),
    )
    assert isinstance(result, dg.SkipReason)
    assert result.skip_message == (
        "RAW_EVENTS_QUEUE_URL is not set: event mode is off (polling still runs)"
    )


def test_messages_are_deleted_on_the_tick_after_their_run_requests(
    instance: dg.DagsterInstance, queue: InMemoryQueue, store: SqlManifestStore, db_url: str
) -> None:
    shots = [_info(f"raw/cam/shot {i}.jpg", f"etag{i}") for i in range(4)]
    sent = [queue.send(_s3_event(s)) for s in shots[:3]]
    listener = _Listener(instance, queue, db_url, ingest_batch_max_objects=2)

    first = listener.tick(None)

    batches = [_batch(*shots[0:2]), _batch(shots[2])]
    assert _requests(first) == [(b, b, EVENT) for b in batches]
    assert _added_partitions(first) == [("ingest_batches", batches)]
    assert store.batch_members(batches[0]) == [_member(s) for s in shots[0:2]]  # keys decoded
    assert queue.calls == [("receive", ReceiveCall(10, 0, 120))]  # nothing to delete yet
    assert queue.deleted == []
    assert queue.in_flight == sent
    assert _to_delete(first) == listener.handles(sent)

    fourth = queue.send(_s3_event(shots[3]))
    second = listener.tick(first.cursor)

    # Phase 2 of the first tick comes before this tick's receive.
    assert queue.calls[1:] == [
        ("delete", [tuple(h) for h in _to_delete(first)]),
        ("receive", ReceiveCall(10, 0, 120)),
    ]
    assert queue.deleted == [tuple(h) for h in _to_delete(first)]
    assert _requests(second) == [(_batch(shots[3]), _batch(shots[3]), EVENT)]
    assert _to_delete(second) == listener.handles([fourth])
    assert queue.in_flight == [fourth]

    third = listener.tick(second.cursor)

    assert queue.deleted[3:] == [tuple(h) for h in _to_delete(second)]
    assert queue.messages == {}
    assert third.run_requests == [] and _added_partitions(third) == []
    assert _to_delete(third) == []


def test_an_unparseable_message_is_kept_for_the_next_tick_and_deleted_then(
    instance: dg.DagsterInstance, queue: InMemoryQueue, store: SqlManifestStore, db_url: str
) -> None:
    shot = _info("raw/a.jpg")
    bad = queue.send("this is not JSON")
    good = queue.send(_s3_event(shot))
    listener = _Listener(instance, queue, db_url)

    first = listener.tick(None)

    assert _requests(first) == [(_batch(shot), _batch(shot), EVENT)]
    assert _to_delete(first) == listener.handles([bad, good])  # the poison message too
    assert queue.deleted == []

    second = listener.tick(first.cursor)

    assert [m for m, _ in queue.deleted] == [bad, good]
    assert second.run_requests == []
    assert queue.messages == {}


def test_consume_once_without_delete_reports_but_keeps_unparseable_messages(
    queue: InMemoryQueue, store: SqlManifestStore
) -> None:
    """The contract the sensor relies on: with ``delete=False`` nothing is deleted, not even
    a poison message (the docstring's "deleted in the same pass" holds for ``delete=True``
    only); ``received`` hands every message to the caller for a deferred delete."""
    bad = queue.send('{"hello": "world"}')
    good = queue.send(_s3_event(_info("raw/a.jpg")))
    taken: list[Any] = []

    result = consume_once(
        queue,  # type: ignore[arg-type]
        store,
        RAW,
        2,
        2**30,
        on_batches=taken.extend,
        delete=False,
    )

    assert [m for m, _ in result.unrecognized] == [bad]
    assert "not an S3 event notification" in result.unrecognized[0][1]
    assert [m.message_id for m in result.received] == [bad, good]
    assert result.deleted == 0 and result.delete_failures == []
    assert [b.batch_id for b in taken] == [_batch(_info("raw/a.jpg"))]
    assert queue.deleted == [] and queue.in_flight == [bad, good]


def test_duplicate_events_make_one_batch_until_the_object_changes(
    instance: dg.DagsterInstance, queue: InMemoryQueue, store: SqlManifestStore, db_url: str
) -> None:
    shot = _info("raw/cam/a.jpg", "v1")
    queue.send(_s3_event(shot, 1))
    queue.send(_s3_event(shot, 2))  # the same object announced twice
    queue.send(_s3_event(shot, 3, times=2))  # and twice inside one message
    hidden = _info("raw/cam/.DS_Store")
    queue.send(_s3_event(hidden))  # hidden: planned, ingest records it as skipped
    queue.send(_s3_event(_info("elsewhere/b.jpg")))  # not under RAW_URI
    listener = _Listener(instance, queue, db_url)

    first = listener.tick(None)

    batch = _batch(hidden, shot)
    assert _requests(first) == [(batch, batch, EVENT)]
    assert store.batch_members(batch) == [_member(hidden), _member(shot)]
    assert len(_to_delete(first)) == 5

    # Redelivered while the batch is not yet published: asked for again, same run key.
    queue.send(_s3_event(shot, 4))
    second = listener.tick(first.cursor)
    assert _requests(second) == [(batch, batch, EVENT)]

    # Once the batch published, the object is known: nothing to launch.
    _publish_ingest(store, batch)
    queue.send(_s3_event(shot, 5))
    third = listener.tick(second.cursor)
    assert third.run_requests == []

    # A new version of the key (new ETag) is a new object.
    changed = _info("raw/cam/a.jpg", "v2")
    queue.send(_s3_event(changed, 6))
    fourth = listener.tick(third.cursor)
    assert _requests(fourth) == [(_batch(changed), _batch(changed), EVENT)]
    assert store.batch_members(_batch(changed)) == [_member(changed)]


def test_of_two_versions_in_one_tick_the_later_sequencer_wins(
    instance: dg.DagsterInstance, queue: InMemoryQueue, store: SqlManifestStore, db_url: str
) -> None:
    old, new = _info("raw/a.jpg", "v1"), _info("raw/a.jpg", "v2")
    queue.send(_s3_event(new, 0x20))  # delivered out of order
    queue.send(_s3_event(old, 0x10))
    listener = _Listener(instance, queue, db_url)

    result = listener.tick(None)

    assert _requests(result) == [(_batch(new), _batch(new), EVENT)]
    assert store.batch_members(_batch(new)) == [_member(new)]


def test_a_failed_delete_is_logged_not_raised_nor_retried(
    instance: dg.DagsterInstance, queue: InMemoryQueue, store: SqlManifestStore, db_url: str
) -> None:
    message = queue.send(_s3_event(_info("raw/a.jpg")))
    listener = _Listener(instance, queue, db_url)
    first = listener.tick(None)
    stale = _to_delete(first)
    # The visibility timeout ran out and another consumer received the message again.
    queue.expire_visibility()
    (again,) = queue.receive(10, 0, 120)
    assert again.receipt_handle != stale[0][1]

    second = listener.tick(first.cursor)

    assert queue.calls[-2] == ("delete", [tuple(stale[0])])
    assert queue.deleted == []
    assert queue.in_flight == [message]  # left to the consumer that holds it
    assert second.run_requests == []
    assert _to_delete(second) == []  # a failed delete is not carried into the next cursor
