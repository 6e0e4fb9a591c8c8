"""Stage 2 for one ingest batch: every variant of every source, computed once.

Stages the shard from S3 to NVMe in chunks (the next chunk downloading while the process
pool decodes the current one), normalizes each staged file in a worker process, uploads
each output as soon as it exists (transfer overlaps compute), and quarantines sources
that changed, vanished or no longer decode since stage 1 recorded them. Plain Python: the
partition logic in :mod:`imageml_core.stages.normalize.partition` calls it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass, field
from pathlib import Path

from imageml_core.annotations.regions import Region
from imageml_core.executors import interruptible
from imageml_core.manifest.documents import NormalizedOutput
from imageml_core.manifest.keys import normalized_image_uri, variant_base
from imageml_core.stages.normalize.image import (
    NormalizePolicy,
    normalize_image,
    scale_polygon,
    scale_region,
)
from imageml_core.storage.object_store import ObjectInfo, ObjectStore
from imageml_core.storage.paths import staged_name
from imageml_core.storage.staging import (
    NvmeStaging,
    StagedObject,
    raise_unless_quarantinable,
)
from imageml_core.uris import S3Uri, parse_s3_uri


@dataclass(frozen=True)
class ShardImage:
    """One image of a batch's augmented shard: an original (``kind="original"``) or an
    augmented copy (``"augmented"``); ``etag`` as stage 1 recorded it (empty = unknown);
    regions in the image's pixels."""

    uri: str
    etag: str
    sha256: str
    kind: str
    regions: tuple[Region, ...]


@dataclass(frozen=True)
class VariantFile:
    """One variant of one source, written locally by a worker: size in pixels, geometry
    ``(sx, sy, dx, dy)`` source -> output pixels, digests of the bytes."""

    local: str
    width: int
    height: int
    geometry: tuple[float, float, float, float]
    md5: str
    sha256: str


@dataclass(frozen=True)
class StagedResult:
    """What a worker made of one staged file: every variant, or ``error`` (why the file no
    longer decodes). Source sizes in pixels after EXIF rotation; ``path`` the decode path."""

    error: str | None = None
    source_width: int = 0
    source_height: int = 0
    path: str = ""
    variants: dict[str, VariantFile] = field(default_factory=dict)


@dataclass
class BatchResult:
    """Entries per variant name (sorted by output URI), objects written, decode paths used
    (``fast``/``general`` -> count) and sources quarantined (URI -> reason)."""

    per_variant: dict[str, list[NormalizedOutput]]
    written: int = 0
    paths: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, str] = field(default_factory=dict)


def normalize_file(args: tuple[str, str, NormalizePolicy, str]) -> StagedResult:
    """Process-pool task: normalize one staged file, write variants under ``out_root``."""
    src_path, rel, policy, out_root = args
    try:
        result = normalize_image(Path(src_path), policy)
    except Exception as exc:
        # Ingest verified every source, so this is an object changed or broken since (or
        # input a Pillow plugin fails on in a way of its own): it is quarantined with the
        # reason and the batch goes on.
        return StagedResult(error=f"{type(exc).__name__}: {str(exc).strip() or 'unreadable image'}")
    variants: dict[str, VariantFile] = {}
    for v in result.variants:
        target = Path(out_root) / v.name / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(v.data)
        variants[v.name] = VariantFile(
            local=str(target),
            width=v.width,
            height=v.height,
            geometry=v.geometry,
            md5=hashlib.md5(v.data, usedforsecurity=False).hexdigest(),
            sha256=hashlib.sha256(v.data).hexdigest(),
        )
    return StagedResult(None, result.source_width, result.source_height, result.path, variants)


def _current_sources(
    store: ObjectStore, items: Sequence[ShardImage]
) -> tuple[list[ObjectInfo], dict[str, str]]:
    """Sources as they are now (one listing), and those quarantined because they changed
    or vanished since stage 1 recorded them: the augment manifest's hashes and annotations
    describe the recorded bytes."""
    recorded = [ObjectInfo(parse_s3_uri(i.uri), i.etag, 0) for i in items]
    stats = store.stat_many([i.uri for i in recorded])
    current: list[ObjectInfo] = []
    quarantined: dict[str, str] = {}
    for info in recorded:
        now = stats.get(info.uri)
        if now is None:
            quarantined[str(info.uri)] = "no longer exists"
        elif info.etag and now.etag != info.etag:
            quarantined[str(info.uri)] = (
                f"changed since it was recorded (ETag {info.etag} then, {now.etag} now)"
            )
        else:
            current.append(now)
    return current, quarantined


def _entries(
    item: ShardImage, result: StagedResult, policy: NormalizePolicy, normalized_uri: S3Uri
) -> list[tuple[NormalizedOutput, Path]]:
    """One manifest entry per variant (regions rescaled and clipped; a region that left the
    output is dropped), with its local file."""
    source = parse_s3_uri(item.uri)
    out = []
    for v in policy.variants:
        made = result.variants[v.name]
        policy_hash = policy.variant_hash(v)
        target = normalized_image_uri(variant_base(normalized_uri, v.name, policy_hash), source)
        regions = []
        for r in item.regions:
            box = scale_region(r.bbox, made.geometry, made.width, made.height)
            if box is None:
                continue
            polygon = (
                scale_polygon(r.polygon, made.geometry, made.width, made.height)
                if r.polygon
                else ()
            )
            regions.append(Region.from_json(Region(r.label, box, polygon).to_json()))
        entry = NormalizedOutput(
            source_uri=item.uri,
            source_kind=item.kind,
            variant_name=v.name,
            output_uri=str(target),
            source_width=result.source_width,
            source_height=result.source_height,
            width=made.width,
            height=made.height,
            normalization_policy_hash=policy_hash,
            sha256=made.sha256,
            etag=made.md5,
            geometry=tuple(round(g, 6) for g in made.geometry),  # type: ignore[arg-type]
            regions=tuple(regions),
        )
        out.append((entry, Path(made.local)))
    return out


def compute_batch(
    items: list[ShardImage],
    *,
    batch_id: str,
    store: ObjectStore,
    staging: NvmeStaging,
    policy: NormalizePolicy,
    normalized_uri: S3Uri,
    workers: int = 0,
    run_id: str | None = None,
    log_fn: Callable[[str], None],
) -> BatchResult:
    """Every variant of every item (``workers`` processes, 0 = one per core).

    Raises the first staging failure that is not the source's fault (network, access
    denied, a full disk) so a retry can succeed; sources that vanished, changed or no
    longer decode are quarantined instead."""
    with staging.job("normalize", batch_id, run_id) as job:
        infos, quarantined = _current_sources(store, items)
        for uri, reason in quarantined.items():
            log_fn(f"{batch_id}: quarantined {uri}: {reason}")
        # Sizes come from the listing, so the capacity check covers the whole shard before
        # the first byte moves, though staging then happens chunk by chunk.
        staging.check_capacity(sum(i.size for i in infos))
        workers = workers or os.cpu_count() or 1
        result = BatchResult({v.name: [] for v in policy.variants}, quarantined=quarantined)
        log_fn(
            f"{batch_id}: normalizing {len(infos)} images into {len(policy.variants)} variants on "
            f"{workers} processes"
        )
        by_uri = {i.uri: i for i in items}
        failures: dict[str, Exception] = {}

        def log(message: str) -> None:
            log_fn(f"{batch_id}: {message}")

        with (
            interruptible(ProcessPoolExecutor(workers)) as pool,
            interruptible(ThreadPoolExecutor(store.max_concurrency)) as uploader,
        ):
            pending = _submit(pool, store, staging, job, infos, policy, workers, failures, by_uri)
            uploads = _collect(pending, uploader, store, policy, normalized_uri, infos, result, log)
            result.written = sum(f.result() for f in uploads)
    for uri, exc in failures.items():
        result.quarantined[uri] = f"could not be staged: {exc}"
        log_fn(f"{batch_id}: quarantined {uri}: could not be staged: {exc}")
    for entries in result.per_variant.values():
        entries.sort(key=lambda e: e.output_uri)
    result.quarantined = dict(sorted(result.quarantined.items()))
    return result


def _submit(
    pool: ProcessPoolExecutor,
    store: ObjectStore,
    staging: NvmeStaging,
    job: str,
    infos: list[ObjectInfo],
    policy: NormalizePolicy,
    workers: int,
    failures: dict[str, Exception],
    by_uri: dict[str, ShardImage],
) -> dict[Future[StagedResult], ShardImage]:
    """Stage ``infos`` chunk by chunk (the next chunk downloading while the pool decodes
    the current one) and submit each staged file to the pool."""
    out_root = str(staging.area("output", job))
    chunk = max(workers * 4, 8)
    chunks = [infos[n : n + chunk] for n in range(0, len(infos), chunk)]
    pending: dict[Future[StagedResult], ShardImage] = {}

    def stage(part: list[ObjectInfo]) -> list[StagedObject]:
        return staging.stage_in(store, part, job, failures=failures)

    with interruptible(ThreadPoolExecutor(1)) as stager:
        next_chunk = stager.submit(stage, chunks[0]) if chunks else None
        for n in range(len(chunks)):
            assert next_chunk is not None
            staged = next_chunk.result()
            raise_unless_quarantinable(failures)
            if n + 1 < len(chunks):
                next_chunk = stager.submit(stage, chunks[n + 1])
            for s in staged:
                rel = str(staged_name(f"{s.info.uri.bucket}/{s.info.uri.key}"))
                fut = pool.submit(normalize_file, (str(s.path), rel, policy, out_root))
                pending[fut] = by_uri[str(s.info.uri)]
    return pending


def _collect(
    pending: dict[Future[StagedResult], ShardImage],
    uploader: ThreadPoolExecutor,
    store: ObjectStore,
    policy: NormalizePolicy,
    normalized_uri: S3Uri,
    infos: list[ObjectInfo],
    result: BatchResult,
    log_fn: Callable[[str], None],
) -> list[Future[int]]:
    """Gather the pool's results as they finish, uploading each output at once."""
    # What the targets already hold, from a listing of each variant's own key range rather
    # than a HEAD per upload: a rerun skips identical bytes without asking object by object.
    existing: dict[S3Uri, ObjectInfo | None] = {}
    for v in policy.variants:
        base = variant_base(normalized_uri, v.name, policy.variant_hash(v))
        existing |= store.stat_many([normalized_image_uri(base, i.uri) for i in infos])
    uploads: list[Future[int]] = []
    total, done = len(pending), 0
    while pending:
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        for fut in finished:
            item = pending.pop(fut)
            made = fut.result()
            done += 1
            if made.error is not None:
                result.quarantined[item.uri] = made.error
                log_fn(f"quarantined {item.uri}: {made.error}")
                continue
            result.paths[made.path] = result.paths.get(made.path, 0) + 1
            for entry, local in _entries(item, made, policy, normalized_uri):
                uploads.append(
                    uploader.submit(
                        store.upload_many_if_changed,
                        [(local, parse_s3_uri(entry.output_uri))],
                        existing=existing,
                        digests={local: (entry.etag, entry.sha256)},
                    )
                )
                result.per_variant[entry.variant_name].append(entry)
            if done % 25 == 0 or done == total:
                log_fn(f"normalized {done}/{total}")
    return uploads
