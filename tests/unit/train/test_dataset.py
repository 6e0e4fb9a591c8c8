"""The gold tier's rules, without services: the split by source hash, the version id, and
byte-identical shards."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

from imageml_core.stages.train.dataset import DatasetConfig, Sample, dataset_version, write_shard
from imageml_core.uris import S3Uri


def _sample(n: int, kind: str = "original", origin: str | None = None) -> Sample:
    sha = hashlib.sha256(f"image {n}".encode()).hexdigest()
    return Sample(
        key=hashlib.sha256(f"uri {n} {kind}".encode()).hexdigest()[:32],
        uri=f"s3://bucket/silver/{n}-{kind}.jpg",
        etag="e",
        sha256=sha if kind == "original" else hashlib.sha256(f"copy {n}".encode()).hexdigest(),
        kind=kind,
        width=10,
        height=8,
        origin_sha256=origin or sha,
        source_uri=f"s3://bucket/raw/{n}.jpg",
        annotations=({"category_id": 1, "bbox": [1, 1, 2, 2]},),
    )


CONFIG = DatasetConfig("720p", "0" * 64, "light-00000000", 0.3, 5, S3Uri("bucket", "gold"), "d")


def test_the_split_follows_the_original_and_leaves_val_copies_out() -> None:
    originals = [_sample(n) for n in range(200)]
    sides = [s.split(0.3) for s in originals]
    assert 0.2 < sides.count("val") / len(sides) < 0.4  # the fraction, up to sampling
    for original, side in zip(originals, sides, strict=True):
        copy = _sample(0, "augmented", origin=original.sha256)
        assert copy.split(0.3) == ("train" if side == "train" else None)
    # The rule depends on the image alone: a bigger set does not move anyone.
    assert [s.split(0.3) for s in originals[:50]] == sides[:50]


def test_the_version_is_the_same_for_the_same_inputs_and_changes_with_them() -> None:
    samples = [_sample(n) for n in range(10)]
    assert dataset_version(samples, CONFIG) == dataset_version(list(samples), CONFIG)
    assert dataset_version(samples, CONFIG).startswith("ds-")
    assert dataset_version(samples[:9], CONFIG) != dataset_version(samples, CONFIG)
    relabelled = [*samples[:9], Sample(**{**samples[9].__dict__, "annotations": ()})]
    assert dataset_version(relabelled, CONFIG) != dataset_version(samples, CONFIG)


def test_shards_are_byte_identical_and_readable_by_tar(tmp_path: Path) -> None:
    samples = [_sample(n) for n in range(3)]
    images = []
    for s in samples:
        path = tmp_path / f"{s.key}.jpg"
        path.write_bytes(b"\xff\xd8jpeg" + s.key.encode())
        images.append((s, path, "train"))
    write_shard(tmp_path / "a.tar", images)
    write_shard(tmp_path / "b.tar", images)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        names = tar.getnames()
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    assert names == [f"{s.key}.{ext}" for s in samples for ext in ("jpg", "json")]
