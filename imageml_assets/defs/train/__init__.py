"""Stage 3 wiring: the gold tier ``training_shards`` and its job (training lands here next)."""

import dagster as dg

from imageml_assets.defs.train.assets import build_training_shards, train_variant
from imageml_core.settings import Settings

__all__ = ["TRAINING_SHARDS_JOB", "build_defs", "train_variant"]

TRAINING_SHARDS_JOB = "training_shards_job"


def build_defs(settings: Settings) -> dg.Definitions:
    """The asset and its job; raises ``ConfigError`` for a ``TRAIN_VARIANT`` that is not a
    normalized variant."""
    asset = build_training_shards(settings)
    job = dg.define_asset_job(
        TRAINING_SHARDS_JOB,
        selection=[asset],
        description="Stage 3 gold tier: assemble and shard the training dataset version.",
    )
    return dg.Definitions(assets=[asset], jobs=[job])
