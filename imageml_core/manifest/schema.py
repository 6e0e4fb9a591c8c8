"""Tables of the manifest store (SQLAlchemy Core; the same DDL on PostgreSQL and SQLite).

Idempotency lives in unique constraints, not in read-then-write: two writers racing to
record the same fact both run ``INSERT ... ON CONFLICT DO NOTHING`` and exactly one row
results. Changes to these tables go through an Alembic revision in ``migrations/``.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Portable JSON: JSONB on PostgreSQL (indexable), JSON text on SQLite.
JsonDoc = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)

datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("created_at", Timestamp, nullable=False),
)

dataset_versions = sa.Table(
    "dataset_versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("dataset_id", sa.ForeignKey("datasets.id"), nullable=False),
    sa.Column("version", sa.String(200), nullable=False),
    sa.Column("stage", sa.Integer, nullable=False),
    sa.Column("step", sa.String(40), nullable=False),
    sa.Column("object_count", sa.Integer, nullable=False),
    sa.Column("manifest_uri", sa.Text),
    sa.Column("details", JsonDoc, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.UniqueConstraint("dataset_id", "version", name="uq_dataset_versions_dataset_version"),
)

# One row per published stage manifest: (stage, partition) is published at most once.
manifests = sa.Table(
    "manifests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("stage", sa.Integer, nullable=False),
    sa.Column("step", sa.String(40), nullable=False),
    sa.Column("partition_key", sa.String(300), nullable=False),
    sa.Column("dataset_version_id", sa.ForeignKey("dataset_versions.id")),
    sa.Column("run_id", sa.String(64)),
    sa.Column("manifest_uri", sa.Text),
    sa.Column("content_sha256", sa.String(64), nullable=False),
    sa.Column("details", JsonDoc, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.UniqueConstraint("stage", "step", "partition_key", name="uq_manifests_stage_step_partition"),
)

# "Has object (key, ETag) been processed for stage N": the idempotency ledger.
processed_objects = sa.Table(
    "processed_objects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("stage", sa.Integer, nullable=False),
    sa.Column("step", sa.String(40), nullable=False),
    sa.Column("object_uri", sa.Text, nullable=False),
    sa.Column("etag", sa.String(128), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # "ok" | "quarantined"
    sa.Column("reason", sa.Text),
    sa.Column("content_sha256", sa.String(64)),
    sa.Column("partition_key", sa.String(300)),
    sa.Column("run_id", sa.String(64)),
    sa.Column("details", JsonDoc, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.UniqueConstraint(
        "stage", "step", "object_uri", "etag", name="uq_processed_objects_stage_step_uri_etag"
    ),
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("stage", sa.Integer, nullable=False),
    sa.Column("step", sa.String(40), nullable=False),
    sa.Column("partition_key", sa.String(300), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("payload", JsonDoc, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.UniqueConstraint(
        "stage", "step", "partition_key", "name", name="uq_checkpoints_stage_step_partition_name"
    ),
)

lineage_edges = sa.Table(
    "lineage_edges",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("input_uri", sa.Text, nullable=False),
    sa.Column("output_uri", sa.Text, nullable=False),
    sa.Column("stage", sa.Integer, nullable=False),
    sa.Column("step", sa.String(40), nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.Column("partition_key", sa.String(300)),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.UniqueConstraint(
        "input_uri", "output_uri", "stage", "step", name="uq_lineage_edges_in_out_step"
    ),
    sa.Index("ix_lineage_edges_input", "input_uri"),
    sa.Index("ix_lineage_edges_output", "output_uri"),
)

# Planned ingest batches: which objects make up a batch partition (so a backfill from the
# UI, knowing only the partition key, processes exactly the same objects).
batch_members = sa.Table(
    "batch_members",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("batch_id", sa.String(100), nullable=False),
    sa.Column("object_uri", sa.Text, nullable=False),
    sa.Column("etag", sa.String(128), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("source", sa.String(20), nullable=False),  # "poll" | "event" | "run"
    sa.Column("created_at", Timestamp, nullable=False),
    sa.UniqueConstraint("batch_id", "object_uri", name="uq_batch_members_batch_uri"),
    sa.Index("ix_batch_members_uri", "object_uri", "etag"),
)

# Dagster asset materializations mirrored from the event log; storage_id is Dagster's own
# event id, so catching up after downtime can never insert the same event twice.
dagster_materializations = sa.Table(
    "dagster_materializations",
    metadata,
    sa.Column("storage_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("asset_key", sa.String(300), nullable=False),
    sa.Column("partition_key", sa.String(300)),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("metadata", JsonDoc, nullable=False),
    sa.Column("event_timestamp", Timestamp, nullable=False),
    sa.Index("ix_dagster_materializations_asset", "asset_key", "storage_id"),
)
