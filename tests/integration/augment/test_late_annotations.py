"""Annotations that arrive after their images (issue 9, part 1): an annotation file is a
versioned input; a new or changed one gives the images of its folder a new annotated version
(re-augmented and re-normalized), whatever batch they came in; lineage and the manifests
name the version every output used; a file that names no image yet waits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from imageml_cli.main import cli
from imageml_cli.runner import RunSummary, open_instance, run_pipeline
from imageml_core.manifest import AUGMENT, NORMALIZE
from imageml_core.manifest.documents import AugmentManifest, NormalizeManifest
from imageml_core.manifest.keys import AugmentKey, NormalizeKey
from imageml_core.manifest.publish import read_document
from imageml_core.settings import Settings
from imageml_core.storage.object_store import ObjectStore
from imageml_core.uris import parse_s3_uri
from imageml_resources import open_manifest_store
from tests.helpers import jpeg_bytes

NAMES = ["photo_0.jpg", "photo_1.jpg", "photo_2.jpg"]


def _tasks(label: str = "cat") -> bytes:
    """A Label Studio export naming the three photos (100x80): one box each, at x = 10 %
    + 10 % * n, y 10 %, 20 % x 20 %, i.e. pixels (10 + 10 n, 8, 20, 16)."""
    tasks = [
        {
            "id": n + 1,
            "data": {"image": f"/data/upload/1/0a1b2c3d-{name}"},
            "annotations": [
                {
                    "id": n + 1,
                    "result": [
                        {
                            "id": f"r{n}",
                            "type": "rectanglelabels",
                            "from_name": "label",
                            "to_name": "image",
                            "original_width": 100,
                            "original_height": 80,
                            "value": {
                                "x": 10 + 10 * n,
                                "y": 10,
                                "width": 20,
                                "height": 20,
                                "rectanglelabels": [label],
                            },
                        }
                    ],
                }
            ],
        }
        for n, name in enumerate(NAMES)
    ]
    return json.dumps(tasks).encode()


EXPECTED = {name: [(10.0 + 10 * n, 8.0, 20.0, 16.0)] for n, name in enumerate(NAMES)}


@pytest.fixture
def settings(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    env = {**s3_env, "AUGMENT_PIPELINE": "light", "NORMALIZE_SIZES": "360p"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


def _run(settings: Settings, tmp_path: Path) -> RunSummary:
    instance = open_instance(tmp_path / "dagster")
    try:
        summary = run_pipeline(settings, instance, echo=lambda _m: None)
    finally:
        instance.dispose()
    assert not summary.failed, [r.metadata for r in summary.failed]
    return summary


def _current_boxes(settings: Settings, object_store: ObjectStore) -> dict[str, list]:
    """Boxes per image name in the newest augment manifest that covers the image."""
    store = open_manifest_store(settings.manifest_db_url)
    boxes: dict[str, list] = {}
    for record in store.manifests(AUGMENT):  # oldest first: later versions win
        doc = read_document(object_store, record, AugmentManifest)
        for s in doc.sources:
            boxes[s.uri.rsplit("/", 1)[-1]] = [r.bbox for r in s.regions]
    return boxes


def test_an_export_uploaded_after_its_images_makes_a_new_annotated_version(
    settings: Settings, object_store: ObjectStore, tmp_path: Path
) -> None:
    folder = settings.raw_uri.join("set")
    for n, name in enumerate(NAMES):
        object_store.put_bytes(folder.join(name), jpeg_bytes(n, (100, 80)))
    _run(settings, tmp_path)
    store = open_manifest_store(settings.manifest_db_url)
    (first,) = store.manifests(AUGMENT)
    unannotated = AugmentKey.parse(first.partition_key)
    assert unannotated.annotations == ""
    old = read_document(object_store, first, AugmentManifest)
    assert all(not s.regions for s in old.sources)

    tasks_uri = folder.join("tasks.json")
    object_store.put_bytes(tasks_uri, _tasks())
    _run(settings, tmp_path)

    augment = {AugmentKey.parse(m.partition_key): m for m in store.manifests(AUGMENT)}
    annotated = [k for k in augment if k.batch_id == unannotated.batch_id and k.annotations]
    assert len(annotated) == 1, augment
    (key,) = annotated
    doc = read_document(object_store, augment[key], AugmentManifest)
    assert {s.uri.rsplit("/", 1)[-1]: [r.bbox for r in s.regions] for s in doc.sources} == (
        EXPECTED
    )
    assert doc.annotations.annotation_version == key.annotations
    assert [i["uri"] for i in doc.annotations.inputs or ()] == [str(tasks_uri)]
    # The copies are the same bytes as the unannotated version's; only their boxes differ.
    assert {o.uri: o.sha256 for o in doc.outputs} == {o.uri: o.sha256 for o in old.outputs}
    assert all(len(o.regions) == 1 for o in doc.outputs)
    # The earlier version's files are still there, unchanged.
    assert old.annotations.coco_uri != doc.annotations.coco_uri
    assert object_store.head(parse_s3_uri(old.annotations.coco_uri)) is not None

    # Stage 2 normalized the new version too (360p caps: a 100x80 image keeps its size).
    nkeys = [NormalizeKey.parse(m.partition_key) for m in store.manifests(NORMALIZE)]
    nkey = NormalizeKey.of(key, "360p", nkeys[0].policy_hash)
    assert nkey in nkeys
    nrecord = store.get_manifest(NORMALIZE, str(nkey))
    assert nrecord is not None
    ndoc = read_document(object_store, nrecord, NormalizeManifest)
    coco = json.loads(object_store.get_bytes(parse_s3_uri(ndoc.annotations.coco_uri)))
    original = {o.output_uri for o in ndoc.outputs if o.source_kind == "original"}
    names = {i["id"]: i["file_name"] for i in coco["images"]}
    originals: dict[str, list] = {}
    for a in coco["annotations"]:
        name = names[a["image_id"]]
        if name in original:  # (not the augmented copies)
            originals.setdefault(name.rsplit("/", 1)[-1], []).append(tuple(a["bbox"]))
    assert originals == EXPECTED
    assert ndoc.annotations.annotation_version == key.annotations

    # Lineage: the export leads to the annotation files of the version that used it.
    lineage = store.lineage(str(tasks_uri))
    assert {e.output_uri for e in lineage.downstream} == {
        doc.annotations.coco_uri,
        doc.annotations.label_studio_uri,
    }

    # A rerun of finished work does nothing.
    assert _run(settings, tmp_path).runs == []


def test_one_upload_split_into_batches_keeps_every_box(
    settings: Settings, object_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # photo_0, photo_1 | photo_2, tasks.json: the export comes in the second batch.
    monkeypatch.setenv("INGEST_BATCH_MAX_OBJECTS", "2")
    settings = Settings.from_env()
    folder = settings.raw_uri.join("set")
    for n, name in enumerate(NAMES):
        object_store.put_bytes(folder.join(name), jpeg_bytes(n, (100, 80)))
    object_store.put_bytes(folder.join("tasks.json"), _tasks())
    _run(settings, tmp_path)
    assert _current_boxes(settings, object_store) == EXPECTED


def test_a_changed_export_makes_another_version_and_an_early_one_waits(
    settings: Settings, object_store: ObjectStore, tmp_path: Path
) -> None:
    folder = settings.raw_uri.join("set")
    tasks_uri = folder.join("tasks.json")
    object_store.put_bytes(tasks_uri, _tasks())
    _run(settings, tmp_path)  # the export alone: nothing to apply it to yet
    shown = CliRunner().invoke(cli, ["lineage", str(tasks_uri)])
    assert shown.exit_code == 0, shown.output
    assert "not applied yet" in shown.output

    for n, name in enumerate(NAMES):
        object_store.put_bytes(folder.join(name), jpeg_bytes(n, (100, 80)))
    _run(settings, tmp_path)
    assert _current_boxes(settings, object_store) == EXPECTED
    shown = CliRunner().invoke(cli, ["lineage", str(tasks_uri)])
    assert "not applied yet" not in shown.output and ".coco.json" in shown.output

    # The export is replaced (labels renamed): a third version, with the new labels.
    object_store.put_bytes(tasks_uri, _tasks(label="dog"))
    _run(settings, tmp_path)
    store = open_manifest_store(settings.manifest_db_url)
    newest = store.manifests(AUGMENT)[-1]
    doc = read_document(object_store, newest, AugmentManifest)
    assert {r.label for s in doc.sources for r in s.regions} == {"dog"}
    assert {s.uri.rsplit("/", 1)[-1]: [r.bbox for r in s.regions] for s in doc.sources} == (
        EXPECTED
    )


def test_a_broken_revision_over_a_good_export_keeps_the_good_one_and_says_so(
    settings: Settings, object_store: ObjectStore, tmp_path: Path
) -> None:
    folder = settings.raw_uri.join("set")
    for n, name in enumerate(NAMES):
        object_store.put_bytes(folder.join(name), jpeg_bytes(n, (100, 80)))
    tasks_uri = folder.join("tasks.json")
    object_store.put_bytes(tasks_uri, _tasks())
    _run(settings, tmp_path)
    object_store.put_bytes(tasks_uri, b"{broken")  # a failed save, uploaded over it
    _run(settings, tmp_path)

    store = open_manifest_store(settings.manifest_db_url)
    newest = store.manifests(AUGMENT)[-1]
    doc = read_document(object_store, newest, AugmentManifest)
    assert AugmentKey.parse(newest.partition_key).annotations  # a new version, not the old
    assert _current_boxes(settings, object_store) == EXPECTED  # the good revision still used
    problems = (doc.annotations.intake or {})["problems"]
    assert [(p["file"], p["path"]) for p in problems] == [(str(tasks_uri), "")]
    assert "newest revision of this annotation file" in problems[0]["reason"]
    assert "was quarantined at ingest: annotation file is not valid JSON" in problems[0]["reason"]
    assert "the previous revision" in problems[0]["reason"]
    statuses = [i.get("status", "ok") for i in doc.annotations.inputs or ()]
    assert statuses == ["ok", "quarantined"]
