"""Augmentation inner loop vs a bare Albumentations loop (issue 3 target: within 1.15x).

Both loops run the same pipeline over the same decoded images with their boxes, in the same
process, interleaved round by round so machine noise hits both alike. "Ours" is
:func:`imageml_core.stages.augment.transform.augment_image`: seed derivation, region bookkeeping, clipping
and polygon handling included; decoding and encoding are outside both loops.

    uv run python perf/augment/bench_inner_loop.py [--images 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np

from imageml_core.annotations.regions import Region
from imageml_core.stages.augment.pipeline import load_pipeline
from imageml_core.stages.augment.transform import augment_image
from imageml_dev.synthetic import render_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pipeline", default="default")
    args = parser.parse_args()

    rng = random.Random(0)
    data = []
    for _ in range(args.images):
        img, boxes = render_image(rng, 640, 480)
        data.append(
            (np.asarray(img), tuple(Region(b.label, (b.x, b.y, b.width, b.height)) for b in boxes))
        )
    pipeline = load_pipeline(args.pipeline)
    compose = pipeline.compose

    # The same seed per image in both loops, so both apply exactly the same transforms.
    seeds = [pipeline.seed_for(f"{i:064x}", 0) for i in range(len(data))]

    def bare() -> None:
        for (image, regions), seed in zip(data, seeds, strict=True):
            compose.set_random_seed(seed)
            compose(
                image=image,
                bboxes=np.asarray([r.bbox for r in regions], dtype=np.float32).reshape(-1, 4),
                region_index=list(range(len(regions))),
                keypoints=np.zeros((0, 2), dtype=np.float32),
                point_owner=[],
            )

    def ours() -> None:
        for (image, regions), seed in zip(data, seeds, strict=True):
            augment_image(image, regions, pipeline, seed)

    bare()
    ours()  # warm-up: imports, allocator, caches
    t_bare, t_ours = [], []
    for _ in range(args.rounds):
        for fn, sink in ((bare, t_bare), (ours, t_ours)):
            start = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - start)
    b, o = statistics.median(t_bare), statistics.median(t_ours)
    n = args.images
    print(f"images per round: {n} (640x480, pipeline {pipeline.name!r}), rounds: {args.rounds}")
    print(f"baseline (bare Albumentations): {b * 1000 / n:.2f} ms/image  {n / b:.1f} images/s")
    print(f"ours (augment_image):           {o * 1000 / n:.2f} ms/image  {n / o:.1f} images/s")
    print(f"ratio ours/baseline: {o / b:.3f}  (target <= 1.15)")


if __name__ == "__main__":
    main()
