"""Reading tar shards: the letterbox rule (contract: scale = min(S/w, S/h), top-left, zero
padding) applied to pixels and boxes alike, lazy per-process file handles, rank splits."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imageml_core.stages.train.dataset import Sample, write_shard
from imageml_core.stages.train.shards import ShardDataset, index_shards, make_loader


def _shard(tmp_path: Path, width: int, height: int, box: list[int]) -> Path:
    img = Image.new("RGB", (width, height), (0, 0, 255))
    x, y, w, h = box
    img.paste((255, 255, 255), (x, y, x + w, y + h))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    (tmp_path / "a.jpg").write_bytes(buf.getvalue())
    ann = {"category_id": 7, "bbox": box}
    sample = Sample(
        "k" * 32,
        "s3://b/a.jpg",
        "e",
        "0" * 64,
        "original",
        width,
        height,
        "0" * 64,
        "s3://b/r",
        (ann,),
    )
    write_shard(tmp_path / "s.tar", [(sample, tmp_path / "a.jpg", "train")] * 3)
    return tmp_path / "s.tar"


def test_letterbox_scales_pixels_and_boxes_alike_and_pads_right_and_bottom(tmp_path: Path) -> None:
    shard = _shard(tmp_path, 200, 100, [100, 40, 40, 20])
    dataset = ShardDataset(index_shards([shard]), 64, [7])
    image, target = dataset[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert target["scale"] == 64 / 200 and target["size"] == (200, 100)
    box = target["boxes"][0]
    assert torch.allclose(box, torch.tensor([32.0, 12.8, 12.8, 6.4]))
    assert target["labels"].tolist() == [0]
    # The box's inside is white, the image blue, the padding (rows 32..63) zero.
    x, y, w, h = (int(v) for v in box)
    assert float(image[:, y + 2 : y + h - 2, x + 2 : x + w - 2].min()) > 0.9
    assert float(image[2, 2:28, 2:28].mean()) > 0.9 and float(image[0, 2:28, 2:28].mean()) < 0.1
    assert float(image[:, 33:, :].abs().max()) == 0.0


def test_unknown_categories_are_dropped_and_reads_work_in_worker_processes(tmp_path: Path) -> None:
    shard = _shard(tmp_path, 50, 80, [5, 5, 10, 10])
    records = index_shards([shard])
    assert [r.key for r in records] == ["k" * 32] * 3 and records[0].label["split"] == "train"
    other = ShardDataset(records, 32, [1, 2])
    assert other[0][1]["boxes"].shape == (0, 4)
    dataset = ShardDataset(records, 32, [7])
    dataset.read_bytes(0)  # a handle opened here must not leak into the worker
    loader = make_loader(dataset, batch_size=2, shuffle=False, seed=0, num_workers=1)
    batches = list(loader)
    assert [len(t) for _, t in batches] == [2, 1]
    assert torch.equal(batches[0][0][0], dataset[0][0])


def test_ranks_read_disjoint_parts_in_a_seeded_order(tmp_path: Path) -> None:
    dataset = list(range(10))
    parts = [
        [
            int(i)
            for i in make_loader(
                dataset, batch_size=1, shuffle=True, seed=3, num_replicas=2, rank=r
            ).sampler
        ]  # type: ignore[arg-type]
        for r in (0, 1)
    ]
    assert sorted(parts[0] + parts[1]) == list(range(10))
    again = make_loader(dataset, batch_size=1, shuffle=True, seed=3, num_replicas=2, rank=0)  # type: ignore[arg-type]
    assert [int(i) for i in again.sampler] == parts[0]
    assert np.unique(parts[0]).size == 5
