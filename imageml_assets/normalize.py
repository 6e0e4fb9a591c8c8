"""Silver tier: ``normalized_variants`` (ingest batch x size variant) and its sensor."""

import warnings
from typing import Any

import dagster as dg

from imageml_assets.augment import augmented_images
from imageml_assets.partitions import ingest_batches
from imageml_assets.stage_images import stage_op_tags
from imageml_core.augment_stage import config_tag
from imageml_core.manifest import AUGMENT
from imageml_core.normalize_stage import NormalizeConfig, normalize_partition
from imageml_resources import (
    AugmentationResource,
    DataLayoutResource,
    ManifestStoreResource,
    NormalizationResource,
    NvmeStagingResource,
    ObjectStoreResource,
)

# Mapping a (batch, variant) partition to its batch is what the asset needs; the class is
# marked beta, and the warning would print on every load of the code location.
warnings.filterwarnings("ignore", message=".*MultiToSingleDimensionPartitionMapping.*")

EVERY_SOURCE_HAS_VARIANT = "every_source_has_this_variant"
NORMALIZE_JOB = "normalize_job"


def normalize_partitions(variant_names: list[str]) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition(
        {"batch": ingest_batches, "variant": dg.StaticPartitionsDefinition(variant_names)}
    )


def build_normalize_definitions(
    variant_names: list[str],
) -> tuple[dg.AssetsDefinition, Any, dg.SensorDefinition]:
    """The asset, its job and its sensor for the variants in ``NORMALIZE_SIZES``."""
    partitions = normalize_partitions(variant_names)

    @dg.asset(
        name="normalized_variants",
        partitions_def=partitions,
        deps=[
            dg.AssetDep(
                augmented_images,
                partition_mapping=dg.MultiToSingleDimensionPartitionMapping(
                    partition_dimension_name="batch"
                ),
            )
        ],
        group_name="silver",
        kinds={"s3", "python"},
        op_tags=stage_op_tags("normalize"),
        check_specs=[dg.AssetCheckSpec(EVERY_SOURCE_HAS_VARIANT, asset="normalized_variants")],
        description=(
            "Every image of a batch's augmented shard (originals and augmented copies) as one "
            "size variant: EXIF applied, RGB, resized, JPEG; annotations rescaled to match."
        ),
    )
    def normalized_variants(
        context: dg.AssetExecutionContext,
        object_store: ObjectStoreResource,
        nvme: NvmeStagingResource,
        manifest_store: ManifestStoreResource,
        layout: DataLayoutResource,
        augmentation: AugmentationResource,
        normalization: NormalizationResource,
    ) -> dg.MaterializeResult:
        key = context.partition_key
        assert isinstance(key, dg.MultiPartitionKey)
        dims = key.keys_by_dimension
        result = normalize_partition(
            dims["batch"],
            dims["variant"],
            store=object_store.get_client(),
            staging=nvme.get_staging(),
            manifest=manifest_store.get_store(),
            policy=normalization.get_policy(),
            config=NormalizeConfig(
                normalized_uri=layout.uri("normalized"),
                dataset_name=layout.dataset_name,
                augment_tag=config_tag(augmentation.get_pipeline()),
                workers=normalization.workers,
            ),
            run_id=context.run_id,
            log_fn=context.log.info,
        )
        checks = result.checks or {}
        metadata = result.metadata()
        metadata["manifest_uri"] = dg.MetadataValue.url(result.manifest_uri)
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name=EVERY_SOURCE_HAS_VARIANT,
                    passed=not checks.get("missing_sources") and not checks.get("wrong_dimensions"),
                    metadata={k: dg.MetadataValue.json(v) for k, v in checks.items()},
                )
            ],
        )

    job = dg.define_asset_job(
        NORMALIZE_JOB,
        selection=[normalized_variants],
        partitions_def=partitions,
        description="Stage 2 for one (batch, variant) partition.",
    )

    @dg.sensor(
        name="augmented_batches_sensor",
        job_name=NORMALIZE_JOB,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Requests every variant of each batch whose augment manifest was published.",
    )
    def augmented_batches_sensor(
        context: dg.SensorEvaluationContext,
        manifest_store: ManifestStoreResource,
        augmentation: AugmentationResource,
        normalization: NormalizationResource,
    ) -> dg.SensorResult:
        store = manifest_store.get_store()
        tag = config_tag(augmentation.get_pipeline())
        policy = normalization.get_policy()
        after = int(context.cursor or 0)
        requests = []
        for m in store.manifests(AUGMENT, after_id=after):  # type: ignore[call-arg]
            after = max(after, int(m["id"]))
            batch, _, batch_tag = str(m["partition_key"]).partition("@")
            if batch_tag != tag:
                continue
            for v in policy.variants:
                requests.append(
                    dg.RunRequest(
                        run_key=f"{batch}|{v.name}@{policy.variant_hash(v)[:12]}",
                        partition_key=dg.MultiPartitionKey({"batch": batch, "variant": v.name}),
                        tags={"imageml/trigger": "augment-published"},
                    )
                )
        return dg.SensorResult(run_requests=requests, cursor=str(after))

    return normalized_variants, job, augmented_batches_sensor
