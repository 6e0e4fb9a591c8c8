"""Staging paths and capacity checks (imageml_core.storage.staging, no object store)."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import pytest

from imageml_core.storage.paths import staged_name
from imageml_core.storage.staging import (
    InsufficientStagingSpace,
    NvmeStaging,
    UnsafeKey,
    safe_relative_path,
)

_GB = 1024**3

UNSAFE_KEYS = [
    ("", "empty"),
    ("..", r"'\.\.'"),
    ("../etc/passwd", r"'\.\.'"),
    ("raw/../../etc/passwd", r"'\.\.'"),
    ("raw/..", r"'\.\.'"),
    ("raw/./x.jpg", r"'\.'"),
    ("/etc/passwd", "absolute"),
    ("/", "absolute"),
    ("raw\\..\\x.jpg", "backslash"),
    ("raw\\x.jpg", "backslash"),
    ("raw/x\x00.jpg", "control"),
    ("raw/x\n.jpg", "control"),
    ("raw/x\t.jpg", "control"),
    ("raw/x\x7f.jpg", "control"),
    ("raw//x.jpg", "empty path segment"),
    ("raw/x/", "empty path segment"),
    ("raw/" + "a" * 256, "longer than 255"),
]


@pytest.mark.parametrize(("key", "why"), UNSAFE_KEYS)
def test_safe_relative_path_refuses(key: str, why: str) -> None:
    with pytest.raises(UnsafeKey, match=why):
        safe_relative_path(key)


@pytest.mark.parametrize(("key", "why"), UNSAFE_KEYS)
def test_local_path_refuses(tmp_path: Path, key: str, why: str) -> None:
    staging = NvmeStaging(tmp_path / "nvme")
    with pytest.raises(UnsafeKey, match=why):
        staging.local_path("input", "job-1", key)


@pytest.mark.parametrize(
    "key",
    [
        "x.jpg",
        "raw/x.jpg",
        "raw/2024/01/02/img 001.jpg",
        "raw/what?#.jpg",
        "raw/..hidden/.dotfile",
        "raw/a..b/c...d.png",
        "raw/ünïcode/照片.jpg",
        "raw/" + "a" * 255,
    ],
)
def test_safe_relative_path_accepts_normal_keys(tmp_path: Path, key: str) -> None:
    rel = safe_relative_path(key)
    assert rel == PurePosixPath(key)
    assert not rel.is_absolute()
    assert str(rel) == key
    staging = NvmeStaging(tmp_path / "nvme")
    path = staging.local_path("input", "job-1", key)
    assert path == tmp_path / "nvme" / "input" / "job-1" / Path(*staged_name(key).parts)
    assert key.endswith(path.name)  # the base name (its last 200 bytes) stays readable
    assert path.resolve().is_relative_to((tmp_path / "nvme" / "input" / "job-1").resolve())


def test_distinct_keys_never_share_a_staging_path(tmp_path: Path) -> None:
    """A key that is a file where another key needs a folder (both legal in S3), and keys
    whose mirrored path would pass PATH_MAX, each get a path of their own."""
    staging = NvmeStaging(tmp_path / "nvme")
    deep = "/".join(["d" * 200] * 25) + "/x.jpg"
    keys = ["x/conflict.jpg", "x/conflict.jpg/inner.jpg", deep, "y/conflict.jpg"]
    paths = [staging.local_path("input", "job-1", k) for k in keys]
    assert len(set(paths)) == len(keys)
    for key, path in zip(keys, paths, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(key)  # none is a folder of another, none too long
        assert len(str(path)) < 4096
    assert [p.read_text() for p in paths] == keys


def test_staging_layout_created(tmp_path: Path) -> None:
    staging = NvmeStaging(tmp_path / "nvme")
    for sub in ("input", "work", "output", "cache", "cache/sha256", "cache/etag"):
        assert (tmp_path / "nvme" / sub).is_dir()
    assert staging.area("output", "job-1") == tmp_path / "nvme" / "output" / "job-1"
    assert (tmp_path / "nvme" / "output" / "job-1").is_dir()


@pytest.mark.parametrize("job", ["", "../x", "a/b", ".hidden", "x y", "a" * 201, "job\n"])
def test_unsafe_job_names_refused(tmp_path: Path, job: str) -> None:
    staging = NvmeStaging(tmp_path / "nvme")
    with pytest.raises(UnsafeKey, match="job name"):
        staging.local_path("input", job, "x.jpg")


def test_unknown_area_refused(tmp_path: Path) -> None:
    staging = NvmeStaging(tmp_path / "nvme")
    with pytest.raises(ValueError, match="staging area"):
        staging.local_path("cache", "job-1", "x.jpg")
    with pytest.raises(ValueError, match="staging area"):
        staging.area("elsewhere", "job-1")


def test_symlink_planted_in_staging_tree_is_refused(tmp_path: Path) -> None:
    staging = NvmeStaging(tmp_path / "nvme")
    outside = tmp_path / "outside"
    outside.mkdir()
    base = staging.area("input", "job-1")
    shard = staged_name("link/x.jpg").parts[0]
    (base / shard).symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeKey, match="resolves outside"):
        staging.local_path("input", "job-1", "link/x.jpg")


def test_check_capacity_refuses_with_numbers_in_message(tmp_path: Path) -> None:
    staging = NvmeStaging(tmp_path / "nvme", min_free_gb=10**6)
    free_before = staging.free_bytes()
    with pytest.raises(InsufficientStagingSpace) as exc:
        staging.check_capacity(2 * _GB)
    free_after = staging.free_bytes()
    message = str(exc.value)
    assert "NVME_MIN_GB" in message
    assert "NVME_MIN_GB=1e+06 GB" in message or "NVME_MIN_GB=1000000 GB" in message
    # The shard's size ...
    assert "needs 2.00 GB" in message
    # ... and the free space actually available.
    match = re.search(r"has ([0-9.]+) GB free", message)
    assert match, message
    reported = float(match.group(1))
    assert min(free_before, free_after) / _GB - 0.01 <= reported
    assert reported <= max(free_before, free_after) / _GB + 0.01
    # And the total required.
    assert f"({(2 * _GB + 10**6 * _GB) / _GB:.2f} GB in all)" in message
    assert str(tmp_path / "nvme") in message


def test_check_capacity_refuses_shard_larger_than_free_space(tmp_path: Path) -> None:
    staging = NvmeStaging(tmp_path / "nvme", min_free_gb=0)
    with pytest.raises(InsufficientStagingSpace, match="NVME_MIN_GB=0 GB"):
        staging.check_capacity(staging.free_bytes() + 1024 * _GB)


def test_check_capacity_passes(tmp_path: Path) -> None:
    staging = NvmeStaging(tmp_path / "nvme", min_free_gb=0)
    staging.check_capacity(0)
    staging.check_capacity(1024 * 1024)
    assert staging.free_bytes() > 0
