"""Keys and archives (issue 10, part 2): output keys within S3's 1,024 bytes for every legal
input key, staging paths that never collide, every object under the raw prefix in exactly
one recorded state, and one archive never failing its batch."""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import pytest

from imageml_cli.runner import open_instance, run_pipeline
from imageml_core.manifest import AUGMENT, INGEST, NORMALIZE
from imageml_core.manifest.keys import MAX_KEY_BYTES
from imageml_core.settings import Settings
from imageml_core.storage.object_store import ObjectStore
from imageml_core.uris import S3Uri
from imageml_resources import open_manifest_store
from tests.helpers import jpeg_bytes


@pytest.fixture
def settings(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    env = {**s3_env, "NORMALIZE_SIZES": "720p", "AUGMENT_PIPELINE": "light"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


def _run(settings: Settings, tmp_path: Path) -> None:
    instance = open_instance(tmp_path / "dagster")
    summary = run_pipeline(settings, instance, until="normalize", echo=lambda _m: None)
    instance.dispose()
    assert not summary.failed, [r.metadata for r in summary.failed]


def test_a_key_near_the_limit_gives_bounded_output_keys(
    settings: Settings, object_store: ObjectStore, tmp_path: Path
) -> None:
    raw = settings.raw_uri
    long_key = "/".join(["k" * 200] * 5)[: 1006 - len(raw.prefix) - 4] + ".jpg"
    source = raw.join(long_key)
    assert len(source.key.encode()) == 1006
    object_store.put_bytes(source, jpeg_bytes(1, (64, 48)))
    _run(settings, tmp_path)

    store = open_manifest_store(settings.manifest_db_url)
    (ingested,) = store.processed_objects(INGEST)
    assert ingested.uri == str(source) and ingested.ok
    outputs = store.processed_objects(AUGMENT) + store.processed_objects(NORMALIZE)
    assert len(outputs) == 3  # one copy, two normalized images (the original and the copy)
    for row in outputs:
        assert row.ok
        key = row.uri.split("/", 3)[3]
        assert len(key.encode()) <= MAX_KEY_BYTES
        assert "/_long/" in key and key.endswith(".jpg")
        assert object_store.head(S3Uri(settings.raw_uri.bucket, key)) is not None
    # The readable name is in the lineage: the source leads to every output.
    lineage = store.lineage(str(source))
    assert {e.output_uri for e in lineage.downstream} >= {
        r.uri for r in store.processed_objects(AUGMENT)
    }


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def test_every_object_ends_in_one_recorded_state_and_no_object_fails_the_batch(
    settings: Settings, object_store: ObjectStore, tmp_path: Path
) -> None:
    raw = settings.raw_uri
    put = object_store.put_bytes
    put(raw.join("x/conflict.jpg"), jpeg_bytes(1))
    put(raw.join("x/conflict.jpg/inner.jpg"), jpeg_bytes(2))
    put(raw.join("x/.hidden.jpg"), jpeg_bytes(3))
    # (S3Uri.join drops trailing slashes: these keys are spelled out.)
    put(S3Uri(raw.bucket, f"{raw.prefix}x/with-data/"), b"not empty")
    put(S3Uri(raw.bucket, f"{raw.prefix}x/empty-folder/"), b"")
    deep = "/".join(["d" * 200] * 25) + "/deep.jpg"
    put(
        raw.join("x/tricky.zip"),
        _zip(
            [
                ("a.jpg", jpeg_bytes(4)),
                ("a.jpg/b.jpg", jpeg_bytes(5)),
                (deep, jpeg_bytes(6)),
                ("twice.jpg", jpeg_bytes(7)),
                ("twice.jpg", jpeg_bytes(8)),
            ]
        ),
    )
    _run(settings, tmp_path)

    store = open_manifest_store(settings.manifest_db_url)
    rows = {r.uri: r for r in store.processed_objects(INGEST)}
    state = {uri.removeprefix(str(raw) + "/"): (r.status, r.reason) for uri, r in rows.items()}
    assert state["x/conflict.jpg"] == ("ok", None)
    assert state["x/conflict.jpg/inner.jpg"] == ("ok", None)
    assert state["x/.hidden.jpg"] == ("skipped", "hidden file (the name starts with '.')")
    folder = ("skipped", "folder marker (the key ends in '/'), not a file")
    assert state["x/with-data/"] == folder
    assert state["x/empty-folder/"] == folder
    assert state["x/tricky.zip"] == ("ok", None)
    assert state["x/tricky.zip#twice.jpg#2"] == (
        "quarantined",
        "duplicate member name (occurrence 2; the first is extracted)",
    )
    members = [
        r for r in rows.values() if r.details.get("source_uri") == str(raw.join("x/tricky.zip"))
    ]
    extracted = sorted(r.uri.rsplit("/", 1)[-1] for r in members if r.ok)
    assert extracted == ["a.jpg", "b.jpg", "deep.jpg", "twice.jpg"]
    assert all(len(r.uri.split("/", 3)[3].encode()) <= MAX_KEY_BYTES for r in members)
    # Every image went through both stages: 2 raw + 4 extracted, one copy each.
    assert len(store.processed_objects(AUGMENT)) == 6
    assert len([r for r in store.processed_objects(NORMALIZE) if r.ok]) == 12
