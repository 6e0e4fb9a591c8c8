"""Stage 2 trigger, one tick at a time: ``augmented_batches_sensor`` reads augment
manifests published after its cursor from a real SQLite manifest store in ``tmp_path``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from imageml_assets.defs.normalize import NORMALIZE_JOB, build_defs
from imageml_assets.defs.normalize.sensors import build_augmented_batches_sensor
from imageml_core.manifest import AUGMENT, INGEST, ManifestPublication, SqlManifestStore, Step
from imageml_core.manifest.keys import AugmentKey
from imageml_core.settings import Settings
from imageml_resources import AugmentationResource, ManifestStoreResource, NormalizationResource

SIZES = "1080p,720p"
TAG = AugmentationResource(pipeline="light", copies=1).get_spec().tag
TRIGGER = {"imageml/trigger": "augment-published"}


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
def defs(tmp_path: Path, db_url: str) -> dg.Definitions:
    settings = Settings.from_env(
        {
            "RAW_URI": "s3://raw-bucket/raw",
            "AWS_REGION": "us-east-1",
            "MANIFEST_DB_URL": db_url,
            "NORMALIZE_SIZES": SIZES,
            "AUGMENT_PIPELINE": "light",
            "AUGMENT_COPIES": "1",
        },
        home=tmp_path,
    )
    return build_defs(settings)


@pytest.fixture
def resources(db_url: str) -> dict[str, Any]:
    return {
        "manifest_store": ManifestStoreResource(url=db_url),
        "augmentation": AugmentationResource(pipeline="light", copies=1),
        "normalization": NormalizationResource(
            sizes=SIZES, fit="letterbox", quality=90, chroma="420", workers=1
        ),
    }


@pytest.fixture
def tag(resources: dict[str, Any]) -> str:
    return resources["augmentation"].get_pipeline().tag


@pytest.fixture
def hashes(resources: dict[str, Any]) -> dict[str, str]:
    """Variant name -> its policy hash, in ``NORMALIZE_SIZES`` order."""
    policy = resources["normalization"].get_policy()
    return {v.name: policy.variant_hash(v) for v in policy.variants}


def _publish(store: SqlManifestStore, partition_key: str, step: Step = AUGMENT) -> int:
    assert store.publish(
        ManifestPublication(
            step=step,
            partition_key=partition_key,
            dataset_name="imageml",
            manifest_uri=f"s3://lake/manifests/{step.name}/{partition_key}.json",
            content_sha256=hashlib.sha256(partition_key.encode()).hexdigest(),
            details={},
        )
    )
    record = store.get_manifest(step, partition_key)
    assert record is not None
    return record.id


def _sensor(defs: dg.Definitions) -> dg.SensorDefinition:
    """The sensor as wired (``defs`` has no resources, so it is not resolved)."""
    (sensor,) = [s for s in defs.sensors or [] if s.name == "augmented_batches_sensor"]
    return sensor


def _tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    cursor: str | None,
) -> dg.SensorResult:
    with dg.build_sensor_context(cursor=cursor, resources=resources, instance=instance) as ctx:
        result = sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    return result


def _requests(result: dg.SensorResult) -> list[tuple[str | None, dict[str, str], dict[str, str]]]:
    out = []
    for r in result.run_requests:
        assert isinstance(r.partition_key, dg.MultiPartitionKey)
        out.append((r.run_key, r.partition_key.keys_by_dimension, dict(r.tags)))
    return out


def _expected(
    batch: str, hashes: dict[str, str], tag: str = ""
) -> list[tuple[str, dict[str, str], dict]]:
    """One request per variant: run key ``<batch>@<tag>|<variant>@<hash12>``."""
    return [
        (f"{batch}@{tag or TAG}|{name}@{h[:12]}", {"batch": batch, "variant": name}, TRIGGER)
        for name, h in hashes.items()
    ]


def test_each_published_batch_of_the_current_pipeline_gets_every_variant(
    instance: dg.DagsterInstance,
    store: SqlManifestStore,
    defs: dg.Definitions,
    resources: dict[str, Any],
    tag: str,
    hashes: dict[str, str],
) -> None:
    sensor = _sensor(defs)
    assert sensor.job_name == NORMALIZE_JOB
    other_tag = AugmentationResource(pipeline="light", copies=2).get_pipeline().tag
    assert other_tag != tag
    _publish(store, str(AugmentKey("batch-aaaa", tag)))
    _publish(store, "batch-aaaa", INGEST)  # another step: not read
    _publish(store, str(AugmentKey("batch-bbbb", other_tag)))  # another augmentation config
    last_current = _publish(store, str(AugmentKey("batch-cccc", tag)))
    last = _publish(store, str(AugmentKey("batch-dddd", other_tag)))
    _publish(store, "batch-eeee", INGEST)
    assert last == last_current + 1

    first = _tick(sensor, instance, resources, None)

    assert _requests(first) == _expected("batch-aaaa", hashes) + _expected("batch-cccc", hashes)
    assert list(hashes) == ["1080p", "720p"]
    # The cursor passes every manifest read, the ignored ones and other steps' too (they
    # tell an id still committing from one another step used).
    assert first.cursor == str(last + 1)
    assert first.dynamic_partitions_requests == []

    second = _tick(sensor, instance, resources, first.cursor)

    assert second.run_requests == []
    assert second.cursor == str(last + 1)

    newest = _publish(store, str(AugmentKey("batch-ffff", tag)))
    third = _tick(sensor, instance, resources, second.cursor)

    assert _requests(third) == _expected("batch-ffff", hashes)
    assert third.cursor == str(newest)


def test_the_cursor_is_where_reading_resumes(
    instance: dg.DagsterInstance,
    store: SqlManifestStore,
    defs: dg.Definitions,
    resources: dict[str, Any],
    tag: str,
    hashes: dict[str, str],
) -> None:
    (job,) = [j for j in defs.jobs or [] if j.name == NORMALIZE_JOB]
    sensor = build_augmented_batches_sensor(job)
    ids = [_publish(store, str(AugmentKey(f"batch-{i:04d}", tag))) for i in range(3)]

    # A cursor set by hand to the first manifest: only the later two are requested.
    result = _tick(sensor, instance, resources, str(ids[0]))

    assert _requests(result) == _expected("batch-0001", hashes) + _expected("batch-0002", hashes)
    assert result.cursor == str(ids[2])

    # Nothing after the cursor: it stays as it was.
    assert _tick(sensor, instance, resources, str(ids[2])).cursor == str(ids[2])


def test_nothing_published_keeps_cursor_zero(
    instance: dg.DagsterInstance,
    store: SqlManifestStore,
    defs: dg.Definitions,
    resources: dict[str, Any],
) -> None:
    sensor = _sensor(defs)
    result = _tick(sensor, instance, resources, None)
    assert result.run_requests == []
    assert result.cursor == "0"


def test_a_publication_that_commits_after_a_later_one_is_still_requested(
    instance: dg.DagsterInstance,
    store: SqlManifestStore,
    defs: dg.Definitions,
    resources: dict[str, Any],
    tag: str,
    hashes: dict[str, str],
) -> None:
    """On PostgreSQL ids are handed out at insert, not at commit: batch B's manifest (id 2)
    can be visible while batch A's (id 1) is still committing. The tick in between must not
    move past A for good. Simulated here: A's row is taken out before the tick and put back,
    with its id, after it."""
    import sqlalchemy as sa

    from imageml_core.manifest import schema as tables

    sensor = _sensor(defs)
    a_id = _publish(store, str(AugmentKey("batch-aaaa", tag)))
    b_id = _publish(store, str(AugmentKey("batch-bbbb", tag)))
    assert b_id == a_id + 1
    with store.engine.begin() as conn:
        row = dict(
            conn.execute(sa.select(tables.manifests).where(tables.manifests.c.id == a_id))
            .one()
            ._mapping
        )
        conn.execute(sa.delete(tables.manifests).where(tables.manifests.c.id == a_id))

    first = _tick(sensor, instance, resources, "0")
    assert _requests(first) == _expected("batch-bbbb", hashes)
    assert json.loads(first.cursor or "") == {"after": b_id, "gaps": {str(a_id): 1}}

    with store.engine.begin() as conn:  # A commits
        conn.execute(sa.insert(tables.manifests).values(row))
    second = _tick(sensor, instance, resources, first.cursor)
    assert _requests(second) == _expected("batch-aaaa", hashes)
    assert second.cursor == str(b_id)
    assert _tick(sensor, instance, resources, second.cursor).run_requests == []


def test_an_id_that_never_commits_is_given_up_after_a_bounded_number_of_ticks(
    instance: dg.DagsterInstance,
    store: SqlManifestStore,
    defs: dg.Definitions,
    resources: dict[str, Any],
    tag: str,
) -> None:
    """A rolled-back insert (or a publication that lost a race) leaves an id that never
    appears: it is looked for on MAX_GAP_READS ticks, then dropped from the cursor."""
    from imageml_core.manifest.cursor import MAX_GAP_READS, PublicationCursor

    sensor = _sensor(defs)
    cursor = PublicationCursor(after=0, gaps={7: 1}).serialize()
    _publish(store, str(AugmentKey("batch-aaaa", tag)))
    for reads in range(2, MAX_GAP_READS + 1):
        cursor = _tick(sensor, instance, resources, cursor).cursor or ""
        assert json.loads(cursor)["gaps"] == {"7": reads}
    assert _tick(sensor, instance, resources, cursor).cursor == "1"
