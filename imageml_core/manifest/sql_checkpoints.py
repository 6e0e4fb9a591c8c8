"""The checkpoint and lease role of the SQL manifest store."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from imageml_core.manifest import schema as t
from imageml_core.manifest.interface import Step
from imageml_core.manifest.sql_base import SqlBase, utc_now


class CheckpointsSql(SqlBase):
    """:class:`~imageml_core.manifest.interface.Checkpoints` on SQL: payloads upserted per
    (step, partition, name); leases are rows named ``lease:<name>`` taken by insert or by
    compare-and-set on a stale timestamp."""

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(
        self, step: Step, partition_key: str, name: str, payload: Mapping[str, Any]
    ) -> None:
        """Upsert (INSERT ... ON CONFLICT DO UPDATE) of the payload and ``updated_at``."""
        row = {
            "stage": step.stage,
            "step": step.name,
            "partition_key": partition_key,
            "name": name,
            "payload": dict(payload),
            "updated_at": utc_now(),
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
        """The stored payload, or None when no row exists."""
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
        """Insert-or-ignore the ``lease:<name>`` row, else an UPDATE guarded by ``updated_at`` older
        than ``ttl_s`` seconds; True only if this caller's insert or update hit the row."""
        now = utc_now()
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

    def renew(self, step: Step, partition_key: str, name: str, holder: str) -> bool:
        """Move the lease's timestamp to now if ``holder`` still holds it: compare-and-set
        on the timestamp read, so a lease taken over meanwhile is never renewed."""
        c = t.checkpoints.c
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(c.id, c.payload, c.updated_at).where(
                    c.stage == step.stage,
                    c.step == step.name,
                    c.partition_key == partition_key,
                    c.name == f"lease:{name}",
                )
            ).first()
            if row is None or (row.payload or {}).get("holder") != holder:
                return False
            renewed = conn.execute(
                sa.update(t.checkpoints)
                .where(c.id == row.id, c.updated_at == row.updated_at)
                .values(updated_at=utc_now())
            ).rowcount
            return renewed == 1

    def release(self, step: Step, partition_key: str, name: str, holder: str) -> None:
        """Deletes the ``lease:<name>`` row only if its payload names ``holder``; else no-op."""
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
