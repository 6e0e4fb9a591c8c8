"""Dagster resource for stage 2's normalization policy (sizes, fit, quality, chroma)."""

import dagster as dg

from imageml_core.normalize import NormalizePolicy
from imageml_core.sizes import parse_sizes


class NormalizationResource(dg.ConfigurableResource):
    """``sizes`` is ``NORMALIZE_SIZES`` (e.g. ``1080p,720p,800x600``); ``fit`` the fixed-size
    policy (``letterbox`` or ``crop``); ``quality`` JPEG quality 1-100; ``chroma`` the JPEG
    chroma subsampling (``420`` or ``444``); ``workers`` the process-pool size (0 = one per
    core)."""

    sizes: str = "1080p,720p,800x600"
    fit: str = "letterbox"
    quality: int = 90
    chroma: str = "420"
    workers: int = 0

    def get_policy(self) -> NormalizePolicy:
        return NormalizePolicy(
            tuple(parse_sizes(self.sizes)),
            fit=self.fit,
            quality=self.quality,
            chroma_subsampling=self.chroma,
        )

    def variant_names(self) -> list[str]:
        return [v.name for v in parse_sizes(self.sizes)]
