"""The manifest-store interface (spec 001 "Manifest Store Integration"), as role protocols.

Stages talk to these protocols only, so the SQLAlchemy implementation can be swapped for a
manifest-store service without touching stage code. Each role is a small protocol (the
ledger, batch plans, checkpoints and leases, publications, lineage, the Dagster mirror);
:class:`ManifestStore` is all of them. Every read returns typed rows (frozen dataclasses),
never bare dicts; JSON columns (``details``, checkpoint payloads) stay mappings, and the
stage documents in :mod:`imageml_core.manifest.documents` give them their types.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class Step:
    """A unit of work that keeps its own ledger: the spec's stage number and a step name.

    Stage 1 of the spec has two steps (ingest, augment) that rerun independently, so the
    ledger is keyed by both.
    """

    stage: int
    name: str

    def __str__(self) -> str:
        return f"{self.stage}:{self.name}"


INGEST = Step(1, "ingest")
AUGMENT = Step(1, "augment")
NORMALIZE = Step(2, "normalize")
#: Stage 3's gold tier: a training dataset version, packed into shards.
TRAINING_SHARDS = Step(3, "training_shards")
TRAIN = Step(3, "train")
INFER = Step(4, "infer")

STATUS_OK = "ok"
STATUS_QUARANTINED = "quarantined"
STATUS_SKIPPED = "skipped"


@dataclass(frozen=True)
class ObjectVersion:
    """An object as the store identifies it: its URI and the ETag of the bytes seen."""

    uri: str
    etag: str


@dataclass(frozen=True)
class ProcessedObject:
    """A ledger entry to write: ``uri`` at ``etag`` was handled by a step with this outcome
    (``status`` ok, quarantined or skipped; ``reason`` says why when not ok)."""

    uri: str
    etag: str
    status: str = STATUS_OK
    reason: str | None = None
    content_sha256: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LedgerRecord:
    """A ledger entry as stored: a :class:`ProcessedObject` plus where it was recorded."""

    stage: int
    step: str
    uri: str
    etag: str
    status: str
    reason: str | None
    content_sha256: str | None
    partition_key: str | None
    run_id: str | None
    details: Mapping[str, Any]
    created_at: datetime | None = None

    @property
    def ok(self) -> bool:
        """True when ``status`` is ok (not quarantined or skipped)."""
        return self.status == STATUS_OK

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO 8601 strings)."""
        out = asdict(self)
        out["details"] = dict(self.details)
        out["created_at"] = self.created_at.isoformat() if self.created_at else None
        return out


@dataclass(frozen=True)
class LineageEdge:
    """``output_uri`` was made from ``input_uri`` by ``step``."""

    input_uri: str
    output_uri: str
    step: Step


@dataclass(frozen=True)
class LineageRecord:
    """A stored lineage edge, with the run and partition that made it."""

    input_uri: str
    output_uri: str
    stage: int
    step: str
    run_id: str | None
    partition_key: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Lineage:
    """Everything the store knows about one URI: its ledger records, the edges that lead
    to it (``upstream``, nearest first) and those that lead from it (``downstream``)."""

    uri: str
    records: list[LedgerRecord]
    upstream: list[LineageRecord]
    downstream: list[LineageRecord]

    @property
    def empty(self) -> bool:
        """True when the store knows nothing of ``uri``: no ledger records and no edges."""
        return not (self.records or self.upstream or self.downstream)

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "records": [r.to_json() for r in self.records],
            "upstream": [e.to_json() for e in self.upstream],
            "downstream": [e.to_json() for e in self.downstream],
        }


@dataclass(frozen=True)
class BatchMember:
    """One object of a planned batch: URI, ETag, size in bytes."""

    uri: str
    etag: str
    size: int


@dataclass(frozen=True)
class ManifestPublication:
    """Everything a finished partition records, written in one transaction (manifest last)."""

    step: Step
    partition_key: str
    dataset_name: str
    manifest_uri: str | None
    content_sha256: str
    details: Mapping[str, Any]
    objects: Sequence[ProcessedObject] = ()
    edges: Sequence[LineageEdge] = ()
    run_id: str | None = None


@dataclass(frozen=True)
class ManifestRecord:
    """A published manifest: one per (step, partition). ``details`` is the document's
    summary (read it through the document type's ``Summary.from_json``)."""

    id: int
    stage: int
    step: str
    partition_key: str
    manifest_uri: str | None
    content_sha256: str
    details: Mapping[str, Any]
    run_id: str | None
    dataset_version_id: int | None
    created_at: datetime | None = None


@dataclass(frozen=True)
class DatasetVersion:
    """A dataset version: ``version`` is ``<step>/<partition key>``; ``object_count``
    counts the ok ledger entries it published."""

    id: int
    dataset_id: int
    version: str
    stage: int
    step: str
    object_count: int
    manifest_uri: str | None
    details: Mapping[str, Any]
    created_at: datetime | None = None


@dataclass(frozen=True)
class MirroredMaterialization:
    """A Dagster materialization event copied into the store; ``storage_id`` is Dagster's
    event-log id, ``timestamp`` seconds since the epoch."""

    storage_id: int
    asset_key: str
    partition_key: str | None
    run_id: str
    metadata: Mapping[str, Any]
    timestamp: float


class Ledger(Protocol):
    """The idempotency ledger: "has object (URI, ETag) been handled by this step"."""

    @abc.abstractmethod
    def mark_processed(
        self,
        step: Step,
        obj: ProcessedObject,
        *,
        partition_key: str | None = None,
        run_id: str | None = None,
    ) -> bool:
        """Record ``obj`` as processed; True only for the one writer that created the record."""

    @abc.abstractmethod
    def is_processed(self, step: Step, uri: str, etag: str) -> bool:
        """Whether ``uri`` at exactly ``etag`` has a ledger entry for ``step`` (any status)."""

    @abc.abstractmethod
    def processed_among(self, step: Step, objects: Iterable[ObjectVersion]) -> set[ObjectVersion]:
        """The subset of ``objects`` already recorded for ``step`` (one query per chunk)."""

    @abc.abstractmethod
    def processed_objects(self, step: Step, partition_key: str | None = None) -> list[LedgerRecord]:
        """Ledger entries of ``step`` (of one partition when given), in URI order."""

    @abc.abstractmethod
    def processed_under(self, step: Step, uri_prefix: str) -> list[LedgerRecord]:
        """Ledger entries of ``step`` whose URI starts with ``uri_prefix`` (a folder)."""


class BatchPlans(Protocol):
    """Planned batches: which objects make up a batch partition."""

    @abc.abstractmethod
    def plan_batch(self, batch_id: str, members: Sequence[BatchMember], source: str) -> bool:
        """Record a batch's members; True if the batch was new."""

    @abc.abstractmethod
    def batch_members(self, batch_id: str) -> list[BatchMember]:
        """The members of ``batch_id`` in URI order; empty for a batch never planned."""

    @abc.abstractmethod
    def unpublished_batch_ids(self, step: Step) -> list[str]:
        """Planned batches for which ``step`` has published no manifest yet."""

    @abc.abstractmethod
    def planned_among(self, objects: Iterable[ObjectVersion]) -> set[ObjectVersion]:
        """The subset of ``objects`` already assigned to some batch."""


class Checkpoints(Protocol):
    """Partial results of a partition that has not published yet, and leases on work."""

    @abc.abstractmethod
    def save_checkpoint(
        self, step: Step, partition_key: str, name: str, payload: Mapping[str, Any]
    ) -> None:
        """Save JSON-ready ``payload`` under (step, partition, name), replacing any earlier one."""

    @abc.abstractmethod
    def load_checkpoint(
        self, step: Step, partition_key: str, name: str
    ) -> Mapping[str, Any] | None:
        """The payload saved under (step, partition, name); None if nothing was saved."""

    @abc.abstractmethod
    def claim(self, step: Step, partition_key: str, name: str, holder: str, ttl_s: float) -> bool:
        """Take the named lease if nobody holds it, or its holder's lease is older than
        ``ttl_s`` seconds (a crashed holder). Atomic: one of many concurrent callers wins."""

    @abc.abstractmethod
    def renew(self, step: Step, partition_key: str, name: str, holder: str) -> bool:
        """Extend the named lease if ``holder`` still holds it (a heartbeat); False when it
        was lost (taken over after a missed heartbeat, or released)."""

    @abc.abstractmethod
    def release(self, step: Step, partition_key: str, name: str, holder: str) -> None:
        """Give the named lease back if ``holder`` still holds it (a failed holder releases,
        so a retry need not wait out the TTL)."""


class Publications(Protocol):
    """Published manifests and the dataset versions they make."""

    @abc.abstractmethod
    def publish(self, publication: ManifestPublication) -> bool:
        """Write objects, edges, dataset version and manifest atomically; False if it existed."""

    @abc.abstractmethod
    def get_manifest(self, step: Step, partition_key: str) -> ManifestRecord | None:
        """The manifest published for (step, partition); None if it has not been published."""

    @abc.abstractmethod
    def manifests(self, step: Step | None = None, *, after_id: int = 0) -> list[ManifestRecord]:
        """Published manifests in publication order; ``after_id`` pages like a cursor."""

    @abc.abstractmethod
    def get_or_create_dataset(self, name: str) -> int:
        """The id of dataset ``name``, created if missing; raises ValueError unless the name is
        1-200 characters."""

    @abc.abstractmethod
    def dataset_versions(self, name: str) -> list[DatasetVersion]:
        """Versions of dataset ``name`` in creation order; empty for an unknown name."""


class LineageGraph(Protocol):
    """Edges from inputs to outputs, walked both ways."""

    @abc.abstractmethod
    def add_lineage(
        self,
        edges: Sequence[LineageEdge],
        *,
        run_id: str | None = None,
        partition_key: str | None = None,
    ) -> int:
        """Record ``edges`` with their run and partition, skipping known edges; returns how
        many were new."""

    @abc.abstractmethod
    def lineage(self, uri: str) -> Lineage:
        """Everything upstream and downstream of ``uri``, with the ledger entries for it."""


class MaterializationMirror(Protocol):
    """Dagster materialization metadata copied into the store."""

    @abc.abstractmethod
    def last_mirrored_storage_id(self, asset_key: str) -> int:
        """Highest Dagster event-log storage id mirrored for ``asset_key``; 0 if none."""

    @abc.abstractmethod
    def mirror_materializations(self, rows: Sequence[MirroredMaterialization]) -> int:
        """Insert rows not yet mirrored; returns how many were new."""

    @abc.abstractmethod
    def mirrored_materializations(
        self, asset_key: str | None = None
    ) -> list[MirroredMaterialization]:
        """Mirrored rows (of one asset key when given), in storage-id order."""


class ManifestStore(
    Ledger, BatchPlans, Checkpoints, Publications, LineageGraph, MaterializationMirror, Protocol
):
    """Lineage, dataset versions and idempotency for every stage: every role in one store."""

    @abc.abstractmethod
    def migrate(self) -> None:
        """Create or upgrade the schema in place."""
