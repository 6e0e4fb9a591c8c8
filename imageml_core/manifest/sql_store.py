"""SQLAlchemy implementation of :class:`ManifestStore` for PostgreSQL and SQLite.

Concurrency: every "record once" operation is ``INSERT ... ON CONFLICT DO NOTHING`` on a
unique constraint, so concurrent writers never create duplicates and exactly one of them
learns it created the row. SQLite runs in WAL mode with ``BEGIN IMMEDIATE`` so writers
queue on the busy timeout instead of failing with "database is locked".
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from imageml_core.manifest import schema as t
from imageml_core.manifest.interface import (
    STATUS_OK,
    BatchMember,
    DatasetVersion,
    LedgerRecord,
    Lineage,
    LineageEdge,
    LineageRecord,
    ManifestPublication,
    ManifestRecord,
    ManifestStore,
    MirroredMaterialization,
    ObjectVersion,
    ProcessedObject,
    Step,
)

_MIGRATIONS = Path(__file__).parent / "migrations"
_CHUNK = 500  # rows per IN (...) query: well below SQLite's bound-parameter limit
_migrate_lock = threading.Lock()


def _now() -> datetime:
    return datetime.now(UTC)


_po = t.processed_objects.c
_LEDGER_COLUMNS = (
    _po.stage,
    _po.step,
    _po.object_uri.label("uri"),
    _po.etag,
    _po.status,
    _po.reason,
    _po.content_sha256,
    _po.partition_key,
    _po.run_id,
    _po.details,
    _po.created_at,
)


def _utc(stamp: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones."""
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _ledger_record(row: Any) -> LedgerRecord:
    return LedgerRecord(**row._mapping)


def normalize_db_url(url: str) -> str:
    """Map bare ``postgresql://`` to psycopg2.

    SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3; we ship psycopg2-binary as the
    driver everyone (Dagster, MLflow, us) agrees on, so say it explicitly.
    """
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def create_store_engine(url: str) -> Engine:
    url = normalize_db_url(url)
    if url.startswith("sqlite"):
        db_path = sa.engine.make_url(url).database
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control from pysqlite so BEGIN IMMEDIATE below is honoured.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


class SqlManifestStore(ManifestStore):
    """The manifest store on a SQLAlchemy URL (``MANIFEST_DB_URL``)."""

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.url = normalize_db_url(url)
        self.engine = engine or create_store_engine(self.url)
        self._dialect = self.engine.dialect.name

    def __repr__(self) -> str:
        return f"SqlManifestStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ helpers
    def _insert(self, table: sa.Table) -> Any:
        if self._dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif self._dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:  # pragma: no cover - guarded in __init__ callers
            raise NotImplementedError(
                f"manifest store supports PostgreSQL and SQLite, not {self._dialect}"
            )
        return insert(table)

    def _insert_ignore(
        self, conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]
    ) -> int:
        """Insert rows, skipping those that violate a unique constraint; returns rows created."""
        if not rows:
            return 0
        created = 0
        for start in range(0, len(rows), _CHUNK):
            stmt = (
                self._insert(table)
                .values(list(rows[start : start + _CHUNK]))
                .on_conflict_do_nothing()
            )
            created += conn.execute(stmt).rowcount or 0
        return created

    # ------------------------------------------------------------------ schema
    def migrate(self) -> None:
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
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()

    # ------------------------------------------------------------------ datasets
    def _dataset_id(self, conn: Connection, name: str) -> int:
        self._insert_ignore(conn, t.datasets, [{"name": name, "created_at": _now()}])
        return conn.execute(
            sa.select(t.datasets.c.id).where(t.datasets.c.name == name)
        ).scalar_one()

    def get_or_create_dataset(self, name: str) -> int:
        if not name or len(name) > 200:
            raise ValueError(f"dataset name must be 1-200 characters, got {name!r}")
        with self.engine.begin() as conn:
            return self._dataset_id(conn, name)

    def dataset_versions(self, name: str) -> list[DatasetVersion]:
        q = (
            sa.select(t.dataset_versions)
            .join(t.datasets, t.datasets.c.id == t.dataset_versions.c.dataset_id)
            .where(t.datasets.c.name == name)
            .order_by(t.dataset_versions.c.id)
        )
        with self.engine.connect() as conn:
            return [DatasetVersion(**r._mapping) for r in conn.execute(q)]

    # ------------------------------------------------------------------ ledger
    def _ledger_row(
        self, step: Step, obj: ProcessedObject, partition_key: str | None, run_id: str | None
    ) -> dict[str, Any]:
        return {
            "stage": step.stage,
            "step": step.name,
            "object_uri": obj.uri,
            "etag": obj.etag,
            "status": obj.status,
            "reason": obj.reason,
            "content_sha256": obj.content_sha256,
            "partition_key": partition_key,
            "run_id": run_id,
            "details": dict(obj.details),
            "created_at": _now(),
        }

    def mark_processed(
        self,
        step: Step,
        obj: ProcessedObject,
        *,
        partition_key: str | None = None,
        run_id: str | None = None,
    ) -> bool:
        with self.engine.begin() as conn:
            return (
                self._insert_ignore(
                    conn, t.processed_objects, [self._ledger_row(step, obj, partition_key, run_id)]
                )
                == 1
            )

    def is_processed(self, step: Step, uri: str, etag: str) -> bool:
        return bool(self.processed_among(step, [ObjectVersion(uri, etag)]))

    def _versions_present(
        self, table: sa.Table, objects: Iterable[ObjectVersion], where: Any = None
    ) -> set[ObjectVersion]:
        wanted = list(dict.fromkeys(objects))
        found: set[ObjectVersion] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                q = sa.select(table.c.object_uri, table.c.etag).where(
                    table.c.object_uri.in_({o.uri for o in chunk})
                )
                if where is not None:
                    q = q.where(where)
                rows = {ObjectVersion(u, e) for u, e in conn.execute(q)}
                found.update(o for o in chunk if o in rows)
        return found

    def processed_among(self, step: Step, objects: Iterable[ObjectVersion]) -> set[ObjectVersion]:
        c = t.processed_objects.c
        return self._versions_present(
            t.processed_objects, objects, sa.and_(c.stage == step.stage, c.step == step.name)
        )

    def processed_objects(self, step: Step, partition_key: str | None = None) -> list[LedgerRecord]:
        c = t.processed_objects.c
        q = sa.select(*_LEDGER_COLUMNS).where(c.stage == step.stage, c.step == step.name)
        if partition_key is not None:
            q = q.where(c.partition_key == partition_key)
        with self.engine.connect() as conn:
            return [_ledger_record(r) for r in conn.execute(q.order_by(c.object_uri))]

    def processed_under(self, step: Step, uri_prefix: str) -> list[LedgerRecord]:
        c = t.processed_objects.c
        escaped = uri_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        q = (
            sa.select(*_LEDGER_COLUMNS)
            .where(c.stage == step.stage, c.step == step.name)
            .where(c.object_uri.like(escaped + "%", escape="\\"))
            .order_by(c.object_uri)
        )
        with self.engine.connect() as conn:
            return [_ledger_record(r) for r in conn.execute(q)]

    # ------------------------------------------------------------------ batches
    def plan_batch(self, batch_id: str, members: Sequence[BatchMember], source: str) -> bool:
        now = _now()
        rows = [
            {
                "batch_id": batch_id,
                "object_uri": m.uri,
                "etag": m.etag,
                "size": m.size,
                "source": source,
                "created_at": now,
            }
            for m in members
        ]
        with self.engine.begin() as conn:
            return self._insert_ignore(conn, t.batch_members, rows) > 0

    def batch_members(self, batch_id: str) -> list[BatchMember]:
        c = t.batch_members.c
        q = (
            sa.select(c.object_uri, c.etag, c.size)
            .where(c.batch_id == batch_id)
            .order_by(c.object_uri)
        )
        with self.engine.connect() as conn:
            return [BatchMember(u, e, s) for u, e, s in conn.execute(q)]

    def batch_ids(self) -> list[str]:
        c = t.batch_members.c
        with self.engine.connect() as conn:
            return list(
                conn.execute(sa.select(c.batch_id).distinct().order_by(c.batch_id)).scalars()
            )

    def unpublished_batch_ids(self, step: Step) -> list[str]:
        b, m = t.batch_members.c, t.manifests.c
        published = sa.select(m.partition_key).where(m.stage == step.stage, m.step == step.name)
        q = (
            sa.select(b.batch_id)
            .distinct()
            .where(b.batch_id.not_in(published))
            .order_by(b.batch_id)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(q).scalars())

    def planned_among(self, objects: Iterable[ObjectVersion]) -> set[ObjectVersion]:
        return self._versions_present(t.batch_members, objects)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(
        self, step: Step, partition_key: str, name: str, payload: Mapping[str, Any]
    ) -> None:
        row = {
            "stage": step.stage,
            "step": step.name,
            "partition_key": partition_key,
            "name": name,
            "payload": dict(payload),
            "updated_at": _now(),
        }
        stmt = self._insert(t.checkpoints).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["stage", "step", "partition_key", "name"],
            set_={"payload": stmt.excluded.payload, "updated_at": stmt.excluded.updated_at},
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def load_checkpoint(
        self, step: Step, partition_key: str, name: str
    ) -> Mapping[str, Any] | None:
        c = t.checkpoints.c
        q = sa.select(c.payload).where(
            c.stage == step.stage,
            c.step == step.name,
            c.partition_key == partition_key,
            c.name == name,
        )
        with self.engine.connect() as conn:
            return conn.execute(q).scalar()

    def claim(self, step: Step, partition_key: str, name: str, holder: str, ttl_s: float) -> bool:
        now = _now()
        lease = f"lease:{name}"
        row = {
            "stage": step.stage,
            "step": step.name,
            "partition_key": partition_key,
            "name": lease,
            "payload": {"holder": holder},
            "updated_at": now,
        }
        c = t.checkpoints.c
        with self.engine.begin() as conn:
            if self._insert_ignore(conn, t.checkpoints, [row]) == 1:
                return True
            # Compare-and-set on the timestamp: only one caller can replace a stale lease.
            stale = now - timedelta(seconds=ttl_s)
            taken = conn.execute(
                sa.update(t.checkpoints)
                .where(
                    c.stage == step.stage,
                    c.step == step.name,
                    c.partition_key == partition_key,
                    c.name == lease,
                    c.updated_at < stale,
                )
                .values(payload={"holder": holder}, updated_at=now)
            ).rowcount
            return taken == 1

    def release(self, step: Step, partition_key: str, name: str, holder: str) -> None:
        c = t.checkpoints.c
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(c.id, c.payload).where(
                    c.stage == step.stage,
                    c.step == step.name,
                    c.partition_key == partition_key,
                    c.name == f"lease:{name}",
                )
            ).all()
            for row in rows:
                if (row.payload or {}).get("holder") == holder:
                    conn.execute(sa.delete(t.checkpoints).where(c.id == row.id))

    # ------------------------------------------------------------------ manifests
    def publish(self, publication: ManifestPublication) -> bool:
        p = publication
        now = _now()
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

    # ------------------------------------------------------------------ lineage
    @staticmethod
    def _edge_rows(
        edges: Sequence[LineageEdge], run_id: str | None, partition_key: str | None
    ) -> list[dict[str, Any]]:
        now = _now()
        return [
            {
                "input_uri": e.input_uri,
                "output_uri": e.output_uri,
                "stage": e.step.stage,
                "step": e.step.name,
                "run_id": run_id,
                "partition_key": partition_key,
                "created_at": now,
            }
            for e in edges
        ]

    def add_lineage(
        self,
        edges: Sequence[LineageEdge],
        *,
        run_id: str | None = None,
        partition_key: str | None = None,
    ) -> int:
        with self.engine.begin() as conn:
            return self._insert_ignore(
                conn, t.lineage_edges, self._edge_rows(edges, run_id, partition_key)
            )

    def lineage(self, uri: str, *, max_depth: int = 20) -> Lineage:
        """Edges walked breadth-first up to ``max_depth`` hops each way (a cycle stops)."""
        c = t.lineage_edges.c
        edge_cols = (c.input_uri, c.output_uri, c.stage, c.step, c.run_id, c.partition_key)

        def walk(conn: Connection, start: str, forward: bool) -> list[LineageRecord]:
            seen, frontier, out = {start}, [start], []
            for _ in range(max_depth):
                if not frontier:
                    break
                col = c.input_uri if forward else c.output_uri
                rows = conn.execute(
                    sa.select(*edge_cols).where(col.in_(frontier)).order_by(c.id)
                ).all()
                frontier = []
                for r in rows:
                    out.append(LineageRecord(**r._mapping))
                    nxt = r.output_uri if forward else r.input_uri
                    if nxt not in seen:
                        seen.add(nxt)
                        frontier.append(nxt)
            return out

        po = t.processed_objects.c
        with self.engine.connect() as conn:
            records = [
                _ledger_record(r)
                for r in conn.execute(
                    sa.select(*_LEDGER_COLUMNS).where(po.object_uri == uri).order_by(po.id)
                )
            ]
            return Lineage(
                uri=uri,
                records=records,
                upstream=walk(conn, uri, forward=False),
                downstream=walk(conn, uri, forward=True),
            )

    # ------------------------------------------------------------------ Dagster mirror
    def last_mirrored_storage_id(self, asset_key: str) -> int:
        c = t.dagster_materializations.c
        with self.engine.connect() as conn:
            return (
                conn.execute(
                    sa.select(sa.func.max(c.storage_id)).where(c.asset_key == asset_key)
                ).scalar()
                or 0
            )

    def mirror_materializations(self, rows: Sequence[MirroredMaterialization]) -> int:
        values = [
            {
                "storage_id": r.storage_id,
                "asset_key": r.asset_key,
                "partition_key": r.partition_key,
                "run_id": r.run_id,
                "metadata": dict(r.metadata),
                "event_timestamp": datetime.fromtimestamp(r.timestamp, UTC),
            }
            for r in rows
        ]
        with self.engine.begin() as conn:
            return self._insert_ignore(conn, t.dagster_materializations, values)

    def mirrored_materializations(
        self, asset_key: str | None = None
    ) -> list[MirroredMaterialization]:
        c = t.dagster_materializations.c
        q = sa.select(t.dagster_materializations).order_by(c.storage_id)
        if asset_key is not None:
            q = q.where(c.asset_key == asset_key)
        with self.engine.connect() as conn:
            return [
                MirroredMaterialization(
                    storage_id=r.storage_id,
                    asset_key=r.asset_key,
                    partition_key=r.partition_key,
                    run_id=r.run_id,
                    metadata=r.metadata,
                    timestamp=_utc(r.event_timestamp).timestamp(),
                )
                for r in conn.execute(q)
            ]
