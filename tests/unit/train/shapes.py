"""Tiny real shard sets for the trainer tests: shapes drawn on noise, known boxes, written
with the gold tier's own :func:`~imageml_core.stages.train.dataset.write_shard`."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

from imageml_core.stages.train.contract import TrainingData
from imageml_core.stages.train.dataset import Sample, write_shard

#: Non-contiguous ids on purpose: the model's columns must map back to the user's ids.
CATEGORIES = ({"id": 3, "name": "circle"}, {"id": 5, "name": "square"}, {"id": 9, "name": "bar"})


def render(
    rng: random.Random, width: int, height: int, shapes: list[int]
) -> tuple[bytes, list[dict]]:
    """A JPEG of ``width x height`` with one shape per entry of ``shapes`` (a category id)
    and its COCO annotations (pixels, ``[x, y, w, h]``)."""
    img = Image.effect_noise((width, height), 20).convert("RGB")
    img = Image.blend(img, Image.new("RGB", (width, height), (30, 40, 50)), 0.6)
    draw = ImageDraw.Draw(img)
    anns = []
    for cat in shapes:
        side = rng.randint(min(width, height) // 5, min(width, height) // 3)
        w, h = (side, side // 2) if cat == 9 else (side, side)
        x0, y0 = rng.randint(0, width - w - 1), rng.randint(0, height - h - 1)
        colour = tuple(rng.randint(150, 255) for _ in range(3))
        if cat == 3:
            draw.ellipse([x0, y0, x0 + w - 1, y0 + h - 1], fill=colour)
        else:
            draw.rectangle([x0, y0, x0 + w - 1, y0 + h - 1], fill=colour)
        anns.append({"category_id": cat, "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0})
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue(), anns


def write_set(
    root: Path,
    *,
    train: int,
    val: int,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    single_class: bool = False,
    per_shard: int = 16,
) -> TrainingData:
    """``train`` + ``val`` images in shards under ``root``; 1-2 shapes per image (exactly
    one with ``single_class``)."""
    rng = random.Random(seed)
    ids = [c["id"] for c in CATEGORIES]
    shards: dict[str, list[Path]] = {"train": [], "val": []}
    root.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("val", val)):
        members = []
        for n in range(count):
            k = 1 if single_class else rng.randint(1, 2)
            data, anns = render(rng, *size, [rng.choice(ids) for _ in range(k)])
            key = hashlib.sha256(f"{split}{n}".encode()).hexdigest()[:32]
            path = root / f"{key}.jpg"
            path.write_bytes(data)
            sha = hashlib.sha256(data).hexdigest()
            sample = Sample(
                key,
                f"s3://b/{key}.jpg",
                "e",
                sha,
                "original",
                *size,
                sha,
                "s3://b/raw",
                tuple(anns),
            )
            members.append((sample, path, split))
        for i in range(0, count, per_shard):
            shard = root / f"{split}-{i // per_shard:05d}.tar"
            write_shard(shard, members[i : i + per_shard])
            shards[split].append(shard)
    return TrainingData("ds-test", shards["train"], shards["val"], [dict(c) for c in CATEGORIES])
