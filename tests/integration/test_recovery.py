"""After a crash (issue 10, part 3): a run left STARTED by a dead process is marked failed,
and a partition published in the manifest store but missing from Dagster (killed right
after publishing) gets its materialization, by the next ``imageml run``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from imageml_assets.definitions import build_definitions
from imageml_cli.recovery import HOST_TAG, PID_TAG, STARTED_TAG, run_tags
from imageml_cli.runner import open_instance, run_pipeline
from imageml_core.discovery import DiscoveryCursor, discover
from imageml_core.settings import Settings
from imageml_core.stages.ingest.batch import IngestConfig, ingest_batch
from imageml_core.storage.object_store import ObjectStore
from imageml_core.storage.staging import NvmeStaging
from imageml_resources import open_manifest_store
from tests.helpers import jpeg_bytes


@pytest.fixture
def settings(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in {**s3_env, "NORMALIZE_SIZES": "720p"}.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_left_started_by_a_dead_process_is_marked_failed(
    settings: Settings, tmp_path: Path
) -> None:
    instance = open_instance(tmp_path / "dagster")
    job = build_definitions(settings).resolve_job_def("ingest_and_augment_job")
    dead = instance.create_run_for_job(
        job, status=dg.DagsterRunStatus.STARTED, tags={**run_tags(), PID_TAG: str(_dead_pid())}
    )
    alive = instance.create_run_for_job(
        job,
        status=dg.DagsterRunStatus.STARTED,
        tags=run_tags(),  # this very process
    )
    foreign = instance.create_run_for_job(
        job, status=dg.DagsterRunStatus.STARTED, tags={HOST_TAG: "another-host", PID_TAG: "1"}
    )
    # A container restarted: the command has the same pid as before, but is another
    # process (started at another time). The earlier run is dead.
    reused = instance.create_run_for_job(
        job, status=dg.DagsterRunStatus.STARTED, tags={**run_tags(), STARTED_TAG: "1"}
    )
    # What a killed process leaves on the node: its job folders (its finally never ran).
    staging = NvmeStaging(settings.nvme_root)
    left = [
        staging.area("input", f"ingest-b1-{dead.run_id}"),
        staging.area("work", f"normalize-b1-{dead.run_id}"),
    ]
    for folder in left:
        (folder / "x.jpg").write_bytes(b"x")
    live = staging.area("input", f"ingest-b2-{alive.run_id}")
    lines: list[str] = []
    run_pipeline(settings, instance, until="ingest", echo=lines.append)
    assert not any(folder.exists() for folder in left)
    assert live.is_dir()  # a live run's folders are its own
    assert "[recovery] removed 2 staging folder(s) of dead runs" in lines
    runs = (dead, alive, foreign, reused)
    status = [instance.get_run_by_id(r.run_id).status for r in runs]  # type: ignore[union-attr]
    assert status == [
        dg.DagsterRunStatus.FAILURE,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.STARTED,  # another host's: not ours to judge (run monitoring's)
        dg.DagsterRunStatus.FAILURE,
    ]
    assert any(f"run {dead.run_id} was left running by a dead process" in line for line in lines)
    instance.dispose()


def test_a_partition_published_but_not_recorded_by_dagster_is_reconciled(
    settings: Settings, object_store: ObjectStore, tmp_path: Path
) -> None:
    object_store.put_bytes(settings.raw_uri.join("a.jpg"), jpeg_bytes(1))
    store = open_manifest_store(settings.manifest_db_url)
    (batch,) = discover(
        object_store,
        store,
        settings.raw_uri,
        DiscoveryCursor(),
        max_objects=10,
        max_bytes=10**9,
        full_scan_every=1,
        source="run",
    ).new_batches
    # The stage ran and published; the process died before Dagster recorded anything.
    ingest_batch(
        batch.batch_id,
        store=object_store,
        staging=NvmeStaging(settings.nvme_root),
        manifest=store,
        config=IngestConfig(
            settings.raw_uri, settings.bronze_uri, "imageml", settings.max_image_pixels
        ),
        log_fn=lambda _m: None,
    )
    instance = open_instance(tmp_path / "dagster")
    assert instance.get_materialized_partitions(dg.AssetKey("raw_images")) == set()
    lines: list[str] = []
    summary = run_pipeline(settings, instance, until="normalize", echo=lines.append)
    assert not summary.failed
    assert instance.get_materialized_partitions(dg.AssetKey("raw_images")) == {batch.batch_id}
    (event,) = instance.fetch_materializations(dg.AssetKey("raw_images"), limit=10).records
    assert event.run_id == ""  # reported from the manifest store, not by a run
    assert "imageml/reconciled" in event.asset_materialization.metadata  # type: ignore[union-attr]
    assert any("not recorded by Dagster" in line for line in lines)
    # The later stages then ran for that batch, and a second run reconciles nothing.
    assert instance.get_materialized_partitions(dg.AssetKey("augmented_images")) == {batch.batch_id}
    again: list[str] = []
    run_pipeline(settings, instance, until="normalize", echo=again.append)
    assert not any("[recovery]" in line for line in again)
    instance.dispose()
