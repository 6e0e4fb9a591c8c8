"""Stage 1 augment wiring: ``augmented_images`` and its three checks (launched with
``raw_images`` by the stage 1 job the ingest sensors target)."""

import dagster as dg

from imageml_assets.defs.augment.assets import build_augmented_images
from imageml_core.settings import Settings

__all__ = ["build_defs"]


def build_defs(settings: Settings) -> dg.Definitions:
    """The ``augmented_images`` asset for ``settings``; reads ``AUGMENT_PIPELINE``, so a bad
    pipeline fails here (:class:`~imageml_core.stages.augment.pipeline.PipelineConfigError`)."""
    return dg.Definitions(assets=[build_augmented_images(settings)])
