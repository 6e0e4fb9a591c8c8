"""Stage 1, ingest step: stage a batch on NVMe, verify it, register it (bronze tier).

Plain Python (no Dagster): the ``raw_images`` asset and the stage container both call
:func:`ingest_batch`. Order of effects, so a crash anywhere is safe to rerun:

1. outputs (ZIP members expanded to ``BRONZE_URI``, the manifest JSON) are uploaded,
   each only if its bytes differ from what is there;
2. the manifest store records objects, lineage, dataset version and manifest in one
   transaction, the manifest row last.

A batch whose manifest is already published is a no-op: nothing is read or written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imageml_core.archives import InvalidArchive, expand_zip, is_zip
from imageml_core.image_checks import ImageCheck, check_annotation_file, verify_image
from imageml_core.manifest import (
    INGEST,
    LineageEdge,
    ManifestPublication,
    ManifestStore,
    ObjectVersion,
    ProcessedObject,
)
from imageml_core.object_store import ObjectInfo, ObjectStore
from imageml_core.staging import NvmeStaging, UnsafeKey, safe_relative_path
from imageml_core.uris import InvalidS3Uri, S3Uri, parse_s3_uri

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = "imageml.manifest/v1"
CHECKPOINT_EXAMINED = "examined"
IMAGE_KINDS = frozenset({"image", "archive_member"})


class UnknownBatch(LookupError):
    """The partition key names no planned batch in the manifest store."""


@dataclass(frozen=True)
class IngestConfig:
    raw_uri: S3Uri
    bronze_uri: S3Uri
    dataset_name: str
    max_image_pixels: int
    verify_workers: int = 4


@dataclass
class IngestResult:
    batch_id: str
    manifest_uri: str
    already_published: bool
    counts: dict[str, int] = field(default_factory=dict)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    new_objects_written: int = 0

    def metadata(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "manifest_uri": self.manifest_uri,
            "already_published": self.already_published,
            "objects_written": self.new_objects_written,
            **{f"count_{k}": v for k, v in sorted(self.counts.items())},
        }


def manifest_uri_for(bronze_uri: S3Uri, batch_id: str) -> S3Uri:
    return bronze_uri.join("manifests", "ingest", f"{batch_id}.json")


def member_uri(zip_uri: str, member: str) -> str:
    """Ledger identity of a ZIP member that was not extracted: ``s3://b/a.zip#dir/x.jpg``."""
    return f"{zip_uri}#{member}"


def _md5_sha256(path: Path) -> tuple[str, str]:
    """MD5 (what S3 reports as the ETag of a single-part upload) and SHA-256, in one pass."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def _entry(
    uri: str, etag: str, size: int, kind: str, check: ImageCheck | None, **extra: Any
) -> dict[str, Any]:
    entry: dict[str, Any] = {"uri": uri, "etag": etag, "size": size, "kind": kind}
    if check is not None:
        entry["status"] = "ok" if check.ok else "quarantined"
        entry["reason"] = check.reason
        entry.update({k: v for k, v in check.as_details().items() if v is not None})
    entry.update(extra)
    return entry


def ingest_batch(
    batch_id: str,
    *,
    store: ObjectStore,
    staging: NvmeStaging,
    manifest: ManifestStore,
    config: IngestConfig,
    run_id: str | None = None,
    log_fn: Callable[[str], None] = log.info,
) -> IngestResult:
    manifest_uri = manifest_uri_for(config.bronze_uri, batch_id)
    published = manifest.get_manifest(INGEST, batch_id)
    if published is not None:
        log_fn(f"{batch_id}: already published at {published['manifest_uri']}; nothing to do")
        return IngestResult(
            batch_id,
            str(published["manifest_uri"]),
            True,
            dict(published["details"].get("counts", {})),
        )
    members = manifest.batch_members(batch_id)
    if not members:
        raise UnknownBatch(
            f"no planned ingest batch {batch_id!r} in the manifest store; batches are planned by "
            "the raw_objects sensor or `imageml run`"
        )
    entries: list[dict[str, Any]] = []
    infos: list[ObjectInfo] = []
    for m in members:
        try:
            uri = parse_s3_uri(m.uri)
            safe_relative_path(config.raw_uri.relative_key(uri))
        except (UnsafeKey, InvalidS3Uri) as exc:
            entries.append(
                _entry(m.uri, m.etag, m.size, "unknown", ImageCheck(False, f"unsafe key: {exc}"))
            )
            continue
        infos.append(ObjectInfo(uri, m.etag, m.size))

    # Partial retry: images and annotation files examined by an earlier attempt that died
    # before publishing are not staged and decoded again (same URI and ETag only).
    examined = (manifest.load_checkpoint(INGEST, batch_id, CHECKPOINT_EXAMINED) or {}).get(
        "entries", {}
    )
    reused = [
        examined[str(i.uri)] for i in infos if examined.get(str(i.uri), {}).get("etag") == i.etag
    ]
    if reused:
        log_fn(f"{batch_id}: reusing {len(reused)} results from an earlier attempt's checkpoint")
        entries.extend(reused)
        reused_uris = {e["uri"] for e in reused}
        infos = [i for i in infos if str(i.uri) not in reused_uris]

    log_fn(
        f"{batch_id}: staging {len(infos)} objects ({sum(i.size for i in infos) / 1e6:.1f} MB) to {staging.root}"
    )
    failures: dict[str, Exception] = {}
    staged = staging.stage_in(
        store,
        infos,
        batch_id,
        base=config.raw_uri,
        failures=failures,
        on_progress=lambda done, total: (
            (done == total or done % 50 == 0) and log_fn(f"{batch_id}: staged {done}/{total}")
        ),
    )
    for info in infos:
        if str(info.uri) in failures:
            exc = failures[str(info.uri)]
            entries.append(
                _entry(
                    str(info.uri),
                    info.etag,
                    info.size,
                    "unknown",
                    ImageCheck(False, f"could not stage: {exc}"),
                )
            )

    work_dir = staging.area("work", batch_id)
    uploads: list[tuple[Path, S3Uri]] = []
    edges: list[LineageEdge] = []

    def examine(obj: Any) -> list[dict[str, Any]]:
        path: Path = obj.path
        uri = str(obj.info.uri)
        rel_path = str(path.relative_to(staging.root))
        if path.suffix.lower() == ".json":
            check = check_annotation_file(path)
            return [
                _entry(
                    uri,
                    obj.info.etag,
                    obj.info.size,
                    "annotation",
                    check,
                    sha256=obj.sha256,
                    staged_path=rel_path,
                )
            ]
        if is_zip(path):
            return _examine_zip(obj, rel_path)
        check = verify_image(path, max_pixels=config.max_image_pixels)
        return [
            _entry(
                uri,
                obj.info.etag,
                obj.info.size,
                "image",
                check,
                sha256=obj.sha256,
                staged_path=rel_path,
            )
        ]

    def _examine_zip(obj: Any, rel_path: str) -> list[dict[str, Any]]:
        zip_uri = str(obj.info.uri)
        rel_zip = config.raw_uri.relative_key(obj.info.uri)
        dest = work_dir / rel_zip
        try:
            expanded = expand_zip(obj.path, dest)
        except InvalidArchive as exc:
            return [
                _entry(
                    zip_uri,
                    obj.info.etag,
                    obj.info.size,
                    "archive",
                    ImageCheck(False, str(exc)),
                    sha256=obj.sha256,
                )
            ]
        out = [
            _entry(
                zip_uri,
                obj.info.etag,
                obj.info.size,
                "archive",
                ImageCheck(True),
                sha256=obj.sha256,
                staged_path=rel_path,
                members=len(expanded),
            )
        ]
        for member in expanded:
            if member.path is None:
                status = "skipped" if member.status == "skipped" else "quarantined"
                out.append(
                    {
                        "uri": member_uri(zip_uri, member.name),
                        "etag": obj.info.etag,
                        "size": member.size,
                        "kind": "archive_member",
                        "status": status,
                        "reason": member.reason,
                        "source_uri": zip_uri,
                    }
                )
                continue
            target = config.bronze_uri.join("unzipped", rel_zip, member.name)
            check = verify_image(member.path, max_pixels=config.max_image_pixels)
            md5, sha = _md5_sha256(member.path)
            entry = _entry(
                str(target) if check.ok else member_uri(zip_uri, member.name),
                md5 if check.ok else obj.info.etag,
                member.size,
                "archive_member",
                check,
                sha256=sha,
                source_uri=zip_uri,
                staged_path=str(member.path.relative_to(staging.root)),
            )
            out.append(entry)
            if check.ok:
                uploads.append((member.path, target))
                edges.append(LineageEdge(zip_uri, str(target), INGEST))
        return out

    with ThreadPoolExecutor(max_workers=max(1, config.verify_workers)) as pool:
        for result in pool.map(examine, staged):
            entries.extend(result)

    manifest.save_checkpoint(
        INGEST,
        batch_id,
        CHECKPOINT_EXAMINED,
        {"entries": {e["uri"]: e for e in entries if e["kind"] in ("image", "annotation")}},
    )
    entries.sort(key=lambda e: e["uri"])
    counts = {
        "images": sum(1 for e in entries if e["kind"] in IMAGE_KINDS and e["status"] == "ok"),
        "archives": sum(1 for e in entries if e["kind"] == "archive" and e["status"] == "ok"),
        "annotation_files": sum(
            1 for e in entries if e["kind"] == "annotation" and e["status"] == "ok"
        ),
        "quarantined": sum(1 for e in entries if e["status"] == "quarantined"),
        "skipped": sum(1 for e in entries if e["status"] == "skipped"),
    }
    doc = {
        "schema": MANIFEST_SCHEMA,
        "stage": INGEST.stage,
        "step": INGEST.name,
        "partition_key": batch_id,
        "dataset": config.dataset_name,
        "raw_uri": str(config.raw_uri),
        "settings": {"max_image_pixels": config.max_image_pixels},
        "counts": counts,
        "objects": entries,
    }
    body = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    # 1. Outputs first: extracted members, then the manifest JSON beside them.
    written = store.upload_many_if_changed(
        uploads, existing=store.stat_many([t for _, t in uploads])
    )
    if store.put_bytes_if_changed(manifest_uri, body, content_type="application/json"):
        written += 1

    # 2. The manifest store last, in one transaction.
    ledger = [
        ProcessedObject(
            uri=e["uri"],
            etag=e["etag"],
            status=e["status"],
            reason=e.get("reason"),
            content_sha256=e.get("sha256"),
            details={
                k: v for k, v in e.items() if k not in ("uri", "etag", "status", "reason", "sha256")
            },
        )
        for e in entries
    ]
    manifest.publish(
        ManifestPublication(
            step=INGEST,
            partition_key=batch_id,
            dataset_name=config.dataset_name,
            manifest_uri=str(manifest_uri),
            content_sha256=hashlib.sha256(body).hexdigest(),
            details={"counts": counts, "raw_uri": str(config.raw_uri)},
            objects=ledger,
            edges=edges,
            run_id=run_id,
        )
    )
    staging.cleanup(batch_id)
    quarantined = [
        {"uri": e["uri"], "reason": e.get("reason")}
        for e in entries
        if e["status"] == "quarantined"
    ]
    for q in quarantined:
        log_fn(f"{batch_id}: quarantined {q['uri']}: {q['reason']}")
    log_fn(f"{batch_id}: {counts}")
    return IngestResult(batch_id, str(manifest_uri), False, counts, quarantined, written)


def ingested_images(manifest: ManifestStore, batch_id: str) -> list[ObjectVersion]:
    """The usable images of an ingested batch (raw images and extracted ZIP members)."""
    return [
        ObjectVersion(r["object_uri"], r["etag"])
        for r in manifest.processed_objects(INGEST, batch_id)
        if r["status"] == "ok" and r["details"].get("kind") in IMAGE_KINDS
    ]
