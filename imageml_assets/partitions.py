"""Partitions shared by the assets (DESIGN.md section 2)."""

import dagster as dg

# One partition per ingest batch (what one sensor tick discovered), never one per image:
# Dagster recommends < 100k partitions per asset.
ingest_batches = dg.DynamicPartitionsDefinition(name="ingest_batches")


def normalize_partitions(variant_names: list[str]) -> dg.MultiPartitionsDefinition:
    """Stage 2's partitions: ingest batch x size variant (``NORMALIZE_SIZES``)."""
    return dg.MultiPartitionsDefinition(
        {"batch": ingest_batches, "variant": dg.StaticPartitionsDefinition(variant_names)}
    )
