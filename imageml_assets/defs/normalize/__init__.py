"""Stage 2 wiring: ``normalized_variants`` (batch x variant), its check, its job, and the
sensor that launches every variant of each newly augmented batch."""

import dagster as dg

from imageml_assets.defs.normalize.assets import EVERY_SOURCE_HAS_VARIANT, build_normalized_variants
from imageml_assets.defs.normalize.sensors import build_augmented_batches_sensor
from imageml_assets.partitions import normalize_partitions
from imageml_core.settings import Settings
from imageml_core.sizes import parse_sizes

__all__ = ["EVERY_SOURCE_HAS_VARIANT", "NORMALIZE_JOB", "build_defs"]

NORMALIZE_JOB = "normalize_job"


def build_defs(settings: Settings) -> dg.Definitions:
    """The asset, job and sensor for the variants in ``NORMALIZE_SIZES``."""
    variants = [v.name for v in parse_sizes(settings.normalize_sizes)]
    asset = build_normalized_variants(settings, variants)
    job = dg.define_asset_job(
        NORMALIZE_JOB,
        selection=[asset],
        partitions_def=normalize_partitions(variants),
        description="Stage 2 for one (batch, variant) partition.",
    )
    return dg.Definitions(assets=[asset], jobs=[job], sensors=[build_augmented_batches_sensor(job)])
