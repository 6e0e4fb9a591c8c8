"""Secrets never reach Dagster: not its snapshots (what the UI reads), run config, tags or
event log. The manifest store's URL carries a password; it reaches its resource as
``dg.EnvVar("MANIFEST_DB_URL")``."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster_shared.serdes import serialize_value

from imageml_assets.definitions import build_definitions
from imageml_cli.main import cli
from imageml_cli.runner import open_instance, run_pipeline
from imageml_core.discovery import DiscoveryCursor, discover
from imageml_core.manifest import INGEST
from imageml_core.settings import ConfigError, Settings
from imageml_core.storage.object_store import ObjectStore
from imageml_resources import ManifestStoreResource, build_resources, open_manifest_store
from tests.helpers import jpeg_bytes

PASSWORD = "Sup3r-Secret-pa55"


def _with_password(pg_url: str) -> str:
    """The test database's URL with a password (trust auth ignores it, so it still works)."""
    scheme, rest = pg_url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{PASSWORD}@{host}"


def _repository_snapshot(defs: dg.Definitions) -> str:
    """What the webserver serves the UI: every job's config schema with its defaults."""
    return serialize_value(RepositorySnap.from_def(defs.get_repository_def()))


@pytest.fixture
def secret_env(
    s3_env: dict[str, str], pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    env = {**s3_env, "MANIFEST_DB_URL": _with_password(pg_url)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_a_literal_url_would_show_in_the_snapshot(secret_env: dict[str, str]) -> None:
    """The control: the check below does find a password Dagster was given as config."""

    @dg.asset
    def uses(manifest_store: ManifestStoreResource) -> None: ...

    leaky = dg.Definitions(
        assets=[uses],
        resources={"manifest_store": ManifestStoreResource(url=secret_env["MANIFEST_DB_URL"])},
    )
    assert PASSWORD in _repository_snapshot(leaky)


def test_the_password_in_manifest_db_url_reaches_no_dagster_snapshot_or_run(
    secret_env: dict[str, str], object_store: ObjectStore
) -> None:
    settings = Settings.from_env()
    assert PASSWORD in settings.manifest_db_url
    defs = build_definitions(settings)
    snapshot = _repository_snapshot(defs)
    assert PASSWORD not in snapshot
    assert "MANIFEST_DB_URL" in snapshot  # the UI shows which variable it comes from

    # A real run: the resource reads the variable where the run executes, and the store
    # it opens is the one the URL names.
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
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("ingest_batches", [batch.batch_id])
        result = defs.resolve_job_def("ingest_and_augment_job").execute_in_process(
            instance=instance,
            partition_key=batch.batch_id,
            asset_selection=[dg.AssetKey("raw_images")],
        )
        assert result.success
        assert [r.uri for r in store.processed_objects(INGEST)] == [
            str(settings.raw_uri.join("a.jpg"))
        ]
        run = instance.get_run_by_id(result.run_id)
        assert run is not None
        for stored in (run.run_config, run.tags, instance.all_logs(result.run_id)):
            assert PASSWORD not in serialize_value(stored)


def test_a_password_that_is_not_from_the_environment_is_refused(
    secret_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings made in code (not from the environment) cannot be turned into an EnvVar:
    a URL with a password is refused rather than stored in plain text."""
    settings = Settings.from_env()
    monkeypatch.delenv("MANIFEST_DB_URL")
    with pytest.raises(ConfigError, match="MANIFEST_DB_URL carries a password"):
        build_resources(settings)


def test_a_url_from_a_secret_file_with_a_trailing_newline_still_works(
    secret_env: dict[str, str],
    object_store: ObjectStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kubernetes secrets made from files often end in a newline: Settings strips it, and
    the resources strip what their EnvVar hands over the same way."""
    monkeypatch.setenv("MANIFEST_DB_URL", secret_env["MANIFEST_DB_URL"] + "\n")
    settings = Settings.from_env()
    object_store.put_bytes(settings.raw_uri.join("a.jpg"), jpeg_bytes(1))
    instance = open_instance(tmp_path / "dagster")
    summary = run_pipeline(settings, instance, until="ingest", echo=lambda _m: None)
    instance.dispose()
    assert not summary.failed, [r.metadata for r in summary.failed]
    store = open_manifest_store(settings.manifest_db_url)
    assert [r.uri for r in store.processed_objects(INGEST)] == [str(settings.raw_uri.join("a.jpg"))]


def test_the_cli_never_prints_the_password(secret_env: dict[str, str], tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["lineage", "s3://imageml/raw/none.jpg", "--home", str(tmp_path)], env=secret_env
    )
    assert result.exit_code == 1
    assert "is not in the manifest store at postgresql+psycopg2://postgres:***@" in result.output
    assert PASSWORD not in result.output
