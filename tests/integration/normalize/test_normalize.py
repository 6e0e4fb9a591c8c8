"""Stage 2 end to end on real S3: `imageml run --until normalize` (issue 4 acceptance)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imageml_cli.main import cli
from imageml_core.manifest import NORMALIZE, SqlManifestStore
from imageml_core.storage.object_store import ObjectStore
from imageml_core.uris import S3Uri, parse_s3_uri
from tests.helpers import table_counts


def _photo(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (height // 50 + 1, width // 50 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _run(env: dict[str, str], home: Path) -> str:
    result = CliRunner().invoke(cli, ["run", "--until", "normalize", "--home", str(home)], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def _dims(store: ObjectStore, uri: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(store.get_bytes(parse_s3_uri(uri)))) as img:
        return img.size


@pytest.fixture
def env(s3_env: dict[str, str], pg_url: str) -> dict[str, str]:
    return {
        **s3_env,
        "MANIFEST_DB_URL": pg_url,
        "NORMALIZE_SIZES": "1080p,720p,800x600",
        "AUGMENT_PIPELINE": "light",
        "AUGMENT_COPIES": "1",
    }


def test_variants_dimensions_manifests_policy_hash_and_idempotent_rerun(
    env: dict[str, str], object_store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    raw = S3Uri(bucket, "raw")
    object_store.put_bytes(raw.join("big.jpg"), _photo(4000, 3000, 1))
    object_store.put_bytes(raw.join("small.jpg"), _photo(1000, 500, 2))
    _run(env, tmp_path / "home")

    store = SqlManifestStore(env["MANIFEST_DB_URL"])
    published = store.manifests(NORMALIZE)
    assert sorted(m.details["variant"] for m in published) == ["1080p", "720p", "800x600"]
    expected = {
        "1080p": {"big": (1440, 1080), "small": (1000, 500)},
        "720p": {"big": (960, 720), "small": (1000, 500)},
        "800x600": {"big": (800, 600), "small": (800, 600)},
    }
    rows = store.processed_objects(NORMALIZE)
    assert len(rows) == 3 * 4  # 2 originals + 2 augmented copies, 3 variants each
    for m in published:
        variant = m.details["variant"]
        doc = json.loads(object_store.get_bytes(parse_s3_uri(m.manifest_uri)))
        assert doc["variant_name"] == variant
        no_problems = {"missing_sources": [], "wrong_dimensions": [], "quarantined": {}}
        assert doc["checks"] == m.details["checks"] == no_problems
        assert len(doc["outputs"]) == 4
        assert m.manifest_uri.startswith(f"s3://{bucket}/silver/normalized/{variant}/")
        for out in doc["outputs"]:
            assert {
                "source_uri",
                "variant_name",
                "output_uri",
                "width",
                "height",
                "normalization_policy_hash",
                "sha256",
            } <= out.keys()
            assert out["output_uri"].startswith(f"s3://{bucket}/silver/normalized/{variant}/")
            name = "big" if "big.jpg" in out["source_uri"] else "small"
            assert (out["width"], out["height"]) == expected[variant][name]
            assert _dims(object_store, out["output_uri"]) == expected[variant][name]
            assert out["normalization_policy_hash"] == doc["normalization_policy_hash"]
        ledger = {r.uri: r for r in rows}
        for out in doc["outputs"]:
            details = ledger[out["output_uri"]].details
            assert details["normalization_policy_hash"] == out["normalization_policy_hash"]
            assert (details["width"], details["height"]) == (out["width"], out["height"])
            assert details["source_uri"] == out["source_uri"]

    # Same settings again: nothing changes, not a row, not an object.
    before_rows = table_counts(store)
    before_objects = {o.uri.key: o.etag for o in object_store.list_objects(S3Uri(bucket, ""))}
    output = _run(env, tmp_path / "home")
    assert "[normalize] 0 (batch, variant) partition(s)" in output
    assert table_counts(store) == before_rows
    assert {
        o.uri.key: o.etag for o in object_store.list_objects(S3Uri(bucket, ""))
    } == before_objects

    # A different quality is a different policy: new hashes, outputs beside the old ones.
    _run({**env, "NORMALIZE_QUALITY": "80"}, tmp_path / "home")
    hashes = {}
    for m in store.manifests(NORMALIZE):
        hashes.setdefault(m.details["variant"], set()).add(m.details["normalization_policy_hash"])
    assert all(len(h) == 2 for h in hashes.values())
    after_objects = {o.uri.key: o.etag for o in object_store.list_objects(S3Uri(bucket, ""))}
    assert before_objects.items() <= after_objects.items()  # nothing overwritten
    store.close()


def test_bad_size_tokens_fail_with_the_token_named(env: dict[str, str], tmp_path: Path) -> None:
    for token, message in [
        ("0x600", "'0x600'"),
        ("abc", "'abc'"),
        ("99999x99999", "'99999x99999'"),
        ("720p,720p", "'720p' is listed twice"),
    ]:
        result = CliRunner().invoke(
            cli, ["run", "--home", str(tmp_path)], env={**env, "NORMALIZE_SIZES": token}
        )
        assert result.exit_code == 1, result.output
        assert "NORMALIZE_SIZES" in result.output and message in result.output
    flag = CliRunner().invoke(
        cli, ["run", "--sizes", "1080p,0x600", "--home", str(tmp_path)], env=env
    )
    assert flag.exit_code == 2
    assert "--sizes" in flag.output and "'0x600'" in flag.output


def _augmented_batch_of_three(
    env: dict[str, str], object_store: ObjectStore, bucket: str, home: Path
) -> SqlManifestStore:
    """Three 800x600 photos in raw storage, taken through stage 1 by the CLI."""
    raw = S3Uri(bucket, "raw")
    for i in range(3):
        object_store.put_bytes(raw.join(f"{i}.jpg"), _photo(800, 600, i))
    result = CliRunner().invoke(cli, ["run", "--until", "augment", "--home", str(home)], env=env)
    assert result.exit_code == 0, result.output
    return SqlManifestStore(env["MANIFEST_DB_URL"])


def test_concurrent_variant_partitions_decode_each_source_once(
    env: dict[str, str], object_store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from imageml_core.manifest import INGEST
    from imageml_core.sizes import parse_sizes
    from imageml_core.stages.augment.pipeline import load_pipeline
    from imageml_core.stages.normalize.image import NormalizePolicy
    from imageml_core.stages.normalize.partition import NormalizeConfig, normalize_partition
    from imageml_core.storage.staging import NvmeStaging

    store = _augmented_batch_of_three(env, object_store, bucket, tmp_path / "h")
    (batch,) = [m.partition_key for m in store.manifests(INGEST)]
    policy = NormalizePolicy(tuple(parse_sizes("1080p,720p,800x600")))
    config = NormalizeConfig(
        S3Uri(bucket, "silver"),
        "imageml",
        load_pipeline("light", copies=1).tag,
        workers=1,
        lease_poll_s=0.2,
    )

    def one(variant: str):  # type: ignore[no-untyped-def]
        return normalize_partition(
            batch,
            variant,
            store=object_store,
            staging=NvmeStaging(tmp_path / f"nvme-{variant}"),
            manifest=SqlManifestStore(env["MANIFEST_DB_URL"]),
            policy=policy,
            config=config,
            run_id=f"run-{variant}",
            log_fn=lambda _m: None,
        )

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(one, ["1080p", "720p", "800x600"]))
    assert [r.computed for r in results].count(True) == 1
    assert all(r.outputs == 6 and not r.already_published for r in results)
    assert len(store.manifests(NORMALIZE)) == 3
    store.close()


def test_sources_changed_or_gone_since_augment_are_quarantined_and_the_batch_goes_on(
    env: dict[str, str], object_store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    from imageml_core.manifest import AUGMENT

    store = _augmented_batch_of_three(env, object_store, bucket, tmp_path / "h")
    (augment,) = store.manifests(AUGMENT)
    doc = json.loads(object_store.get_bytes(parse_s3_uri(augment.manifest_uri)))
    doc_outputs = doc["outputs"]
    changed, gone = (parse_s3_uri(o["uri"]) for o in doc_outputs[:2])
    # Someone else touches the augmented copies between the stages.
    object_store.put_bytes(changed, _photo(640, 480, 99))
    object_store.client.delete_object(Bucket=gone.bucket, Key=gone.key)

    output = _run(env, tmp_path / "h")
    assert f"quarantined {changed}: changed since it was recorded" in output
    assert f"quarantined {gone}: no longer exists" in output
    # The run's summary names the failing asset check and why, per variant partition.
    assert output.count("check FAILED normalized_variants every_source_has_this_variant") == 3
    assert f"quarantined: {gone}: no longer exists" in output
    published = store.manifests(NORMALIZE)
    assert len(published) == 3
    for m in published:
        checks = m.details["checks"]
        assert checks["missing_sources"] == sorted([str(changed), str(gone)])
        assert set(checks["quarantined"]) == {str(changed), str(gone)}
        doc = json.loads(object_store.get_bytes(parse_s3_uri(m.manifest_uri)))
        assert len(doc["outputs"]) == 4  # the other 2 originals + 2 copies
        reasons = {q["source_uri"]: q["reason"] for q in doc["quarantined"]}
        assert reasons[str(gone)] == "no longer exists"
        assert reasons[str(changed)].startswith("changed since it was recorded (ETag ")
    # One ledger row per quarantined source, with the ETag stage 1 recorded, whichever
    # variant partition published it (the others reuse the batch checkpoint).
    recorded = {o["uri"]: o["etag"] for o in doc_outputs}
    rows = [r for r in store.processed_objects(NORMALIZE) if r.status != "ok"]
    assert sorted(r.uri for r in rows) == sorted([str(changed), str(gone)])
    assert all(r.etag == recorded[r.uri] for r in rows)
    assert next(r for r in rows if r.uri == str(gone)).reason == "no longer exists"
    store.close()


def test_a_transient_staging_failure_fails_the_batch_instead_of_quarantining(
    env: dict[str, str],
    object_store: ObjectStore,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from imageml_core.manifest import INGEST
    from imageml_core.sizes import parse_sizes
    from imageml_core.stages.augment.pipeline import load_pipeline
    from imageml_core.stages.normalize.image import NormalizePolicy
    from imageml_core.stages.normalize.partition import NormalizeConfig, normalize_partition
    from imageml_core.storage.object_store import TransferFailed
    from imageml_core.storage.staging import NvmeStaging

    store = _augmented_batch_of_three(env, object_store, bucket, tmp_path / "h")
    (batch,) = [m.partition_key for m in store.manifests(INGEST)]
    config = NormalizeConfig(
        S3Uri(bucket, "silver"), "imageml", load_pipeline("light", copies=1).tag
    )
    policy = NormalizePolicy(tuple(parse_sizes("720p")))
    real_download = object_store.download_file

    def flaky(uri: S3Uri, path: Path, **kwargs):  # type: ignore[no-untyped-def]
        if uri.key.endswith("1.jpg"):  # our own method, failing as a dropped connection does
            raise TransferFailed(f"download {uri}: error sending request (connection reset)")
        return real_download(uri, path, **kwargs)

    def run() -> object:
        return normalize_partition(
            batch,
            "720p",
            store=object_store,
            staging=NvmeStaging(tmp_path / "nvme-stage2"),  # no cache from stage 1
            manifest=store,
            policy=policy,
            config=config,
            log_fn=lambda _m: None,
        )

    monkeypatch.setattr(object_store, "download_file", flaky)
    with pytest.raises(TransferFailed, match="connection reset"):
        run()
    assert store.manifests(NORMALIZE) == []  # nothing published without that source
    monkeypatch.setattr(object_store, "download_file", real_download)
    result = run()
    assert result.outputs == 6 and result.checks is not None  # type: ignore[attr-defined]
    assert result.checks.missing_sources == ()  # type: ignore[attr-defined]
    assert result.checks.quarantined == {}  # type: ignore[attr-defined]
    store.close()


def test_a_source_that_no_longer_decodes_is_reported_not_raised(tmp_path: Path) -> None:
    from imageml_core.sizes import parse_sizes
    from imageml_core.stages.normalize.batch import normalize_file
    from imageml_core.stages.normalize.image import NormalizePolicy

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    policy = NormalizePolicy(tuple(parse_sizes("720p")))
    result = normalize_file((str(broken), "b/broken.jpg", policy, str(tmp_path / "out")))
    assert result.error is not None
    assert result.error.startswith("UnidentifiedImageError: cannot identify image file")


def test_a_new_augmentation_is_normalized_too(
    env: dict[str, str], object_store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    """Raising AUGMENT_COPIES makes a new augment shard (a new tag); stage 2 normalizes it
    as a partition of its own instead of finding the old shard's partition published."""
    raw = S3Uri(bucket, "raw")
    object_store.put_bytes(raw.join("a.jpg"), _photo(800, 600, 1))
    _run({**env, "NORMALIZE_SIZES": "720p"}, tmp_path / "home")
    _run({**env, "NORMALIZE_SIZES": "720p", "AUGMENT_COPIES": "2"}, tmp_path / "home")
    store = SqlManifestStore(env["MANIFEST_DB_URL"])
    published = store.manifests(NORMALIZE)
    assert len(published) == 2  # one per augmentation of the batch
    assert len({m.manifest_uri for m in published}) == 2
    outputs = [r for r in store.processed_objects(NORMALIZE) if r.ok]
    # The original once (same bytes, same key) + its 1 copy + its 2 new copies.
    assert len({r.uri for r in outputs}) == 4
    assert sorted(m.details["outputs"] for m in published) == [2, 3]
    store.close()
