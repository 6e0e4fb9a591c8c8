"""Augment decodes with the ``MAX_IMAGE_PIXELS`` that ingest applied (issue 10 review: with
the setting above Pillow's default, an image ingest let through was quarantined at augment
as a "decompression bomb")."""

from __future__ import annotations

from pathlib import Path

from imageml_core.manifest.documents import IngestedObject
from imageml_core.stages.augment.batch import AugmentConfig, _augment_all
from imageml_core.stages.augment.pipeline import load_pipeline
from imageml_core.storage.object_store import ObjectInfo
from imageml_core.storage.staging import NvmeStaging, StagedObject
from imageml_core.uris import S3Uri, parse_s3_uri
from tests.helpers import jpeg_bytes


def test_augment_uses_the_configured_pixel_limit(tmp_path: Path) -> None:
    uri = "s3://bucket/raw/a.jpg"
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg_bytes(1, (64, 48)))  # 3,072 pixels
    image = IngestedObject(uri, "etag", "0" * 64, "image", path.stat().st_size, 64, 48, "JPEG")
    staged = {uri: StagedObject(ObjectInfo(parse_s3_uri(uri), "etag", 1), path, "0" * 64, False)}
    pipeline = load_pipeline("light", copies=1)
    staging = NvmeStaging(tmp_path / "nvme")

    def run(limit: int) -> dict[str, str]:
        config = AugmentConfig(S3Uri("bucket", "augmented"), "test", max_image_pixels=limit)
        return _augment_all([image], staged, {}, pipeline, config, staging, "job").quarantined

    assert run(3_072) == {}
    (reason,) = run(3_071).values()
    assert "3072" in reason.replace(",", "") and "3071" in reason.replace(",", "")
