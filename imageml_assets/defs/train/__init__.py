"""Stage 3 wiring: the gold tier ``training_shards``, the daily ``trained_model`` with its
promotion-gate check, their jobs and the daily training schedule."""

import dagster as dg

from imageml_assets.defs.train.assets import build_training_shards, train_variant
from imageml_assets.defs.train.model import BEATS_CHAMPION, build_trained_model
from imageml_assets.defs.train.schedule import DAILY_TRAINING_SCHEDULE, build_training_schedule
from imageml_core.settings import Settings

__all__ = [
    "BEATS_CHAMPION",
    "DAILY_TRAINING_SCHEDULE",
    "TRAINED_MODEL_JOB",
    "TRAINING_SHARDS_JOB",
    "build_defs",
    "train_variant",
]

TRAINING_SHARDS_JOB = "training_shards_job"
TRAINED_MODEL_JOB = "trained_model_job"


def build_defs(settings: Settings) -> dg.Definitions:
    """The assets, jobs and schedule; raises ``ConfigError`` for a ``TRAIN_VARIANT`` that
    is not a normalized variant or a schedule Dagster refuses."""
    shards = build_training_shards(settings)
    model = build_trained_model(settings)
    shards_job = dg.define_asset_job(
        TRAINING_SHARDS_JOB,
        selection=[shards],
        description="Stage 3 gold tier: assemble and shard the training dataset version.",
    )
    # The day's training first brings the gold tier up to date (a no-op when it is), so
    # the schedule trains on what is normalized by then.
    model_job = dg.define_asset_job(
        TRAINED_MODEL_JOB,
        selection=dg.AssetSelection.assets(shards, model),
        partitions_def=model.partitions_def,
        description=(
            "Stage 3: bring the gold tier up to date, then train, track, register and gate "
            "the day's model."
        ),
    )
    return dg.Definitions(
        assets=[shards, model],
        jobs=[shards_job, model_job],
        schedules=[build_training_schedule(settings, model_job)],
    )
