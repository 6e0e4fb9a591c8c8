"""One training materialization, start to finish (what ``trained_model`` and ``imageml
run`` call). See :mod:`imageml_core.stages.train.training` for the order of effects.

Tracking is behind :class:`Tracker` so the flow reads without MLflow in it and another
tracking backend could plug in; :class:`MlflowTracker` is the MLflow one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from imageml_core.manifest.interface import ManifestStore
from imageml_core.stages.train.contract import JobState, Trainer, TrainingResult
from imageml_core.stages.train.training import (
    TrainedModel,
    TrainingFailed,
    TrainingPlan,
    describe_failure,
    from_record,
    log_event,
    read_dataset,
    record_training,
    resolve_dataset,
    run_trainer,
    stage_dataset,
    trained,
)
from imageml_core.storage.object_store import ObjectStore
from imageml_core.storage.staging import NvmeStaging
from imageml_core.uris import S3Uri


@dataclass(frozen=True)
class Registered:
    """A logged and registered training: the run, its UI page ("" when there is none)
    and the new model version."""

    run_id: str
    model_version: str
    run_url: str = ""


class Tracker(Protocol):
    """Where trainings are tracked and models registered (MLflow here)."""

    def check_reachable(self) -> None:
        """Raise with a one-line message if the tracking server cannot be reached."""

    def log_and_register(
        self,
        result: TrainingResult,
        *,
        params: Mapping[str, Any],
        dataset: Mapping[str, Any],
        tags: Mapping[str, str],
    ) -> Registered:
        """Log ``result`` as one run and register its model; a failure registers nothing."""

    def promote(self, model_version: str, metric: str, *, force: bool) -> dict[str, Any]:
        """The promotion gate; returns the decision (``promoted``, values, ``reason``)."""


@dataclass(frozen=True)
class MlflowTracker:
    """:class:`Tracker` on MLflow (:mod:`imageml_core.stages.train.tracking`):
    ``tracking_uri`` and ``registry_uri`` (None: MLflow's environment), the experiment, the
    registered model and the alias the gate moves."""

    tracking_uri: str | None
    registry_uri: str | None
    experiment_name: str
    registered_model: str
    alias: str = "champion"

    def check_reachable(self) -> None:
        """Raise :class:`~imageml_core.stages.train.tracking.TrackingError` in seconds when
        the server does not answer (before staging or training anything)."""
        from imageml_core.stages.train.tracking import check_reachable

        if not self.tracking_uri:
            from imageml_core.stages.train.tracking import TrackingError

            raise TrackingError(
                "MLFLOW_TRACKING_URI is not set: training logs to an MLflow tracking server "
                "(imageml demo and imageml dev start one); set it, or run --until gold"
            )
        check_reachable(self.tracking_uri)

    def log_and_register(
        self,
        result: TrainingResult,
        *,
        params: Mapping[str, Any],
        dataset: Mapping[str, Any],
        tags: Mapping[str, str],
    ) -> Registered:
        from imageml_core.stages.train.tracking import DatasetRef, log_training_run

        tracked = log_training_run(
            result,
            config_params=params,
            dataset=DatasetRef(
                version=str(dataset["version"]),
                uri=str(dataset["uri"]),
                counts=dict(dataset.get("counts", {})),
            ),
            tags=tags,
            registered_model_name=self.registered_model,
            experiment_name=self.experiment_name,
            tracking_uri=self.tracking_uri,
            registry_uri=self.registry_uri,
        )
        return Registered(tracked.run_id, tracked.model_version, tracked.run_url)

    def promote(self, model_version: str, metric: str, *, force: bool) -> dict[str, Any]:
        from mlflow import MlflowClient

        from imageml_core.stages.train.tracking import promote_if_better

        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        decision = promote_if_better(
            client, self.registered_model, model_version, metric, alias=self.alias, force=force
        )
        return decision.to_json()


def train_model(
    *,
    store: ObjectStore,
    staging: NvmeStaging,
    manifest: ManifestStore,
    tracker: Tracker,
    trainer: Trainer,
    plan: TrainingPlan,
    day: str,
    dataset_pointer: str,
    training_uri: S3Uri,
    gold_inputs: str | None = None,
    dataset_name: str,
    force: bool = False,
    force_promotion: bool = False,
    tags: Mapping[str, str] | None = None,
    run_key: str | None = None,
    log_fn: Callable[[str], None] = print,
    cancel: threading.Event | None = None,
) -> TrainedModel:
    """Train ``day``'s model on the dataset version ``dataset_pointer`` (empty: the newest
    built from ``gold_inputs``, the current settings' gold inputs),
    log it, register it and run the promotion gate; a no-op returning the recorded result
    when ``day`` was already trained on the same dataset and plan, unless ``force``.

    Raises :class:`~imageml_core.stages.train.training.UnknownDataset` for a bad pointer,
    :class:`~imageml_core.stages.train.training.TrainingFailed` when training does not
    succeed (nothing registered), and the tracker's error for an unreachable server (raised
    before any work)."""
    record = resolve_dataset(manifest, dataset_pointer, inputs=gold_inputs)
    doc = read_dataset(store, record)
    fingerprint = plan.fingerprint(doc.partition_key)
    done = trained(manifest, day, fingerprint)
    if done is not None and not force:
        log_fn(
            f"{day} was already trained on {doc.partition_key} with this configuration "
            f"(model version {done.details.get('model_version')}); nothing to do "
            "(force=True trains again)"
        )
        return from_record(done)
    tracker.check_reachable()
    log_fn(
        f"training {plan.config.task} model {plan.config.model} on {doc.partition_key} "
        f"({doc.counts.get('train', 0)} train / {doc.counts.get('val', 0)} val images), "
        f"{plan.instances} instance(s)"
    )
    with staging.job("train", day, run_key) as job:
        data = stage_dataset(
            store,
            staging,
            doc,
            job,
            instances=plan.instances,
            images_per_node=plan.images_per_node,
        )
        out_dir = staging.area("work", job)
        result = run_trainer(trainer, plan, data, out_dir, log_event(log_fn), cancel)
        if result.state != JobState.SUCCEEDED:
            raise TrainingFailed(describe_failure(result))
        registered = tracker.log_and_register(
            result,
            params=plan.config.params()
            | {"instances": plan.instances, "images_per_node": plan.images_per_node},
            dataset={
                "version": doc.partition_key,
                "uri": str(record.manifest_uri),
                "counts": dict(doc.counts),
                "variant": doc.variant,
            },
            tags=dict(tags or {}) | {"imageml.dataset_version": doc.partition_key},
        )
    log_fn(
        f"registered {plan.registered_model} version {registered.model_version} "
        f"(MLflow run {registered.run_id})"
    )
    decision = tracker.promote(registered.model_version, result.headline, force=force_promotion)
    log_fn(f"promotion gate: {decision.get('reason', '')}")
    return record_training(
        store=store,
        manifest=manifest,
        training_uri=training_uri,
        dataset_name=dataset_name,
        day=day,
        fingerprint=fingerprint,
        forced_run=(run_key or "forced")[:8] if done is not None else None,
        plan=plan,
        trainer_name=trainer.name,
        dataset_doc=doc,
        result=result,
        model_version=registered.model_version,
        run_id=registered.run_id,
        run_url=registered.run_url,
        promotion=decision,
        run_key=run_key,
    )
