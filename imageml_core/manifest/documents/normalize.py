"""The normalize step's manifest: one size variant of a batch's augmented shard (silver).

Spec 001: every output entry carries ``source_uri, variant_name, output_uri, width, height,
normalization_policy_hash``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Self

from imageml_core.annotations.regions import Region, regions_from_json, regions_to_json
from imageml_core.manifest.documents.base import (
    AnnotationFiles,
    DocumentError,
    QuarantinedSource,
    StageDocument,
    read_field,
)
from imageml_core.manifest.interface import (
    NORMALIZE,
    STATUS_QUARANTINED,
    LineageEdge,
    ProcessedObject,
)

#: Findings listed per check in the manifest and the store (the counts are complete).
MAX_FINDINGS = 50


@dataclass(frozen=True)
class NormalizedOutput:
    """One source as one variant.

    Sizes in pixels: ``source_width``/``source_height`` after EXIF rotation,
    ``width``/``height`` of the output. ``geometry`` is ``(sx, sy, dx, dy)`` with
    ``x' = x * sx + dx`` from source to output pixels; ``regions`` are in output pixels.
    ``etag`` is the output's MD5. ``source_kind`` is ``original`` or ``augmented``.
    """

    source_uri: str
    source_kind: str
    variant_name: str
    output_uri: str
    source_width: int
    source_height: int
    width: int
    height: int
    normalization_policy_hash: str
    sha256: str
    etag: str
    geometry: tuple[float, float, float, float]
    regions: tuple[Region, ...] = ()

    def to_json(self, *, full: bool = True) -> dict[str, Any]:
        """``full=False`` leaves out ``regions`` (they are in the COCO and Label Studio
        files): the published manifest's entry."""
        out = {**asdict(self), "geometry": list(self.geometry)}
        out["regions"] = regions_to_json(self.regions)
        if not full:
            del out["regions"]
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> NormalizedOutput:
        what = "normalized output"
        ints = {"source_width", "source_height", "width", "height"}
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "regions":
                present = doc.get("regions") is not None
                values[f.name] = read_field(doc, f.name, regions_from_json, what) if present else ()
            elif f.name == "geometry":
                values[f.name] = read_field(doc, f.name, lambda g: tuple(float(v) for v in g), what)
            elif f.name == "etag":
                values[f.name] = str(doc.get("etag", ""))
            else:
                values[f.name] = read_field(doc, f.name, int if f.name in ints else str, what)
        if len(values["geometry"]) != 4:
            raise DocumentError(f"{what} {values['output_uri']}: geometry needs 4 numbers")
        return cls(**values)

    def processed_object(self) -> ProcessedObject:
        """The output's ledger row (status ok): URI, ETag, SHA-256; source, variant, size in
        pixels and policy hash go into ``details``."""
        return ProcessedObject(
            uri=self.output_uri,
            etag=self.etag,
            content_sha256=self.sha256,
            details={
                "kind": "normalized",
                "source_uri": self.source_uri,
                "variant_name": self.variant_name,
                "width": self.width,
                "height": self.height,
                "normalization_policy_hash": self.normalization_policy_hash,
            },
        )


@dataclass(frozen=True)
class NormalizeChecks:
    """What the variant's asset check asserts: no source is missing its output, every
    output has the size the policy gives; ``quarantined`` says why sources are missing.
    Each list holds at most :data:`MAX_FINDINGS` entries."""

    missing_sources: tuple[str, ...] = ()
    wrong_dimensions: tuple[str, ...] = ()
    quarantined: Mapping[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when no source lacks its output and no output has the wrong size."""
        return not self.missing_sources and not self.wrong_dimensions

    def to_json(self) -> dict[str, Any]:
        return {
            "missing_sources": list(self.missing_sources),
            "wrong_dimensions": list(self.wrong_dimensions),
            "quarantined": dict(self.quarantined),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> NormalizeChecks:
        return cls(
            missing_sources=tuple(doc.get("missing_sources") or ()),
            wrong_dimensions=tuple(doc.get("wrong_dimensions") or ()),
            quarantined=dict(doc.get("quarantined") or {}),
        )


@dataclass(frozen=True)
class PolicyInfo:
    """The settings that made a variant's bytes (also folded into its policy hash)."""

    fit: str
    quality: int
    chroma_subsampling: str
    alpha_background: tuple[int, int, int]
    format: str = "jpeg"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "alpha_background": list(self.alpha_background)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> PolicyInfo:
        what = "normalize policy"
        rgb = read_field(doc, "alpha_background", lambda v: tuple(int(c) for c in v), what)
        return cls(
            fit=read_field(doc, "fit", str, what),
            quality=read_field(doc, "quality", int, what),
            chroma_subsampling=read_field(doc, "chroma_subsampling", str, what),
            alpha_background=rgb,  # type: ignore[arg-type]
            format=str(doc.get("format", "jpeg")),
        )


@dataclass(frozen=True)
class NormalizeSummary:
    """What the manifest store keeps for a published variant partition; ``sizes`` counts
    outputs per ``<width>x<height>`` (pixels)."""

    variant: str
    normalization_policy_hash: str
    outputs: int
    checks: NormalizeChecks
    sizes: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "normalization_policy_hash": self.normalization_policy_hash,
            "outputs": self.outputs,
            "checks": self.checks.to_json(),
            "sizes": dict(self.sizes),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> NormalizeSummary:
        what = "normalize summary"
        return cls(
            variant=read_field(doc, "variant", str, what),
            normalization_policy_hash=read_field(doc, "normalization_policy_hash", str, what),
            outputs=read_field(doc, "outputs", int, what),
            checks=read_field(doc, "checks", NormalizeChecks.from_json, what),
            sizes={str(k): int(v) for k, v in (doc.get("sizes") or {}).items()},
        )


@dataclass(frozen=True)
class NormalizeManifest(StageDocument):
    """``NORMALIZED_URI/normalized/<variant>/<hash12>/manifests/<batch>@<tag>.json``."""

    step: ClassVar = NORMALIZE

    partition_key: str  # "<batch>@<tag>|<variant>@<hash12>" (manifest.keys.NormalizeKey)
    batch_id: str
    dataset: str
    variant_name: str
    augment_tag: str
    normalization_policy_hash: str
    policy: PolicyInfo
    annotations: AnnotationFiles
    checks: NormalizeChecks
    quarantined: tuple[QuarantinedSource, ...]
    outputs: tuple[NormalizedOutput, ...]

    def body(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "dataset": self.dataset,
            "variant_name": self.variant_name,
            "augment_tag": self.augment_tag,
            "normalization_policy_hash": self.normalization_policy_hash,
            "policy": self.policy.to_json(),
            "annotations": self.annotations.to_json(),
            "checks": self.checks.to_json(),
            "quarantined": [q.to_json() for q in self.quarantined],
            "outputs": [o.to_json(full=False) for o in self.outputs],
        }

    @classmethod
    def from_body(cls, doc: Mapping[str, Any]) -> Self:
        what = "normalize manifest"
        return cls(
            partition_key=read_field(doc, "partition_key", str, what),
            batch_id=read_field(doc, "batch_id", str, what),
            dataset=str(doc.get("dataset", "")),  # absent from the first v1 documents
            variant_name=read_field(doc, "variant_name", str, what),
            augment_tag=read_field(doc, "augment_tag", str, what),
            normalization_policy_hash=read_field(doc, "normalization_policy_hash", str, what),
            policy=read_field(doc, "policy", PolicyInfo.from_json, what),
            annotations=read_field(doc, "annotations", AnnotationFiles.from_json, what),
            checks=read_field(doc, "checks", NormalizeChecks.from_json, what),
            quarantined=read_field(
                doc, "quarantined", lambda v: tuple(QuarantinedSource.from_json(q) for q in v), what
            ),
            outputs=read_field(
                doc, "outputs", lambda v: tuple(NormalizedOutput.from_json(o) for o in v), what
            ),
        )

    @property
    def sizes(self) -> dict[str, int]:
        """Outputs per ``<width>x<height>`` in pixels, sorted by size."""
        counts = Counter((o.width, o.height) for o in self.outputs)
        return {
            f"{w}x{h}": counts[(w, h)] for w, h in sorted(counts, key=lambda s: (s[0] * s[1], s))
        }

    def summary(self) -> dict[str, Any]:
        return NormalizeSummary(
            self.variant_name,
            self.normalization_policy_hash,
            len(self.outputs),
            self.checks,
            self.sizes,
        ).to_json()

    def ledger(self) -> list[ProcessedObject]:
        """Outputs ok; quarantined sources with their reason and the ETag stage 1 recorded."""
        return [o.processed_object() for o in self.outputs] + [
            ProcessedObject(
                uri=q.source_uri,
                etag=q.etag,
                status=STATUS_QUARANTINED,
                reason=q.reason,
                details={"kind": "normalize_source", "variant_name": self.variant_name},
            )
            for q in self.quarantined
        ]

    def edges(self) -> list[LineageEdge]:
        return [LineageEdge(o.source_uri, o.output_uri, NORMALIZE) for o in self.outputs]
