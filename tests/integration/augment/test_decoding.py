"""One decoder in every stage (issue 10, part 1): EXIF orientation applied once whatever
the format, alpha composited the same way in augmented and normalized images, annotations
read in the displayed frame, damaged JPEG data quarantined, and a source that does not
decode (or changed) quarantining itself only."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imageml_cli.runner import open_instance, run_pipeline
from imageml_core.manifest import AUGMENT, INGEST, NORMALIZE
from imageml_core.manifest.documents import AugmentManifest, NormalizeManifest
from imageml_core.manifest.publish import read_document
from imageml_core.settings import Settings
from imageml_core.storage.object_store import ObjectStore
from imageml_core.uris import parse_s3_uri
from imageml_resources import open_manifest_store


@pytest.fixture
def settings(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    env = {
        **s3_env,
        "NORMALIZE_SIZES": "720p",
        "AUGMENT_PIPELINE": "light",
        "AUGMENT_COPIES": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


def _encode(pixels: np.ndarray | Image.Image, fmt: str, orientation: int = 1) -> bytes:
    img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    if fmt == "TIFF":
        img.save(buf, "TIFF", tiffinfo={0x0112: orientation})
    elif fmt == "JPEG":
        img.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    else:
        img.save(buf, fmt)
    return buf.getvalue()


def _picture(width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(width * 7 + height)
    small = (rng.random((max(2, height // 10), max(2, width // 10), 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def _run(settings: Settings, tmp_path: Path, until: str = "normalize") -> None:
    instance = open_instance(tmp_path / "dagster")
    summary = run_pipeline(settings, instance, until=until, echo=lambda _m: None)
    instance.dispose()
    assert not summary.failed, [r.metadata for r in summary.failed]


def _augment_doc(
    settings: Settings, store: ObjectStore, of_batch: str | None = None
) -> AugmentManifest:
    """The one augment manifest, or the one of ``of_batch``."""
    records = open_manifest_store(settings.manifest_db_url).manifests(AUGMENT)
    if of_batch is not None:
        records = [r for r in records if r.partition_key.startswith(of_batch + "@")]
    (record,) = records
    return read_document(store, record, AugmentManifest)


def _dims(store: ObjectStore, uri: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(store.get_bytes(parse_s3_uri(uri)))) as img:
        return img.size


def test_orientation_once_alpha_on_white_and_boxes_in_the_displayed_frame(
    settings: Settings, object_store: ObjectStore, tmp_path: Path
) -> None:
    raw = settings.raw_uri
    object_store.put_bytes(raw.join("tiff/small.tif"), _encode(_picture(160, 120), "TIFF", 6))
    object_store.put_bytes(raw.join("tiff/wide.tif"), _encode(_picture(200, 100), "TIFF", 6))
    rgba = np.zeros((60, 80, 4), np.uint8)  # fully transparent but for one opaque block
    rgba[10:20, 10:20] = (255, 0, 0, 255)
    object_store.put_bytes(raw.join("alpha/rgba.png"), _encode(rgba, "PNG"))
    object_store.put_bytes(
        raw.join("alpha/gray.png"), _encode(Image.new("LA", (80, 60), (90, 0)), "PNG")
    )
    # A JPEG stored 200x100 shown 100x200, with a Label Studio box given in percent and
    # without original_width/height: it is read in the displayed frame.
    object_store.put_bytes(raw.join("ls/rot.jpg"), _encode(_picture(200, 100), "JPEG", 6))
    task = {
        "id": 1,
        "data": {"image": "rot.jpg"},
        "annotations": [
            {
                "id": 1,
                "result": [
                    {
                        "id": "r1",
                        "type": "rectanglelabels",
                        "from_name": "label",
                        "to_name": "image",
                        "value": {
                            "x": 10,
                            "y": 60,
                            "width": 80,
                            "height": 30,
                            "rectanglelabels": ["thing"],
                        },
                    }
                ],
            }
        ],
    }
    object_store.put_bytes(raw.join("ls/tasks.json"), json.dumps([task]).encode())
    _run(settings, tmp_path)

    manifest = open_manifest_store(settings.manifest_db_url)
    ingested = {r.uri: r for r in manifest.processed_objects(INGEST)}
    assert all(r.ok for r in ingested.values()), {u: r.reason for u, r in ingested.items()}
    wide = ingested[str(raw.join("tiff/wide.tif"))]
    assert (wide.details["width"], wide.details["height"], wide.details["orientation"]) == (
        100,
        200,
        6,
    )
    doc = _augment_doc(settings, object_store)
    assert doc.quarantined == ()
    outputs = {o.source_uri: o for o in doc.outputs}
    assert (
        outputs[str(raw.join("tiff/small.tif"))].width,
        outputs[str(raw.join("tiff/small.tif"))].height,
    ) == (120, 160)
    (rot,) = [s for s in doc.sources if s.uri.endswith("rot.jpg")]
    assert (rot.width, rot.height) == (100, 200)
    assert [r.bbox for r in rot.regions] == [(10.0, 120.0, 80.0, 60.0)]

    # Alpha: augmented copies are composited on white as the normalized originals are.
    for name in ("rgba.png", "gray.png"):
        copy = outputs[str(raw.join(f"alpha/{name}"))]
        pixels = np.asarray(Image.open(io.BytesIO(object_store.get_bytes(parse_s3_uri(copy.uri)))))
        corner = pixels[50:58, 60:78].astype(int)  # transparent in the source
        assert corner.min() >= 200, (name, corner.min())  # white-ish after brightness jitter

    # Normalize: the TIFF shown 100x200 is 100x200 in every variant (720p never upscales).
    (record,) = [
        m for m in manifest.manifests(NORMALIZE) if m.partition_key.split("|")[1].startswith("720p")
    ]
    variant = read_document(object_store, record, NormalizeManifest)
    by_source = {o.source_uri: o for o in variant.outputs}
    wide_out = by_source[str(raw.join("tiff/wide.tif"))]
    assert (wide_out.width, wide_out.height) == (100, 200)
    assert _dims(object_store, wide_out.output_uri) == (100, 200)
    rgba_out = by_source[str(raw.join("alpha/rgba.png"))]
    normalized = np.asarray(
        Image.open(io.BytesIO(object_store.get_bytes(parse_s3_uri(rgba_out.output_uri))))
    )
    assert normalized[50:58, 60:78].min() >= 240


def _damaged_jpeg() -> bytes:
    good = _encode(_picture(800, 600), "JPEG")
    data = bytearray(good)
    mid = len(data) // 2
    data[mid : mid + 2000] = bytes(random.Random(1).randrange(256) for _ in range(2000))
    return bytes(data)


def test_damaged_scan_data_is_quarantined_at_ingest(
    settings: Settings, object_store: ObjectStore, tmp_path: Path
) -> None:
    raw = settings.raw_uri
    object_store.put_bytes(raw.join("damaged.jpg"), _damaged_jpeg())
    object_store.put_bytes(raw.join("fine.jpg"), _encode(_picture(320, 240), "JPEG"))
    _run(settings, tmp_path, until="ingest")
    records = {
        r.uri: r for r in open_manifest_store(settings.manifest_db_url).processed_objects(INGEST)
    }
    damaged = records[str(raw.join("damaged.jpg"))]
    assert damaged.status == "quarantined"
    assert damaged.reason is not None
    assert damaged.reason.startswith("truncated or corrupt image data: Corrupt JPEG data")
    assert records[str(raw.join("fine.jpg"))].ok


def test_a_source_that_changed_or_does_not_decode_is_quarantined_alone(
    settings: Settings,
    object_store: ObjectStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import imageml_core.stages.augment.batch as augment_batch
    from imageml_core.imaging import UndecodableImage

    raw = settings.raw_uri
    for name in ("a", "b", "c"):
        object_store.put_bytes(raw.join(f"{name}.jpg"), _encode(_picture(120, 90), "JPEG"))
    _run(settings, tmp_path, until="ingest")
    # After ingest: b.jpg is replaced (its recorded ETag no longer matches), and c.jpg
    # no longer decodes (fault injected into the shared decoder).
    object_store.put_bytes(raw.join("b.jpg"), _encode(_picture(64, 64), "JPEG"))
    real = augment_batch.decode_rgb

    def flaky(path: Path, **kwargs: Any) -> np.ndarray:
        if path.name == "c.jpg":
            raise UndecodableImage("truncated or corrupt image data: injected")
        return real(path, **kwargs)

    monkeypatch.setattr(augment_batch, "decode_rgb", flaky)
    # Stage 1's augment step on another node: its NVMe cache does not hold the bytes
    # ingest verified, so b.jpg is downloaded again, and found changed.
    monkeypatch.setenv("NVME_ROOT", str(tmp_path / "other-node"))
    settings = Settings.from_env()
    _run(settings, tmp_path, until="augment")
    # The first batch: b.jpg's new version is a new object, planned in a batch of its own.
    ingested = open_manifest_store(settings.manifest_db_url).processed_objects(INGEST)
    (first_batch,) = {r.partition_key for r in ingested if r.uri == str(raw.join("a.jpg"))}
    assert first_batch is not None
    doc = _augment_doc(settings, object_store, of_batch=first_batch)
    assert [o.source_uri for o in doc.outputs] == [str(raw.join("a.jpg"))]
    assert {q.source_uri: q.reason for q in doc.quarantined} == {
        str(raw.join("b.jpg")): doc.quarantined[0].reason,
        str(raw.join("c.jpg")): "truncated or corrupt image data: injected",
    }
    assert doc.quarantined[0].reason.startswith("changed since it was recorded")
    assert doc.checks.every_source_has_copies is False
    assert set(doc.checks.quarantined) == {str(raw.join("b.jpg")), str(raw.join("c.jpg"))}
    assert [s.uri for s in doc.sources] == [str(raw.join("a.jpg"))]
    ledger = [
        r
        for r in open_manifest_store(settings.manifest_db_url).processed_objects(AUGMENT)
        if r.partition_key == doc.partition_key
    ]
    assert sorted((r.uri, r.status) for r in ledger if not r.ok) == [
        (str(raw.join("b.jpg")), "quarantined"),
        (str(raw.join("c.jpg")), "quarantined"),
    ]
    # Stage 2 normalizes what stage 1 made of that batch, and only that.
    _run(settings, tmp_path)
    (record,) = [
        m
        for m in open_manifest_store(settings.manifest_db_url).manifests(NORMALIZE)
        if m.partition_key.startswith(doc.partition_key + "|")
    ]
    variant = read_document(object_store, record, NormalizeManifest)
    assert variant.checks.passed and len(variant.outputs) == 2  # a.jpg and its copy
