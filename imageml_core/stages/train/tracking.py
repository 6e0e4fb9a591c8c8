"""Stage 3 tracking: log a finished training to MLflow, register the model, run the
promotion gate. Plain Python (MLflow client, no Dagster).

One training is one MLflow run: parameters; per-epoch metrics (step = epoch) and the final
metrics under ``final/<key>``; the gold dataset version as a run input (context
``training``); the model (``mlflow.pytorch``, ``name="model"``, with ``model.json`` among
its files and as its metadata); ``model.json``, a training-curve PNG and a validation grid
PNG as run artifacts. The model is registered last, so a failure anywhere marks the run
FAILED and registers nothing.

Promotion uses registry aliases (MLflow 3; stages are deprecated): the candidate takes the
alias (``champion``) when no version holds it, when its headline metric is strictly higher
(seed 002: higher is better), or when forced. Each decision is recorded as model-version
tags ``imageml.promotion*``.

``mlflow`` (seconds to import) is imported inside the functions that use it, so importing
this module for :class:`TrackingError` or :func:`redact_uri` stays cheap.
"""

from __future__ import annotations

import json
import math
import os
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from imageml_core.stages.train.contract import (
    MODEL_FILE,
    MODEL_INFO_FILE,
    JobState,
    ModelInfo,
    TrainingResult,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

FINAL_PREFIX = "final/"
PROMOTION_TAG = "imageml.promotion"
EXAMPLE_BATCH = 2  # torch.export fixes a batch dimension of 1; 2 keeps it dynamic


class TrackingError(RuntimeError):
    """MLflow tracking or registration failed; the message is one line naming the server
    (credentials redacted) or the run and the cause."""


@dataclass(frozen=True)
class DatasetRef:
    """The gold dataset version a model was trained on: ``version`` its id (``ds-...``,
    logged as the MLflow dataset digest), ``uri`` its manifest (``s3://.../manifest.json``,
    the dataset source), ``digest`` an optional content digest of the manifest, ``counts``
    samples per split, ``name`` the dataset's name in MLflow (default: the version)."""

    version: str
    uri: str
    digest: str = ""
    counts: Mapping[str, int] = field(default_factory=dict)
    name: str = ""


@dataclass(frozen=True)
class TrackedRun:
    """A logged and registered training: the MLflow ``run_id`` and ``experiment_id``,
    ``run_url`` (UI link without credentials; "" for a non-HTTP tracking URI), the new
    ``model_version`` of ``registered_model``, ``model_uri`` (``models:/<name>/<v>``),
    ``logged_model_uri`` (``models:/<model id>``) and the final ``metrics``."""

    run_id: str
    experiment_id: str
    run_url: str
    registered_model: str
    model_version: str
    model_uri: str
    logged_model_uri: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class PromotionDecision:
    """The gate's outcome for ``candidate_version``: whether it now holds ``alias``, the
    compared ``metric`` values (None: not logged), the version that held the alias before
    (None: none did) and a one-line ``reason``."""

    promoted: bool
    candidate_version: str
    candidate_value: float | None
    champion_version: str | None
    champion_value: float | None
    metric: str
    alias: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, for manifests and Dagster metadata."""
        return asdict(self)


def redact_uri(uri: str) -> str:
    """``uri`` with its user name and password replaced by ``***`` (tracking URIs may carry
    credentials; never print them)."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def ui_base_url(tracking_uri: str) -> str:
    """The MLflow UI base for an HTTP(S) tracking URI, without credentials, query or
    trailing slash; "" for other URIs (file, database), which have no UI."""
    parts = urllib.parse.urlsplit(tracking_uri.strip())
    if parts.scheme not in ("http", "https"):
        return ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """``<ui>/#/experiments/<experiment>/runs/<run>`` ("" without a UI)."""
    base = ui_base_url(tracking_uri)
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}" if base else ""


def model_version_url(tracking_uri: str, name: str, version: str) -> str:
    """``<ui>/#/models/<name>/versions/<version>`` ("" without a UI)."""
    base = ui_base_url(tracking_uri)
    quoted = urllib.parse.quote(name, safe="")
    return f"{base}/#/models/{quoted}/versions/{version}" if base else ""


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`TrackingError` unless an HTTP(S) tracking server answers
    ``GET /health`` within ``timeout_s`` seconds (any HTTP status counts: an auth proxy's
    401 is an answer). Non-HTTP URIs pass. One attempt: MLflow's own client retries for
    minutes before failing. TLS follows MLflow's ``MLFLOW_TRACKING_INSECURE_TLS`` and
    ``MLFLOW_TRACKING_SERVER_CERT_PATH``."""
    base = ui_base_url(tracking_uri)
    if not base:
        return
    context = None
    if base.startswith("https:"):
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            context = ssl._create_unverified_context()
        else:
            context = ssl.create_default_context(
                cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None
            )
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=timeout_s, context=context):
            return
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"MLflow tracking server at {redact_uri(tracking_uri)} is unreachable: {reason}"
        ) from None


def log_training_run(
    result: TrainingResult,
    *,
    config_params: Mapping[str, Any],
    dataset: DatasetRef,
    tags: Mapping[str, str],
    registered_model_name: str,
    experiment_name: str,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    run_name: str | None = None,
    serialization: Literal["auto", "pt2", "pickle"] = "auto",
    pip_requirements: Sequence[str] | None = None,
    check_timeout_s: float = 5.0,
) -> TrackedRun:
    """Log a SUCCEEDED training as one MLflow run in ``experiment_name`` and register its
    model as a new version of ``registered_model_name``.

    ``config_params`` become run parameters; ``tags`` run tags (Dagster run id, partition,
    git sha...; ``imageml.dataset_version`` is added). ``tracking_uri``/``registry_uri``
    None: MLflow's environment (``MLFLOW_TRACKING_URI``); given, they are set process-wide
    (MLflow's fluent API keeps them globally). ``serialization``: ``pt2``
    (``torch.export``: no pickle, loads without our code), ``pickle``, or ``auto`` (pt2,
    pickle if the module does not export). ``pip_requirements`` default: MLflow's
    PyTorch defaults (MLflow's inference would load the model again in a subprocess).

    Raises :class:`TrackingError` before any run when the server is unreachable or the
    result has no model; after the run started, any failure marks it FAILED, registers
    nothing and raises :class:`TrackingError` naming the run.
    """
    if result.state != JobState.SUCCEEDED or result.model_dir is None:
        raise TrackingError(
            f"only a SUCCEEDED training with a model is logged, not {result.state.value}"
        )
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    if registry_uri:
        mlflow.set_registry_uri(registry_uri)
    uri = mlflow.get_tracking_uri()
    check_reachable(uri, check_timeout_s)
    try:
        experiment = mlflow.set_experiment(experiment_name)  # created when missing
    except Exception as exc:
        raise TrackingError(
            f"MLflow experiment {experiment_name!r} at {redact_uri(uri)}: {_first_line(exc)}"
        ) from exc
    run_tags = {**tags, "imageml.dataset_version": dataset.version}
    run_tags["imageml.stopped_by_budget"] = str(result.stopped_by_budget).lower()
    run_id = ""
    try:
        with mlflow.start_run(run_name=run_name, tags=run_tags) as run:  # FAILED on exception
            run_id = run.info.run_id
            _log_params_metrics_dataset(result, config_params, dataset, run_id)
            info = ModelInfo.from_json(json.loads((result.model_dir / MODEL_INFO_FILE).read_text()))
            logged_model_uri = _log_model(result.model_dir, info, serialization, pip_requirements)
            _log_plots(result, result.model_dir, info)
            # Last: a failure before this registers nothing.
            version = mlflow.register_model(
                logged_model_uri,
                registered_model_name,
                tags={"imageml.dataset_version": dataset.version},
            )
    except Exception as exc:
        where = f"run {run_id}" if run_id else f"experiment {experiment_name!r}"
        raise TrackingError(
            f"MLflow logging failed in {where} at {redact_uri(uri)} (run marked FAILED, "
            f"nothing registered): {_first_line(exc)}"
        ) from exc
    return TrackedRun(
        run_id=run_id,
        experiment_id=experiment.experiment_id,
        run_url=run_url(uri, experiment.experiment_id, run_id),
        registered_model=registered_model_name,
        model_version=str(version.version),
        model_uri=f"models:/{registered_model_name}/{version.version}",
        logged_model_uri=logged_model_uri,
        metrics=dict(result.metrics),
    )


def promote_if_better(
    client: MlflowClient,
    name: str,
    version: str | int,
    metric: str,
    *,
    alias: str = "champion",
    force: bool = False,
) -> PromotionDecision:
    """The promotion gate: point ``alias`` of registered model ``name`` at ``version`` when
    no version holds it, when the candidate's ``metric`` is strictly higher than the
    holder's (higher is better, seed 002), or when ``force`` (a manual override). Ties,
    worse and a candidate without the metric leave the alias where it was.

    A version's value is its run's ``final/<metric>`` (else the last ``<metric>``); NaN
    counts as missing; a holder without a value loses to any candidate with one. The
    decision is tagged on the candidate version (``imageml.promotion`` = ``promoted`` or
    ``rejected``, ``imageml.promotion.*`` the figures). Raises MLflow's exception when the
    version does not exist."""
    version = str(version)
    candidate = _version_metric(client, name, version, metric)
    holder = client.get_registered_model(name).aliases.get(alias)
    held = _version_metric(client, name, holder, metric) if holder else None
    if force:
        promoted, reason = True, "forced (manual override)"
    elif holder == version:
        promoted, reason = True, f"version {version} already holds @{alias}"
    elif candidate is None:
        promoted, reason = False, f"version {version} has no {metric}"
    elif holder is None:
        promoted, reason = True, f"no version held @{alias}"
    elif held is None:
        promoted, reason = True, f"@{alias} version {holder} has no {metric}"
    elif candidate > held:
        promoted, reason = True, f"{metric} {candidate:.6g} > {held:.6g} of version {holder}"
    else:
        promoted = False
        reason = f"{metric} {candidate:.6g} <= {held:.6g} of version {holder} (ties keep it)"
    decision = PromotionDecision(promoted, version, candidate, holder, held, metric, alias, reason)
    if promoted and holder != version:
        client.set_registered_model_alias(name, alias, version)
    _tag_decision(client, name, decision)
    return decision


def set_champion(
    client: MlflowClient, name: str, version: str | int, alias: str = "champion"
) -> PromotionDecision:
    """The manual override: point ``alias`` at ``version`` whatever its metrics, and tag
    the version (``imageml.promotion=promoted``, reason ``set by hand``). Raises MLflow's
    exception when the version does not exist."""
    version = str(version)
    client.get_model_version(name, version)  # fails before moving anything
    holder = client.get_registered_model(name).aliases.get(alias)
    client.set_registered_model_alias(name, alias, version)
    decision = PromotionDecision(True, version, None, holder, None, "", alias, "set by hand")
    _tag_decision(client, name, decision)
    return decision


def _version_metric(client: MlflowClient, name: str, version: str, metric: str) -> float | None:
    """The run metric of a registered version (None: no run, no metric, NaN)."""
    from mlflow.exceptions import MlflowException

    run_id = client.get_model_version(name, version).run_id
    if not run_id:
        return None
    try:
        metrics = client.get_run(run_id).data.metrics
    except MlflowException:  # the run was deleted for good
        return None
    value = metrics.get(f"{FINAL_PREFIX}{metric}", metrics.get(metric))
    return None if value is None or math.isnan(value) else float(value)


def _tag_decision(client: MlflowClient, name: str, decision: PromotionDecision) -> None:
    tags = {
        PROMOTION_TAG: "promoted" if decision.promoted else "rejected",
        f"{PROMOTION_TAG}.alias": decision.alias,
        f"{PROMOTION_TAG}.reason": decision.reason,
        f"{PROMOTION_TAG}.metric": decision.metric,
        f"{PROMOTION_TAG}.candidate_value": str(decision.candidate_value),
        f"{PROMOTION_TAG}.champion_version": str(decision.champion_version),
        f"{PROMOTION_TAG}.champion_value": str(decision.champion_value),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, decision.candidate_version, key, value)


def _log_params_metrics_dataset(
    result: TrainingResult,
    config_params: Mapping[str, Any],
    dataset: DatasetRef,
    run_id: str,
) -> None:
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Metric

    mlflow.log_params({k: str(v) for k, v in config_params.items()})
    ts = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), ts, int(entry["epoch"]))
        for entry in result.history
        for key, value in entry.items()
        if key != "epoch"
    ]
    final = {**result.metrics, "images_seen": result.images_seen, "seconds": result.seconds}
    metrics += [Metric(f"{FINAL_PREFIX}{k}", float(v), ts, 0) for k, v in final.items()]
    mlflow.MlflowClient().log_batch(run_id, metrics=metrics)  # splits into server-sized batches

    class GoldDataset(MetaDataset):
        """A metadata-only dataset whose profile carries the split counts."""

        @property
        def profile(self) -> dict[str, Any]:
            return {"counts": dict(dataset.counts), "content_digest": dataset.digest}

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self.profile)}

    source = resolve_dataset_source(dataset.uri)  # s3://... -> an S3 source
    gold = GoldDataset(source, name=dataset.name or dataset.version, digest=dataset.version)
    mlflow.log_input(gold, context="training")


def _log_model(
    model_dir: Path,
    info: ModelInfo,
    serialization: Literal["auto", "pt2", "pickle"],
    pip_requirements: Sequence[str] | None,
) -> str:
    """Log the exported module as the run's model; returns ``models:/<model id>``."""
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    module = torch.load(model_dir / MODEL_FILE, weights_only=False, map_location="cpu").eval()
    size = info.image_size
    example = np.zeros((EXAMPLE_BATCH, 3, size, size), dtype=np.float32)
    with torch.no_grad():
        output = module(torch.from_numpy(example))
    signature = infer_signature(example, output.numpy())  # batch dimension -1
    requirements = list(pip_requirements or mlflow.pytorch.get_default_pip_requirements())
    formats = ["pt2", "pickle"] if serialization == "auto" else [serialization]
    for i, fmt in enumerate(formats):
        try:
            logged = mlflow.pytorch.log_model(
                module,
                name="model",
                signature=signature,
                input_example=example,  # pt2 traces with it; pyfunc needs a NumPy example
                extra_files=[str(model_dir / MODEL_INFO_FILE)],
                metadata={"imageml": info.to_json()},
                pip_requirements=requirements,
                serialization_format=fmt,
            )
            break
        except Exception as exc:
            if i == len(formats) - 1:
                raise
            mlflow.set_tag("imageml.pt2_export_error", _first_line(exc)[:500])
    mlflow.set_tag("imageml.model_format", fmt)
    mlflow.log_artifact(str(model_dir / MODEL_INFO_FILE))
    return logged.model_uri


def _log_plots(result: TrainingResult, model_dir: Path, info: ModelInfo) -> None:
    """Log the training curves and the validation grid under ``plots/``. A plot that
    cannot be drawn does not fail the run: the cause goes to tag ``imageml.plot_error``."""
    import mlflow

    from imageml_core.stages.train.plots import plot_training_curves, plot_val_predictions

    with tempfile.TemporaryDirectory(prefix="imageml-plots-") as tmp:
        try:
            plots = [
                plot_training_curves(
                    result.history, result.headline, Path(tmp) / "training_curves.png"
                ),
                plot_val_predictions(model_dir, info, Path(tmp) / "val_predictions.png"),
            ]
        except Exception as exc:
            mlflow.set_tag("imageml.plot_error", _first_line(exc)[:500])
            return
        for plot in plots:
            if plot is not None:
                mlflow.log_artifact(str(plot), artifact_path="plots")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
