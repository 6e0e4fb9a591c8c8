"""The full mix (issue 10 acceptance): every odd kind of input in one batch with good
images. Every good image reaches every variant; every other object ends in exactly one
recorded state with a reason; nothing fails the batch."""

from __future__ import annotations

import io
import random
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imageml_cli.runner import open_instance, run_pipeline
from imageml_core.manifest import AUGMENT, INGEST, NORMALIZE
from imageml_core.settings import Settings
from imageml_core.storage.object_store import ObjectStore
from imageml_core.uris import S3Uri
from imageml_resources import open_manifest_store

VARIANTS = ("720p", "64x64")


@pytest.fixture
def settings(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    env = {
        **s3_env,
        "NORMALIZE_SIZES": ",".join(VARIANTS),
        "AUGMENT_PIPELINE": "light",
        "MAX_IMAGE_PIXELS": "500000",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


def _img(mode: str, size: tuple[int, int], fmt: str, **save: object) -> bytes:
    rng = np.random.default_rng(sum(size))
    rgb = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    img = rgb.convert(mode) if mode != "RGB" else rgb
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def _oriented(fmt: str, orientation: int) -> bytes:
    img = Image.fromarray((np.random.default_rng(3).random((100, 200, 3)) * 255).astype(np.uint8))
    buf = io.BytesIO()
    if fmt == "TIFF":
        img.save(buf, "TIFF", tiffinfo={0x0112: orientation})
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(buf, fmt, exif=exif.tobytes())
    return buf.getvalue()


def _damaged(data: bytes) -> bytes:
    out = bytearray(data)
    mid = len(out) // 2
    out[mid : mid + 1500] = bytes(random.Random(2).randrange(256) for _ in range(1500))
    return bytes(out)


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def test_every_good_image_reaches_every_variant_and_every_other_object_has_one_state(
    settings: Settings, object_store: ObjectStore, tmp_path: Path
) -> None:
    raw = settings.raw_uri
    jpeg = _img("RGB", (320, 240), "JPEG", quality=90)
    good = {
        "good/a.jpg": jpeg,
        "good/b.png": _img("RGBA", (100, 80), "PNG"),
        "good/c.webp": _img("RGB", (90, 60), "WEBP"),
        "good/d.gif": _img("P", (64, 48), "GIF"),
        "good/e.bmp": _img("RGB", (50, 40), "BMP"),
        "good/cmyk.jpg": _img("CMYK", (60, 50), "JPEG"),
        "good/gray16.png": _img("I;16", (40, 30), "PNG"),
        "good/rot6.tif": _oriented("TIFF", 6),
        "good/rot8.jpg": _oriented("JPEG", 8),
        "good/x/c.jpg": jpeg,
        "good/x/c.jpg/inner.jpg": _img("RGB", (30, 20), "JPEG"),
        "good/" + "/".join(["k" * 200] * 4) + "/long.jpg": _img("RGB", (33, 22), "JPEG"),
    }
    bad = {
        "bad/empty.jpg": b"",
        "bad/text.jpg": b"not an image at all",
        "bad/truncated.jpg": jpeg[: len(jpeg) // 2],
        "bad/damaged.jpg": _damaged(_img("RGB", (800, 600), "JPEG", quality=90)),
        "bad/bomb.png": _img("L", (1000, 600), "PNG"),
        "bad/broken.json": b"{not json",
        "bad/.hidden.jpg": jpeg,
    }
    zipped = [
        ("z/a.jpg", _img("RGB", (40, 30), "JPEG")),
        ("z/a.jpg/b.jpg", _img("RGB", (41, 31), "JPEG")),
        ("z/dup.jpg", _img("RGB", (42, 32), "JPEG")),
        ("z/dup.jpg", _img("RGB", (43, 33), "JPEG")),
        ("z/note.txt", b"just text"),
        ("z/inner.zip", _zip([("i.jpg", jpeg)])),
        ("/".join(["d" * 200] * 25) + "/deep.jpg", _img("RGB", (44, 34), "JPEG")),
    ]
    for key, data in {**good, **bad}.items():
        object_store.put_bytes(raw.join(key), data)
    object_store.put_bytes(raw.join("mixed.zip"), _zip(zipped))
    object_store.put_bytes(S3Uri(raw.bucket, f"{raw.prefix}bad/folder-with-data/"), b"data")

    instance = open_instance(tmp_path / "dagster")
    summary = run_pipeline(settings, instance, until="normalize", echo=lambda _m: None)
    instance.dispose()
    assert not summary.failed, [r.metadata for r in summary.failed]

    store = open_manifest_store(settings.manifest_db_url)
    ingest = store.processed_objects(INGEST)
    assert len({r.uri for r in ingest}) == len(ingest)  # one recorded state per object
    assert all(r.reason for r in ingest if not r.ok)  # every other state has a reason
    states = {r.uri: r.status for r in ingest}
    for key in good:
        assert states[str(raw.join(key))] == "ok", key
    for key in bad:
        expected = "skipped" if key.endswith(".hidden.jpg") else "quarantined"
        assert states[str(raw.join(key))] == expected, key
    assert states[f"{raw}/bad/folder-with-data/"] == "skipped"
    members = [r for r in ingest if r.details.get("source_uri") == str(raw.join("mixed.zip"))]
    assert sorted(r.status for r in members) == sorted(
        ["ok", "ok", "ok", "ok", "quarantined", "quarantined", "quarantined"]
    )  # a.jpg, a.jpg/b.jpg, dup.jpg (first), deep.jpg | dup.jpg (second), note.txt, inner.zip

    images = [r for r in ingest if r.ok and r.details.get("kind") in ("image", "archive_member")]
    assert len(images) == len(good) + 4
    copies = [r for r in store.processed_objects(AUGMENT) if r.ok]
    assert sorted(r.details["source_uri"] for r in copies) == sorted(r.uri for r in images)
    normalized = [r for r in store.processed_objects(NORMALIZE) if r.ok]
    by_variant = {
        v: {r.details["source_uri"] for r in normalized if r.details["variant_name"] == v}
        for v in VARIANTS
    }
    every_image = {r.uri for r in images} | {r.uri for r in copies}
    assert by_variant == {v: every_image for v in VARIANTS}
    assert not [r for r in store.processed_objects(NORMALIZE) if not r.ok]
