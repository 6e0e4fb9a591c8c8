"""Annotation intake rules (issue 9): names as real exports write them, labels that need
escaping, COCO files whose image sizes disagree with the images, files never failing."""

from __future__ import annotations

import json
from pathlib import Path

from imageml_core.annotations.intake import ImageRef, base_name, collect_annotations

FOLDER = "s3://b/raw/set"


def _collect(tmp_path: Path, doc: object, images: list[ImageRef]) -> tuple[dict, dict]:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    regions, report = collect_annotations(
        images, [(f"{FOLDER}/ann.json", path)], folder_images={FOLDER: images}
    )
    return {k: [r.bbox for r in v] for k, v in regions.items()}, report.as_dict()


def _rect(label: str, x: float = 10, y: float = 10) -> dict:
    return {
        "id": "r1",
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": 100,
        "original_height": 80,
        "value": {"x": x, "y": y, "width": 20, "height": 20, "rectanglelabels": [label]},
    }


def test_url_encoded_task_references_are_decoded_before_matching(tmp_path: Path) -> None:
    name = "Capture décran (1).png"
    assert base_name("/data/local-files/?d=screens/Capture%20d%C3%A9cran%20%281%29.png") == name
    image = ImageRef(f"{FOLDER}/{name}", 100, 80)
    ref = "/data/local-files/?d=screens/Capture%20d%C3%A9cran%20%281%29.png"
    task = {"id": 1, "data": {"image": ref}, "annotations": [{"result": [_rect("cat")]}]}
    regions, report = _collect(tmp_path, [task], [image])
    assert regions == {image.uri: [(10.0, 8.0, 20.0, 16.0)]}
    assert report["unmatched_names"] == []


def test_labels_that_need_escaping_make_a_valid_config(tmp_path: Path) -> None:
    image = ImageRef(f"{FOLDER}/a.jpg", 100, 80)
    labels = ["Salt & Pepper", 'say "cheese"', "a < b"]
    results = [{**_rect(label, x=10 + 20 * i), "id": f"r{i}"} for i, label in enumerate(labels)]
    task = {"id": 1, "data": {"image": "a.jpg"}, "annotations": [{"result": results}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps([task]))
    regions, report = collect_annotations(
        [image], [(f"{FOLDER}/ann.json", path)], folder_images={FOLDER: [image]}
    )
    assert sorted(r.label for r in regions[image.uri]) == sorted(labels)
    assert report.problems == [] and "error" not in report.files[0]


def test_a_coco_image_size_that_disagrees_with_the_image_is_reported(tmp_path: Path) -> None:
    image = ImageRef(f"{FOLDER}/a.jpg", 320, 240)
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 480}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 5, 5]}],
    }
    regions, report = _collect(tmp_path, doc, [image])
    assert regions == {image.uri: [(10.0, 10.0, 5.0, 5.0)]}
    (problem,) = report["problems"]
    assert problem["path"] == ".images[0]"
    assert problem["reason"].startswith(
        "width x height 640x480 in the file, but the image is 320x240"
    )


def test_a_file_that_is_not_json_is_reported_not_raised(tmp_path: Path) -> None:
    image = ImageRef(f"{FOLDER}/a.jpg", 100, 80)
    path = tmp_path / "ann.json"
    path.write_text("{not json")
    regions, report = collect_annotations(
        [image], [(f"{FOLDER}/ann.json", path)], folder_images={FOLDER: [image]}
    )
    assert regions == {}
    assert report.files[0]["error"].startswith("JSONDecodeError")
