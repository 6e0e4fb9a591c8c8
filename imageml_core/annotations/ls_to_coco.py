"""Label Studio export -> COCO, through ``label_studio_sdk.converter.Converter``.

The SDK does the geometry (percent of the original size -> pixels, polygon boxes and
areas). Around it, this module fixes the SDK's traps (label-studio-sdk 2.1.2):

* **Rotated rectangles.** The SDK's COCO export turns a rectangle with ``rotation`` about
  its top-left corner in *percent* space, which is wrong on any non-square image (1000x800,
  x=40 %, y=30 %, w=20 %, h=10 %, 30 degrees: it writes [350, 240, 223.2, 149.3]). We
  recompute such a region in pixels with the SDK's own oriented-box helper
  (``convert_annotation_to_yolo_obb``, Label Studio's convention: clockwise degrees about
  the top-left corner, y down): its four corners become the ``segmentation``, its
  enclosing axis-aligned box the ``bbox`` ([360, 240, 213.2, 169.3]) and ``area`` is
  ``w * h`` in pixels, so the corners move exactly through augmentation.

* **One image per task.** The SDK writes a duplicate image for every non-cancelled
  annotation of a task. We hand it exactly one annotation per task, chosen by
  :data:`CHOICE_RULE`, and record the choice in ``report.choices`` when there was one.
* **Predictions** are ignored by the SDK. By default so are we (``received["predictions"]``
  counts them); with ``use_predictions=True`` a task without a usable annotation is
  converted from its most recent prediction and the COCO annotations carry ``score``.
* **Sizes.** A task whose image cannot be opened and whose results lack
  ``original_width/height`` vanishes in the SDK. The SDK never opens task media here: each
  task's image reference is replaced by a path that does not exist, and missing sizes come
  from ``image_sizes`` (pixels of the staged image, keyed by the task's image reference or
  its base name), then from other results of the same annotation, then from ``task["meta"]``
  ``width``/``height`` (written by :func:`~imageml_core.annotations.coco_to_ls`). A task
  with no size from any of them is reported, never dropped silently. Where the image's own
  size is known and ``original_width/height`` say otherwise (an image re-uploaded at
  another resolution, a hand-edited export), the percentages are applied to the image's
  size, since they are relative, and the change is reported (``report.adjusted``).
* **Rectangle + polygon of one region** (what the SDK's own COCO import writes) would
  become two COCO objects: a rectangle with the same label whose box matches a polygon's
  bounding box within ``merge_tolerance_px`` pixels is folded into that polygon
  (``report.merged``).
* **Ids** are 0-based in the SDK: images and annotations are renumbered from 1 in task /
  region order, categories are shifted by one when the SDK used id 0. The SDK's dated
  ``info`` block is replaced, so the same input gives byte-identical JSON.
* ``is_dir=True`` is the SDK default; we write one JSON file and pass ``is_dir=False``.
* ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY`` are unset while the SDK runs
  (:func:`~imageml_core.annotations.common.sdk_offline`).

Only ``rectanglelabels`` and ``polygonlabels`` results convert; every other result
(keypoints, brushes, choices, relations, unknown ``from_name``) is reported in
``report.skipped`` at ``level="result"``.
"""

from __future__ import annotations

import json
import posixpath
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imageml_core.annotations.common import ConversionReport, converter_version, sdk_offline
from imageml_core.annotations.ls_regions import (
    REGION_KEYS,
    fold_rectangles,
    region_label,
    region_problem,
    size_from,
)

CHOICE_RULE = (
    "one annotation per task: never a cancelled one (was_cancelled or skipped); "
    "ground_truth first, then the latest updated_at (else created_at), then the highest id"
)
_SENTINEL = "imageml-task-{:08d}.none"


@dataclass
class _Prepared:
    index: int
    task_id: Any
    ref: str
    source: str  # "annotation" | "prediction"
    source_id: Any
    size: tuple[int, int] | None
    results: list[dict[str, Any]] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)


def _instant(stamp: Any) -> float:
    """An ISO 8601 timestamp as seconds since the epoch (a naive one is UTC, as Label Studio
    writes them); -inf when absent or unreadable. Compared as instants, not as strings:
    ``10:00+02:00`` is before ``09:00Z``."""
    try:
        when = datetime.fromisoformat(str(stamp))
    except ValueError:
        return float("-inf")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _time_key(item: Mapping[str, Any]) -> tuple[float, float]:
    stamp = item.get("updated_at") or item.get("created_at")
    ident = item.get("id")
    return (_instant(stamp), float(ident) if isinstance(ident, int | float) else -1.0)


def _choose(task: Mapping[str, Any], use_predictions: bool) -> tuple[str, dict | None, str]:
    """(source, chosen item, reason when none) for one task, by :data:`CHOICE_RULE`."""
    anns = [a for a in task.get("annotations") or task.get("completions") or [] if a]
    usable = [a for a in anns if not (a.get("was_cancelled") or a.get("skipped"))]
    if usable:
        return (
            "annotation",
            max(usable, key=lambda a: (bool(a.get("ground_truth")), _time_key(a))),
            "",
        )
    preds = [p for p in task.get("predictions") or [] if p]
    if preds and use_predictions:
        return "prediction", max(preds, key=_time_key), ""
    if anns:
        return "annotation", None, "every annotation was cancelled"
    if preds:
        return "prediction", None, "only predictions, and use_predictions=False"
    return "annotation", None, "no annotations"


def _known_size(
    ref: str, task: Mapping[str, Any], image_sizes: Mapping | None
) -> tuple[int, int] | None:
    if image_sizes:
        for key in (ref, posixpath.basename(ref.split("?", 1)[0])):
            if key in image_sizes and (size := size_from(image_sizes[key])):
                return size
    meta = task.get("meta")
    if isinstance(meta, Mapping):
        return size_from((meta.get("width"), meta.get("height")))
    return None


def _prepare(
    index: int,
    task: Mapping[str, Any],
    chosen: Mapping[str, Any],
    source: str,
    ref: str,
    schema: Mapping[str, Any],
    image_sizes: Mapping | None,
    tolerance: float,
    report: ConversionReport,
) -> _Prepared | None:
    task_id = task.get("id", index + 1)
    known = _known_size(ref, task, image_sizes)
    results = list(chosen.get("result") or [])
    kept: list[dict[str, Any]] = []
    for result in results:
        problem = region_problem(result, schema)
        if problem:
            rid = result.get("id") if isinstance(result, Mapping) else None
            report.skip("result", problem, task_id=task_id, region_id=rid)
            continue
        kept.append(dict(result))
    if results and not kept:
        report.skip("task", "no convertible region (see the result entries)", task_id=task_id)
        return None
    sizes = [size_from((r.get("original_width"), r.get("original_height"))) for r in kept]
    fallback = known or next((s for s in sizes if s), None)
    if fallback is None:
        report.skip(
            "task",
            "image size unknown: results lack original_width/height and no image_sizes entry",
            task_id=task_id,
            image=ref,
        )
        return None
    if (known and any(s is None for s in sizes)) or (not kept and known):
        report.adjusted.append({"task_id": task_id, "change": f"image size {known} supplied"})
    if known and any(s and s != known for s in sizes):
        stated = next(s for s in sizes if s and s != known)
        report.adjusted.append(
            {
                "task_id": task_id,
                "change": f"original_width x original_height {stated[0]}x{stated[1]} differ "
                f"from the image's {known[0]}x{known[1]}: the percentages are applied to the "
                "image (they are relative, whatever size Label Studio saw)",
            }
        )
    for result, size in zip(kept, sizes, strict=True):
        if size is None or (known and size != known):
            result["original_width"], result["original_height"] = fallback
        if result["value"].get("rotation") and "rectanglelabels" in result["value"]:
            report.adjusted.append(
                {
                    "task_id": task_id,
                    "region_id": result.get("id"),
                    "change": "rotated rectangle -> its four corners as a polygon, "
                    "the enclosing box as bbox (computed in pixels)",
                }
            )
        if sum(len(result["value"].get(k) or []) for k in REGION_KEYS) > 1:
            report.adjusted.append(
                {"task_id": task_id, "region_id": result.get("id"), "change": "first label used"}
            )
    kept = fold_rectangles(kept, tolerance, task_id, report)
    # The SDK emits regions grouped by from_name in first-seen order: emit ours the same way.
    order = list(dict.fromkeys(r["from_name"] for r in kept))
    kept.sort(key=lambda r: order.index(r["from_name"]))
    prepared = _Prepared(index, task_id, ref, source, chosen.get("id"), fallback, kept)
    prepared.scores = [r.get("score", chosen.get("score")) for r in kept]
    return prepared


def _image_key(schema: Mapping[str, Any]) -> tuple[str, list[str]]:
    keys: list[str] = []
    image_key = ""
    for info in schema.values():
        for inp in info.get("inputs", []):
            value = inp.get("value") or inp.get("valueList")
            if value and value not in keys:
                keys.append(value)
            if not image_key and info.get("type") in ("RectangleLabels", "PolygonLabels"):
                image_key = value or ""
    if not image_key:
        raise ValueError("the label config has no RectangleLabels or PolygonLabels control")
    return image_key, keys


def ls_to_coco(
    tasks: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    label_config: str,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
    *,
    use_predictions: bool = False,
    merge_tolerance_px: float = 1.5,
) -> tuple[dict[str, Any], ConversionReport]:
    """Convert a Label Studio export (a list of tasks, or one task) to a COCO dict.

    ``image_sizes`` maps a task's image reference (``data[<image key>]``, or its base name)
    to ``(width, height)`` in pixels of the image file. Output: COCO in pixels (``bbox`` =
    ``[x, y, width, height]`` from the top-left corner), ids from 1, one image per converted
    task with ``file_name`` = the task's image reference and ``ls_task_id`` /
    ``ls_annotation_id`` (or ``ls_prediction_id``); each annotation carries ``ls_region_id``.
    Every task in is either converted or in ``report.skipped`` with ``level="task"``.
    """
    from label_studio_sdk.converter.utils import parse_config  # slow import (nltk, sklearn)

    task_list = [tasks] if isinstance(tasks, Mapping) else list(tasks)
    schema = parse_config(label_config)
    image_key, data_keys = _image_key(schema)
    report = ConversionReport("label_studio", "coco")
    report.conversion_parameters = {
        "direction": "label_studio->coco",
        "sdk_call": "Converter(download_resources=False).convert(format='COCO', is_dir=False)",
        "annotation_choice": CHOICE_RULE,
        "use_predictions": use_predictions,
        "merge_tolerance_px": merge_tolerance_px,
        "image_key": image_key,
        "image_sizes_supplied": len(image_sizes or {}),
        "ids": "images and annotations renumbered from 1 in task and region order",
    }
    report.received = {
        "tasks": len(task_list),
        "annotations": sum(
            len(t.get("annotations") or []) for t in task_list if isinstance(t, Mapping)
        ),
        "predictions": sum(
            len(t.get("predictions") or []) for t in task_list if isinstance(t, Mapping)
        ),
    }
    prepared: list[_Prepared] = []
    for index, task in enumerate(task_list):
        task_id = task.get("id", index + 1) if isinstance(task, Mapping) else index + 1
        data = task.get("data") if isinstance(task, Mapping) else None
        if not isinstance(data, Mapping) or not isinstance(data.get(image_key), str):
            report.skip("task", f"no image reference in data[{image_key!r}]", task_id=task_id)
            continue
        source, chosen, why = _choose(task, use_predictions)
        if chosen is None:
            report.skip("task", why, task_id=task_id)
            continue
        candidates = [a for a in task.get("annotations") or [] if a is not chosen]
        if candidates or source == "prediction":
            report.choices.append(
                {
                    "task_id": task_id,
                    f"{source}_id": chosen.get("id"),
                    "not_used": [a.get("id") for a in candidates],
                }
            )
        item = _prepare(
            index,
            task,
            chosen,
            source,
            data[image_key],
            schema,
            image_sizes,
            merge_tolerance_px,
            report,
        )
        if item is not None:
            prepared.append(item)
    coco = _run_sdk(label_config, prepared, data_keys, report)
    report.converted = {
        "tasks": len(coco["images"]),
        "images": len(coco["images"]),
        "annotations": len(coco["annotations"]),
        "categories": len(coco["categories"]),
        "merged_rectangles": len(report.merged),
    }
    return coco, report


def _rotated_rectangle(result: Mapping[str, Any]) -> dict[str, Any]:
    """``bbox``, ``segmentation`` and ``area`` in pixels for a rotated ``rectanglelabels``
    result (see the module docstring), else nothing: the SDK's values stand."""
    value = result["value"]
    if "rectanglelabels" not in value or not float(value.get("rotation") or 0) % 360:
        return {}
    from label_studio_sdk.converter.utils import convert_annotation_to_yolo_obb

    width, height = float(result["original_width"]), float(result["original_height"])
    label = {**value, "original_width": width, "original_height": height}
    corners = convert_annotation_to_yolo_obb(label, normalize=False)
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    w_px, h_px = value["width"] / 100 * width, value["height"] / 100 * height
    return {
        "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
        "segmentation": [[c for point in corners for c in point]],
        "area": w_px * h_px,
    }


def _run_sdk(
    label_config: str, prepared: list[_Prepared], data_keys: list[str], report: ConversionReport
) -> dict[str, Any]:
    from label_studio_sdk.converter import Converter

    with tempfile.TemporaryDirectory(prefix="imageml-ls2coco-") as tmp:
        root = Path(tmp)
        sdk_tasks = [
            {
                "id": k,
                "data": {key: str(root / "no-media" / _SENTINEL.format(k)) for key in data_keys},
                "annotations": [{"id": k, "result": p.results, "was_cancelled": False}],
            }
            for k, p in enumerate(prepared)
        ]
        (root / "tasks.json").write_text(json.dumps(sdk_tasks))
        with sdk_offline():
            converter = Converter(label_config, str(root), download_resources=False)
            converter.convert(str(root / "tasks.json"), str(root / "out"), "COCO", is_dir=False)
        raw = json.loads((root / "out" / "result.json").read_text())
    return _renumber(raw, prepared, report)


def _renumber(
    raw: dict[str, Any], prepared: list[_Prepared], report: ConversionReport
) -> dict[str, Any]:
    if len(raw["images"]) != len(prepared) or any(
        _SENTINEL.format(k) not in str(img.get("file_name")) for k, img in enumerate(raw["images"])
    ):
        raise RuntimeError(
            f"label-studio-sdk {converter_version()} wrote {len(raw['images'])} images for "
            f"{len(prepared)} tasks; its COCO export changed and this module needs updating"
        )
    shift = 1 if any(c["id"] == 0 for c in raw["categories"]) else 0
    # With explicit ``category`` attributes the SDK lists a label once per control.
    unique = {c["id"]: c for c in reversed(raw["categories"])}
    categories = [{**c, "id": c["id"] + shift} for c in raw["categories"] if unique[c["id"]] is c]
    names = {c["id"]: c["name"] for c in raw["categories"]}
    per_image: dict[int, list[dict[str, Any]]] = {}
    for ann in raw["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for k, (item, img) in enumerate(zip(prepared, raw["images"], strict=True)):
        anns = per_image.get(k, [])
        labels = [region_label(r) for r in item.results]
        if [names.get(a["category_id"]) for a in anns] != labels:
            report.skip(
                "task",
                f"converter output does not match the regions ({len(anns)} for {len(labels)})",
                task_id=item.task_id,
            )
            continue
        width, height = img.get("width") or item.size[0], img.get("height") or item.size[1]  # type: ignore[index]
        image_id = len(images) + 1
        images.append(
            {
                "id": image_id,
                "file_name": item.ref,
                "width": width,
                "height": height,
                "ls_task_id": item.task_id,
                f"ls_{item.source}_id": item.source_id,
            }
        )
        for ann, result, score in zip(anns, item.results, item.scores, strict=True):
            out = {
                **ann,
                **_rotated_rectangle(result),
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": ann["category_id"] + shift,
                "ls_region_id": result.get("id"),
            }
            if item.source == "prediction" and score is not None:
                out["score"] = float(score)
            annotations.append(out)
    info = {
        "description": f"Label Studio export converted by label-studio-sdk {converter_version()}",
        "version": "1.0",
        "contributor": "imageml",
    }
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}
