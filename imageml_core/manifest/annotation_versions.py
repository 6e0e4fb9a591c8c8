"""Annotation versions: which annotation files apply to a batch, and the version they make.

Rule (README "Annotations"): an annotation file (``.json``) and a ``label_config.xml``
apply to the images of their own folder, whatever batch brought them. A batch's
*annotation inputs* are the latest ingested revision of every such file in the folders of
its images; its *annotation version* is the first
:data:`~imageml_core.manifest.keys.ANNOTATION_VERSION_CHARS` hex of SHA-256 over their
sorted ``(URI, SHA-256)`` pairs (empty when there are none), and it is part of the augment
partition key (:class:`~imageml_core.manifest.keys.AugmentKey`).

So annotations are their own versioned input: a new or changed annotation file gives every
batch with images in its folder a new version, which ``imageml run`` and the
``annotation_changes_sensor`` augment and normalize anew (new manifests and annotation
files beside the old ones; the image copies are byte-identical, since their random state
comes from the image and the pipeline only). A file that arrives before its images waits in
the ledger and is applied when a batch with images in its folder is augmented.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from imageml_core.annotations.intake import ImageRef, folder_of
from imageml_core.manifest.documents import (
    IMAGE_KINDS,
    IngestedObject,
    ingested_objects,
)
from imageml_core.manifest.interface import INGEST, Ledger, LedgerRecord
from imageml_core.manifest.keys import ANNOTATION_VERSION_CHARS, AugmentKey


@dataclass(frozen=True)
class RefusedRevision:
    """The newest revision of an annotation file or labelling config, quarantined at ingest
    (``reason``); ``kept`` is the earlier good revision still used, if there is one."""

    uri: str
    etag: str
    kind: str
    reason: str
    kept: IngestedObject | None

    def problem(self) -> str:
        """What intake reports about it."""
        what = "labelling config" if self.kind == "label_config" else "annotation file"
        if self.kept is not None:
            return (
                f"the newest revision of this {what} (ETag {self.etag}) was quarantined at "
                f"ingest: {self.reason}; the previous revision (ETag {self.kept.etag}) is "
                "still used"
            )
        fallback = "; the config is inferred from the tasks" if self.kind == "label_config" else ""
        return f"this {what} was quarantined at ingest: {self.reason}{fallback}"


@dataclass
class FolderContents:
    """What the folders of a batch's images hold, from every batch: the images (for name
    matching) by folder, the annotation files and labelling configs in use (the latest good
    revision of each), and the newest revisions that were quarantined (reported, and part
    of the version so that a broken upload is noticed). URI order."""

    images: dict[str, list[ImageRef]] = field(default_factory=dict)
    annotation_files: list[IngestedObject] = field(default_factory=list)
    label_configs: list[IngestedObject] = field(default_factory=list)
    refused: list[RefusedRevision] = field(default_factory=list)

    @property
    def inputs(self) -> list[IngestedObject]:
        """The annotation inputs in use: annotation files, then labelling configs."""
        return [*self.annotation_files, *self.label_configs]

    @property
    def version(self) -> str:
        """The annotation version (see the module docstring); empty without inputs."""
        refused = [(r.uri, f"quarantined:{r.etag}") for r in self.refused]
        return annotation_version([(o.uri, o.sha256) for o in self.inputs] + refused)

    def inputs_json(self) -> list[dict[str, Any]]:
        """The inputs as the augment manifest records them (``uri``, ``etag``, ``sha256``,
        ``kind``; a quarantined newest revision with ``status`` and ``reason``)."""
        used = [
            {"uri": o.uri, "etag": o.etag, "sha256": o.sha256, "kind": o.kind} for o in self.inputs
        ]
        refused = [
            {
                "uri": r.uri,
                "etag": r.etag,
                "kind": r.kind,
                "status": "quarantined",
                "reason": r.reason,
            }
            for r in self.refused
        ]
        return used + refused


def annotation_version(pairs: Iterable[tuple[str, str]]) -> str:
    """:data:`ANNOTATION_VERSION_CHARS` hex of SHA-256 over the sorted ``(URI, SHA-256)``
    pairs; empty for none."""
    ordered = sorted(pairs)
    if not ordered:
        return ""
    digest = hashlib.sha256(json.dumps(ordered).encode()).hexdigest()
    return digest[:ANNOTATION_VERSION_CHARS]


_ANNOTATION_KINDS = ("annotation", "label_config")


def folder_contents(ledger: Ledger, images: Sequence[IngestedObject]) -> FolderContents:
    """The contents of the folders ``images`` are in (one ledger query per folder)."""
    out = FolderContents()
    for folder in sorted({folder_of(i.uri) for i in images}):
        revisions: dict[str, list[LedgerRecord]] = {}
        for r in ledger.processed_under(INGEST, folder + "/"):  # per URI, oldest first
            if folder_of(r.uri) == folder:
                revisions.setdefault(r.uri, []).append(r)
        # An image counts in its latest revision, when that one is ok (as ingested_under).
        out.images[folder] = [
            ImageRef(o.uri, o.width or 0, o.height or 0)
            for o in (
                IngestedObject.from_record(h[-1])
                for h in revisions.values()
                if h[-1].ok and h[-1].details.get("kind") in IMAGE_KINDS
            )
        ]
        for uri, history in sorted(revisions.items()):
            if history[-1].details.get("kind") not in _ANNOTATION_KINDS:
                continue
            good = [r for r in history if r.ok]
            kept = IngestedObject.from_record(good[-1]) if good else None
            if kept is not None:
                (out.label_configs if kept.is_label_config else out.annotation_files).append(kept)
            newest = history[-1]
            if not newest.ok:
                kind = str(newest.details.get("kind"))
                reason = newest.reason or "quarantined"
                out.refused.append(RefusedRevision(uri, newest.etag, kind, reason, kept))
    return out


def current_augment_key(ledger: Ledger, batch_id: str, tag: str) -> AugmentKey:
    """The augment partition a batch should have now: its pipeline ``tag`` and the
    annotation version of the files its images' folders hold."""
    images = [o for o in ingested_objects(ledger, batch_id) if o.is_image]
    return AugmentKey(batch_id, tag, folder_contents(ledger, images).version)


def batches_with_images_in(ledger: Ledger, folders: Iterable[str]) -> set[str]:
    """Ids of the ingest batches that brought an image directly into one of ``folders``."""
    out: set[str] = set()
    for folder in set(folders):
        for r in ledger.processed_under(INGEST, folder + "/"):
            is_image = r.details.get("kind") in IMAGE_KINDS
            if r.ok and is_image and r.partition_key and folder_of(r.uri) == folder:
                out.add(r.partition_key)
    return out
