"""Stage 1 augment wiring: ``augmented_images`` and its three checks (launched with
``raw_images`` by the stage 1 job the ingest sensors target), and the augment-only job the
``annotation_changes_sensor`` launches when annotation files arrive after their images."""

import dagster as dg

from imageml_assets.defs.augment.assets import build_augmented_images
from imageml_assets.defs.augment.sensors import build_annotation_changes_sensor
from imageml_assets.partitions import ingest_batches
from imageml_core.settings import Settings

__all__ = ["AUGMENT_JOB", "build_defs"]

AUGMENT_JOB = "augment_job"


def build_defs(settings: Settings) -> dg.Definitions:
    """The ``augmented_images`` asset for ``settings``, its job and sensor; reads
    ``AUGMENT_PIPELINE``, so a bad pipeline fails here
    (:class:`~imageml_core.stages.augment.pipeline.PipelineConfigError`)."""
    asset = build_augmented_images(settings)
    job = dg.define_asset_job(
        AUGMENT_JOB,
        selection=[asset],
        partitions_def=ingest_batches,
        description=(
            "Stage 1 augment alone, for a batch already ingested: a new annotation version "
            "of its images (annotation files that arrived or changed later)."
        ),
    )
    return dg.Definitions(
        assets=[asset], jobs=[job], sensors=[build_annotation_changes_sensor(job)]
    )
