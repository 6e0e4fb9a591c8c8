"""Dagster resource for stage 2's normalization policy (sizes, fit, quality, chroma)."""

import dagster as dg

from imageml_core.settings import Settings
from imageml_core.sizes import parse_sizes
from imageml_core.stages.normalize.image import NormalizePolicy


class NormalizationResource(dg.ConfigurableResource):
    """``sizes`` is ``NORMALIZE_SIZES`` (e.g. ``1080p,720p,800x600``); ``fit`` the fixed-size
    policy (``letterbox`` or ``crop``); ``quality`` JPEG quality 1-100; ``chroma`` the JPEG
    chroma subsampling (``420`` or ``444``); ``workers`` the process-pool size (0 = one per
    core). Defaults and validation live in :class:`imageml_core.settings.Settings`."""

    sizes: str
    fit: str
    quality: int
    chroma: str
    workers: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "NormalizationResource":
        """The resource for validated settings (the ``normalize_*`` values)."""
        return cls(
            sizes=settings.normalize_sizes,
            fit=settings.normalize_fit,
            quality=settings.normalize_quality,
            chroma=settings.normalize_chroma,
            workers=settings.normalize_workers,
        )

    def get_policy(self) -> NormalizePolicy:
        """The policy; raises ``ValueError`` for a value the settings would have refused."""
        return NormalizePolicy(
            tuple(parse_sizes(self.sizes)),
            fit=self.fit,
            quality=self.quality,
            chroma_subsampling=self.chroma,
        )
