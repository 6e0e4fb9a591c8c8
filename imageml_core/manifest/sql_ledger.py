"""The ledger and batch-plan roles of the SQL manifest store."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from imageml_core.manifest import schema as t
from imageml_core.manifest.interface import (
    BatchMember,
    LedgerRecord,
    ObjectVersion,
    ProcessedObject,
    Step,
)
from imageml_core.manifest.sql_base import CHUNK, LEDGER_COLUMNS, SqlBase, ledger_record, utc_now


class LedgerSql(SqlBase):
    """:class:`~imageml_core.manifest.interface.Ledger` and
    :class:`~imageml_core.manifest.interface.BatchPlans` on SQL."""

    # ------------------------------------------------------------------ ledger
    def mark_processed(
        self,
        step: Step,
        obj: ProcessedObject,
        *,
        partition_key: str | None = None,
        run_id: str | None = None,
    ) -> bool:
        """INSERT ... ON CONFLICT DO NOTHING; True only for the writer that created the row."""
        with self.engine.begin() as conn:
            return (
                self._insert_ignore(
                    conn, t.processed_objects, [self._ledger_row(step, obj, partition_key, run_id)]
                )
                == 1
            )

    def is_processed(self, step: Step, uri: str, etag: str) -> bool:
        """:meth:`processed_among` of the one version (a ledger row of any status counts)."""
        return bool(self.processed_among(step, [ObjectVersion(uri, etag)]))

    def _versions_present(
        self, table: sa.Table, objects: Iterable[ObjectVersion], where: Any = None
    ) -> set[ObjectVersion]:
        wanted = list(dict.fromkeys(objects))
        found: set[ObjectVersion] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), CHUNK):
                chunk = wanted[start : start + CHUNK]
                q = sa.select(table.c.object_uri, table.c.etag).where(
                    table.c.object_uri.in_({o.uri for o in chunk})
                )
                if where is not None:
                    q = q.where(where)
                rows = {ObjectVersion(u, e) for u, e in conn.execute(q)}
                found.update(o for o in chunk if o in rows)
        return found

    def processed_among(self, step: Step, objects: Iterable[ObjectVersion]) -> set[ObjectVersion]:
        """Selects by URI in chunks of :data:`CHUNK`, then matches the ETag in Python."""
        c = t.processed_objects.c
        return self._versions_present(
            t.processed_objects, objects, sa.and_(c.stage == step.stage, c.step == step.name)
        )

    def processed_objects(self, step: Step, partition_key: str | None = None) -> list[LedgerRecord]:
        """All of the step's rows when ``partition_key`` is None; ordered by URI."""
        c = t.processed_objects.c
        q = sa.select(*LEDGER_COLUMNS).where(c.stage == step.stage, c.step == step.name)
        if partition_key is not None:
            q = q.where(c.partition_key == partition_key)
        with self.engine.connect() as conn:
            return [ledger_record(r) for r in conn.execute(q.order_by(c.object_uri))]

    def processed_under(self, step: Step, uri_prefix: str) -> list[LedgerRecord]:
        """``LIKE <prefix>%`` with ``%``, ``_`` and ``\\`` in the prefix escaped; ordered by URI,
        then oldest first (a replaced object's revisions in the order they were recorded)."""
        c = t.processed_objects.c
        escaped = uri_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        q = (
            sa.select(*LEDGER_COLUMNS)
            .where(c.stage == step.stage, c.step == step.name)
            .where(c.object_uri.like(escaped + "%", escape="\\"))
            .order_by(c.object_uri, c.id)
        )
        with self.engine.connect() as conn:
            return [ledger_record(r) for r in conn.execute(q)]

    # ------------------------------------------------------------------ batches
    def plan_batch(self, batch_id: str, members: Sequence[BatchMember], source: str) -> bool:
        """Insert-or-ignore per (batch, URI); True if any member row was new."""
        now = utc_now()
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
        """The batch's rows ordered by URI; empty for an unknown batch."""
        c = t.batch_members.c
        q = (
            sa.select(c.object_uri, c.etag, c.size)
            .where(c.batch_id == batch_id)
            .order_by(c.object_uri)
        )
        with self.engine.connect() as conn:
            return [BatchMember(u, e, s) for u, e, s in conn.execute(q)]

    def batch_ids(self) -> list[str]:
        """Every planned batch id, sorted (not part of the store interface)."""
        c = t.batch_members.c
        with self.engine.connect() as conn:
            return list(
                conn.execute(sa.select(c.batch_id).distinct().order_by(c.batch_id)).scalars()
            )

    def unpublished_batch_ids(self, step: Step) -> list[str]:
        """Planned batch ids, sorted, with no manifest row for ``step`` under that partition key."""
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
        """Selects batch members by URI in chunks of :data:`CHUNK`, then matches the ETag."""
        return self._versions_present(t.batch_members, objects)
