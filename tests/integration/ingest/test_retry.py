"""A crash between outputs and the manifest: the retry reuses the checkpoint and publishes once."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageml_core.discovery import DiscoveryCursor, discover
from imageml_core.manifest import INGEST, SqlManifestStore
from imageml_core.stages.ingest.batch import IngestConfig, UnknownBatch, ingest_batch
from imageml_core.storage.object_store import ObjectStore
from imageml_core.storage.staging import NvmeStaging
from imageml_core.uris import S3Uri
from tests.helpers import jpeg_bytes, table_counts


def test_crash_before_publish_then_retry(
    object_store: ObjectStore, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, bronze = S3Uri(bucket, "raw"), S3Uri(bucket, "bronze")
    for i in range(4):
        object_store.put_bytes(raw.join(f"{i}.jpg"), jpeg_bytes(i))
    store = SqlManifestStore(f"sqlite:///{tmp_path / 'm.db'}")
    store.migrate()
    found = discover(
        object_store,
        store,
        raw,
        DiscoveryCursor(),
        max_objects=10,
        max_bytes=10**9,
        full_scan_every=1,
        source="run",
    )
    (batch,) = found.new_batches
    config = IngestConfig(raw, bronze, "ds", max_image_pixels=10**8)
    staging = NvmeStaging(tmp_path / "nvme")

    def crash(_: object) -> bool:
        raise RuntimeError("node lost")

    monkeypatch.setattr(store, "publish", crash)
    with pytest.raises(RuntimeError, match="node lost"):
        ingest_batch(
            batch.batch_id, store=object_store, staging=staging, manifest=store, config=config
        )
    # Outputs first: the manifest JSON is in S3, but nothing is recorded as processed.
    assert object_store.head(bronze.join("manifests/ingest", f"{batch.batch_id}.json")) is not None
    assert store.processed_objects(INGEST) == []
    monkeypatch.undo()

    downloads: list[str] = []
    real_download = ObjectStore.download_file

    def counting(self: ObjectStore, uri: S3Uri, path: Path, **kw: object):  # type: ignore[no-untyped-def]
        downloads.append(uri.key)
        return real_download(self, uri, path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ObjectStore, "download_file", counting)
    result = ingest_batch(
        batch.batch_id,
        store=object_store,
        staging=NvmeStaging(tmp_path / "nvme2"),
        manifest=store,
        config=config,
    )
    assert downloads == []  # every image came from the checkpoint
    assert result.counts.images == 4
    assert result.new_objects_written == 0  # the same manifest bytes were already there
    counts = table_counts(store)
    again = ingest_batch(
        batch.batch_id, store=object_store, staging=staging, manifest=store, config=config
    )
    assert again.already_published
    assert table_counts(store) == counts
    with pytest.raises(UnknownBatch, match="no planned ingest batch"):
        ingest_batch(
            "batch-0000", store=object_store, staging=staging, manifest=store, config=config
        )
    store.close()


def test_a_run_cleans_up_only_its_own_staging_directories(
    object_store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    """Two runs on one node (same NVMe root) stage the same batch: the one that finishes
    first must not delete the other's files (it used to, failing that batch)."""
    from imageml_core.storage.staging import job_name

    raw, bronze = S3Uri(bucket, "raw"), S3Uri(bucket, "bronze")
    object_store.put_bytes(raw.join("0.jpg"), jpeg_bytes(0))
    store = SqlManifestStore(f"sqlite:///{tmp_path / 'm.db'}")
    store.migrate()
    (batch,) = discover(
        object_store,
        store,
        raw,
        DiscoveryCursor(),
        max_objects=10,
        max_bytes=10**9,
        full_scan_every=1,
        source="run",
    ).new_batches
    staging = NvmeStaging(tmp_path / "nvme")
    # The other run, mid-flight: its staged input and its scratch space.
    other = job_name("ingest", batch.batch_id, "run-other")
    staged = staging.area("input", other) / "in-flight.jpg"
    staged.write_bytes(b"staged by the other run")
    scratch = staging.area("work", other) / "expanding"
    scratch.mkdir()
    result = ingest_batch(
        batch.batch_id,
        store=object_store,
        staging=staging,
        manifest=store,
        config=IngestConfig(raw, bronze, "ds", max_image_pixels=10**8),
        run_id="run-this",
    )
    assert result.counts.images == 1
    assert staged.read_bytes() == b"staged by the other run" and scratch.is_dir()
    assert not (
        tmp_path / "nvme" / "input" / job_name("ingest", batch.batch_id, "run-this")
    ).exists()
    store.close()
