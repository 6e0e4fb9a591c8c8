"""Local NVMe staging (spec 001 "Local NVMe Staging Model").

Layout under ``NVME_ROOT``::

    input/<job>/...     objects downloaded for one shard (``<2 hex>/<32 hex>/<name>``: one
                        path per key, see ``paths.staged_name``)
    work/<job>/...      scratch (e.g. members expanded from a ZIP)
    output/<job>/...    outputs written locally, then uploaded in parallel
    cache/sha256/ab/... content-addressed copies of downloaded objects
    cache/etag/...      index: (ETag, size) -> sha256, so a re-staged object is not re-downloaded

Free space is checked against ``NVME_MIN_GB`` and the shard's size before any download.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from imageml_core.storage.object_store import (
    ObjectChanged,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    TransferResult,
)
from imageml_core.storage.paths import UnsafeKey, safe_relative_path, staged_name
from imageml_core.uris import S3Uri

log = logging.getLogger(__name__)

AREAS = ("input", "work", "output", "cache")
_GB = 1024**3
_SAFE_JOB = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,199}$")


class InsufficientStagingSpace(RuntimeError):
    """The staging volume has less free space than the shard plus ``NVME_MIN_GB``."""


@dataclass(frozen=True)
class StagedObject:
    """An object staged on NVMe: where it lies, its SHA-256 (hex), and whether it came
    from the node's content-addressed cache instead of a download."""

    info: ObjectInfo
    path: Path
    sha256: str
    from_cache: bool


class NvmeStaging:
    """The staging area of one node. ``min_free_gb`` is ``NVME_MIN_GB``."""

    def __init__(self, root: Path | str, min_free_gb: float = 0.0) -> None:
        self.root = Path(root)
        self.min_free_gb = float(min_free_gb)
        for area in AREAS:
            (self.root / area).mkdir(parents=True, exist_ok=True)
        (self.root / "cache" / "sha256").mkdir(exist_ok=True)
        (self.root / "cache" / "etag").mkdir(exist_ok=True)

    # ------------------------------------------------------------------ paths
    def area(self, area: str, job: str) -> Path:
        """``<root>/<area>/<job>``, created if missing. Raises ValueError unless ``area`` is
        input, work or output, and :class:`UnsafeKey` if ``job`` is not a safe directory name."""
        if area not in AREAS[:3]:
            raise ValueError(f"staging area must be one of input, work, output; got {area!r}")
        if not _SAFE_JOB.fullmatch(job):
            raise UnsafeKey(f"job name {job!r} is not a safe directory name")
        path = self.root / area / job
        path.mkdir(parents=True, exist_ok=True)
        return path

    def local_path(self, area: str, job: str, key: str) -> Path:
        """Where ``key`` lives in ``area/job``: ``<2 hex>/<32 hex>/<base name>``
        (:func:`~imageml_core.storage.paths.staged_name`, unique per key). Raises
        :class:`UnsafeKey` for a key that is not a plain relative path (``..``, control
        characters, ...), as every stage refuses those."""
        base = self.area(area, job)
        safe_relative_path(key)
        path = base.joinpath(*staged_name(key).parts)
        # Defence in depth against symlinks planted inside the staging tree.
        if not path.resolve().is_relative_to(base.resolve()):
            raise UnsafeKey(f"key {key!r} resolves outside {base}")
        return path

    # ------------------------------------------------------------------ capacity
    def free_bytes(self) -> int:
        """Free space on the staging volume, in bytes."""
        return shutil.disk_usage(self.root).free

    def check_capacity(self, needed_bytes: int) -> None:
        """Fail before downloading if the shard would leave less than ``NVME_MIN_GB`` free."""
        free = self.free_bytes()
        required = needed_bytes + int(self.min_free_gb * _GB)
        if free < required:
            raise InsufficientStagingSpace(
                f"NVMe staging at {self.root} has {free / _GB:.2f} GB free, but this shard needs "
                f"{needed_bytes / _GB:.2f} GB plus NVME_MIN_GB={self.min_free_gb:g} GB kept free "
                f"({required / _GB:.2f} GB in all). Free space on the volume, point NVME_ROOT at a "
                f"larger one, or lower NVME_MIN_GB."
            )

    # ------------------------------------------------------------------ cache
    def _etag_index(self, info: ObjectInfo) -> Path:
        safe_etag = re.sub(r"[^A-Za-z0-9-]", "_", info.etag)
        return self.root / "cache" / "etag" / f"{safe_etag}-{info.size}.json"

    def _cache_blob(self, sha256: str) -> Path:
        return self.root / "cache" / "sha256" / sha256[:2] / sha256

    def cached(self, info: ObjectInfo) -> tuple[Path, str] | None:
        """The cached copy of an object with this (ETag, size), if there is one."""
        if not info.etag:
            return None
        index = self._etag_index(info)
        try:
            sha256 = json.loads(index.read_text())["sha256"]
        except (OSError, ValueError, KeyError):
            return None
        blob = self._cache_blob(sha256)
        if blob.exists() and blob.stat().st_size == info.size:
            return blob, sha256
        return None

    def _remember(self, result: TransferResult) -> None:
        blob = self._cache_blob(result.sha256)
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            tmp = blob.with_name(f".{blob.name}.{_unique()}.tmp")
            _link_or_copy(result.path, tmp)
            # Staged inputs are hard links to the cache: read-only, so a stage that edits
            # an input in place fails loudly instead of corrupting the cache for later jobs.
            tmp.chmod(0o444)
            tmp.replace(blob)
        index = self._etag_index(ObjectInfo(result.uri, result.etag, result.size))
        tmp_index = index.with_name(f".{index.name}.{_unique()}.tmp")
        tmp_index.write_text(json.dumps({"sha256": result.sha256, "uri": str(result.uri)}))
        tmp_index.replace(index)

    # ------------------------------------------------------------------ transfer
    def stage_in(
        self,
        store: ObjectStore,
        objects: Sequence[ObjectInfo],
        job: str,
        *,
        base: S3Uri | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        failures: dict[str, Exception] | None = None,
    ) -> list[StagedObject]:
        """Bulk-download ``objects`` into ``input/<job>/``, keys relative to ``base``.

        Objects already in the cache (same ETag and size) are linked, not downloaded. Free
        space is checked for the rest before the first byte moves. Keys that would escape
        the staging root raise :class:`UnsafeKey` before anything is downloaded.

        With ``failures`` given, objects that cannot be downloaded (missing, changed,
        corrupt in transit after retries) are recorded there by URI and left out.
        """
        targets = []
        for info in objects:
            rel = base.relative_key(info.uri) if base else info.uri.key
            targets.append((info, self.local_path("input", job, rel)))
        to_fetch = [(info, path) for info, path in targets if self.cached(info) is None]
        self.check_capacity(sum(info.size for info, _ in to_fetch))
        done = 0
        total = len(targets)

        def progress(_: TransferResult) -> None:
            nonlocal done
            done += 1
            if on_progress:
                on_progress(done, total)

        fetched: dict[Path, TransferResult] = {}
        outcomes = store.download_many(
            to_fetch, on_done=progress, return_exceptions=failures is not None
        )
        for (info, path), outcome in zip(to_fetch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                assert failures is not None
                failures[str(info.uri)] = outcome
                continue
            fetched[path] = outcome
            self._remember(outcome)
        staged = []
        failed = set(failures or ())
        for info, path in targets:
            if str(info.uri) in failed:
                continue
            if path in fetched:
                staged.append(StagedObject(info, path, fetched[path].sha256, from_cache=False))
                continue
            hit = self.cached(info)
            assert hit is not None
            blob, sha256 = hit
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                _link_or_copy(blob, path)
            staged.append(StagedObject(info, path, sha256, from_cache=True))
            progress(TransferResult(info.uri, path, info.size, info.etag, "", sha256))
        return staged

    def publish(
        self,
        store: ObjectStore,
        files: Sequence[tuple[Path, S3Uri]],
        *,
        content_type: str | None = None,
    ) -> list[TransferResult]:
        """Upload locally written outputs in parallel."""
        return store.upload_many(files, content_type=content_type)

    def cleanup(self, job: str) -> None:
        """Remove a job's input/work/output directories (the cache stays)."""
        for area in AREAS[:3]:
            shutil.rmtree(self.root / area / job, ignore_errors=True)

    @contextmanager
    def job(self, kind: str, partition: str, run_id: str | None) -> Iterator[str]:
        """The staging job name of one run (:func:`job_name`); its directories are removed
        when the block exits, whether the work succeeded or raised, so a failing batch
        does not fill the node's disk run after run (downloads stay in the cache)."""
        name = job_name(kind, partition, run_id)
        try:
            yield name
        finally:
            self.cleanup(name)

    def cleanup_runs(self, run_ids: Iterable[str]) -> list[str]:
        """Remove the job directories of the given (dead) runs, whatever stage or
        partition they served; returns the job names removed. Used by recovery after a
        process was killed before its ``finally`` could run."""
        suffixes = tuple(f"-{r}" for r in run_ids)
        removed: set[str] = set()
        if not suffixes:
            return []
        for area in AREAS[:3]:
            directory = self.root / area
            if not directory.is_dir():
                continue
            for entry in directory.iterdir():
                if entry.name.endswith(suffixes):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.add(entry.name)
        return sorted(removed)


def _unique() -> str:
    """A temp-file suffix unique across threads, processes and containers sharing a node."""
    return uuid.uuid4().hex


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def job_name(kind: str, partition: str, run_id: str | None) -> str:
    """A staging job directory name unique to one run: ``<kind>-<partition>-<run id>``
    (a random id when there is no run). Two runs on one node never share, and so never
    clean up, each other's directories."""
    return f"{kind}-{partition}-{run_id or uuid.uuid4().hex}"


def raise_unless_quarantinable(failures: dict[str, Exception]) -> None:
    """The staging failures of :meth:`NvmeStaging.stage_in` that are the *object's* fault
    (it vanished, or its ETag is not the one recorded) quarantine that object; any other
    (network, permissions, a full disk) is raised so the batch fails and a retry can
    succeed, instead of leaving the object out of a published manifest for good."""
    for exc in failures.values():
        if not isinstance(exc, (ObjectNotFound, ObjectChanged)):
            raise exc


def staging_reason(exc: Exception) -> str:
    """The quarantine reason of a quarantinable staging failure."""
    if isinstance(exc, ObjectNotFound):
        return "no longer exists"
    return f"changed since it was recorded: {exc}"
