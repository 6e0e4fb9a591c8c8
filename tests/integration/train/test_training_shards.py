"""Stage 3 gold tier (issue 11, part 1): a training dataset version from one normalized
variant; deterministic split by the source image's hash with copies beside their original;
WebDataset tar shards that a stock tar reader opens; same inputs, same version, nothing
written."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from imageml_assets.definitions import build_definitions, build_resources
from imageml_cli.runner import RunSummary, _gold_inputs, open_instance, run_pipeline
from imageml_core.manifest import NORMALIZE, TRAINING_SHARDS
from imageml_core.manifest.documents import TrainingDatasetManifest
from imageml_core.manifest.keys import NormalizeKey
from imageml_core.manifest.publish import read_document
from imageml_core.settings import ConfigError, Settings
from imageml_core.stages.train.dataset import (
    DatasetConfig,
    EmptyTrainingSet,
    build_training_dataset,
)
from imageml_core.stages.train.training import resolve_dataset
from imageml_core.storage.object_store import ObjectStore
from imageml_core.storage.staging import NvmeStaging
from imageml_core.uris import parse_s3_uri
from imageml_resources import open_manifest_store
from tests.helpers import jpeg_bytes

IMAGES = 12


@pytest.fixture
def settings(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    env = {
        **s3_env,
        "AUGMENT_PIPELINE": "light",
        "NORMALIZE_SIZES": "360p,64x64",
        "TRAIN_VARIANT": "360p",
        "TRAIN_VAL_FRACTION": "0.3",
        "TRAIN_SHARD_IMAGES": "5",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


def _upload(settings: Settings, store: ObjectStore, names: range) -> None:
    folder = settings.raw_uri.join("set")
    for n in names:
        store.put_bytes(folder.join(f"img{n:02d}.jpg"), jpeg_bytes(n, (100, 80)))
    coco = {
        "images": [
            {"id": n + 1, "file_name": f"img{n:02d}.jpg", "width": 100, "height": 80} for n in names
        ],
        "categories": [{"id": 7, "name": "cat"}],
        "annotations": [
            {"id": n + 1, "image_id": n + 1, "category_id": 7, "bbox": [10, 10, 20, 20]}
            for n in names
        ],
    }
    store.put_bytes(folder.join(f"coco-{names.start}.json"), json.dumps(coco).encode())


def _run(settings: Settings, tmp_path: Path) -> tuple[RunSummary, list[str]]:
    lines: list[str] = []
    instance = open_instance(tmp_path / "dagster")
    try:
        summary = run_pipeline(settings, instance, until="gold", echo=lines.append)
    finally:
        instance.dispose()
    assert not summary.failed, [r.metadata for r in summary.failed]
    return summary, lines


def _members(store: ObjectStore, uri: str) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(store.get_bytes(parse_s3_uri(uri)))) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def test_a_dataset_version_is_split_sharded_and_stable(
    settings: Settings, object_store: ObjectStore, tmp_path: Path
) -> None:
    _upload(settings, object_store, range(IMAGES))
    summary, _ = _run(settings, tmp_path)
    (train_run,) = [r for r in summary.runs if r.stage == "gold"]
    meta = train_run.metadata["training_shards"]
    store = open_manifest_store(settings.manifest_db_url)
    (record,) = store.manifests(TRAINING_SHARDS)
    doc = read_document(object_store, record, TrainingDatasetManifest)
    assert meta["dataset_version"] == doc.partition_key == record.partition_key
    assert doc.categories == ({"id": 7, "name": "cat"},)  # the user's id
    assert doc.variant == "360p"

    samples = {}
    for shard in doc.shards:
        members = _members(object_store, shard.uri)
        assert len(members) == 2 * shard.samples <= 2 * 5
        names = [name for name, _ in members]
        keys = [n.rsplit(".", 1)[0] for n in names[0::2]]
        assert names == [f"{k}.{ext}" for k in keys for ext in ("jpg", "json")]
        assert keys == sorted(keys)
        for (_, jpg), (_, label) in zip(members[0::2], members[1::2], strict=True):
            info = json.loads(label)
            assert info["split"] == shard.split
            assert jpg[:2] == b"\xff\xd8"
            samples[info["image"]["uri"]] = info
    # 12 originals + 12 copies, minus the copies of validation originals.
    originals = [s for s in samples.values() if s["image"]["kind"] == "original"]
    val = [s for s in samples.values() if s["split"] == "val"]
    assert len(originals) == IMAGES and val and all(s["image"]["kind"] == "original" for s in val)
    assert doc.counts == {"train": len(samples) - len(val), "val": len(val)}
    assert len(samples) == 2 * IMAGES - len(val)
    # A copy sits beside its original: train originals have theirs, val originals none.
    copies = [
        s["image"]["source_uri"] for s in samples.values() if s["image"]["kind"] != "original"
    ]
    for s in originals:
        key = s["image"]["source_uri"].split("/raw/", 1)[1]
        mine = [c for c in copies if f"/raw/{key}/aug-" in c]
        assert len(mine) == (1 if s["split"] == "train" else 0), key
    # Boxes are those of the normalized variant's COCO (100x80 stays 100x80 under 360p).
    assert all(
        [a["bbox"] for a in s["annotations"]] == [[10.0, 10.0, 20.0, 20.0]] for s in originals
    )

    # Same inputs: the runner sees nothing new, and building again writes nothing.
    summary, lines = _run(settings, tmp_path)
    assert summary.runs == [] and "[gold] the training dataset version is up to date" in lines
    nkeys = [NormalizeKey.parse(m.partition_key) for m in store.manifests(NORMALIZE)]
    (nkey,) = [k for k in nkeys if k.variant == "360p"]
    again = build_training_dataset(
        store=object_store,
        staging=NvmeStaging(tmp_path / "nvme2"),
        manifest=store,
        config=DatasetConfig(
            variant="360p",
            policy_hash=doc.normalization_policy_hash,
            augment_tag=nkey.tag,
            val_fraction=0.3,
            shard_images=5,
            training_uri=settings.training_uri,
            dataset_name="imageml",
        ),
        log_fn=lambda _m: None,
    )
    assert again.already_published and again.version == doc.partition_key

    # More images: a new version, and every earlier image keeps its side.
    _upload(settings, object_store, range(IMAGES, IMAGES + 4))
    _run(settings, tmp_path)
    newer = read_document(
        object_store, store.manifests(TRAINING_SHARDS)[-1], TrainingDatasetManifest
    )
    assert newer.partition_key != doc.partition_key
    sides = {}
    for shard in newer.shards:
        for _, label in _members(object_store, shard.uri)[1::2]:
            info = json.loads(label)
            sides[info["image"]["uri"]] = info["split"]
    assert {uri: sides.get(uri) for uri in samples} == {
        uri: s["split"] for uri, s in samples.items()
    }


def test_bad_training_settings_and_an_empty_gold_set_are_one_line_errors(
    settings: Settings, object_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAIN_VARIANT", "1080p")
    with pytest.raises(ConfigError, match="TRAIN_VARIANT='1080p' is not a normalized variant"):
        build_definitions(Settings.from_env())
    with pytest.raises(EmptyTrainingSet, match="no normalized image of variant '360p' yet"):
        build_training_dataset(
            store=object_store,
            staging=NvmeStaging(tmp_path / "nvme"),
            manifest=open_manifest_store(settings.manifest_db_url),
            config=DatasetConfig(
                "360p", "0" * 64, "light-00000000", 0.3, 5, settings.training_uri, "imageml"
            ),
            log_fn=lambda _m: None,
        )
    # `imageml run` with nothing normalized builds nothing and does not fail.
    _, lines = _run(settings, tmp_path)
    assert "[gold] nothing is normalized yet: no training dataset to build" in lines


def test_settings_changes_make_versions_and_a_deleted_image_is_left_out(
    settings: Settings,
    object_store: ObjectStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _upload(settings, object_store, range(6))
    _run(settings, tmp_path)
    store = open_manifest_store(settings.manifest_db_url)
    first = store.manifests(TRAINING_SHARDS)[-1].partition_key

    # Another shard size is another version; going back finds the first one again.
    monkeypatch.setenv("TRAIN_SHARD_IMAGES", "2")
    summary, lines = _run(Settings.from_env(), tmp_path)
    assert "[gold] building the training dataset version" in lines
    second = store.manifests(TRAINING_SHARDS)[-1].partition_key
    assert second != first
    monkeypatch.setenv("TRAIN_SHARD_IMAGES", "5")
    summary, lines = _run(Settings.from_env(), tmp_path)
    assert summary.runs == [] and "[gold] the training dataset version is up to date" in lines
    # ... and training follows the settings: it picks that first version, not the newest.
    now = Settings.from_env()
    inputs = _gold_inputs(store, now, build_resources(now))
    assert resolve_dataset(store, "", inputs=inputs).partition_key == first
    assert resolve_dataset(store, "").partition_key == second  # merely the newest

    # Lineage runs from a normalized image to the shard that holds it.
    doc = read_document(object_store, store.manifests(TRAINING_SHARDS)[0], TrainingDatasetManifest)
    shard, images = next(iter(doc.members.items()))
    upstream = {e.input_uri for e in store.lineage(shard).upstream}  # the whole chain
    assert set(images) <= upstream
    assert any(u.endswith("/raw/set/img00.jpg") for u in upstream)  # back to the raw image

    # A normalized image deleted before a build is left out and named; the set goes on.
    gone = images[0]
    target = parse_s3_uri(gone)
    object_store.client.delete_object(Bucket=target.bucket, Key=target.key)  # by hand
    monkeypatch.setenv("TRAIN_VAL_FRACTION", "0.5")
    summary, _ = _run(Settings.from_env(), tmp_path)
    newest = read_document(
        object_store, store.manifests(TRAINING_SHARDS)[-1], TrainingDatasetManifest
    )
    assert newest.left_out == {gone: "no longer exists"}
    assert gone not in {u for uris in newest.members.values() for u in uris}
    (run,) = [r for r in summary.runs if r.stage == "gold"]
    assert run.metadata["training_shards"]["left_out"] == 1


def _samples(store: ObjectStore, doc: TrainingDatasetManifest) -> dict[str, dict]:
    """Image URI -> its sample JSON, over every shard of ``doc``."""
    out = {}
    for shard in doc.shards:
        for _, label in _members(store, shard.uri)[1::2]:
            info = json.loads(label)
            out[info["image"]["uri"]] = info
    return out


def test_a_curated_prefix_filled_from_normalized_outputs_makes_a_version(
    settings: Settings,
    object_store: ObjectStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _upload(settings, object_store, range(IMAGES))
    _run(settings, tmp_path)
    store = open_manifest_store(settings.manifest_db_url)
    variant_doc = read_document(
        object_store, store.manifests(TRAINING_SHARDS)[-1], TrainingDatasetManifest
    )
    by_variant = _samples(object_store, variant_doc)

    # A user copies every normalized image of the variant into a curated prefix, flat.
    curated = settings.training_uri.join("curated")
    copies = {}
    for uri in by_variant:
        src = parse_s3_uri(uri)
        dst = curated.join(f"{hashlib.sha256(uri.encode()).hexdigest()[:12]}.jpg")
        object_store.client.copy_object(
            Bucket=dst.bucket, Key=dst.key, CopySource={"Bucket": src.bucket, "Key": src.key}
        )
        copies[str(dst)] = uri
    # ... plus a PNG (left out) and a COCO file that relabels one image.
    object_store.put_bytes(curated.join("notes.png"), b"\x89PNG\r\n\x1a\n")
    relabelled = sorted(copies)[0]
    name = parse_s3_uri(relabelled).key.rsplit("/", 1)[-1]
    coco = {
        "images": [{"id": 1, "file_name": name, "width": 100, "height": 80}],
        "categories": [{"id": 7, "name": "cat"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 4]}],
    }
    object_store.put_bytes(curated.join("fixes.coco.json"), json.dumps(coco).encode())

    monkeypatch.setenv("TRAIN_CURATED_URI", str(curated))
    summary, lines = _run(Settings.from_env(), tmp_path)
    assert "[gold] building the training dataset version" in lines
    doc = read_document(object_store, store.manifests(TRAINING_SHARDS)[-1], TrainingDatasetManifest)
    assert doc.partition_key != variant_doc.partition_key and doc.variant == "curated"
    assert doc.left_out == {
        str(curated.join("notes.png")): "not a JPEG: a curated prefix takes normalized "
        "outputs (JPEG) and COCO files"
    }
    assert doc.categories == ({"id": 7, "name": "cat"},)
    got = _samples(object_store, doc)
    assert set(got) == set(copies)
    for uri, sample in got.items():
        original = by_variant[copies[uri]]
        # Same side as in the variant's version (the split follows the source image), and
        # an augmented copy is known as one (it never lands in val).
        assert sample["split"] == original["split"], uri
        # Bytes equal to an original's (a copy no transform changed) count as that original.
        originals = {
            s["image"]["sha256"] for s in by_variant.values() if s["image"]["kind"] == "original"
        }
        kind = "original" if sample["image"]["sha256"] in originals else original["image"]["kind"]
        assert sample["image"]["kind"] == kind, uri
        expected = (
            [[1, 2, 3, 4]] if uri == relabelled else [a["bbox"] for a in original["annotations"]]
        )
        assert [a["bbox"] for a in sample["annotations"]] == expected, uri

    # Unchanged prefix: nothing to build, found from the listing alone.
    summary, lines = _run(Settings.from_env(), tmp_path)
    assert summary.runs == [] and "[gold] the training dataset version is up to date" in lines
    # An empty curated prefix is said so, not a failure.
    monkeypatch.setenv("TRAIN_CURATED_URI", str(settings.training_uri.join("empty")))
    summary, lines = _run(Settings.from_env(), tmp_path)
    assert not summary.failed
    assert any("nothing in s3://" in line and "/gold/empty" in line for line in lines), lines
