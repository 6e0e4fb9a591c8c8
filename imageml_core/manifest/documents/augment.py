"""The augment step's manifest: the batch's sources and their augmented copies, with regions.

Stage 2 reads a batch's "augmented shard" (originals + copies) from this document.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Self

from imageml_core.annotations.regions import Region, regions_from_json, regions_to_json
from imageml_core.manifest.documents.base import (
    AnnotationFiles,
    QuarantinedSource,
    StageDocument,
    read_field,
)
from imageml_core.manifest.interface import (
    AUGMENT,
    STATUS_QUARANTINED,
    LineageEdge,
    ProcessedObject,
)


@dataclass(frozen=True)
class AugmentSource:
    """An ingested image of the batch; ``width``/``height`` in pixels as stored; regions
    in the source's pixels."""

    uri: str
    etag: str
    sha256: str
    width: int
    height: int
    regions: tuple[Region, ...]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "regions": regions_to_json(self.regions)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> AugmentSource:
        what = "augment source"
        return cls(
            uri=read_field(doc, "uri", str, what),
            etag=str(doc.get("etag", "")),
            sha256=read_field(doc, "sha256", str, what),
            width=read_field(doc, "width", int, what),
            height=read_field(doc, "height", int, what),
            regions=read_field(doc, "regions", regions_from_json, what),
        )


@dataclass(frozen=True)
class AugmentOutput:
    """Augmented copy ``copy`` of ``source_uri``: a JPEG; ``etag`` is its MD5, ``seed`` the
    random state it was made with; ``width``/``height`` in pixels; regions in its pixels;
    ``dropped_regions`` counts source regions the transforms pushed out (clip/drop rule)."""

    uri: str
    etag: str
    sha256: str
    source_uri: str
    source_sha256: str
    copy: int
    seed: int
    width: int
    height: int
    regions: tuple[Region, ...]
    dropped_regions: int

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "regions": regions_to_json(self.regions)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> AugmentOutput:
        what = "augment output"
        ints = {"copy", "seed", "width", "height", "dropped_regions"}
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "regions":
                values[f.name] = read_field(doc, f.name, regions_from_json, what)
            else:
                values[f.name] = read_field(doc, f.name, int if f.name in ints else str, what)
        return cls(**values)

    def processed_object(self) -> ProcessedObject:
        """The copy's ledger row (status ok): URI, ETag, SHA-256; source URI, copy number and
        size in pixels go into ``details``."""
        return ProcessedObject(
            uri=self.uri,
            etag=self.etag,
            content_sha256=self.sha256,
            details={
                "source_uri": self.source_uri,
                "copy": self.copy,
                "kind": "augmented",
                "width": self.width,
                "height": self.height,
            },
        )


@dataclass(frozen=True)
class PipelineInfo:
    """The augmentation that made the outputs (``config_hash`` covers every setting and
    library version that affects their bytes)."""

    name: str
    config_hash: str
    copies: int
    transforms: tuple[Mapping[str, Any], ...]
    min_visibility: float
    min_area_px: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config_hash": self.config_hash,
            "copies": self.copies,
            "transforms": list(self.transforms),
            "bbox_rule": {
                "clip": True,
                "min_visibility": self.min_visibility,
                "min_area_px": self.min_area_px,
            },
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> PipelineInfo:
        what = "augment pipeline"
        rule = read_field(doc, "bbox_rule", dict, what)
        return cls(
            name=read_field(doc, "name", str, what),
            config_hash=read_field(doc, "config_hash", str, what),
            copies=read_field(doc, "copies", int, what),
            transforms=read_field(doc, "transforms", tuple, what),
            min_visibility=read_field(rule, "min_visibility", float, what),
            min_area_px=read_field(rule, "min_area_px", float, what),
        )


@dataclass(frozen=True)
class AugmentChecks:
    """Facts the augment asset checks assert (``coco_boxes`` must equal
    ``label_studio_regions``; the validation errors are the first 20 the SDK found)."""

    every_source_has_copies: bool
    boxes_inside_images: bool
    coco_boxes: int
    label_studio_regions: int
    label_studio_validation_errors: tuple[str, ...] = ()
    quarantined: Mapping[str, str] = field(default_factory=dict)  # source URI -> reason

    @property
    def counts_conserved(self) -> bool:
        """True when COCO boxes equal Label Studio regions and the SDK reported no errors."""
        return self.coco_boxes == self.label_studio_regions and not (
            self.label_studio_validation_errors
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "label_studio_validation_errors": list(self.label_studio_validation_errors),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> AugmentChecks:
        what = "augment checks"
        return cls(
            every_source_has_copies=read_field(doc, "every_source_has_copies", bool, what),
            boxes_inside_images=read_field(doc, "boxes_inside_images", bool, what),
            coco_boxes=read_field(doc, "coco_boxes", int, what),
            label_studio_regions=read_field(doc, "label_studio_regions", int, what),
            label_studio_validation_errors=tuple(doc.get("label_studio_validation_errors") or ()),
            quarantined=dict(doc.get("quarantined") or {}),
        )


@dataclass(frozen=True)
class AugmentTotals:
    """Counts of one augment partition (boxes are regions, whatever their shape)."""

    sources: int = 0
    outputs: int = 0
    boxes_in: int = 0
    boxes_out: int = 0
    boxes_dropped: int = 0
    copies: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> AugmentTotals:
        return cls(**{f.name: int(doc.get(f.name, 0)) for f in fields(cls)})


@dataclass(frozen=True)
class AugmentSummary:
    """What the manifest store keeps for a published augment partition."""

    batch_id: str
    config_hash: str
    totals: AugmentTotals
    checks: AugmentChecks

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "config_hash": self.config_hash,
            "totals": self.totals.to_json(),
            "checks": self.checks.to_json(),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> AugmentSummary:
        what = "augment summary"
        return cls(
            batch_id=read_field(doc, "batch_id", str, what),
            config_hash=read_field(doc, "config_hash", str, what),
            totals=read_field(doc, "totals", AugmentTotals.from_json, what),
            checks=read_field(doc, "checks", AugmentChecks.from_json, what),
        )


@dataclass(frozen=True)
class AugmentManifest(StageDocument):
    """``AUGMENTED_URI/manifests/augment/<batch>@<pipeline>-<hash8>.json``."""

    step: ClassVar = AUGMENT

    partition_key: str  # "<batch>@<pipeline>-<hash8>" (manifest.keys.AugmentKey)
    batch_id: str
    dataset: str
    pipeline: PipelineInfo
    annotations: AnnotationFiles
    checks: AugmentChecks
    sources: tuple[AugmentSource, ...]
    outputs: tuple[AugmentOutput, ...]
    totals: AugmentTotals = field(default_factory=AugmentTotals)
    quarantined: tuple[QuarantinedSource, ...] = ()

    def body(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "dataset": self.dataset,
            "pipeline": self.pipeline.to_json(),
            "annotations": self.annotations.to_json(),
            "checks": self.checks.to_json(),
            "totals": self.totals.to_json(),
            "sources": [s.to_json() for s in self.sources],
            "outputs": [o.to_json() for o in self.outputs],
            "quarantined": [q.to_json() for q in self.quarantined],
        }

    @classmethod
    def from_body(cls, doc: Mapping[str, Any]) -> Self:
        what = "augment manifest"
        return cls(
            partition_key=read_field(doc, "partition_key", str, what),
            batch_id=read_field(doc, "batch_id", str, what),
            dataset=read_field(doc, "dataset", str, what),
            pipeline=read_field(doc, "pipeline", PipelineInfo.from_json, what),
            annotations=read_field(doc, "annotations", AnnotationFiles.from_json, what),
            checks=read_field(doc, "checks", AugmentChecks.from_json, what),
            sources=read_field(
                doc, "sources", lambda v: tuple(AugmentSource.from_json(s) for s in v), what
            ),
            outputs=read_field(
                doc, "outputs", lambda v: tuple(AugmentOutput.from_json(o) for o in v), what
            ),
            totals=AugmentTotals.from_json(doc.get("totals") or {}),
            quarantined=tuple(QuarantinedSource.from_json(q) for q in doc.get("quarantined") or ()),
        )

    def summary(self) -> dict[str, Any]:
        return AugmentSummary(
            self.batch_id, self.pipeline.config_hash, self.totals, self.checks
        ).to_json()

    def ledger(self) -> list[ProcessedObject]:
        """Outputs ok; sources that made no copies quarantined, with their reason."""
        return [o.processed_object() for o in self.outputs] + [
            ProcessedObject(
                uri=q.source_uri,
                etag=q.etag,
                status=STATUS_QUARANTINED,
                reason=q.reason,
                details={"kind": "augment_source"},
            )
            for q in self.quarantined
        ]

    def edges(self) -> list[LineageEdge]:
        """Source -> copy for every copy, and annotation input -> the partition's COCO and
        Label Studio files (which hold that annotation version's regions)."""
        inputs = [str(i["uri"]) for i in self.annotations.inputs or ()]
        outputs = (self.annotations.coco_uri, self.annotations.label_studio_uri)
        return [LineageEdge(o.source_uri, o.uri, AUGMENT) for o in self.outputs] + [
            LineageEdge(i, out, AUGMENT) for i in inputs for out in outputs
        ]
