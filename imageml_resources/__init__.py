"""Dagster resources: one per external system, each wrapping a plain client from imageml_core."""

from imageml_resources.augmentation import AugmentationResource
from imageml_resources.event_queue import EventQueueResource
from imageml_resources.layout import DataLayoutResource
from imageml_resources.manifest_store import ManifestStoreResource
from imageml_resources.normalization import NormalizationResource
from imageml_resources.object_store import ObjectStoreResource
from imageml_resources.staging import NvmeStagingResource

__all__ = [
    "AugmentationResource",
    "DataLayoutResource",
    "EventQueueResource",
    "ManifestStoreResource",
    "NormalizationResource",
    "NvmeStagingResource",
    "ObjectStoreResource",
]
