"""Stage 3 documents: the gold training dataset version (``training_shards``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from imageml_core.manifest.documents.base import StageDocument, read_field
from imageml_core.manifest.interface import (
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
    fraction and the sample counts per split."""

    variant: str
    val_fraction: float
    counts: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "val_fraction": self.val_fraction,
            "counts": dict(self.counts),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TrainingDatasetSummary:
        what = "training dataset summary"
        return cls(
            variant=read_field(doc, "variant", str, what),
            val_fraction=read_field(doc, "val_fraction", float, what),
            counts=read_field(doc, "counts", dict, what),
        )


@dataclass(frozen=True)
class TrainingDatasetManifest(StageDocument):
    """``TRAINING_URI/datasets/<version>/manifest.json``: a gold dataset version.

    ``partition_key`` is the version id (``ds-<16 hex>``, a hash of every sample's bytes,
    annotations and split, and of the split and shard settings: the same inputs give the
    same id). ``sources`` are the normalize partitions it was assembled from;
    ``categories`` the COCO categories (the user's ids); ``split_rule`` states the rule.
    """

    step: ClassVar = TRAINING_SHARDS

    partition_key: str
    dataset: str
    variant: str
    normalization_policy_hash: str
    val_fraction: float
    split_rule: str
    sources: tuple[str, ...]
    categories: tuple[Mapping[str, Any], ...]
    shards: tuple[Shard, ...]
    counts: Mapping[str, int]

    def body(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "variant": self.variant,
            "normalization_policy_hash": self.normalization_policy_hash,
            "val_fraction": self.val_fraction,
            "split_rule": self.split_rule,
            "sources": list(self.sources),
            "categories": [dict(c) for c in self.categories],
            "shards": [s.to_json() for s in self.shards],
            "counts": dict(self.counts),
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
            split_rule=read_field(doc, "split_rule", str, what),
            sources=read_field(doc, "sources", lambda v: tuple(str(s) for s in v), what),
            categories=read_field(doc, "categories", lambda v: tuple(dict(c) for c in v), what),
            shards=read_field(doc, "shards", lambda v: tuple(Shard.from_json(s) for s in v), what),
            counts=read_field(doc, "counts", dict, what),
        )

    def summary(self) -> dict[str, Any]:
        return TrainingDatasetSummary(self.variant, self.val_fraction, self.counts).to_json()

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
        """Normalize partition -> every shard (the per-image chain is in the shards' JSON)."""
        return [
            LineageEdge(src, s.uri, TRAINING_SHARDS) for src in self.sources for s in self.shards
        ]
