"""Stage 1, augment step for one ingest batch (plain Python; the asset calls this).

Inputs: the batch's usable images from the ingest ledger, and the annotation files of
their folders. Outputs under ``AUGMENTED_URI`` (``<cfg>`` = pipeline name + config hash):

- ``images/<cfg>/<source bucket>/<source key>/aug-<k>.jpg``
- ``annotations/<cfg>/<batch>.coco.json`` and ``<batch>.label_studio.json``
- ``manifests/augment/<batch>@<cfg>.json`` (per output: source, copy, SHA-256, boxes)

The manifest store ledger for this step lists the *outputs* (URI, MD5 ETag, SHA-256) and a
lineage edge from each source; the manifest is keyed ``<batch>@<cfg>``, so changing the
pipeline makes new outputs instead of overwriting old ones, and rerunning the same
configuration is a no-op.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imageml_core.annotation_intake import ImageRef, collect_annotations, folder_of
from imageml_core.augment import AugmentPipeline, Region, augment_image, decode_rgb, encode_jpeg
from imageml_core.ingest import IMAGE_KINDS
from imageml_core.manifest import (
    AUGMENT,
    INGEST,
    LineageEdge,
    ManifestPublication,
    ManifestStore,
    ProcessedObject,
)
from imageml_core.object_store import ObjectInfo, ObjectStore
from imageml_core.staging import NvmeStaging
from imageml_core.uris import S3Uri, parse_s3_uri

MANIFEST_SCHEMA = "imageml.manifest/v1"


@dataclass(frozen=True)
class AugmentConfig:
    augmented_uri: S3Uri
    dataset_name: str


@dataclass
class AugmentResult:
    partition: str
    manifest_uri: str
    already_published: bool
    sources: int = 0
    outputs: int = 0
    boxes_in: int = 0
    boxes_out: int = 0
    boxes_dropped: int = 0
    objects_written: int = 0
    copies: int = 0
    checks: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "checks"}


def config_tag(pipeline: AugmentPipeline) -> str:
    return f"{pipeline.name}-{pipeline.config_hash[:8]}"


def _md5_sha(data: bytes) -> tuple[str, str]:
    return hashlib.md5(data, usedforsecurity=False).hexdigest(), hashlib.sha256(data).hexdigest()


def coco_for_outputs(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """COCO document for the augmented outputs: ids from 1 in output-URI order, categories
    sorted by name. Boxes are pixels ``[x, y, w, h]``."""
    labels = sorted({r["label"] for o in outputs for r in o["regions"]})
    cat_id = {name: i for i, name in enumerate(labels, start=1)}
    doc: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": n} for n, i in cat_id.items()],
    }
    ann_id = 1
    for image_id, out in enumerate(sorted(outputs, key=lambda o: o["uri"]), start=1):
        doc["images"].append(
            {
                "id": image_id,
                "file_name": out["uri"],
                "width": out["width"],
                "height": out["height"],
            }
        )
        for r in out["regions"]:
            x, y, w, h = r["bbox"]
            ann = {
                "id": ann_id,
                "image_id": image_id,
                "category_id": cat_id[r["label"]],
                "bbox": [round(x, 3), round(y, 3), round(w, 3), round(h, 3)],
                "area": round(w * h, 3),
                "iscrowd": 0,
            }
            if r.get("polygon"):
                ann["segmentation"] = [[round(v, 3) for v in r["polygon"]]]
            doc["annotations"].append(ann)
            ann_id += 1
    return doc


def augment_batch(
    batch_id: str,
    *,
    store: ObjectStore,
    staging: NvmeStaging,
    manifest: ManifestStore,
    pipeline: AugmentPipeline,
    config: AugmentConfig,
    run_id: str | None = None,
    log_fn: Callable[[str], None] = print,
) -> AugmentResult:
    from imageml_core.annotations import coco_to_ls, label_config_for, validate_tasks

    tag = config_tag(pipeline)
    partition = f"{batch_id}@{tag}"
    manifest_uri = config.augmented_uri.join("manifests", "augment", f"{partition}.json")
    published = manifest.get_manifest(AUGMENT, partition)
    if published is not None:
        log_fn(f"{partition}: already published; nothing to do")
        details = dict(published["details"])
        return AugmentResult(
            partition, str(published["manifest_uri"]), True, **details.get("totals", {})
        )

    ingested = [
        r
        for r in manifest.processed_objects(INGEST, batch_id)
        if r["status"] == "ok" and r["details"].get("kind") in IMAGE_KINDS
    ]
    images = [
        ImageRef(r["object_uri"], r["details"]["width"], r["details"]["height"]) for r in ingested
    ]
    # Annotation files and every ingested image of the folders this batch touches.
    folder_images: dict[str, list[ImageRef]] = {}
    annotation_rows: dict[str, dict[str, Any]] = {}
    for folder in sorted({folder_of(i.uri) for i in images}):
        rows = [
            r
            for r in manifest.processed_under(INGEST, folder + "/")
            if folder_of(r["object_uri"]) == folder
        ]
        folder_images[folder] = [
            ImageRef(r["object_uri"], r["details"]["width"], r["details"]["height"])
            for r in rows
            if r["status"] == "ok" and r["details"].get("kind") in IMAGE_KINDS
        ]
        for r in rows:
            if r["status"] == "ok" and r["details"].get("kind") == "annotation":
                annotation_rows[r["object_uri"]] = r

    job = f"augment-{batch_id}"
    to_stage = [
        ObjectInfo(parse_s3_uri(r["object_uri"]), r["etag"], int(r["details"].get("size", 0)))
        for r in ingested
    ]
    to_stage += [
        ObjectInfo(parse_s3_uri(uri), r["etag"], int(r["details"].get("size", 0)))
        for uri, r in annotation_rows.items()
    ]
    log_fn(
        f"{partition}: staging {len(ingested)} images and {len(annotation_rows)} annotation files"
    )
    staged = {
        str(s.info.uri): s
        for s in staging.stage_in(
            store,
            [ObjectInfo(i.uri, i.etag, i.size) for i in to_stage],
            job,
            base=None,
        )
    }
    annotation_files = [(uri, staged[uri].path) for uri in sorted(annotation_rows)]
    regions_by_uri, intake = collect_annotations(
        images, annotation_files, folder_images=folder_images
    )

    out_dir = staging.area("output", job)
    outputs: list[dict[str, Any]] = []
    uploads: list[tuple[Path, S3Uri]] = []
    digests: dict[Path, tuple[str, str]] = {}
    edges: list[LineageEdge] = []
    boxes_in = boxes_dropped = 0
    for row in ingested:
        src_uri = row["object_uri"]
        source = parse_s3_uri(src_uri)
        pixels = decode_rgb(staged[src_uri].path)
        regions = tuple(regions_by_uri.get(src_uri, ()))
        for k in range(pipeline.copies):
            seed = pipeline.seed_for(row["content_sha256"], k)
            result = augment_image(pixels, regions, pipeline, seed)
            data = encode_jpeg(result.image, pipeline.quality)
            target = config.augmented_uri.join(
                "images", tag, source.bucket, source.key, f"aug-{k}.jpg"
            )
            local = out_dir / source.bucket / source.key / f"aug-{k}.jpg"
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            md5, sha = _md5_sha(data)
            h, w = result.image.shape[:2]
            outputs.append(
                {
                    "uri": str(target),
                    "etag": md5,
                    "sha256": sha,
                    "source_uri": src_uri,
                    "source_sha256": row["content_sha256"],
                    "copy": k,
                    "seed": seed,
                    "width": w,
                    "height": h,
                    "regions": [_region_json(r) for r in result.regions],
                    "dropped_regions": result.dropped,
                }
            )
            uploads.append((local, target))
            digests[local] = (md5, sha)
            edges.append(LineageEdge(src_uri, str(target), AUGMENT))
            boxes_in += len(regions)
            boxes_dropped += result.dropped
    outputs.sort(key=lambda o: o["uri"])

    coco = coco_for_outputs(outputs)
    categories = [c["name"] for c in coco["categories"]]
    ls_tasks, ls_report = coco_to_ls(coco, image_ref=lambda name: name)
    ls_config = ls_report.label_config or label_config_for(categories, kind="rectangle")
    ls_errors = validate_tasks(ls_tasks, ls_config) if coco["annotations"] else []
    boxes_out = len(coco["annotations"])
    ls_regions = sum(
        len(a.get("result", []))
        for t in ls_tasks
        for a in [*t.get("annotations", []), *t.get("predictions", [])]
    )
    checks = {
        "every_source_has_copies": all(
            sum(1 for o in outputs if o["source_uri"] == r["object_uri"]) == pipeline.copies
            for r in ingested
        ),
        "boxes_inside_images": all(
            b[0] >= 0
            and b[1] >= 0
            and b[0] + b[2] <= o["width"] + 1e-3
            and b[1] + b[3] <= o["height"] + 1e-3
            for o in outputs
            for b in (r["bbox"] for r in o["regions"])
        ),
        "coco_boxes": boxes_out,
        "label_studio_regions": ls_regions,
        "label_studio_validation_errors": ls_errors[:20],
    }
    coco_uri = config.augmented_uri.join("annotations", tag, f"{batch_id}.coco.json")
    ls_uri = config.augmented_uri.join("annotations", tag, f"{batch_id}.label_studio.json")
    doc = {
        "schema": MANIFEST_SCHEMA,
        "stage": AUGMENT.stage,
        "step": AUGMENT.name,
        "partition_key": partition,
        "batch_id": batch_id,
        "dataset": config.dataset_name,
        "pipeline": {
            "name": pipeline.name,
            "config_hash": pipeline.config_hash,
            "copies": pipeline.copies,
            "transforms": list(pipeline.transforms),
            "bbox_rule": {
                "clip": True,
                "min_visibility": pipeline.min_visibility,
                "min_area_px": pipeline.min_area_px,
            },
        },
        "annotations": {
            "coco_uri": str(coco_uri),
            "label_studio_uri": str(ls_uri),
            "annotation_format": "coco",
            "converter_version": ls_report.converter_version,
            "conversion_parameters": ls_report.conversion_parameters,
            "intake": intake.as_dict(),
        },
        "checks": checks,
        "sources": [
            {
                "uri": r["object_uri"],
                "etag": r["etag"],
                "sha256": r["content_sha256"],
                "width": r["details"]["width"],
                "height": r["details"]["height"],
                "regions": [_region_json(x) for x in regions_by_uri.get(r["object_uri"], ())],
            }
            for r in sorted(ingested, key=lambda r: r["object_uri"])
        ],
        "outputs": outputs,
    }
    body = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    written = store.upload_many_if_changed(
        uploads, existing=store.stat_many([t for _, t in uploads]), digests=digests
    )
    written += store.put_bytes_if_changed(
        coco_uri, _json_bytes(coco), content_type="application/json"
    )
    written += store.put_bytes_if_changed(
        ls_uri, _json_bytes(ls_tasks), content_type="application/json"
    )
    written += store.put_bytes_if_changed(manifest_uri, body, content_type="application/json")
    totals = {
        "sources": len(ingested),
        "outputs": len(outputs),
        "boxes_in": boxes_in,
        "boxes_out": boxes_out,
        "boxes_dropped": boxes_dropped,
        "copies": pipeline.copies,
    }
    manifest.publish(
        ManifestPublication(
            step=AUGMENT,
            partition_key=partition,
            dataset_name=config.dataset_name,
            manifest_uri=str(manifest_uri),
            content_sha256=hashlib.sha256(body).hexdigest(),
            details={
                "totals": totals,
                "checks": checks,
                "batch_id": batch_id,
                "config_hash": pipeline.config_hash,
            },
            objects=[
                ProcessedObject(
                    uri=o["uri"],
                    etag=o["etag"],
                    content_sha256=o["sha256"],
                    details={
                        "source_uri": o["source_uri"],
                        "copy": o["copy"],
                        "kind": "augmented",
                        "width": o["width"],
                        "height": o["height"],
                    },
                )
                for o in outputs
            ],
            edges=edges,
            run_id=run_id,
        )
    )
    staging.cleanup(job)
    log_fn(f"{partition}: {totals}")
    return AugmentResult(
        partition, str(manifest_uri), False, objects_written=written, checks=checks, **totals
    )


def _region_json(r: Region) -> dict[str, Any]:
    out: dict[str, Any] = {"label": r.label, "bbox": [round(v, 3) for v in r.bbox]}
    if r.polygon:
        out["polygon"] = [round(v, 3) for v in r.polygon]
    if r.keypoints:
        out["keypoints"] = [[round(x, 3), round(y, 3)] for x, y in r.keypoints]
    if r.source_id:
        out["source_id"] = r.source_id
    return out


def _json_bytes(doc: Any) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
