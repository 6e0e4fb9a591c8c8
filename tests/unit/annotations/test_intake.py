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


def test_a_rotated_rectangle_is_turned_in_pixels_not_percent(tmp_path: Path) -> None:
    # Issue 9: 1000x800, x=40 %, y=30 %, w=20 %, h=10 %, 30 degrees. The SDK turns it in
    # percent space and writes [350, 240, 223.2, 149.3]; the enclosing box in pixels is
    # [360, 240, 213.2, 169.3] and the corners are (400, 240), (573.2, 340),
    # (533.2, 409.3), (360, 309.3).
    image = ImageRef(f"{FOLDER}/a.jpg", 1000, 800)
    result = {
        "id": "r1",
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": 1000,
        "original_height": 800,
        "value": {
            "x": 40,
            "y": 30,
            "width": 20,
            "height": 10,
            "rotation": 30,
            "rectanglelabels": ["car"],
        },
    }
    task = {"id": 1, "data": {"image": "a.jpg"}, "annotations": [{"result": [result]}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps([task]))
    regions, _ = collect_annotations(
        [image], [(f"{FOLDER}/ann.json", path)], folder_images={FOLDER: [image]}
    )
    (region,) = regions[image.uri]
    assert [round(v, 1) for v in region.bbox] == [360.0, 240.0, 213.2, 169.3]
    assert [round(v, 1) for v in region.polygon] == [
        400.0, 240.0, 573.2, 340.0, 533.2, 409.3, 360.0, 309.3
    ]  # fmt: skip


def test_a_rotated_rectangle_keeps_its_area_and_a_zero_rotation_stays_a_box() -> None:
    from imageml_core.annotations.ls_to_coco import ls_to_coco

    def task(rotation: float) -> dict:
        value = {"x": 10, "y": 10, "width": 50, "height": 20, "rotation": rotation}
        result = {
            "id": "r1",
            "type": "rectanglelabels",
            "from_name": "label",
            "to_name": "image",
            "original_width": 200,
            "original_height": 100,
            "value": {**value, "rectanglelabels": ["car"]},
        }
        return {"id": 1, "data": {"image": "a.jpg"}, "annotations": [{"result": [result]}]}

    config = (
        '<View><Image name="image" value="$image"/><RectangleLabels name="label" '
        'toName="image"><Label value="car"/></RectangleLabels></View>'
    )
    (turned,) = ls_to_coco([task(90)], config)[0]["annotations"]
    # 100x20 px turned 90 degrees clockwise about (20, 10): x 0..20, y 10..110.
    assert [round(v, 6) for v in turned["bbox"]] == [0.0, 10.0, 20.0, 100.0]
    assert turned["area"] == 2000.0
    (plain,) = ls_to_coco([task(0)], config)[0]["annotations"]
    assert plain["bbox"] == [20.0, 10.0, 100.0, 20.0] and not plain["segmentation"]


def test_coco_category_ids_are_the_users_and_conflicts_are_reported(tmp_path: Path) -> None:
    # Issue 9: person=1, car=3 must stay person=1, car=3 (not car=1, person=2).
    from imageml_core.annotations.coco import AnnotatedImage, coco_document

    images = [ImageRef(f"{FOLDER}/a.jpg", 100, 80), ImageRef(f"{FOLDER}/b.jpg", 100, 80)]

    def coco(name: str, categories: list[dict]) -> dict:
        return {
            "images": [{"id": 1, "file_name": name, "width": 100, "height": 80}],
            "categories": categories,
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": c["id"], "bbox": [1, 1, 5, 5]}
                for c in categories
            ],
        }

    first = tmp_path / "1.json"
    first.write_text(
        json.dumps(coco("a.jpg", [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}]))
    )
    # A second file gives car another id and reuses 3 for a new name: both reported.
    second = tmp_path / "2.json"
    second.write_text(
        json.dumps(coco("b.jpg", [{"id": 7, "name": "car"}, {"id": 3, "name": "bus"}]))
    )
    regions, report = collect_annotations(
        images,
        [(f"{FOLDER}/1.json", first), (f"{FOLDER}/2.json", second)],
        folder_images={FOLDER: images},
    )
    assert report.category_ids == {"car": 3, "person": 1}
    reasons = [p["reason"] for p in report.problems]
    assert reasons == [
        f"category 'car' has id 7 here but 3 in {FOLDER}/1.json; 3 is used",
        f"category id 3 names 'bus' here but 'car' in {FOLDER}/1.json; 'bus' gets a new id",
    ]
    doc = coco_document(
        [AnnotatedImage(i.uri, i.width, i.height, regions[i.uri]) for i in images],
        report.category_ids,
    )
    assert doc["categories"] == [
        {"id": 1, "name": "person"},
        {"id": 3, "name": "car"},
        {"id": 4, "name": "bus"},
    ]
    by_id = {c["id"]: c["name"] for c in doc["categories"]}
    assert sorted(by_id[a["category_id"]] for a in doc["annotations"]) == [
        "bus",
        "car",
        "car",
        "person",
    ]


def test_a_label_missing_from_the_folders_label_config_is_reported_and_kept(
    tmp_path: Path,
) -> None:
    from imageml_core.annotations.intake import LabelConfig

    image = ImageRef(f"{FOLDER}/a.jpg", 100, 80)
    config = LabelConfig(
        f"{FOLDER}/label_config.xml",
        '<View><Image name="image" value="$image"/><RectangleLabels name="label" '
        'toName="image"><Label value="cat"/></RectangleLabels></View>',
    )
    results = [_rect("cat"), {**_rect("dog", x=50), "id": "r2"}]
    task = {"id": 7, "data": {"image": "a.jpg"}, "annotations": [{"id": 3, "result": results}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps([task]))
    regions, report = collect_annotations(
        [image],
        [(f"{FOLDER}/ann.json", path)],
        folder_images={FOLDER: [image]},
        label_configs={FOLDER: config},
    )
    assert sorted(r.label for r in regions[image.uri]) == ["cat", "dog"]
    assert report.problems == [
        {
            "file": f"{FOLDER}/ann.json",
            "path": "task 7 annotation 3 region r2",
            "reason": f"label 'dog' is not in {FOLDER}/label_config.xml (control 'label'); "
            "the region is kept",
        }
    ]
    assert report.files[0]["label_config_uri"] == config.uri


def test_label_config_files_are_checked_at_ingest(tmp_path: Path) -> None:
    from imageml_core.stages.ingest.verify import check_label_config

    good = tmp_path / "good.xml"
    good.write_text('<View><Image name="image" value="$image"/></View>')
    assert check_label_config(good).ok
    table = {
        "<View><Image": "labelling config is not well-formed XML: ParseError",
        "<Root/>": "labelling config's root element is <Root>, not <View>",
        '<!DOCTYPE v [<!ENTITY a "aaaa">]><View>&a;</View>': (
            "labelling config is not well-formed XML: EntitiesForbidden"
        ),
    }
    for text, reason in table.items():
        bad = tmp_path / "bad.xml"
        bad.write_text(text)
        check = check_label_config(bad)
        assert not check.ok and check.reason is not None and check.reason.startswith(reason)
    latin = tmp_path / "latin.xml"
    latin.write_bytes("<View>caf\xe9</View>".encode("latin-1"))
    assert check_label_config(latin).reason.startswith("labelling config is not UTF-8 text")  # type: ignore[union-attr]


def test_label_studio_data_urls_are_decoded_before_the_name_is_taken() -> None:
    assert base_name("/data/local-files/?d=g%2Fi0.jpg") == "i0.jpg"  # %2F: a folder
    assert base_name("/data/local-files/?d=set/a.jpg&foo=1") == "a.jpg"
    assert base_name("s3://b/raw/Capture%20d%C3%A9cran.png?versionId=3") == "Capture décran.png"


def test_percentages_apply_to_the_image_when_label_studio_saw_another_size(
    tmp_path: Path,
) -> None:
    # Label Studio recorded 200x160; the image is 100x80 (re-uploaded smaller): x = 50 %.
    image = ImageRef(f"{FOLDER}/a.jpg", 100, 80)
    result = {
        **_rect("cat", x=50, y=50),
        "original_width": 200,
        "original_height": 160,
    }
    result["value"] = {**result["value"], "width": 10, "height": 10}
    task = {"id": 4, "data": {"image": "a.jpg"}, "annotations": [{"result": [result]}]}
    regions, report = _collect(tmp_path, [task], [image])
    assert regions == {image.uri: [(50.0, 40.0, 10.0, 8.0)]}
    (problem,) = report["problems"]
    assert problem["path"] == "task 4"
    assert problem["reason"].startswith(
        "original_width x original_height 200x160 differ from the image's 100x80"
    )


def test_non_finite_numbers_are_left_out_with_their_path(tmp_path: Path) -> None:
    image = ImageRef(f"{FOLDER}/a.jpg", 100, 80)
    text = (
        '{"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "c"}],'
        ' "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, NaN, 5]},'
        ' {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, Infinity, 5]},'
        ' {"id": 3, "image_id": 1, "category_id": 1, "bbox": [2, 2, 4, 4]}]}'
    )
    path = tmp_path / "ann.json"
    path.write_text(text)
    regions, report = collect_annotations(
        [image], [(f"{FOLDER}/ann.json", path)], folder_images={FOLDER: [image]}
    )
    assert [r.bbox for r in regions[image.uri]] == [(2.0, 2.0, 4.0, 4.0)]
    assert [p["path"] for p in report.problems] == [
        ".annotations[0].bbox[2]",
        ".annotations[1].bbox[2]",
    ]


def test_problems_name_the_record_in_the_file_not_in_the_cleaned_list(tmp_path: Path) -> None:
    image = ImageRef(f"{FOLDER}/a.jpg", 100, 80)
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "categories": [{"id": 1, "name": "c"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]},  # left out first
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
            {"id": 3, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5]},
        ],
    }
    _, report = _collect(tmp_path, doc, [image])
    assert [p["path"] for p in report["problems"]] == [".annotations[0].bbox", ".annotations[2]"]


def test_two_records_of_one_image_in_one_file_the_first_wins(tmp_path: Path) -> None:
    image = ImageRef(f"{FOLDER}/a.jpg", 100, 80)
    tasks = [
        {"id": 1, "data": {"image": "a.jpg"}, "annotations": [{"result": [_rect("cat")]}]},
        {"id": 2, "data": {"image": "a.jpg"}, "annotations": [{"result": [_rect("dog", x=50)]}]},
    ]
    regions, report = _collect(tmp_path, tasks, [image])
    assert regions == {image.uri: [(10.0, 8.0, 20.0, 16.0)]}
    (problem,) = report["problems"]
    assert problem["path"] == "task 2" and problem["reason"].startswith("names a.jpg again")


def test_a_box_wholly_outside_its_image_is_reported(tmp_path: Path) -> None:
    image = ImageRef(f"{FOLDER}/a.jpg", 100, 80)
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
        "categories": [{"id": 1, "name": "c"}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [-30, -30, 10, 10]},
            {"id": 8, "image_id": 1, "category_id": 1, "bbox": [90, 70, 20, 20]},  # overlaps
        ],
    }
    regions, report = _collect(tmp_path, doc, [image])
    assert regions == {image.uri: [(90.0, 70.0, 20.0, 20.0)]}
    (problem,) = report["problems"]
    assert problem["path"] == "a.jpg, region 7"
    assert "wholly outside the 100x80 image" in problem["reason"]


def test_the_latest_annotation_is_chosen_by_instant_not_by_string() -> None:
    from imageml_core.annotations.ls_to_coco import _choose

    early = {"id": 1, "updated_at": "2026-01-01T10:00:00+02:00", "result": []}  # 08:00Z
    late = {"id": 2, "updated_at": "2026-01-01T09:00:00Z", "result": []}
    assert _choose({"annotations": [early, late]}, False)[1] is late
    assert _choose({"annotations": [late, early]}, False)[1] is late


def test_an_export_without_a_config_reads_its_image_from_its_one_data_field(
    tmp_path: Path,
) -> None:
    image = ImageRef(f"{FOLDER}/a.jpg", 100, 80)
    result = {**_rect("cat"), "to_name": "img"}
    task = {"id": 1, "data": {"photo": "a.jpg"}, "annotations": [{"result": [result]}]}
    regions, report = _collect(tmp_path, [task], [image])
    assert regions == {image.uri: [(10.0, 8.0, 20.0, 16.0)]}
    assert report["not_converted"] == []


def test_an_rle_mask_keeps_its_box_and_is_reported(tmp_path: Path) -> None:
    image = ImageRef(f"{FOLDER}/a.jpg", 100, 80)
    rle = {"size": [80, 100], "counts": "abc"}
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "categories": [{"id": 1, "name": "c"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "segmentation": rle}
        ],
    }
    regions, report = _collect(tmp_path, doc, [image])
    assert regions == {image.uri: [(1.0, 1.0, 5.0, 5.0)]}
    assert [p["reason"] for p in report["problems"]] == [
        "RLE mask segmentation: only its bbox is kept (masks are not carried)"
    ]
