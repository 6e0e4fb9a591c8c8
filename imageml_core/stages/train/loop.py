"""The training loop of :class:`~.trainer.TimmTrainer` (its module docstring has the
rules: schedule, budget, cancel, distributed agreement)."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from imageml_core.stages.train.centernet import build_targets, centernet_loss
from imageml_core.stages.train.contract import TrainingError, TrainingEvent

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from imageml_core.stages.train.trainer import _Run

WARMUP = 0.05  # of the schedule
FINAL_LR = 0.01  # of the peak
WEIGHT_DECAY = 1e-4
#: Gradient-norm clip: a guard against the rare early spike of the focal loss.
CLIP_NORM = 10.0
#: Why the loop stopped: it ran every epoch, the budget ran out, or it was cancelled.
DONE, STOP_BUDGET, STOP_CANCEL = 0, 1, 2


def schedule(progress: float) -> float:
    """Learning-rate multiplier at ``progress`` in 0..1: linear warm-up from 10 % over the
    first :data:`WARMUP`, then cosine decay to :data:`FINAL_LR` (Loshchilov and Hutter,
    SGDR, without restarts)."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < WARMUP:
        return 0.1 + 0.9 * progress / WARMUP
    t = (progress - WARMUP) / (1 - WARMUP)
    return FINAL_LR + (1 - FINAL_LR) * 0.5 * (1 + math.cos(math.pi * t))


class TrainLoop:
    """Epochs over ``loader`` for ``run`` (a :class:`~.trainer._Run`): one optimizer step per
    batch, validation and an ``epoch`` event after each epoch (and after a budget stop),
    ``progress`` events every ``progress_every`` steps."""

    def __init__(self, run: _Run, loader: DataLoader[Any], progress_every: int):
        self.run, self.loader, self.progress_every = run, loader, max(1, progress_every)
        config = run.config
        decay = [p for p in run.net.parameters() if p.ndim > 1]
        no_decay = [p for p in run.net.parameters() if p.ndim <= 1]  # norms and biases
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": WEIGHT_DECAY},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=config.learning_rate,
        )
        self.total_steps = max(1, config.epochs * len(loader))
        self.budget = config.max_minutes * 60 if config.max_minutes else None
        self.amp = run.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.step_count = 0
        self.time_progress = 0.0  # elapsed / budget, agreed between ranks

    def run_epochs(self) -> int:
        """Train until every epoch ran (:data:`DONE`), the budget ran out
        (:data:`STOP_BUDGET`) or ``cancel`` was set (:data:`STOP_CANCEL`)."""
        run = self.run
        self.started = time.monotonic()
        stop = DONE
        for epoch in range(1, run.config.epochs + 1):
            self.loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
            loss_sum, batches = 0.0, 0
            window_start, window_images = time.monotonic(), 0
            for images, targets in self.loader:
                progress = max(self.step_count / self.total_steps, self.time_progress)
                lr = run.config.learning_rate * schedule(progress)
                loss = self._step(images, targets, lr)
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"the training loss became {loss} at epoch {epoch}, step "
                        f"{self.step_count + 1}: try a lower learning_rate"
                    )
                self.step_count += 1
                loss_sum, batches = loss_sum + loss, batches + 1
                seen = len(images) * run.rank.world
                run.images_seen += seen
                window_images += seen
                if self.step_count % self.progress_every == 0:
                    rate = window_images / max(time.monotonic() - window_start, 1e-9)
                    run.emit(
                        TrainingEvent(
                            "progress",
                            message=f"epoch {epoch} step {self.step_count}: loss {loss:.4f}, "
                            f"lr {lr:.2e}, {rate:.1f} images/s",
                        )
                    )
                    window_start, window_images = time.monotonic(), 0
                stop, self.time_progress = self._agree()
                if stop:
                    break
            if stop == STOP_CANCEL:
                return stop
            self._end_epoch(epoch, loss_sum, batches, stop)
            if stop:
                return stop
            if epoch < run.config.epochs:
                # Out of time (or cancelled) during validation: stop here rather than run
                # one more step and validate again.
                stop, self.time_progress = self._agree()
                if stop == STOP_BUDGET:
                    run.log(f"stopped by the max_minutes budget after epoch {epoch}")
                if stop:
                    return stop
        return DONE

    def _end_epoch(self, epoch: int, loss_sum: float, batches: int, stop: int) -> None:
        run = self.run
        train_loss = self._mean_loss(loss_sum, batches)
        metrics = run.evaluate()
        if run.rank.world > 1:
            dist.barrier()  # the other ranks wait for rank 0's validation
        entry = {"epoch": float(epoch), "train_loss": train_loss, **metrics}
        run.history.append(entry)
        message = "stopped by the max_minutes budget" if stop == STOP_BUDGET else ""
        run.emit(
            TrainingEvent(
                "epoch", epoch=epoch, message=message, metrics={"train_loss": train_loss, **metrics}
            )
        )

    def _agree(self) -> tuple[int, float]:
        """The stop reason and the schedule's time position, the same on every rank (the
        maximum over ranks: one rank out of time or cancelled stops them all)."""
        elapsed = time.monotonic() - self.started
        time_progress = elapsed / self.budget if self.budget else 0.0
        stop = STOP_CANCEL if self.run.cancel.is_set() else DONE
        if stop == DONE and self.budget and elapsed >= self.budget:
            stop = STOP_BUDGET
        if self.run.rank.world > 1:
            flags = torch.tensor([float(stop), time_progress], dtype=torch.float64)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            stop, time_progress = int(flags[0]), float(flags[1])
        return stop, time_progress

    def _mean_loss(self, loss_sum: float, batches: int) -> float:
        if self.run.rank.world > 1:
            totals = torch.tensor([loss_sum, float(batches)], dtype=torch.float64)
            dist.all_reduce(totals)
            loss_sum, batches = float(totals[0]), int(totals[1])
        return loss_sum / max(batches, 1)

    def _step(self, images: torch.Tensor, targets: list[dict[str, Any]], lr: float) -> float:
        run = self.run
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images = images.to(run.device, non_blocking=True)
        with torch.autocast(run.device.type, dtype=torch.float16, enabled=self.amp):
            outputs = run.model(images)
            if run.config.task == "detection":
                goal = build_targets(
                    [t["boxes"] for t in targets],
                    [t["labels"] for t in targets],
                    run.net.num_classes,  # type: ignore[arg-type]
                    tuple(outputs[0].shape[-2:]),  # type: ignore[arg-type]
                    run.net.stride,  # type: ignore[arg-type]
                )
                loss = centernet_loss(outputs, goal)
            else:
                labels = torch.tensor([int(t["labels"][0]) for t in targets], device=run.device)
                loss = F.cross_entropy(outputs.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(run.net.parameters(), CLIP_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())
