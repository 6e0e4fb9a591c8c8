"""Dagster resources: one per external system (object store, NVMe staging, manifest store,
event queue, MLflow), plus the settings every asset reads (data layout, augmentation,
normalization), each wrapping a plain client or policy from :mod:`imageml_core`.
:func:`build_resources` builds them all from the settings, in one place."""

from imageml_resources.augmentation import AugmentationResource
from imageml_resources.event_queue import EventQueueResource
from imageml_resources.from_settings import build_resources, secret_setting
from imageml_resources.layout import DataLayoutResource
from imageml_resources.manifest_store import ManifestStoreResource, open_manifest_store
from imageml_resources.mlflow import MlflowResource
from imageml_resources.normalization import NormalizationResource
from imageml_resources.object_store import ObjectStoreResource
from imageml_resources.staging import NvmeStagingResource

__all__ = [
    "AugmentationResource",
    "DataLayoutResource",
    "EventQueueResource",
    "ManifestStoreResource",
    "MlflowResource",
    "NormalizationResource",
    "NvmeStagingResource",
    "ObjectStoreResource",
    "build_resources",
    "open_manifest_store",
    "secret_setting",
]
