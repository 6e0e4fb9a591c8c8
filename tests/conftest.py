"""Shared fixtures: a real SeaweedFS S3 server and real PostgreSQL for the whole session.

Nothing here skips: if PostgreSQL on 127.0.0.1:5432 or the SeaweedFS binary is missing,
the tests that need them fail with a message saying what to start.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from imageml_core.manifest import SqlManifestStore
from imageml_core.storage.object_store import ObjectStore
from imageml_dev.embedded_mlflow import EmbeddedMlflow
from imageml_dev.embedded_s3 import EmbeddedS3

PG_ADMIN_URL = os.environ.get(
    "IMAGEML_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    server = EmbeddedS3(tmp_path_factory.mktemp("seaweedfs") / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()  # wait for exit before pytest removes the data directory


@pytest.fixture(scope="session")
def mlflow_server(
    s3_server: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedMlflow]:
    """An MLflow tracking server (SQLite store, artifacts proxied to bucket
    ``mlflow-artifacts`` of the session's S3 server), started on first use (~30 s)."""
    ObjectStore(
        s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    ).ensure_bucket("mlflow-artifacts")
    server = EmbeddedMlflow(
        tmp_path_factory.mktemp("mlflow") / "data",
        s3_endpoint_url=s3_server.endpoint_url,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        artifacts_uri="s3://mlflow-artifacts/artifacts",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()  # before the S3 server stops and pytest removes the directory


@pytest.fixture
def mlflow_tracking_uri(
    mlflow_server: EmbeddedMlflow, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The session's MLflow server URI, also set as ``MLFLOW_TRACKING_URI`` for this test
    (and MLflow's telemetry switched off: there is no internet here). MLflow's process-wide
    tracking URI (``mlflow.set_tracking_uri``) is cleared afterwards."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    yield mlflow_server.tracking_uri
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)


@pytest.fixture
def bucket(s3_server: EmbeddedS3) -> str:
    """A new, empty bucket for this test."""
    name = f"t-{uuid.uuid4().hex[:20]}"
    store = ObjectStore(
        s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    )
    store.ensure_bucket(name)
    return name


@pytest.fixture
def object_store(s3_server: EmbeddedS3) -> ObjectStore:
    return ObjectStore(
        s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    )


@pytest.fixture
def s3_env(s3_server: EmbeddedS3, bucket: str, tmp_path: Path) -> dict[str, str]:
    """Environment variables pointing every setting at this test's bucket and temp dir."""
    return {
        "S3_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_REGION": "us-east-1",
        "RAW_URI": f"s3://{bucket}/raw",
        "BRONZE_URI": f"s3://{bucket}/bronze",
        "AUGMENTED_URI": f"s3://{bucket}/augmented",
        "NORMALIZED_URI": f"s3://{bucket}/silver",
        "TRAINING_URI": f"s3://{bucket}/gold",
        "INFERENCE_INPUT_URI": f"s3://{bucket}/inference-input",
        "HITL_URI": f"s3://{bucket}/hitl",
        "NVME_ROOT": str(tmp_path / "nvme"),
        "MANIFEST_DB_URL": f"sqlite:///{tmp_path / 'manifest.db'}",
        "IMAGEML_HOME": str(tmp_path / "home"),
    }


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """The PostgreSQL server at 127.0.0.1:5432; fails (never skips) if it is not there."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is required at {PG_ADMIN_URL} and is not reachable ({exc.orig}). Start it: "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            pytrace=False,
        )
    finally:
        admin.dispose()
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A new, empty database for this test, dropped afterwards."""
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    name = f"imageml_t_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'manifest.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def manifest_store(store_url: str) -> Iterator[SqlManifestStore]:
    store = SqlManifestStore(store_url)
    store.migrate()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(scope="session")
def sqs_endpoint() -> Iterator[str]:
    """A moto SQS server on a free port (SQS has no real server here); queues are per test."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
