"""The process torchrun starts for each rank of a distributed training:

    python -m torch.distributed.run --standalone --nproc-per-node=N \\
        -m imageml_core.stages.train.worker --config cfg.json --out DIR [--model-dir M]

``cfg.json`` holds the :class:`~.contract.TrainerConfig` fields and the
:class:`~.contract.TrainingData` fields in one object (:func:`config_to_json`; shard paths
must exist on every node). Every rank joins the process group from torchrun's environment
(``env://``: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...; NCCL when the run uses CUDA,
gloo otherwise) and runs :class:`~.trainer.TimmTrainer`; rank 0 appends every event as one
JSON line to ``DIR/events.jsonl`` (flushed per line, so a parent can tail it), writes the
artifact to ``M`` (default ``DIR/model``) and finally ``DIR/result.json``
(:func:`result_to_json`). SIGTERM (what torchrun forwards when it is stopped) cancels the
run at the next step. The exit status is 0 for SUCCEEDED, 1 for FAILED, 2 for CANCELLED; a
failing rank also prints ``imageml-train-error: <one line>`` to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from imageml_core.stages.train.contract import (
    JobState,
    TrainerConfig,
    TrainingData,
    TrainingEvent,
    TrainingResult,
)

EVENTS_FILE = "events.jsonl"
RESULT_FILE = "result.json"
ERROR_MARKER = "imageml-train-error:"
EXIT_CODES = {JobState.SUCCEEDED: 0, JobState.FAILED: 1, JobState.CANCELLED: 2}


def config_to_json(config: TrainerConfig, data: TrainingData) -> dict[str, Any]:
    """The worker's config document: TrainerConfig fields + TrainingData fields (shard
    paths as strings)."""
    doc = asdict(config)
    doc.update(
        version=data.version,
        train_shards=[str(p) for p in data.train_shards],
        val_shards=[str(p) for p in data.val_shards],
        categories=[dict(c) for c in data.categories],
    )
    return doc


def config_from_json(doc: Mapping[str, Any]) -> tuple[TrainerConfig, TrainingData]:
    """Inverse of :func:`config_to_json`; unknown keys are ignored, missing TrainerConfig
    fields take their defaults. Raises ``KeyError`` for a missing TrainingData field."""
    names = {f.name for f in fields(TrainerConfig)}
    config = TrainerConfig(**{k: v for k, v in doc.items() if k in names})
    data = TrainingData(
        version=str(doc["version"]),
        train_shards=[Path(p) for p in doc["train_shards"]],
        val_shards=[Path(p) for p in doc["val_shards"]],
        categories=[dict(c) for c in doc["categories"]],
    )
    return config, data


def event_to_json(event: TrainingEvent) -> dict[str, Any]:
    """One ``events.jsonl`` line (a dict)."""
    return {
        "kind": event.kind,
        "message": event.message,
        "state": event.state.value if event.state else None,
        "epoch": event.epoch,
        "metrics": dict(event.metrics),
    }


def event_from_json(doc: Mapping[str, Any]) -> TrainingEvent:
    """Inverse of :func:`event_to_json`."""
    state = doc.get("state")
    return TrainingEvent(
        kind=doc["kind"],
        message=str(doc.get("message") or ""),
        state=JobState(state) if state else None,
        epoch=doc.get("epoch"),
        metrics={k: float(v) for k, v in (doc.get("metrics") or {}).items()},
    )


def result_to_json(result: TrainingResult) -> dict[str, Any]:
    """``result.json`` (a dict; ``model_dir`` as a string or None)."""
    doc = asdict(result)
    doc["state"] = result.state.value
    doc["model_dir"] = str(result.model_dir) if result.model_dir else None
    return doc


def result_from_json(doc: Mapping[str, Any]) -> TrainingResult:
    """Inverse of :func:`result_to_json`."""
    return TrainingResult(
        state=JobState(doc["state"]),
        model_dir=Path(doc["model_dir"]) if doc.get("model_dir") else None,
        metrics={k: float(v) for k, v in doc.get("metrics", {}).items()},
        headline=str(doc.get("headline", "")),
        history=[dict(h) for h in doc.get("history", [])],
        error=doc.get("error"),
        stopped_by_budget=bool(doc.get("stopped_by_budget", False)),
        images_seen=int(doc.get("images_seen", 0)),
        seconds=float(doc.get("seconds", 0.0)),
    )


def init_process_group(config: TrainerConfig) -> bool:
    """Join torchrun's process group when ``WORLD_SIZE > 1`` (NCCL for a CUDA run, gloo on
    CPU); False when there is nothing to join."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    cuda = config.device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run one rank (module docstring); returns the exit status."""
    from imageml_core.stages.train.trainer import TimmTrainer  # keeps --help fast

    parser = argparse.ArgumentParser(description="One rank of a distributed training run.")
    parser.add_argument("--config", required=True, type=Path, help="trainer config JSON")
    parser.add_argument("--out", required=True, type=Path, help="events and result dir")
    parser.add_argument("--model-dir", type=Path, help="artifact dir (default OUT/model)")
    args = parser.parse_args(argv)
    config, data = config_from_json(json.loads(args.config.read_text()))
    cancel = threading.Event()
    signal.signal(signal.SIGTERM, lambda _sig, _frame: cancel.set())
    joined = init_process_group(config)
    main_rank = not joined or dist.get_rank() == 0
    args.out.mkdir(parents=True, exist_ok=True)
    events = (args.out / EVENTS_FILE).open("a") if main_rank else None

    def sink(event: TrainingEvent) -> None:
        if events is not None:
            events.write(json.dumps(event_to_json(event)) + "\n")
            events.flush()

    try:
        result = TimmTrainer().train(
            config, data, args.model_dir or args.out / "model", sink, cancel
        )
    finally:
        if events is not None:
            events.close()
    if main_rank:
        tmp = args.out / (RESULT_FILE + ".tmp")
        tmp.write_text(json.dumps(result_to_json(result), indent=1) + "\n")
        tmp.replace(args.out / RESULT_FILE)
    if result.state == JobState.FAILED:
        print(f"{ERROR_MARKER} {result.error}", file=sys.stderr, flush=True)
    if joined:
        dist.destroy_process_group()
    return EXIT_CODES[result.state]


if __name__ == "__main__":
    sys.exit(main())
