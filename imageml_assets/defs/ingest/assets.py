"""Bronze tier: the ``raw_images`` asset and its ``every_object_recorded`` check."""

import dagster as dg

from imageml_assets.metadata import quarantine_table
from imageml_assets.partitions import ingest_batches
from imageml_assets.stage_images import stage_op_tags
from imageml_core.manifest import INGEST
from imageml_core.settings import Settings
from imageml_core.stages.ingest.batch import IngestConfig, ingest_batch
from imageml_core.stages.ingest.verify import verification_policy_hash
from imageml_resources import (
    DataLayoutResource,
    ManifestStoreResource,
    NvmeStagingResource,
    ObjectStoreResource,
)

EVERY_OBJECT_RECORDED = "every_object_recorded"


def build_raw_images(settings: Settings) -> dg.AssetsDefinition:
    """The asset; its code version is the verification policy's hash (a new bomb limit
    marks every batch stale in the UI)."""

    @dg.asset(
        name="raw_images",
        partitions_def=ingest_batches,
        group_name="bronze",
        kinds={"s3", "python"},
        code_version=verification_policy_hash(settings.max_image_pixels),
        tags={"imageml/stage": "ingest"},
        op_tags=stage_op_tags("ingest"),
        check_specs=[
            # Blocking: augmentation must not run on a batch that lost an object silently.
            dg.AssetCheckSpec(EVERY_OBJECT_RECORDED, asset="raw_images", blocking=True)
        ],
        description=(
            "Raw objects of one ingest batch, staged to NVMe, verified as images (ZIPs "
            "expanded), registered in the manifest store with ETag and SHA-256; bad objects "
            "quarantined with a reason."
        ),
    )
    def raw_images(
        context: dg.AssetExecutionContext,
        object_store: ObjectStoreResource,
        nvme: NvmeStagingResource,
        manifest_store: ManifestStoreResource,
        layout: DataLayoutResource,
    ) -> dg.MaterializeResult:
        store = manifest_store.get_store()
        batch_id = context.partition_key
        result = ingest_batch(
            batch_id,
            store=object_store.get_client(),
            staging=nvme.get_staging(),
            manifest=store,
            config=IngestConfig(
                raw_uri=layout.uri("raw"),
                bronze_uri=layout.uri("bronze"),
                dataset_name=layout.dataset_name,
                max_image_pixels=layout.max_image_pixels,
            ),
            run_id=context.run_id,
            log_fn=context.log.info,
        )
        # No silent loss: every planned member has a ledger record (ok, quarantined, skipped).
        recorded = {r.uri for r in store.processed_objects(INGEST, batch_id)}
        missing = [m.uri for m in store.batch_members(batch_id) if m.uri not in recorded]
        metadata: dict[str, object] = {
            **result.metadata(),
            "dagster/row_count": result.counts.images,
            "manifest_uri": dg.MetadataValue.url(result.manifest_uri),
        }
        if result.quarantined:
            metadata["quarantined"] = quarantine_table(
                (e.uri, e.reason) for e in result.quarantined
            )
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name=EVERY_OBJECT_RECORDED,
                    passed=not missing,
                    metadata={
                        "missing": dg.MetadataValue.json(missing[:100]),
                        "missing_count": len(missing),
                    },
                )
            ],
        )

    return raw_images
