"""Stage 1 augment: the ``augmented_images`` asset (same batch partitions as ``raw_images``)."""

import dagster as dg

from imageml_assets.metadata import annotation_issue_table, quarantine_table
from imageml_assets.partitions import ingest_batches
from imageml_assets.stage_images import stage_op_tags
from imageml_core.manifest.documents import AugmentChecks
from imageml_core.settings import Settings
from imageml_core.stages.augment.batch import AugmentConfig, augment_batch
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


def check_results(checks: AugmentChecks) -> list[dg.AssetCheckResult]:
    """The asset's three checks from the facts its manifest recorded."""
    return [
        dg.AssetCheckResult(
            check_name=EVERY_SOURCE_HAS_COPIES,
            passed=checks.every_source_has_copies,
            # Why a source has no copies, when it was quarantined.
            metadata={"quarantined": dg.MetadataValue.json(dict(checks.quarantined))},
        ),
        dg.AssetCheckResult(check_name=BOXES_INSIDE_IMAGES, passed=checks.boxes_inside_images),
        dg.AssetCheckResult(
            check_name=COUNTS_CONSERVED,
            passed=checks.counts_conserved,
            metadata={
                "coco_boxes": checks.coco_boxes,
                "label_studio_regions": checks.label_studio_regions,
                "validation_errors": dg.MetadataValue.json(
                    list(checks.label_studio_validation_errors)
                ),
            },
        ),
    ]


def build_augmented_images(settings: Settings) -> dg.AssetsDefinition:
    """The asset; its code version is the pipeline's ``<name>-<hash8>`` tag (a changed
    pipeline or library version marks every batch stale in the UI). Reading the pipeline
    here makes a missing or malformed ``AUGMENT_PIPELINE`` fail when the code location
    loads (its transforms are built, and checked, by the run: Albumentations is slow to
    import)."""
    tag = (
        AugmentationResource(pipeline=settings.augment_pipeline, copies=settings.augment_copies)
        .get_spec()
        .tag
    )

    @dg.asset(
        name="augmented_images",
        partitions_def=ingest_batches,
        deps=[dg.AssetKey("raw_images")],
        group_name="bronze",
        kinds={"s3", "python"},
        code_version=tag,
        tags={"imageml/stage": "augment"},
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
                augmented_uri=layout.uri("augmented"),
                dataset_name=layout.dataset_name,
                max_image_pixels=layout.max_image_pixels,
            ),
            run_id=context.run_id,
            log_fn=context.log.info,
        )
        assert result.checks is not None  # recorded with every publication
        metadata: dict[str, object] = {
            **result.metadata(),
            "dagster/row_count": result.totals.outputs,
            "manifest_uri": dg.MetadataValue.url(result.manifest_uri),
        }
        if result.checks.quarantined:
            metadata["quarantined"] = quarantine_table(result.checks.quarantined.items())
        if result.annotation_issues:
            metadata["annotation_issue_list"] = annotation_issue_table(result.annotation_issues)
        return dg.MaterializeResult(metadata=metadata, check_results=check_results(result.checks))

    return augmented_images
