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
    ingested_under,
)
from imageml_core.manifest.interface import INGEST, Ledger
from imageml_core.manifest.keys import ANNOTATION_VERSION_CHARS, AugmentKey


@dataclass
class FolderContents:
    """What the folders of a batch's images hold, from every batch: the images (for name
    matching) by folder, and the annotation files and labelling configs (the batch's
    annotation inputs), URI order."""

    images: dict[str, list[ImageRef]] = field(default_factory=dict)
    annotation_files: list[IngestedObject] = field(default_factory=list)
    label_configs: list[IngestedObject] = field(default_factory=list)

    @property
    def inputs(self) -> list[IngestedObject]:
        """The annotation inputs: annotation files, then labelling configs."""
        return [*self.annotation_files, *self.label_configs]

    @property
    def version(self) -> str:
        """The annotation version (see the module docstring); empty without inputs."""
        return annotation_version(self.inputs)

    def inputs_json(self) -> list[dict[str, Any]]:
        """The inputs as the augment manifest records them (``uri``, ``etag``, ``sha256``,
        ``kind``)."""
        return [
            {"uri": o.uri, "etag": o.etag, "sha256": o.sha256, "kind": o.kind} for o in self.inputs
        ]


def annotation_version(inputs: Iterable[IngestedObject]) -> str:
    """:data:`ANNOTATION_VERSION_CHARS` hex of SHA-256 over the sorted ``(URI, SHA-256)``
    pairs of ``inputs``; empty for none."""
    pairs = sorted((o.uri, o.sha256) for o in inputs)
    if not pairs:
        return ""
    digest = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()
    return digest[:ANNOTATION_VERSION_CHARS]


def folder_contents(ledger: Ledger, images: Sequence[IngestedObject]) -> FolderContents:
    """The contents of the folders ``images`` are in (one ledger query per folder)."""
    out = FolderContents()
    for folder in sorted({folder_of(i.uri) for i in images}):
        objects = ingested_under(ledger, folder)
        out.images[folder] = [
            ImageRef(o.uri, o.width or 0, o.height or 0) for o in objects if o.is_image
        ]
        out.annotation_files += [o for o in objects if o.is_annotation_file]
        out.label_configs += [o for o in objects if o.is_label_config]
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
