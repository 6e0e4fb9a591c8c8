"""Stage 3 tracking against a real MLflow server (SQLite store, artifacts proxied to the
session's S3 server): a training logged as one run (params, per-epoch metrics, dataset
input, model, model.json, plots) and registered; the champion alias loads with
mlflow.pytorch and as pyfunc; the promotion gate; an unreachable server fails fast; a
failure mid-logging marks the run FAILED and registers nothing."""

from __future__ import annotations

import io
import json
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from imageml_core.stages.train.contract import (
    MODEL_FILE,
    MODEL_INFO_FILE,
    JobState,
    ModelInfo,
    TrainerConfig,
    TrainingResult,
)
from imageml_core.stages.train.models import build_detector, export_model
from imageml_core.stages.train.tracking import (
    DatasetRef,
    TrackedRun,
    TrackingError,
    log_training_run,
    promote_if_better,
    set_champion,
)
from imageml_core.storage.object_store import ObjectStore
from imageml_core.uris import S3Uri
from imageml_dev.embedded_mlflow import EmbeddedMlflow
from imageml_dev.embedded_s3 import free_port
from imageml_resources.mlflow import MlflowResource
from tests.helpers import jpeg_bytes

pytestmark = pytest.mark.s3

SIZE = 64
EPOCHS = 3
HEADLINE = "map_50_95"
CATEGORIES = ({"id": 3, "name": "cat"}, {"id": 7, "name": "dog"})
EXPERIMENT = "imageml-tests"
DATASET = DatasetRef(
    version="ds-0123456789abcdef",
    uri="s3://gold/datasets/ds-0123456789abcdef/manifest.json",
    digest="5d41402abc4b2a76",
    counts={"train": 10, "val": 2},
    name="default",
)
TAGS = {"dagster.run_id": "r-1", "dagster.partition": "2026-11-30", "imageml.git_sha": "abc123"}


class TinyDetector(nn.Module):
    """Cheap stand-in honouring the detector contract ([N, 100, 6]), for gate versions."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0], 100, 6) + 0 * self.conv(images).mean()


class BrokenDetector(TinyDetector):
    """Loads, then fails on its first forward: a failure after the run started."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the exported module cannot run")


def make_result(root: Path, value: float, module: nn.Module | None = None) -> TrainingResult:
    """A SUCCEEDED result as the built-in trainer leaves it: model.pt, model.json and
    val_predictions.json over a tar shard of two validation JPEGs; ``value`` the final
    headline metric."""
    model_dir = root / f"model-{uuid.uuid4().hex[:8]}"
    model_dir.mkdir(parents=True)
    if module is None:
        net = build_detector("resnet10t", len(CATEGORIES))
        module = export_model(net, "detection", [c["id"] for c in CATEGORIES], SIZE)
    torch.save(module, model_dir / MODEL_FILE)
    info = ModelInfo("detection", "resnet10t", SIZE, CATEGORIES, DATASET.version)
    (model_dir / MODEL_INFO_FILE).write_text(json.dumps(info.to_json()))
    shard = model_dir / "val-00000.tar"
    with tarfile.open(shard, "w") as tar:
        for n in range(2):
            data = jpeg_bytes(n, (80, 60))
            member = tarfile.TarInfo(f"k{n}.jpg")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    images = [{"id": n + 1, "key": f"k{n}", "shard": str(shard)} for n in range(2)]
    doc = {
        "images": images,
        "annotations": [{"image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 20]}],
        "predictions": [{"image_id": 1, "category_id": 3, "bbox": [12, 9, 28, 22], "score": 0.9}],
    }
    (model_dir / "val_predictions.json").write_text(json.dumps(doc))
    history = [
        {"epoch": e, "train_loss": 2.0 / e, HEADLINE: value * e / EPOCHS, "map_50": value}
        for e in range(1, EPOCHS + 1)
    ]
    metrics = {HEADLINE: value, "map_50": value, "train_loss": 2.0 / EPOCHS}
    return TrainingResult(
        JobState.SUCCEEDED, model_dir, metrics, HEADLINE, history, images_seen=30, seconds=1.5
    )


def log(result: TrainingResult, uri: str, name: str, **kwargs: object) -> TrackedRun:
    return log_training_run(
        result,
        config_params=TrainerConfig(image_size=SIZE, epochs=EPOCHS).params(),
        dataset=DATASET,
        tags=TAGS,
        registered_model_name=name,
        experiment_name=EXPERIMENT,
        tracking_uri=uri,
        **kwargs,  # type: ignore[arg-type]
    )


@dataclass
class Logged:
    uri: str
    name: str
    result: TrainingResult
    tracked: TrackedRun


@pytest.fixture(scope="module")
def logged(mlflow_server: EmbeddedMlflow, tmp_path_factory: pytest.TempPathFactory) -> Logged:
    """One training of the real exported detector, logged and registered (pt2)."""
    name = f"det-{uuid.uuid4().hex[:8]}"
    result = make_result(tmp_path_factory.mktemp("tracking"), 0.5)
    return Logged(
        mlflow_server.tracking_uri, name, result, log(result, mlflow_server.tracking_uri, name)
    )


@pytest.fixture(autouse=True)
def _mlflow_env(mlflow_tracking_uri: str) -> None:
    """Every test: telemetry off, MLflow's global tracking URI cleared afterwards."""


def test_run_holds_params_metrics_dataset_artifacts_and_a_version(
    logged: Logged, object_store: ObjectStore, tmp_path: Path
) -> None:
    client = MlflowClient(logged.uri)
    tracked = logged.tracked
    run = client.get_run(tracked.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["image_size"] == str(SIZE) and run.data.params["model"] == "resnet10t"
    assert run.data.tags["dagster.run_id"] == "r-1"
    assert run.data.tags["imageml.dataset_version"] == DATASET.version
    assert run.data.tags["imageml.model_format"] == "pt2"
    for key in ("train_loss", HEADLINE, "map_50"):
        steps = [m.step for m in client.get_metric_history(tracked.run_id, key)]
        assert steps == list(range(1, EPOCHS + 1)), key
    assert run.data.metrics[f"final/{HEADLINE}"] == 0.5
    assert tracked.metrics == logged.result.metrics

    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == DATASET.version
    assert DATASET.uri in dataset_input.dataset.source
    assert json.loads(dataset_input.dataset.profile)["counts"] == {"train": 10, "val": 2}
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"

    assert {a.path for a in client.list_artifacts(tracked.run_id)} == {"model.json", "plots"}
    plots = {a.path for a in client.list_artifacts(tracked.run_id, "plots")}
    assert plots == {"plots/training_curves.png", "plots/val_predictions.png"}
    for plot in plots:
        local = Path(client.download_artifacts(tracked.run_id, plot, str(tmp_path)))
        assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = client.get_logged_model(tracked.logged_model_uri.removeprefix("models:/"))
    model_files = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
    assert {"MLmodel", "data", "extra_files"} <= model_files
    label_map = mlflow.artifacts.download_artifacts(
        f"{model.artifact_location}/extra_files/{MODEL_INFO_FILE}", dst_path=str(tmp_path)
    )
    assert json.loads(Path(label_map).read_text())["categories"] == list(CATEGORIES)
    # Proxied artifacts: the files are in the S3 server, not on the MLflow host.
    stored = list(object_store.list_objects(S3Uri("mlflow-artifacts", "artifacts/")))
    assert any(o.uri.key.endswith(f"{tracked.run_id}/artifacts/model.json") for o in stored)

    version = client.get_model_version(logged.name, tracked.model_version)
    assert version.run_id == tracked.run_id
    assert version.tags["imageml.dataset_version"] == DATASET.version
    assert tracked.model_uri == f"models:/{logged.name}/{tracked.model_version}"
    resource = MlflowResource(tracking_uri=logged.uri, registered_model_name=logged.name)
    assert tracked.run_url == resource.run_url(tracked.experiment_id, tracked.run_id)
    assert tracked.run_url.startswith(f"{logged.uri}/#/experiments/")
    assert resource.get_client().get_run(tracked.run_id).info.run_id == tracked.run_id


def test_champion_loads_with_pytorch_and_pyfunc(logged: Logged) -> None:
    client = MlflowClient(logged.uri)
    decision = promote_if_better(client, logged.name, logged.tracked.model_version, HEADLINE)
    assert decision.promoted and decision.champion_version is None
    uri = f"models:/{logged.name}@champion"
    eager = torch.load(logged.result.model_dir / MODEL_FILE, weights_only=False).eval()
    images = np.random.default_rng(0).random((3, 3, SIZE, SIZE), dtype=np.float32)
    with torch.no_grad():
        expected = eager(torch.from_numpy(images)).numpy()
    loaded = mlflow.pytorch.load_model(uri)
    with torch.no_grad():
        assert tuple(loaded(torch.from_numpy(images[:2])).shape) == (2, 100, 6)
    predicted = mlflow.pyfunc.load_model(uri).predict(images)
    assert predicted.shape == (3, 100, 6)
    np.testing.assert_allclose(predicted, expected, atol=1e-4)


def test_gate_moves_the_alias_only_for_better_or_forced(
    mlflow_tracking_uri: str, tmp_path: Path
) -> None:
    client = MlflowClient(mlflow_tracking_uri)
    name = f"gate-{uuid.uuid4().hex[:8]}"

    def candidate(value: float) -> str:
        result = make_result(tmp_path, value, TinyDetector().eval())
        return log(result, mlflow_tracking_uri, name, serialization="pickle").model_version

    def champion() -> str:
        return client.get_registered_model(name).aliases["champion"]

    v1, v2, v3, v4 = (candidate(v) for v in (0.5, 0.4, 0.5, 0.6))
    assert promote_if_better(client, name, v1, HEADLINE).promoted and champion() == v1
    worse = promote_if_better(client, name, v2, HEADLINE)
    assert not worse.promoted and champion() == v1
    assert (worse.candidate_value, worse.champion_version, worse.champion_value) == (0.4, v1, 0.5)
    assert client.get_model_version(name, v2).tags["imageml.promotion"] == "rejected"
    assert not promote_if_better(client, name, v3, HEADLINE).promoted and champion() == v1
    better = promote_if_better(client, name, v4, HEADLINE)
    assert better.promoted and better.champion_version == v1 and champion() == v4
    assert client.get_model_version(name, v4).tags["imageml.promotion"] == "promoted"
    assert promote_if_better(client, name, v2, HEADLINE, force=True).promoted
    assert champion() == v2
    assert set_champion(client, name, v3).champion_version == v2 and champion() == v3


def test_unreachable_server_fails_fast_naming_it(tmp_path: Path) -> None:
    uri = f"http://user:s3cret@127.0.0.1:{free_port()}"  # nothing listens there
    result = make_result(tmp_path, 0.5, TinyDetector().eval())
    started = time.monotonic()
    with pytest.raises(TrackingError) as raised:
        log(result, uri, "never")
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert "is unreachable" in message and uri.rsplit("@", 1)[1] in message
    assert "s3cret" not in message and "\n" not in message
    with pytest.raises(TrackingError, match="unreachable"):
        MlflowResource(tracking_uri=uri).check_reachable()


def test_failure_mid_logging_marks_the_run_failed_and_registers_nothing(
    mlflow_tracking_uri: str, tmp_path: Path
) -> None:
    name = f"broken-{uuid.uuid4().hex[:8]}"
    result = make_result(tmp_path, 0.5, BrokenDetector().eval())
    with pytest.raises(TrackingError, match="cannot run") as raised:
        log(result, mlflow_tracking_uri, name, run_name=name)
    client = MlflowClient(mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")
    assert run.info.status == "FAILED" and run.info.run_id in str(raised.value)
    assert run.data.params["image_size"] == str(SIZE)  # it had started
    assert client.search_model_versions(f"name = '{name}'") == []
