"""Stage 3 gold tier from a curated training prefix (spec 001: "a training bucket that a
user filled from normalized outputs"), the alternative to one normalized variant.

What the prefix (``TRAIN_CURATED_URI``) may hold:

- JPEG images (``.jpg``/``.jpeg``; normalized outputs are always JPEG). Anything else that
  is not a JSON file is left out and named in the manifest's ``left_out``.
- COCO files (``*.json`` with ``images``, ``annotations`` and ``categories``): an
  image entry applies to the curated image whose key relative to the prefix equals its
  ``file_name`` (or whose full ``s3://`` URI does; or whose base name does when that is
  unique). Boxes are pixels of that JPEG, ``[x, y, w, h]`` from the top-left corner.
- An image no COCO file names takes the annotations of the normalized output with the
  same bytes (same SHA-256) that the manifest store knows, so a plain copy of normalized
  outputs needs no annotation file. Otherwise it is unlabelled (counted in the log).

Split: as for a variant (:data:`~imageml_core.stages.train.dataset.SPLIT_RULE`), by the
SHA-256 of the *source* image: a copied normalized output of an augmented image follows
its original (found through the augment manifests), so nothing leaks into validation; an
image the store does not know counts as an original, and so do bytes equal to an
original's (an augmented copy no transform changed).

The inputs' fingerprint hashes the listing (keys and ETags) and the settings, so a
rebuild of an unchanged prefix is found without downloading anything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from imageml_core.manifest.documents import (
    AugmentManifest,
    NormalizeManifest,
    TrainingDatasetSummary,
)
from imageml_core.manifest.interface import AUGMENT, NORMALIZE, TRAINING_SHARDS, ManifestStore
from imageml_core.manifest.publish import read_document
from imageml_core.stages.train.dataset import (
    SPLIT_RULE,
    DatasetConfig,
    DatasetResult,
    EmptyTrainingSet,
    Sample,
    dataset_version,
    publish_version,
)
from imageml_core.storage.object_store import ObjectInfo, ObjectStore
from imageml_core.storage.staging import NvmeStaging, raise_unless_quarantinable, staging_reason
from imageml_core.uris import S3Uri, parse_s3_uri

JPEG_SUFFIXES = (".jpg", ".jpeg")


@dataclass(frozen=True)
class KnownOutput:
    """A normalized output the manifest store knows: its kind, the SHA-256 of the original
    it comes from, its source URI, and its annotations (COCO, pixels of the output)."""

    kind: str
    origin_sha256: str
    source_uri: str
    annotations: tuple[Mapping[str, Any], ...]


def listing_fingerprint(objects: list[ObjectInfo], config: DatasetConfig) -> str:
    """16 hex over the prefix's keys and ETags and the settings that shape a version."""
    doc = {
        "curated": str(config.curated_uri),
        "objects": sorted([str(o.uri), o.etag] for o in objects),
        "val_fraction": config.val_fraction,
        "shard_images": config.shard_images,
        "rule": SPLIT_RULE,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _coco_files(
    store: ObjectStore, files: list[ObjectInfo], log_fn: Callable[[str], None]
) -> list[tuple[str, dict[str, Any]]]:
    """(URI, document) of each JSON under the prefix that is a COCO file; others logged."""
    out = []
    for info in files:
        try:
            doc = json.loads(store.get_bytes(info.uri))
        except ValueError as exc:
            log_fn(f"ignored {info.uri}: not JSON ({exc})")
            continue
        if not isinstance(doc, dict) or not all(
            isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")
        ):
            log_fn(f"ignored {info.uri}: not a COCO file (images, annotations, categories)")
            continue
        out.append((str(info.uri), doc))
    return out


def _known_outputs(
    store: ObjectStore, manifest: ManifestStore
) -> tuple[dict[str, KnownOutput], dict[int, dict[str, Any]]]:
    """Every normalized output the store has published, by SHA-256, and the categories of
    their COCO files (reads each normalize manifest, its COCO file and each augment
    manifest once)."""
    known: dict[str, KnownOutput] = {}
    categories: dict[int, dict[str, Any]] = {}
    origins: dict[str, str] = {}
    for record in manifest.manifests(AUGMENT):
        aug = read_document(store, record, AugmentManifest)
        origins |= {src.uri: src.sha256 for src in aug.sources}
        origins |= {o.uri: o.source_sha256 for o in aug.outputs}
    for record in manifest.manifests(NORMALIZE):
        doc = read_document(store, record, NormalizeManifest)
        coco = json.loads(store.get_bytes(parse_s3_uri(doc.annotations.coco_uri)))
        for c in coco["categories"]:
            categories.setdefault(int(c["id"]), {"id": int(c["id"]), "name": str(c["name"])})
        ids = {img["file_name"]: img["id"] for img in coco["images"]}
        by_image: dict[Any, list[dict[str, Any]]] = {}
        for ann in coco["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(_kept(ann))
        for out in doc.outputs:
            if out.sha256 in known and known[out.sha256].kind == "original":
                # An augmented copy can equal its original byte for byte (no transform
                # applied): the bytes are the original's, and may sit in validation.
                continue
            known[out.sha256] = KnownOutput(
                kind=out.source_kind,
                origin_sha256=origins.get(out.source_uri) or out.sha256,
                source_uri=out.source_uri,
                annotations=tuple(by_image.get(ids.get(out.output_uri), [])),
            )
    return known, categories


def _kept(ann: Mapping[str, Any]) -> dict[str, Any]:
    kept = {k: ann[k] for k in ("category_id", "bbox", "area", "iscrowd") if k in ann}
    if ann.get("segmentation"):
        kept["segmentation"] = ann["segmentation"]
    return kept


def _match_coco(
    cocos: list[tuple[str, dict[str, Any]]], images: list[ObjectInfo], prefix: S3Uri
) -> tuple[dict[str, tuple[dict[str, Any], ...]], dict[int, dict[str, Any]]]:
    """Image URI -> its annotations from the COCO files, and the categories (first name
    wins for an id)."""
    by_relative = {prefix.relative_key(i.uri): str(i.uri) for i in images}
    base_names: dict[str, list[str]] = {}
    for i in images:
        base_names.setdefault(i.uri.key.rsplit("/", 1)[-1], []).append(str(i.uri))
    found: dict[str, tuple[dict[str, Any], ...]] = {}
    categories: dict[int, dict[str, Any]] = {}
    for _, doc in cocos:
        for c in doc["categories"]:
            categories.setdefault(int(c["id"]), {"id": int(c["id"]), "name": str(c["name"])})
        anns: dict[Any, list[dict[str, Any]]] = {}
        for ann in doc["annotations"]:
            anns.setdefault(ann.get("image_id"), []).append(_kept(ann))
        for img in doc["images"]:
            name = str(img.get("file_name", ""))
            uri = by_relative.get(name) or (name if name in by_relative.values() else None)
            if uri is None and len(base_names.get(name.rsplit("/", 1)[-1], [])) == 1:
                uri = base_names[name.rsplit("/", 1)[-1]][0]
            if uri is not None:
                found[uri] = tuple(anns.get(img.get("id"), []))
    return found, categories


def build_curated_dataset(
    *,
    store: ObjectStore,
    staging: NvmeStaging,
    manifest: ManifestStore,
    config: DatasetConfig,
    run_id: str | None = None,
    log_fn: Callable[[str], None] = print,
) -> DatasetResult:
    """Build (or find) the dataset version of what ``config.curated_uri`` holds now.

    Raises :class:`~imageml_core.stages.train.dataset.EmptyTrainingSet` when the prefix
    holds no JPEG, and the object store's errors for a failed transfer."""
    prefix = config.curated_uri
    assert prefix is not None
    listed = list(store.list_objects(prefix))
    images = [o for o in listed if o.uri.key.lower().endswith(JPEG_SUFFIXES)]
    jsons = [o for o in listed if o.uri.key.lower().endswith(".json")]
    left_out = {
        str(o.uri): "not a JPEG: a curated prefix takes normalized outputs (JPEG) and COCO files"
        for o in listed
        if o not in images and o not in jsons
    }
    if not images:
        raise EmptyTrainingSet(
            f"the curated training prefix {prefix} holds no JPEG image: copy normalized "
            "outputs there (with a COCO file, or as they are), or unset TRAIN_CURATED_URI"
        )
    inputs = listing_fingerprint(listed, config)
    for record in manifest.manifests(TRAINING_SHARDS):
        if TrainingDatasetSummary.from_json(record.details).inputs == inputs:
            log_fn(f"{record.partition_key}: already built from {prefix} as it is; nothing to do")
            counts = TrainingDatasetSummary.from_json(record.details).counts
            return DatasetResult(record.partition_key, str(record.manifest_uri), True, counts)
    cocos = _coco_files(store, jsons, log_fn)
    annotated, categories = _match_coco(cocos, images, prefix)
    known: dict[str, KnownOutput] = {}
    if len(annotated) < len(images):
        known, known_categories = _known_outputs(store, manifest)
        for cid, c in known_categories.items():
            categories.setdefault(cid, c)
    with staging.job("train", f"curated-{inputs}", run_id) as job:
        failures: dict[str, Exception] = {}
        staged_objects = staging.stage_in(store, images, job, failures=failures)
        raise_unless_quarantinable(failures)
        left_out |= {uri: staging_reason(exc) for uri, exc in failures.items()}
        staged: dict[str, Path] = {}
        samples: list[Sample] = []
        unlabelled = 0
        for obj in staged_objects:
            uri = str(obj.info.uri)
            try:
                with Image.open(obj.path) as im:
                    width, height = im.size
                    im.verify()
            except Exception as exc:  # any decoder error means the same: not usable
                left_out[uri] = f"not a readable JPEG: {exc}"
                continue
            k = known.get(obj.sha256)
            anns = annotated.get(uri, k.annotations if k else ())
            unlabelled += not anns
            staged[uri] = obj.path
            samples.append(
                Sample(
                    key=hashlib.sha256(uri.encode()).hexdigest()[:32],
                    uri=uri,
                    etag=obj.info.etag,
                    sha256=obj.sha256,
                    kind=k.kind if k else "original",
                    width=width,
                    height=height,
                    origin_sha256=k.origin_sha256 if k else obj.sha256,
                    source_uri=k.source_uri if k else uri,
                    annotations=tuple(anns),
                )
            )
        for uri, reason in sorted(left_out.items()):
            log_fn(f"left out {uri}: {reason}")
        if unlabelled:
            log_fn(
                f"{unlabelled} curated image(s) have no annotation (no COCO entry, unknown bytes)"
            )
        samples.sort(key=lambda s: s.key)
        version = dataset_version(samples, config, inputs)
        return publish_version(
            store=store,
            staging=staging,
            manifest=manifest,
            config=config,
            job=job,
            version=version,
            samples=samples,
            staged=staged,
            categories=[categories[c] for c in sorted(categories)],
            sources=[str(prefix)] + [uri for uri, _ in cocos],
            inputs=inputs,
            left_out=left_out,
            run_id=run_id,
            log_fn=log_fn,
        )
