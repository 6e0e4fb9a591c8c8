"""Packing training shards: ``write_shard`` (tar in WebDataset layout, a JSON label per
image, fixed metadata) against the I/O floor of the same run, which is concatenating the
same JPEG bytes into one file. The ratio is what the tar format and labels add.

    uv run python perf/train/bench_shards.py [--images 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from imageml_core.stages.train.dataset import Sample, write_shard


def _images(folder: Path, count: int) -> list[tuple[Sample, Path, str]]:
    rng = np.random.default_rng(0)
    out = []
    for n in range(count):
        pixels = rng.integers(0, 255, (160, 160, 3), dtype=np.uint8)
        path = folder / f"{n:05d}.jpg"
        cv2.imwrite(str(path), pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        sample = Sample(
            key=hashlib.sha256(str(n).encode()).hexdigest()[:32],
            uri=f"s3://bucket/silver/{n}.jpg",
            etag="e",
            sha256=sha,
            kind="original",
            width=160,
            height=160,
            origin_sha256=sha,
            source_uri=f"s3://bucket/raw/{n}.jpg",
            annotations=({"category_id": 1, "bbox": [10.0, 10.0, 40.0, 30.0], "area": 1200.0},),
        )
        out.append((sample, path, "train"))
    return sorted(out, key=lambda m: m[0].key)


def _best(fn, rounds: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        members = _images(root, args.images)

        def floor() -> None:
            with (root / "concat.bin").open("wb") as out:
                for _, path, _ in members:
                    out.write(path.read_bytes())

        baseline = _best(floor, args.rounds)
        ours = _best(lambda: write_shard(root / "shard.tar", members), args.rounds)
        mb = sum(p.stat().st_size for _, p, _ in members) / 1e6
    print(f"{args.images} JPEGs of 160x160 ({mb:.1f} MB), best of {args.rounds} rounds")
    print(f"baseline (concatenate the bytes): {args.images / baseline:,.0f} images/s")
    print(f"ours (write_shard, WebDataset tar): {args.images / ours:,.0f} images/s")
    print(f"ratio ours/baseline time: {ours / baseline:.2f}")


if __name__ == "__main__":
    main()
