"""Stage 3, gold tier: a training dataset version assembled from one normalized variant.

Inputs: for every ingest batch, the normalize manifest of ``variant`` under the current
policy and the batch's current augmentation and annotation version (the same partitions
``imageml run`` keeps up to date), its COCO file (regions in the variant's pixels, the
user's category ids), and the augment manifest (which original each augmented copy came
from).

Split (spec: no leakage into validation): an original image is in ``val`` when the first
32 bits of its SHA-256, as a fraction of 2**32, fall below ``val_fraction``; else in
``train``. Augmented copies go with their original: copies of a ``train`` original are
in ``train``, copies of a ``val`` original are left out (validation uses originals only).
The rule depends on the image's bytes alone, so an image never changes sides when the
dataset grows.

Outputs under ``TRAINING_URI/datasets/<version>/``: ``train-00000.tar``, ...,
``val-00000.tar`` in WebDataset layout (``<key>.jpg`` and ``<key>.json`` per sample, key
order; ``<key>`` the first 32 hex of SHA-256 of the image's URI) with fixed tar metadata,
so the same samples give byte-identical shards; then ``manifest.json``
(:class:`~imageml_core.manifest.documents.TrainingDatasetManifest`). Each ``.json`` holds
``{"image": {...}, "annotations": [COCO annotations], "split": ...}``, boxes in pixels
``[x, y, w, h]`` of that JPEG. The version id ``ds-<16 hex>`` hashes every sample's bytes,
annotations and split and the shard settings: building the same inputs twice gives the same
version and writes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imageml_core.manifest.annotation_versions import current_augment_key
from imageml_core.manifest.documents import (
    AugmentManifest,
    NormalizeManifest,
    Shard,
    TrainingDatasetManifest,
    TrainingDatasetSummary,
)
from imageml_core.manifest.interface import (
    AUGMENT,
    INGEST,
    NORMALIZE,
    TRAINING_SHARDS,
    ManifestRecord,
    ManifestStore,
)
from imageml_core.manifest.keys import NormalizeKey, training_dataset_base, training_shard_name
from imageml_core.manifest.publish import OutputFiles, publish_partition, published, read_document
from imageml_core.storage.object_store import ObjectInfo, ObjectStore
from imageml_core.storage.staging import NvmeStaging, raise_unless_quarantinable, staging_reason
from imageml_core.uris import S3Uri, parse_s3_uri

SPLIT_RULE = (
    "val if int(sha256(original)[:8], 16) / 2**32 < val_fraction, else train; augmented "
    "copies follow their original, and copies of val originals are left out"
)


class EmptyTrainingSet(ValueError):
    """No normalized image of the chosen variant exists yet."""


@dataclass(frozen=True)
class DatasetConfig:
    """``variant`` a NORMALIZE_SIZES token, ``policy_hash`` its current
    ``normalization_policy_hash``, ``augment_tag`` the current augmentation; the split
    fraction and images per shard; where versions go and the dataset name they are
    recorded under. ``curated_uri`` set means the version is built from that prefix
    instead of the variant (:mod:`imageml_core.stages.train.curated`)."""

    variant: str
    policy_hash: str
    augment_tag: str
    val_fraction: float
    shard_images: int
    training_uri: S3Uri
    dataset_name: str
    curated_uri: S3Uri | None = None


@dataclass(frozen=True)
class Sample:
    """One image of the set: ``key`` names its files in a shard; ``origin_sha256`` is the
    SHA-256 of the original it comes from (itself for an original); ``annotations`` COCO
    annotations in its pixels."""

    key: str
    uri: str
    etag: str
    sha256: str
    kind: str
    width: int
    height: int
    origin_sha256: str
    source_uri: str
    annotations: tuple[Mapping[str, Any], ...]

    def split(self, val_fraction: float) -> str | None:
        """``train``, ``val`` or None (a copy of a validation original: left out)."""
        in_val = int(self.origin_sha256[:8], 16) / 2**32 < val_fraction
        if not in_val:
            return "train"
        return "val" if self.kind == "original" else None

    def label(self, split: str) -> dict[str, Any]:
        """The sample's ``.json`` in its shard."""
        return {
            "image": {
                "uri": self.uri,
                "source_uri": self.source_uri,
                "kind": self.kind,
                "width": self.width,
                "height": self.height,
                "sha256": self.sha256,
            },
            "annotations": [dict(a) for a in self.annotations],
            "split": split,
        }


@dataclass
class DatasetResult:
    """What :func:`build_training_dataset` did (or found already done)."""

    version: str
    manifest_uri: str
    already_published: bool
    counts: dict[str, int] = field(default_factory=dict)
    objects_written: int = 0
    left_out: dict[str, str] = field(default_factory=dict)


def current_sources(
    manifest: ManifestStore, config: DatasetConfig
) -> list[tuple[ManifestRecord, ManifestRecord]]:
    """(normalize, augment) manifest rows the set is built from now: for every ingest
    batch, its current augmentation and annotation version under ``config.variant``'s
    policy; batches not normalized that way yet are not in it (a later version has them).
    Reads the manifest store only."""
    out = []
    for m in manifest.manifests(INGEST):
        augment = current_augment_key(manifest, m.partition_key, config.augment_tag)
        nkey = NormalizeKey.of(augment, config.variant, config.policy_hash)
        record = published(manifest, NORMALIZE, str(nkey))
        aug_record = published(manifest, AUGMENT, str(augment))
        if record is not None and aug_record is not None:
            out.append((record, aug_record))
    return out


def inputs_fingerprint(sources: Iterable[str], config: DatasetConfig) -> str:
    """16 hex over the normalize manifests read and every setting that shapes a version
    (variant, policy, split fraction, shard size, the split rule): a version with the same
    fingerprint is the one these inputs make, so ``imageml run`` can tell without reading
    S3 whether a build is due."""
    doc = {
        "sources": sorted(sources),
        "variant": config.variant,
        "policy_hash": config.policy_hash,
        "val_fraction": config.val_fraction,
        "shard_images": config.shard_images,
        "rule": SPLIT_RULE,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def current_inputs(
    store: ObjectStore, manifest: ManifestStore, config: DatasetConfig
) -> str | None:
    """The fingerprint of what the gold tier would be built from now (the normalize
    manifests of :func:`current_sources`, or the curated prefix's listing), or None when
    there is nothing to build from. The dataset version with this ``inputs`` is the one
    the current settings select; reads the manifest store (or lists the prefix) only."""
    if config.curated_uri is not None:
        from imageml_core.stages.train.curated import listing_fingerprint

        listed = list(store.list_objects(config.curated_uri))
        return listing_fingerprint(listed, config) if listed else None
    sources = [str(n.manifest_uri) for n, _ in current_sources(manifest, config)]
    return inputs_fingerprint(sources, config) if sources else None


def collect_samples(
    store: ObjectStore, manifest: ManifestStore, config: DatasetConfig
) -> tuple[list[Sample], list[dict[str, Any]], list[str]]:
    """Every normalized image of ``config.variant`` with its annotations, the COCO
    categories (the user's ids; the first batch's name wins for an id), and the normalize
    manifest URIs read (:func:`current_sources`)."""
    samples: list[Sample] = []
    categories: dict[int, dict[str, Any]] = {}
    sources: list[str] = []
    for record, aug_record in current_sources(manifest, config):
        sources.append(str(record.manifest_uri))
        doc = read_document(store, record, NormalizeManifest)
        aug = read_document(store, aug_record, AugmentManifest)
        origin = {s.uri: s.sha256 for s in aug.sources}
        origin |= {o.uri: o.source_sha256 for o in aug.outputs}
        coco = json.loads(store.get_bytes(parse_s3_uri(doc.annotations.coco_uri)))
        for c in coco["categories"]:
            categories.setdefault(int(c["id"]), {"id": int(c["id"]), "name": str(c["name"])})
        image_ids = {img["file_name"]: img["id"] for img in coco["images"]}
        by_image: dict[Any, list[dict[str, Any]]] = {}
        for ann in coco["annotations"]:
            kept = {k: ann[k] for k in ("category_id", "bbox", "area", "iscrowd") if k in ann}
            if ann.get("segmentation"):
                kept["segmentation"] = ann["segmentation"]
            by_image.setdefault(ann["image_id"], []).append(kept)
        for out in doc.outputs:
            samples.append(
                Sample(
                    key=hashlib.sha256(out.output_uri.encode()).hexdigest()[:32],
                    uri=out.output_uri,
                    etag=out.etag,
                    sha256=out.sha256,
                    kind=out.source_kind,
                    width=out.width,
                    height=out.height,
                    origin_sha256=origin.get(out.source_uri) or out.sha256,
                    source_uri=out.source_uri,
                    annotations=tuple(by_image.get(image_ids.get(out.output_uri), [])),
                )
            )
    samples.sort(key=lambda s: s.key)
    return samples, [categories[k] for k in sorted(categories)], sources


def dataset_version(samples: Iterable[Sample], config: DatasetConfig, inputs: str = "") -> str:
    """``ds-<16 hex>`` over the inputs' fingerprint (:func:`inputs_fingerprint`) and every
    sample (key, bytes, annotations, split): the same inputs give the same id, and other
    inputs or settings another one."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {
                "variant": config.variant,
                "shard_images": config.shard_images,
                "rule": SPLIT_RULE,
                "inputs": inputs,
            }
        ).encode()
    )
    for s in samples:
        row = [s.key, s.sha256, s.split(config.val_fraction), [dict(a) for a in s.annotations]]
        digest.update(json.dumps(row, sort_keys=True).encode())
    return f"ds-{digest.hexdigest()[:16]}"


def write_shard(path: Path, members: Iterable[tuple[Sample, Path, str]]) -> None:
    """A tar in WebDataset layout at ``path``: ``<key>.jpg`` then ``<key>.json`` per sample,
    in the given order, with fixed metadata (mtime 0, uid/gid 0, mode 0644), so the same
    samples give the same bytes."""

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample, local, split in members:
            add(tar, f"{sample.key}.jpg", local.read_bytes())
            label = json.dumps(sample.label(split), sort_keys=True).encode()
            add(tar, f"{sample.key}.json", label)


def build_training_dataset(
    *,
    store: ObjectStore,
    staging: NvmeStaging,
    manifest: ManifestStore,
    config: DatasetConfig,
    run_id: str | None = None,
    log_fn: Callable[[str], None] = print,
) -> DatasetResult:
    """Assemble, shard and publish the dataset version of what is normalized now (or of
    what the curated prefix holds, when ``config.curated_uri`` is set).

    Raises :class:`EmptyTrainingSet` when nothing of ``config.variant`` is normalized yet
    (or the curated prefix holds no JPEG),
    and the object store's errors for a failed transfer (a retry can succeed)."""
    if config.curated_uri is not None:
        from imageml_core.stages.train.curated import build_curated_dataset

        return build_curated_dataset(
            store=store,
            staging=staging,
            manifest=manifest,
            config=config,
            run_id=run_id,
            log_fn=log_fn,
        )
    samples, categories, sources = collect_samples(store, manifest, config)
    if not samples:
        raise EmptyTrainingSet(
            f"no normalized image of variant {config.variant!r} yet: run the earlier stages "
            "first (imageml run --until normalize)"
        )
    inputs = inputs_fingerprint(sources, config)
    version = dataset_version(samples, config, inputs)
    if (record := published(manifest, TRAINING_SHARDS, version)) is not None:
        log_fn(f"{version}: already published; nothing to do")
        counts = TrainingDatasetSummary.from_json(record.details).counts
        return DatasetResult(version, str(record.manifest_uri), True, dict(counts))
    with staging.job("train", version, run_id) as job:
        infos = [ObjectInfo(parse_s3_uri(s.uri), s.etag, 0) for s in samples]
        failures: dict[str, Exception] = {}
        staged = {
            str(o.info.uri): o.path for o in staging.stage_in(store, infos, job, failures=failures)
        }
        raise_unless_quarantinable(failures)  # a network or disk error: a retry can work
        # A normalized image deleted or replaced since stage 2 published it is left out and
        # named in the manifest; the rest of the set goes on.
        left_out = {uri: staging_reason(exc) for uri, exc in sorted(failures.items())}
        for uri, reason in left_out.items():
            log_fn(f"left out {uri}: {reason}")
        if left_out:
            samples = [s for s in samples if s.uri not in left_out]
            version = dataset_version(samples, config, inputs)
            if (record := published(manifest, TRAINING_SHARDS, version)) is not None:
                log_fn(f"{version}: already published; nothing to do")
                counts = TrainingDatasetSummary.from_json(record.details).counts
                return DatasetResult(version, str(record.manifest_uri), True, dict(counts))
        return publish_version(
            store=store,
            staging=staging,
            manifest=manifest,
            config=config,
            job=job,
            version=version,
            samples=samples,
            staged=staged,
            categories=categories,
            sources=sources,
            inputs=inputs,
            left_out=left_out,
            run_id=run_id,
            log_fn=log_fn,
        )


def publish_version(
    *,
    store: ObjectStore,
    staging: NvmeStaging,
    manifest: ManifestStore,
    config: DatasetConfig,
    job: str,
    version: str,
    samples: list[Sample],
    staged: Mapping[str, Path],
    categories: list[dict[str, Any]],
    sources: list[str],
    inputs: str,
    left_out: Mapping[str, str],
    run_id: str | None,
    log_fn: Callable[[str], None],
) -> DatasetResult:
    """Split ``samples``, write the shards from their staged files (``staged``: image URI
    -> local path), then publish the manifest and the dataset-version row (outputs first,
    manifest last). Shared by both sources of a version (a normalized variant, a curated
    prefix)."""
    base = training_dataset_base(config.training_uri, version)
    manifest_uri = base.join("manifest.json")
    splits: dict[str, list[Sample]] = {"train": [], "val": []}
    for s in samples:
        if (split := s.split(config.val_fraction)) is not None:
            splits[split].append(s)
    if dropped := len(samples) - len(splits["train"]) - len(splits["val"]):
        log_fn(
            f"{version}: {dropped} augmented copies of validation originals left out "
            "(validation uses originals only; nothing leaks)"
        )
    log_fn(
        f"{version}: {len(splits['train'])} train / {len(splits['val'])} val images of "
        f"{config.variant} from {len(sources)} batch(es)"
    )
    if not splits["val"]:
        log_fn(
            f"{version}: no validation image: TRAIN_VAL_FRACTION={config.val_fraction} of "
            f"{sum(s.kind == 'original' for s in samples)} originals selects none"
        )
    if not any(s.annotations for s in samples):
        log_fn(f"{version}: no image has an annotation (an unlabelled set)")
    out_dir = staging.area("output", job)
    files: list[tuple[Path, S3Uri]] = []
    shards: list[Shard] = []
    members: dict[str, list[str]] = {}
    for split, chosen in splits.items():
        for n in range(0, len(chosen), config.shard_images):
            chunk = chosen[n : n + config.shard_images]
            name = training_shard_name(split, n // config.shard_images)
            local = out_dir / name
            write_shard(local, [(s, staged[s.uri], split) for s in chunk])
            data = local.read_bytes()
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            sha = hashlib.sha256(data).hexdigest()
            files.append((local, base.join(name)))
            shards.append(Shard(str(base.join(name)), split, len(chunk), md5, sha))
            members[str(base.join(name))] = [s.uri for s in chunk]
    document = TrainingDatasetManifest(
        partition_key=version,
        dataset=config.dataset_name,
        variant=config.variant,
        normalization_policy_hash=config.policy_hash,
        val_fraction=config.val_fraction,
        shard_images=config.shard_images,
        inputs=inputs,
        split_rule=SPLIT_RULE,
        sources=tuple(sources),
        categories=tuple(categories),
        shards=tuple(shards),
        counts={k: len(v) for k, v in splits.items()},
        left_out=left_out,
        members=members,
    )
    written = publish_partition(
        document,
        manifest_uri=manifest_uri,
        object_store=store,
        manifest_store=manifest,
        outputs=OutputFiles(
            files, {p: (s.etag, s.sha256) for (p, _), s in zip(files, shards, strict=True)}
        ),
        run_id=run_id,
    )
    return DatasetResult(
        version, str(manifest_uri), False, dict(document.counts), written, dict(left_out)
    )
