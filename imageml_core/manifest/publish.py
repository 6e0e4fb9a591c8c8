"""The one way a stage publishes a finished partition (DESIGN.md section 7).

Order of effects, so a crash at any point is safe to rerun:

1. output files, each uploaded only if the target does not already hold the same bytes;
2. annotation documents (COCO, Label Studio) beside them, same rule;
3. the manifest JSON, same rule;
4. one manifest-store transaction: ledger rows, lineage edges, dataset version, and the
   manifest row last (its presence means everything above is complete).

A crash before step 4 leaves no record: the rerun redoes the work and, since the bytes are
the same, writes nothing. After step 4 the partition is published and a rerun is a no-op
(:func:`published`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from imageml_core.manifest.documents.base import DocumentError, StageDocument, json_bytes
from imageml_core.manifest.interface import ManifestPublication, ManifestRecord, Publications, Step
from imageml_core.storage.object_store import ObjectInfo, ObjectStore
from imageml_core.uris import S3Uri, parse_s3_uri

D = TypeVar("D", bound=StageDocument)
JSON_CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class OutputFiles:
    """Local files to upload before the manifest: ``(path, target)`` pairs, with their
    ``(md5, sha256)`` digests when the stage already computed them and the targets'
    current state when it already listed them (saves a hash or a HEAD per file)."""

    files: Sequence[tuple[Path, S3Uri]] = ()
    digests: Mapping[Path, tuple[str, str]] | None = None
    existing: Mapping[S3Uri, ObjectInfo | None] | None = None


def published(store: Publications, step: Step, partition_key: str) -> ManifestRecord | None:
    """The partition's published manifest, or None. A published partition is finished:
    stages return its recorded summary and touch nothing."""
    return store.get_manifest(step, partition_key)


def publish_partition(
    document: StageDocument,
    *,
    manifest_uri: S3Uri,
    object_store: ObjectStore,
    manifest_store: Publications,
    outputs: OutputFiles | None = None,
    annotations: Sequence[tuple[S3Uri, object]] = (),
    run_id: str | None = None,
) -> int:
    """Upload ``outputs``, then ``annotations`` (JSON-serialisable documents, written as
    canonical JSON), then ``document`` at ``manifest_uri``; then record the publication in
    the store. Returns how many objects were written (0 for a rerun of identical work).

    Raises what the object store raises for a failed upload (nothing is recorded then)."""
    written = 0
    if outputs is not None and outputs.files:
        existing = outputs.existing
        if existing is None:
            existing = object_store.stat_many([target for _, target in outputs.files])
        written += object_store.upload_many_if_changed(
            outputs.files, existing=existing, digests=outputs.digests
        )
    for uri, doc in annotations:
        written += object_store.put_bytes_if_changed(
            uri, json_bytes(doc), content_type=JSON_CONTENT_TYPE
        )
    body = document.to_bytes()
    written += object_store.put_bytes_if_changed(manifest_uri, body, content_type=JSON_CONTENT_TYPE)
    manifest_store.publish(
        ManifestPublication(
            step=document.step,
            partition_key=document.partition_key,
            dataset_name=document.dataset,
            manifest_uri=str(manifest_uri),
            content_sha256=document.sha256(),
            details=document.summary(),
            objects=document.ledger(),
            edges=document.edges(),
            run_id=run_id,
        )
    )
    return written


def read_document(object_store: ObjectStore, record: ManifestRecord, document_type: type[D]) -> D:
    """The published document of ``record``, read from S3 through its type.

    Raises :class:`~imageml_core.manifest.documents.DocumentError` if it is not a
    ``document_type`` at the current schema, and the object store's errors if it is gone."""
    if not record.manifest_uri:
        raise DocumentError(f"{record.step} manifest {record.partition_key} has no manifest_uri")
    return document_type.from_bytes(object_store.get_bytes(parse_s3_uri(record.manifest_uri)))
