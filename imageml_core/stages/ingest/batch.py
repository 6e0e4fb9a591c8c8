"""Stage 1, ingest step: stage a batch on NVMe, verify it, register it (bronze tier).

Plain Python (no Dagster): the ``raw_images`` asset and the stage container both call
:func:`ingest_batch`. Steps: read the batch's planned members, reuse what an earlier
attempt examined (checkpoint), stage the rest on NVMe, examine each object
(:mod:`.examine`), then publish through :func:`~imageml_core.manifest.publish.publish_partition`
(extracted ZIP members, then the manifest JSON, then the store transaction). A batch whose
manifest is already published is a no-op: nothing is read or written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from imageml_core.executors import interruptible
from imageml_core.manifest.documents import (
    IngestCounts,
    IngestEntry,
    IngestManifest,
    IngestSummary,
)
from imageml_core.manifest.interface import INGEST, STATUS_SKIPPED, BatchMember, ManifestStore
from imageml_core.manifest.keys import ingest_manifest_uri
from imageml_core.manifest.publish import OutputFiles, publish_partition, published
from imageml_core.stages.ingest.examine import Examined, Examiner, entry
from imageml_core.stages.ingest.verify import ImageCheck
from imageml_core.storage.object_store import ObjectInfo, ObjectStore
from imageml_core.storage.staging import NvmeStaging, UnsafeKey, safe_relative_path
from imageml_core.uris import InvalidS3Uri, S3Uri, parse_s3_uri

log = logging.getLogger(__name__)

#: Checkpoint of examined images and annotation files, reused by a retry of the batch.
CHECKPOINT_EXAMINED = "examined"
_REUSABLE_KINDS = ("image", "annotation", "label_config")


class UnknownBatch(LookupError):
    """The partition key names no planned batch in the manifest store."""


@dataclass(frozen=True)
class IngestConfig:
    """Where raw objects are and outputs go, and the decompression-bomb limit (pixels)."""

    raw_uri: S3Uri
    bronze_uri: S3Uri
    dataset_name: str
    max_image_pixels: int
    verify_workers: int = 4


@dataclass
class IngestResult:
    """What one :func:`ingest_batch` call did (or found already done)."""

    batch_id: str
    manifest_uri: str
    already_published: bool
    counts: IngestCounts = field(default_factory=IngestCounts)
    quarantined: list[IngestEntry] = field(default_factory=list)
    new_objects_written: int = 0

    def metadata(self) -> dict[str, Any]:
        """Flat metadata for the Dagster materialization (``count_<state>`` per state)."""
        return {
            "batch_id": self.batch_id,
            "manifest_uri": self.manifest_uri,
            "already_published": self.already_published,
            "objects_written": self.new_objects_written,
            **{f"count_{k}": v for k, v in sorted(self.counts.to_json().items())},
        }


def ingest_batch(
    batch_id: str,
    *,
    store: ObjectStore,
    staging: NvmeStaging,
    manifest: ManifestStore,
    config: IngestConfig,
    run_id: str | None = None,
    log_fn: Callable[[str], None] = log.info,
) -> IngestResult:
    """Ingest one planned batch. Raises :class:`UnknownBatch` if no batch ``batch_id`` was
    planned, :class:`~imageml_core.storage.staging.InsufficientStagingSpace` before any
    download if NVMe is too full, and the object store's errors for failed uploads; bad
    objects never raise (they are quarantined with a reason)."""
    manifest_uri = ingest_manifest_uri(config.bronze_uri, batch_id)
    if (record := published(manifest, INGEST, batch_id)) is not None:
        log_fn(f"{batch_id}: already published at {record.manifest_uri}; nothing to do")
        counts = IngestSummary.from_json(record.details).counts
        return IngestResult(batch_id, str(record.manifest_uri), True, counts)
    members = manifest.batch_members(batch_id)
    if not members:
        raise UnknownBatch(
            f"no planned ingest batch {batch_id!r} in the manifest store; batches are planned by "
            "the raw_objects sensor or `imageml run`"
        )
    infos, entries = _stageable(members, config.raw_uri)
    infos, reused = _reuse_checkpoint(manifest, batch_id, infos, log_fn)
    with staging.job("ingest", batch_id, run_id) as job:
        examined = _stage_and_examine(batch_id, job, infos, store, staging, config, log_fn)
        entries += reused + examined.entries
        manifest.save_checkpoint(
            INGEST,
            batch_id,
            CHECKPOINT_EXAMINED,
            {"entries": {e.uri: e.to_json() for e in entries if e.kind in _REUSABLE_KINDS}},
        )
        document = IngestManifest(
            partition_key=batch_id,
            dataset=config.dataset_name,
            raw_uri=str(config.raw_uri),
            max_image_pixels=config.max_image_pixels,
            objects=tuple(sorted(entries, key=lambda e: e.uri)),
        )
        written = publish_partition(
            document,
            manifest_uri=manifest_uri,
            object_store=store,
            manifest_store=manifest,
            outputs=OutputFiles(examined.uploads),
            run_id=run_id,
        )
    for q in document.quarantined:
        log_fn(f"{batch_id}: quarantined {q.uri}: {q.reason}")
    log_fn(f"{batch_id}: {document.counts.to_json()}")
    return IngestResult(
        batch_id, str(manifest_uri), False, document.counts, document.quarantined, written
    )


def _skip_reason(key: str) -> str | None:
    """Why an object is not ingested although it is under the raw prefix, or None."""
    if key.endswith("/"):
        return "folder marker (the key ends in '/'), not a file"
    if key.rsplit("/", 1)[-1].startswith("."):
        return "hidden file (the name starts with '.')"
    return None


def _stageable(
    members: Sequence[BatchMember], raw_uri: S3Uri
) -> tuple[list[ObjectInfo], list[IngestEntry]]:
    """Members that can be staged, and entries for the others: skipped (hidden files,
    folder markers) or quarantined (a key that is not a plain path, or not under
    ``raw_uri``). Every member ends in one recorded state."""
    infos: list[ObjectInfo] = []
    refused: list[IngestEntry] = []
    for m in members:
        if (why := _skip_reason(m.uri)) is not None:
            refused.append(IngestEntry(m.uri, m.etag, m.size, "other", STATUS_SKIPPED, reason=why))
            continue
        try:
            uri = parse_s3_uri(m.uri)
            safe_relative_path(raw_uri.relative_key(uri))
        except (UnsafeKey, InvalidS3Uri) as exc:
            check = ImageCheck(False, f"unsafe key: {exc}")
            refused.append(entry(m.uri, m.etag, m.size, "unknown", check))
            continue
        infos.append(ObjectInfo(uri, m.etag, m.size))
    return infos, refused


def _reuse_checkpoint(
    manifest: ManifestStore,
    batch_id: str,
    infos: list[ObjectInfo],
    log_fn: Callable[[str], None],
) -> tuple[list[ObjectInfo], list[IngestEntry]]:
    """Partial retry: images and annotation files examined by an earlier attempt that died
    before publishing are not staged and decoded again (same URI and ETag only)."""
    payload = manifest.load_checkpoint(INGEST, batch_id, CHECKPOINT_EXAMINED) or {}
    examined = {uri: IngestEntry.from_json(e) for uri, e in payload.get("entries", {}).items()}
    reused = [examined[str(i.uri)] for i in infos if _same_version(examined.get(str(i.uri)), i)]
    if not reused:
        return infos, []
    log_fn(f"{batch_id}: reusing {len(reused)} results from an earlier attempt's checkpoint")
    done = {e.uri for e in reused}
    return [i for i in infos if str(i.uri) not in done], reused


def _same_version(previous: IngestEntry | None, info: ObjectInfo) -> bool:
    return previous is not None and previous.etag == info.etag


def _stage_and_examine(
    batch_id: str,
    job: str,
    infos: list[ObjectInfo],
    store: ObjectStore,
    staging: NvmeStaging,
    config: IngestConfig,
    log_fn: Callable[[str], None],
) -> Examined:
    """Stage ``infos`` on NVMe and examine them in parallel. An object that cannot be
    staged (gone, changed, corrupt in transit after retries) is quarantined with the reason."""
    mb = sum(i.size for i in infos) / 1e6
    log_fn(f"{batch_id}: staging {len(infos)} objects ({mb:.1f} MB) to {staging.root}")
    failures: dict[str, Exception] = {}
    staged = staging.stage_in(
        store,
        infos,
        job,
        base=config.raw_uri,
        failures=failures,
        on_progress=lambda done, total: (
            (done == total or done % 50 == 0) and log_fn(f"{batch_id}: staged {done}/{total}")
        ),
    )
    out = Examined()
    for info in infos:
        if (exc := failures.get(str(info.uri))) is not None:
            check = ImageCheck(False, f"could not stage: {exc}")
            out.entries.append(entry(str(info.uri), info.etag, info.size, "unknown", check))
    examiner = Examiner(
        raw_uri=config.raw_uri,
        bronze_uri=config.bronze_uri,
        work_dir=staging.area("work", job),
        max_image_pixels=config.max_image_pixels,
    )
    with interruptible(ThreadPoolExecutor(max_workers=max(1, config.verify_workers))) as pool:
        for result in pool.map(examiner, staged):
            out.entries.extend(result.entries)
            out.uploads.extend(result.uploads)
    return out
