"""One bad annotation file never fails a batch (issue 9, part 2): each malformed Label Studio
or COCO file beside good images and a good file is reported (file, JSON path, reason), what
it holds that can be used is used, and every image of the batch is augmented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imageml_cli.runner import open_instance, run_pipeline
from imageml_core.manifest import AUGMENT
from imageml_core.manifest.documents import AugmentManifest
from imageml_core.manifest.publish import read_document
from imageml_core.settings import Settings
from imageml_core.storage.object_store import ObjectStore
from imageml_resources import open_manifest_store
from tests.helpers import jpeg_bytes

RECT = {
    "id": "r1",
    "type": "rectanglelabels",
    "from_name": "label",
    "to_name": "image",
    "original_width": 100,
    "original_height": 80,
    "value": {"x": 10, "y": 10, "width": 20, "height": 20, "rectanglelabels": ["cat"]},
}
IMAGE = {"id": 1, "file_name": "b.jpg", "width": 100, "height": 80}
CAT = {"id": 1, "name": "cat"}


def _task(**fields: object) -> dict[str, object]:
    return {"id": 1, "data": {"image": "a.jpg"}, **fields}


# name -> (document, where the problem is reported: a problem's JSON path, or "file")
BAD_FILES: dict[str, tuple[object, str]] = {
    "ls-empty.json": ([], "none"),
    "ls-no-annotations.json": ([_task(annotations=[])], "none"),
    "ls-choices.json": (
        [
            _task(
                annotations=[
                    {
                        "result": [
                            {"type": "choices", "from_name": "c", "to_name": "image", "value": {}}
                        ]
                    }
                ]
            )
        ],
        "none",
    ),
    "ls-value-string.json": (
        [_task(annotations=[{"result": [{**RECT, "value": "oops"}]}])],
        "[0].annotations[0].result[0].value",
    ),
    "ls-annotations-object.json": ([_task(annotations={"result": [RECT]})], "[0].annotations"),
    "ls-prediction-ids.json": ([_task(predictions=[4, 5])], "[0].predictions"),
    "coco-bbox3.json": (
        {
            "images": [IMAGE],
            "categories": [CAT],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}],
        },
        ".annotations[0].bbox",
    ),
    "coco-image-no-id.json": (
        {"images": [{"file_name": "b.jpg"}], "categories": [CAT], "annotations": []},
        ".images[0].id",
    ),
    "coco-category-no-name.json": (
        {"images": [IMAGE], "categories": [{"id": 1}], "annotations": []},
        ".categories[0].name",
    ),
    "coco-odd-polygon.json": (
        {
            "images": [IMAGE],
            "categories": [CAT],
            "annotations": [
                {
                    "id": 1,
                    "image_id": 1,
                    "category_id": 1,
                    "bbox": [5, 5, 10, 10],
                    "segmentation": [[1, 2, 3, 4, 5, 6, 7]],
                }
            ],
        },
        ".annotations[0]",
    ),
}


@pytest.fixture
def settings(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in {**s3_env, "AUGMENT_PIPELINE": "light"}.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_annotation_file_is_reported_and_the_batch_goes_on(
    name: str, settings: Settings, object_store: ObjectStore, tmp_path: Path
) -> None:
    doc, where = BAD_FILES[name]
    folder = settings.raw_uri.join("set")
    object_store.put_bytes(folder.join("a.jpg"), jpeg_bytes(1, (100, 80)))
    object_store.put_bytes(folder.join("b.jpg"), jpeg_bytes(2, (100, 80)))
    good = [{"id": 9, "data": {"image": "a.jpg"}, "annotations": [{"result": [RECT]}]}]
    object_store.put_bytes(folder.join("good.json"), json.dumps(good).encode())
    object_store.put_bytes(folder.join(name), json.dumps(doc).encode())
    instance = open_instance(tmp_path / "dagster")
    summary = run_pipeline(settings, instance, until="augment", echo=lambda _m: None)
    instance.dispose()
    assert not summary.failed, [r.metadata for r in summary.failed]

    (record,) = open_manifest_store(settings.manifest_db_url).manifests(AUGMENT)
    manifest = read_document(object_store, record, AugmentManifest)
    assert len(manifest.outputs) == 2  # both images augmented
    sources = {s.uri.rsplit("/", 1)[-1]: s for s in manifest.sources}
    assert [r.bbox for r in sources["a.jpg"].regions] == [(10.0, 8.0, 20.0, 16.0)]  # good file
    intake = manifest.annotations.intake or {}
    bad_uri = str(folder.join(name))
    (entry,) = [f for f in intake["files"] if f["uri"] == bad_uri]
    assert "error" not in entry  # the file was read; what it held was checked record by record
    problems = [p for p in intake["problems"] if p["file"] == bad_uri]
    if where == "none":
        assert problems == [] and entry.get("note") == (
            "no rectangle or polygon regions: the images stay unlabelled"
        )
    else:
        assert [p["path"] for p in problems] == [where], problems
        assert all(p["reason"] for p in problems)
