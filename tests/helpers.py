"""Small builders shared by tests: real image bytes, ZIPs, table counts, SQS clients."""

from __future__ import annotations

import io
import random
import zipfile
from typing import Any

import boto3
import sqlalchemy as sa
from PIL import Image

from imageml_core.manifest import SqlManifestStore
from imageml_core.manifest.schema import metadata


def jpeg_bytes(seed: int, size: tuple[int, int] = (64, 48), quality: int = 85) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randint(0, 255) for _ in range(3)))  # type: ignore[arg-type]
    img.putpixel((rng.randrange(size[0]), rng.randrange(size[1])), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(seed: int, size: tuple[int, int] = (32, 32), mode: str = "RGBA") -> bytes:
    rng = random.Random(seed)
    img = Image.new(mode, size)
    img.putpixel((0, 0), tuple(rng.randint(0, 255) for _ in range(len(mode))))  # type: ignore[arg-type]
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def table_counts(store: SqlManifestStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {
            name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for name, table in metadata.tables.items()
        }


def sqs_client(endpoint: str) -> Any:
    """A boto3 SQS client for the moto server (moto is the one stand-in we use: SQS has no
    real server here); it accepts any credentials."""
    return boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
