"""The embedded stack: a SeaweedFS S3 server, an MLflow tracking server (SQLite store,
artifacts in the S3 server) and SQLite stores under one home directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imageml_core.settings import EMBEDDED_BUCKET, Settings
from imageml_core.storage.object_store import ObjectStore
from imageml_dev.embedded_mlflow import EmbeddedMlflow
from imageml_dev.embedded_s3 import EmbeddedS3

#: Where the embedded MLflow server keeps artifacts (models, plots): beside the tiers.
MLFLOW_ARTIFACTS = f"s3://{EMBEDDED_BUCKET}/mlflow-artifacts"


@contextmanager
def embedded_stack(
    home: Path, *, s3_port: int = 0, mlflow_port: int = 0, mlflow: bool = True
) -> Iterator[Settings]:
    """Start SeaweedFS and (``mlflow``) an MLflow server, point this process's environment
    at them, yield the settings; stop both afterwards (MLflow first: it writes to S3).

    The environment is changed (and restored afterwards) because boto3 and MLflow read it,
    in this process and in any Dagster subprocess.
    """
    home.mkdir(parents=True, exist_ok=True)
    server = EmbeddedS3(home / "s3", s3_port=s3_port)
    tracking: EmbeddedMlflow | None = None
    saved = dict(os.environ)
    server.start()
    try:
        os.environ.update(
            {
                "S3_ENDPOINT_URL": server.endpoint_url,
                "AWS_ACCESS_KEY_ID": server.access_key,
                "AWS_SECRET_ACCESS_KEY": server.secret_key,
                "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
                "IMAGEML_HOME": str(home),
            }
        )
        # Embedded defaults win over a shell that points elsewhere (e.g. at AWS).
        for var in (
            "RAW_URI",
            "BRONZE_URI",
            "AUGMENTED_URI",
            "NORMALIZED_URI",
            "TRAINING_URI",
            "INFERENCE_INPUT_URI",
            "HITL_URI",
            "FINAL_OUTPUT_URI",
            "MANIFEST_DB_URL",
            "NVME_ROOT",
            "MLFLOW_TRACKING_URI",
            "MLFLOW_REGISTRY_URI",
        ):
            os.environ.pop(var, None)
        store = ObjectStore(
            server.endpoint_url,
            access_key_id=server.access_key,
            secret_access_key=server.secret_key,
        )
        store.ensure_bucket(EMBEDDED_BUCKET)
        if mlflow:
            tracking = EmbeddedMlflow(
                home / "mlflow",
                s3_endpoint_url=server.endpoint_url,
                access_key=server.access_key,
                secret_key=server.secret_key,
                artifacts_uri=MLFLOW_ARTIFACTS,
                port=mlflow_port,
            ).start()
            os.environ["MLFLOW_TRACKING_URI"] = tracking.tracking_uri
        yield Settings.from_env(home=home)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if tracking is not None:
            tracking.stop()
        server.stop()
