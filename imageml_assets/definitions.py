"""The code location: every asset, check, sensor, job and resource (``workspace.yaml``)."""

import os

import dagster as dg

from imageml_assets.ingest import ingest_job, raw_images, raw_objects_sensor
from imageml_assets.mirror import build_mirror_sensor
from imageml_core.settings import Settings
from imageml_resources import (
    DataLayoutResource,
    ManifestStoreResource,
    NvmeStagingResource,
    ObjectStoreResource,
)

ASSETS = [raw_images]
JOBS = [ingest_job]


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    return {
        "object_store": ObjectStoreResource(
            endpoint_url=settings.s3_endpoint_url,
            region=settings.aws_region,
            max_concurrency=settings.s3_max_concurrency,
        ),
        "nvme": NvmeStagingResource(root=str(settings.nvme_root), min_free_gb=settings.nvme_min_gb),
        "manifest_store": ManifestStoreResource(url=settings.manifest_db_url),
        "layout": DataLayoutResource.from_settings(settings),
    }


def _executor() -> dg.ExecutorDefinition | None:
    """``IMAGEML_EXECUTOR``: ``k8s`` (a pod per step, per-stage images), else Dagster's default."""
    choice = os.environ.get("IMAGEML_EXECUTOR", "multiprocess")
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if choice == "in_process":
        return dg.in_process_executor
    if choice == "multiprocess":
        return None
    raise ValueError(f"IMAGEML_EXECUTOR={choice!r}: expected k8s, multiprocess or in_process")


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    asset_keys = [a.key for a in ASSETS]
    return dg.Definitions(
        assets=ASSETS,
        jobs=JOBS,
        sensors=[raw_objects_sensor, build_mirror_sensor(asset_keys)],
        resources=build_resources(settings),
        executor=_executor(),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
