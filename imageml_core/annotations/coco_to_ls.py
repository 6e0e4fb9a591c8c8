"""COCO -> Label Studio tasks, through ``label_studio_sdk.converter.imports.coco``.

The SDK (``convert_coco_to_ls``) does the geometry (pixels -> percent of the image size).
Around it, this module fixes its traps (label-studio-sdk 2.1.2):

* **One region per COCO annotation.** The SDK writes a rectangle *and* a polygon for each
  annotation with a segmentation (objects double on a round trip). Rule: an annotation
  whose segmentation is exactly one polygon becomes one ``polygonlabels`` region; any other
  (bbox only, multi-part polygon, non-crowd RLE mask) becomes one ``rectanglelabels``
  region from its ``bbox`` (the reduction is listed in ``report.adjusted``). With
  ``kind="rectangle"`` every annotation becomes a rectangle. We hand the SDK only the
  chosen geometry, so it emits exactly one region.
* **Control names.** Rectangles use ``from_name``; polygons use ``from_name`` too when the
  document yields only polygons, otherwise ``polygon_from_name`` or
  ``f"{from_name}_polygon"``. ``report.label_config`` is the matching config (built with
  :func:`~imageml_core.annotations.config.label_config_for`).
* **RLE / crowd** (``iscrowd`` true, as ``1`` or COCO-Annotator's ``"true"``) makes the SDK
  raise ``TypeError``: such annotations are reported as not convertible (crowd regions are
  "ignore" areas, not objects), the rest converts. Keypoints are not converted (reported).
* **Region ids** are random in the SDK: ours are ``coco-<annotation id>`` (``-<index>``
  appended when the id is missing or repeated), so the output is deterministic.
* **Predictions** (``as_predictions=True``) get ``model_version`` (``"unknown"`` if not
  given), a per-region ``score`` from the COCO ``score`` and, when any region has one, a
  prediction ``score`` = their mean (none is invented when the COCO has no scores).
* Boxes and points outside the image are clipped to [0, 100] percent (``report.adjusted``),
  since Label Studio rejects them.

Each task keeps ``meta = {"coco_image_id", "file_name", "width", "height"}`` (pixels), which
:func:`~imageml_core.annotations.ls_to_coco` uses as a size fallback.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from imageml_core.annotations.common import ConversionReport, is_crowd, sdk_offline
from imageml_core.annotations.config import RegionKind, label_config_for, polygon_control_name


def _key(value: Any) -> Any:
    """Ids as ints where they are int-like (COCO-Annotator writes some as strings)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return str(value)


def _dimension(value: Any) -> int | float:
    """A pixel dimension as an int when it is whole (``"640"`` -> ``640``)."""
    number = float(value)
    return int(number) if number.is_integer() else number


def _numbers(values: Any, count: int | None = None) -> list[float] | None:
    if not isinstance(values, list | tuple) or (count is not None and len(values) != count):
        return None
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def _polygons(segmentation: Any) -> list[list[float]]:
    if not isinstance(segmentation, list):
        return []
    polys = [_numbers(p) for p in segmentation]
    return [p for p in polys if p is not None and len(p) >= 6 and len(p) % 2 == 0]


def _clip(region: dict[str, Any]) -> bool:
    """Clip a region's percent coordinates into [0, 100]; True if anything was outside."""
    value = region["value"]
    if "points" in value:
        inside = all(0.0 <= c <= 100.0 for point in value["points"] for c in point)
        if not inside:
            value["points"] = [
                [min(max(x, 0.0), 100.0), min(max(y, 0.0), 100.0)] for x, y in value["points"]
            ]
        return not inside
    x0, y0 = value["x"], value["y"]
    x1, y1 = x0 + value["width"], y0 + value["height"]
    if x0 >= 0.0 and y0 >= 0.0 and x1 <= 100.0 and y1 <= 100.0:
        return False
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, 100.0), min(y1, 100.0)
    value.update(x=x0, y=y0, width=x1 - x0, height=y1 - y0)
    return True


def coco_to_ls(
    coco_doc: Mapping[str, Any],
    image_ref: Callable[[str], str] | None = None,
    to_name: str = "image",
    from_name: str = "label",
    as_predictions: bool = False,
    model_version: str | None = None,
    *,
    kind: Literal["auto", "rectangle"] = "auto",
    polygon_from_name: str | None = None,
) -> tuple[list[dict[str, Any]], ConversionReport]:
    """Convert a COCO dict (pixels, ``bbox = [x, y, w, h]``) to Label Studio tasks.

    One task per COCO image, in document order, with ``data["image"] = image_ref(file_name)``
    (or the ``file_name`` itself); its regions are in percent of the image's
    ``width``/``height``. Annotations go into ``task["annotations"]`` or, with
    ``as_predictions``, ``task["predictions"]``. Every COCO annotation is either one region
    or listed in ``report.skipped``; never raises on bad annotations.
    """
    out_type = "predictions" if as_predictions else "annotations"
    report = ConversionReport("coco", "label_studio")
    report.conversion_parameters = {
        "direction": "coco->label_studio",
        "sdk_call": f"convert_coco_to_ls(out_type={out_type!r})",
        "region_rule": (
            "one region per annotation: exactly one polygon -> polygonlabels, else bbox -> "
            "rectanglelabels; crowd/RLE not converted"
            if kind == "auto"
            else "one rectanglelabels region per annotation (from bbox); crowd/RLE not converted"
        ),
        "kind": kind,
        "to_name": to_name,
        "from_name": from_name,
        "as_predictions": as_predictions,
        "model_version": (model_version or "unknown") if as_predictions else None,
        "region_ids": "coco-<annotation id>",
    }
    raw_cats = list(coco_doc.get("categories") or [])
    raw_images = list(coco_doc.get("images") or [])
    raw_anns = list(coco_doc.get("annotations") or [])
    report.received = {
        "images": len(raw_images),
        "annotations": len(raw_anns),
        "categories": len(raw_cats),
    }

    categories: dict[Any, tuple[int, str]] = {}
    for cat in raw_cats:
        if not isinstance(cat, Mapping):
            report.skip("category", "not an object", category_id=None)
            continue
        cid = _key(cat.get("id"))
        if cid in categories or "name" not in cat:
            report.skip("category", "duplicate id or no name", category_id=cat.get("id"))
            continue
        categories[cid] = (len(categories) + 1, str(cat["name"]))

    images: dict[Any, dict[str, Any]] = {}
    for img in raw_images:
        if not isinstance(img, Mapping):
            report.skip("image", "not an object", image_id=None)
            continue
        iid, size = _key(img.get("id")), _numbers([img.get("width"), img.get("height")], 2)
        if iid in images:
            report.skip("image", "duplicate image id", image_id=img.get("id"))
        elif not img.get("file_name"):
            report.skip("image", "no file_name", image_id=img.get("id"))
        elif size is None or min(size) <= 0:
            report.skip("image", "no width/height", image_id=img.get("id"))
        else:
            images[iid] = {"index": len(images), "img": img, "anns": []}

    id_counts = Counter(_key(a.get("id")) for a in raw_anns if isinstance(a, Mapping) and "id" in a)
    for index, ann in enumerate(raw_anns):
        _sanitize(index, ann, kind, images, categories, id_counts, report)

    entries = [a for e in images.values() for a in e["anns"]]
    has_rect = any("bbox" in e["sdk"] for e in entries)
    has_poly = any("segmentation" in e["sdk"] for e in entries)
    cfg_kind: RegionKind = (
        "rectangle+polygon" if has_rect and has_poly else "polygon" if has_poly else "rectangle"
    )
    poly_name = polygon_control_name(cfg_kind, from_name, polygon_from_name)
    # Label ``category`` attributes make the SDK's COCO export keep the original ids.
    cats_out = [
        {"id": cid, "name": name} if isinstance(cid, int) else {"name": name}
        for cid, (_, name) in categories.items()
    ]
    report.label_config = label_config_for(
        cats_out,
        cfg_kind,
        from_name=from_name,
        to_name=to_name,
        polygon_from_name=polygon_from_name,
    )
    report.conversion_parameters["label_config_kind"] = cfg_kind

    sdk_tasks = _run_sdk(images, categories, to_name, from_name, out_type)
    tasks: list[dict[str, Any]] = []
    for entry, sdk_task in zip(images.values(), sdk_tasks, strict=True):
        img = entry["img"]
        item = sdk_task[out_type][0]
        regions = item["result"]
        if len(regions) != len(entry["anns"]):
            raise RuntimeError("label-studio-sdk COCO import changed: region count differs")
        for region, e in zip(regions, entry["anns"], strict=True):
            region["id"] = e["region_id"]
            region["from_name"] = poly_name if region["type"] == "polygonlabels" else from_name
            if _clip(region):
                report.adjusted.append({"annotation_id": e["id"], "change": "clipped to the image"})
            if as_predictions and e["score"] is not None:
                region["score"] = e["score"]
        file_name = str(img["file_name"])
        task: dict[str, Any] = {
            "data": {"image": image_ref(file_name) if image_ref else file_name},
            "meta": {
                "coco_image_id": img.get("id"),
                "file_name": file_name,
                "width": _dimension(img["width"]),
                "height": _dimension(img["height"]),
            },
        }
        if as_predictions:
            scores = [e["score"] for e in entry["anns"] if e["score"] is not None]
            pred: dict[str, Any] = {"model_version": model_version or "unknown", "result": regions}
            if scores:
                pred["score"] = sum(scores) / len(scores)
            task["predictions"] = [pred]
        else:
            task["annotations"] = [{"result": regions, "ground_truth": False}]
        tasks.append(task)
    report.converted = {
        "tasks": len(tasks),
        "regions": sum(len(e["anns"]) for e in images.values()),
        "rectangles": sum(1 for e in entries if "bbox" in e["sdk"]),
        "polygons": sum(1 for e in entries if "segmentation" in e["sdk"]),
    }
    return tasks, report


def _sanitize(
    index: int,
    ann: Any,
    kind: str,
    images: Mapping[Any, dict[str, Any]],
    categories: Mapping[Any, tuple[int, str]],
    id_counts: Counter,
    report: ConversionReport,
) -> None:
    """Check one COCO annotation and queue the geometry the SDK should see, or report it."""
    if not isinstance(ann, Mapping):
        report.skip("annotation", "not an object", index=index)
        return
    ann_id = ann.get("id")
    ids = {"annotation_id": ann_id, "index": index}
    image = images.get(_key(ann.get("image_id")))
    if image is None:
        report.skip("annotation", "image_id is not a converted image", **ids)
        return
    if _key(ann.get("category_id")) not in categories:
        report.skip("annotation", "unknown category_id", **ids)
        return
    segmentation = ann.get("segmentation")
    if is_crowd(ann.get("iscrowd")):
        report.skip("annotation", "crowd/RLE region (iscrowd=1): not convertible", **ids)
        return
    polys = _polygons(segmentation)
    bbox = _numbers(ann.get("bbox"), 4)
    if bbox is not None and (bbox[2] <= 0 or bbox[3] <= 0):
        bbox = None
    if bbox is None and polys:
        xs, ys = [x for p in polys for x in p[0::2]], [y for p in polys for y in p[1::2]]
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    sdk: dict[str, Any] = {
        "id": len(image["anns"]),
        "image_id": image["index"],
        "category_id": categories[_key(ann["category_id"])][0],
        "iscrowd": 0,
    }
    if kind == "auto" and len(polys) == 1:
        sdk["segmentation"] = polys
    elif bbox is not None and bbox[2] > 0 and bbox[3] > 0:
        sdk["bbox"] = bbox
        if kind == "auto" and (len(polys) > 1 or isinstance(segmentation, Mapping)):
            what = "multi-part polygon" if polys else "RLE mask"
            report.adjusted.append({**ids, "change": f"{what} converted as its bbox"})
    else:
        report.skip("annotation", "no usable bbox or polygon segmentation", **ids)
        return
    if ann.get("keypoints"):
        report.adjusted.append({**ids, "change": "keypoints not converted"})
    key = _key(ann_id)
    region_id = (
        f"coco-{key}" if ann_id is not None and id_counts[key] == 1 else f"coco-{key}-{index}"
    )
    score = _numbers([ann["score"]], 1) if "score" in ann else None
    image["anns"].append(
        {"id": ann_id, "region_id": region_id, "sdk": sdk, "score": score[0] if score else None}
    )


def _run_sdk(
    images: Mapping[Any, dict[str, Any]],
    categories: Mapping[Any, tuple[int, str]],
    to_name: str,
    from_name: str,
    out_type: str,
) -> list[dict[str, Any]]:
    if not images:
        return []
    from label_studio_sdk.converter.imports.coco import convert_coco_to_ls  # slow import

    doc = {
        "categories": [{"id": cid, "name": name} for cid, name in categories.values()],
        "images": [
            {
                "id": e["index"],
                "file_name": str(e["img"]["file_name"]),
                "width": _dimension(e["img"]["width"]),
                "height": _dimension(e["img"]["height"]),
            }
            for e in images.values()
        ],
        "annotations": [a["sdk"] for e in images.values() for a in e["anns"]],
    }
    with tempfile.TemporaryDirectory(prefix="imageml-coco2ls-") as tmp:
        src, dst = Path(tmp) / "coco.json", Path(tmp) / "tasks.json"
        src.write_text(json.dumps(doc))
        with sdk_offline(), contextlib.redirect_stdout(io.StringIO()):
            convert_coco_to_ls(
                str(src),
                str(dst),
                to_name=to_name,
                from_name=from_name,
                out_type=out_type,
                image_root_url="/imageml-placeholder/",
            )
        return json.loads(dst.read_text())
