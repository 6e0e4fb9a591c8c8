"""Annotation intake: Label Studio <-> COCO through the Label Studio SDK converters.

Real files only: the label-studio-sdk and faster-coco-eval fixtures (see
tests/fixtures/annotations/PROVENANCE.md) and images drawn by imageml_dev.synthetic.
Boxes are compared in pixels, ``(label, x, y, width, height)`` from the top-left corner.
"""

from __future__ import annotations

import contextlib
import copy
import http.server
import io
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import faster_coco_eval
import pytest
from label_studio_sdk.converter import Converter
from label_studio_sdk.converter.imports.coco import convert_coco_to_ls
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from imageml_core.annotations import (
    SDK_ENV_VARS,
    ConversionReport,
    coco_to_ls,
    detect_format,
    label_config_for,
    ls_to_coco,
    sdk_offline,
    validate_tasks,
)
from imageml_dev.synthetic import LABEL_CONFIG, generate_dataset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "annotations"
LS_DIR = FIXTURES / "label-studio-sdk"
FCE_DIR = FIXTURES / "faster_coco_eval"
LS_FIXTURES = [
    ("test_export_coco__data.json", "test_export_coco__label_config.xml"),
    ("test_export_yolo__data.json", "test_export_yolo__label_config.xml"),
    ("test_export_yolo__data_polygons.json", "test_export_yolo__label_config_polygons.xml"),
]
COCO_FIXTURES = [FCE_DIR / "gt_dataset.json", LS_DIR / "test_import_coco__coco_import_input.json"]
TOL = 1.0 + 1e-6  # pixels

Box = tuple[str, float, float, float, float]


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, images=8, zip_images=0, include_bad=False)
    return root


def _region_box(region: Mapping[str, Any]) -> Box | None:
    """A Label Studio region (percent of the original size) as a pixel box."""
    value = region["value"]
    w, h = region["original_width"], region["original_height"]
    if "rectanglelabels" in value:
        x, y = value["x"] * w / 100, value["y"] * h / 100
        return (
            value["rectanglelabels"][0],
            x,
            y,
            value["width"] * w / 100,
            value["height"] * h / 100,
        )
    if "polygonlabels" in value:
        xs = [p[0] * w / 100 for p in value["points"]]
        ys = [p[1] * h / 100 for p in value["points"]]
        return (value["polygonlabels"][0], min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
    return None


def _ls_boxes(tasks: Sequence[Mapping[str, Any]], pick: Mapping[Any, Any] | None = None) -> dict:
    """Image ref -> boxes of the task's annotation (``pick``: task id -> annotation id)."""
    out: dict[str, list[Box]] = {}
    for task in tasks:
        items = task.get("annotations") or task.get("predictions") or []
        if pick is not None:
            items = [a for a in items if a.get("id") == pick.get(task.get("id"))]
        assert len(items) == 1
        boxes = [_region_box(r) for r in items[0]["result"]]
        out[task["data"]["image"]] = [b for b in boxes if b is not None]
    return out


def _coco_boxes(doc: Mapping[str, Any]) -> dict[str, list[Box]]:
    names = {c["id"]: c["name"] for c in doc["categories"]}
    files = {img["id"]: img["file_name"] for img in doc["images"]}
    out: dict[str, list[Box]] = {name: [] for name in files.values()}
    for ann in doc["annotations"]:
        if str(ann.get("iscrowd")).lower() in {"1", "true"}:
            continue
        out[files[ann["image_id"]]].append((names[ann["category_id"]], *map(float, ann["bbox"])))
    return out


def _assert_same_boxes(a: dict[str, list[Box]], b: dict[str, list[Box]]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert len(a[key]) == len(b[key]), key
        unused = list(b[key])
        for box in a[key]:
            match = next(
                (
                    o
                    for o in unused
                    if o[0] == box[0]
                    and max(abs(p - q) for p, q in zip(o[1:], box[1:], strict=True)) <= TOL
                ),
                None,
            )
            assert match is not None, (key, box, unused)
            unused.remove(match)


def _assert_self_ap_is_one(doc: dict[str, Any]) -> None:
    """The COCO doc loads in pycocotools and faster-coco-eval; itself as detections = AP 1."""
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in doc["annotations"]
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(doc)
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    fgt = faster_coco_eval.COCO(copy.deepcopy(doc))
    fev = faster_coco_eval.COCOeval_faster(fgt, fgt.loadRes(copy.deepcopy(dets)), iouType="bbox")
    fev.evaluate()
    fev.accumulate()
    fev.summarize()
    assert fev.stats[0] == pytest.approx(1.0)


def _task_ledger_balances(report: ConversionReport) -> bool:
    return report.received["tasks"] == report.converted["tasks"] + report.skipped_count("task")


# --- format detection -------------------------------------------------------------------


def test_detect_format() -> None:
    for data, _ in LS_FIXTURES:
        assert detect_format(_json(LS_DIR / data)) == "label_studio"
    for path in COCO_FIXTURES:
        assert detect_format(_json(path)) == "coco"
    assert detect_format([]) == "label_studio"
    assert detect_format({"data": {"image": "a.jpg"}, "annotations": []}) == "label_studio"
    with pytest.raises(ValueError, match="results list"):
        detect_format(_json(FCE_DIR / "dt_dataset.json"))
    for bad in ({"images": []}, [{"image": "a.jpg"}], "tasks", 3):
        with pytest.raises(ValueError):
            detect_format(bad)


# --- round trips --------------------------------------------------------------------------


def _ls_cases(synthetic: Path) -> list[tuple[list[dict[str, Any]], str]]:
    cases = [(_json(LS_DIR / d), (LS_DIR / c).read_text()) for d, c in LS_FIXTURES]
    return [*cases, (_json(synthetic / "shapes-ls" / "annotations.json"), LABEL_CONFIG)]


def test_ls_to_coco_to_ls_keeps_every_box(synthetic: Path) -> None:
    for tasks, config in _ls_cases(synthetic):
        coco, report = ls_to_coco(tasks, config)
        assert _task_ledger_balances(report) and not report.skipped_count("task")
        pick = {img["ls_task_id"]: img["ls_annotation_id"] for img in coco["images"]}
        original = _ls_boxes(tasks, pick)
        _assert_same_boxes(original, _coco_boxes(coco))
        _assert_self_ap_is_one(coco)

        back, back_report = coco_to_ls(coco)
        _assert_same_boxes(original, _ls_boxes(back))
        assert back_report.label_config is not None
        assert validate_tasks(back, back_report.label_config) == []
    # Synthetic rectangles come back under the synthetic config itself.
    tasks, config = _ls_cases(synthetic)[-1]
    back, _ = coco_to_ls(ls_to_coco(tasks, config)[0])
    assert validate_tasks(back, LABEL_CONFIG) == []
    assert {r["from_name"] for t in back for r in t["annotations"][0]["result"]} == {"label"}


def test_coco_to_ls_to_coco_keeps_every_box(synthetic: Path) -> None:
    docs = [_json(p) for p in COCO_FIXTURES]
    docs.append(_json(synthetic / "shapes-coco" / "annotations.json"))
    for doc in docs:
        tasks, report = coco_to_ls(doc)
        assert report.converted["regions"] == len(doc["annotations"]) and not report.skipped
        assert validate_tasks(tasks, report.label_config or "") == []
        coco, back_report = ls_to_coco(tasks, report.label_config or "")
        assert _task_ledger_balances(back_report) and not back_report.skipped
        _assert_same_boxes(_coco_boxes(doc), _coco_boxes(coco))
        # Label ``category`` attributes carry the original category ids through.
        assert {c["id"]: c["name"] for c in coco["categories"]} == {
            c["id"]: c["name"] for c in doc["categories"]
        }
        _assert_self_ap_is_one(coco)


def test_tasks_validate_against_fixture_and_generated_configs(synthetic: Path) -> None:
    gt = _json(FCE_DIR / "gt_dataset.json")
    tasks, _ = coco_to_ls(gt)
    assert validate_tasks(tasks, label_config_for(gt["categories"], "polygon")) == []
    # The fixture's own polygon config (labels Airplane/Car) rejects the gt labels ...
    polygon_xml = (LS_DIR / "test_export_yolo__label_config_polygons.xml").read_text()
    assert any("Invalid value" in e for e in validate_tasks(tasks, polygon_xml))
    # ... and accepts its own export once converted and back.
    own = _json(LS_DIR / "test_export_yolo__data_polygons.json")
    back, _ = coco_to_ls(ls_to_coco(own, polygon_xml)[0])
    assert validate_tasks(back, polygon_xml) == []
    for kind in ("rectangle", "polygon", "rectangle+polygon"):
        LabelInterface(label_config_for(["a", 'b "quoted"'], kind)).validate()  # type: ignore[arg-type]


# --- LS -> COCO traps --------------------------------------------------------------------


def test_ids_start_at_one_and_output_is_stable() -> None:
    tasks = _json(LS_DIR / "test_export_yolo__data.json")
    config = (LS_DIR / "test_export_yolo__label_config.xml").read_text()
    first, _ = ls_to_coco(tasks, config)
    second, _ = ls_to_coco(copy.deepcopy(tasks), config)
    assert json.dumps(first) == json.dumps(second)
    assert [i["id"] for i in first["images"]] == [1, 2]
    assert [a["id"] for a in first["annotations"]] == list(range(1, len(first["annotations"]) + 1))
    assert min(c["id"] for c in first["categories"]) == 1
    assert all(a["image_id"] in {1, 2} for a in first["annotations"])


def test_one_image_per_task_and_the_choice_is_recorded() -> None:
    tasks = _json(LS_DIR / "test_export_yolo__data.json")
    config = (LS_DIR / "test_export_yolo__label_config.xml").read_text()
    assert [len(t["annotations"]) for t in tasks] == [2, 1]
    coco, report = ls_to_coco(tasks, config)
    assert len(coco["images"]) == 2 and len(coco["annotations"]) == 4
    assert report.choices == [{"task_id": 1, "annotation_id": 2, "not_used": [1]}]  # latest

    # A newer cancelled annotation is never used; ground truth beats a newer annotation.
    first = tasks[0]["annotations"]
    cancelled = {**copy.deepcopy(first[1]), "id": 9, "was_cancelled": True}
    cancelled["created_at"] = "2030-01-01T00:00:00Z"
    first.append(cancelled)
    first[0]["ground_truth"] = True
    coco, report = ls_to_coco(tasks, config)
    assert len(coco["images"]) == 2 and coco["images"][0]["ls_annotation_id"] == 1
    assert report.choices[0]["not_used"] == [2, 9]


def _strip_sizes(task: dict[str, Any]) -> None:
    for result in task["annotations"][0]["result"]:
        result.pop("original_width")
        result.pop("original_height")


def test_task_without_size_is_converted_from_image_sizes_or_reported(synthetic: Path) -> None:
    tasks = _json(synthetic / "shapes-ls" / "annotations.json")
    expected = _ls_boxes(copy.deepcopy(tasks))
    names = [t["data"]["image"] for t in tasks]
    for task in tasks[:2]:
        _strip_sizes(task)
        task["data"]["image"] = f"/data/upload/1/{task['data']['image']}"  # unopenable here
    # The staged image file gives the size (keyed by the base name here).
    with Image.open(synthetic / "shapes-ls" / names[0]) as img:
        sizes = {names[0]: img.size}
    coco, report = ls_to_coco(tasks, LABEL_CONFIG, image_sizes=sizes)
    assert _task_ledger_balances(report)
    assert report.converted["tasks"] == len(tasks) - 1
    [missing] = [s for s in report.skipped if s["level"] == "task"]
    assert missing["task_id"] == tasks[1]["id"] and "size" in missing["reason"]
    got = {k.rsplit("/", 1)[-1]: v for k, v in _coco_boxes(coco).items()}
    expected.pop(names[1])
    _assert_same_boxes(expected, got)

    # Task without annotations, all-cancelled task, only-predictions task: reported too.
    extra = [
        {"id": 100, "data": {"image": "x.jpg"}, "annotations": []},
        {"id": 101, "data": {"image": "y.jpg"}, "annotations": [{"id": 1, "was_cancelled": True}]},
        {"id": 102, "data": {"image": "z.jpg"}, "predictions": [{"result": []}]},
        {"id": 103, "data": {}, "annotations": [{"id": 2, "result": []}]},
    ]
    coco, report = ls_to_coco(extra, LABEL_CONFIG)
    assert _task_ledger_balances(report) and report.skipped_count("task") == 4
    assert coco["images"] == []


def test_empty_result_is_a_negative_image_with_the_supplied_size() -> None:
    task = {"id": 5, "data": {"image": "neg.jpg"}, "annotations": [{"id": 1, "result": []}]}
    coco, report = ls_to_coco(task, LABEL_CONFIG, image_sizes={"neg.jpg": (320, 200)})
    assert coco["images"][0] | {"width": 320, "height": 200} == coco["images"][0]
    assert coco["annotations"] == [] and _task_ledger_balances(report)
    # A COCO image without annotations survives a round trip (its size rides in task meta).
    gt = _json(FCE_DIR / "gt_dataset.json")
    gt["images"].append({"id": 9, "file_name": "empty.jpg", "width": 64, "height": 48})
    tasks, _ = coco_to_ls(gt)
    assert tasks[-1]["annotations"][0]["result"] == []
    back, report = ls_to_coco(tasks, label_config_for(gt["categories"], "polygon"))
    assert back["images"][-1]["file_name"] == "empty.jpg" and not report.skipped
    assert (back["images"][-1]["width"], back["images"][-1]["height"]) == (64, 48)


def test_predictions_ignored_by_default_and_converted_when_asked() -> None:
    gt, dt = _json(FCE_DIR / "gt_dataset.json"), _json(FCE_DIR / "dt_dataset.json")
    doc = {**gt, "annotations": dt}
    tasks, report = coco_to_ls(doc, as_predictions=True, model_version="detector-7")
    assert validate_tasks(tasks, report.label_config or "") == []
    for task in tasks:
        [pred] = task["predictions"]
        assert pred["model_version"] == "detector-7" and 0.0 <= pred["score"] <= 1.0
        assert all("score" in r for r in pred["result"])
    coco, ignored = ls_to_coco(tasks, report.label_config or "")
    assert coco["images"] == [] and ignored.skipped_count("task") == len(tasks)
    assert "use_predictions=False" in ignored.skipped[0]["reason"]
    coco, _ = ls_to_coco(tasks, report.label_config or "", use_predictions=True)
    _assert_same_boxes(_coco_boxes(doc), _coco_boxes(coco))
    assert sorted(a["score"] for a in coco["annotations"]) == pytest.approx(
        sorted(d["score"] for d in dt)
    )


def test_sdk_rectangle_plus_polygon_pairs_are_not_doubled(tmp_path: Path) -> None:
    # The SDK's own COCO import writes a rectangle AND a polygon for every object.
    gt = _json(FCE_DIR / "gt_dataset.json")
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        convert_coco_to_ls(str(tmp_path / "gt.json"), str(tmp_path / "ls.json"))
    doubled = _json(tmp_path / "ls.json")
    config = (tmp_path / "ls.label_config.xml").read_text()
    assert sum(len(t["annotations"][0]["result"]) for t in doubled) == 2 * len(gt["annotations"])
    coco, report = ls_to_coco(doubled, config)
    assert len(coco["annotations"]) == len(gt["annotations"]) == len(report.merged)
    # The SDK wrote Local Storage URLs; file names are the task's image references.
    got = {k.split("?d=")[-1]: v for k, v in _coco_boxes(coco).items()}
    _assert_same_boxes(_coco_boxes(gt), got)


# --- COCO -> LS traps --------------------------------------------------------------------


def test_one_region_per_coco_annotation() -> None:
    gt = _json(FCE_DIR / "gt_dataset.json")
    tasks, report = coco_to_ls(gt)
    regions = [r for t in tasks for r in t["annotations"][0]["result"]]
    assert len(regions) == len(gt["annotations"]) == report.converted["polygons"]
    assert {r["type"] for r in regions} == {"polygonlabels"}
    rects, _ = coco_to_ls(gt, kind="rectangle")
    regions = [r for t in rects for r in t["annotations"][0]["result"]]
    assert len(regions) == len(gt["annotations"]) and {r["type"] for r in regions} == {
        "rectanglelabels"
    }
    # COCO-Annotator: iscrowd "false", annotation id 0, a two-part polygon (-> its bbox).
    annotator = _json(LS_DIR / "test_import_coco__coco_import_input.json")
    tasks, report = coco_to_ls(annotator, image_ref=lambda name: f"s3://raw/imgs/{name}")
    regions = [r for t in tasks for r in t["annotations"][0]["result"]]
    assert [r["type"] for r in regions] == ["polygonlabels", "rectanglelabels"]
    assert [t["data"]["image"] for t in tasks] == [
        "s3://raw/imgs/image1.jpg",
        "s3://raw/imgs/image2.jpg",
    ]
    assert [a["change"] for a in report.adjusted] == ["multi-part polygon converted as its bbox"]
    assert validate_tasks(tasks, report.label_config or "") == []


def test_rle_is_reported_not_raised() -> None:
    gt = _json(FCE_DIR / "gt_dataset.json")
    rle = {"size": [256, 256], "counts": "PPYo11"}
    gt["annotations"] += [
        {"id": 50, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": rle,
         "bbox": [0, 0, 10, 10], "area": 100},
        {"id": 51, "image_id": 2, "category_id": 2, "iscrowd": "true", "segmentation": rle,
         "bbox": [0, 0, 10, 10], "area": 100},
    ]  # fmt: skip
    tasks, report = coco_to_ls(gt)
    assert sum(len(t["annotations"][0]["result"]) for t in tasks) == 9
    assert [(s["annotation_id"], s["level"]) for s in report.skipped] == [
        (50, "annotation"),
        (51, "annotation"),
    ]
    assert all("RLE" in s["reason"] for s in report.skipped)
    assert report.received["annotations"] == report.converted["regions"] + len(report.skipped)


def test_region_ids_are_deterministic() -> None:
    annotator = _json(LS_DIR / "test_import_coco__coco_import_input.json")
    first, _ = coco_to_ls(annotator)
    second, _ = coco_to_ls(copy.deepcopy(annotator))
    assert json.dumps(first) == json.dumps(second)
    ids = [r["id"] for t in first for r in t["annotations"][0]["result"]]
    assert ids == ["coco-0", "coco-1000"]
    gt = _json(FCE_DIR / "gt_dataset.json")
    gt["annotations"][1]["id"] = gt["annotations"][0]["id"]  # a repeated id stays unique
    tasks, _ = coco_to_ls(gt)
    ids = [r["id"] for r in tasks[0]["annotations"][0]["result"]]
    assert ids == ["coco-1-0", "coco-1-1", "coco-3"]


# --- environment and report ---------------------------------------------------------------


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def counting_server() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    handler = type("Handler", (_CountingHandler,), {"hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", hits
    finally:
        server.shutdown()
        server.server_close()


def _upload_task() -> list[dict[str, Any]]:
    region = {
        "id": "r1",
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "value": {"x": 10, "y": 20, "width": 30, "height": 40, "rectanglelabels": ["circle"]},
    }
    return [
        {"id": 1, "data": {"image": "/data/upload/1/a.jpg"}, "annotations": [{"result": [region]}]}
    ]


def test_label_studio_url_in_env_causes_no_download(
    monkeypatch: pytest.MonkeyPatch, counting_server: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, hits = counting_server
    monkeypatch.setenv("LABEL_STUDIO_URL", url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "secret")
    # The trap is real: the bare SDK downloads task media when these are set ...
    (tmp_path / "t.json").write_text(json.dumps(_upload_task()))
    converter = Converter(LABEL_CONFIG, str(tmp_path), download_resources=False)
    converter.convert(
        str(tmp_path / "t.json"), str(tmp_path / "out"), "COCO_WITH_IMAGES", is_dir=False
    )
    assert hits
    hits.clear()
    # ... but not inside sdk_offline(), which also restores the variables afterwards.
    with sdk_offline():
        assert not any(k in os.environ for k in SDK_ENV_VARS)
        converter.convert(
            str(tmp_path / "t.json"), str(tmp_path / "o2"), "COCO_WITH_IMAGES", is_dir=False
        )
    assert hits == [] and os.environ["LABEL_STUDIO_URL"] == url
    coco, report = ls_to_coco(_upload_task(), LABEL_CONFIG, {"/data/upload/1/a.jpg": (200, 100)})
    assert hits == [] and report.converted["annotations"] == 1
    assert coco["annotations"][0]["bbox"] == pytest.approx([20, 20, 60, 40])


def test_unreachable_label_studio_url_is_fast_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "secret")
    monkeypatch.delenv("LABEL_STUDIO_HOST", raising=False)
    start = time.monotonic()
    coco, _ = ls_to_coco(_upload_task(), LABEL_CONFIG, {"a.jpg": (200, 100)})
    tasks, _ = coco_to_ls(coco, image_ref=lambda name: name)
    assert time.monotonic() - start < 5.0
    assert len(coco["annotations"]) == 1 and len(tasks[0]["annotations"][0]["result"]) == 1
    assert os.environ["LABEL_STUDIO_URL"] == "http://127.0.0.1:9"
    assert os.environ["LABEL_STUDIO_API_KEY"] == "secret" and "LABEL_STUDIO_HOST" not in os.environ
    with pytest.raises(RuntimeError), sdk_offline():
        raise RuntimeError("boom")
    assert os.environ["LABEL_STUDIO_URL"] == "http://127.0.0.1:9"


def test_report_carries_what_the_manifest_records() -> None:
    tasks = _json(LS_DIR / "test_export_coco__data.json")
    config = (LS_DIR / "test_export_coco__label_config.xml").read_text()
    coco, report = ls_to_coco(tasks, config)
    assert report.annotation_format == "label_studio" and report.target_format == "coco"
    assert report.converter_version == metadata.version("label-studio-sdk")
    assert report.conversion_parameters["use_predictions"] is False
    # The two keypoints are reported, not silently dropped; rectangle + polygon convert.
    assert [s["reason"].split(" ")[1] for s in report.skipped] == ["'keypointlabels'"] * 2
    assert len(coco["annotations"]) == 2
    assert json.loads(json.dumps(report.as_dict()))["converted"]["annotations"] == 2
    _, back = coco_to_ls(coco)
    assert back.annotation_format == "coco" and back.conversion_parameters["kind"] == "auto"
