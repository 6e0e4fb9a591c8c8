"""Every resource, built from :class:`~imageml_core.settings.Settings` in one place.

Secrets stay out of Dagster: a setting that can carry credentials (the manifest store's
SQLAlchemy URL, the event queue's URL) reaches its resource as ``dg.EnvVar(<name>)`` when
it came from the environment, so Dagster stores and shows the variable's *name* in its
snapshots, run config and UI and reads the value only where a run executes. AWS keys never
become config at all: boto3 reads them from the environment, a profile or the pod's role.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg
import sqlalchemy as sa

from imageml_core.settings import ConfigError, Settings
from imageml_resources.augmentation import AugmentationResource
from imageml_resources.event_queue import EventQueueResource
from imageml_resources.layout import DataLayoutResource
from imageml_resources.manifest_store import ManifestStoreResource
from imageml_resources.mlflow import MlflowResource
from imageml_resources.normalization import NormalizationResource
from imageml_resources.object_store import ObjectStoreResource
from imageml_resources.staging import NvmeStagingResource


def secret_setting(var: str, value: str | None) -> str | dg.EnvVar | None:
    """``dg.EnvVar(var)`` when ``value`` is what the environment holds for ``var``, else
    ``value`` itself (a computed default such as the embedded SQLite URL).

    Raises :class:`~imageml_core.settings.ConfigError` for a value with a password that
    did not come from the environment: Dagster would store it in plain text."""
    if value is None:
        return None
    if (os.environ.get(var) or "").strip() == value:
        return dg.EnvVar(var)
    if _has_password(value):
        raise ConfigError(
            f"{var} carries a password but is not set in the environment: set {var} in the "
            "environment (or a secret mounted into it) so Dagster never stores its value"
        )
    return value


def _has_password(url: str) -> bool:
    try:
        return bool(sa.engine.make_url(url).password)
    except sa.exc.ArgumentError:
        return "@" in url.split("://", 1)[-1].split("/", 1)[0]


def build_resources(settings: Settings) -> dict[str, Any]:
    """Resource key -> resource, as every asset, sensor and the CLI's runner use them."""
    return {
        "object_store": ObjectStoreResource(
            endpoint_url=settings.s3_endpoint_url,
            region=settings.aws_region,
            max_concurrency=settings.s3_max_concurrency,
        ),
        "nvme": NvmeStagingResource(root=str(settings.nvme_root), min_free_gb=settings.nvme_min_gb),
        "manifest_store": ManifestStoreResource(
            url=secret_setting("MANIFEST_DB_URL", settings.manifest_db_url)
        ),
        "layout": DataLayoutResource.from_settings(settings),
        "augmentation": AugmentationResource(
            pipeline=settings.augment_pipeline, copies=settings.augment_copies
        ),
        "event_queue": EventQueueResource(
            queue_url=secret_setting("RAW_EVENTS_QUEUE_URL", settings.raw_events_queue_url),
            endpoint_url=settings.sqs_endpoint_url,
            region=settings.aws_region,
        ),
        "normalization": NormalizationResource.from_settings(settings),
        "mlflow": MlflowResource(
            tracking_uri=secret_setting("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri),
            registry_uri=secret_setting("MLFLOW_REGISTRY_URI", settings.mlflow_registry_uri),
            experiment_name=settings.mlflow_experiment_name,
            registered_model_name=settings.registered_model,
        ),
    }
