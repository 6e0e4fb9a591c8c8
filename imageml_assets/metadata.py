"""Materialization metadata the Dagster UI renders well (tables, Markdown, row counts)."""

from collections.abc import Iterable

import dagster as dg

QUARANTINE_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("uri", "string", description="The object left out"),
        dg.TableColumn("reason", "string", description="Why"),
    ]
)
#: Rows shown in a quarantine table (the manifest has them all).
MAX_ROWS = 100


def quarantine_table(items: Iterable[tuple[str, str | None]]) -> dg.TableMetadataValue:
    """A table of quarantined objects and why, for the asset's materialization."""
    records = [
        dg.TableRecord({"uri": uri, "reason": reason or ""})
        for uri, reason in list(items)[:MAX_ROWS]
    ]
    return dg.MetadataValue.table(records, schema=QUARANTINE_SCHEMA)
