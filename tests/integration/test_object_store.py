"""ObjectStore against a real S3 server (the session's SeaweedFS).

Most tests share one bucket and one client per module, each test under its own fresh
prefix: SeaweedFS allocates storage on a bucket's first write (~0.2 s) and a boto3
client takes a moment to build, which adds up over many tests.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

import imageml_core.storage.object_store as object_store_module
from imageml_core.storage.object_store import (
    FileChanged,
    IntegrityError,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    TransferResult,
)
from imageml_core.uris import S3Uri
from imageml_dev.embedded_s3 import EmbeddedS3

pytestmark = pytest.mark.s3

MiB = 1024 * 1024
MANY_KEYS = [f"many/obj-{i:05d}.bin" for i in range(1050)]


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _part_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith(".part")]


@pytest.fixture(scope="module")
def store(s3_server: EmbeddedS3) -> ObjectStore:
    return ObjectStore(
        s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    )


@pytest.fixture(scope="module")
def quick_store(s3_server: EmbeddedS3) -> ObjectStore:
    """A store that gives up after 2 attempts, so failure paths do not sleep long."""
    return ObjectStore(
        s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
        max_attempts=2,
    )


@pytest.fixture(scope="module")
def shared_bucket(store: ObjectStore) -> str:
    name = f"t-os-{uuid.uuid4().hex[:16]}"
    store.ensure_bucket(name)
    return name


@pytest.fixture
def loc(shared_bucket: str) -> S3Uri:
    """A fresh, empty prefix in the module's bucket for this test."""
    return S3Uri(shared_bucket, f"t-{uuid.uuid4().hex[:12]}")


# ---------------------------------------------------------------------- listing
@pytest.fixture(scope="module")
def many_bucket(store: ObjectStore) -> str:
    """A bucket holding 1,050 small objects under ``many/`` (more than one listing page)."""
    name = f"t-many-{uuid.uuid4().hex[:16]}"
    store.ensure_bucket(name)

    def put(key: str) -> None:
        store.client.put_object(Bucket=name, Key=key, Body=key.encode())

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(put, MANY_KEYS))
    # Neighbours that must not be listed under "many/".
    store.put_bytes(S3Uri(name, "many-not/x.bin"), b"x")
    store.put_bytes(S3Uri(name, "other/x.bin"), b"x")
    return name


def test_listing_paginates_past_1000_keys(store: ObjectStore, many_bucket: str) -> None:
    location = S3Uri(many_bucket, "many")
    for page_size in (1000, 100):
        listed = list(store.list_objects(location, page_size=page_size))
        assert [o.uri.key for o in listed] == MANY_KEYS, page_size
        assert all(o.uri.bucket == many_bucket for o in listed)
    first = listed[0]
    assert first.size == len(MANY_KEYS[0].encode())
    assert first.etag == _md5(MANY_KEYS[0].encode())
    assert first.last_modified is not None


def test_listing_start_after(store: ObjectStore, many_bucket: str) -> None:
    location = S3Uri(many_bucket, "many")
    listed = [o.uri.key for o in store.list_objects(location, start_after=MANY_KEYS[1020])]
    assert listed == MANY_KEYS[1021:]
    # A cursor in the middle of a page, with small pages, crosses pages correctly.
    listed = [
        o.uri.key for o in store.list_objects(location, start_after=MANY_KEYS[450], page_size=100)
    ]
    assert listed == MANY_KEYS[451:]
    # Past the last key: nothing.
    assert list(store.list_objects(location, start_after=MANY_KEYS[-1])) == []


def test_listing_empty_prefix_and_folder_markers(store: ObjectStore, bucket: str) -> None:
    assert list(store.list_objects(S3Uri(bucket, "nothing-here"))) == []
    store.client.put_object(Bucket=bucket, Key="dirs/sub/", Body=b"")
    store.put_bytes(S3Uri(bucket, "dirs/sub/a.bin"), b"a")
    store.put_bytes(S3Uri(bucket, "dirs/b.bin"), b"bb")
    listed = list(store.list_objects(S3Uri(bucket, "dirs/")))
    assert [(o.uri.key, o.size) for o in listed] == [("dirs/b.bin", 2), ("dirs/sub/a.bin", 1)]
    # The whole bucket.
    assert [o.uri.key for o in store.list_objects(S3Uri(bucket))] == [
        "dirs/b.bin",
        "dirs/sub/a.bin",
    ]


# ---------------------------------------------------------------------- head / bytes
def test_head_missing_returns_none(store: ObjectStore, loc: S3Uri) -> None:
    assert store.head(loc.join("no/such/key.jpg")) is None


def test_head_existing(store: ObjectStore, loc: S3Uri) -> None:
    data = b"hello head"
    uri = loc.join("h/x.bin")
    store.put_bytes(uri, data)
    info = store.head(uri)
    assert info is not None
    assert info.uri == uri
    assert info.size == len(data)
    assert info.etag == _md5(data)
    assert info.last_modified is not None


def test_put_get_bytes_round_trip(store: ObjectStore, loc: S3Uri) -> None:
    data = os.urandom(100_000)
    uri = loc.join("bytes/with space?and#hash.bin")
    info = store.put_bytes(uri, data, content_type="image/jpeg")
    assert info.uri == uri
    assert info.etag == _md5(data)
    assert info.size == len(data)
    assert store.get_bytes(uri) == data
    head = store.head(uri)
    assert head is not None and head.etag == _md5(data)
    resp = store.client.head_object(Bucket=uri.bucket, Key=uri.key)
    assert resp["ContentType"] == "image/jpeg"


def test_get_bytes_missing_raises_object_not_found(store: ObjectStore, loc: S3Uri) -> None:
    with pytest.raises(ObjectNotFound, match="does not exist"):
        store.get_bytes(loc.join("missing.bin"))
    assert issubclass(ObjectNotFound, FileNotFoundError)


def _counting_heads(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> list[S3Uri]:
    """Record the HEAD requests ``store`` makes (the real ones still go to the server)."""
    calls: list[S3Uri] = []
    real_head = store.head

    def head(uri: S3Uri) -> ObjectInfo | None:
        calls.append(uri)
        return real_head(uri)

    monkeypatch.setattr(store, "head", head)
    return calls


def test_stat_many_lists_a_clustered_batch_instead_of_heading_it(
    s3_server: EmbeddedS3, many_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(
        s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    )
    heads = _counting_heads(store, monkeypatch)
    wanted = [S3Uri(many_bucket, k) for k in MANY_KEYS[500:540]]
    missing = S3Uri(many_bucket, "many/obj-00510.bin.gone")  # inside the listed range
    found = store.stat_many([*wanted, missing])
    assert heads == []
    assert found[missing] is None
    for uri in wanted:
        info = found[uri]
        assert (
            info is not None and info.size == len(uri.key) and info.etag == _md5(uri.key.encode())
        )
    # Keys spread wider than the listing budget: the rest are HEADed, same answers.
    spread = [S3Uri(many_bucket, MANY_KEYS[0]), S3Uri(many_bucket, MANY_KEYS[-1]), missing]
    found = store.stat_many(spread, max_listed=3)
    assert set(heads) == {spread[1], missing}  # the first key was within the budget
    assert found[missing] is None
    assert all(found[u] is not None for u in spread[:2])
    # Keys in several buckets, and one in a bucket with nothing in range.
    other = S3Uri(many_bucket, "other/x.bin")
    assert store.stat_many([other, S3Uri(many_bucket, "zzz/none")])[other] is not None


def test_upload_many_if_changed_with_a_stat_snapshot_and_known_digests(
    s3_server: EmbeddedS3, loc: S3Uri, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(
        s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    )
    jobs, digests = [], {}
    for i in range(5):
        data = os.urandom(2000 + i)
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(data)
        jobs.append((path, loc.join(f"f{i}.bin")))
        digests[path] = (_md5(data), _sha256(data))
    heads = _counting_heads(store, monkeypatch)
    targets = [uri for _, uri in jobs]
    assert (
        store.upload_many_if_changed(jobs, existing=store.stat_many(targets), digests=digests) == 5
    )
    assert (
        store.upload_many_if_changed(jobs, existing=store.stat_many(targets), digests=digests) == 0
    )
    assert heads == []  # every existence check came from the listings
    # A digest that no longer matches the file refuses the upload; the stored object stays.
    bad = {jobs[0][0]: ("0" * 32, digests[jobs[0][0]][1])}
    with pytest.raises(FileChanged, match="when it was hashed"):
        store.upload_many_if_changed(jobs[:1], existing={}, digests=bad)
    assert store.head(jobs[0][1]).etag == digests[jobs[0][0]][0]  # type: ignore[union-attr]


def test_put_bytes_if_changed(store: ObjectStore, loc: S3Uri) -> None:
    uri = loc.join("out/result.json")
    assert store.put_bytes_if_changed(uri, b'{"v": 1}') is True
    first = store.head(uri)
    assert first is not None
    assert store.put_bytes_if_changed(uri, b'{"v": 1}') is False
    assert store.head(uri) == first  # not rewritten: same ETag and Last-Modified
    assert store.put_bytes_if_changed(uri, b'{"v": 2}') is True
    assert store.get_bytes(uri) == b'{"v": 2}'
    changed = store.head(uri)
    assert changed is not None and changed.etag == _md5(b'{"v": 2}')


def test_wrong_secret_key_is_rejected(s3_server: EmbeddedS3, loc: S3Uri) -> None:
    bad = ObjectStore(
        s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key="definitely-not-the-secret",
        max_attempts=1,
    )
    with pytest.raises(ClientError):
        bad.put_bytes(loc.join("x.bin"), b"x")
    with pytest.raises(ClientError):
        list(bad.list_objects(loc))


def test_ensure_bucket_is_idempotent(store: ObjectStore, shared_bucket: str, loc: S3Uri) -> None:
    store.ensure_bucket(shared_bucket)
    store.ensure_bucket(shared_bucket)
    store.put_bytes(loc.join("k"), b"v")
    assert store.get_bytes(loc.join("k")) == b"v"


# ---------------------------------------------------------------------- files
def test_download_file_verifies_and_is_atomic(
    store: ObjectStore, loc: S3Uri, tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB + 17)
    uri = loc.join("dl/a.bin")
    store.put_bytes(uri, data)
    target = tmp_path / "deep" / "er" / "a.bin"
    result = store.download_file(uri, target, expected=store.head(uri))
    assert isinstance(result, TransferResult)
    assert target.read_bytes() == data
    assert result.path == target
    assert result.uri == uri
    assert result.size == len(data)
    assert result.md5 == _md5(data)
    assert result.etag == _md5(data)
    assert result.sha256 == _sha256(data)
    assert _part_files(tmp_path) == []
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.bin"]


def test_download_file_replaces_existing_file(
    store: ObjectStore, loc: S3Uri, tmp_path: Path
) -> None:
    uri = loc.join("dl/b.bin")
    store.put_bytes(uri, b"new content")
    target = tmp_path / "b.bin"
    target.write_bytes(b"old content that is longer")
    store.download_file(uri, target)
    assert target.read_bytes() == b"new content"
    assert _part_files(tmp_path) == []


def test_download_file_detects_object_changed_while_staging(
    quick_store: ObjectStore, loc: S3Uri, tmp_path: Path
) -> None:
    uri = loc.join("dl/changing.bin")
    quick_store.put_bytes(uri, b"version one")
    listed = quick_store.head(uri)
    assert listed is not None
    # The object is overwritten between listing and download.
    quick_store.put_bytes(uri, b"version two!")
    target = tmp_path / "changing.bin"
    target.write_bytes(b"previous good copy")
    with pytest.raises(IntegrityError, match="changed while staging"):
        quick_store.download_file(uri, target, expected=listed)
    # Atomic: the old file is untouched and no temp file is left behind.
    assert target.read_bytes() == b"previous good copy"
    assert _part_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["changing.bin"]


def test_download_file_expected_etag_mismatch_no_file_created(
    quick_store: ObjectStore, loc: S3Uri, tmp_path: Path
) -> None:
    uri = loc.join("dl/c.bin")
    info = quick_store.put_bytes(uri, b"abc")
    wrong = ObjectInfo(uri, "0" * 32, info.size)
    target = tmp_path / "c" / "c.bin"
    with pytest.raises(IntegrityError):
        quick_store.download_file(uri, target, expected=wrong)
    assert not target.exists()
    assert _part_files(tmp_path) == []


def test_download_file_missing_raises_object_not_found(
    store: ObjectStore, loc: S3Uri, tmp_path: Path
) -> None:
    with pytest.raises(ObjectNotFound):
        store.download_file(loc.join("missing.bin"), tmp_path / "m.bin")
    assert not (tmp_path / "m.bin").exists()
    assert _part_files(tmp_path) == []


def test_upload_file_single_put(store: ObjectStore, loc: S3Uri, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    src = tmp_path / "up.bin"
    src.write_bytes(data)
    uri = loc.join("up/up.bin")
    result = store.upload_file(src, uri, content_type="image/png")
    assert result.etag == _md5(data) == result.md5
    assert result.sha256 == _sha256(data)
    assert result.size == len(data)
    assert store.get_bytes(uri) == data
    resp = store.client.head_object(Bucket=uri.bucket, Key=uri.key)
    assert resp["ContentType"] == "image/png"


def test_upload_file_multipart_above_threshold(
    store: ObjectStore, loc: S3Uri, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(object_store_module, "MULTIPART_THRESHOLD", 5 * MiB)
    data = os.urandom(6 * MiB + 123)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    uri = loc.join("up/big.bin")
    result = store.upload_file(src, uri)
    assert result.size == len(data)
    assert result.md5 == _md5(data)
    assert result.sha256 == _sha256(data)
    head = store.head(uri)
    assert head is not None and head.size == len(data)
    assert result.etag == head.etag
    # A multipart ETag is "<md5 of the part md5s>-<parts>", not the MD5 of the body.
    assert head.etag != _md5(data)
    assert "-" in head.etag
    # Download verifies such ETags by size; the bytes must match exactly.
    out = tmp_path / "big.out"
    dl = store.download_file(uri, out, expected=head)
    assert out.read_bytes() == data
    assert dl.sha256 == _sha256(data)
    assert dl.etag == head.etag


# ---------------------------------------------------------------------- parallel
def test_upload_many_download_many_round_trip(
    store: ObjectStore, loc: S3Uri, tmp_path: Path
) -> None:
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    payloads = {f"f{i:02d}.bin": os.urandom(1000 + i * 997) for i in range(40)}
    # Deliberately not in key order, so that order preservation is visible.
    names = sorted(payloads, reverse=True)
    jobs = []
    for name in names:
        (src_dir / name).write_bytes(payloads[name])
        jobs.append((src_dir / name, loc.join("par", name)))
    done: list[TransferResult] = []
    uploaded = store.upload_many(jobs, on_done=done.append)
    assert [r.uri for r in uploaded] == [u for _, u in jobs]
    assert [r.path for r in uploaded] == [p for p, _ in jobs]
    for r, name in zip(uploaded, names, strict=True):
        assert r.sha256 == _sha256(payloads[name])
        assert r.md5 == r.etag == _md5(payloads[name])
    assert len(done) == 40

    listed = {o.uri: o for o in store.list_objects(loc.join("par"))}
    assert len(listed) == 40
    dst_dir = tmp_path / "dst"
    dl_jobs = [(listed[u], dst_dir / u.key) for _, u in jobs]
    downloaded = store.download_many(dl_jobs)
    assert len(downloaded) == 40
    for r, (_, uri), name in zip(downloaded, jobs, names, strict=True):
        assert isinstance(r, TransferResult)
        assert r.uri == uri
        assert r.sha256 == _sha256(payloads[name])
        assert r.path.read_bytes() == payloads[name]
    assert _part_files(dst_dir) == []


def test_download_many_with_failures_returns_exceptions_in_place(
    quick_store: ObjectStore, loc: S3Uri, tmp_path: Path
) -> None:
    good = [quick_store.put_bytes(loc.join(f"mix/{i}.bin"), bytes([i]) * 10) for i in range(3)]
    missing = ObjectInfo(loc.join("mix/missing.bin"), "", 10)
    items = [(good[0], tmp_path / "0"), (missing, tmp_path / "m"), (good[2], tmp_path / "2")]
    results = quick_store.download_many(items, return_exceptions=True)
    assert isinstance(results[0], TransferResult)
    assert isinstance(results[1], ObjectNotFound)
    assert isinstance(results[2], TransferResult)
    assert (tmp_path / "0").read_bytes() == bytes([0]) * 10
    assert (tmp_path / "2").read_bytes() == bytes([2]) * 10
    with pytest.raises(ObjectNotFound):
        quick_store.download_many(items)
