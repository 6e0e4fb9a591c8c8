"""The ingest step's manifest (bronze), and the typed view later stages read of its ledger."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Self

from imageml_core.manifest.documents.base import DocumentError, StageDocument, read_field
from imageml_core.manifest.interface import (
    INGEST,
    STATUS_OK,
    STATUS_QUARANTINED,
    STATUS_SKIPPED,
    Ledger,
    LedgerRecord,
    LineageEdge,
    ProcessedObject,
)

# Ledger ``kind`` of an ingested object: "image" (raw), "annotation" (a JSON file),
# "label_config" (a folder's label_config.xml, README "Annotations"), "archive" (a ZIP), "archive_member" (extracted to BRONZE_URI/unzipped/ or refused),
# "unknown" (could not even be staged) or "other" (skipped by rule: hidden file, folder
# marker).
IMAGE_KINDS = frozenset({"image", "archive_member"})
_LEDGER_FIELDS = ("uri", "etag", "status", "reason", "sha256")


@dataclass(frozen=True)
class IngestEntry:
    """One object of an ingest batch and its outcome.

    ``size`` in bytes; ``width``/``height`` in pixels of the displayed frame (EXIF
    orientation applied; ``orientation`` is the EXIF value found);
    ``status`` ok, quarantined (``reason`` says why) or skipped. An extracted ZIP member has
    ``uri`` = its ``BRONZE_URI/unzipped/...`` location and ``source_uri`` = the archive; a
    refused member has ``uri`` = ``<archive uri>#<member name>``.
    """

    uri: str
    etag: str
    size: int
    kind: str
    status: str
    reason: str | None = None
    sha256: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    orientation: int | None = None
    staged_path: str | None = None
    source_uri: str | None = None
    members: int | None = None

    @property
    def ok(self) -> bool:
        """True when ``status`` is ok."""
        return self.status == STATUS_OK

    def to_json(self) -> dict[str, Any]:
        """Fields that are set (``reason`` always, null when ok)."""
        return {k: v for k, v in asdict(self).items() if v is not None or k == "reason"}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> IngestEntry:
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in doc.items() if k in names})
        except TypeError as exc:
            raise DocumentError(f"ingest entry {doc.get('uri')!r}: {exc}") from None

    def processed_object(self) -> ProcessedObject:
        """The ledger row: URI, ETag, outcome, SHA-256; the rest goes into ``details``."""
        details = {
            k: v for k, v in self.to_json().items() if k not in _LEDGER_FIELDS and v is not None
        }
        return ProcessedObject(
            uri=self.uri,
            etag=self.etag,
            status=self.status,
            reason=self.reason,
            content_sha256=self.sha256,
            details=details,
        )


@dataclass(frozen=True)
class IngestCounts:
    """How many objects of a batch ended in each state (ZIP members count as images)."""

    images: int = 0
    archives: int = 0
    annotation_files: int = 0
    quarantined: int = 0
    skipped: int = 0

    @classmethod
    def of(cls, entries: tuple[IngestEntry, ...]) -> IngestCounts:
        """Count ``entries``: ok images (ZIP members included), ok archives, ok annotation files,
        quarantined and skipped entries."""
        return cls(
            images=sum(1 for e in entries if e.kind in IMAGE_KINDS and e.ok),
            archives=sum(1 for e in entries if e.kind == "archive" and e.ok),
            annotation_files=sum(1 for e in entries if e.kind == "annotation" and e.ok),
            quarantined=sum(1 for e in entries if e.status == STATUS_QUARANTINED),
            skipped=sum(1 for e in entries if e.status == STATUS_SKIPPED),
        )

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> IngestCounts:
        return cls(**{f.name: int(doc.get(f.name, 0)) for f in fields(cls)})


@dataclass(frozen=True)
class IngestSummary:
    """What the manifest store keeps for a published ingest batch."""

    counts: IngestCounts
    raw_uri: str

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts.to_json(), "raw_uri": self.raw_uri}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> IngestSummary:
        what = "ingest summary"
        return cls(
            counts=read_field(doc, "counts", IngestCounts.from_json, what),
            raw_uri=read_field(doc, "raw_uri", str, what),
        )


@dataclass(frozen=True)
class IngestManifest(StageDocument):
    """``BRONZE_URI/manifests/ingest/<batch>.json``: every object of one ingest batch."""

    step: ClassVar = INGEST
    indent: ClassVar[int] = 2

    partition_key: str  # the batch id
    dataset: str
    raw_uri: str
    max_image_pixels: int
    objects: tuple[IngestEntry, ...]

    @property
    def counts(self) -> IngestCounts:
        """:class:`IngestCounts` of :attr:`objects`."""
        return IngestCounts.of(self.objects)

    @property
    def quarantined(self) -> list[IngestEntry]:
        """The quarantined entries, in manifest order."""
        return [e for e in self.objects if e.status == STATUS_QUARANTINED]

    def body(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "raw_uri": self.raw_uri,
            "settings": {"max_image_pixels": self.max_image_pixels},
            "counts": self.counts.to_json(),
            "objects": [e.to_json() for e in self.objects],
        }

    @classmethod
    def from_body(cls, doc: Mapping[str, Any]) -> Self:
        what = "ingest manifest"
        return cls(
            partition_key=read_field(doc, "partition_key", str, what),
            dataset=read_field(doc, "dataset", str, what),
            raw_uri=read_field(doc, "raw_uri", str, what),
            max_image_pixels=read_field(
                doc, "settings", lambda s: int(s["max_image_pixels"]), what
            ),
            objects=read_field(
                doc, "objects", lambda o: tuple(IngestEntry.from_json(e) for e in o), what
            ),
        )

    def summary(self) -> dict[str, Any]:
        return IngestSummary(self.counts, self.raw_uri).to_json()

    def ledger(self) -> list[ProcessedObject]:
        return [e.processed_object() for e in self.objects]

    def edges(self) -> list[LineageEdge]:
        """Archive -> extracted member, for every member that was extracted."""
        return [
            LineageEdge(e.source_uri, e.uri, INGEST)
            for e in self.objects
            if e.kind == "archive_member" and e.ok and e.source_uri
        ]


@dataclass(frozen=True)
class IngestedObject:
    """What later stages read of an ingested object (from the ingest ledger).

    ``width``/``height`` in pixels of the displayed frame (EXIF orientation applied, the
    frame annotations are read in); ``size`` in bytes.
    """

    uri: str
    etag: str
    sha256: str
    kind: str
    size: int
    width: int | None
    height: int | None
    format: str | None

    @property
    def is_image(self) -> bool:
        """True for kind ``image`` or ``archive_member`` (a ZIP member extracted to bronze)."""
        return self.kind in IMAGE_KINDS

    @property
    def is_annotation_file(self) -> bool:
        """True for a JSON annotation file (kind ``annotation``)."""
        return self.kind == "annotation"

    @property
    def is_label_config(self) -> bool:
        """True for a folder's Label Studio labelling config (kind ``label_config``)."""
        return self.kind == "label_config"

    @classmethod
    def from_record(cls, record: LedgerRecord) -> IngestedObject:
        """Raises :class:`DocumentError` for a record that is not an ok ingest entry."""
        if (record.stage, record.step) != (INGEST.stage, INGEST.name) or not record.ok:
            raise DocumentError(f"{record.uri}: not an ok ingest ledger record")
        d = record.details
        return cls(
            uri=record.uri,
            etag=record.etag,
            sha256=record.content_sha256 or "",
            kind=str(d.get("kind", "unknown")),
            size=int(d.get("size", 0)),
            width=int(d["width"]) if d.get("width") is not None else None,
            height=int(d["height"]) if d.get("height") is not None else None,
            format=d.get("format"),
        )


def ingested_objects(ledger: Ledger, batch_id: str) -> list[IngestedObject]:
    """The ok objects (images, annotation files, archives) of an ingested batch, URI order."""
    return [
        IngestedObject.from_record(r) for r in ledger.processed_objects(INGEST, batch_id) if r.ok
    ]


def ingested_under(ledger: Ledger, folder: str) -> list[IngestedObject]:
    """The ok ingested objects directly in ``folder`` (an ``s3://bucket/prefix`` without
    the trailing slash), from every batch; URI order. Of an object ingested in several
    revisions (replaced under the same key) only the latest counts: when that one was
    quarantined, the object is left out."""
    latest = {
        r.uri: r
        for r in ledger.processed_under(INGEST, folder + "/")
        if r.uri.rsplit("/", 1)[0] == folder
    }
    return [IngestedObject.from_record(r) for r in latest.values() if r.ok]
