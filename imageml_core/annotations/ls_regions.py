"""Label Studio regions: which results convert, their pixel boxes, rectangle folding.

Region values are percent (0-100) of ``original_width`` / ``original_height`` (pixels),
origin at the top-left corner; boxes returned here are pixels ``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from imageml_core.annotations.common import ConversionReport

REGION_KEYS = ("rectanglelabels", "polygonlabels")


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool; NaN and Infinity are no coordinate)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def size_from(value: Any) -> tuple[int, int] | None:
    """``(width, height)`` in pixels from a pair, or None unless both are positive numbers."""
    try:
        w, h = (int(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 else None


def pixel_box(result: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """A region's axis-aligned box in pixels ``(x0, y0, x1, y1)``; None for rotated boxes."""
    v, w, h = result["value"], result["original_width"], result["original_height"]
    if "points" in v:
        xs = [p[0] * w / 100 for p in v["points"]]
        ys = [p[1] * h / 100 for p in v["points"]]
        return min(xs), min(ys), max(xs), max(ys)
    if v.get("rotation"):
        return None
    x, y = v["x"] * w / 100, v["y"] * h / 100
    return x, y, x + v["width"] * w / 100, y + v["height"] * h / 100


def region_label(result: Mapping[str, Any]) -> str:
    """The first label of a rectangle or polygon region (the one the SDK exports)."""
    value = result["value"]
    return str(value["rectanglelabels" if "rectanglelabels" in value else "polygonlabels"][0])


def region_problem(result: Any, schema: Mapping[str, Any]) -> str:
    """Why the SDK's COCO export cannot take ``result`` ("" when it can).

    ``schema`` is ``label_studio_sdk.converter.utils.parse_config(config)``. Values are
    checked here so that the SDK never meets one it would crash on.
    """
    if not isinstance(result, Mapping) or not isinstance(result.get("value"), Mapping):
        return "not a region"
    from_name, value, kind = result.get("from_name"), result["value"], result.get("type")
    if from_name not in schema:
        return f"from_name {from_name!r} is not a control of the label config"
    key = next((k for k in REGION_KEYS if value.get(k)), None)
    if key is None:
        return f"type {kind!r} is not converted (only rectanglelabels and polygonlabels)"
    if key == "rectanglelabels":
        box = [value.get(k) for k in ("x", "y", "width", "height")]
        if not all(_is_number(v) for v in box) or not _is_number(value.get("rotation", 0)):
            return "rectangle without numeric x/y/width/height"
        if box[2] <= 0 or box[3] <= 0:
            return "rectangle with zero or negative size"
    else:
        points = value.get("points")
        if not isinstance(points, list) or len(points) < 3:
            return "polygon with fewer than 3 points"
        if not all(
            isinstance(p, list | tuple) and len(p) == 2 and all(_is_number(c) for c in p)
            for p in points
        ):
            return "polygon with a point that is not an [x, y] pair of numbers"
    return ""


def fold_rectangles(
    kept: list[dict[str, Any]], tolerance: float, task_id: Any, report: ConversionReport
) -> list[dict[str, Any]]:
    """Drop each rectangle that duplicates a polygon of the same region.

    A rectangle with the same first label and ``to_name`` whose box matches the polygon's
    bounding box within ``tolerance`` pixels on every edge is the same object (the SDK's
    COCO import writes both); the polygon is kept, the pair goes to ``report.merged``.
    Each polygon absorbs at most one rectangle, rotated rectangles never.
    """
    rects = [r for r in kept if "rectanglelabels" in r["value"]]
    dropped: set[int] = set()
    for poly in (r for r in kept if "polygonlabels" in r["value"]):
        pbox = pixel_box(poly)
        for rect in rects:
            rbox = pixel_box(rect)
            if id(rect) in dropped or rbox is None or pbox is None:
                continue
            if (
                region_label(rect) == region_label(poly)
                and rect.get("to_name") == poly.get("to_name")
                and max(abs(a - b) for a, b in zip(rbox, pbox, strict=True)) <= tolerance
            ):
                dropped.add(id(rect))
                report.merged.append(
                    {
                        "task_id": task_id,
                        "rectangle_id": rect.get("id"),
                        "polygon_id": poly.get("id"),
                    }
                )
                break
    return [r for r in kept if id(r) not in dropped]
