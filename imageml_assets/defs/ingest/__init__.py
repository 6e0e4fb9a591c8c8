"""Stage 1 ingest wiring: ``raw_images``, its check, the polling and SQS sensors, and the
stage 1 job they launch."""

import dagster as dg

from imageml_assets.defs.ingest.assets import EVERY_OBJECT_RECORDED, build_raw_images
from imageml_assets.defs.ingest.sensors import raw_events_sensor, raw_objects_sensor
from imageml_assets.jobs import ingest_and_augment_job
from imageml_core.settings import Settings

__all__ = ["EVERY_OBJECT_RECORDED", "build_defs"]


def build_defs(settings: Settings) -> dg.Definitions:
    """``raw_images``, the stage 1 job and the polling and SQS sensors that launch it."""
    return dg.Definitions(
        assets=[build_raw_images(settings)],
        jobs=[ingest_and_augment_job],
        sensors=[raw_objects_sensor, raw_events_sensor],
    )
