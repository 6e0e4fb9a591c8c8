"""Stage 2 for one ingest batch: every variant of every source, computed once.

Stages the shard from S3 to NVMe in chunks (the next chunk downloading while the process
pool decodes the current one), normalizes each staged file in a worker process, uploads
each output as soon as it exists (transfer overlaps compute), and quarantines sources
that changed, vanished or no longer decode since stage 1 recorded them. Plain Python: the
partition logic in :mod:`imageml_core.normalize_stage` calls it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from pathlib import Path
from typing import Any

import cv2
from PIL import Image

from imageml_core.normalize import NormalizePolicy, normalize_image, scale_polygon, scale_region
from imageml_core.object_store import ObjectChanged, ObjectInfo, ObjectNotFound, ObjectStore
from imageml_core.staging import NvmeStaging
from imageml_core.uris import S3Uri, parse_s3_uri


def variant_base(normalized_uri: S3Uri, variant: str, policy_hash: str) -> S3Uri:
    """Everything of one variant under one policy: ``normalized/<variant>/<hash12>/``.

    The policy hash in the path keeps outputs immutable: a changed setting writes beside
    the old outputs (which their manifests still describe) instead of over them.
    """
    return normalized_uri.join("normalized", variant, policy_hash[:12])


def output_uri_for(base: S3Uri, source: S3Uri) -> S3Uri:
    key = source.key if source.key.lower().endswith((".jpg", ".jpeg")) else source.key + ".jpg"
    return base.join(source.bucket, key)


def normalize_staged_file(args: tuple[str, str, NormalizePolicy, str]) -> dict[str, Any]:
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


def _raise_unless_quarantinable(failures: dict[str, Exception]) -> None:
    """A source that vanished or changed is quarantined; any other staging failure
    (network, permissions, a full disk) is not the object's fault, so it fails the batch
    and a retry can succeed, instead of leaving the source out of a published manifest."""
    for exc in failures.values():
        if not isinstance(exc, (ObjectNotFound, ObjectChanged)):
            raise exc


def compute_batch(
    items: list[dict[str, Any]],
    *,
    batch_id: str,
    store: ObjectStore,
    staging: NvmeStaging,
    policy: NormalizePolicy,
    normalized_uri: S3Uri,
    workers: int = 0,
    log_fn: Callable[[str], None],
) -> tuple[dict[str, list[dict[str, Any]]], int, dict[str, int], dict[str, str]]:
    """Every variant of every item. Returns entries per variant, objects written, decode
    paths used, and the sources quarantined (URI -> reason)."""
    job = f"normalize-{batch_id}"
    infos = [ObjectInfo(parse_s3_uri(i["uri"]), i["etag"], 0) for i in items]
    out_root = staging.area("output", job)
    workers = workers or os.cpu_count() or 1
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
    # What the targets already hold, from a listing of each variant's own key range rather
    # than a HEAD per upload: a rerun skips identical bytes without asking object by object.
    existing: dict[S3Uri, ObjectInfo | None] = {}
    for v in policy.variants:
        base = variant_base(normalized_uri, v.name, policy.variant_hash(v))
        existing |= store.stat_many([output_uri_for(base, i.uri) for i in infos])
    chunk = max(workers * 4, 8)
    chunks = [infos[n : n + chunk] for n in range(0, len(infos), chunk)]
    per_variant: dict[str, list[dict[str, Any]]] = {v.name: [] for v in policy.variants}
    paths: dict[str, int] = {}
    written = 0
    uploads: list[Future[int]] = []
    failures: dict[str, Exception] = {}
    total = len(infos)
    log_fn(
        f"{batch_id}: normalizing {total} images into {len(policy.variants)} variants on {workers} processes"
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
                _raise_unless_quarantinable(failures)
                if n + 1 < len(chunks):
                    next_chunk = stager.submit(
                        staging.stage_in, store, chunks[n + 1], job, failures=failures
                    )
                for s in staged:
                    source = s.info.uri
                    rel = f"{source.bucket}/{source.key}"
                    fut = pool.submit(
                        normalize_staged_file, (str(s.path), rel, policy, str(out_root))
                    )
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
                        variant_base(normalized_uri, v.name, policy.variant_hash(v)), source
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
                if done_count % 25 == 0 or done_count == total - len(failures):
                    log_fn(f"{batch_id}: normalized {done_count}/{total - len(failures)}")
        written = sum(f.result() for f in uploads)
    staging.cleanup(job)
    for uri, exc in failures.items():
        quarantined[uri] = f"could not be staged: {exc}"
        log_fn(f"{batch_id}: quarantined {uri}: could not be staged: {exc}")
    for entries in per_variant.values():
        entries.sort(key=lambda e: e["output_uri"])
    return per_variant, written, paths, dict(sorted(quarantined.items()))
