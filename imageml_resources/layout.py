"""Where each tier lives in the object store, and the limits that shape batches.

Not an external system but configuration every asset and sensor reads; one resource keeps
it in one place instead of each asset re-reading environment variables. Defaults and
validation live in :class:`imageml_core.settings.Settings`, which builds it.
"""

import dagster as dg

from imageml_core.settings import Settings
from imageml_core.uris import S3Uri, parse_s3_uri


class DataLayoutResource(dg.ConfigurableResource):
    """Tier URIs (``s3://bucket/prefix``), the dataset name, ingest batch limits (objects,
    MiB), the polling sensor's full-scan period (ticks) and the bomb limit (pixels)."""

    raw_uri: str
    bronze_uri: str
    augmented_uri: str
    normalized_uri: str
    training_uri: str
    inference_input_uri: str
    hitl_uri: str
    final_output_uri: str | None = None
    dataset_name: str
    ingest_batch_max_objects: int
    ingest_batch_max_mb: int
    raw_full_scan_every_ticks: int
    max_image_pixels: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "DataLayoutResource":
        """The resource for validated settings (tier URIs as strings)."""
        return cls(
            raw_uri=str(settings.raw_uri),
            bronze_uri=str(settings.bronze_uri),
            augmented_uri=str(settings.augmented_uri),
            normalized_uri=str(settings.normalized_uri),
            training_uri=str(settings.training_uri),
            inference_input_uri=str(settings.inference_input_uri),
            hitl_uri=str(settings.hitl_uri),
            final_output_uri=str(settings.final_output_uri) if settings.final_output_uri else None,
            dataset_name=settings.dataset_name,
            ingest_batch_max_objects=settings.ingest_batch_max_objects,
            ingest_batch_max_mb=settings.ingest_batch_max_mb,
            raw_full_scan_every_ticks=settings.raw_full_scan_every_ticks,
            max_image_pixels=settings.max_image_pixels,
        )

    def uri(self, name: str) -> S3Uri:
        """``uri("raw")`` -> the parsed ``raw_uri``."""
        return parse_s3_uri(getattr(self, f"{name}_uri"))

    @property
    def ingest_batch_max_bytes(self) -> int:
        """``ingest_batch_max_mb`` in bytes (MiB x 1024 x 1024)."""
        return self.ingest_batch_max_mb * 1024 * 1024
