"""Dagster resource for local NVMe staging (spec 001)."""

import dagster as dg

from imageml_core.storage.staging import NvmeStaging


class NvmeStagingResource(dg.ConfigurableResource):
    """``root`` is ``NVME_ROOT``; ``min_free_gb`` is ``NVME_MIN_GB`` (GiB kept free)."""

    root: str
    min_free_gb: float = 0.0

    def get_staging(self) -> NvmeStaging:
        """A new :class:`NvmeStaging` on ``root``, its area folders created."""
        return NvmeStaging(self.root, self.min_free_gb)
