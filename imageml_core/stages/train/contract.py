"""The trainer contract (seed 002: pluggable trainers, job states): configuration in,
events and metrics while it runs, a model artifact and final metrics out.

A trainer is plain Python with no Dagster or MLflow import. It reads a dataset version that
is already staged on local disk (:class:`TrainingData`: tar shards in WebDataset layout,
see :mod:`imageml_core.stages.train.dataset`), reports progress through ``on_event`` and
returns a :class:`TrainingResult` whose ``model_dir`` holds the artifact. Tracking (MLflow),
registration and promotion happen outside, from the result, so another trainer (another
framework, a remote service) plugs in by implementing :class:`Trainer`.

Job states follow seed 002: PENDING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol

TASKS = ("detection", "classification")
Task = Literal["detection", "classification"]


class JobState(StrEnum):
    """A training job's state (seed 002)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """Whether the job has ended."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class TrainingError(RuntimeError):
    """Training could not run (bad data, an unknown model name, no weights file); the
    message is one line that names the cause."""


@dataclass(frozen=True)
class TrainerConfig:
    """What a trainer needs besides the data.

    ``task`` detection or classification; ``model`` a timm model name (``resnet10t``);
    ``image_size`` the square input side, in pixels (images are letterboxed to it: scaled to
    fit, keeping aspect, padded right and bottom); ``epochs`` full passes over the train
    split; ``batch_size`` images per step per instance; ``max_minutes`` a wall-time budget
    for the training loop (None: no budget) after which training stops cleanly at the end
    of the current step and still evaluates; ``learning_rate`` the peak AdamW rate;
    ``seed`` seeds Python, NumPy and torch (same data + config + seed -> same metrics on
    CPU); ``num_workers`` DataLoader worker processes; ``pretrained_path`` a local
    ``.pth``/``.safetensors`` file of backbone weights (None: random init; nothing is ever
    downloaded); ``device`` ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    """

    task: Task = "detection"
    model: str = "resnet10t"
    image_size: int = 160
    epochs: int = 10
    batch_size: int = 8
    max_minutes: float | None = None
    learning_rate: float = 2e-3
    seed: int = 0
    num_workers: int = 0
    pretrained_path: str | None = None
    device: str = "auto"

    def params(self) -> dict[str, Any]:
        """Flat parameters, for tracking."""
        return {
            "task": self.task,
            "model": self.model,
            "image_size": self.image_size,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "max_minutes": self.max_minutes,
            "learning_rate": self.learning_rate,
            "seed": self.seed,
            "num_workers": self.num_workers,
            "pretrained": bool(self.pretrained_path),
            "device": self.device,
        }


@dataclass(frozen=True)
class TrainingData:
    """A dataset version staged on local disk.

    ``version`` the gold dataset id (``ds-...``); ``train_shards`` and ``val_shards`` local
    tar files in WebDataset layout (``<key>.jpg`` + ``<key>.json``, the JSON's
    ``annotations`` COCO boxes ``[x, y, w, h]`` in pixels of that JPEG); ``categories``
    the COCO categories (``{"id": int, "name": str}``, the user's ids).
    """

    version: str
    train_shards: Sequence[Path]
    val_shards: Sequence[Path]
    categories: Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class TrainingEvent:
    """Something a trainer reports while it runs.

    ``kind``: ``state`` (``state`` set), ``epoch`` (``epoch`` and ``metrics`` set: the
    epoch's mean loss and its validation metrics), ``progress`` (``message``: a step count,
    images/s) or ``log``.
    """

    kind: Literal["state", "epoch", "progress", "log"]
    message: str = ""
    state: JobState | None = None
    epoch: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass
class TrainingResult:
    """What a trainer returns.

    ``state`` the final job state; ``model_dir`` the artifact directory (the trainer's own
    layout, with ``model.pt`` and ``model.json`` for the built-in trainer) or None when
    training failed before producing one; ``metrics`` the final validation metrics (for
    detection ``map_50`` and ``map_50_95``; for classification ``accuracy`` and
    ``top5_accuracy``) plus ``train_loss``; ``headline`` the key of the metric promotion
    compares (higher is better); ``history`` per-epoch metrics in epoch order; ``error`` a
    one-line reason when FAILED; ``stopped_by_budget`` whether ``max_minutes`` ended it.
    """

    state: JobState
    model_dir: Path | None
    metrics: dict[str, float]
    headline: str
    history: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None
    stopped_by_budget: bool = False
    images_seen: int = 0
    seconds: float = 0.0


MODEL_FILE = "model.pt"
MODEL_INFO_FILE = "model.json"
MAX_DETECTIONS = 100


@dataclass(frozen=True)
class ModelInfo:
    """``model.json`` beside ``model.pt`` in a model artifact directory: what stage 4 needs
    to feed the model and read its output ("the training config travels with the model").

    The module in ``model.pt`` (``torch.save`` of the whole exported module, eval mode)
    takes a float32 tensor ``[N, 3, S, S]``, RGB in 0..1, ``S = image_size``, the image
    letterboxed (scaled by ``min(S / w, S / h)``, keeping aspect, padded with zeros right
    and bottom); mean/std normalization happens inside the module. Its output:

    - detection: float32 ``[N, MAX_DETECTIONS, 6]``, rows ``(x, y, w, h, score,
      category_id)``, boxes in the COCO convention (top-left corner, width, height) in
      pixels of the ``S x S`` input, sorted by score; unused rows are all zeros;
    - classification: float32 ``[N, C]`` class probabilities; column ``i`` is category
      ``category_ids[i]``.

    ``categories`` the COCO categories (``id``, ``name``) the model knows; ``task``,
    ``model`` (timm name), ``image_size`` as trained; ``dataset_version`` the gold version.
    """

    task: Task
    model: str
    image_size: int
    categories: tuple[Mapping[str, Any], ...]
    dataset_version: str
    max_detections: int = MAX_DETECTIONS

    @property
    def category_ids(self) -> list[int]:
        """Category id per output column (classification) in order."""
        return [int(c["id"]) for c in self.categories]

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "model": self.model,
            "image_size": self.image_size,
            "categories": [dict(c) for c in self.categories],
            "dataset_version": self.dataset_version,
            "max_detections": self.max_detections,
            "input": "float32 [N, 3, S, S] RGB 0..1, letterboxed top-left, S = image_size",
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ModelInfo:
        task = str(doc["task"])
        if task not in TASKS:
            raise ValueError(f"model.json: task {task!r} is not one of {', '.join(TASKS)}")
        return cls(
            task=task,  # type: ignore[arg-type]
            model=str(doc["model"]),
            image_size=int(doc["image_size"]),
            categories=tuple(
                {"id": int(c["id"]), "name": str(c["name"])} for c in doc["categories"]
            ),
            dataset_version=str(doc["dataset_version"]),
            max_detections=int(doc.get("max_detections", MAX_DETECTIONS)),
        )


EventSink = Callable[[TrainingEvent], None]


class Trainer(Protocol):
    """A pluggable trainer: ``train`` runs to a terminal state and never raises for a
    training failure (it returns FAILED with ``error``); ``cancel`` set from another thread
    ends it with CANCELLED at the next step."""

    name: str

    def train(
        self,
        config: TrainerConfig,
        data: TrainingData,
        out_dir: Path,
        on_event: EventSink,
        cancel: threading.Event | None = None,
    ) -> TrainingResult: ...
