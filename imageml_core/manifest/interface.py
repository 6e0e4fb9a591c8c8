"""The manifest-store adapter interface (spec 001 "Manifest Store Integration").

Stages talk to this interface only, so the SQLAlchemy implementation can be swapped for a
manifest-store service without touching stage code.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


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
TRAIN = Step(3, "train")
INFER = Step(4, "infer")

STATUS_OK = "ok"
STATUS_QUARANTINED = "quarantined"


@dataclass(frozen=True)
class ObjectVersion:
    """An object as the store identifies it: its URI and the ETag of the bytes seen."""

    uri: str
    etag: str


@dataclass(frozen=True)
class ProcessedObject:
    """A ledger entry: ``uri`` at ``etag`` was handled by a step with this outcome."""

    uri: str
    etag: str
    status: str = STATUS_OK
    reason: str | None = None
    content_sha256: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LineageEdge:
    input_uri: str
    output_uri: str
    step: Step


@dataclass(frozen=True)
class BatchMember:
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
class MirroredMaterialization:
    storage_id: int
    asset_key: str
    partition_key: str | None
    run_id: str
    metadata: Mapping[str, Any]
    timestamp: float


class ManifestStore(abc.ABC):
    """Lineage, dataset versions and idempotency for every stage."""

    @abc.abstractmethod
    def migrate(self) -> None:
        """Create or upgrade the schema in place."""

    # datasets
    @abc.abstractmethod
    def get_or_create_dataset(self, name: str) -> int: ...

    @abc.abstractmethod
    def dataset_versions(self, name: str) -> list[dict[str, Any]]: ...

    # idempotency ledger
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
    def is_processed(self, step: Step, uri: str, etag: str) -> bool: ...

    @abc.abstractmethod
    def processed_among(self, step: Step, objects: Iterable[ObjectVersion]) -> set[ObjectVersion]:
        """The subset of ``objects`` already recorded for ``step`` (one query per chunk)."""

    @abc.abstractmethod
    def processed_objects(
        self, step: Step, partition_key: str | None = None
    ) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def processed_under(self, step: Step, uri_prefix: str) -> list[dict[str, Any]]:
        """Ledger entries of ``step`` whose URI starts with ``uri_prefix`` (a folder)."""

    # planned batches
    @abc.abstractmethod
    def plan_batch(self, batch_id: str, members: Sequence[BatchMember], source: str) -> bool:
        """Record a batch's members; True if the batch was new."""

    @abc.abstractmethod
    def batch_members(self, batch_id: str) -> list[BatchMember]: ...

    @abc.abstractmethod
    def unpublished_batch_ids(self, step: Step) -> list[str]:
        """Planned batches for which ``step`` has published no manifest yet."""

    @abc.abstractmethod
    def planned_among(self, objects: Iterable[ObjectVersion]) -> set[ObjectVersion]:
        """The subset of ``objects`` already assigned to some batch."""

    # checkpoints
    @abc.abstractmethod
    def save_checkpoint(
        self, step: Step, partition_key: str, name: str, payload: Mapping[str, Any]
    ) -> None: ...

    @abc.abstractmethod
    def load_checkpoint(
        self, step: Step, partition_key: str, name: str
    ) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def claim(self, step: Step, partition_key: str, name: str, holder: str, ttl_s: float) -> bool:
        """Take the named lease if nobody holds it, or its holder's lease is older than
        ``ttl_s`` seconds (a crashed holder). Atomic: one of many concurrent callers wins."""

    @abc.abstractmethod
    def release(self, step: Step, partition_key: str, name: str, holder: str) -> None:
        """Give the named lease back if ``holder`` still holds it (a failed holder releases,
        so a retry need not wait out the TTL)."""

    # manifests and lineage
    @abc.abstractmethod
    def publish(self, publication: ManifestPublication) -> bool:
        """Write objects, edges, dataset version and manifest atomically; False if it existed."""

    @abc.abstractmethod
    def get_manifest(self, step: Step, partition_key: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def manifests(self, step: Step | None = None, *, after_id: int = 0) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def add_lineage(
        self,
        edges: Sequence[LineageEdge],
        *,
        run_id: str | None = None,
        partition_key: str | None = None,
    ) -> int: ...

    @abc.abstractmethod
    def lineage(self, uri: str) -> dict[str, Any]:
        """Everything upstream and downstream of ``uri``, with the ledger entries for it."""

    # Dagster mirror
    @abc.abstractmethod
    def last_mirrored_storage_id(self, asset_key: str) -> int: ...

    @abc.abstractmethod
    def mirror_materializations(self, rows: Sequence[MirroredMaterialization]) -> int:
        """Insert rows not yet mirrored; returns how many were new."""

    @abc.abstractmethod
    def mirrored_materializations(self, asset_key: str | None = None) -> list[dict[str, Any]]: ...
