"""The built-in trainer (``name = "timm"``): a timm model trained on local tar shards, under
the contract of :mod:`.contract`.

Detection trains a CenterNet head (:mod:`.centernet`); classification a timm classifier
whose label for an image is the category of its annotations when they all share one
(images with none or several are skipped and counted in a ``log`` event).

**Loop.** AdamW (weight decay 1e-4, none on norms and biases) with a linear warm-up and
cosine decay to 1 % of ``learning_rate``; the schedule's position is the larger of "steps
done / steps planned" and "time spent / ``max_minutes``", so a run cut short by its budget
still ends at a low learning rate instead of mid-schedule. Mixed precision (fp16 autocast +
GradScaler) only on CUDA. Validation runs after every epoch; the budget (wall time from the
start of the loop, validation included) is checked after every step, and when it runs out
the loop stops there, evaluates and writes the artifact (``stopped_by_budget``); it is
checked again after each epoch's validation, so no step starts after the budget. ``cancel``
is checked after every step too (CANCELLED, no artifact). Any exception ends in FAILED with
a one-line ``error`` (the traceback goes to a ``log`` event).

**Outputs** in ``out_dir``: ``model.pt`` (``torch.save`` of the exported module, see
:mod:`.models`), ``model.json`` (:class:`~.contract.ModelInfo`), ``history.json`` (the
per-epoch metrics) and ``val_predictions.json`` (ground truth and predictions of up to 16
validation images with their shard keys, for a plot; :func:`.evaluate.evaluate_model`).
The result's ``headline`` is ``map_50_95`` (detection) or ``accuracy`` (classification);
an empty validation split gives no validation metrics (and so no headline value).

**Determinism.** Python, NumPy and torch are seeded, deterministic algorithms are requested
(warn-only) for the run and restored after, data order depends on the seed and epoch only:
same data + config + seed -> same metrics on CPU without a budget.

**Distributed.** When ``torch.distributed`` is initialized (torchrun, see :mod:`.worker`),
the model is wrapped in DistributedDataParallel, every rank trains on its
``1 / world_size`` of the train split (``batch_size`` per rank), the ranks agree every step
on stopping (budget, cancel) and on the schedule position, and rank 0 alone evaluates,
emits events and writes the artifact; other ranks return a result without ``model_dir``.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from imageml_core.stages.train import evaluate as ev
from imageml_core.stages.train.contract import (
    MODEL_FILE,
    MODEL_INFO_FILE,
    EventSink,
    JobState,
    ModelInfo,
    TrainerConfig,
    TrainingData,
    TrainingError,
    TrainingEvent,
    TrainingResult,
)
from imageml_core.stages.train.loop import STOP_BUDGET, STOP_CANCEL, TrainLoop
from imageml_core.stages.train.models import build_model, export_model, one_line
from imageml_core.stages.train.shards import ShardDataset, index_shards, make_loader

HEADLINE = {"detection": "map_50_95", "classification": "accuracy"}
HISTORY_FILE = "history.json"
VAL_PREDICTIONS_FILE = "val_predictions.json"


@dataclass(frozen=True)
class Rank:
    """This process's place in a distributed run (``world == 1``: not distributed)."""

    world: int = 1
    rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> Rank:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_world_size(), dist.get_rank())
        return cls()


def pick_device(name: str, rank: Rank) -> torch.device:
    """``auto``: CUDA (this rank's GPU when several) when available, else CPU."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainingError("device 'cuda' requested but CUDA is not available")
        local = int(os.environ.get("LOCAL_RANK", rank.rank))  # set by torchrun
        return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def classification_records(dataset: ShardDataset, log: Any, split: str) -> tuple[ShardDataset, int]:
    """``dataset`` restricted to images whose known-category annotations share exactly one
    category (their label); logs and returns how many were skipped and why."""
    keep, none, several = [], 0, 0
    for i, record in enumerate(dataset.records):
        classes = set(dataset.boxes(i)[1].tolist())
        if len(classes) == 1:
            keep.append(record)
        elif classes:
            several += 1
        else:
            none += 1
    if none or several:
        log(
            f"classification, {split}: skipped {none + several} of {len(dataset)} images "
            f"({none} without an annotation of a known category, {several} with several "
            "categories); an image's label is the category of its annotations"
        )
    ids = list(dataset.class_of)
    return ShardDataset(keep, dataset.image_size, ids), none + several


def write_json(path: Path, doc: Any) -> None:
    """``doc`` as indented JSON at ``path`` (written to a temporary name, then renamed)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


class TimmTrainer:
    """The built-in :class:`~.contract.Trainer` (module docstring). ``progress_every``:
    steps between ``progress`` events."""

    name = "timm"

    def __init__(self, progress_every: int = 20):
        self.progress_every = progress_every

    def train(
        self,
        config: TrainerConfig,
        data: TrainingData,
        out_dir: Path,
        on_event: EventSink,
        cancel: threading.Event | None = None,
    ) -> TrainingResult:
        """Train, evaluate and write ``out_dir/{model.pt, model.json, history.json,
        val_predictions.json}``; never raises for a training failure (FAILED result)."""
        rank = Rank.current()
        emit: EventSink = on_event if rank.main else (lambda _event: None)
        started = time.monotonic()
        emit(TrainingEvent("state", state=JobState.PENDING))
        deterministic = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        )
        try:
            torch.use_deterministic_algorithms(True, warn_only=True)
            run = _Run(config, data, Path(out_dir), emit, cancel or threading.Event(), rank)
            result = run.execute(self.progress_every)
        except Exception as exc:
            message = str(exc) if isinstance(exc, TrainingError) else one_line(exc)
            if not isinstance(exc, TrainingError):
                emit(TrainingEvent("log", message=traceback.format_exc()))
            result = TrainingResult(
                JobState.FAILED, None, {}, HEADLINE[config.task], error=message or "failed"
            )
        finally:
            torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        result.seconds = time.monotonic() - started
        emit(TrainingEvent("state", state=result.state, message=result.error or ""))
        return result


class _Run:
    """One training run (state shared by the loop's steps)."""

    def __init__(
        self,
        config: TrainerConfig,
        data: TrainingData,
        out_dir: Path,
        emit: EventSink,
        cancel: threading.Event,
        rank: Rank,
    ):
        self.config, self.data, self.out_dir = config, data, out_dir
        self.emit, self.cancel, self.rank = emit, cancel, rank
        self.log = lambda message: emit(TrainingEvent("log", message=message))
        self.history: list[dict[str, float]] = []
        self.images_seen = 0
        self.plot: dict[str, Any] = {}  # val_predictions.json, from the last validation

    def prepare(self) -> None:
        """Index the shards, pick the labelled images, build the model; raises
        :class:`TrainingError` for a set that cannot be trained on."""
        config, data = self.config, self.data
        self.category_ids = [int(c["id"]) for c in data.categories]
        if not self.category_ids:
            raise TrainingError(f"dataset {data.version} has no categories: nothing to learn")
        size = config.image_size
        train = ShardDataset(index_shards(data.train_shards), size, self.category_ids)
        val = ShardDataset(index_shards(data.val_shards), size, self.category_ids)
        self.report_unknown_categories(train)
        if config.task == "classification":
            train, _ = classification_records(train, self.log, "train")
            val, _ = classification_records(val, self.log, "val")
        if len(train) == 0:
            raise TrainingError(
                f"dataset {data.version} has no usable {config.task} image in its train split"
            )
        if config.task == "detection" and not any(
            len(train.boxes(i)[1]) for i in range(len(train))
        ):
            raise TrainingError(
                f"dataset {data.version} has no box of a known category in its train split"
            )
        if len(val) == 0:
            self.log("the validation split is empty: no validation metrics")
        self.train_set, self.val_set = train, val
        self.device = pick_device(config.device, self.rank)
        seed_everything(config.seed)
        net = build_model(config.task, config.model, len(self.category_ids), config.pretrained_path)
        self.net = net.to(self.device)
        self.model: nn.Module = self.net
        if self.rank.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.net, device_ids=ids)

    def report_unknown_categories(self, dataset: ShardDataset) -> None:
        """A ``log`` event counting train annotations whose category is not in the set's
        categories (they are ignored)."""
        unknown: dict[int, int] = {}
        for record in dataset.records:
            for ann in record.annotations:
                cat = int(ann.get("category_id", -1))
                if cat not in dataset.class_of:
                    unknown[cat] = unknown.get(cat, 0) + 1
        if unknown:
            ids = ", ".join(str(c) for c in sorted(unknown))
            self.log(
                f"ignored {sum(unknown.values())} train annotation(s) of category id(s) {ids}, "
                "not among the dataset's categories"
            )

    def execute(self, progress_every: int) -> TrainingResult:
        self.prepare()
        config = self.config
        self.emit(TrainingEvent("state", state=JobState.RUNNING))
        per_rank = math.ceil(len(self.train_set) / self.rank.world)
        loader = make_loader(
            self.train_set,
            batch_size=config.batch_size,
            shuffle=True,
            seed=config.seed,
            num_workers=config.num_workers,
            num_replicas=self.rank.world,
            rank=self.rank.rank,
            drop_last=per_rank > config.batch_size,  # a batch of 1 breaks BatchNorm
        )
        stop = TrainLoop(self, loader, progress_every).run_epochs()
        if stop == STOP_CANCEL:
            return TrainingResult(
                JobState.CANCELLED,
                None,
                {},
                HEADLINE[config.task],
                history=self.history,
                images_seen=self.images_seen,
            )
        if self.history:  # the last epoch entry was evaluated on the final weights
            metrics = {k: v for k, v in self.history[-1].items() if k != "epoch"}
        else:  # epochs=0: the untrained model
            metrics = self.evaluate()
        model_dir = self.write_artifact() if self.rank.main else None
        if self.rank.world > 1:
            dist.barrier()
        return TrainingResult(
            JobState.SUCCEEDED,
            model_dir,
            metrics,
            HEADLINE[config.task],
            history=self.history,
            stopped_by_budget=stop == STOP_BUDGET,
            images_seen=self.images_seen,
        )

    def evaluate(self) -> dict[str, float]:
        """Validation metrics (rank 0; ``{}`` elsewhere or with an empty val split); keeps
        the first images' predictions for ``val_predictions.json``."""
        if not self.rank.main or len(self.val_set) == 0:
            return {}
        exported = export_model(
            self.net, self.config.task, self.category_ids, self.config.image_size
        )
        metrics, self.plot = ev.evaluate_model(
            exported,
            self.val_set,
            self.config.task,
            self.data.categories,
            self.device,
            self.config.batch_size,
        )
        self.net.train()
        return metrics

    def write_artifact(self) -> Path:
        """``model.pt`` (the exported module on CPU), ``model.json``, ``history.json`` and
        ``val_predictions.json`` in ``out_dir``."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        config = self.config
        exported = export_model(self.net, config.task, self.category_ids, config.image_size)
        torch.save(exported.cpu(), self.out_dir / MODEL_FILE)
        self.net.to(self.device)
        info = ModelInfo(
            task=config.task,
            model=config.model,
            image_size=config.image_size,
            categories=tuple(
                {"id": int(c["id"]), "name": str(c["name"])} for c in self.data.categories
            ),
            dataset_version=self.data.version,
        )
        write_json(self.out_dir / MODEL_INFO_FILE, info.to_json())
        write_json(self.out_dir / HISTORY_FILE, self.history)
        write_json(self.out_dir / VAL_PREDICTIONS_FILE, self.plot)
        return self.out_dir
