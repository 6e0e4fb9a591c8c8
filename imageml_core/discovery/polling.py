"""Finding new raw objects by polling the raw prefix after a cursor.

A sensor tick lists the raw prefix *after* its cursor key (S3 lists in key order), so a
tick costs what is new, not the whole prefix. Keys that sort before the cursor (uploads
with non-monotonic names) are found by a full scan every ``full_scan_every`` ticks; the
manifest store, not the cursor, decides what is new, so a full scan never re-processes.

Batches are formed by the rules in :mod:`imageml_core.discovery.batches`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from imageml_core.discovery.batches import (
    PlannedBatch,
    group_into_batches,
    new_objects,
)
from imageml_core.manifest.interface import INGEST, BatchMember, ManifestStore
from imageml_core.storage.object_store import ObjectInfo, ObjectStore
from imageml_core.uris import S3Uri


@dataclass(frozen=True)
class DiscoveryCursor:
    """Sensor state: the greatest key seen, and ticks since the last full scan."""

    last_key: str | None = None
    ticks_since_full_scan: int = 0

    @classmethod
    def parse(cls, raw: str | None) -> DiscoveryCursor:
        """The cursor a sensor stored; anything unreadable (also one edited by hand in the
        UI, e.g. a key that is not a string) gives the empty cursor: one full scan."""
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            last_key = data.get("last_key")
            ticks = int(data.get("ticks_since_full_scan", 0))
        except (ValueError, TypeError, AttributeError):
            return cls()
        if not (last_key is None or isinstance(last_key, str)) or ticks < 0:
            return cls()
        return cls(last_key, ticks)

    def serialize(self) -> str:
        return json.dumps(
            {"last_key": self.last_key, "ticks_since_full_scan": self.ticks_since_full_scan}
        )


@dataclass
class Discovery:
    """What one discovery pass found."""

    new_batches: list[PlannedBatch] = field(default_factory=list)
    pending_batches: list[str] = field(default_factory=list)  # planned earlier, not yet published
    cursor: DiscoveryCursor = field(default_factory=DiscoveryCursor)
    listed: int = 0
    full_scan: bool = False


def discover(
    store: ObjectStore,
    manifest: ManifestStore,
    raw_uri: S3Uri,
    cursor: DiscoveryCursor,
    *,
    max_objects: int,
    max_bytes: int,
    full_scan_every: int,
    source: str,
    force_full_scan: bool = False,
    max_new_objects: int | None = None,
) -> Discovery:
    """List what is new under ``raw_uri``, plan it into batches in the manifest store."""
    full = (
        force_full_scan
        or cursor.last_key is None
        or (full_scan_every > 0 and cursor.ticks_since_full_scan + 1 >= full_scan_every)
    )
    listing = store.list_objects(
        raw_uri, start_after=None if full else cursor.last_key, folder_markers=True
    )
    listed: list[ObjectInfo] = []
    last_key = cursor.last_key
    for info in listing:
        listed.append(info)
        if last_key is None or info.uri.key > last_key:
            last_key = info.uri.key
        if max_new_objects is not None and not full and len(listed) >= max_new_objects:
            break  # the rest is picked up next tick, from the advanced cursor
    # Every object is planned, hidden files and folder markers too: ingest records them
    # as skipped with a reason (every object under the prefix ends in one recorded state).
    fresh = new_objects(manifest, listed)
    members = [BatchMember(str(o.uri), o.etag, o.size) for o in fresh]
    batches = group_into_batches(members, max_objects=max_objects, max_bytes=max_bytes)
    for batch in batches:
        manifest.plan_batch(batch.batch_id, batch.members, source)
    new_cursor = DiscoveryCursor(last_key, 0 if full else cursor.ticks_since_full_scan + 1)
    pending: list[str] = []
    if full:
        # Batches planned earlier whose run never published (a crash between planning and
        # launching): asked for again; their run key makes Dagster skip any already launched.
        new_ids = {b.batch_id for b in batches}
        pending = [b for b in manifest.unpublished_batch_ids(INGEST) if b not in new_ids]
    return Discovery(batches, pending, new_cursor, len(listed), full)
