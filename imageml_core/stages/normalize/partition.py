"""Stage 2 for one (ingest batch, size variant) partition (plain Python; the asset calls it).

Inputs are the batch's "augmented shard" as the augment step's
:class:`~imageml_core.manifest.documents.AugmentManifest` records it: the original images
*and* their augmented copies, with their regions. Outputs per variant (layout in
:mod:`imageml_core.manifest.keys`): the JPEGs, COCO and Label Studio files with regions
rescaled, and a :class:`~imageml_core.manifest.documents.NormalizeManifest`.

Every source is decoded once for all variants: the first variant partition of a batch to
run computes every variant (:func:`~.batch.compute_batch`) and leaves a checkpoint; the
batch's other variant partitions then only publish their own manifest.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from imageml_core.annotations import ConversionReport, coco_to_ls
from imageml_core.annotations.coco import AnnotatedImage, coco_document
from imageml_core.manifest.annotation_versions import current_augment_key
from imageml_core.manifest.documents import (
    MAX_FINDINGS,
    AnnotationFiles,
    AugmentManifest,
    NormalizeChecks,
    NormalizedOutput,
    NormalizeManifest,
    NormalizeSummary,
    PolicyInfo,
    QuarantinedSource,
)
from imageml_core.manifest.interface import AUGMENT, NORMALIZE, ManifestStore
from imageml_core.manifest.keys import (
    AugmentKey,
    NormalizeKey,
    normalize_annotation_uris,
    normalize_manifest_uri,
    variant_base,
)
from imageml_core.manifest.lease import DEFAULT_TTL_S, Lease
from imageml_core.manifest.publish import publish_partition, published, read_document
from imageml_core.stages.normalize.batch import ShardImage, compute_batch
from imageml_core.stages.normalize.image import NormalizePolicy
from imageml_core.storage.object_store import ObjectStore
from imageml_core.storage.staging import NvmeStaging
from imageml_core.uris import S3Uri


class AugmentNotPublished(LookupError):
    """Stage 2 needs the batch's augment manifest, and there is none yet."""


@dataclass(frozen=True)
class NormalizeConfig:
    """Where variants go, which augmentation's shard to read, and how the batch's one
    computation is shared: ``workers`` processes (0 = one per core); a computing run holds
    its lease ``lease_ttl_s`` seconds past its last heartbeat (:mod:`imageml_core.manifest.lease`, a minute by
    default); waiters poll every ``lease_poll_s`` seconds."""

    normalized_uri: S3Uri
    dataset_name: str
    augment_tag: str  # "<pipeline>-<hash8>" of the augmentation whose shard is normalized
    workers: int = 0
    lease_ttl_s: float = DEFAULT_TTL_S
    lease_poll_s: float = 2.0


@dataclass
class NormalizeResult:
    """What one :func:`normalize_partition` call did (or found already done)."""

    partition: str
    variant: str
    manifest_uri: str
    already_published: bool
    outputs: int = 0
    computed: bool = False
    objects_written: int = 0
    decode_paths: dict[str, int] | None = None
    checks: NormalizeChecks | None = None
    sizes: dict[str, int] = field(default_factory=dict)  # "<w>x<h>" (pixels) -> outputs
    coco_uri: str = ""
    label_studio_uri: str = ""

    def metadata(self) -> dict[str, Any]:
        """Flat metadata for the Dagster materialization (scalars only)."""
        return {
            k: v
            for k, v in self.__dict__.items()
            if v is not None and k not in ("checks", "sizes", "coco_uri", "label_studio_uri")
        }


@dataclass(frozen=True)
class VariantsCheckpoint:
    """The batch's computed variants, kept until every variant partition has published.

    ``hashes`` maps variant name -> policy hash the entries were made with; ``sources``
    lists the shard's URIs; ``quarantined`` maps source URI -> reason and
    ``quarantined_etags`` source URI -> the ETag stage 1 recorded; ``category_ids`` the
    augment manifest's COCO category ids, kept in this stage's COCO files.
    """

    hashes: Mapping[str, str]
    variants: Mapping[str, tuple[NormalizedOutput, ...]]
    sources: tuple[str, ...]
    quarantined: Mapping[str, str] = field(default_factory=dict)
    quarantined_etags: Mapping[str, str] = field(default_factory=dict)
    category_ids: Mapping[str, int] = field(default_factory=dict)

    def entries(self, variant: str, policy_hash: str) -> tuple[NormalizedOutput, ...] | None:
        """The variant's entries if they were made with this policy, else None."""
        if self.hashes.get(variant) != policy_hash:
            return None
        return self.variants.get(variant)

    def to_json(self) -> dict[str, Any]:
        return {
            "hashes": dict(self.hashes),
            "variants": {k: [e.to_json() for e in v] for k, v in self.variants.items()},
            "sources": list(self.sources),
            "quarantined": dict(self.quarantined),
            "quarantined_etags": dict(self.quarantined_etags),
            "category_ids": dict(self.category_ids),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> VariantsCheckpoint:
        return cls(
            hashes=dict(doc.get("hashes") or {}),
            variants={
                k: tuple(NormalizedOutput.from_json(e) for e in v)
                for k, v in (doc.get("variants") or {}).items()
            },
            sources=tuple(doc.get("sources") or ()),
            quarantined=dict(doc.get("quarantined") or {}),
            quarantined_etags=dict(doc.get("quarantined_etags") or {}),
            category_ids=dict(doc.get("category_ids") or {}),
        )


_EMPTY = VariantsCheckpoint({}, {}, ())


def normalize_partition(
    batch_id: str,
    variant: str,
    *,
    store: ObjectStore,
    staging: NvmeStaging,
    manifest: ManifestStore,
    policy: NormalizePolicy,
    config: NormalizeConfig,
    run_id: str | None = None,
    log_fn: Callable[[str], None] = print,
) -> NormalizeResult:
    """Normalize and publish one variant of one batch.

    Raises ``ValueError`` if ``variant`` is not one of the policy's variants,
    :class:`AugmentNotPublished` if the batch's augment manifest is missing, and staging
    or transfer errors that are not a source's fault (a retry can succeed)."""
    names = [v.name for v in policy.variants]
    if variant not in names:
        raise ValueError(f"variant {variant!r} is not in NORMALIZE_SIZES ({', '.join(names)})")
    hashes = {v.name: policy.variant_hash(v) for v in policy.variants}
    # The shard as it is now: a new annotation version is a new shard to normalize.
    augment = current_augment_key(manifest, batch_id, config.augment_tag)
    key = NormalizeKey.of(augment, variant, hashes[variant])
    base = variant_base(config.normalized_uri, variant, hashes[variant])
    manifest_uri = normalize_manifest_uri(base, key)
    coco_uri, ls_uri = normalize_annotation_uris(base, key)
    if (record := published(manifest, NORMALIZE, str(key))) is not None:
        log_fn(f"{key}: already published; nothing to do")
        return _recorded_result(key, record.details, str(record.manifest_uri), coco_uri, ls_uri)
    computation = _variants(
        augment, variant, hashes, store, staging, manifest, policy, config, run_id, log_fn
    )
    entries = computation.checkpoint.entries(variant, hashes[variant]) or ()
    coco = coco_document(
        [AnnotatedImage(e.output_uri, e.width, e.height, e.regions) for e in entries],
        computation.checkpoint.category_ids,
    )
    ls_tasks, ls_report = coco_to_ls(coco, image_ref=lambda name: name)
    document = _document(key, base, config, policy, entries, computation.checkpoint, ls_report)
    written = computation.written + publish_partition(
        document,
        manifest_uri=manifest_uri,
        object_store=store,
        manifest_store=manifest,
        annotations=[(coco_uri, coco), (ls_uri, ls_tasks)],
        run_id=run_id,
    )
    how = "computed" if computation.computed else "from the batch checkpoint"
    log_fn(f"{key}: {len(entries)} outputs ({how})")
    return NormalizeResult(
        partition=str(key),
        variant=variant,
        manifest_uri=str(manifest_uri),
        already_published=False,
        outputs=len(entries),
        computed=computation.computed,
        objects_written=written,
        decode_paths=computation.paths,
        checks=document.checks,
        sizes=document.sizes,
        coco_uri=str(coco_uri),
        label_studio_uri=str(ls_uri),
    )


def _recorded_result(
    key: NormalizeKey, details: Mapping[str, Any], manifest_uri: str, coco: S3Uri, ls: S3Uri
) -> NormalizeResult:
    """The result of a partition published earlier, from the summary the store kept."""
    summary = NormalizeSummary.from_json(details)
    return NormalizeResult(
        partition=str(key),
        variant=key.variant,
        manifest_uri=manifest_uri,
        already_published=True,
        outputs=summary.outputs,
        checks=summary.checks,
        sizes=dict(summary.sizes),
        coco_uri=str(coco),
        label_studio_uri=str(ls),
    )


@dataclass
class _Computation:
    checkpoint: VariantsCheckpoint
    computed: bool = False
    written: int = 0
    paths: dict[str, int] | None = None


def _shard_name(augment: AugmentKey) -> str:
    """``<tag>[~<ann8>]``: names the shard (augmentation and annotation version)."""
    return str(augment).split("@", 1)[1]


def _checkpoint_name(augment: AugmentKey) -> str:
    return f"variants@{_shard_name(augment)}"


def _load(manifest: ManifestStore, augment: AugmentKey) -> VariantsCheckpoint:
    payload = manifest.load_checkpoint(NORMALIZE, augment.batch_id, _checkpoint_name(augment))
    return VariantsCheckpoint.from_json(payload) if payload else _EMPTY


def _variants(
    augment: AugmentKey,
    variant: str,
    hashes: dict[str, str],
    store: ObjectStore,
    staging: NvmeStaging,
    manifest: ManifestStore,
    policy: NormalizePolicy,
    config: NormalizeConfig,
    run_id: str | None,
    log_fn: Callable[[str], None],
) -> _Computation:
    """The batch's variants: from its checkpoint, from another run computing them, or
    computed here.

    One decode for all variants even when the batch's variant partitions run at once (the
    sensor launches them together): the lease holder computes, the others wait for its
    checkpoint. The holder's lease is kept alive by a heartbeat (:mod:`imageml_core.manifest.lease`):
    a holder that died is replaced at most ``lease_ttl_s`` seconds after its last heartbeat,
    and one that fails gives the lease back, so a retry does not wait at all.
    """
    batch_id = augment.batch_id
    ready = _load(manifest, augment)
    if ready.entries(variant, hashes[variant]) is not None:
        return _Computation(ready)
    digest = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:12]
    lease = Lease(
        manifest,
        NORMALIZE,
        batch_id,
        f"compute@{_shard_name(augment)}@{digest}",
        holder=run_id or f"local-{uuid.uuid4().hex[:8]}",
        ttl_s=config.lease_ttl_s,
    )
    waiting = False
    while not lease.acquire():
        if not waiting:
            log_fn(
                f"{batch_id}|{variant}: another run is computing this batch's variants; "
                f"waiting for its checkpoint (or for its lease to lapse, {config.lease_ttl_s:g} s "
                "after its last heartbeat)"
            )
            waiting = True
        time.sleep(config.lease_poll_s)
        ready = _load(manifest, augment)
        if ready.entries(variant, hashes[variant]) is not None:
            return _Computation(ready)
    with lease:
        # The previous holder may have finished between our read and our claim.
        ready = _load(manifest, augment)
        if ready.entries(variant, hashes[variant]) is not None:
            return _Computation(ready)
        return _compute(augment, hashes, store, staging, manifest, policy, config, run_id, log_fn)


def _compute(
    augment: AugmentKey,
    hashes: dict[str, str],
    store: ObjectStore,
    staging: NvmeStaging,
    manifest: ManifestStore,
    policy: NormalizePolicy,
    config: NormalizeConfig,
    run_id: str | None,
    log_fn: Callable[[str], None],
) -> _Computation:
    """Every variant of the shard, checkpointed for the batch's other partitions."""
    items, category_ids = _shard(store, manifest, augment)
    result = compute_batch(
        items,
        batch_id=augment.batch_id,
        store=store,
        staging=staging,
        policy=policy,
        normalized_uri=config.normalized_uri,
        workers=config.workers,
        run_id=run_id,
        log_fn=log_fn,
    )
    checkpoint = VariantsCheckpoint(
        hashes=hashes,
        variants={k: tuple(v) for k, v in result.per_variant.items()},
        sources=tuple(i.uri for i in items),
        quarantined=result.quarantined,
        quarantined_etags={i.uri: i.etag for i in items if i.uri in result.quarantined},
        category_ids=category_ids,
    )
    manifest.save_checkpoint(
        NORMALIZE, augment.batch_id, _checkpoint_name(augment), checkpoint.to_json()
    )
    return _Computation(checkpoint, True, result.written, result.paths)


def _shard(
    store: ObjectStore, manifest: ManifestStore, augment: AugmentKey
) -> tuple[list[ShardImage], dict[str, int]]:
    """The batch's originals and augmented copies, read through the augment manifest, and
    its COCO category ids."""
    record = published(manifest, AUGMENT, str(augment))
    if record is None:
        version = f" and annotation version {augment.annotations}" if augment.annotations else ""
        raise AugmentNotPublished(
            f"batch {augment.batch_id} has no augment manifest for pipeline {augment.tag}"
            f"{version}; materialize augmented_images first"
        )
    doc = read_document(store, record, AugmentManifest)
    items = [ShardImage(s.uri, s.etag, s.sha256, "original", s.regions) for s in doc.sources]
    items += [ShardImage(o.uri, o.etag, o.sha256, "augmented", o.regions) for o in doc.outputs]
    return sorted(items, key=lambda i: i.uri), dict(doc.annotations.category_ids or {})


def _document(
    key: NormalizeKey,
    base: S3Uri,
    config: NormalizeConfig,
    policy: NormalizePolicy,
    entries: tuple[NormalizedOutput, ...],
    checkpoint: VariantsCheckpoint,
    ls_report: ConversionReport,
) -> NormalizeManifest:
    """The variant's manifest, with the checks its asset check asserts."""
    spec = next(v for v in policy.variants if v.name == key.variant)
    wrong_size = [
        e.output_uri
        for e in entries
        if (e.width, e.height) != spec.target_size(e.source_width, e.source_height)
    ]
    missing = sorted(set(checkpoint.sources) - {e.source_uri for e in entries})
    checks = NormalizeChecks(
        missing_sources=tuple(missing[:MAX_FINDINGS]),
        wrong_dimensions=tuple(wrong_size[:MAX_FINDINGS]),
        # Why sources are missing, when they were quarantined (the first few).
        quarantined=dict(list(checkpoint.quarantined.items())[:MAX_FINDINGS]),
    )
    coco_uri, ls_uri = normalize_annotation_uris(base, key)
    return NormalizeManifest(
        partition_key=str(key),
        batch_id=key.batch_id,
        dataset=config.dataset_name,
        variant_name=key.variant,
        augment_tag=config.augment_tag,
        normalization_policy_hash=key.policy_hash,
        policy=PolicyInfo(
            fit=policy.fit,
            quality=policy.quality,
            chroma_subsampling=policy.chroma_subsampling,
            alpha_background=policy.alpha_background,
        ),
        annotations=AnnotationFiles(
            coco_uri=str(coco_uri),
            label_studio_uri=str(ls_uri),
            converter_version=ls_report.converter_version,
            conversion_parameters=ls_report.conversion_parameters,
            category_ids=dict(checkpoint.category_ids),
            annotation_version=key.annotations,
        ),
        checks=checks,
        quarantined=tuple(
            QuarantinedSource(uri, reason, checkpoint.quarantined_etags.get(uri, ""))
            for uri, reason in checkpoint.quarantined.items()
        ),
        outputs=entries,
    )
