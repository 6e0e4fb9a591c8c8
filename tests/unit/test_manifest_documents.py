"""Typed stage manifest documents (imageml_core.manifest.documents), regions and COCO.

Every document is built from realistic values (64-hex SHA-256s, MD5 ETags, several
entries, regions with polygons and keypoints, a quarantined entry, a ZIP member) and the
tests assert exact values: round trips, canonical bytes, header checks, summaries, ledger
rows and lineage edges.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest

from imageml_core.annotations.coco import AnnotatedImage, coco_document
from imageml_core.annotations.regions import Region, regions_from_json, regions_to_json
from imageml_core.manifest.documents import (
    MANIFEST_SCHEMA,
    AnnotationFiles,
    AugmentChecks,
    AugmentManifest,
    AugmentOutput,
    AugmentSource,
    AugmentSummary,
    AugmentTotals,
    DocumentError,
    IngestCounts,
    IngestedObject,
    IngestEntry,
    IngestManifest,
    IngestSummary,
    NormalizeChecks,
    NormalizedOutput,
    NormalizeManifest,
    NormalizeSummary,
    PipelineInfo,
    PolicyInfo,
    QuarantinedSource,
    json_bytes,
)
from imageml_core.manifest.interface import (
    AUGMENT,
    INGEST,
    NORMALIZE,
    STATUS_OK,
    STATUS_QUARANTINED,
    STATUS_SKIPPED,
    LedgerRecord,
    LineageEdge,
    ProcessedObject,
)


def _sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _md5(name: str) -> str:
    return hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()


BATCH = "batch-0123456789abcdef"
CONFIG_HASH = "abcdef0123456789" + "0" * 48
TAG = "default-abcdef01"
POLICY_HASH = "0123456789ab" + "cdef" * 13
RAW = "s3://raw-bucket/incoming"
ZIP_URI = f"{RAW}/trip/photos.zip"
MEMBER_URI = "s3://bronze-bucket/tier/unzipped/trip/photos.zip/day1/IMG_0001.JPG"
REFUSED_MEMBER = f"{ZIP_URI}#../evil.jpg"

# Regions whose coordinates have at most 3 decimals survive Region.to_json unchanged.
CAT = Region(
    "cat",
    (10.5, 20.25, 100.0, 80.125),
    polygon=(10.5, 20.25, 110.5, 20.25, 110.5, 100.375, 10.5, 100.375),
    source_id="7",
)
DOG = Region(
    "dog",
    (300.0, 40.0, 120.0, 90.0),
    keypoints=((310.0, 50.5), (400.25, 120.0)),
    source_id="ls-abc123",
)
PERSON = Region("person", (5.0, 6.0, 7.0, 8.0))


# ---------------------------------------------------------------------------- fixtures
def ingest_manifest() -> IngestManifest:
    return IngestManifest(
        partition_key=BATCH,
        dataset="pets",
        raw_uri=RAW,
        max_image_pixels=89_478_485,
        objects=(
            IngestEntry(
                uri=f"{RAW}/a/cat.png",
                etag=_md5("cat.png"),
                size=123_456,
                kind="image",
                status=STATUS_OK,
                sha256=_sha("cat.png"),
                format="PNG",
                mode="RGBA",
                width=640,
                height=480,
                frames=1,
                staged_path=f"{BATCH}/a/cat.png",
            ),
            IngestEntry(
                uri=f"{RAW}/a/labels.json",
                etag=_md5("labels.json"),
                size=2_048,
                kind="annotation",
                status=STATUS_OK,
                sha256=_sha("labels.json"),
                staged_path=f"{BATCH}/a/labels.json",
            ),
            IngestEntry(
                uri=f"{RAW}/a/broken.jpg",
                etag=_md5("broken.jpg"),
                size=17,
                kind="image",
                status=STATUS_QUARANTINED,
                reason="truncated image data",
                sha256=_sha("broken.jpg"),
            ),
            IngestEntry(
                uri=ZIP_URI,
                etag=_md5("photos.zip"),
                size=9_999_999,
                kind="archive",
                status=STATUS_OK,
                sha256=_sha("photos.zip"),
                staged_path=f"{BATCH}/trip/photos.zip",
                members=3,
            ),
            IngestEntry(
                uri=MEMBER_URI,
                etag=_md5("IMG_0001.JPG"),
                size=4_000_000,
                kind="archive_member",
                status=STATUS_OK,
                sha256=_sha("IMG_0001.JPG"),
                format="JPEG",
                mode="RGB",
                width=4000,
                height=3000,
                frames=1,
                staged_path="work/trip/photos.zip/day1/IMG_0001.JPG",
                source_uri=ZIP_URI,
            ),
            IngestEntry(
                uri=REFUSED_MEMBER,
                etag=_md5("photos.zip"),
                size=10,
                kind="archive_member",
                status=STATUS_QUARANTINED,
                reason="unsafe member name",
                source_uri=ZIP_URI,
            ),
            IngestEntry(
                uri=f"{ZIP_URI}#__MACOSX/._IMG_0001.JPG",
                etag=_md5("photos.zip"),
                size=4,
                kind="archive_member",
                status=STATUS_SKIPPED,
                reason="macOS resource fork",
                source_uri=ZIP_URI,
            ),
        ),
    )


def annotation_files(tier: str, intake: bool) -> AnnotationFiles:
    return AnnotationFiles(
        coco_uri=f"{tier}/{BATCH}.coco.json",
        label_studio_uri=f"{tier}/{BATCH}.label_studio.json",
        converter_version="label-studio-sdk 1.0.20",
        conversion_parameters={"image_root_url": "", "out_type": "annotations"},
        annotation_format="COCO" if intake else None,
        intake={"unmatched": ["ghost.jpg"], "duplicates": []} if intake else None,
    )


def augment_manifest() -> AugmentManifest:
    aug = "s3://aug-bucket/tier"
    src_cat = f"{RAW}/a/cat.png"
    sources = (
        AugmentSource(src_cat, _md5("cat.png"), _sha("cat.png"), 640, 480, (CAT, DOG)),
        AugmentSource(MEMBER_URI, _md5("IMG_0001.JPG"), _sha("IMG_0001.JPG"), 4000, 3000, ()),
    )
    outputs = tuple(
        AugmentOutput(
            uri=f"{aug}/images/{TAG}/{src.uri.removeprefix('s3://')}/aug-{k}.jpg",
            etag=_md5(f"{src.uri}-{k}"),
            sha256=_sha(f"{src.uri}-{k}"),
            source_uri=src.uri,
            source_sha256=src.sha256,
            copy=k,
            seed=1_000 + k,
            width=src.width,
            height=src.height,
            regions=(CAT,) if src.regions else (),
            dropped_regions=1 if src.regions else 0,
        )
        for src in sources
        for k in (0, 1)
    )
    return AugmentManifest(
        partition_key=f"{BATCH}@{TAG}",
        batch_id=BATCH,
        dataset="pets",
        pipeline=PipelineInfo(
            name="default",
            config_hash=CONFIG_HASH,
            copies=2,
            transforms=(
                {"name": "HorizontalFlip", "p": 0.5},
                {"name": "RandomBrightnessContrast", "p": 0.2, "brightness_limit": 0.1},
            ),
            min_visibility=0.3,
            min_area_px=4.0,
        ),
        annotations=annotation_files(f"{aug}/annotations/{TAG}", intake=True),
        checks=AugmentChecks(
            every_source_has_copies=True,
            boxes_inside_images=True,
            coco_boxes=2,
            label_studio_regions=2,
            label_studio_validation_errors=("task 3: region r1 has no label",),
        ),
        sources=sources,
        outputs=outputs,
        totals=AugmentTotals(
            sources=2, outputs=4, boxes_in=2, boxes_out=2, boxes_dropped=2, copies=2
        ),
    )


NORM_BASE = f"s3://silver-bucket/tier/normalized/720p/{POLICY_HASH[:12]}"


def normalized_output(source_uri: str, kind: str, w: int, h: int, regions: Any) -> NormalizedOutput:
    out_key = source_uri.removeprefix("s3://")
    if not out_key.lower().endswith((".jpg", ".jpeg")):
        out_key += ".jpg"
    return NormalizedOutput(
        source_uri=source_uri,
        source_kind=kind,
        variant_name="720p",
        output_uri=f"{NORM_BASE}/{out_key}",
        source_width=w * 2,
        source_height=h * 2,
        width=w,
        height=h,
        normalization_policy_hash=POLICY_HASH,
        sha256=_sha(f"norm:{source_uri}"),
        etag=_md5(f"norm:{source_uri}"),
        geometry=(0.5, 0.5, 0.0, 0.0),
        regions=regions,
    )


def normalize_manifest() -> NormalizeManifest:
    outputs = (
        normalized_output(f"{RAW}/a/cat.png", "original", 960, 720, (CAT, DOG)),
        normalized_output(
            f"s3://aug-bucket/tier/images/{TAG}/raw-bucket/incoming/a/cat.png/aug-0.jpg",
            "augmented",
            960,
            720,
            (CAT,),
        ),
        normalized_output(MEMBER_URI, "original", 540, 720, (PERSON,)),
    )
    gone = f"{RAW}/a/gone.jpg"
    changed = f"{RAW}/a/changed.jpg"
    return NormalizeManifest(
        partition_key=f"{BATCH}|720p@{POLICY_HASH[:12]}",
        batch_id=BATCH,
        dataset="pets",
        variant_name="720p",
        augment_tag=TAG,
        normalization_policy_hash=POLICY_HASH,
        policy=PolicyInfo(
            fit="cap", quality=90, chroma_subsampling="4:2:0", alpha_background=(255, 255, 255)
        ),
        annotations=annotation_files(f"{NORM_BASE}/annotations", intake=False),
        checks=NormalizeChecks(
            missing_sources=(gone, changed),
            wrong_dimensions=(),
            quarantined={gone: "source disappeared", changed: "source changed since ingest"},
        ),
        quarantined=(
            QuarantinedSource(gone, "source disappeared", _md5("gone.jpg")),
            QuarantinedSource(changed, "source changed since ingest", _md5("changed.jpg")),
        ),
        outputs=outputs,
    )


DOCUMENTS = [ingest_manifest, augment_manifest, normalize_manifest]
IDS = ["ingest", "augment", "normalize"]


def _key_orders(data: bytes) -> list[list[str]]:
    """Every JSON object's keys, in the order they appear in ``data``."""
    orders: list[list[str]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        orders.append([k for k, _ in pairs])
        return dict(pairs)

    json.loads(data, object_pairs_hook=hook)
    return orders


# ---------------------------------------------------------------------------- round trips
def test_ingest_manifest_round_trip_keeps_every_field() -> None:
    doc = ingest_manifest()
    again = IngestManifest.from_bytes(doc.to_bytes())
    assert again == doc
    assert again.objects[4].source_uri == ZIP_URI
    assert again.objects[2].reason == "truncated image data"
    assert IngestManifest.from_json(doc.to_json()) == doc


def test_augment_manifest_round_trip_keeps_every_field() -> None:
    doc = augment_manifest()
    again = AugmentManifest.from_bytes(doc.to_bytes())
    assert again == doc
    assert again.sources[0].regions == (CAT, DOG)
    assert again.sources[0].regions[0].polygon == CAT.polygon
    assert again.sources[0].regions[1].keypoints == ((310.0, 50.5), (400.25, 120.0))
    assert again.pipeline.transforms[1] == {
        "name": "RandomBrightnessContrast",
        "p": 0.2,
        "brightness_limit": 0.1,
    }
    assert again.annotations.intake == {"unmatched": ["ghost.jpg"], "duplicates": []}
    assert again.checks.label_studio_validation_errors == ("task 3: region r1 has no label",)
    assert again.totals == AugmentTotals(2, 4, 2, 2, 2, 2)


def test_normalize_manifest_round_trip_drops_only_output_regions() -> None:
    doc = normalize_manifest()
    again = NormalizeManifest.from_bytes(doc.to_bytes())
    # The published entry is NormalizedOutput.to_json(full=False): regions live in the
    # COCO / Label Studio files, so the reread outputs have none; everything else is kept.
    expected = dataclasses.replace(
        doc, outputs=tuple(dataclasses.replace(o, regions=()) for o in doc.outputs)
    )
    assert again == expected
    assert [o.regions for o in again.outputs] == [(), (), ()]
    assert all("regions" not in o for o in doc.to_json()["outputs"])
    assert again.policy.alpha_background == (255, 255, 255)
    assert again.policy.format == "jpeg"
    assert again.quarantined == doc.quarantined
    assert again.checks.quarantined == {
        f"{RAW}/a/gone.jpg": "source disappeared",
        f"{RAW}/a/changed.jpg": "source changed since ingest",
    }
    # Rereading what was reread is then a fixed point.
    assert NormalizeManifest.from_bytes(again.to_bytes()) == again
    assert again.to_bytes() == doc.to_bytes()


def test_normalized_output_full_json_keeps_regions() -> None:
    out = normalize_manifest().outputs[0]
    assert NormalizedOutput.from_json(out.to_json()) == out
    assert out.to_json()["regions"] == [CAT.to_json(), DOG.to_json()]
    assert "regions" not in out.to_json(full=False)
    assert NormalizedOutput.from_json(out.to_json(full=False)) == dataclasses.replace(
        out, regions=()
    )


@pytest.mark.parametrize("make", DOCUMENTS, ids=IDS)
def test_to_bytes_is_canonical(make: Any) -> None:
    doc = make()
    data = doc.to_bytes()
    assert data == doc.to_bytes()
    assert data == make().to_bytes()  # an equal document built again: the same bytes
    assert data.endswith(b"}\n")
    assert not data.endswith(b"\n\n")
    assert data == (json.dumps(doc.to_json(), indent=doc.indent, sort_keys=True) + "\n").encode()
    assert data == json_bytes(doc.to_json(), doc.indent)
    orders = _key_orders(data)
    assert orders, "no JSON objects parsed"
    assert all(keys == sorted(keys) for keys in orders)
    assert doc.sha256() == hashlib.sha256(data).hexdigest()


def test_indentation_per_document() -> None:
    assert IngestManifest.indent == 2
    assert ingest_manifest().to_bytes().startswith(b'{\n  "counts": {\n    "annotation_files": 1,')
    assert augment_manifest().to_bytes().startswith(b'{\n "annotations": {\n  "annotation_format"')
    assert normalize_manifest().to_bytes().startswith(b'{\n "annotations": {\n  "coco_uri"')


def test_json_bytes_sorts_keys_and_ends_with_newline() -> None:
    assert json_bytes({"b": 1, "a": {"d": [1, 2], "c": None}}) == (
        b'{\n "a": {\n  "c": null,\n  "d": [\n   1,\n   2\n  ]\n },\n "b": 1\n}\n'
    )


# ---------------------------------------------------------------------------- headers
@pytest.mark.parametrize(
    ("make", "step"),
    [(ingest_manifest, INGEST), (augment_manifest, AUGMENT), (normalize_manifest, NORMALIZE)],
    ids=IDS,
)
def test_header_fields(make: Any, step: Any) -> None:
    doc = make().to_json()
    assert doc["schema"] == MANIFEST_SCHEMA == "imageml.manifest/v1"
    assert (doc["stage"], doc["step"]) == (step.stage, step.name)
    assert doc["partition_key"] == make().partition_key
    assert doc["dataset"] == "pets"


def test_augment_manifest_read_as_normalize_manifest_is_refused() -> None:
    data = augment_manifest().to_bytes()
    with pytest.raises(DocumentError) as err:
        NormalizeManifest.from_bytes(data)
    assert str(err.value) == (
        "normalize manifest: expected schema imageml.manifest/v1 stage 2 step normalize, "
        "found schema 'imageml.manifest/v1' stage 1 step 'augment'"
    )


def test_ingest_manifest_read_as_augment_manifest_is_refused() -> None:
    """Same stage (1), other step: still refused."""
    with pytest.raises(DocumentError) as err:
        AugmentManifest.from_json(ingest_manifest().to_json())
    assert str(err.value) == (
        "augment manifest: expected schema imageml.manifest/v1 stage 1 step augment, "
        "found schema 'imageml.manifest/v1' stage 1 step 'ingest'"
    )


def test_older_schema_is_refused() -> None:
    doc = ingest_manifest().to_json()
    doc["schema"] = "imageml.manifest/v0"
    with pytest.raises(DocumentError) as err:
        IngestManifest.from_json(doc)
    assert str(err.value) == (
        "ingest manifest: expected schema imageml.manifest/v1 stage 1 step ingest, "
        "found schema 'imageml.manifest/v0' stage 1 step 'ingest'"
    )


def test_wrong_stage_number_is_refused() -> None:
    doc = normalize_manifest().to_json()
    doc["stage"] = 1
    with pytest.raises(
        DocumentError, match=r"expected .* stage 2 step normalize, found .* stage 1"
    ):
        NormalizeManifest.from_json(doc)


def test_document_without_header_is_refused() -> None:
    doc = augment_manifest().to_json()
    for name in ("schema", "stage", "step"):
        del doc[name]
    with pytest.raises(DocumentError) as err:
        AugmentManifest.from_json(doc)
    assert str(err.value).endswith("found schema None stage None step None")


def test_non_object_json_is_refused() -> None:
    with pytest.raises(DocumentError) as err:
        IngestManifest.from_bytes(b"[1, 2]")
    assert str(err.value) == "ingest manifest: expected a JSON object, got list"


@pytest.mark.parametrize("data", [b"", b"{not json", b'{"schema": ', b"\xff\xfe\x00"])
def test_invalid_json_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(DocumentError, match=r"^augment manifest is not valid JSON: "):
        AugmentManifest.from_bytes(data)


@pytest.mark.parametrize(
    ("make", "path", "message"),
    [
        (ingest_manifest, ("dataset",), "ingest manifest: missing field 'dataset'"),
        (ingest_manifest, ("raw_uri",), "ingest manifest: missing field 'raw_uri'"),
        (ingest_manifest, ("objects",), "ingest manifest: missing field 'objects'"),
        (ingest_manifest, ("partition_key",), "ingest manifest: missing field 'partition_key'"),
        (augment_manifest, ("batch_id",), "augment manifest: missing field 'batch_id'"),
        (augment_manifest, ("pipeline",), "augment manifest: missing field 'pipeline'"),
        (
            augment_manifest,
            ("pipeline", "config_hash"),
            "augment pipeline: missing field 'config_hash'",
        ),
        (
            augment_manifest,
            ("annotations", "coco_uri"),
            "annotation files: missing field 'coco_uri'",
        ),
        (augment_manifest, ("sources", 0, "sha256"), "augment source: missing field 'sha256'"),
        (augment_manifest, ("outputs", 1, "seed"), "augment output: missing field 'seed'"),
        (
            augment_manifest,
            ("checks", "coco_boxes"),
            "augment checks: missing field 'coco_boxes'",
        ),
        (normalize_manifest, ("variant_name",), "normalize manifest: missing field 'variant_name'"),
        (normalize_manifest, ("quarantined",), "normalize manifest: missing field 'quarantined'"),
        (
            normalize_manifest,
            ("outputs", 2, "output_uri"),
            "normalized output: missing field 'output_uri'",
        ),
        (
            normalize_manifest,
            ("quarantined", 0, "reason"),
            "quarantined source: missing field 'reason'",
        ),
        (normalize_manifest, ("policy", "quality"), "normalize policy: missing field 'quality'"),
    ],
)
def test_missing_required_field_is_named(make: Any, path: tuple[Any, ...], message: str) -> None:
    doc = make().to_json()
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    del parent[path[-1]]
    with pytest.raises(DocumentError) as err:
        type(make()).from_json(doc)
    assert message in str(err.value)


def test_missing_ingest_entry_field_is_named() -> None:
    doc = ingest_manifest().to_json()
    del doc["objects"][2]["etag"]
    with pytest.raises(DocumentError) as err:
        IngestManifest.from_json(doc)
    assert f"ingest entry '{RAW}/a/broken.jpg'" in str(err.value)
    assert "'etag'" in str(err.value)


def _without_max_image_pixels(doc: dict[str, Any]) -> None:
    doc["settings"] = {}


def _augment_region_without_bbox(doc: dict[str, Any]) -> None:
    del doc["sources"][0]["regions"][0]["bbox"]


def _normalize_region_without_bbox(doc: dict[str, Any]) -> None:
    doc["outputs"][0]["regions"] = [{"label": "cat"}]


@pytest.mark.parametrize(
    ("make", "damage", "inner", "wrongly_missing"),
    [
        (ingest_manifest, _without_max_image_pixels, "max_image_pixels", "settings"),
        (augment_manifest, _augment_region_without_bbox, "bbox", "regions"),
        (normalize_manifest, _normalize_region_without_bbox, "bbox", "outputs"),
    ],
    ids=["settings.max_image_pixels", "augment-region-bbox", "normalize-region-bbox"],
)
def test_missing_nested_key_is_named(
    make: Any, damage: Any, inner: str, wrongly_missing: str
) -> None:
    doc = make().to_json()
    damage(doc)
    with pytest.raises(DocumentError) as err:
        type(make()).from_json(doc)
    assert inner in str(err.value)
    assert f"missing field {wrongly_missing!r}" not in str(err.value)


@pytest.mark.parametrize(
    ("make", "path", "value", "message"),
    [
        (augment_manifest, ("sources", 0, "width"), "wide", "augment source: field 'width'"),
        (augment_manifest, ("outputs", 0, "copy"), None, "augment output: field 'copy'"),
        (
            normalize_manifest,
            ("outputs", 0, "geometry"),
            ["a", 1, 2, 3],
            "normalized output: field 'geometry'",
        ),
        (ingest_manifest, ("settings",), {"max_image_pixels": "lots"}, "field 'settings'"),
    ],
)
def test_malformed_field_is_named(
    make: Any, path: tuple[Any, ...], value: Any, message: str
) -> None:
    doc = make().to_json()
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    with pytest.raises(DocumentError) as err:
        type(make()).from_json(doc)
    assert message in str(err.value)
    assert "is malformed" in str(err.value)


def test_geometry_needs_four_numbers() -> None:
    doc = normalize_manifest().to_json()
    doc["outputs"][1]["geometry"] = [0.5, 0.5, 0.0]
    with pytest.raises(DocumentError) as err:
        NormalizeManifest.from_json(doc)
    assert str(err.value) == (
        "normalize manifest: field 'outputs' is malformed: normalized output "
        f"{doc['outputs'][1]['output_uri']}: geometry needs 4 numbers"
    )


def test_malformed_normalized_output_region_is_a_document_error() -> None:
    doc = normalize_manifest().outputs[0].to_json()
    doc["regions"] = [{"label": "cat"}]  # no bbox
    with pytest.raises(DocumentError):
        NormalizedOutput.from_json(doc)


def test_malformed_augment_region_is_a_document_error() -> None:
    doc = augment_manifest().to_json()
    doc["sources"][0]["regions"][0]["bbox"] = [1, 2, 3]
    with pytest.raises(DocumentError) as err:
        AugmentManifest.from_json(doc)
    assert str(err.value) == (
        "augment manifest: field 'sources' is malformed: augment source: field 'regions' is "
        "malformed: not enough values to unpack (expected 4, got 3)"
    )


# ---------------------------------------------------------------------------- ingest
def test_ingest_counts_and_body() -> None:
    doc = ingest_manifest()
    # images: cat.png and the extracted member; the archive; labels.json; 2 quarantined
    # (broken.jpg, the unsafe member); 1 skipped (resource fork).
    assert doc.counts == IngestCounts(
        images=2, archives=1, annotation_files=1, quarantined=2, skipped=1
    )
    body = doc.to_json()
    assert body["counts"] == {
        "images": 2,
        "archives": 1,
        "annotation_files": 1,
        "quarantined": 2,
        "skipped": 1,
    }
    assert body["settings"] == {"max_image_pixels": 89_478_485}
    assert body["raw_uri"] == RAW
    assert [e.uri for e in doc.quarantined] == [f"{RAW}/a/broken.jpg", REFUSED_MEMBER]


def test_ingest_entry_json_keeps_reason_and_drops_unset_fields() -> None:
    doc = ingest_manifest()
    assert doc.objects[1].to_json() == {
        "uri": f"{RAW}/a/labels.json",
        "etag": _md5("labels.json"),
        "size": 2_048,
        "kind": "annotation",
        "status": "ok",
        "reason": None,
        "sha256": _sha("labels.json"),
        "staged_path": f"{BATCH}/a/labels.json",
    }
    assert doc.objects[5].to_json() == {
        "uri": REFUSED_MEMBER,
        "etag": _md5("photos.zip"),
        "size": 10,
        "kind": "archive_member",
        "status": "quarantined",
        "reason": "unsafe member name",
        "source_uri": ZIP_URI,
    }


def test_ingest_entry_from_json_ignores_unknown_fields() -> None:
    entry = ingest_manifest().objects[0]
    assert IngestEntry.from_json({**entry.to_json(), "future_field": 1}) == entry


def test_ingest_ledger_rows() -> None:
    doc = ingest_manifest()
    ledger = doc.ledger()
    assert [p.uri for p in ledger] == [e.uri for e in doc.objects]
    assert ledger[0] == ProcessedObject(
        uri=f"{RAW}/a/cat.png",
        etag=_md5("cat.png"),
        status="ok",
        reason=None,
        content_sha256=_sha("cat.png"),
        details={
            "size": 123_456,
            "kind": "image",
            "format": "PNG",
            "mode": "RGBA",
            "width": 640,
            "height": 480,
            "frames": 1,
            "staged_path": f"{BATCH}/a/cat.png",
        },
    )
    assert ledger[2] == ProcessedObject(
        uri=f"{RAW}/a/broken.jpg",
        etag=_md5("broken.jpg"),
        status="quarantined",
        reason="truncated image data",
        content_sha256=_sha("broken.jpg"),
        details={"size": 17, "kind": "image"},
    )
    assert ledger[5] == ProcessedObject(
        uri=REFUSED_MEMBER,
        etag=_md5("photos.zip"),
        status="quarantined",
        reason="unsafe member name",
        content_sha256=None,
        details={"size": 10, "kind": "archive_member", "source_uri": ZIP_URI},
    )
    assert ledger[6].status == "skipped"
    assert ledger[6].reason == "macOS resource fork"
    assert ledger[3].details["members"] == 3
    for row in ledger:
        assert not {"uri", "etag", "status", "reason", "sha256"} & set(row.details)
        assert None not in row.details.values()


def test_ingest_edges_only_for_extracted_members() -> None:
    assert ingest_manifest().edges() == [LineageEdge(ZIP_URI, MEMBER_URI, INGEST)]


def test_ingest_summary() -> None:
    doc = ingest_manifest()
    summary = doc.summary()
    assert summary == {
        "counts": {
            "images": 2,
            "archives": 1,
            "annotation_files": 1,
            "quarantined": 2,
            "skipped": 1,
        },
        "raw_uri": RAW,
    }
    parsed = IngestSummary.from_json(summary)
    assert parsed == IngestSummary(doc.counts, RAW)
    assert parsed.to_json() == summary
    # Counts missing from an older summary read as 0.
    assert IngestCounts.from_json({"images": 3}) == IngestCounts(images=3)
    with pytest.raises(DocumentError, match="ingest summary: missing field 'raw_uri'"):
        IngestSummary.from_json({"counts": {}})


def _record(obj: ProcessedObject, stage: int = 1, step: str = "ingest") -> LedgerRecord:
    return LedgerRecord(
        stage=stage,
        step=step,
        uri=obj.uri,
        etag=obj.etag,
        status=obj.status,
        reason=obj.reason,
        content_sha256=obj.content_sha256,
        partition_key=BATCH,
        run_id="run-1",
        details=obj.details,
    )


def test_ingested_object_from_ok_ingest_record() -> None:
    ledger = ingest_manifest().ledger()
    image = IngestedObject.from_record(_record(ledger[0]))
    assert image == IngestedObject(
        uri=f"{RAW}/a/cat.png",
        etag=_md5("cat.png"),
        sha256=_sha("cat.png"),
        kind="image",
        size=123_456,
        width=640,
        height=480,
        format="PNG",
    )
    assert image.is_image and not image.is_annotation_file
    labels = IngestedObject.from_record(_record(ledger[1]))
    assert labels == IngestedObject(
        uri=f"{RAW}/a/labels.json",
        etag=_md5("labels.json"),
        sha256=_sha("labels.json"),
        kind="annotation",
        size=2_048,
        width=None,
        height=None,
        format=None,
    )
    assert labels.is_annotation_file and not labels.is_image
    member = IngestedObject.from_record(_record(ledger[4]))
    assert (member.kind, member.is_image, member.width, member.height) == (
        "archive_member",
        True,
        4000,
        3000,
    )


def test_ingested_object_refuses_quarantined_or_other_step() -> None:
    ledger = ingest_manifest().ledger()
    with pytest.raises(DocumentError) as err:
        IngestedObject.from_record(_record(ledger[2]))
    assert str(err.value) == f"{RAW}/a/broken.jpg: not an ok ingest ledger record"
    with pytest.raises(DocumentError, match="not an ok ingest ledger record"):
        IngestedObject.from_record(_record(ledger[6]))  # skipped
    with pytest.raises(DocumentError, match="not an ok ingest ledger record"):
        IngestedObject.from_record(_record(ledger[0], stage=1, step="augment"))
    with pytest.raises(DocumentError, match="not an ok ingest ledger record"):
        IngestedObject.from_record(_record(ledger[0], stage=2, step="ingest"))


# ---------------------------------------------------------------------------- augment
def test_augment_ledger_edges_and_summary() -> None:
    doc = augment_manifest()
    ledger = doc.ledger()
    assert len(ledger) == 4
    first = doc.outputs[0]
    assert ledger[0] == ProcessedObject(
        uri=first.uri,
        etag=first.etag,
        status="ok",
        reason=None,
        content_sha256=first.sha256,
        details={
            "source_uri": f"{RAW}/a/cat.png",
            "copy": 0,
            "kind": "augmented",
            "width": 640,
            "height": 480,
        },
    )
    assert first.uri == (
        f"s3://aug-bucket/tier/images/{TAG}/raw-bucket/incoming/a/cat.png/aug-0.jpg"
    )
    assert [p.details["copy"] for p in ledger] == [0, 1, 0, 1]
    assert doc.edges() == [LineageEdge(o.source_uri, o.uri, AUGMENT) for o in doc.outputs]
    assert [e.input_uri for e in doc.edges()] == [f"{RAW}/a/cat.png"] * 2 + [MEMBER_URI] * 2

    summary = doc.summary()
    assert summary == {
        "batch_id": BATCH,
        "config_hash": CONFIG_HASH,
        "totals": {
            "sources": 2,
            "outputs": 4,
            "boxes_in": 2,
            "boxes_out": 2,
            "boxes_dropped": 2,
            "copies": 2,
        },
        "checks": {
            "every_source_has_copies": True,
            "boxes_inside_images": True,
            "coco_boxes": 2,
            "label_studio_regions": 2,
            "label_studio_validation_errors": ["task 3: region r1 has no label"],
            "quarantined": {},
        },
    }
    parsed = AugmentSummary.from_json(summary)
    assert parsed == AugmentSummary(BATCH, CONFIG_HASH, doc.totals, doc.checks)
    assert parsed.to_json() == summary
    # Validation errors make the counts not conserved even when the counts agree.
    assert parsed.checks.counts_conserved is False
    assert dataclasses.replace(parsed.checks, label_studio_validation_errors=()).counts_conserved
    assert (
        dataclasses.replace(
            parsed.checks, label_studio_validation_errors=(), coco_boxes=3
        ).counts_conserved
        is False
    )


def test_augment_pipeline_json() -> None:
    assert augment_manifest().pipeline.to_json() == {
        "name": "default",
        "config_hash": CONFIG_HASH,
        "copies": 2,
        "transforms": [
            {"name": "HorizontalFlip", "p": 0.5},
            {"name": "RandomBrightnessContrast", "p": 0.2, "brightness_limit": 0.1},
        ],
        "bbox_rule": {"clip": True, "min_visibility": 0.3, "min_area_px": 4.0},
    }


def test_augment_regions_rounded_to_three_decimals_on_write() -> None:
    doc = augment_manifest()
    fine = Region("cat", (1.23456, 2.0004, 3.9996, 4.5), polygon=(0.0001, 0.9999))
    source = dataclasses.replace(doc.sources[0], regions=(fine,))
    doc = dataclasses.replace(doc, sources=(source, *doc.sources[1:]))
    again = AugmentManifest.from_bytes(doc.to_bytes())
    assert again.sources[0].regions == (Region("cat", (1.235, 2.0, 4.0, 4.5), polygon=(0.0, 1.0)),)


def test_augment_totals_default_when_absent() -> None:
    doc = augment_manifest().to_json()
    del doc["totals"]
    assert AugmentManifest.from_json(doc).totals == AugmentTotals()


def test_annotation_files_json_omits_unset_optional_fields() -> None:
    files = annotation_files("s3://b/t", intake=False)
    assert files.to_json() == {
        "coco_uri": f"s3://b/t/{BATCH}.coco.json",
        "label_studio_uri": f"s3://b/t/{BATCH}.label_studio.json",
        "converter_version": "label-studio-sdk 1.0.20",
        "conversion_parameters": {"image_root_url": "", "out_type": "annotations"},
    }
    assert AnnotationFiles.from_json(files.to_json()) == files


# ---------------------------------------------------------------------------- normalize
def test_normalize_ledger_includes_quarantined_sources() -> None:
    doc = normalize_manifest()
    ledger = doc.ledger()
    assert len(ledger) == 5
    out = doc.outputs[0]
    assert ledger[0] == ProcessedObject(
        uri=f"{NORM_BASE}/raw-bucket/incoming/a/cat.png.jpg",
        etag=out.etag,
        status="ok",
        reason=None,
        content_sha256=out.sha256,
        details={
            "kind": "normalized",
            "source_uri": f"{RAW}/a/cat.png",
            "variant_name": "720p",
            "width": 960,
            "height": 720,
            "normalization_policy_hash": POLICY_HASH,
        },
    )
    assert (
        ledger[2].uri
        == f"{NORM_BASE}/bronze-bucket/tier/unzipped/trip/photos.zip/day1/IMG_0001.JPG"
    )
    assert ledger[3:] == [
        ProcessedObject(
            uri=f"{RAW}/a/gone.jpg",
            etag=_md5("gone.jpg"),
            status=STATUS_QUARANTINED,
            reason="source disappeared",
            content_sha256=None,
            details={"kind": "normalize_source", "variant_name": "720p"},
        ),
        ProcessedObject(
            uri=f"{RAW}/a/changed.jpg",
            etag=_md5("changed.jpg"),
            status=STATUS_QUARANTINED,
            reason="source changed since ingest",
            content_sha256=None,
            details={"kind": "normalize_source", "variant_name": "720p"},
        ),
    ]


def test_normalize_edges() -> None:
    doc = normalize_manifest()
    assert doc.edges() == [LineageEdge(o.source_uri, o.output_uri, NORMALIZE) for o in doc.outputs]
    assert len(doc.edges()) == 3  # quarantined sources have no output, so no edge


def test_normalize_sizes_and_summary() -> None:
    doc = normalize_manifest()
    assert doc.sizes == {"960x720": 2, "540x720": 1}
    summary = doc.summary()
    assert summary == {
        "variant": "720p",
        "normalization_policy_hash": POLICY_HASH,
        "outputs": 3,
        "checks": {
            "missing_sources": [f"{RAW}/a/gone.jpg", f"{RAW}/a/changed.jpg"],
            "wrong_dimensions": [],
            "quarantined": {
                f"{RAW}/a/gone.jpg": "source disappeared",
                f"{RAW}/a/changed.jpg": "source changed since ingest",
            },
        },
        "sizes": {"540x720": 1, "960x720": 2},
    }
    parsed = NormalizeSummary.from_json(summary)
    assert parsed == NormalizeSummary("720p", POLICY_HASH, 3, doc.checks, doc.sizes)
    assert parsed.to_json() == summary
    assert parsed.checks.passed is False
    assert NormalizeChecks().passed is True
    assert NormalizeChecks(quarantined={"x": "y"}).passed is True
    assert NormalizeChecks(wrong_dimensions=("s3://b/k.jpg",)).passed is False
    # An older summary without sizes reads as none.
    del summary["sizes"]
    assert NormalizeSummary.from_json(summary).sizes == {}
    with pytest.raises(DocumentError, match="normalize summary: missing field 'outputs'"):
        NormalizeSummary.from_json({"variant": "720p", "normalization_policy_hash": "h"})


def test_normalize_sizes_sorted_by_size() -> None:
    doc = normalize_manifest()
    outputs = (
        dataclasses.replace(doc.outputs[0], width=1280, height=960),
        dataclasses.replace(doc.outputs[1], width=640, height=480),
    )
    sizes = dataclasses.replace(doc, outputs=outputs).sizes
    assert sizes == {"640x480": 1, "1280x960": 1}
    assert list(sizes) == ["640x480", "1280x960"]


def test_policy_and_quarantined_json() -> None:
    policy = normalize_manifest().policy
    assert policy.to_json() == {
        "fit": "cap",
        "quality": 90,
        "chroma_subsampling": "4:2:0",
        "alpha_background": [255, 255, 255],
        "format": "jpeg",
    }
    assert PolicyInfo.from_json(policy.to_json()) == policy
    q = QuarantinedSource("s3://b/x.jpg", "gone")
    assert q.to_json() == {"source_uri": "s3://b/x.jpg", "reason": "gone", "etag": ""}
    assert QuarantinedSource.from_json({"source_uri": "s3://b/x.jpg", "reason": "gone"}) == q


# ---------------------------------------------------------------------------- regions
def test_region_to_json_rounds_and_omits_empty_fields() -> None:
    assert PERSON.to_json() == {"label": "person", "bbox": [5.0, 6.0, 7.0, 8.0]}
    assert Region("a", (1.00049, 2.0005001, 3.1234, 9.87654)).to_json() == {
        "label": "a",
        "bbox": [1.0, 2.001, 3.123, 9.877],
    }
    assert DOG.to_json() == {
        "label": "dog",
        "bbox": [300.0, 40.0, 120.0, 90.0],
        "keypoints": [[310.0, 50.5], [400.25, 120.0]],
        "source_id": "ls-abc123",
    }
    assert Region("p", (0, 0, 1, 1), polygon=(0.12345, 1.0, 2.5, 3.33333)).to_json() == {
        "label": "p",
        "bbox": [0, 0, 1, 1],
        "polygon": [0.123, 1.0, 2.5, 3.333],
    }


def test_region_from_json_is_the_inverse() -> None:
    for region in (CAT, DOG, PERSON):
        assert Region.from_json(region.to_json()) == region
    assert regions_from_json(regions_to_json([CAT, DOG, PERSON])) == (CAT, DOG, PERSON)
    parsed = Region.from_json({"label": 5, "bbox": ["1", 2, 3, 4], "source_id": 12})
    assert parsed == Region("5", (1.0, 2.0, 3.0, 4.0), source_id="12")
    assert isinstance(parsed.bbox[0], float)
    with pytest.raises(KeyError):
        Region.from_json({"label": "x"})
    with pytest.raises(ValueError):
        Region.from_json({"label": "x", "bbox": [1, 2, 3]})


# ---------------------------------------------------------------------------- COCO
def test_coco_document_ids_order_and_areas() -> None:
    images = [
        AnnotatedImage(
            "s3://b/z.jpg",
            640,
            480,
            [
                Region("zebra", (1.0, 2.0, 3.3333, 4.4444)),
                Region(
                    "cat",
                    (10.0, 10.0, 20.0, 30.0),
                    polygon=(10.0, 10.0, 30.0, 10.0, 30.0, 40.12345),
                ),
            ],
        ),
        AnnotatedImage("s3://b/a.jpg", 100, 50, [Region("dog", (0.0, 0.0, 5.5, 2.0))]),
        AnnotatedImage("s3://b/m.jpg", 10, 10, []),
    ]
    doc = coco_document(images)
    assert doc["categories"] == [
        {"id": 1, "name": "cat"},
        {"id": 2, "name": "dog"},
        {"id": 3, "name": "zebra"},
    ]
    assert doc["images"] == [
        {"id": 1, "file_name": "s3://b/a.jpg", "width": 100, "height": 50},
        {"id": 2, "file_name": "s3://b/m.jpg", "width": 10, "height": 10},
        {"id": 3, "file_name": "s3://b/z.jpg", "width": 640, "height": 480},
    ]
    assert doc["annotations"] == [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 2,
            "bbox": [0.0, 0.0, 5.5, 2.0],
            "area": 11.0,
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 3,
            "category_id": 3,
            "bbox": [1.0, 2.0, 3.333, 4.444],
            "area": round(3.3333 * 4.4444, 3),
            "iscrowd": 0,
        },
        {
            "id": 3,
            "image_id": 3,
            "category_id": 1,
            "bbox": [10.0, 10.0, 20.0, 30.0],
            # With a polygon, the polygon's area (as COCO's tools compute it), not the box's.
            "area": round(0.5 * 20.0 * 30.12345, 3),
            "iscrowd": 0,
            "segmentation": [[10.0, 10.0, 30.0, 10.0, 30.0, 40.123]],
        },
    ]
    assert doc["annotations"][1]["area"] == 14.815
    assert "segmentation" not in doc["annotations"][0]
    # Input order does not matter: the same document for the images in any order.
    assert coco_document(list(reversed(images))) == doc
    assert json_bytes(coco_document(images)) == json_bytes(doc)


def test_coco_document_of_nothing() -> None:
    assert coco_document([]) == {"images": [], "annotations": [], "categories": []}
