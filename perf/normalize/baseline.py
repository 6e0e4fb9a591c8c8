"""The baselines stage 2's benchmarks compare against, and their synthetic input.

Benchmark-only code: the pipeline never runs it (DESIGN.md section 6 defines the naive
baseline: full decode, independent INTER_AREA resizes, ``cv2.imencode``).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from imageml_core.stages.normalize.image import NormalizePolicy

cv2.setNumThreads(1)


def naive_normalize(path: Path, policy: NormalizePolicy) -> list[bytes]:
    """The baseline perf/ compares against: full decode, independent INTER_AREA resizes."""
    pixels = cv2.imread(str(path), cv2.IMREAD_COLOR)
    h, w = pixels.shape[:2]
    out = []
    for v in policy.variants:
        tw, th = v.target_size(w, h)
        _, buf = cv2.imencode(
            ".jpg",
            cv2.resize(pixels, (tw, th), interpolation=cv2.INTER_AREA),
            [cv2.IMWRITE_JPEG_QUALITY, policy.quality],
        )
        out.append(buf.tobytes())
    return out


def photo_like(seed: int, width: int = 4000, height: int = 3000) -> np.ndarray:
    """A synthetic 'photo': smooth colour fields, soft shapes, mild sensor noise, so the
    JPEG's entropy is close to a real camera image's (not white noise, not flat)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (height // 64, width // 64, 3), dtype=np.uint8)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(40):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.circle(img, centre, int(rng.integers(20, 400)), colour, -1, lineType=cv2.LINE_AA)
    texture = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    img = np.clip(img.astype(np.float32) + texture, 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(img, (3, 3), 0)
