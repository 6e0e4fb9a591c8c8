"""Geometry through augmentation (issue 9, part 6): polygons and keypoints move exactly as
the pixels and the boxes do; a region's box is its polygon's bounds; bbox, area and
segmentation of every output annotation agree, for random pipelines, sizes and shapes."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from imageml_core.annotations.coco import AnnotatedImage, coco_document
from imageml_core.annotations.regions import Region
from imageml_core.stages.augment.pipeline import load_pipeline
from imageml_core.stages.augment.transform import augment_image


def _pipeline(tmp_path: Path, transforms: str, name: str = "p"):  # type: ignore[no-untyped-def]
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\ncopies: 1\nbbox: {{min_visibility: 0.0, min_area_px: 0.0}}\n"
        f"transforms:\n{transforms}"
    )
    return load_pipeline(str(path))


def test_a_flip_moves_polygon_and_keypoints_as_it_moves_the_box(tmp_path: Path) -> None:
    """200x100, a rectangle polygon over x 150..200: flipped, box and polygon are x 0..50."""
    pipeline = _pipeline(tmp_path, "  - HorizontalFlip: {p: 1.0}\n")
    image = np.zeros((100, 200, 3), np.uint8)
    polygon = (150.0, 20.0, 200.0, 20.0, 200.0, 60.0, 150.0, 60.0)
    region = Region("r", (150.0, 20.0, 50.0, 40.0), polygon, ((175.0, 40.0),))
    (out,) = augment_image(image, (region,), pipeline, seed=1).regions
    assert out.bbox == pytest.approx((0.0, 20.0, 50.0, 40.0))
    assert sorted(out.polygon[0::2]) == pytest.approx([0.0, 0.0, 50.0, 50.0])
    assert out.keypoints[0] == pytest.approx((25.0, 40.0))


def test_after_a_rotation_the_box_is_the_polygon_bounds(tmp_path: Path) -> None:
    pipeline = _pipeline(
        tmp_path, "  - Rotate: {limit: [10, 10], p: 1.0, border_mode: 0, crop_border: false}\n"
    )
    image = np.zeros((300, 300, 3), np.uint8)
    diamond = (150.0, 100.0, 200.0, 150.0, 150.0, 200.0, 100.0, 150.0)
    region = Region("d", (100.0, 100.0, 100.0, 100.0), diamond)
    (out,) = augment_image(image, (region,), pipeline, seed=3).regions
    xs, ys = out.polygon[0::2], out.polygon[1::2]
    assert out.bbox == pytest.approx((min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)))
    # A diamond of half-diagonal 50 turned 10 degrees spans 2 * 50 * cos(10°) = 98.5 px,
    # not the 115.9 px enclosing the turned 100 px box.
    assert out.bbox[2] == pytest.approx(100 * math.cos(math.radians(10)), abs=0.5)


PIPELINES = [
    "  - HorizontalFlip: {p: 0.5}\n  - VerticalFlip: {p: 0.5}\n",
    "  - Rotate: {limit: 30, p: 1.0, border_mode: 0}\n",
    "  - Affine: {scale: [0.8, 1.2], translate_percent: [-0.1, 0.1], rotate: [-20, 20], p: 1.0}\n",
    "  - RandomResizedCrop: {size: [96, 128], scale: [0.5, 1.0], p: 1.0}\n",
    "  - Transpose: {p: 1.0}\n",
]


@pytest.mark.parametrize("transforms", PIPELINES)
def test_bbox_area_and_segmentation_agree_for_random_inputs(
    tmp_path: Path, transforms: str
) -> None:
    pipeline = _pipeline(tmp_path, transforms)
    rng = random.Random(hash(transforms) % 1000)
    for trial in range(25):
        w, h = rng.randint(40, 240), rng.randint(40, 240)
        regions = []
        for _ in range(rng.randint(1, 4)):
            cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
            r = rng.uniform(5, min(w, h) / 4)
            angle0 = rng.uniform(0, math.pi)
            points = [
                (
                    cx + r * math.cos(angle0 + k * math.pi / 2),
                    cy + r * math.sin(angle0 + k * math.pi / 2),
                )
                for k in range(4)
            ]
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            bbox = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
            regions.append(Region("s", bbox, tuple(v for p in points for v in p)))
        result = augment_image(np.zeros((h, w, 3), np.uint8), tuple(regions), pipeline, trial)
        nh, nw = result.image.shape[:2]
        doc = coco_document([AnnotatedImage("x", nw, nh, result.regions)])
        for ann in doc["annotations"]:
            x, y, bw, bh = ann["bbox"]
            assert x >= 0 and y >= 0 and x + bw <= nw + 1e-3 and y + bh <= nh + 1e-3
            (poly,) = ann["segmentation"]
            assert (min(poly[0::2]), min(poly[1::2])) == pytest.approx((x, y), abs=2e-3)
            assert (max(poly[0::2]), max(poly[1::2])) == pytest.approx((x + bw, y + bh), abs=2e-3)
            assert 0 < ann["area"] <= bw * bh + 1e-2
