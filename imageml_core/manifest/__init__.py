"""The manifest store: lineage, dataset versions and idempotency (spec 001)."""

from imageml_core.manifest.interface import (
    AUGMENT,
    INFER,
    INGEST,
    NORMALIZE,
    STATUS_OK,
    STATUS_QUARANTINED,
    TRAIN,
    BatchMember,
    LineageEdge,
    ManifestPublication,
    ManifestStore,
    MirroredMaterialization,
    ObjectVersion,
    ProcessedObject,
    Step,
)
from imageml_core.manifest.sql_store import SqlManifestStore, normalize_db_url

__all__ = [
    "AUGMENT",
    "INFER",
    "INGEST",
    "NORMALIZE",
    "STATUS_OK",
    "STATUS_QUARANTINED",
    "TRAIN",
    "BatchMember",
    "LineageEdge",
    "ManifestPublication",
    "ManifestStore",
    "MirroredMaterialization",
    "ObjectVersion",
    "ProcessedObject",
    "SqlManifestStore",
    "Step",
    "normalize_db_url",
]
