"""Stage 1, augment step: one augmented copy of one image, its regions moved with the pixels.

Geometry moves annotations with the image:

- boxes are COCO ``[x, y, width, height]`` in pixels, top-left origin;
- after each transform boxes are clipped to the image; a box whose visible fraction of its
  original area falls below ``bbox.min_visibility``, or whose clipped area is below
  ``bbox.min_area_px`` square pixels, is dropped (counted per output, never silently);
- polygon vertices and keypoints are ``(x, y)`` pixels; polygon vertices are clipped to
  the image, a polygon left with fewer than 3 distinct vertices is dropped with its box.

Determinism: the random state for copy ``k`` of an image is derived from the image's
SHA-256, the pipeline's config hash and ``k``, so a rerun writes byte-identical outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from imageml_core.annotations.regions import Region
from imageml_core.stages.augment.pipeline import AugmentPipeline


@dataclass(frozen=True)
class Augmented:
    """One augmented copy: ``regions`` in the new image's pixels (COCO ``[x, y, w, h]``
    boxes); ``dropped`` counts input regions left out (outside the image, filtered by the
    pipeline's box rules, or a polygon clipped away)."""

    image: np.ndarray  # RGB, uint8, HxWx3
    regions: tuple[Region, ...]
    dropped: int


_HALF = 0.5


def _clip_polygon(points: np.ndarray, width: int, height: int) -> tuple[float, ...]:
    points = np.clip(points, [0, 0], [width, height])
    unique = {(round(float(x), 3), round(float(y), 3)) for x, y in points}
    if len(unique) < 3:
        return ()
    return tuple(float(v) for v in points.reshape(-1))


def augment_image(
    image: np.ndarray, regions: tuple[Region, ...], pipeline: AugmentPipeline, seed: int
) -> Augmented:
    """One augmented copy of ``image`` (RGB uint8) and its regions, for a given seed."""
    bboxes = []
    index = []
    points: list[tuple[float, float]] = []
    owners: list[tuple[int, str]] = []
    h, w = image.shape[:2]
    for i, r in enumerate(regions):
        x, y, bw, bh = r.bbox
        # Clip to the image first: COCO boxes may poke out by rounding; Albumentations refuses those.
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(float(w), x + bw), min(float(h), y + bh)
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            continue
        bboxes.append((x0, y0, x1 - x0, y1 - y0))
        index.append(i)
        # Albumentations moves keypoints as pixel indices (a flip maps x to W - 1 - x) and
        # boxes as continuous coordinates (x to W - x). Region points are continuous, like
        # boxes: shifted by half a pixel on the way in and back on the way out, they move
        # exactly as the pixels and the boxes do.
        for px, py in zip(r.polygon[0::2], r.polygon[1::2], strict=True):
            points.append((px - _HALF, py - _HALF))
            owners.append((i, "poly"))
        for kx, ky in r.keypoints:
            points.append((kx - _HALF, ky - _HALF))
            owners.append((i, "kp"))
    pipeline.compose.set_random_seed(seed)
    out = pipeline.compose(
        image=image,
        bboxes=np.asarray(bboxes, dtype=np.float32).reshape(-1, 4),
        region_index=index,
        keypoints=np.asarray(points, dtype=np.float32).reshape(-1, 2),
        point_owner=list(range(len(points))),
    )
    new_image = out["image"]
    nh, nw = new_image.shape[:2]
    moved_points = np.asarray(out["keypoints"], dtype=np.float64).reshape(-1, 2) + _HALF
    kept: list[Region] = []
    for box, idx in zip(out["bboxes"], out["region_index"], strict=True):
        src = regions[int(idx)]
        poly_pts = np.array(
            [moved_points[j] for j, (o, kind) in enumerate(owners) if o == idx and kind == "poly"]
        )
        polygon = _clip_polygon(poly_pts, nw, nh) if len(poly_pts) else ()
        if src.polygon and not polygon:
            continue
        if polygon:
            # The box of a region with a polygon is the polygon's bounds: after a rotation
            # the rotated box's own enclosing box is larger than the object.
            xs, ys = polygon[0::2], polygon[1::2]
            box = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
            if box[2] <= 0 or box[3] <= 0:
                continue
        kps = tuple(
            (float(moved_points[j][0]), float(moved_points[j][1]))
            for j, (o, kind) in enumerate(owners)
            if o == idx and kind == "kp"
        )
        bbox = tuple(float(v) for v in box)
        kept.append(Region(src.label, bbox, polygon, kps, src.source_id))  # type: ignore[arg-type]
    return Augmented(new_image, tuple(kept), dropped=len(regions) - len(kept))


def encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    """Encode RGB pixels; libjpeg with fixed settings is deterministic for identical input."""
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
