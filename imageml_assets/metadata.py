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


ANNOTATION_ISSUE_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("file", "string", description="The annotation file"),
        dg.TableColumn("record", "string", description="JSON path, task or name in it"),
        dg.TableColumn("reason", "string", description="What was wrong, and what was done"),
    ]
)


def annotation_issue_table(rows: Iterable[tuple[str, str, str]]) -> dg.TableMetadataValue:
    """A table of what annotation intake reported (first :data:`MAX_ROWS`; the manifest's
    ``annotations.intake`` has them all)."""
    records = [
        dg.TableRecord({"file": f, "record": r, "reason": why})
        for f, r, why in list(rows)[:MAX_ROWS]
    ]
    return dg.MetadataValue.table(records, schema=ANNOTATION_ISSUE_SCHEMA)
