"""SQLAlchemy implementation of :class:`ManifestStore` for PostgreSQL and SQLite.

The store is its roles put together: the ledger and batch plans (:mod:`.sql_ledger`),
checkpoints and leases (:mod:`.sql_checkpoints`), lineage and the Dagster mirror
(:mod:`.sql_lineage`), and here the schema, datasets and publications. Engines and the
idempotent-insert helpers are in :mod:`.sql_base`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa

from imageml_core.manifest import schema as t
from imageml_core.manifest.interface import (
    STATUS_OK,
    DatasetVersion,
    ManifestPublication,
    ManifestRecord,
    ManifestStore,
    Step,
)
from imageml_core.manifest.sql_base import create_store_engine, normalize_db_url, utc_now
from imageml_core.manifest.sql_checkpoints import CheckpointsSql
from imageml_core.manifest.sql_ledger import LedgerSql
from imageml_core.manifest.sql_lineage import LineageSql

__all__ = ["SqlManifestStore", "create_store_engine", "normalize_db_url"]

_MIGRATIONS = Path(__file__).parent / "migrations"
_migrate_lock = threading.Lock()


class SqlManifestStore(LedgerSql, CheckpointsSql, LineageSql, ManifestStore):
    """The manifest store on a SQLAlchemy URL (``MANIFEST_DB_URL``)."""

    # ------------------------------------------------------------------ schema
    def migrate(self) -> None:
        """Alembic upgrade to head from ``migrations/``, in one transaction; a process-wide lock,
        and on PostgreSQL an advisory lock, serialise concurrent callers."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        with _migrate_lock, self.engine.begin() as conn:
            if self._dialect == "postgresql":
                # Serialise concurrent upgrades (several pods starting at once).
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(72616301)")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at; None before the first :meth:`migrate`."""
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()

    # ------------------------------------------------------------------ datasets
    def get_or_create_dataset(self, name: str) -> int:
        """Insert-or-ignore on the unique name; raises ValueError unless ``name`` is 1-200 chars."""
        if not name or len(name) > 200:
            raise ValueError(f"dataset name must be 1-200 characters, got {name!r}")
        with self.engine.begin() as conn:
            return self._dataset_id(conn, name)

    def dataset_versions(self, name: str) -> list[DatasetVersion]:
        """Versions of dataset ``name`` ordered by id; empty for an unknown name."""
        q = (
            sa.select(t.dataset_versions)
            .join(t.datasets, t.datasets.c.id == t.dataset_versions.c.dataset_id)
            .where(t.datasets.c.name == name)
            .order_by(t.dataset_versions.c.id)
        )
        with self.engine.connect() as conn:
            return [DatasetVersion(**r._mapping) for r in conn.execute(q)]

    # ------------------------------------------------------------------ manifests
    def publish(self, publication: ManifestPublication) -> bool:
        """One transaction: dataset, version (``<step>/<partition>``, ok objects counted), ledger
        rows, edges, then the manifest row; False if (step, partition) was already published."""
        p = publication
        now = utc_now()
        with self.engine.begin() as conn:
            c = t.manifests.c
            existing = conn.execute(
                sa.select(c.id).where(
                    c.stage == p.step.stage,
                    c.step == p.step.name,
                    c.partition_key == p.partition_key,
                )
            ).scalar()
            if existing is not None:
                return False
            dataset_id = self._dataset_id(conn, p.dataset_name)
            self._insert_ignore(
                conn,
                t.dataset_versions,
                [
                    {
                        "dataset_id": dataset_id,
                        "version": f"{p.step.name}/{p.partition_key}",
                        "stage": p.step.stage,
                        "step": p.step.name,
                        "object_count": sum(1 for o in p.objects if o.status == STATUS_OK),
                        "manifest_uri": p.manifest_uri,
                        "details": {
                            "quarantined": sum(1 for o in p.objects if o.status != STATUS_OK)
                        },
                        "created_at": now,
                    }
                ],
            )
            dv = t.dataset_versions.c
            version_id = conn.execute(
                sa.select(dv.id).where(
                    dv.dataset_id == dataset_id, dv.version == f"{p.step.name}/{p.partition_key}"
                )
            ).scalar_one()
            self._insert_ignore(
                conn,
                t.processed_objects,
                [self._ledger_row(p.step, o, p.partition_key, p.run_id) for o in p.objects],
            )
            self._insert_ignore(
                conn, t.lineage_edges, self._edge_rows(p.edges, p.run_id, p.partition_key)
            )
            # The manifest row goes last: its presence means everything above is complete.
            created = self._insert_ignore(
                conn,
                t.manifests,
                [
                    {
                        "stage": p.step.stage,
                        "step": p.step.name,
                        "partition_key": p.partition_key,
                        "dataset_version_id": version_id,
                        "run_id": p.run_id,
                        "manifest_uri": p.manifest_uri,
                        "content_sha256": p.content_sha256,
                        "details": dict(p.details),
                        "created_at": now,
                    }
                ],
            )
            return created == 1

    def get_manifest(self, step: Step, partition_key: str) -> ManifestRecord | None:
        """The manifest row for (stage, step, partition); None if unpublished."""
        c = t.manifests.c
        q = sa.select(t.manifests).where(
            c.stage == step.stage, c.step == step.name, c.partition_key == partition_key
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return ManifestRecord(**row._mapping) if row else None

    def manifests(self, step: Step | None = None, *, after_id: int = 0) -> list[ManifestRecord]:
        """Published manifests in publication order; ``after_id`` pages like a cursor."""
        c = t.manifests.c
        q = sa.select(t.manifests).where(c.id > after_id).order_by(c.id)
        if step is not None:
            q = q.where(c.stage == step.stage, c.step == step.name)
        with self.engine.connect() as conn:
            return [ManifestRecord(**r._mapping) for r in conn.execute(q)]
