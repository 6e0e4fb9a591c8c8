"""The built-in trainer end to end on tiny real shards (64 px shapes on noise): states and
events, artifacts, seeded determinism, the budget, cancel, failures, and two-process DDP."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from imageml_core.stages.train.contract import (
    JobState,
    ModelInfo,
    TrainerConfig,
    TrainingData,
    TrainingEvent,
)
from imageml_core.stages.train.distributed import run_distributed
from imageml_core.stages.train.trainer import TimmTrainer
from imageml_core.stages.train.worker import config_from_json, config_to_json

from .shapes import write_set

TINY = TrainerConfig(image_size=64, epochs=1, batch_size=8, learning_rate=2e-3, seed=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> TrainingData:
    return write_set(tmp_path_factory.mktemp("shards"), train=32, val=8)


def _train(config: TrainerConfig, data: TrainingData, out: Path, cancel_on: str = ""):
    events: list[TrainingEvent] = []
    cancel = threading.Event()

    def sink(event: TrainingEvent) -> None:
        events.append(event)
        if cancel_on and event.kind == cancel_on:
            cancel.set()

    result = TimmTrainer(progress_every=1).train(config, data, out, sink, cancel)
    return result, events


def _states(events: list[TrainingEvent]) -> list[JobState | None]:
    return [e.state for e in events if e.kind == "state"]


def test_seeded_detection_training_is_repeatable_and_writes_the_artifact(
    data: TrainingData, tmp_path: Path
) -> None:
    first, events = _train(TINY, data, tmp_path / "a")
    second, _ = _train(TINY, data, tmp_path / "b")
    assert first.state == JobState.SUCCEEDED, first.error
    assert _states(events) == [JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED]
    assert set(first.metrics) == {"train_loss", "map_50", "map_50_95"}
    assert first.metrics == second.metrics and first.history == second.history
    assert first.headline == "map_50_95" and first.images_seen == 32 and not first.stopped_by_budget
    epochs = [e for e in events if e.kind == "epoch"]
    assert [e.epoch for e in epochs] == [1] and "map_50" in epochs[0].metrics
    assert any("images/s" in e.message for e in events if e.kind == "progress")
    out = first.model_dir
    assert out == tmp_path / "a"
    info = ModelInfo.from_json(json.loads((out / "model.json").read_text()))
    assert (
        info.category_ids == [3, 5, 9]
        and info.image_size == 64
        and info.dataset_version == "ds-test"
    )
    assert json.loads((out / "history.json").read_text()) == first.history
    model = torch.load(out / "model.pt", weights_only=False)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 100, 6)
    plot = json.loads((out / "val_predictions.json").read_text())
    assert len(plot["images"]) == 8 and {"key", "shard", "width", "height"} <= set(
        plot["images"][0]
    )
    assert plot["annotations"] and {p["image_id"] for p in plot["predictions"]} <= {
        i["id"] for i in plot["images"]
    }


def test_classification_skips_images_without_one_category_and_reports_accuracy(
    data: TrainingData, tmp_path: Path
) -> None:
    result, events = _train(
        TrainerConfig(**{**TINY.__dict__, "task": "classification"}), data, tmp_path
    )
    assert result.state == JobState.SUCCEEDED, result.error
    assert set(result.metrics) == {"train_loss", "accuracy", "top5_accuracy"}
    assert result.metrics["top5_accuracy"] == 1.0  # three classes: top-k with k = 3
    skipped = [e.message for e in events if e.kind == "log" and "skipped" in e.message]
    assert skipped and "several categories" in skipped[0]
    model = torch.load(tmp_path / "model.pt", weights_only=False)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).sum(dim=1).allclose(torch.ones(2))


def test_the_budget_stops_mid_epoch_and_still_evaluates_and_writes(
    data: TrainingData, tmp_path: Path
) -> None:
    config = TrainerConfig(**{**TINY.__dict__, "epochs": 50, "max_minutes": 0.0005})
    result, events = _train(config, data, tmp_path)
    assert result.state == JobState.SUCCEEDED and result.stopped_by_budget
    assert result.images_seen < 32 * 50 and len(result.history) == 1
    assert "map_50" in result.metrics and (tmp_path / "model.pt").exists()
    assert "budget" in [e for e in events if e.kind == "epoch"][-1].message


def test_cancel_ends_cancelled_without_an_artifact(data: TrainingData, tmp_path: Path) -> None:
    result, events = _train(TINY, data, tmp_path, cancel_on="progress")
    assert result.state == JobState.CANCELLED and result.model_dir is None
    assert _states(events)[-1] == JobState.CANCELLED and not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "resnet10tt"}, "unknown timm model 'resnet10tt': did you mean resnet10t"),
        (
            {"pretrained_path": "/nowhere/w.pth"},
            "pretrained weights file not found: /nowhere/w.pth",
        ),
    ],
)
def test_failures_end_failed_with_one_line(
    data: TrainingData, tmp_path: Path, change: dict, message: str
) -> None:
    result, events = _train(TrainerConfig(**{**TINY.__dict__, **change}), data, tmp_path)
    assert result.state == JobState.FAILED and (result.error or "").startswith(message)
    assert "\n" not in (result.error or "")
    assert _states(events) == [JobState.PENDING, JobState.FAILED]


def test_a_set_without_categories_or_train_images_fails_clearly(
    data: TrainingData, tmp_path: Path
) -> None:
    bare = TrainingData("ds-x", data.train_shards, data.val_shards, [])
    result, _ = _train(TINY, bare, tmp_path)
    assert result.state == JobState.FAILED and "no categories" in (result.error or "")
    empty = TrainingData("ds-x", [], data.val_shards, data.categories)
    result, _ = _train(TINY, empty, tmp_path)
    assert result.state == JobState.FAILED and "no usable detection image" in (result.error or "")


def test_an_empty_val_split_trains_without_validation_metrics(
    data: TrainingData, tmp_path: Path
) -> None:
    no_val = TrainingData("ds-x", data.train_shards, [], data.categories)
    result, events = _train(TINY, no_val, tmp_path)
    assert result.state == JobState.SUCCEEDED and set(result.metrics) == {"train_loss"}
    assert any("validation split is empty" in e.message for e in events if e.kind == "log")
    assert (tmp_path / "model.pt").exists()


def test_worker_config_round_trips(data: TrainingData) -> None:
    assert config_from_json(json.loads(json.dumps(config_to_json(TINY, data)))) == (
        TINY,
        TrainingData(
            data.version, list(data.train_shards), list(data.val_shards), list(data.categories)
        ),
    )


def test_two_processes_under_torchrun_succeed_with_an_artifact(
    data: TrainingData, tmp_path: Path
) -> None:
    events: list[TrainingEvent] = []
    result = run_distributed(TINY, data, tmp_path / "model", 2, events.append)
    assert result.state == JobState.SUCCEEDED, result.error
    assert result.model_dir == tmp_path / "model" and (tmp_path / "model" / "model.pt").exists()
    assert result.images_seen == 32 and "map_50" in result.metrics
    assert _states(events) == [JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED]
