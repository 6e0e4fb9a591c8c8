"""The manifest store: lineage, dataset versions and idempotency (spec 001).

- :mod:`.interface` — the store's role protocols and the typed rows it returns
- :mod:`.sql_store` — the SQLAlchemy implementation (PostgreSQL, SQLite), one module per
  role (:mod:`.sql_ledger`, :mod:`.sql_checkpoints`, :mod:`.sql_lineage`) on
  :mod:`.sql_base`; the tables in :mod:`.schema`, Alembic ``migrations/``
- :mod:`.cursor` — reading new publications by id without missing a late commit
- :mod:`.documents` — each stage's typed manifest document
- :mod:`.keys` — partition keys and storage locations, built and parsed in one place
- :mod:`.publish` — the one publication path every stage uses (DESIGN.md section 7)
"""

from imageml_core.manifest.interface import (
    AUGMENT,
    INFER,
    INGEST,
    NORMALIZE,
    STATUS_OK,
    STATUS_QUARANTINED,
    STATUS_SKIPPED,
    TRAIN,
    TRAINING_SHARDS,
    BatchMember,
    BatchPlans,
    Checkpoints,
    DatasetVersion,
    Ledger,
    LedgerRecord,
    Lineage,
    LineageEdge,
    LineageGraph,
    LineageRecord,
    ManifestPublication,
    ManifestRecord,
    ManifestStore,
    MaterializationMirror,
    MirroredMaterialization,
    ObjectVersion,
    ProcessedObject,
    Publications,
    Step,
)
from imageml_core.manifest.sql_base import redacted
from imageml_core.manifest.sql_store import SqlManifestStore, normalize_db_url

__all__ = [
    "AUGMENT",
    "INFER",
    "INGEST",
    "NORMALIZE",
    "STATUS_OK",
    "STATUS_QUARANTINED",
    "STATUS_SKIPPED",
    "TRAIN",
    "TRAINING_SHARDS",
    "BatchMember",
    "BatchPlans",
    "Checkpoints",
    "DatasetVersion",
    "Ledger",
    "LedgerRecord",
    "Lineage",
    "LineageEdge",
    "LineageGraph",
    "LineageRecord",
    "ManifestPublication",
    "ManifestRecord",
    "ManifestStore",
    "MaterializationMirror",
    "MirroredMaterialization",
    "ObjectVersion",
    "ProcessedObject",
    "Publications",
    "SqlManifestStore",
    "Step",
    "normalize_db_url",
    "redacted",
]
