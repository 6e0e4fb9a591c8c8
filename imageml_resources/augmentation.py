"""Dagster resource for the augmentation pipeline registry (by name or YAML path)."""

import dagster as dg
from pydantic import PrivateAttr

from imageml_core.stages.augment.pipeline import (
    AugmentPipeline,
    PipelineSpec,
    load_pipeline,
    read_pipeline,
)


class AugmentationResource(dg.ConfigurableResource):
    """``pipeline`` is ``AUGMENT_PIPELINE`` (a built-in name or a YAML path); ``copies`` is
    ``AUGMENT_COPIES`` and overrides the pipeline file's count when set."""

    pipeline: str
    copies: int | None = None

    _spec: PipelineSpec | None = PrivateAttr(default=None)
    _loaded: AugmentPipeline | None = PrivateAttr(default=None)

    def get_spec(self) -> PipelineSpec:
        """The pipeline's spec and tag, without importing Albumentations (sensors, the
        normalize step); raises :class:`~imageml_core.stages.augment.pipeline.PipelineConfigError`."""
        if self._spec is None:
            self._spec = read_pipeline(self.pipeline, copies=self.copies)
        return self._spec

    def get_pipeline(self) -> AugmentPipeline:
        """The pipeline ready to run (once per resource); raises
        :class:`~imageml_core.stages.augment.pipeline.PipelineConfigError`."""
        if self._loaded is None:
            self._loaded = load_pipeline(self.pipeline, copies=self.copies)
        return self._loaded
