"""What the Dagster UI shows of a materialization: row counts, quarantine tables, a preview
of each variant; and the blocking ingest check stopping augmentation of a lossy batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from imageml_assets.definitions import build_definitions
from imageml_cli.runner import RunSummary, open_instance, run_pipeline
from imageml_core.discovery import DiscoveryCursor, discover
from imageml_core.manifest import INGEST
from imageml_core.manifest import schema as tables
from imageml_core.settings import Settings
from imageml_core.storage.object_store import ObjectStore
from imageml_resources import open_manifest_store
from tests.helpers import jpeg_bytes


@pytest.fixture
def settings(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    env = {**s3_env, "NORMALIZE_SIZES": "720p,64x64", "AUGMENT_PIPELINE": "light"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


def _materializations(summary: RunSummary, asset: str) -> list[dict[str, Any]]:
    return [run.metadata[asset] for run in summary.runs if asset in run.metadata]


def test_row_counts_quarantine_tables_and_variant_previews(
    settings: Settings, object_store: ObjectStore, tmp_path: Path
) -> None:
    raw = settings.raw_uri
    object_store.put_bytes(raw.join("a.jpg"), jpeg_bytes(1, (320, 240)))
    object_store.put_bytes(raw.join("b.jpg"), jpeg_bytes(2, (320, 240)))
    object_store.put_bytes(raw.join("broken.jpg"), b"not an image")
    coco = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 320, "height": 240},
            {"id": 2, "file_name": "ghost.jpg", "width": 320, "height": 240},
        ],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 99, "bbox": [1, 1, 9, 9]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 9, 9]},
        ],
    }
    object_store.put_bytes(raw.join("coco.json"), json.dumps(coco).encode())
    instance = open_instance(tmp_path / "dagster")
    summary = run_pipeline(settings, instance, until="normalize", echo=lambda _m: None)
    assert not summary.failed

    (ingest,) = _materializations(summary, "raw_images")
    assert ingest["dagster/row_count"] == 2 == ingest["count_images"]
    table = ingest["quarantined"]
    assert [(r.data["uri"], r.data["reason"]) for r in table.records] == [
        (str(raw.join("broken.jpg")), "not an image (unrecognised format)")
    ]
    assert [c.name for c in table.schema.columns] == ["uri", "reason"]

    (augment,) = _materializations(summary, "augmented_images")
    assert augment["dagster/row_count"] == augment["outputs"] == 2  # light: 1 copy each
    # What annotation intake reported is in the metadata too (issue 9, part 3).
    assert augment["annotation_issues"] == 2
    issues = [tuple(r.data.values()) for r in augment["annotation_issue_list"].records]
    assert issues == [
        (
            str(raw.join("coco.json")),
            ".annotations[0]",
            "category_id 99 is not among the categories",
        ),
        (str(raw.join("coco.json")), "ghost.jpg", "names no ingested image of the file's folder"),
    ]
    assert augment["annotation_version"] != "none"

    variants = {m["variant"]: m for m in _materializations(summary, "normalized_variants")}
    assert set(variants) == {"720p", "64x64"}
    for name, meta in variants.items():
        assert meta["dagster/row_count"] == 4  # 2 originals + 2 copies
        preview = meta["preview"]
        assert preview.startswith(f"**{name}**: ")
        size = "320x240" if name == "720p" else "64x64"  # 720p caps, never upscales
        assert f"| {size} | 4 |" in preview
        assert ".coco.json`" in preview and ".label_studio.json`" in preview
        assert str(meta["manifest_uri"]) in preview
        assert "quarantined" not in meta  # nothing left out at this stage
    instance.dispose()


def test_a_failed_every_object_recorded_check_blocks_augmentation(
    settings: Settings, object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check is blocking: a batch that lost an object silently is not augmented in the
    same run (Dagster skips the downstream step)."""
    import imageml_assets.defs.ingest.assets as ingest_assets

    for i in range(2):
        object_store.put_bytes(settings.raw_uri.join(f"{i}.jpg"), jpeg_bytes(i))
    store = open_manifest_store(settings.manifest_db_url)
    (batch,) = discover(
        object_store,
        store,
        settings.raw_uri,
        DiscoveryCursor(),
        max_objects=10,
        max_bytes=10**9,
        full_scan_every=1,
        source="run",
    ).new_batches
    real = ingest_assets.ingest_batch
    lost = str(settings.raw_uri.join("1.jpg"))

    def lossy(*args: Any, **kwargs: Any) -> Any:
        """Ingest as usual, then lose one object's ledger record (the fault the check
        exists to catch)."""
        result = real(*args, **kwargs)
        with store.engine.begin() as conn:  # type: ignore[attr-defined]
            po = tables.processed_objects.c
            conn.execute(sa.delete(tables.processed_objects).where(po.object_uri == lost))
        return result

    monkeypatch.setattr(ingest_assets, "ingest_batch", lossy)
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("ingest_batches", [batch.batch_id])
        result = defs.resolve_job_def("ingest_and_augment_job").execute_in_process(
            instance=instance, partition_key=batch.batch_id, raise_on_error=False
        )
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["every_object_recorded"].passed is False
    assert checks["every_object_recorded"].metadata["missing"].value == [lost]
    materialized = {
        e.event_specific_data.materialization.asset_key.to_user_string()  # type: ignore[union-attr]
        for e in result.get_asset_materialization_events()
    }
    assert materialized == {"raw_images"}  # augmented_images did not run
    assert [r.uri for r in store.processed_objects(INGEST)] == [str(settings.raw_uri.join("0.jpg"))]
