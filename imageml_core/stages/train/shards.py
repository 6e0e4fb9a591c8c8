"""Reading local tar shards (WebDataset layout, see :mod:`.dataset`) as a torch Dataset.

Each shard is indexed once (:func:`index_shards`): tar member offsets of every ``<key>.jpg``
and the parsed ``<key>.json``. A sample is then one ``seek`` + ``read`` of the JPEG bytes,
so a map-style :class:`ShardDataset` shuffles freely and DataLoader workers open their own
file handles lazily (a handle opened before ``fork`` would share its offset between
processes).

**Letterbox** (the contract's input rule, :class:`~.contract.ModelInfo`): an image ``w x h``
is scaled by ``scale = min(S / w, S / h)`` to ``round(w * scale) x round(h * scale)``,
placed at the top-left of an ``S x S`` canvas and padded with zeros right and bottom. A box
``[x, y, w, h]`` (COCO, pixels, top-left corner) maps to ``[x, y, w, h] * scale``; no
offset, because placement is top-left.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
import simplejpeg
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler


@dataclass(frozen=True)
class ShardRecord:
    """One sample of a shard: ``key``; the JPEG's byte ``offset`` and ``size`` in ``shard``;
    ``label`` the parsed ``<key>.json`` (``image``, ``annotations``, ``split``)."""

    shard: Path
    key: str
    offset: int
    size: int
    label: Mapping[str, Any]

    @property
    def annotations(self) -> list[Mapping[str, Any]]:
        """The COCO annotations, boxes ``[x, y, w, h]`` in pixels of the JPEG."""
        return list(self.label.get("annotations") or [])


def index_shards(shards: Sequence[Path]) -> list[ShardRecord]:
    """Every sample of ``shards`` in shard then member order (deterministic).

    Reads each tar's headers and its small ``.json`` members once; JPEG bytes are not read.
    A ``.jpg`` without its ``.json`` (or the reverse) is skipped. Raises ``FileNotFoundError``
    for a missing shard and ``tarfile.ReadError`` for a file that is not a tar.
    """
    records: list[ShardRecord] = []
    for shard in shards:
        path = Path(shard)
        jpgs: dict[str, tuple[int, int]] = {}
        labels: dict[str, Mapping[str, Any]] = {}
        order: list[str] = []
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition(".")
                if ext == "jpg":
                    jpgs[key] = (member.offset_data, member.size)
                    order.append(key)
                elif ext == "json":
                    handle = tar.extractfile(member)
                    assert handle is not None  # a regular file always has data
                    labels[key] = json.loads(handle.read())
        records.extend(
            ShardRecord(path, key, *jpgs[key], labels[key]) for key in order if key in labels
        )
    return records


def decode_letterboxed(data: bytes, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """JPEG (or any Pillow-readable) ``data`` letterboxed to ``size`` (module docstring).

    Returns ``(pixels, scale, (width, height))``: ``pixels`` RGB ``uint8 [size, size, 3]``,
    ``scale`` the factor from the source's pixels to the canvas's, ``width x height`` the
    source's size in pixels. JPEGs are decoded by libjpeg-turbo with DCT scaling to the
    smallest size not below the target (much less work for large sources), then resized
    with ``INTER_AREA`` (downscale) or ``INTER_LINEAR`` (upscale). Raises ``ValueError``
    for bytes no decoder accepts.
    """
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        scale = min(size / width, size / height)
        tw, th = max(1, round(width * scale)), max(1, round(height * scale))
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=tw, min_height=th)
    except ValueError:  # not a baseline/progressive JPEG libjpeg-turbo takes: Pillow decides
        with Image.open(io.BytesIO(data)) as img:
            pixels = np.asarray(img.convert("RGB"))
        height, width = pixels.shape[:2]
        scale = min(size / width, size / height)
        tw, th = max(1, round(width * scale)), max(1, round(height * scale))
    if pixels.shape[1] != tw or pixels.shape[0] != th:
        shrink = pixels.shape[1] > tw
        pixels = cv2.resize(
            pixels, (tw, th), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:th, :tw] = pixels[:size, :size]
    return canvas, scale, (width, height)


class ShardDataset(Dataset[tuple[torch.Tensor, dict[str, Any]]]):
    """Map-style dataset over :class:`ShardRecord` s.

    ``dataset[i]`` is ``(image, target)``: ``image`` float32 ``[3, S, S]`` RGB in 0..1,
    letterboxed (module docstring); ``target`` a dict with ``boxes`` float32 ``[M, 4]``
    COCO ``[x, y, w, h]`` in pixels of the ``S x S`` canvas, ``labels`` int64 ``[M]`` class
    indices (position of the annotation's ``category_id`` in ``category_ids``; annotations
    of other categories or with a non-positive size are dropped), ``index`` (``i``),
    ``scale`` (canvas pixels per source pixel) and ``size`` (source ``(width, height)``
    in pixels). Deterministic: no augmentation.
    """

    def __init__(
        self, records: Sequence[ShardRecord], image_size: int, category_ids: Sequence[int]
    ):
        self.records = list(records)
        self.image_size = image_size
        self.class_of = {int(c): i for i, c in enumerate(category_ids)}
        self._files: dict[Path, BinaryIO] = {}
        self._pid = -1

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self) -> dict[str, Any]:
        # Open handles never travel to a worker process; each opens its own.
        return {**self.__dict__, "_files": {}, "_pid": -1}

    def read_bytes(self, index: int) -> bytes:
        """The raw JPEG bytes of sample ``index`` (one seek and read)."""
        if self._pid != os.getpid():  # a forked worker inherited the parent's handles
            self._files, self._pid = {}, os.getpid()
        record = self.records[index]
        handle = self._files.get(record.shard)
        if handle is None:
            handle = self._files[record.shard] = record.shard.open("rb")
        handle.seek(record.offset)
        return handle.read(record.size)

    def boxes(self, index: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Boxes float32 ``[M, 4]`` (COCO xywh, source pixels times ``scale``) and class
        indices int64 ``[M]`` of sample ``index`` (filtering as in the class docstring)."""
        rows, labels = [], []
        for ann in self.records[index].annotations:
            cls = self.class_of.get(int(ann.get("category_id", -1)))
            bbox = ann.get("bbox")
            if cls is None or not bbox or len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
                continue
            rows.append([float(v) * scale for v in bbox])
            labels.append(cls)
        return (
            np.asarray(rows, dtype=np.float32).reshape(-1, 4),
            np.asarray(labels, dtype=np.int64),
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        pixels, scale, source_size = decode_letterboxed(self.read_bytes(index), self.image_size)
        image = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)
        boxes, labels = self.boxes(index, scale)
        target = {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.from_numpy(labels),
            "index": index,
            "scale": scale,
            "size": source_size,
        }
        return image, target

    def close(self) -> None:
        """Close this process's file handles."""
        for handle in self._files.values():
            handle.close()
        self._files = {}


def collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Images stacked to ``[B, 3, S, S]``; targets kept as a list (their box counts vary)."""
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]


def make_loader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    drop_last: bool = False,
) -> DataLoader[Any]:
    """A DataLoader whose sampler is a ``DistributedSampler`` (also for one process:
    ``num_replicas=1``), so every rank reads its own ``1 / num_replicas`` of ``dataset`` and
    the order depends only on ``seed`` and the epoch (call ``loader.sampler.set_epoch(e)``
    before each epoch). Padding by the sampler gives every rank the same number of batches,
    which DDP needs; ``drop_last`` drops each rank's last incomplete batch (a batch of one
    image breaks BatchNorm in training). ``pin_memory`` only when CUDA is available (it is wasted work on CPU).
    """
    sampler = DistributedSampler(
        dataset,
        num_replicas=num_replicas,
        rank=rank,
        shuffle=shuffle,
        seed=seed,
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )
