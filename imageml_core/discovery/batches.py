"""Ingest batches: how new objects are grouped, and which objects are new.

A batch's id is a hash of its sorted (URI, ETag) pairs: the same objects always make the
same batch, and a re-issued run request for it is deduplicated by Dagster's run key. The
manifest store, not a cursor or a queue, decides what is new.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from imageml_core.manifest.interface import (
    INGEST,
    BatchMember,
    BatchPlans,
    Ledger,
    ObjectVersion,
)
from imageml_core.storage.object_store import ObjectInfo


class _Store(Ledger, BatchPlans, Protocol):
    """What :func:`new_objects` reads: the ledger and the batch plans."""


@dataclass(frozen=True)
class PlannedBatch:
    """A batch planned in the manifest store: its id and members (sizes in bytes)."""

    batch_id: str
    members: tuple[BatchMember, ...]

    @property
    def total_bytes(self) -> int:
        """Sum of the members' sizes, in bytes."""
        return sum(m.size for m in self.members)


def batch_id_for(members: Iterable[BatchMember]) -> str:
    """``batch-<16 hex>``: SHA-256 over the members' sorted ``URI\tETag`` lines."""
    digest = hashlib.sha256()
    for m in sorted(members, key=lambda m: (m.uri, m.etag)):
        digest.update(f"{m.uri}\t{m.etag}\n".encode())
    return f"batch-{digest.hexdigest()[:16]}"


def group_into_batches(
    members: Sequence[BatchMember], *, max_objects: int, max_bytes: int
) -> list[PlannedBatch]:
    """Split key-ordered members into batches of at most ``max_objects`` / ``max_bytes``.

    A single object larger than ``max_bytes`` still gets a batch of its own.
    """
    batches: list[PlannedBatch] = []
    current: list[BatchMember] = []
    size = 0
    for m in sorted(members, key=lambda m: m.uri):
        if current and (len(current) >= max_objects or size + m.size > max_bytes):
            batches.append(PlannedBatch(batch_id_for(current), tuple(current)))
            current, size = [], 0
        current.append(m)
        size += m.size
    if current:
        batches.append(PlannedBatch(batch_id_for(current), tuple(current)))
    return batches


def new_objects(manifest: _Store, objects: Sequence[ObjectInfo]) -> list[ObjectInfo]:
    """Objects neither processed by ingest nor already assigned to a batch (by URI+ETag)."""
    versions = [ObjectVersion(str(o.uri), o.etag) for o in objects]
    known = manifest.processed_among(INGEST, versions) | manifest.planned_among(versions)
    return [o for o, v in zip(objects, versions, strict=True) if v not in known]
