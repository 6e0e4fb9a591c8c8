"""Dagster wiring: sensor ticks (cursor in, run requests and cursor out), the metadata
mirror, and a snapshot of the asset graph."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from imageml_assets.definitions import build_definitions, build_resources
from imageml_assets.defs.mirror.sensor import mirror_materializations
from imageml_core.discovery import DiscoveryCursor
from imageml_core.manifest import INGEST
from imageml_core.settings import Settings
from imageml_core.storage.object_store import ObjectStore
from imageml_core.uris import S3Uri
from tests.helpers import jpeg_bytes


@pytest.fixture
def settings(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("INGEST_BATCH_MAX_OBJECTS", "4")
    monkeypatch.setenv("RAW_FULL_SCAN_EVERY_TICKS", "3")
    return Settings.from_env()


def _tick(
    defs: dg.Definitions, settings: Settings, instance: dg.DagsterInstance, cursor: str | None
):
    sensor = defs.resolve_sensor_def("raw_objects_sensor")
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=build_resources(settings), definitions=defs
    ) as ctx:
        return sensor(ctx)


def test_sensor_yields_batches_then_only_new_objects(
    settings: Settings, object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed: list[str] = []
    real_list = ObjectStore.list_objects

    def counting_list(self, location, **kwargs):  # type: ignore[no-untyped-def]
        for info in real_list(self, location, **kwargs):
            listed.append(info.uri.key)
            yield info

    monkeypatch.setattr(ObjectStore, "list_objects", counting_list)
    raw = settings.raw_uri
    for i in range(6):
        object_store.put_bytes(raw.join(f"a/{i}.jpg"), jpeg_bytes(i))
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        first = _tick(defs, settings, instance, None)
        assert isinstance(first, dg.SensorResult)
        # 6 objects, at most 4 per batch -> 2 batches; run key == partition key == batch id.
        assert len(first.run_requests) == 2
        assert all(r.run_key == r.partition_key for r in first.run_requests)
        assert all(r.partition_key.startswith("batch-") for r in first.run_requests)
        added = first.dynamic_partitions_requests[0]
        assert sorted(added.partition_keys) == sorted(r.partition_key for r in first.run_requests)
        cursor = DiscoveryCursor.parse(first.cursor)
        assert cursor.last_key == raw.join("a/5.jpg").key
        assert cursor.ticks_since_full_scan == 0

        # Nothing new: no run requests; the cursor counts the tick.
        second = _tick(defs, settings, instance, first.cursor)
        assert second.run_requests == []
        assert DiscoveryCursor.parse(second.cursor).ticks_since_full_scan == 1

        # A key after the cursor is found on the next (cheap) tick, and only it is listed.
        object_store.put_bytes(raw.join("b/new.jpg"), jpeg_bytes(99))
        listed.clear()
        third = _tick(defs, settings, instance, second.cursor)
        assert [m.uri for m in _members(settings, third)] == [str(raw.join("b/new.jpg"))]
        assert listed == [raw.join("b/new.jpg").key]  # cost follows what is new, not the prefix

        # A key that sorts *before* the cursor waits for the periodic full scan (every 3rd
        # tick here), which also re-requests the batches planned earlier and never run.
        object_store.put_bytes(raw.join("0-early.jpg"), jpeg_bytes(98))
        listed.clear()
        fourth = _tick(defs, settings, instance, third.cursor)
        assert DiscoveryCursor.parse(fourth.cursor).ticks_since_full_scan == 0
        assert len(listed) == 8
        earlier = {r.partition_key for r in (*first.run_requests, *third.run_requests)}
        new = [r for r in fourth.run_requests if r.partition_key not in earlier]
        assert [m.uri for m in _members(settings, dg.SensorResult(run_requests=new))] == [
            str(raw.join("0-early.jpg"))
        ]
        assert {r.partition_key for r in fourth.run_requests} - {
            r.partition_key for r in new
        } == earlier


def _members(settings: Settings, result: dg.SensorResult) -> list:
    from imageml_resources.manifest_store import open_manifest_store

    store = open_manifest_store(settings.manifest_db_url)
    return [m for r in result.run_requests for m in store.batch_members(r.partition_key)]


def test_same_objects_make_the_same_batch_and_orphans_are_re_requested(
    settings: Settings, object_store: ObjectStore
) -> None:
    for i in range(3):
        object_store.put_bytes(settings.raw_uri.join(f"{i}.jpg"), jpeg_bytes(i))
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        first = _tick(defs, settings, instance, None)
        (request,) = first.run_requests
        # The run was never launched (a crash after planning): a full scan asks again,
        # with the same run key, so Dagster launches it at most once.
        again = _tick(defs, settings, instance, None)
        assert [r.run_key for r in again.run_requests] == [request.run_key]


def test_mirror_catches_up_after_downtime_without_duplicates(
    settings: Settings, object_store: ObjectStore
) -> None:
    from imageml_resources.manifest_store import open_manifest_store

    for i in range(5):
        object_store.put_bytes(settings.raw_uri.join(f"{i}.jpg"), jpeg_bytes(i))
    defs = build_definitions(settings)
    store = open_manifest_store(settings.manifest_db_url)
    with dg.instance_for_test() as instance:
        result = _tick(defs, settings, instance, None)
        instance.add_dynamic_partitions(
            "ingest_batches", [r.partition_key for r in result.run_requests]
        )
        job = defs.resolve_job_def("ingest_and_augment_job")
        only_ingest = [dg.AssetKey("raw_images")]
        for r in result.run_requests:
            assert job.execute_in_process(
                instance=instance, partition_key=r.partition_key, asset_selection=only_ingest
            ).success
        keys = [dg.AssetKey("raw_images")]
        # "Downtime": the mirror did not run while the materializations happened.
        assert mirror_materializations(instance, keys, store) == 2
        assert mirror_materializations(instance, keys, store) == 0
        rows = store.mirrored_materializations("raw_images")
        assert len(rows) == 2
        assert {r.partition_key for r in rows} == {r.partition_key for r in result.run_requests}
        assert all(r.metadata["count_images"] >= 1 for r in rows)
        # A rerun of a finished partition is a no-op for the data, a new event for Dagster.
        assert job.execute_in_process(
            instance=instance, partition_key=result.run_requests[0].partition_key
        ).success
        assert mirror_materializations(instance, keys, store) == 1
        assert len(store.processed_objects(INGEST)) == 5


def _mapping_name(mapping: object) -> str:
    """None means Dagster's default: identity for partitions of the same definition."""
    return type(mapping).__name__ if mapping is not None else "default (identity)"


def graph_snapshot(defs: dg.Definitions) -> dict[str, Any]:
    """The code location's shape: assets (deps with their partition mapping, partitions,
    group, kinds, tags, checks and whether they block), jobs (their asset selection) and
    sensors (their target jobs, default status, interval)."""
    graph = defs.resolve_asset_graph()
    assets: dict[str, Any] = {}
    for key in sorted(graph.get_all_asset_keys()):
        node, asset_def = graph.get(key), defs.resolve_assets_def(key)
        assets[key.to_user_string()] = {
            "deps": {
                parent.to_user_string(): _mapping_name(asset_def.get_partition_mapping(parent))
                for parent in sorted(node.parent_keys)
            },
            "partitions": type(node.partitions_def).__name__,
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "tags": {k: v for k, v in node.tags.items() if not k.startswith("dagster/kind/")},
            "code_version": bool(node.code_version),
            "checks": {spec.name: {"blocking": spec.blocking} for spec in asset_def.check_specs},
        }
    jobs = {
        job.name: sorted(
            k.to_user_string()
            for k in defs.resolve_job_def(job.name).asset_layer.executable_asset_keys
        )
        for job in defs.jobs or []
    }
    sensors = {
        sensor.name: {
            "jobs": sorted(t.job_name for t in sensor.targets),
            "default_status": sensor.default_status.value,
            "minimum_interval_seconds": sensor.minimum_interval_seconds,
        }
        for sensor in defs.sensors or []
    }
    return {"assets": assets, "jobs": jobs, "sensors": sensors}


def test_asset_graph_snapshot(settings: Settings) -> None:
    """The shape of the code location; update deliberately when the graph changes
    (``IMAGEML_UPDATE_SNAPSHOT=1`` rewrites the file)."""
    snapshot = graph_snapshot(build_definitions(settings))
    expected_path = Path(__file__).parent / "asset_graph.snapshot.json"
    if os.environ.get("IMAGEML_UPDATE_SNAPSHOT"):
        expected_path.write_text(json.dumps(snapshot, indent=2, sort_keys=True) + "\n")
    assert snapshot == json.loads(expected_path.read_text())


def test_code_versions_follow_the_policies_that_make_the_bytes(settings: Settings) -> None:
    """A setting that changes an asset's output bytes changes its code version (the UI then
    shows its partitions as stale); one that does not, does not."""

    def versions(**env: str) -> dict[str, str | None]:
        graph = build_definitions(Settings.from_env({**os.environ, **env})).resolve_asset_graph()
        return {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}

    base = versions()
    from imageml_core.stages.augment.pipeline import load_pipeline

    assert (
        base["augmented_images"]
        == load_pipeline(settings.augment_pipeline, copies=settings.augment_copies).tag
    )
    assert versions(NORMALIZE_QUALITY="80")["normalized_variants"] != base["normalized_variants"]
    assert versions(NORMALIZE_QUALITY="90")["normalized_variants"] == base["normalized_variants"]
    assert versions(AUGMENT_COPIES="3")["augmented_images"] != base["augmented_images"]
    assert versions(MAX_IMAGE_PIXELS="1000")["raw_images"] != base["raw_images"]
    assert versions(TRAIN_EPOCHS="3")["trained_model"] != base["trained_model"]
    assert versions(TRAIN_SHARD_IMAGES="7")["training_shards"] != base["training_shards"]
    assert all(base.values())
    # Batch limits and the dataset name are not in any output's bytes.
    assert versions(INGEST_BATCH_MAX_OBJECTS="7", DATASET_NAME="other") == base


def test_object_store_uri_forms_reach_the_same_object(
    settings: Settings, object_store: ObjectStore
) -> None:
    from imageml_core.uris import parse_s3_uri

    object_store.put_bytes(settings.raw_uri.join("x.jpg"), b"abc")
    path_style = f"{settings.s3_endpoint_url}/{settings.raw_uri.bucket}/raw/x.jpg"
    uri = parse_s3_uri(path_style, settings.s3_endpoint_url)
    assert uri == S3Uri(settings.raw_uri.bucket, "raw/x.jpg")
    assert object_store.get_bytes(uri) == b"abc"
