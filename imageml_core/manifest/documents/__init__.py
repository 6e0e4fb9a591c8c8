"""Typed stage manifests: what each stage publishes and the next stage reads.

Each document is a frozen dataclass with ``to_json``/``from_json`` (and ``to_bytes``/
``from_bytes``), a schema version checked on read (:data:`MANIFEST_SCHEMA`), the summary
the manifest store keeps, and the ledger rows and lineage edges its publication writes.
"""

from imageml_core.manifest.documents.augment import (
    AugmentChecks,
    AugmentManifest,
    AugmentOutput,
    AugmentSource,
    AugmentSummary,
    AugmentTotals,
    PipelineInfo,
)
from imageml_core.manifest.documents.base import (
    MANIFEST_SCHEMA,
    AnnotationFiles,
    DocumentError,
    QuarantinedSource,
    StageDocument,
    json_bytes,
)
from imageml_core.manifest.documents.ingest import (
    IMAGE_KINDS,
    IngestCounts,
    IngestedObject,
    IngestEntry,
    IngestManifest,
    IngestSummary,
    ingested_objects,
    ingested_under,
)
from imageml_core.manifest.documents.normalize import (
    MAX_FINDINGS,
    NormalizeChecks,
    NormalizedOutput,
    NormalizeManifest,
    NormalizeSummary,
    PolicyInfo,
)
from imageml_core.manifest.documents.train import (
    Shard,
    TrainedModelManifest,
    TrainingDatasetManifest,
    TrainingDatasetSummary,
)

__all__ = [
    "IMAGE_KINDS",
    "MANIFEST_SCHEMA",
    "MAX_FINDINGS",
    "AnnotationFiles",
    "AugmentChecks",
    "AugmentManifest",
    "AugmentOutput",
    "AugmentSource",
    "AugmentSummary",
    "AugmentTotals",
    "DocumentError",
    "IngestCounts",
    "IngestEntry",
    "IngestManifest",
    "IngestSummary",
    "IngestedObject",
    "NormalizeChecks",
    "NormalizeManifest",
    "NormalizeSummary",
    "NormalizedOutput",
    "PipelineInfo",
    "PolicyInfo",
    "QuarantinedSource",
    "Shard",
    "StageDocument",
    "TrainedModelManifest",
    "TrainingDatasetManifest",
    "TrainingDatasetSummary",
    "ingested_objects",
    "ingested_under",
    "json_bytes",
]
