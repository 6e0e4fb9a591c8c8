"""Decoding 12 MP JPEGs the ways the stages do, against what they did before the shared
decoder (imageml_core.imaging): ingest's verification and augment's full decode.

Baselines: ingest verified with Pillow at 1/8 scale (``draft``), augment decoded with
``cv2.imread`` (then BGR -> RGB). Ours: ``verify_image`` (libjpeg-turbo at 1/8, luma only,
which also reports damaged scan data) and ``decode_rgb`` (libjpeg-turbo, EXIF orientation
applied). Best of ``--rounds`` rounds, same files, same process.

    uv run python perf/ingest/bench_decode.py [--images 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "normalize"))
from baseline import photo_like

from imageml_core.imaging import decode_rgb
from imageml_core.stages.ingest.verify import verify_image


def _best_ms(fn: Callable[[Path], object], paths: list[Path], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for path in paths:
            fn(path)
        best = min(best, (time.perf_counter() - start) / len(paths))
    return best * 1000


def _pillow_draft(path: Path) -> None:
    with Image.open(path) as img:
        width, height = img.size
        img.draft("RGB", (width // 8, height // 8))
        img.load()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.images):
            path = Path(tmp) / f"{i}.jpg"
            cv2.imwrite(str(path), photo_like(i), [cv2.IMWRITE_JPEG_QUALITY, 90])
            paths.append(path)
        rows = [
            ("ingest verify", _pillow_draft, lambda p: verify_image(p)),
            (
                "augment decode",
                lambda p: cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB),
                lambda p: decode_rgb(p),
            ),
        ]
        print(f"{args.images} JPEGs 4000x3000 q90, best of {args.rounds} rounds, ms per image")
        for name, baseline, ours in rows:
            base_ms = _best_ms(baseline, paths, args.rounds)
            ours_ms = _best_ms(ours, paths, args.rounds)
            print(
                f"{name}: baseline {base_ms:.1f} ms, ours {ours_ms:.1f} ms, "
                f"ratio ours/baseline: {ours_ms / base_ms:.2f}"
            )


if __name__ == "__main__":
    main()
