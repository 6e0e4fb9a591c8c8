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
import os
import time
from collections.abc import Callable
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
from PIL import Image

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
from imageml_core.normalize import NormalizePolicy, normalize_image, scale_polygon, scale_region
from imageml_core.object_store import ObjectInfo, ObjectStore
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


def variant_base(normalized_uri: S3Uri, variant: str, policy_hash: str) -> S3Uri:
    """Everything of one variant under one policy: ``normalized/<variant>/<hash12>/``.

    The policy hash in the path keeps outputs immutable: a changed setting writes beside
    the old outputs (which their manifests still describe) instead of over them.
    """
    return normalized_uri.join("normalized", variant, policy_hash[:12])


def output_uri_for(base: S3Uri, source: S3Uri) -> S3Uri:
    key = source.key if source.key.lower().endswith((".jpg", ".jpeg")) else source.key + ".jpg"
    return base.join(source.bucket, key)


def _worker(args: tuple[str, str, NormalizePolicy, str]) -> dict[str, Any]:
    """Process-pool task: normalize one staged file, write variants under ``out_root``."""
    src_path, rel, policy, out_root = args
    try:
        result = normalize_image(Path(src_path), policy)
    except (OSError, ValueError, cv2.error, Image.DecompressionBombError) as exc:
        # Ingest verified every source, so this is an object changed or broken since:
        # it is quarantined with the reason and the batch goes on.
        return {"error": f"{type(exc).__name__}: {str(exc).strip() or 'unreadable image'}"}
    out: dict[str, Any] = {
        "source_width": result.source_width,
        "source_height": result.source_height,
        "path": result.path,
        "variants": {},
    }
    for v in result.variants:
        target = Path(out_root) / v.name / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(v.data)
        out["variants"][v.name] = {
            "local": str(target),
            "width": v.width,
            "height": v.height,
            "geometry": list(v.geometry),
            "md5": hashlib.md5(v.data, usedforsecurity=False).hexdigest(),
            "sha256": hashlib.sha256(v.data).hexdigest(),
        }
    return out


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


def _compute_all(
    items: list[dict[str, Any]],
    *,
    batch_id: str,
    store: ObjectStore,
    staging: NvmeStaging,
    policy: NormalizePolicy,
    config: NormalizeConfig,
    log_fn: Callable[[str], None],
) -> tuple[dict[str, list[dict[str, Any]]], int, dict[str, int], dict[str, str]]:
    """Every variant of every item. Returns entries per variant, objects written, decode
    paths used, and the sources quarantined (URI -> reason)."""
    job = f"normalize-{batch_id}"
    infos = [ObjectInfo(parse_s3_uri(i["uri"]), i["etag"], 0) for i in items]
    out_root = staging.area("output", job)
    workers = config.workers or os.cpu_count() or 1
    # The shard is staged in chunks, the next chunk downloading while the pool decodes
    # the current one, so transfer overlaps compute; sizes come from a listing first so the
    # capacity check still covers the whole shard before the first byte moves.
    quarantined: dict[str, str] = {}
    stats = store.stat_many([i.uri for i in infos])
    current = []
    for recorded in infos:
        now = stats.get(recorded.uri)
        if now is None:
            quarantined[str(recorded.uri)] = "no longer exists"
        elif recorded.etag and now.etag != recorded.etag:
            # The augment manifest's hashes and annotations describe the recorded bytes.
            quarantined[str(recorded.uri)] = (
                f"changed since it was recorded (ETag {recorded.etag} then, {now.etag} now)"
            )
        else:
            current.append(now)
    infos = current
    for uri, reason in quarantined.items():
        log_fn(f"{batch_id}: quarantined {uri}: {reason}")
    staging.check_capacity(sum(i.size for i in infos))
    # What the targets already hold, in one listing per variant rather than a HEAD per
    # upload: a rerun skips identical bytes without asking the server object by object.
    existing = store.stat_many(
        [
            output_uri_for(
                variant_base(config.normalized_uri, v.name, policy.variant_hash(v)), i.uri
            )
            for v in policy.variants
            for i in infos
        ]
    )
    chunk = max(workers * 4, 8)
    chunks = [infos[n : n + chunk] for n in range(0, len(infos), chunk)]
    per_variant: dict[str, list[dict[str, Any]]] = {v.name: [] for v in policy.variants}
    paths: dict[str, int] = {}
    written = 0
    uploads: list[Future[int]] = []
    failures: dict[str, Exception] = {}
    log_fn(
        f"{batch_id}: normalizing {len(items)} images into {len(policy.variants)} variants on {workers} processes"
    )
    with (
        ProcessPoolExecutor(workers) as pool,
        ThreadPoolExecutor(store.max_concurrency) as uploader,
    ):
        by_uri = {i["uri"]: i for i in items}
        pending = {}
        with ThreadPoolExecutor(1) as stager:
            next_chunk = (
                stager.submit(staging.stage_in, store, chunks[0], job, failures=failures)
                if chunks
                else None
            )
            for n in range(len(chunks)):
                assert next_chunk is not None
                staged = next_chunk.result()
                if n + 1 < len(chunks):
                    next_chunk = stager.submit(
                        staging.stage_in, store, chunks[n + 1], job, failures=failures
                    )
                for s in staged:
                    source = s.info.uri
                    rel = f"{source.bucket}/{source.key}"
                    fut = pool.submit(_worker, (str(s.path), rel, policy, str(out_root)))
                    pending[fut] = by_uri[str(source)]
        done_count = 0
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                item = pending.pop(fut)
                result = fut.result()
                done_count += 1
                if "error" in result:
                    quarantined[item["uri"]] = result["error"]
                    log_fn(f"{batch_id}: quarantined {item['uri']}: {result['error']}")
                    continue
                paths[result["path"]] = paths.get(result["path"], 0) + 1
                source = parse_s3_uri(item["uri"])
                for v in policy.variants:
                    info = result["variants"][v.name]
                    target = output_uri_for(
                        variant_base(config.normalized_uri, v.name, policy.variant_hash(v)), source
                    )
                    # Upload while the pool keeps decoding: transfer overlaps compute.
                    local = Path(info["local"])
                    uploads.append(
                        uploader.submit(
                            store.upload_many_if_changed,
                            [(local, target)],
                            existing=existing,
                            digests={local: (info["md5"], info["sha256"])},
                        )
                    )
                    regions = []
                    for r in item["regions"]:
                        box = scale_region(
                            tuple(r["bbox"]), tuple(info["geometry"]), info["width"], info["height"]
                        )
                        if box is None:
                            continue
                        region: dict[str, Any] = {
                            "label": r["label"],
                            "bbox": [round(x, 3) for x in box],
                        }
                        if r.get("polygon"):
                            region["polygon"] = [
                                round(x, 3)
                                for x in scale_polygon(
                                    tuple(r["polygon"]),
                                    tuple(info["geometry"]),
                                    info["width"],
                                    info["height"],
                                )
                            ]
                        regions.append(region)
                    per_variant[v.name].append(
                        {
                            "source_uri": item["uri"],
                            "source_kind": item["kind"],
                            "variant_name": v.name,
                            "output_uri": str(target),
                            "source_width": result["source_width"],
                            "source_height": result["source_height"],
                            "width": info["width"],
                            "height": info["height"],
                            "normalization_policy_hash": policy.variant_hash(v),
                            "sha256": info["sha256"],
                            "etag": info["md5"],
                            "geometry": [round(g, 6) for g in info["geometry"]],
                            "regions": regions,
                        }
                    )
                if done_count % 25 == 0 or done_count == len(items):
                    log_fn(f"{batch_id}: normalized {done_count}/{len(items)}")
        written = sum(f.result() for f in uploads)
    staging.cleanup(job)
    for uri, exc in failures.items():
        quarantined[uri] = f"could not be staged: {exc}"
        log_fn(f"{batch_id}: quarantined {uri}: could not be staged: {exc}")
    for entries in per_variant.values():
        entries.sort(key=lambda e: e["output_uri"])
    return per_variant, written, paths, dict(sorted(quarantined.items()))


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
    if entries is None:
        # One decode for all variants even when the batch's variant partitions run at once
        # (the sensor launches them together): the lease holder computes, the others wait
        # for its checkpoint. A holder that died is replaced after lease_ttl_s.
        lease = f"compute@{config.augment_tag}@{hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:12]}"
        if not manifest.claim(NORMALIZE, batch_id, lease, run_id or "local", config.lease_ttl_s):
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
    if entries is None:
        items = _shard(store, manifest, batch_id, config.augment_tag)
        per_variant, written, paths, quarantined = _compute_all(
            items,
            batch_id=batch_id,
            store=store,
            staging=staging,
            policy=policy,
            config=config,
            log_fn=log_fn,
        )
        manifest.save_checkpoint(
            NORMALIZE,
            batch_id,
            checkpoint_name,
            {
                "hashes": hashes,
                "variants": per_variant,
                "sources": [i["uri"] for i in items],
                "quarantined": quarantined,
            },
        )
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
    etags = {i["uri"]: i["etag"] for i in items}
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
                    etag=etags.get(uri, ""),
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
