"""NVMe staging against a real S3 server: stage-in, cache, capacity, publish, cleanup."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imageml_core.storage.object_store import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    TransferResult,
)
from imageml_core.storage.paths import staged_name
from imageml_core.storage.staging import InsufficientStagingSpace, NvmeStaging, UnsafeKey
from imageml_core.uris import S3Uri
from imageml_dev.embedded_s3 import EmbeddedS3

pytestmark = pytest.mark.s3


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


class DownloadCounter:
    """Wraps ``store.download_file`` (our own code) to count the downloads that happen."""

    def __init__(self, store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.uris: list[S3Uri] = []
        self._lock = threading.Lock()
        original: Callable[..., TransferResult] = store.download_file

        def counting(uri: S3Uri, path: Path, **kwargs: Any) -> TransferResult:
            with self._lock:
                self.uris.append(uri)
            return original(uri, path, **kwargs)

        monkeypatch.setattr(store, "download_file", counting)

    @property
    def count(self) -> int:
        return len(self.uris)


@pytest.fixture(scope="module")
def store(s3_server: EmbeddedS3) -> ObjectStore:
    """One client and one bucket per module; each test works under its own prefix."""
    return ObjectStore(
        s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    )


@pytest.fixture(scope="module")
def shared_bucket(store: ObjectStore) -> str:
    name = f"t-stg-{uuid.uuid4().hex[:16]}"
    store.ensure_bucket(name)
    return name


@pytest.fixture
def base(shared_bucket: str) -> S3Uri:
    """This test's ``raw`` prefix, fresh and empty."""
    return S3Uri(shared_bucket, f"t-{uuid.uuid4().hex[:12]}/raw")


@pytest.fixture
def raw_objects(store: ObjectStore, base: S3Uri) -> dict[str, bytes]:
    """Seven objects under ``base`` in nested folders, keyed by their key below ``base``."""
    payloads = {
        "a.jpg": os.urandom(1000),
        "cam1/b.jpg": os.urandom(2000),
        "cam1/2024/c d.jpg": os.urandom(3000),
        "cam2/e?#.png": os.urandom(1500),
        "cam2/deep/er/f.bin": os.urandom(10),
        # Two keys, identical bytes: one cache blob serves both.
        "dup.jpg": b"same bytes in two objects",
        "cam2/dup.jpg": b"same bytes in two objects",
    }
    for rel, data in payloads.items():
        store.put_bytes(base.join(rel), data)
    return payloads


def _listed(store: ObjectStore, base: S3Uri) -> list[ObjectInfo]:
    return list(store.list_objects(base))


def _rel(base: S3Uri, info: ObjectInfo) -> str:
    return base.relative_key(info.uri)


def test_stage_in_mirrors_keys_relative_to_base(
    store: ObjectStore,
    base: S3Uri,
    raw_objects: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    staging = NvmeStaging(tmp_path / "nvme")
    counter = DownloadCounter(store, monkeypatch)
    objects = _listed(store, base)
    progress: list[tuple[int, int]] = []
    staged = staging.stage_in(
        store,
        objects,
        "job-1",
        base=base,
        on_progress=lambda done, total: progress.append((done, total)),
    )
    assert counter.count == len(raw_objects)
    assert [s.info for s in staged] == objects  # same order as given
    job_dir = tmp_path / "nvme" / "input" / "job-1"
    for s in staged:
        rel = _rel(base, s.info)
        assert s.path == job_dir / staged_name(rel)  # one path per key, never shared
        assert s.path.read_bytes() == raw_objects[rel]
        assert s.sha256 == _sha256(raw_objects[rel])
        assert s.from_cache is False
    assert _files(job_dir) == sorted(job_dir / staged_name(rel) for rel in raw_objects)
    # One progress call per object, all against the same total.
    assert len(progress) == len(raw_objects)
    assert {total for _, total in progress} == {len(raw_objects)}
    # The content-addressed cache now holds every object.
    for data in raw_objects.values():
        digest = _sha256(data)
        blob = tmp_path / "nvme" / "cache" / "sha256" / digest[:2] / digest
        assert blob.read_bytes() == data


def test_stage_in_without_base_uses_full_key(
    store: ObjectStore, base: S3Uri, raw_objects: dict[str, bytes], tmp_path: Path
) -> None:
    staging = NvmeStaging(tmp_path / "nvme")
    staged = staging.stage_in(store, _listed(store, base), "job-1")
    job_dir = tmp_path / "nvme" / "input" / "job-1"
    assert sorted(s.path for s in staged) == sorted(
        job_dir / staged_name(f"{base.key}/{rel}") for rel in raw_objects
    )


def test_second_stage_in_is_served_from_cache(
    store: ObjectStore,
    base: S3Uri,
    raw_objects: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    staging = NvmeStaging(tmp_path / "nvme")
    objects = _listed(store, base)
    first = staging.stage_in(store, objects, "job-1", base=base)
    assert not any(s.from_cache for s in first)

    counter = DownloadCounter(store, monkeypatch)
    progress: list[tuple[int, int]] = []
    second = staging.stage_in(
        store,
        objects,
        "job-2",
        base=base,
        on_progress=lambda done, total: progress.append((done, total)),
    )
    assert counter.count == 0, f"re-downloaded {counter.uris}"
    assert all(s.from_cache for s in second)
    assert len(progress) == len(objects)
    job2 = tmp_path / "nvme" / "input" / "job-2"
    for s, f in zip(second, first, strict=True):
        rel = _rel(base, s.info)
        assert s.path == job2 / staged_name(rel)
        assert s.path.read_bytes() == raw_objects[rel]
        assert s.sha256 == f.sha256 == _sha256(raw_objects[rel])


def test_changed_object_is_downloaded_again(
    store: ObjectStore,
    base: S3Uri,
    raw_objects: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    staging = NvmeStaging(tmp_path / "nvme")
    staging.stage_in(store, _listed(store, base), "job-1", base=base)
    store.put_bytes(base.join("a.jpg"), b"a new version of a")
    counter = DownloadCounter(store, monkeypatch)
    staged = staging.stage_in(store, _listed(store, base), "job-2", base=base)
    assert counter.uris == [base.join("a.jpg")]
    by_key = {_rel(base, s.info): s for s in staged}
    assert by_key["a.jpg"].from_cache is False
    assert by_key["a.jpg"].path.read_bytes() == b"a new version of a"
    assert sum(s.from_cache for s in staged) == len(raw_objects) - 1


def test_capacity_failure_happens_before_any_download(
    store: ObjectStore,
    base: S3Uri,
    raw_objects: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    staging = NvmeStaging(tmp_path / "nvme", min_free_gb=10**6)
    counter = DownloadCounter(store, monkeypatch)
    with pytest.raises(InsufficientStagingSpace, match="NVME_MIN_GB"):
        staging.stage_in(store, _listed(store, base), "job-1", base=base)
    assert counter.count == 0
    assert _files(tmp_path / "nvme" / "input") == []
    assert _files(tmp_path / "nvme" / "cache") == []


def test_capacity_counts_only_objects_not_in_cache(
    store: ObjectStore,
    base: S3Uri,
    raw_objects: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = _listed(store, base)
    total = sum(o.size for o in objects)
    staging = NvmeStaging(tmp_path / "nvme")
    # Pin the volume's free space (our own method) so the arithmetic is exact.
    free = total - 1
    monkeypatch.setattr(staging, "free_bytes", lambda: free)
    with pytest.raises(InsufficientStagingSpace):
        staging.stage_in(store, objects, "job-1", base=base)
    free = total
    staging.stage_in(store, objects, "job-1", base=base)
    # Everything is cached now: the next shard needs (almost) nothing new on the volume.
    free = 100
    assert all(s.from_cache for s in staging.stage_in(store, objects, "job-2", base=base))
    # One changed object: only its bytes count.
    store.put_bytes(base.join("a.jpg"), b"x" * 150)
    changed = _listed(store, base)
    with pytest.raises(InsufficientStagingSpace):
        staging.stage_in(store, changed, "job-3", base=base)
    free = 150
    staged = staging.stage_in(store, changed, "job-3", base=base)
    assert sum(not s.from_cache for s in staged) == 1


def test_concurrent_stage_in_of_same_objects_in_one_process(
    store: ObjectStore, base: S3Uri, tmp_path: Path
) -> None:
    """Several jobs on one node stage the same objects at once (threads of one process).

    Every job must get every object; the shared cache must not trip over its own
    temporary files.
    """
    payloads = {f"o{i:02d}.bin": os.urandom(1000 + i) for i in range(25)}
    for rel, data in payloads.items():
        store.put_bytes(base.join(rel), data)
    objects = _listed(store, base)
    errors: list[str] = []
    for round_ in range(5):
        staging = NvmeStaging(tmp_path / f"nvme-{round_}")
        barrier = threading.Barrier(4)

        def job(
            j: int,
            staging: NvmeStaging = staging,
            barrier: threading.Barrier = barrier,
            round_: int = round_,
        ) -> None:
            barrier.wait(timeout=30)
            try:
                staged = staging.stage_in(store, objects, f"job-{j}", base=base)
            except Exception as exc:
                errors.append(f"round {round_} job {j}: {exc!r}")
                return
            for s in staged:
                if s.path.read_bytes() != payloads[_rel(base, s.info)]:
                    errors.append(f"round {round_} job {j}: wrong bytes in {s.path}")

        threads = [threading.Thread(target=job, args=(j,)) for j in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert errors == []


@pytest.mark.parametrize(
    "bad_key", ["../../escape.jpg", "a\\b.jpg", "sub//x.jpg", "x\n.jpg", "/abs.jpg"]
)
def test_unsafe_key_refused_before_download(
    store: ObjectStore,
    base: S3Uri,
    raw_objects: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bad_key: str,
) -> None:
    staging = NvmeStaging(tmp_path / "nvme")
    counter = DownloadCounter(store, monkeypatch)
    objects = [
        *_listed(store, base),
        ObjectInfo(S3Uri(base.bucket, f"{base.key}/{bad_key}"), "e" * 32, 5),
    ]
    with pytest.raises(UnsafeKey):
        staging.stage_in(store, objects, "job-1", base=base)
    assert counter.count == 0
    assert _files(tmp_path / "nvme") == []
    assert not (tmp_path / "escape.jpg").exists()
    assert not (tmp_path / "nvme" / "escape.jpg").exists()


def test_stage_in_records_failures_and_continues(
    store: ObjectStore,
    base: S3Uri,
    raw_objects: dict[str, bytes],
    tmp_path: Path,
) -> None:
    staging = NvmeStaging(tmp_path / "nvme")
    missing = ObjectInfo(base.join("gone.jpg"), "f" * 32, 4)
    objects = [*_listed(store, base), missing]
    failures: dict[str, Exception] = {}
    staged = staging.stage_in(store, objects, "job-1", base=base, failures=failures)
    assert set(failures) == {str(missing.uri)}
    assert isinstance(failures[str(missing.uri)], ObjectNotFound)
    assert len(staged) == len(raw_objects)
    assert missing.uri not in {s.info.uri for s in staged}


def test_publish_uploads_in_parallel(
    store: ObjectStore, base: S3Uri, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = NvmeStaging(tmp_path / "nvme")
    out_dir = staging.area("output", "job-1")
    files = []
    payloads = {}
    for i in range(12):
        data = os.urandom(5000 + i)
        path = out_dir / "sub" / f"out-{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        uri = S3Uri(base.bucket, base.key.removesuffix("raw") + f"silver/sub/out-{i:02d}.png")
        payloads[uri] = data
        files.append((path, uri))

    # Spy on our own upload_file to see how many run at the same time.
    active = 0
    peak = 0
    lock = threading.Lock()
    original = store.upload_file

    def spying(path: Path, uri: S3Uri, **kwargs: Any) -> TransferResult:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            time.sleep(0.05)
            return original(path, uri, **kwargs)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(store, "upload_file", spying)
    results = staging.publish(store, files, content_type="image/png")
    assert peak > 1, "uploads ran one at a time"
    assert [r.uri for r in results] == [u for _, u in files]
    for r in results:
        assert r.sha256 == _sha256(payloads[r.uri])
        assert store.get_bytes(r.uri) == payloads[r.uri]
    resp = store.client.head_object(Bucket=base.bucket, Key=files[0][1].key)
    assert resp["ContentType"] == "image/png"


def test_cleanup_removes_job_dirs_but_keeps_cache(
    store: ObjectStore,
    base: S3Uri,
    raw_objects: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "nvme"
    staging = NvmeStaging(root)
    objects = _listed(store, base)
    staging.stage_in(store, objects, "job-1", base=base)
    (staging.area("work", "job-1") / "scratch.tmp").write_bytes(b"s")
    (staging.area("output", "job-1") / "out.png").write_bytes(b"o")
    staging.area("input", "job-keep")
    (root / "input" / "job-keep" / "k").write_bytes(b"k")
    cache_before = _files(root / "cache")
    assert cache_before

    staging.cleanup("job-1")
    for area in ("input", "work", "output"):
        assert not (root / area / "job-1").exists()
    assert (root / "input" / "job-keep" / "k").read_bytes() == b"k"  # other jobs untouched
    assert _files(root / "cache") == cache_before
    # The cache still serves the objects after cleanup (hard links did not take it along).
    for digest in {_sha256(d) for d in raw_objects.values()}:
        assert (root / "cache" / "sha256" / digest[:2] / digest).exists()
    counter = DownloadCounter(store, monkeypatch)
    staged = staging.stage_in(store, objects, "job-3", base=base)
    assert counter.count == 0
    assert all(s.from_cache for s in staged)
    for s in staged:
        assert s.path.read_bytes() == raw_objects[_rel(base, s.info)]
    # Cleaning up a job that never existed is harmless.
    staging.cleanup("never-ran")


def test_a_jobs_folders_go_when_its_work_fails(tmp_path: Path) -> None:
    """A batch that raised left its staged inputs behind, run after run (found by making a
    normalize run fail repeatedly); the job context removes them either way."""
    staging = NvmeStaging(tmp_path / "nvme")
    with pytest.raises(RuntimeError), staging.job("ingest", "b1", "run-1") as job:
        assert job == "ingest-b1-run-1"
        (staging.area("input", job) / "a.jpg").write_bytes(b"a")
        (staging.area("output", job) / "b.jpg").write_bytes(b"b")
        raise RuntimeError("the stage failed")
    for area in ("input", "work", "output"):
        assert not (tmp_path / "nvme" / area / "ingest-b1-run-1").exists()
