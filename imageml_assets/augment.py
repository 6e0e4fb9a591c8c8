"""Stage 1 augment: the ``augmented_images`` asset (same batch partitions as ``raw_images``)."""

import dagster as dg

from imageml_assets.ingest import raw_images
from imageml_assets.partitions import ingest_batches
from imageml_assets.stage_images import stage_op_tags
from imageml_core.augment_stage import AugmentConfig, augment_batch
from imageml_core.manifest import AUGMENT
from imageml_resources import (
    AugmentationResource,
    DataLayoutResource,
    ManifestStoreResource,
    NvmeStagingResource,
    ObjectStoreResource,
)

EVERY_SOURCE_HAS_COPIES = "every_source_has_its_copies"
BOXES_INSIDE_IMAGES = "every_box_inside_its_image"
COUNTS_CONSERVED = "annotation_counts_conserved"


@dg.asset(
    partitions_def=ingest_batches,
    deps=[raw_images],
    group_name="bronze",
    kinds={"s3", "python"},
    op_tags=stage_op_tags("augment"),
    check_specs=[
        dg.AssetCheckSpec(EVERY_SOURCE_HAS_COPIES, asset="augmented_images"),
        dg.AssetCheckSpec(BOXES_INSIDE_IMAGES, asset="augmented_images"),
        dg.AssetCheckSpec(COUNTS_CONSERVED, asset="augmented_images"),
    ],
    description=(
        "N deterministic Albumentations copies of every ingested image, boxes and polygons "
        "moved with the pixels; annotations for the set in COCO and Label Studio form."
    ),
)
def augmented_images(
    context: dg.AssetExecutionContext,
    object_store: ObjectStoreResource,
    nvme: NvmeStagingResource,
    manifest_store: ManifestStoreResource,
    layout: DataLayoutResource,
    augmentation: AugmentationResource,
) -> dg.MaterializeResult:
    result = augment_batch(
        context.partition_key,
        store=object_store.get_client(),
        staging=nvme.get_staging(),
        manifest=manifest_store.get_store(),
        pipeline=augmentation.get_pipeline(),
        config=AugmentConfig(
            augmented_uri=layout.uri("augmented"), dataset_name=layout.dataset_name
        ),
        run_id=context.run_id,
        log_fn=context.log.info,
    )
    checks = result.checks
    if result.already_published:  # a no-op rerun reports the checks recorded the first time
        checks = manifest_store.get_store().get_manifest(AUGMENT, result.partition)["details"][
            "checks"
        ]
    metadata = result.metadata()
    metadata["manifest_uri"] = dg.MetadataValue.url(result.manifest_uri)
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name=EVERY_SOURCE_HAS_COPIES, passed=bool(checks["every_source_has_copies"])
            ),
            dg.AssetCheckResult(
                check_name=BOXES_INSIDE_IMAGES, passed=bool(checks["boxes_inside_images"])
            ),
            dg.AssetCheckResult(
                check_name=COUNTS_CONSERVED,
                passed=checks["coco_boxes"] == checks["label_studio_regions"]
                and not checks["label_studio_validation_errors"],
                metadata={
                    "coco_boxes": checks["coco_boxes"],
                    "label_studio_regions": checks["label_studio_regions"],
                    "validation_errors": dg.MetadataValue.json(
                        checks["label_studio_validation_errors"]
                    ),
                },
            ),
        ],
    )
