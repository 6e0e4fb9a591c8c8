"""The code location: every asset, check, sensor, job and resource (``workspace.yaml``)."""

import os

import dagster as dg

from imageml_assets.augment import augmented_images
from imageml_assets.events import raw_events_sensor
from imageml_assets.ingest import raw_images, raw_objects_sensor
from imageml_assets.jobs import ingest_and_augment_job
from imageml_assets.mirror import build_mirror_sensor
from imageml_assets.normalize import build_normalize_definitions
from imageml_core.settings import Settings
from imageml_core.sizes import parse_sizes
from imageml_resources import (
    AugmentationResource,
    DataLayoutResource,
    EventQueueResource,
    ManifestStoreResource,
    NormalizationResource,
    NvmeStagingResource,
    ObjectStoreResource,
)


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
        "augmentation": AugmentationResource(
            pipeline=settings.augment_pipeline, copies=settings.augment_copies
        ),
        "event_queue": EventQueueResource(
            queue_url=settings.raw_events_queue_url,
            endpoint_url=settings.sqs_endpoint_url,
            region=settings.aws_region,
        ),
        "normalization": NormalizationResource(
            sizes=settings.normalize_sizes,
            fit=settings.normalize_fit,
            quality=settings.normalize_quality,
            chroma=settings.normalize_chroma,
            workers=settings.normalize_workers,
        ),
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
    variants = [v.name for v in parse_sizes(settings.normalize_sizes)]
    normalized_variants, normalize_job, augmented_batches_sensor = build_normalize_definitions(
        variants
    )
    assets = [raw_images, augmented_images, normalized_variants]
    return dg.Definitions(
        assets=assets,
        jobs=[ingest_and_augment_job, normalize_job],
        sensors=[
            raw_objects_sensor,
            raw_events_sensor,
            augmented_batches_sensor,
            build_mirror_sensor([a.key for a in assets]),
        ],
        resources=build_resources(settings),
        executor=_executor(),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
