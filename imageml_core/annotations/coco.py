"""COCO documents for a stage's output images (the one COCO writer every stage shares)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imageml_core.annotations.regions import DECIMALS, Region


@dataclass(frozen=True)
class AnnotatedImage:
    """An output image and its regions: ``file_name`` is what COCO's ``images[].file_name``
    holds (stages use the object's ``s3://`` URI); ``width``/``height`` in pixels."""

    file_name: str
    width: int
    height: int
    regions: Sequence[Region]


def _polygon_area(flat: Sequence[float]) -> float:
    """Area of a simple polygon ``(x1, y1, x2, y2, ...)`` in square pixels (shoelace)."""
    xs, ys = flat[0::2], flat[1::2]
    n = len(xs)
    return abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))) / 2


def category_ids_for(
    labels: Sequence[str], given: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Category id per label: the ``given`` ids (the user's own COCO class ids, kept), then
    each label without one, in name order, numbered after the largest given id (from 1
    when none is given). Every given category is kept, used in this document or not, so a
    class keeps its id across batches."""
    ids = dict(given or {})
    next_id = max(ids.values(), default=0) + 1
    for label in sorted(set(labels) - ids.keys()):
        ids[label] = next_id
        next_id += 1
    return dict(sorted(ids.items(), key=lambda item: item[1]))


def coco_document(
    images: Sequence[AnnotatedImage], category_ids: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """A COCO detection document for ``images``.

    Rules (stable, so a rerun writes the same bytes): images get ids from 1 in
    ``file_name`` order, annotations ids from 1 in image then region order, categories the
    ids of :func:`category_ids_for` (``category_ids`` are the user's, kept). Boxes are pixels ``[x, y, w, h]`` from the top-left corner,
    rounded to :data:`~imageml_core.annotations.regions.DECIMALS`; a region's polygon becomes
    a one-part ``segmentation`` and ``area`` is the polygon's area (as COCO's own tools
    compute it from the mask), else ``w * h``; ``iscrowd`` is always 0.
    """
    cat_id = category_ids_for([r.label for image in images for r in image.regions], category_ids)
    doc: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": n} for n, i in cat_id.items()],
    }
    for image_id, image in enumerate(sorted(images, key=lambda i: i.file_name), start=1):
        doc["images"].append(
            {
                "id": image_id,
                "file_name": image.file_name,
                "width": image.width,
                "height": image.height,
            }
        )
        for region in image.regions:
            x, y, w, h = region.bbox
            ann: dict[str, Any] = {
                "id": len(doc["annotations"]) + 1,
                "image_id": image_id,
                "category_id": cat_id[region.label],
                "bbox": [round(v, DECIMALS) for v in (x, y, w, h)],
                "area": round(_polygon_area(region.polygon) if region.polygon else w * h, DECIMALS),
                "iscrowd": 0,
            }
            if region.polygon:
                ann["segmentation"] = [[round(v, DECIMALS) for v in region.polygon]]
            doc["annotations"].append(ann)
    return doc
