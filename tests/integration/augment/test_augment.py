"""Stage 1 augment on real S3: N deterministic copies, annotations in both forms, checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg
import pytest

from imageml_assets.definitions import build_definitions, build_resources
from imageml_core.discovery import DiscoveryCursor, discover
from imageml_core.manifest import AUGMENT, SqlManifestStore
from imageml_core.settings import Settings
from imageml_core.storage.object_store import ObjectStore
from imageml_core.uris import S3Uri, parse_s3_uri
from imageml_dev.synthetic import LABEL_CONFIG, generate_dataset


@pytest.fixture
def settings(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AUGMENT_COPIES", "3")
    return Settings.from_env()


def _upload_dataset(
    store: ObjectStore, settings: Settings, tmp_path: Path, images: int = 6
) -> None:
    files = generate_dataset(tmp_path / "ds", images=images, zip_images=2, include_bad=False)
    store.upload_many([(tmp_path / "ds" / f, settings.raw_uri.join(str(f))) for f in files])


def _materialize(settings: Settings, store_url: str) -> tuple[dg.ExecuteInProcessResult, str]:
    defs = build_definitions(settings)
    resources = build_resources(settings)
    manifest = SqlManifestStore(store_url)
    manifest.migrate()
    store = resources["object_store"].get_client()
    found = discover(
        store,
        manifest,
        settings.raw_uri,
        DiscoveryCursor(),
        max_objects=100,
        max_bytes=10**9,
        full_scan_every=1,
        source="run",
    )
    (batch,) = found.new_batches
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("ingest_batches", [batch.batch_id])
        result = defs.resolve_job_def("ingest_and_augment_job").execute_in_process(
            instance=instance,
            partition_key=batch.batch_id,
            resources={
                **resources,
                "manifest_store": type(resources["manifest_store"])(url=store_url),
            },
        )
    return result, batch.batch_id


def test_augment_copies_annotations_checks_and_byte_identical_rerun(
    settings: Settings, object_store: ObjectStore, tmp_path: Path
) -> None:
    _upload_dataset(object_store, settings, tmp_path)
    result, batch_id = _materialize(settings, settings.manifest_db_url)
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "every_object_recorded": True,
        "every_source_has_its_copies": True,
        "every_box_inside_its_image": True,
        "annotation_counts_conserved": True,
    }
    store = SqlManifestStore(settings.manifest_db_url)
    (published,) = store.manifests(AUGMENT)
    doc = json.loads(object_store.get_bytes(parse_s3_uri(published.manifest_uri)))
    sources = doc["sources"]
    assert len(sources) == 8  # 6 images + 2 from the ZIP
    assert len(doc["outputs"]) == 8 * 3
    # Annotated sources (the LS and COCO folders) kept their boxes through augmentation.
    annotated = [s for s in sources if s["regions"]]
    assert len(annotated) == 6
    assert doc["annotations"]["intake"]["unmatched_names"] == []
    assert {f["annotation_format"] for f in doc["annotations"]["intake"]["files"]} == {
        "label_studio",
        "coco",
    }
    assert doc["annotations"]["converter_version"]
    for out in doc["outputs"]:
        data = object_store.get_bytes(parse_s3_uri(out["uri"]))
        assert hashlib.sha256(data).hexdigest() == out["sha256"]
    coco = json.loads(object_store.get_bytes(parse_s3_uri(doc["annotations"]["coco_uri"])))
    ls = json.loads(object_store.get_bytes(parse_s3_uri(doc["annotations"]["label_studio_uri"])))
    assert len(coco["images"]) == 24 and coco["annotations"][0]["id"] == 1
    assert sum(len(a["result"]) for t in ls for a in t["annotations"]) == len(coco["annotations"])
    from label_studio_sdk.label_interface import LabelInterface

    interface = LabelInterface(LABEL_CONFIG)
    for task in ls:
        for ann in task["annotations"]:
            assert interface.validate_prediction({"result": ann["result"]}), ann
    lineage = store.lineage(sources[0]["uri"])
    assert len([e for e in lineage.downstream if e.step == "augment"]) == 3

    # The same batch materialized again from scratch (a new manifest store, so nothing is
    # skipped) computes every output again: byte-identical, so nothing is rewritten.
    before = {
        o.uri.key: o.etag
        for o in object_store.list_objects(S3Uri(settings.augmented_uri.bucket, "augmented"))
    }
    again, same_batch = _materialize(settings, f"sqlite:///{tmp_path / 'second.db'}")
    assert again.success and same_batch == batch_id
    mats = {}
    for event in again.get_asset_materialization_events():
        mat = event.event_specific_data.materialization  # type: ignore[union-attr]
        mats[mat.asset_key.to_user_string()] = mat.metadata
    assert mats["augmented_images"]["objects_written"].value == 0
    assert mats["augmented_images"]["outputs"].value == 24
    after = {
        o.uri.key: o.etag
        for o in object_store.list_objects(S3Uri(settings.augmented_uri.bucket, "augmented"))
    }
    assert after == before
    second = SqlManifestStore(f"sqlite:///{tmp_path / 'second.db'}")
    assert second.manifests(AUGMENT)[0].content_sha256 == published.content_sha256
