"""Stage 3 documents: the gold training dataset version (``training_shards``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from imageml_core.manifest.documents.base import StageDocument, read_field
from imageml_core.manifest.interface import (
    TRAIN,
    TRAINING_SHARDS,
    LineageEdge,
    ProcessedObject,
)


@dataclass(frozen=True)
class Shard:
    """One tar shard in WebDataset layout: ``<key>.jpg`` + ``<key>.json`` per sample, in
    key order. ``split`` is ``train`` or ``val``; ``samples`` how many it holds; ``etag``
    its MD5 and ``sha256`` its SHA-256."""

    uri: str
    split: str
    samples: int
    etag: str
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Shard:
        return cls(
            uri=str(doc["uri"]),
            split=str(doc["split"]),
            samples=int(doc["samples"]),
            etag=str(doc["etag"]),
            sha256=str(doc["sha256"]),
        )


@dataclass(frozen=True)
class TrainingDatasetSummary:
    """What the manifest store keeps for a dataset version: its variant, the split rule's
    fraction, the sample counts per split and ``inputs``, the fingerprint of the normalize
    manifests and settings it was built from (``imageml run`` compares it to decide whether
    a build is due)."""

    variant: str
    val_fraction: float
    counts: Mapping[str, int]
    inputs: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "val_fraction": self.val_fraction,
            "counts": dict(self.counts),
            "inputs": self.inputs,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TrainingDatasetSummary:
        what = "training dataset summary"
        return cls(
            variant=read_field(doc, "variant", str, what),
            val_fraction=read_field(doc, "val_fraction", float, what),
            counts=read_field(doc, "counts", dict, what),
            inputs=str(doc.get("inputs") or ""),
        )


@dataclass(frozen=True)
class TrainingDatasetManifest(StageDocument):
    """``TRAINING_URI/datasets/<version>/manifest.json``: a gold dataset version.

    ``partition_key`` is the version id (``ds-<16 hex>``, a hash of every sample's bytes,
    annotations and split, and of the split and shard settings: the same inputs give the
    same id). ``inputs`` fingerprints the normalize manifests (``sources``) and settings it
    was built from; ``categories`` the COCO categories (the user's ids); ``split_rule``
    states the rule; ``left_out`` normalized images that could not be read (URI -> reason);
    ``members`` the image URIs of each shard, in shard order.
    """

    step: ClassVar = TRAINING_SHARDS

    partition_key: str
    dataset: str
    variant: str
    normalization_policy_hash: str
    val_fraction: float
    shard_images: int
    inputs: str
    split_rule: str
    sources: tuple[str, ...]
    categories: tuple[Mapping[str, Any], ...]
    shards: tuple[Shard, ...]
    counts: Mapping[str, int]
    left_out: Mapping[str, str]
    members: Mapping[str, list[str]]

    def body(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "variant": self.variant,
            "normalization_policy_hash": self.normalization_policy_hash,
            "val_fraction": self.val_fraction,
            "shard_images": self.shard_images,
            "inputs": self.inputs,
            "split_rule": self.split_rule,
            "sources": list(self.sources),
            "categories": [dict(c) for c in self.categories],
            "shards": [s.to_json() for s in self.shards],
            "counts": dict(self.counts),
            "left_out": dict(self.left_out),
            "members": {k: list(v) for k, v in self.members.items()},
        }

    @classmethod
    def from_body(cls, doc: Mapping[str, Any]) -> TrainingDatasetManifest:
        what = "training dataset manifest"
        return cls(
            partition_key=read_field(doc, "partition_key", str, what),
            dataset=read_field(doc, "dataset", str, what),
            variant=read_field(doc, "variant", str, what),
            normalization_policy_hash=read_field(doc, "normalization_policy_hash", str, what),
            val_fraction=read_field(doc, "val_fraction", float, what),
            shard_images=read_field(doc, "shard_images", int, what),
            inputs=read_field(doc, "inputs", str, what),
            split_rule=read_field(doc, "split_rule", str, what),
            sources=read_field(doc, "sources", lambda v: tuple(str(s) for s in v), what),
            categories=read_field(doc, "categories", lambda v: tuple(dict(c) for c in v), what),
            shards=read_field(doc, "shards", lambda v: tuple(Shard.from_json(s) for s in v), what),
            counts=read_field(doc, "counts", dict, what),
            left_out=read_field(doc, "left_out", dict, what),
            members=read_field(doc, "members", dict, what),
        )

    def summary(self) -> dict[str, Any]:
        return TrainingDatasetSummary(
            self.variant, self.val_fraction, self.counts, self.inputs
        ).to_json()

    def ledger(self) -> list[ProcessedObject]:
        """One ok row per shard."""
        return [
            ProcessedObject(
                uri=s.uri,
                etag=s.etag,
                content_sha256=s.sha256,
                details={"kind": "training_shard", "split": s.split, "samples": s.samples},
            )
            for s in self.shards
        ]

    def edges(self) -> list[LineageEdge]:
        """Normalized image -> the shard that holds it, so lineage runs from a raw object to
        the gold shards (and back)."""
        return [
            LineageEdge(image, shard, TRAINING_SHARDS)
            for shard, images in self.members.items()
            for image in images
        ]


@dataclass(frozen=True)
class TrainedModelManifest(StageDocument):
    """``TRAINING_URI/models/<day>/<fingerprint>.json``: one training of a daily partition.

    ``partition_key`` is ``<day>:<fingerprint>``, where ``fingerprint`` hashes the dataset
    version, the trainer configuration and the registered model name: the same day, data
    and configuration is the same key, so a rerun is a no-op (a forced run appends its run
    id). ``model_uri`` is ``models:/<name>/<version>`` in the MLflow registry, ``run_id``
    the MLflow run (``run_url`` its page, no credentials); ``metrics`` the final validation
    metrics; ``headline`` the metric the
    promotion gate compares; ``promotion`` the gate's decision (``promoted``, the
    candidate's and the champion's values, ``reason``); ``shards`` the gold shards read.
    """

    step: ClassVar = TRAIN

    partition_key: str
    dataset: str
    day: str
    fingerprint: str
    dataset_version: str
    trainer: str
    params: Mapping[str, Any]
    registered_model: str
    model_version: str
    model_uri: str
    run_id: str
    metrics: Mapping[str, float]
    headline: str
    promotion: Mapping[str, Any]
    shards: tuple[str, ...]
    stopped_by_budget: bool = False
    run_url: str = ""

    def body(self) -> dict[str, Any]:
        return {
            "run_url": self.run_url,
            "dataset": self.dataset,
            "day": self.day,
            "fingerprint": self.fingerprint,
            "dataset_version": self.dataset_version,
            "trainer": self.trainer,
            "params": dict(self.params),
            "registered_model": self.registered_model,
            "model_version": self.model_version,
            "model_uri": self.model_uri,
            "run_id": self.run_id,
            "metrics": dict(self.metrics),
            "headline": self.headline,
            "promotion": dict(self.promotion),
            "shards": list(self.shards),
            "stopped_by_budget": self.stopped_by_budget,
        }

    @classmethod
    def from_body(cls, doc: Mapping[str, Any]) -> TrainedModelManifest:
        what = "trained model manifest"
        return cls(
            partition_key=read_field(doc, "partition_key", str, what),
            dataset=read_field(doc, "dataset", str, what),
            day=read_field(doc, "day", str, what),
            fingerprint=read_field(doc, "fingerprint", str, what),
            dataset_version=read_field(doc, "dataset_version", str, what),
            trainer=read_field(doc, "trainer", str, what),
            params=read_field(doc, "params", dict, what),
            registered_model=read_field(doc, "registered_model", str, what),
            model_version=read_field(doc, "model_version", str, what),
            model_uri=read_field(doc, "model_uri", str, what),
            run_id=read_field(doc, "run_id", str, what),
            metrics=read_field(doc, "metrics", dict, what),
            headline=read_field(doc, "headline", str, what),
            promotion=read_field(doc, "promotion", dict, what),
            shards=read_field(doc, "shards", lambda v: tuple(str(s) for s in v), what),
            stopped_by_budget=bool(doc.get("stopped_by_budget", False)),
            run_url=str(doc.get("run_url", "")),
        )

    def summary(self) -> dict[str, Any]:
        """What the store keeps: enough to answer "is this trained?" and fill the asset's
        metadata on a no-op rerun without reading S3."""
        return {
            "day": self.day,
            "fingerprint": self.fingerprint,
            "dataset_version": self.dataset_version,
            "registered_model": self.registered_model,
            "model_version": self.model_version,
            "model_uri": self.model_uri,
            "run_id": self.run_id,
            "run_url": self.run_url,
            "metrics": dict(self.metrics),
            "headline": self.headline,
            "promoted": bool(self.promotion.get("promoted")),
            "promotion": dict(self.promotion),
        }

    def ledger(self) -> list[ProcessedObject]:
        """One ok row for the registered model version."""
        return [
            ProcessedObject(
                uri=self.model_uri,
                etag=self.run_id,
                details={"kind": "model_version", "dataset_version": self.dataset_version},
            )
        ]

    def edges(self) -> list[LineageEdge]:
        """Each gold shard -> the model version trained on it."""
        return [LineageEdge(shard, self.model_uri, TRAIN) for shard in self.shards]
