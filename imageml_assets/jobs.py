"""Jobs the sensors target (shared by the ingest and augment wiring)."""

import dagster as dg

from imageml_assets.partitions import ingest_batches

# Stage 1 for one ingest batch: ingest, then augment. Sensors (polling and SQS) launch it.
ingest_and_augment_job = dg.define_asset_job(
    "ingest_and_augment_job",
    selection=dg.AssetSelection.assets("raw_images", "augmented_images"),
    partitions_def=ingest_batches,
    description="Stage 1 for one ingest batch: stage, verify and register it, then augment it.",
)
