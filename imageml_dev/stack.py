"""The embedded stack: a SeaweedFS S3 server and SQLite stores under one home directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imageml_core.settings import EMBEDDED_BUCKET, Settings
from imageml_core.storage.object_store import ObjectStore
from imageml_dev.embedded_s3 import EmbeddedS3


@contextmanager
def embedded_stack(home: Path, *, s3_port: int = 0) -> Iterator[Settings]:
    """Start SeaweedFS, point this process's environment at it, yield the settings.

    The environment is changed (and restored afterwards) because boto3 reads credentials
    from it, in this process and in any Dagster subprocess.
    """
    home.mkdir(parents=True, exist_ok=True)
    server = EmbeddedS3(home / "s3", s3_port=s3_port)
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
        ):
            os.environ.pop(var, None)
        settings = Settings.from_env(home=home)
        store = ObjectStore(
            server.endpoint_url,
            access_key_id=server.access_key,
            secret_access_key=server.secret_key,
        )
        store.ensure_bucket(EMBEDDED_BUCKET)
        yield settings
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.stop()
