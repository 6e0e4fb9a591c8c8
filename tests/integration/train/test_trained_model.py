"""Stage 3 through Dagster with a real MLflow server (issue 11 acceptance): ``imageml run
--until train`` builds the gold version and trains the day's model; MLflow holds the
params, per-epoch metrics, artifacts and a registered version; the promotion gate moves
``champion`` only for a better candidate (or by hand); ``models:/<name>@champion`` loads
and predicts; a rerun is a no-op; bad inputs are one-line errors that register nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from imageml_assets.definitions import build_definitions
from imageml_assets.defs.train import TRAINED_MODEL_JOB
from imageml_cli.main import cli
from imageml_cli.runner import RunSummary, open_instance, run_pipeline
from imageml_core.manifest import TRAIN, TRAINING_SHARDS
from imageml_core.settings import Settings
from imageml_core.stages.train.training import UnknownDataset
from imageml_core.storage.object_store import ObjectStore
from imageml_dev.synthetic import generate_dataset
from imageml_resources import open_manifest_store

pytestmark = [pytest.mark.s3]

MODEL = "imageml-test-detector"


@pytest.fixture
def settings(
    s3_env: dict[str, str],
    mlflow_tracking_uri: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    object_store: ObjectStore,
) -> Settings:
    env = {
        **s3_env,
        "AUGMENT_PIPELINE": "light",
        "NORMALIZE_SIZES": "360p",
        "TRAIN_VAL_FRACTION": "0.25",
        "TRAIN_IMAGE_SIZE": "96",
        "TRAIN_EPOCHS": "6",
        "TRAIN_BATCH_SIZE": "8",
        "REGISTERED_MODEL_NAME": f"{MODEL}-{tmp_path.name[-12:]}",
        "MLFLOW_EXPERIMENT_NAME": f"t-{tmp_path.name[-12:]}",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    local = tmp_path / "synthetic"
    files = generate_dataset(local, images=24, zip_images=0, size=(128, 96), include_bad=False)
    object_store.upload_many([(local / f, settings.raw_uri.join(str(f))) for f in files])
    return settings


def _run(settings: Settings, tmp_path: Path, **kwargs: object) -> tuple[RunSummary, list[str]]:
    lines: list[str] = []
    instance = open_instance(tmp_path / "dagster")
    try:
        summary = run_pipeline(settings, instance, until="train", echo=lines.append, **kwargs)
    finally:
        instance.dispose()
    return summary, lines


def _train_job(settings: Settings, tmp_path: Path, day: str, **config: object) -> object:
    """One run of trained_model_job for ``day`` with run config ``config``."""
    instance = open_instance(tmp_path / "dagster")
    try:
        job = build_definitions(settings).resolve_job_def(TRAINED_MODEL_JOB)
        return job.execute_in_process(
            instance=instance,
            partition_key=day,
            run_config={"ops": {"trained_model": {"config": config}}},
            raise_on_error=False,
        )
    finally:
        instance.dispose()


def test_train_track_register_and_gate(settings: Settings, tmp_path: Path) -> None:
    import mlflow.pyfunc
    import mlflow.pytorch
    from mlflow import MlflowClient

    name = settings.registered_model
    summary, lines = _run(settings, tmp_path)
    assert not summary.failed, [r.metadata for r in summary.failed]
    (train_run,) = [r for r in summary.runs if r.stage == "train"]
    meta = train_run.metadata["trained_model"]
    assert meta["model_version"] == 1 and meta["promoted"] is True
    assert 0.0 <= meta["map_50"] <= 1.0 and "map_50_95" in meta
    assert train_run.failed_checks == {}  # the gate passed: the first version is champion

    client = MlflowClient(settings.mlflow_tracking_uri)
    version = client.get_model_version(name, "1")
    run = client.get_run(version.run_id)
    params = run.data.params
    assert params["task"] == "detection" and params["model"] == "resnet10t"
    assert params["epochs"] == "6" and params["image_size"] == "96"
    tags = run.data.tags
    assert tags["dagster.partition"] == train_run.partition_key
    assert tags["dagster.run_id"] == train_run.run_id
    assert tags["imageml.dataset_version"].startswith("ds-")
    assert len(tags["imageml.git_sha"]) >= 7
    for key in ("train_loss", "map_50", "map_50_95"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == list(range(1, 7)), key
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == tags["imageml.dataset_version"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "model.json" in artifacts and "plots" in artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/training_curves.png", "plots/val_predictions.png"}
    assert client.get_registered_model(name).aliases == {"champion": "1"}

    # The champion loads and predicts boxes in the documented shape.
    batch = np.random.default_rng(0).random((2, 3, 96, 96), dtype=np.float32)
    module = mlflow.pytorch.load_model(f"models:/{name}@champion")
    import torch

    with torch.no_grad():
        out = module(torch.from_numpy(batch))
    assert tuple(out.shape) == (2, 100, 6)
    assert np.asarray(
        mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(batch)
    ).shape == (
        2,
        100,
        6,
    )

    # Same day, data and configuration: nothing runs, nothing is registered.
    again, lines = _run(settings, tmp_path)
    assert again.runs == [] and any("the model is current" in line for line in lines)
    assert len(client.search_model_versions(f"name='{name}'")) == 1

    # A worse candidate (forced, with a learning rate too small to learn) is registered
    # but leaves the alias; the gate check warns.
    day = train_run.partition_key
    worse = _train_job(settings, tmp_path, day, force=True, learning_rate=1e-9)
    assert worse.success
    (check,) = worse.get_asset_check_evaluations()
    assert not check.passed and "<=" in str(check.metadata["reason"].value)
    assert client.get_registered_model(name).aliases == {"champion": "1"}
    decision = client.get_model_version(name, "2").tags
    assert decision["imageml.promotion"] == "rejected"

    # The manual override: by run config, then back by the CLI.
    forced = _train_job(settings, tmp_path, day, force=True, force_promotion=True, epochs=1)
    assert forced.success
    assert client.get_registered_model(name).aliases == {"champion": "3"}
    result = CliRunner().invoke(cli, ["promote", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "-> version 1 (was 3)" in result.output
    assert client.get_registered_model(name).aliases == {"champion": "1"}

    # Lineage: each gold shard -> the model version trained on it.
    store = open_manifest_store(settings.manifest_db_url)
    shard = next(iter(store.manifests(TRAINING_SHARDS))).manifest_uri
    assert shard is not None
    trained = store.manifests(TRAIN)
    assert [t.details["model_version"] for t in trained] == ["1", "2", "3"]


def test_bad_inputs_are_one_line_errors_and_register_nothing(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    name = settings.registered_model
    # An empty gold set: nothing to train, and the run says so without failing.
    summary, lines = _run(settings.with_overrides(raw_uri=settings.raw_uri.join("none")), tmp_path)
    assert not summary.failed and "[train] no training dataset version yet" in "\n".join(lines)

    summary, _ = _run(settings, tmp_path)  # builds the gold version and trains version 1
    assert not summary.failed
    day = next(r for r in summary.runs if r.stage == "train").partition_key

    cases = {
        "unknown dataset": (
            {"force": True, "dataset": "ds-0000000000000000"},
            "TRAIN_DATASET='ds-0000000000000000' is not a published dataset version",
        ),
        "unknown timm name": ({"force": True, "model": "resnet_nope"}, "resnet_nope"),
    }
    for what, (config, message) in cases.items():
        outcome = _train_job(settings, tmp_path, day, **config)
        assert not outcome.success, what
        (failure,) = [e for e in outcome.all_events if e.is_step_failure]
        text = failure.step_failure_data.error.message.strip()
        assert message in text, (what, text)
        assert "Traceback" not in text and len(text.splitlines()) <= 2, text

    # `imageml run` with a pointer to nothing says so (it does not call the model current).
    monkeypatch.setenv("TRAIN_DATASET", "ds-doesnotexist")
    with pytest.raises(UnknownDataset, match="TRAIN_DATASET='ds-doesnotexist' is not a"):
        _run(Settings.from_env(), tmp_path)
    monkeypatch.delenv("TRAIN_DATASET")

    # An unreachable MLflow server: fails in seconds, before any training.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    down = Settings.from_env()
    outcome = _train_job(down, tmp_path, day, force=True)
    assert not outcome.success
    (failure,) = [e for e in outcome.all_events if e.is_step_failure]
    assert "MLflow tracking server at http://127.0.0.1:9 is unreachable" in (
        failure.step_failure_data.error.message
    )
    assert (
        len(MlflowClient(settings.mlflow_tracking_uri).search_model_versions(f"name='{name}'")) == 1
    )
