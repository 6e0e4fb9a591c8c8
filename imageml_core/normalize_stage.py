"""Stage 2 for one (ingest batch, size variant) partition (plain Python; the asset calls it).

Inputs are the batch's "augmented shard" as recorded by the augment step's manifest: the
original images *and* their augmented copies, with their regions. Outputs, per variant:

- ``<NORMALIZED_URI>/normalized/<variant>/<hash12>/<source bucket>/<source key>`` (JPEG; a
  non-JPEG source keeps its name with ``.jpg`` appended); ``<hash12>`` is the start of the
  variant's ``normalization_policy_hash``
- ``.../normalized/<variant>/<hash12>/annotations/<batch>.coco.json`` and
  ``.label_studio.json`` (regions rescaled to the variant)
- ``.../normalized/<variant>/<hash12>/manifests/<batch>.json``: per output
  ``source_uri, variant_name, output_uri, width, height, normalization_policy_hash, sha256``

Every source is decoded once for all variants: the first variant partition of a batch to
run computes every variant (process pool, uploads overlapped with compute) and leaves a
checkpoint; the batch's other variant partitions then only publish their own manifest.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imageml_core.augment_stage import coco_for_outputs
from imageml_core.manifest import (
    AUGMENT,
    NORMALIZE,
    STATUS_QUARANTINED,
    LineageEdge,
    ManifestPublication,
    ManifestStore,
    ProcessedObject,
)
from imageml_core.normalize import NormalizePolicy
from imageml_core.normalize_batch import compute_batch, variant_base
from imageml_core.object_store import ObjectStore
from imageml_core.staging import NvmeStaging
from imageml_core.uris import S3Uri, parse_s3_uri

MANIFEST_SCHEMA = "imageml.manifest/v1"


class AugmentNotPublished(LookupError):
    """Stage 2 needs the batch's augment manifest, and there is none yet."""


@dataclass(frozen=True)
class NormalizeConfig:
    normalized_uri: S3Uri
    dataset_name: str
    augment_tag: str  # "<pipeline>-<hash8>" of the augmentation whose shard is normalized
    workers: int = 0  # 0 = one process per core
    lease_ttl_s: float = 1800.0  # how long a run computing a batch may hold it
    lease_poll_s: float = 2.0


@dataclass
class NormalizeResult:
    partition: str
    variant: str
    manifest_uri: str
    already_published: bool
    outputs: int = 0
    computed: bool = False
    objects_written: int = 0
    decode_paths: dict[str, int] | None = None
    checks: dict[str, Any] | None = None

    def metadata(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and k != "checks"}


def _shard(
    store: ObjectStore, manifest: ManifestStore, batch_id: str, tag: str
) -> list[dict[str, Any]]:
    published = manifest.get_manifest(AUGMENT, f"{batch_id}@{tag}")
    if published is None:
        raise AugmentNotPublished(
            f"batch {batch_id} has no augment manifest for pipeline {tag}; materialize augmented_images first"
        )
    doc = json.loads(store.get_bytes(parse_s3_uri(published["manifest_uri"])))
    items = [
        {
            "uri": s["uri"],
            "etag": s.get("etag", ""),
            "sha256": s["sha256"],
            "regions": s["regions"],
            "kind": "original",
        }
        for s in doc["sources"]
    ]
    items += [
        {
            "uri": o["uri"],
            "etag": o["etag"],
            "sha256": o["sha256"],
            "regions": o["regions"],
            "kind": "augmented",
        }
        for o in doc["outputs"]
    ]
    return sorted(items, key=lambda i: i["uri"])


def coco_for_variant(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """COCO for one variant's outputs (same rules as the augment step's document)."""
    return coco_for_outputs(
        [
            {
                "uri": e["output_uri"],
                "width": e["width"],
                "height": e["height"],
                "regions": e["regions"],
            }
            for e in entries
        ]
    )


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
    from imageml_core.annotations import coco_to_ls

    names = [v.name for v in policy.variants]
    if variant not in names:
        raise ValueError(f"variant {variant!r} is not in NORMALIZE_SIZES ({', '.join(names)})")
    hashes = {v.name: policy.variant_hash(v) for v in policy.variants}
    partition = f"{batch_id}|{variant}@{hashes[variant][:12]}"
    base = variant_base(config.normalized_uri, variant, hashes[variant])
    manifest_uri = base.join("manifests", f"{batch_id}.json")
    if (published := manifest.get_manifest(NORMALIZE, partition)) is not None:
        log_fn(f"{partition}: already published; nothing to do")
        details = published["details"]
        return NormalizeResult(
            partition,
            variant,
            str(published["manifest_uri"]),
            True,
            details["outputs"],
            checks=details["checks"],
        )

    checkpoint_name = f"variants@{config.augment_tag}"
    checkpoint = manifest.load_checkpoint(NORMALIZE, batch_id, checkpoint_name) or {}
    entries = (
        checkpoint.get("variants", {}).get(variant)
        if checkpoint.get("hashes", {}).get(variant) == hashes[variant]
        else None
    )
    computed, written, paths, items = False, 0, None, []
    holder, held = run_id or "local", None
    if entries is None:
        # One decode for all variants even when the batch's variant partitions run at once
        # (the sensor launches them together): the lease holder computes, the others wait
        # for its checkpoint. A holder that died is replaced after lease_ttl_s.
        lease = f"compute@{config.augment_tag}@{hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:12]}"
        if manifest.claim(NORMALIZE, batch_id, lease, holder, config.lease_ttl_s):
            held = lease
            # The previous holder may have finished between our read and our claim.
            checkpoint = manifest.load_checkpoint(NORMALIZE, batch_id, checkpoint_name) or {}
            if checkpoint.get("hashes", {}).get(variant) == hashes[variant]:
                entries = checkpoint["variants"].get(variant)
                manifest.release(NORMALIZE, batch_id, lease, holder)
        else:
            log_fn(
                f"{partition}: another run is computing this batch's variants; waiting for its checkpoint"
            )
            deadline = time.monotonic() + config.lease_ttl_s
            while entries is None and time.monotonic() < deadline:
                time.sleep(config.lease_poll_s)
                checkpoint = manifest.load_checkpoint(NORMALIZE, batch_id, checkpoint_name) or {}
                if checkpoint.get("hashes", {}).get(variant) == hashes[variant]:
                    entries = checkpoint["variants"].get(variant)
    quarantined: dict[str, str] = checkpoint.get("quarantined", {})
    # The ETags the quarantined sources were recorded with: their ledger rows carry them,
    # whichever variant partition publishes first.
    quarantined_etags: dict[str, str] = checkpoint.get("quarantined_etags", {})
    if entries is None:
        try:
            items = _shard(store, manifest, batch_id, config.augment_tag)
            per_variant, written, paths, quarantined = compute_batch(
                items,
                batch_id=batch_id,
                store=store,
                staging=staging,
                policy=policy,
                normalized_uri=config.normalized_uri,
                workers=config.workers,
                log_fn=log_fn,
            )
            quarantined_etags = {i["uri"]: i["etag"] for i in items if i["uri"] in quarantined}
            manifest.save_checkpoint(
                NORMALIZE,
                batch_id,
                checkpoint_name,
                {
                    "hashes": hashes,
                    "variants": per_variant,
                    "sources": [i["uri"] for i in items],
                    "quarantined": quarantined,
                    "quarantined_etags": quarantined_etags,
                },
            )
        finally:
            # Given back on failure too, so a retry need not wait out lease_ttl_s.
            if held is not None:
                manifest.release(NORMALIZE, batch_id, held, holder)
        entries, computed = per_variant[variant], True

    spec = next(v for v in policy.variants if v.name == variant)
    expected_sources = checkpoint.get("sources") if not computed else [i["uri"] for i in items]
    wrong_size = [
        e["output_uri"]
        for e in entries
        if (e["width"], e["height"]) != spec.target_size(e["source_width"], e["source_height"])
    ]
    checks = {
        "missing_sources": sorted(set(expected_sources or []) - {e["source_uri"] for e in entries})[
            :50
        ],
        "wrong_dimensions": wrong_size[:50],
        # Why sources are missing, when they were quarantined (the first 50).
        "quarantined": dict(list(quarantined.items())[:50]),
    }
    coco = coco_for_variant(entries)
    ls_tasks, ls_report = coco_to_ls(coco, image_ref=lambda name: name)
    doc = {
        "schema": MANIFEST_SCHEMA,
        "stage": NORMALIZE.stage,
        "step": NORMALIZE.name,
        "partition_key": partition,
        "batch_id": batch_id,
        "variant_name": variant,
        "augment_tag": config.augment_tag,
        "normalization_policy_hash": hashes[variant],
        "policy": {
            "fit": policy.fit,
            "quality": policy.quality,
            "chroma_subsampling": policy.chroma_subsampling,
            "format": "jpeg",
            "alpha_background": list(policy.alpha_background),
        },
        "annotations": {
            "coco_uri": str(base.join("annotations", f"{batch_id}.coco.json")),
            "label_studio_uri": str(base.join("annotations", f"{batch_id}.label_studio.json")),
            "converter_version": ls_report.converter_version,
            "conversion_parameters": ls_report.conversion_parameters,
        },
        "checks": checks,
        "quarantined": [{"source_uri": u, "reason": r} for u, r in quarantined.items()],
        "outputs": [{k: v for k, v in e.items() if k not in ("regions", "etag")} for e in entries],
    }
    body = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    written += store.put_bytes_if_changed(
        base.join("annotations", f"{batch_id}.coco.json"),
        _json(coco),
        content_type="application/json",
    )
    written += store.put_bytes_if_changed(
        base.join("annotations", f"{batch_id}.label_studio.json"),
        _json(ls_tasks),
        content_type="application/json",
    )
    written += store.put_bytes_if_changed(manifest_uri, body, content_type="application/json")
    manifest.publish(
        ManifestPublication(
            step=NORMALIZE,
            partition_key=partition,
            dataset_name=config.dataset_name,
            manifest_uri=str(manifest_uri),
            content_sha256=hashlib.sha256(body).hexdigest(),
            details={
                "outputs": len(entries),
                "variant": variant,
                "normalization_policy_hash": hashes[variant],
                "checks": checks,
            },
            objects=[
                ProcessedObject(
                    uri=e["output_uri"],
                    etag=e["etag"],
                    content_sha256=e["sha256"],
                    details={
                        "kind": "normalized",
                        "source_uri": e["source_uri"],
                        "variant_name": variant,
                        "width": e["width"],
                        "height": e["height"],
                        "normalization_policy_hash": e["normalization_policy_hash"],
                    },
                )
                for e in entries
            ]
            + [
                ProcessedObject(
                    uri=uri,
                    etag=quarantined_etags.get(uri, ""),
                    status=STATUS_QUARANTINED,
                    reason=reason,
                    details={"kind": "normalize_source", "variant_name": variant},
                )
                for uri, reason in quarantined.items()
            ],
            edges=[LineageEdge(e["source_uri"], e["output_uri"], NORMALIZE) for e in entries],
            run_id=run_id,
        )
    )
    log_fn(
        f"{partition}: {len(entries)} outputs ({'computed' if computed else 'from the batch checkpoint'})"
    )
    return NormalizeResult(
        partition, variant, str(manifest_uri), False, len(entries), computed, written, paths, checks
    )


def _json(doc: Any) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
