"""Stage 3: train a model on a gold dataset version, track it in MLflow, register it and
run the promotion gate. Plain Python: the ``trained_model`` asset and ``imageml run`` call
:func:`train_model`.

Order of effects (DESIGN.md section 7, "outputs first, manifest last"): the dataset
pointer is resolved and the tracking server checked before any work; the shards are
staged on NVMe; the trainer runs; only a SUCCEEDED training is logged and registered
(a failed or cancelled one registers nothing and leaves the alias where it was); the gate
moves the alias when the candidate is better; the manifest
(``TRAINING_URI/models/<day>/<fingerprint>.json``) and its row in the manifest store come
last. The same day, dataset version and configuration is then a no-op unless forced.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imageml_core.manifest.documents import TrainedModelManifest, TrainingDatasetManifest
from imageml_core.manifest.interface import TRAIN, TRAINING_SHARDS, ManifestRecord, ManifestStore
from imageml_core.manifest.keys import trained_model_manifest_uri
from imageml_core.manifest.publish import publish_partition, published, read_document
from imageml_core.stages.train.contract import (
    EventSink,
    JobState,
    Trainer,
    TrainerConfig,
    TrainingData,
    TrainingEvent,
    TrainingResult,
)
from imageml_core.storage.object_store import ObjectStore
from imageml_core.storage.staging import NvmeStaging
from imageml_core.uris import S3Uri, parse_s3_uri


class UnknownDataset(ValueError):
    """``TRAIN_DATASET`` names no published dataset version, or none exists yet."""


class TrainingFailed(RuntimeError):
    """Training ended FAILED or CANCELLED: nothing was registered; the message is one line
    naming the state and the cause."""


@dataclass(frozen=True)
class TrainingPlan:
    """Everything that decides a training's result besides the day: the trainer config,
    the number of instances and images per instance, the registered model name."""

    config: TrainerConfig
    instances: int = 1
    images_per_node: int = 0
    registered_model: str = "imageml-detection"
    promotion_alias: str = "champion"

    def fingerprint(self, dataset_version: str) -> str:
        """16 hex over the dataset version and every field: equal fingerprints train the
        same model (seeded), so a second training of the same day is a no-op."""
        doc = {
            "dataset": dataset_version,
            "config": self.config.params() | {"pretrained_path": self.config.pretrained_path},
            "instances": self.instances,
            "images_per_node": self.images_per_node,
            "registered_model": self.registered_model,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainedModel:
    """What :func:`train_model` did or found done: the manifest key, MLflow run and model
    version, final metrics, the gate's decision, and whether it was a no-op."""

    partition_key: str
    dataset_version: str
    registered_model: str
    model_version: str
    model_uri: str
    run_id: str
    metrics: dict[str, float]
    headline: str
    promoted: bool
    already_trained: bool
    manifest_uri: str = ""
    promotion: dict[str, Any] = field(default_factory=dict)
    stopped_by_budget: bool = False
    run_url: str = ""


def resolve_dataset(
    manifest: ManifestStore, pointer: str = "", *, inputs: str | None = None
) -> ManifestRecord:
    """The published gold dataset version ``pointer`` (``ds-<16 hex>``); with no pointer,
    the newest version built from ``inputs`` (the current settings' gold inputs,
    :func:`~imageml_core.stages.train.dataset.current_inputs`), else the newest version.
    Raises :class:`UnknownDataset` with a one-line hint."""
    if pointer:
        record = published(manifest, TRAINING_SHARDS, pointer)
        if record is None:
            known = [r.partition_key for r in manifest.manifests(TRAINING_SHARDS)][-3:]
            hint = f"; newest: {', '.join(reversed(known))}" if known else ""
            raise UnknownDataset(
                f"TRAIN_DATASET={pointer!r} is not a published dataset version{hint}"
            )
        return record
    records = manifest.manifests(TRAINING_SHARDS)
    if inputs is not None:
        # Going back to earlier settings selects the version they built, not the newest.
        records = [r for r in records if r.details.get("inputs") == inputs]
    if not records:
        raise UnknownDataset(
            "no training dataset version for the current settings yet: build one first "
            "(imageml run --until gold, or materialize training_shards)"
        )
    return records[-1]


def trained(manifest: ManifestStore, day: str, fingerprint: str) -> ManifestRecord | None:
    """The training of ``day`` with ``fingerprint``, if one was published."""
    return published(manifest, TRAIN, f"{day}:{fingerprint}")


def current_training(manifest: ManifestStore, fingerprint: str) -> ManifestRecord | None:
    """The newest training of any day with ``fingerprint`` (``imageml run`` does not
    retrain a model that is current)."""
    for record in reversed(manifest.manifests(TRAIN)):
        if record.details.get("fingerprint") == fingerprint:
            return record
    return None


def select_shards(
    doc: TrainingDatasetManifest, instances: int, images_per_node: int
) -> tuple[list[str], list[str]]:
    """(train, val) shard URIs to stage. ``images_per_node`` > 0 caps the train images
    each of ``instances`` trains on: whole shards are taken in order until
    ``instances * images_per_node`` images are covered. Validation is always whole."""
    train = [s for s in doc.shards if s.split == "train"]
    if images_per_node > 0:
        budget, chosen = instances * images_per_node, []
        for shard in train:
            if budget <= 0:
                break
            chosen.append(shard)
            budget -= shard.samples
        train = chosen
    return [s.uri for s in train], [s.uri for s in doc.shards if s.split == "val"]


def stage_dataset(
    store: ObjectStore,
    staging: NvmeStaging,
    doc: TrainingDatasetManifest,
    job: str,
    *,
    instances: int = 1,
    images_per_node: int = 0,
) -> TrainingData:
    """Download the chosen shards of ``doc`` into NVMe staging (cached by ETag) and check
    each against the SHA-256 its manifest recorded. Raises :class:`TrainingFailed` for a
    shard that is missing or changed (a dataset version is immutable: rebuild it)."""
    train_uris, val_uris = select_shards(doc, instances, images_per_node)
    uris = [parse_s3_uri(u) for u in train_uris + val_uris]
    infos = store.stat_many(uris)
    expected = {s.uri: s for s in doc.shards}
    missing = [str(u) for u, info in infos.items() if info is None]
    if missing:
        raise TrainingFailed(
            f"dataset {doc.partition_key}: shard {missing[0]} is missing "
            f"({len(missing)} in all); rebuild the dataset (materialize training_shards)"
        )
    staged = staging.stage_in(store, [i for i in infos.values() if i is not None], job)
    local: dict[str, Path] = {}
    for obj in staged:
        uri = str(obj.info.uri)
        if obj.sha256 != expected[uri].sha256:
            raise TrainingFailed(
                f"dataset {doc.partition_key}: shard {uri} changed since it was published "
                "(SHA-256 differs); rebuild the dataset (materialize training_shards)"
            )
        local[uri] = obj.path
    return TrainingData(
        version=doc.partition_key,
        train_shards=[local[u] for u in train_uris],
        val_shards=[local[u] for u in val_uris],
        categories=[dict(c) for c in doc.categories],
    )


def run_trainer(
    trainer: Trainer,
    plan: TrainingPlan,
    data: TrainingData,
    out_dir: Path,
    on_event: EventSink,
    cancel: threading.Event | None = None,
) -> TrainingResult:
    """One instance in this process, or ``plan.instances`` processes under torchrun
    (:func:`imageml_core.stages.train.distributed.run_distributed`)."""
    if plan.instances > 1:
        from imageml_core.stages.train.distributed import run_distributed

        return run_distributed(plan.config, data, out_dir, plan.instances, on_event, cancel)
    return trainer.train(plan.config, data, out_dir, on_event, cancel)


def describe_failure(result: TrainingResult) -> str:
    """One line for a training that did not succeed."""
    if result.state == JobState.CANCELLED:
        return "training was cancelled; nothing was registered"
    return f"training failed: {result.error or 'no reason given'}; nothing was registered"


def log_event(log_fn: Callable[[str], None]) -> EventSink:
    """An event sink that writes one line per event (states, epochs, progress)."""

    def sink(event: TrainingEvent) -> None:
        if event.kind == "state" and event.state is not None:
            log_fn(f"training {event.state.value}{': ' + event.message if event.message else ''}")
        elif event.kind == "epoch":
            figures = ", ".join(f"{k} {v:.4g}" for k, v in event.metrics.items())
            log_fn(f"epoch {event.epoch}: {figures}")
        elif event.message:
            log_fn(event.message)

    return sink


def record_training(
    *,
    store: ObjectStore,
    manifest: ManifestStore,
    training_uri: S3Uri,
    dataset_name: str,
    day: str,
    fingerprint: str,
    forced_run: str | None,
    plan: TrainingPlan,
    trainer_name: str,
    dataset_doc: TrainingDatasetManifest,
    result: TrainingResult,
    model_version: str,
    run_id: str,
    run_url: str,
    promotion: Mapping[str, Any],
    run_key: str | None,
) -> TrainedModel:
    """Publish the training's manifest and its manifest-store row (the last effect)."""
    key = f"{day}:{fingerprint}" + (f":{forced_run}" if forced_run else "")
    model_uri = f"models:/{plan.registered_model}/{model_version}"
    train_shards, val_shards = select_shards(dataset_doc, plan.instances, plan.images_per_node)
    document = TrainedModelManifest(
        partition_key=key,
        dataset=dataset_name,
        day=day,
        fingerprint=fingerprint,
        dataset_version=dataset_doc.partition_key,
        trainer=trainer_name,
        params=plan.config.params() | {"instances": plan.instances},
        registered_model=plan.registered_model,
        model_version=model_version,
        model_uri=model_uri,
        run_id=run_id,
        metrics=dict(result.metrics),
        headline=result.headline,
        promotion=dict(promotion),
        shards=tuple(train_shards + val_shards),
        stopped_by_budget=result.stopped_by_budget,
        run_url=run_url,
    )
    uri = trained_model_manifest_uri(
        training_uri, day, fingerprint + (f"-{forced_run}" if forced_run else "")
    )
    publish_partition(
        document, manifest_uri=uri, object_store=store, manifest_store=manifest, run_id=run_key
    )
    return TrainedModel(
        partition_key=key,
        dataset_version=dataset_doc.partition_key,
        registered_model=plan.registered_model,
        model_version=model_version,
        model_uri=model_uri,
        run_id=run_id,
        metrics=dict(result.metrics),
        headline=result.headline,
        promoted=bool(promotion.get("promoted")),
        already_trained=False,
        manifest_uri=str(uri),
        promotion=dict(promotion),
        stopped_by_budget=result.stopped_by_budget,
        run_url=run_url,
    )


def from_record(record: ManifestRecord) -> TrainedModel:
    """A :class:`TrainedModel` for a training already published (a no-op rerun)."""
    d = record.details
    return TrainedModel(
        partition_key=record.partition_key,
        dataset_version=str(d["dataset_version"]),
        registered_model=str(d["registered_model"]),
        model_version=str(d["model_version"]),
        model_uri=str(d["model_uri"]),
        run_id=str(d["run_id"]),
        metrics={k: float(v) for k, v in dict(d["metrics"]).items()},
        headline=str(d["headline"]),
        promoted=bool(d.get("promoted")),
        already_trained=True,
        manifest_uri=str(record.manifest_uri or ""),
        promotion=dict(d.get("promotion") or {}),
        run_url=str(d.get("run_url", "")),
    )


def read_dataset(store: ObjectStore, record: ManifestRecord) -> TrainingDatasetManifest:
    """The dataset version's manifest document."""
    return read_document(store, record, TrainingDatasetManifest)
