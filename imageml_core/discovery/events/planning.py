"""Planning ingest batches from events; the manifest store decides what is new."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from imageml_core.discovery.batches import PlannedBatch, group_into_batches
from imageml_core.discovery.events.parsing import ObjectCreated, supersedes
from imageml_core.manifest import INGEST, BatchMember, ManifestStore, ObjectVersion
from imageml_core.uris import S3Uri


@dataclass
class EventPlan:
    """What planning one poll's events did; ``batches`` are new, ``resent`` planned earlier."""

    batches: list[PlannedBatch] = field(default_factory=list)
    resent: list[PlannedBatch] = field(default_factory=list)
    events: int = 0
    not_under_prefix: int = 0
    duplicates_dropped: int = 0  # same key twice in the poll (duplicate or superseded)
    already_known: int = 0  # processed by ingest or already in a planned batch
    new_objects: int = 0


def plan_events(
    events: Iterable[ObjectCreated],
    objects_under: S3Uri,
    manifest: ManifestStore,
    *,
    max_objects: int,
    max_bytes: int,
    source: str = "event",
) -> EventPlan:
    """Plan the objects these events announce into ingest batches, with counts.

    Keeps events for keys under ``objects_under`` (same rule as a listing of its prefix),
    keeps one event per key (highest sequencer: delivery can be out of order), drops
    (URI, ETag) versions the manifest store already processed or planned, and records the
    rest as batches with ``manifest.plan_batch(..., source)``. Batches planned earlier that
    hold one of these versions and are not yet published are returned in ``resent``, so a
    crash between planning and launching is healed by the redelivered message.
    """
    plan = EventPlan()
    latest: dict[tuple[str, str], ObjectCreated] = {}
    for event in events:
        plan.events += 1
        if event.bucket != objects_under.bucket or not event.key.startswith(objects_under.prefix):
            plan.not_under_prefix += 1
            continue
        slot = (event.bucket, event.key)
        previous = latest.get(slot)
        if previous is not None:
            plan.duplicates_dropped += 1
            if not supersedes(event, previous):
                continue
        latest[slot] = event

    chosen = list(latest.values())
    versions = [ObjectVersion(str(e.uri), e.etag) for e in chosen]
    processed = manifest.processed_among(INGEST, versions)
    planned = manifest.planned_among(versions)
    known = processed | planned
    fresh = [e for e, v in zip(chosen, versions, strict=True) if v not in known]
    plan.new_objects = len(fresh)
    plan.already_known = len(chosen) - len(fresh)

    members = [BatchMember(str(e.uri), e.etag, e.size) for e in fresh]
    plan.batches = group_into_batches(members, max_objects=max_objects, max_bytes=max_bytes)
    for batch in plan.batches:
        manifest.plan_batch(batch.batch_id, batch.members, source)
    plan.resent = _unpublished_batches_with(
        manifest, planned - processed, exclude={b.batch_id for b in plan.batches}
    )
    return plan


def _unpublished_batches_with(
    manifest: ManifestStore, versions: set[ObjectVersion], *, exclude: set[str]
) -> list[PlannedBatch]:
    """Unpublished ingest batches holding any of ``versions`` (planned, not processed).

    Costs one query per unpublished batch until all versions are found; only runs when a
    poll saw events for objects in flight, which is rare outside redelivery.
    """
    if not versions:
        return []
    remaining = set(versions)
    found: list[PlannedBatch] = []
    for batch_id in manifest.unpublished_batch_ids(INGEST):
        if batch_id in exclude:
            continue
        members = manifest.batch_members(batch_id)
        hits = {ObjectVersion(m.uri, m.etag) for m in members} & remaining
        if hits:
            found.append(PlannedBatch(batch_id, tuple(members)))
            remaining -= hits
            if not remaining:
                break
    return found
