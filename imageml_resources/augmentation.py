"""Dagster resource for the augmentation pipeline registry (by name or YAML path)."""

import dagster as dg
from pydantic import PrivateAttr

from imageml_core.settings import ConfigError
from imageml_core.stages.augment.pipeline import (
    AugmentPipeline,
    PipelineConfigError,
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
        normalize step). Raises :class:`~imageml_core.settings.ConfigError` naming
        ``AUGMENT_PIPELINE`` for a pipeline that cannot be read."""
        if self._spec is None:
            try:
                self._spec = read_pipeline(self.pipeline, copies=self.copies)
            except PipelineConfigError as exc:
                raise ConfigError(f"AUGMENT_PIPELINE={self.pipeline!r}: {exc}") from exc
        return self._spec

    def get_pipeline(self) -> AugmentPipeline:
        """The pipeline ready to run (once per resource); raises
        :class:`~imageml_core.settings.ConfigError` naming ``AUGMENT_PIPELINE`` for a
        pipeline that cannot be read or whose transforms Albumentations refuses."""
        if self._loaded is None:
            try:
                self._loaded = load_pipeline(self.pipeline, copies=self.copies)
            except PipelineConfigError as exc:
                raise ConfigError(f"AUGMENT_PIPELINE={self.pipeline!r}: {exc}") from exc
        return self._loaded
