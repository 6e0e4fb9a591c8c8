"""What every stage manifest document shares: the schema header, bytes, errors."""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Self, TypeVar

from imageml_core.manifest.interface import LineageEdge, ProcessedObject, Step

#: Schema of every stage manifest (the ``schema`` field). A document also names its
#: ``stage`` and ``step``; readers check all three before trusting the rest.
MANIFEST_SCHEMA = "imageml.manifest/v1"

T = TypeVar("T")


class DocumentError(ValueError):
    """A stored document that is not the expected type or version; the message names the
    document, the field and what was found."""


def read_field(doc: Mapping[str, Any], name: str, convert: Callable[[Any], T], what: str) -> T:
    """``convert(doc[name])``, with any error reported as :class:`DocumentError`: a missing
    ``name`` as missing, anything wrong inside it (a nested key missing, a bad value) as
    malformed, naming the nested key."""
    if not isinstance(doc, Mapping):
        raise DocumentError(f"{what}: expected a JSON object, got {type(doc).__name__}")
    if name not in doc:
        raise DocumentError(f"{what}: missing field {name!r}")
    try:
        return convert(doc[name])
    except KeyError as exc:
        raise DocumentError(f"{what}: field {name!r} is malformed: missing {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise DocumentError(f"{what}: field {name!r} is malformed: {exc}") from None


def json_bytes(doc: Any, indent: int = 1) -> bytes:
    """Canonical JSON bytes: sorted keys, ``indent``, a final newline (reruns compare bytes)."""
    return (json.dumps(doc, indent=indent, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class AnnotationFiles:
    """A stage's annotation outputs (COCO and Label Studio JSON) and how they were made.

    ``annotation_format`` is the format the regions were converted from, ``intake`` the
    annotation-intake report (augment only; None elsewhere); ``category_ids`` the COCO
    category id of each label in ``coco_uri`` (the user's own class ids where their COCO
    files gave them; later stages keep them); ``annotation_version`` the annotation
    version the regions come from (empty: no annotation file applied) and ``inputs`` the
    annotation files and labelling configs that make it (``uri``, ``etag``, ``sha256``,
    ``kind``; augment only).
    """

    coco_uri: str
    label_studio_uri: str
    converter_version: str
    conversion_parameters: Mapping[str, Any]
    annotation_format: str | None = None
    intake: Mapping[str, Any] | None = None
    category_ids: Mapping[str, int] | None = None
    annotation_version: str | None = None
    inputs: Sequence[Mapping[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> AnnotationFiles:
        what = "annotation files"
        return cls(
            coco_uri=read_field(doc, "coco_uri", str, what),
            label_studio_uri=read_field(doc, "label_studio_uri", str, what),
            converter_version=read_field(doc, "converter_version", str, what),
            conversion_parameters=read_field(doc, "conversion_parameters", dict, what),
            annotation_format=doc.get("annotation_format"),
            intake=doc.get("intake"),
            category_ids=doc.get("category_ids"),
            annotation_version=doc.get("annotation_version"),
            inputs=doc.get("inputs"),
        )


@dataclass(frozen=True)
class QuarantinedSource:
    """A source a stage made no output for, and why (changed, gone or undecodable since
    an earlier stage recorded it). ``etag`` is the one that stage recorded."""

    source_uri: str
    reason: str
    etag: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> QuarantinedSource:
        what = "quarantined source"
        return cls(
            source_uri=read_field(doc, "source_uri", str, what),
            reason=read_field(doc, "reason", str, what),
            etag=str(doc.get("etag", "")),
        )


class StageDocument(abc.ABC):
    """A stage's manifest: published as JSON next to its outputs and summarised in the
    manifest store. Subclasses are frozen dataclasses with ``partition_key`` and
    ``dataset`` fields and set :attr:`step`.

    The next stage reads a document through its type (:meth:`from_bytes`), never by dict
    keys; :meth:`summary` is what the store keeps in ``manifests.details``, and
    :meth:`ledger` and :meth:`edges` are the ledger rows and lineage the publication writes.
    """

    step: ClassVar[Step]
    indent: ClassVar[int] = 1
    partition_key: str
    dataset: str

    @abc.abstractmethod
    def body(self) -> dict[str, Any]:
        """The document's fields (everything but the schema header)."""

    @classmethod
    @abc.abstractmethod
    def from_body(cls, doc: Mapping[str, Any]) -> Self:
        """Build the document from a parsed JSON object whose header was checked."""

    @abc.abstractmethod
    def summary(self) -> dict[str, Any]:
        """What the manifest store keeps for this publication (``ManifestRecord.details``)."""

    @abc.abstractmethod
    def ledger(self) -> list[ProcessedObject]:
        """The ledger entries this publication records."""

    @abc.abstractmethod
    def edges(self) -> list[LineageEdge]:
        """The lineage edges this publication records."""

    def to_json(self) -> dict[str, Any]:
        """The document as a JSON object, header included."""
        return {
            "schema": MANIFEST_SCHEMA,
            "stage": self.step.stage,
            "step": self.step.name,
            "partition_key": self.partition_key,
            **self.body(),
        }

    def to_bytes(self) -> bytes:
        """The published bytes: :meth:`to_json` as canonical JSON at :attr:`indent`."""
        return json_bytes(self.to_json(), self.indent)

    def sha256(self) -> str:
        """SHA-256 of :meth:`to_bytes` (the manifest row's ``content_sha256``)."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_json(cls, doc: Any) -> Self:
        """Parse a JSON object; raises :class:`DocumentError` if it is not this document type
        at :data:`MANIFEST_SCHEMA` or a field is missing or malformed."""
        what = f"{cls.step.name} manifest"
        if not isinstance(doc, Mapping):
            raise DocumentError(f"{what}: expected a JSON object, got {type(doc).__name__}")
        found = (doc.get("schema"), doc.get("stage"), doc.get("step"))
        if found != (MANIFEST_SCHEMA, cls.step.stage, cls.step.name):
            raise DocumentError(
                f"{what}: expected schema {MANIFEST_SCHEMA} stage {cls.step.stage} step "
                f"{cls.step.name}, found schema {found[0]!r} stage {found[1]!r} step {found[2]!r}"
            )
        return cls.from_body(doc)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse JSON bytes (as stored in S3); raises :class:`DocumentError`."""
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise DocumentError(f"{cls.step.name} manifest is not valid JSON: {exc}") from None
        return cls.from_json(doc)
