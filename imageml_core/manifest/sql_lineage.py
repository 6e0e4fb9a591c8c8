"""The lineage and Dagster-mirror roles of the SQL manifest store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from imageml_core.manifest import schema as t
from imageml_core.manifest.interface import (
    Lineage,
    LineageEdge,
    LineageRecord,
    MirroredMaterialization,
)
from imageml_core.manifest.sql_base import LEDGER_COLUMNS, SqlBase, ledger_record, utc


class LineageSql(SqlBase):
    """:class:`~imageml_core.manifest.interface.LineageGraph` and
    :class:`~imageml_core.manifest.interface.MaterializationMirror` on SQL."""

    # ------------------------------------------------------------------ lineage
    def add_lineage(
        self,
        edges: Sequence[LineageEdge],
        *,
        run_id: str | None = None,
        partition_key: str | None = None,
    ) -> int:
        """Insert-or-ignore on (input, output, stage, step); returns the number of rows created."""
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
                ledger_record(r)
                for r in conn.execute(
                    sa.select(*LEDGER_COLUMNS).where(po.object_uri == uri).order_by(po.id)
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
        """``MAX(storage_id)`` for the asset key, 0 when none is mirrored."""
        c = t.dagster_materializations.c
        with self.engine.connect() as conn:
            return (
                conn.execute(
                    sa.select(sa.func.max(c.storage_id)).where(c.asset_key == asset_key)
                ).scalar()
                or 0
            )

    def mirror_materializations(self, rows: Sequence[MirroredMaterialization]) -> int:
        """Insert-or-ignore on ``storage_id`` (timestamps stored as UTC); returns rows created."""
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
        """Ordered by ``storage_id``; ``timestamp`` read back as epoch seconds (UTC)."""
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
                    timestamp=utc(r.event_timestamp).timestamp(),
                )
                for r in conn.execute(q)
            ]
