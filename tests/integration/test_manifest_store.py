"""The SQL manifest store on SQLite and PostgreSQL (the ``manifest_store`` fixture runs both)."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from imageml_core.manifest import (
    AUGMENT,
    INGEST,
    NORMALIZE,
    STATUS_QUARANTINED,
    BatchMember,
    LineageEdge,
    LineageRecord,
    ManifestPublication,
    MirroredMaterialization,
    ObjectVersion,
    ProcessedObject,
    SqlManifestStore,
    Step,
)
from imageml_core.manifest.schema import metadata
from tests.helpers import table_counts

T = TypeVar("T")


def _count(store: SqlManifestStore, table: str) -> int:
    return table_counts(store)[table]


def _race(n: int, fn: Callable[[int], T]) -> list[T]:
    """Run ``fn(i)`` in ``n`` threads released at the same moment by a barrier."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T:
        barrier.wait(timeout=30)
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


# ---------------------------------------------------------------------- schema
def test_migrate_is_idempotent(manifest_store: SqlManifestStore) -> None:
    assert manifest_store.schema_revision() == "0001"
    manifest_store.mark_processed(INGEST, ProcessedObject("s3://b/raw/x.jpg", "e1"))
    manifest_store.migrate()
    manifest_store.migrate()
    assert manifest_store.schema_revision() == "0001"
    # Data survives re-running the migration.
    assert manifest_store.is_processed(INGEST, "s3://b/raw/x.jpg", "e1")
    with manifest_store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1


def test_upgrade_in_place_from_base(store_url: str) -> None:
    """A new, empty database (revision base) is upgraded in place, and again harmlessly."""
    store = SqlManifestStore(store_url)
    try:
        assert store.schema_revision() is None
        store.migrate()
        assert store.schema_revision() == "0001"
        with store.engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
        assert set(metadata.tables) | {"alembic_version"} <= tables
        store.migrate()
        assert store.schema_revision() == "0001"
        assert store.get_or_create_dataset("after-upgrade") >= 1
    finally:
        store.close()
    # A second store object on the same database (another pod starting) is fine too.
    again = SqlManifestStore(store_url)
    try:
        again.migrate()
        assert again.schema_revision() == "0001"
        assert again.get_or_create_dataset("after-upgrade") == again.get_or_create_dataset(
            "after-upgrade"
        )
    finally:
        again.close()


def test_concurrent_migrate_in_threads(store_url: str) -> None:
    stores = [SqlManifestStore(store_url) for _ in range(4)]
    try:
        _race(4, lambda i: stores[i].migrate())
        assert {s.schema_revision() for s in stores} == {"0001"}
    finally:
        for s in stores:
            s.close()


# ---------------------------------------------------------------------- datasets
def test_get_or_create_dataset(manifest_store: SqlManifestStore) -> None:
    first = manifest_store.get_or_create_dataset("cats")
    assert manifest_store.get_or_create_dataset("cats") == first
    other = manifest_store.get_or_create_dataset("dogs")
    assert other != first
    assert _count(manifest_store, "datasets") == 2
    ids = _race(8, lambda i: manifest_store.get_or_create_dataset("birds"))
    assert len(set(ids)) == 1
    assert _count(manifest_store, "datasets") == 3
    for bad in ("", "x" * 201):
        with pytest.raises(ValueError, match="dataset name"):
            manifest_store.get_or_create_dataset(bad)


# ---------------------------------------------------------------------- ledger
def test_mark_processed_once(manifest_store: SqlManifestStore) -> None:
    obj = ProcessedObject(
        "s3://b/raw/a.jpg", "etag-a", content_sha256="ab" * 32, details={"w": 640, "h": 480}
    )
    assert manifest_store.mark_processed(INGEST, obj, partition_key="p1", run_id="r1") is True
    assert manifest_store.mark_processed(INGEST, obj, partition_key="p1", run_id="r2") is False
    assert manifest_store.is_processed(INGEST, "s3://b/raw/a.jpg", "etag-a")
    # A new ETag is a new version of the object; another step has its own ledger.
    assert not manifest_store.is_processed(INGEST, "s3://b/raw/a.jpg", "etag-b")
    assert not manifest_store.is_processed(AUGMENT, "s3://b/raw/a.jpg", "etag-a")
    assert not manifest_store.is_processed(Step(2, "ingest"), "s3://b/raw/a.jpg", "etag-a")
    assert manifest_store.mark_processed(AUGMENT, obj) is True
    assert (
        manifest_store.mark_processed(INGEST, ProcessedObject("s3://b/raw/a.jpg", "etag-b")) is True
    )

    rows = manifest_store.processed_objects(INGEST, partition_key="p1")
    assert len(rows) == 1
    row = rows[0]
    assert row.uri == "s3://b/raw/a.jpg"
    assert row.etag == "etag-a"
    assert row.status == "ok"
    assert row.run_id == "r1"  # the first writer's record stands
    assert row.content_sha256 == "ab" * 32
    assert row.details == {"w": 640, "h": 480}
    assert len(manifest_store.processed_objects(INGEST)) == 2
    assert _count(manifest_store, "processed_objects") == 3


def test_quarantined_entries_are_recorded(manifest_store: SqlManifestStore) -> None:
    bad = ProcessedObject(
        "s3://b/raw/broken.jpg", "e", status=STATUS_QUARANTINED, reason="truncated JPEG"
    )
    assert manifest_store.mark_processed(INGEST, bad) is True
    assert manifest_store.is_processed(INGEST, bad.uri, bad.etag)
    [row] = manifest_store.processed_objects(INGEST)
    assert row.status == "quarantined"
    assert row.reason == "truncated JPEG"


def test_processed_among_crosses_chunks(manifest_store: SqlManifestStore) -> None:
    done = [ProcessedObject(f"s3://b/raw/{i:05d}.jpg", f"e{i}") for i in range(1234)]
    assert manifest_store.publish(
        ManifestPublication(
            step=INGEST,
            partition_key="big",
            dataset_name="ds",
            manifest_uri=None,
            content_sha256="0" * 64,
            details={},
            objects=done,
        )
    )
    assert _count(manifest_store, "processed_objects") == 1234
    marked = [ObjectVersion(o.uri, o.etag) for o in done]
    not_marked = [ObjectVersion(f"s3://b/raw/new-{i:05d}.jpg", "e") for i in range(400)]
    stale_etag = [ObjectVersion(o.uri, o.etag + "-old") for o in done[::7]]
    query = [*not_marked[:200], *marked, *stale_etag, *not_marked[200:], *marked[:50]]
    assert len(query) > 1500
    assert manifest_store.processed_among(INGEST, query) == set(marked)
    assert manifest_store.processed_among(AUGMENT, query) == set()
    assert manifest_store.processed_among(INGEST, []) == set()
    assert manifest_store.is_processed(INGEST, done[1200].uri, done[1200].etag)
    assert not manifest_store.is_processed(INGEST, done[1200].uri, "other")


def test_concurrent_mark_processed_threads(manifest_store: SqlManifestStore) -> None:
    """8 writers race on the same 10 facts: each is created by exactly one of them."""
    objs = [ProcessedObject(f"s3://b/raw/race-{i}.jpg", "etag") for i in range(10)]

    def writer(t: int) -> list[bool]:
        return [manifest_store.mark_processed(INGEST, o, run_id=f"thread-{t}") for o in objs]

    results = _race(8, writer)
    for i in range(len(objs)):
        assert sum(r[i] for r in results) == 1, f"object {i}: {[r[i] for r in results]}"
    assert _count(manifest_store, "processed_objects") == len(objs)


def _process_worker(url: str, barrier: Any, queue: Any, migrate: bool) -> None:
    """Runs in a spawned process: its own store on the URL, then the race."""
    try:
        store = SqlManifestStore(url)
        try:
            if migrate:
                store.migrate()
            barrier.wait(timeout=60)
            created = store.mark_processed(
                INGEST,
                ProcessedObject("s3://b/raw/contended.jpg", "etag-1"),
                run_id=f"pid-{os.getpid()}",
            )
            queue.put(("ok", created))
        finally:
            store.close()
    except BaseException:
        queue.put(("error", traceback.format_exc()))


@pytest.mark.postgres
def test_concurrent_mark_processed_processes(pg_url: str) -> None:
    """4 processes, each with its own engine, migrate a new database and race on one fact.

    PostgreSQL only (several pods on one database); SQLite's cross-connection locking is
    covered by the threads test, and each spawned process costs seconds of imports.
    """
    store_url = pg_url
    ctx = multiprocessing.get_context("spawn")
    n = 4
    barrier = ctx.Barrier(n)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_process_worker, args=(store_url, barrier, queue, True))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    try:
        outcomes = [queue.get(timeout=120) for _ in range(n)]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [detail for kind, detail in outcomes if kind == "error"]
    assert not errors, "\n".join(errors)
    assert sorted(created for _, created in outcomes) == [False, False, False, True]
    assert all(p.exitcode == 0 for p in procs)
    store = SqlManifestStore(store_url)
    try:
        assert store.schema_revision() == "0001"
        rows = store.processed_objects(INGEST)
        assert len(rows) == 1
        assert rows[0].uri == "s3://b/raw/contended.jpg"
        assert _count(store, "processed_objects") == 1
    finally:
        store.close()


# ---------------------------------------------------------------------- batches
def test_plan_batch_and_members(manifest_store: SqlManifestStore) -> None:
    members = [
        BatchMember("s3://b/raw/z.jpg", "ez", 30),
        BatchMember("s3://b/raw/a.jpg", "ea", 10),
        BatchMember("s3://b/raw/m.jpg", "em", 2**40),  # sizes beyond 32 bits
    ]
    assert manifest_store.plan_batch("batch-1", members, "poll") is True
    assert manifest_store.plan_batch("batch-1", members, "poll") is False
    assert _count(manifest_store, "batch_members") == 3
    assert manifest_store.batch_members("batch-1") == sorted(members, key=lambda m: m.uri)
    assert manifest_store.batch_members("no-such-batch") == []
    other = [BatchMember("s3://b/raw/q.jpg", "eq", 5)]
    assert manifest_store.plan_batch("batch-2", other, "event") is True
    assert manifest_store.batch_ids() == ["batch-1", "batch-2"]

    query = [
        ObjectVersion("s3://b/raw/a.jpg", "ea"),
        ObjectVersion("s3://b/raw/a.jpg", "changed"),
        ObjectVersion("s3://b/raw/q.jpg", "eq"),
        ObjectVersion("s3://b/raw/unplanned.jpg", "e"),
    ]
    assert manifest_store.planned_among(query) == {
        ObjectVersion("s3://b/raw/a.jpg", "ea"),
        ObjectVersion("s3://b/raw/q.jpg", "eq"),
    }

    assert manifest_store.unpublished_batch_ids(INGEST) == ["batch-1", "batch-2"]
    manifest_store.publish(ManifestPublication(INGEST, "batch-1", "ds", None, "1" * 64, {"n": 3}))
    assert manifest_store.unpublished_batch_ids(INGEST) == ["batch-2"]
    assert manifest_store.unpublished_batch_ids(AUGMENT) == ["batch-1", "batch-2"]


def test_planned_among_crosses_chunks(manifest_store: SqlManifestStore) -> None:
    members = [BatchMember(f"s3://b/raw/{i:05d}.jpg", f"e{i}", i) for i in range(1100)]
    assert manifest_store.plan_batch("big", members, "run") is True
    versions = [ObjectVersion(m.uri, m.etag) for m in members]
    extra = [ObjectVersion(f"s3://b/raw/x{i}.jpg", "e") for i in range(300)]
    assert manifest_store.planned_among([*extra, *versions]) == set(versions)
    assert len(manifest_store.batch_members("big")) == 1100


# ---------------------------------------------------------------------- checkpoints
def test_checkpoints_upsert(manifest_store: SqlManifestStore) -> None:
    assert manifest_store.load_checkpoint(NORMALIZE, "p1", "progress") is None
    manifest_store.save_checkpoint(NORMALIZE, "p1", "progress", {"done": 10, "last": "a"})
    assert manifest_store.load_checkpoint(NORMALIZE, "p1", "progress") == {
        "done": 10,
        "last": "a",
    }
    manifest_store.save_checkpoint(NORMALIZE, "p1", "progress", {"done": 20, "nested": [1, 2]})
    assert manifest_store.load_checkpoint(NORMALIZE, "p1", "progress") == {
        "done": 20,
        "nested": [1, 2],
    }
    assert _count(manifest_store, "checkpoints") == 1
    # Keys are (step, partition, name): neighbours are independent and missing ones are None.
    manifest_store.save_checkpoint(NORMALIZE, "p2", "progress", {"done": 1})
    manifest_store.save_checkpoint(AUGMENT, "p1", "progress", {"done": 2})
    assert manifest_store.load_checkpoint(NORMALIZE, "p1", "progress") == {
        "done": 20,
        "nested": [1, 2],
    }
    assert manifest_store.load_checkpoint(NORMALIZE, "p2", "progress") == {"done": 1}
    assert manifest_store.load_checkpoint(AUGMENT, "p1", "progress") == {"done": 2}
    assert manifest_store.load_checkpoint(NORMALIZE, "p1", "other") is None
    assert manifest_store.load_checkpoint(NORMALIZE, "p3", "progress") is None
    assert _count(manifest_store, "checkpoints") == 3


# ---------------------------------------------------------------------- publish
def _publication(run_id: str = "run-1") -> ManifestPublication:
    return ManifestPublication(
        step=NORMALIZE,
        partition_key="batch-7",
        dataset_name="cats",
        manifest_uri="s3://b/silver/_manifests/batch-7.json",
        content_sha256="c" * 64,
        details={"sizes": ["720p"], "count": 2},
        objects=[
            ProcessedObject("s3://b/bronze/1.jpg", "e1", content_sha256="1" * 64),
            ProcessedObject("s3://b/bronze/2.jpg", "e2"),
            ProcessedObject("s3://b/bronze/3.jpg", "e3", status=STATUS_QUARANTINED, reason="x"),
        ],
        edges=[
            LineageEdge("s3://b/bronze/1.jpg", "s3://b/silver/720p/1.jpg", NORMALIZE),
            LineageEdge("s3://b/bronze/2.jpg", "s3://b/silver/720p/2.jpg", NORMALIZE),
        ],
        run_id=run_id,
    )


def test_publish_writes_everything_once(manifest_store: SqlManifestStore) -> None:
    # One object was already recorded by an earlier, interrupted attempt.
    manifest_store.mark_processed(NORMALIZE, ProcessedObject("s3://b/bronze/1.jpg", "e1"))
    before = table_counts(manifest_store)
    assert manifest_store.get_manifest(NORMALIZE, "batch-7") is None

    assert manifest_store.publish(_publication()) is True
    after = table_counts(manifest_store)
    assert {k: after[k] - before[k] for k in after} == {
        "datasets": 1,
        "dataset_versions": 1,
        "manifests": 1,
        "processed_objects": 2,  # 3 objects, one already there
        "checkpoints": 0,
        "lineage_edges": 2,
        "batch_members": 0,
        "dagster_materializations": 0,
    }

    # A second identical publish (a retried run) changes nothing.
    assert manifest_store.publish(_publication()) is False
    assert table_counts(manifest_store) == after
    # Nor does one from another run for the same partition.
    assert manifest_store.publish(_publication(run_id="run-2")) is False
    assert table_counts(manifest_store) == after

    manifest = manifest_store.get_manifest(NORMALIZE, "batch-7")
    assert manifest is not None
    assert manifest.stage == 2
    assert manifest.step == "normalize"
    assert manifest.partition_key == "batch-7"
    assert manifest.run_id == "run-1"
    assert manifest.manifest_uri == "s3://b/silver/_manifests/batch-7.json"
    assert manifest.content_sha256 == "c" * 64
    assert manifest.details == {"sizes": ["720p"], "count": 2}
    assert manifest_store.get_manifest(NORMALIZE, "batch-8") is None
    assert manifest_store.get_manifest(INGEST, "batch-7") is None

    [version] = manifest_store.dataset_versions("cats")
    assert manifest.dataset_version_id == version.id
    assert version.version == "normalize/batch-7"
    assert version.stage == 2
    assert version.object_count == 2
    assert version.details == {"quarantined": 1}
    assert version.manifest_uri == "s3://b/silver/_manifests/batch-7.json"
    assert manifest_store.dataset_versions("dogs") == []

    ledger = {r.uri: r for r in manifest_store.processed_objects(NORMALIZE, "batch-7")}
    assert set(ledger) == {"s3://b/bronze/2.jpg", "s3://b/bronze/3.jpg"}
    assert ledger["s3://b/bronze/3.jpg"].status == "quarantined"
    assert ledger["s3://b/bronze/2.jpg"].run_id == "run-1"
    assert [m.partition_key for m in manifest_store.manifests(NORMALIZE)] == ["batch-7"]


def test_publish_with_duplicate_objects_and_edges(manifest_store: SqlManifestStore) -> None:
    obj = ProcessedObject("s3://b/raw/d.jpg", "e")
    edge = LineageEdge("s3://b/raw/d.jpg", "s3://b/bronze/d.jpg", INGEST)
    pub = ManifestPublication(INGEST, "dup", "ds", None, "d" * 64, {}, [obj, obj], [edge, edge])
    assert manifest_store.publish(pub) is True
    assert _count(manifest_store, "processed_objects") == 1
    assert _count(manifest_store, "lineage_edges") == 1


def test_concurrent_publish_one_winner(manifest_store: SqlManifestStore) -> None:
    results = _race(6, lambda i: manifest_store.publish(_publication(run_id=f"run-{i}")))
    assert sorted(results) == [False] * 5 + [True]
    counts = table_counts(manifest_store)
    assert counts["manifests"] == 1
    assert counts["dataset_versions"] == 1
    assert counts["processed_objects"] == 3
    assert counts["lineage_edges"] == 2
    winner = results.index(True)
    manifest = manifest_store.get_manifest(NORMALIZE, "batch-7")
    assert manifest is not None and manifest.run_id == f"run-{winner}"


# ---------------------------------------------------------------------- lineage
def test_lineage_two_hops(manifest_store: SqlManifestStore) -> None:
    a, b, c = "s3://b/raw/a.jpg", "s3://b/bronze/a.jpg", "s3://b/silver/720p/a.jpg"
    assert manifest_store.add_lineage([LineageEdge(a, b, INGEST)], run_id="r1") == 1
    assert manifest_store.add_lineage([LineageEdge(a, b, INGEST)], run_id="r1") == 0
    manifest_store.publish(
        ManifestPublication(
            NORMALIZE,
            "p1",
            "ds",
            None,
            "e" * 64,
            {},
            objects=[ProcessedObject(b, "eb")],
            edges=[LineageEdge(b, c, NORMALIZE)],
            run_id="r2",
        )
    )
    manifest_store.mark_processed(INGEST, ProcessedObject(a, "ea"), partition_key="p0")
    unrelated = "s3://b/raw/other.jpg"
    manifest_store.add_lineage([LineageEdge(unrelated, "s3://b/bronze/other.jpg", INGEST)])

    def pairs(edges: list[LineageRecord]) -> list[tuple[str, str]]:
        return [(e.input_uri, e.output_uri) for e in edges]

    from_a = manifest_store.lineage(a)
    assert from_a.uri == a
    assert from_a.upstream == []
    assert pairs(from_a.downstream) == [(a, b), (b, c)]
    assert from_a.downstream[0].step == "ingest"
    assert from_a.downstream[0].run_id == "r1"
    assert from_a.downstream[1].stage == 2
    assert from_a.downstream[1].partition_key == "p1"
    assert [(r.step, r.etag, r.partition_key) for r in from_a.records] == [("ingest", "ea", "p0")]

    from_c = manifest_store.lineage(c)
    assert pairs(from_c.upstream) == [(b, c), (a, b)]
    assert from_c.downstream == []
    assert from_c.records == []

    from_b = manifest_store.lineage(b)
    assert pairs(from_b.upstream) == [(a, b)]
    assert pairs(from_b.downstream) == [(b, c)]
    assert [(r.step, r.etag) for r in from_b.records] == [("normalize", "eb")]

    # max_depth bounds the walk.
    assert pairs(manifest_store.lineage(a, max_depth=1).downstream) == [(a, b)]
    nothing = manifest_store.lineage("s3://b/none.jpg")
    assert nothing.to_json() == {
        "uri": "s3://b/none.jpg",
        "records": [],
        "upstream": [],
        "downstream": [],
    }
    assert nothing.empty


def test_lineage_cycle_terminates(manifest_store: SqlManifestStore) -> None:
    x, y, z = "s3://b/x", "s3://b/y", "s3://b/z"
    manifest_store.add_lineage(
        [LineageEdge(x, y, AUGMENT), LineageEdge(y, z, AUGMENT), LineageEdge(z, x, AUGMENT)]
    )
    started = time.monotonic()
    result = manifest_store.lineage(x)
    assert time.monotonic() - started < 10
    assert [(e.input_uri, e.output_uri) for e in result.downstream] == [
        (x, y),
        (y, z),
        (z, x),
    ]


# ---------------------------------------------------------------------- Dagster mirror
def _mat(storage_id: int, asset: str = "bronze", partition: str | None = "p1") -> Any:
    return MirroredMaterialization(
        storage_id=storage_id,
        asset_key=asset,
        partition_key=partition,
        run_id=f"run-{storage_id}",
        metadata={"objects": storage_id, "uri": f"s3://b/{storage_id}"},
        timestamp=1_700_000_000.0 + storage_id,
    )


def test_mirror_materializations(manifest_store: SqlManifestStore) -> None:
    assert manifest_store.last_mirrored_storage_id("bronze") == 0
    assert manifest_store.mirror_materializations([]) == 0
    assert manifest_store.mirror_materializations([_mat(10), _mat(11)]) == 2
    # Catching up again overlaps what was mirrored: only the new event is inserted.
    assert manifest_store.mirror_materializations([_mat(11), _mat(12), _mat(10)]) == 1
    assert manifest_store.mirror_materializations([_mat(12)]) == 0
    assert manifest_store.mirror_materializations([_mat(5, asset="silver", partition=None)]) == 1
    assert _count(manifest_store, "dagster_materializations") == 4
    assert manifest_store.last_mirrored_storage_id("bronze") == 12
    assert manifest_store.last_mirrored_storage_id("silver") == 5
    assert manifest_store.last_mirrored_storage_id("gold") == 0

    rows = manifest_store.mirrored_materializations("bronze")
    assert [r.storage_id for r in rows] == [10, 11, 12]
    assert rows[0].run_id == "run-10"
    assert rows[0].partition_key == "p1"
    assert rows[0].metadata == {"objects": 10, "uri": "s3://b/10"}
    # SQLite hands back naive UTC datetimes, PostgreSQL aware ones: both read back the same.
    assert rows[0].timestamp == pytest.approx(1_700_000_010.0, abs=0.001)
    assert [r.storage_id for r in manifest_store.mirrored_materializations()] == [5, 10, 11, 12]


def test_claim_has_one_winner_and_a_stale_lease_is_taken_over(manifest_store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from imageml_core.manifest import NORMALIZE

    with ThreadPoolExecutor(8) as pool:
        wins = list(
            pool.map(
                lambda i: manifest_store.claim(NORMALIZE, "b", "compute", f"run-{i}", 600), range(8)
            )
        )
    assert wins.count(True) == 1
    assert manifest_store.claim(NORMALIZE, "b", "compute", "late", 600) is False
    # A holder silent for longer than the TTL is presumed dead: exactly one caller takes over.
    with ThreadPoolExecutor(4) as pool:
        takeovers = list(
            pool.map(
                lambda i: manifest_store.claim(NORMALIZE, "b", "compute", f"t-{i}", 0), range(4)
            )
        )
    assert takeovers.count(True) >= 1
    assert manifest_store.claim(NORMALIZE, "other", "compute", "x", 600) is True


def test_release_gives_the_lease_back_only_from_its_holder(manifest_store) -> None:
    from imageml_core.manifest import NORMALIZE

    assert manifest_store.claim(NORMALIZE, "b", "compute", "run-1", 600) is True
    manifest_store.release(NORMALIZE, "b", "compute", "someone-else")
    assert manifest_store.claim(NORMALIZE, "b", "compute", "run-2", 600) is False
    manifest_store.release(NORMALIZE, "b", "compute", "run-1")
    assert manifest_store.claim(NORMALIZE, "b", "compute", "run-2", 600) is True
    manifest_store.release(NORMALIZE, "b", "never-held", "run-2")  # nothing to give back
