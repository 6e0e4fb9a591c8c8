"""Bronze ingest end to end on a real S3 server and PostgreSQL, through `imageml run`."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from imageml_cli.main import cli
from imageml_core.manifest import INGEST, SqlManifestStore
from imageml_core.storage.object_store import ObjectStore
from imageml_core.uris import S3Uri
from tests.helpers import jpeg_bytes, table_counts, zip_bytes


def _snapshot(store: ObjectStore, bucket: str) -> dict[str, tuple[str, object]]:
    return {str(o.uri): (o.etag, o.last_modified) for o in store.list_objects(S3Uri(bucket, ""))}


def _run(env: dict[str, str], home: Path) -> str:
    result = CliRunner().invoke(
        cli, ["run", "--until", "ingest", "--home", str(home)], env=env, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def pg_env(s3_env: dict[str, str], pg_url: str) -> dict[str, str]:
    return {**s3_env, "MANIFEST_DB_URL": pg_url, "INGEST_BATCH_MAX_OBJECTS": "20"}


def test_fifty_images_once_then_nothing_then_only_new(
    pg_env: dict[str, str], object_store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    raw = S3Uri(bucket, "raw")
    for i in range(45):
        object_store.put_bytes(raw.join(f"cams/{i:03d}.jpg"), jpeg_bytes(i))
    archive = zip_bytes({f"inner/z{i}.jpg": jpeg_bytes(100 + i) for i in range(5)})
    object_store.put_bytes(raw.join("cams/archive.zip"), archive)

    _run(pg_env, tmp_path / "home")
    store = SqlManifestStore(pg_env["MANIFEST_DB_URL"])
    rows = store.processed_objects(INGEST)
    images = [
        r for r in rows if r.status == "ok" and r.details["kind"] in ("image", "archive_member")
    ]
    assert len(images) == 50
    assert len({r.uri for r in images}) == 50  # each image exactly once
    members = [r for r in images if r.details["kind"] == "archive_member"]
    assert sorted(r.uri.rsplit("/", 1)[-1] for r in members) == [f"z{i}.jpg" for i in range(5)]
    assert all(
        r.uri.startswith(f"s3://{bucket}/bronze/unzipped/cams%2Farchive.zip/") for r in members
    )
    assert all(len(r.content_sha256) == 64 for r in images)
    # 46 raw objects with at most 20 per batch -> 3 batches, each a dataset version + manifest.
    assert len(store.manifests(INGEST)) == 3
    assert len(store.dataset_versions("imageml")) == 3
    for m in store.manifests(INGEST):
        assert object_store.head(S3Uri(bucket, m.manifest_uri.split("/", 3)[3])) is not None
    lineage = store.lineage(f"s3://{bucket}/raw/cams/archive.zip")
    assert len(lineage.downstream) == 5

    before_rows, before_objects = table_counts(store), _snapshot(object_store, bucket)
    output = _run(pg_env, tmp_path / "home")
    assert "[ingest] 0 new batch(es)" in output
    after_rows = table_counts(store)
    # The mirror may add nothing either: no run happened.
    assert after_rows == before_rows
    assert _snapshot(object_store, bucket) == before_objects

    for i in range(3):
        object_store.put_bytes(raw.join(f"late/{i}.jpg"), jpeg_bytes(500 + i))
    _run(pg_env, tmp_path / "home")
    rows_after = store.processed_objects(INGEST)
    new = {r.uri for r in rows_after} - {r.uri for r in rows}
    assert new == {f"s3://{bucket}/raw/late/{i}.jpg" for i in range(3)}
    assert len(store.manifests(INGEST)) == 4
    store.close()


def test_bad_objects_are_quarantined_with_reasons_and_left_in_place(
    s3_env: dict[str, str], object_store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    raw = S3Uri(bucket, "raw")
    good = jpeg_bytes(1)
    bad = {
        "empty.jpg": b"",
        "truncated.jpg": good[: len(good) // 2],
        "text.png": b"hello, not an image",
        "broken.zip": b"PK\x03\x04 this is not really a zip",
        "bad.json": b"{not json",
    }
    for name, data in bad.items():
        object_store.put_bytes(raw.join(name), data)
    object_store.put_bytes(raw.join("ok.jpg"), good)
    object_store.put_bytes(
        raw.join("mixed.zip"),
        zip_bytes(
            {
                "a.jpg": jpeg_bytes(2),
                "../escape.jpg": good,
                "__MACOSX/._a.jpg": b"x",
                "c.txt": b"text",
            }
        ),
    )
    _run(s3_env, tmp_path / "home")
    store = SqlManifestStore(s3_env["MANIFEST_DB_URL"])
    by_uri = {r.uri: r for r in store.processed_objects(INGEST)}
    reasons = {
        uri.rsplit("/", 1)[-1]: r.reason for uri, r in by_uri.items() if r.status == "quarantined"
    }
    assert reasons["empty.jpg"] == "empty object (0 bytes)"
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["text.png"]
    assert "not a valid ZIP" in reasons["broken.zip"]
    assert "not valid JSON" in reasons["bad.json"]
    assert any("unsafe member name" in (r.reason or "") for r in by_uri.values())
    assert any(
        uri.endswith("mixed.zip#c.txt") and r.status == "quarantined" for uri, r in by_uri.items()
    )
    assert any(
        uri.endswith("#__MACOSX/._a.jpg") and r.status == "skipped" for uri, r in by_uri.items()
    )
    assert by_uri[f"s3://{bucket}/raw/ok.jpg"].status == "ok"
    # Nothing in raw storage is deleted or changed.
    for name, data in bad.items():
        assert object_store.get_bytes(raw.join(name)) == data
    store.close()


def test_nvme_min_gb_larger_than_free_space_fails_before_download(
    s3_env: dict[str, str], object_store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    object_store.put_bytes(S3Uri(bucket, "raw/a.jpg"), jpeg_bytes(1))
    env = {**s3_env, "NVME_MIN_GB": "1000000"}
    result = CliRunner().invoke(cli, ["run", "--home", str(tmp_path / "home")], env=env)
    assert result.exit_code == 1
    assert "NVME_MIN_GB=1e+06 GB" in result.output or "NVME_MIN_GB=1000000 GB" in result.output
    assert "GB free" in result.output
    staged = [p for p in Path(env["NVME_ROOT"], "input").rglob("*") if p.is_file()]
    assert staged == []
