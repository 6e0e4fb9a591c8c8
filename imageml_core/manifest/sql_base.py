"""The SQL manifest store's foundation: engines for PostgreSQL and SQLite, and the
idempotent-insert helpers every role of the store is built on.

Concurrency: every "record once" operation is ``INSERT ... ON CONFLICT DO NOTHING`` on a
unique constraint, so concurrent writers never create duplicates and exactly one of them
learns it created the row. SQLite runs in WAL mode with ``BEGIN IMMEDIATE`` so writers
queue on the busy timeout instead of failing with "database is locked".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from imageml_core.manifest import schema as t
from imageml_core.manifest.interface import LedgerRecord, LineageEdge, ProcessedObject, Step

CHUNK = 500  # rows per IN (...) query: well below SQLite's bound-parameter limit


def utc_now() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


_po = t.processed_objects.c
LEDGER_COLUMNS = (
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


def utc(stamp: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones."""
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def ledger_record(row: Any) -> LedgerRecord:
    """A ledger row as a :class:`LedgerRecord` (``created_at`` timezone-aware UTC)."""
    values = dict(row._mapping)
    if values.get("created_at") is not None:
        values["created_at"] = utc(values["created_at"])
    return LedgerRecord(**values)


def redacted(url: str) -> str:
    """``url`` with its password masked (``***``), for messages and logs."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<not a SQLAlchemy URL>"


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
    """An engine for ``url`` (normalised by :func:`normalize_db_url`).

    SQLite: creates the database file's folder, 60 s busy timeout, WAL journal, foreign keys
    on, and ``BEGIN IMMEDIATE`` for every transaction. Anything else (PostgreSQL): a pool of 5
    (10 overflow) with pre-ping."""
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


class SqlBase:
    """Engine and insert helpers shared by the store's roles (:mod:`.sql_store`)."""

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.url = normalize_db_url(url)
        self.engine = engine or create_store_engine(self.url)
        self._dialect = self.engine.dialect.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        """Dispose of the engine's connection pool."""
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
        for start in range(0, len(rows), CHUNK):
            stmt = (
                self._insert(table)
                .values(list(rows[start : start + CHUNK]))
                .on_conflict_do_nothing()
            )
            created += conn.execute(stmt).rowcount or 0
        return created

    def _dataset_id(self, conn: Connection, name: str) -> int:
        self._insert_ignore(conn, t.datasets, [{"name": name, "created_at": utc_now()}])
        return conn.execute(
            sa.select(t.datasets.c.id).where(t.datasets.c.name == name)
        ).scalar_one()

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
            "created_at": utc_now(),
        }

    @staticmethod
    def _edge_rows(
        edges: Sequence[LineageEdge], run_id: str | None, partition_key: str | None
    ) -> list[dict[str, Any]]:
        now = utc_now()
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
