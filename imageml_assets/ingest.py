"""Bronze tier: the ``raw_images`` asset and the raw-prefix polling sensor."""

import dagster as dg

from imageml_assets.partitions import ingest_batches
from imageml_assets.stage_images import stage_op_tags
from imageml_core.discovery import DiscoveryCursor, discover
from imageml_core.ingest import IngestConfig, ingest_batch
from imageml_core.manifest import INGEST
from imageml_resources import (
    DataLayoutResource,
    ManifestStoreResource,
    NvmeStagingResource,
    ObjectStoreResource,
)

EVERY_OBJECT_RECORDED = "every_object_recorded"


@dg.asset(
    partitions_def=ingest_batches,
    group_name="bronze",
    kinds={"s3", "python"},
    op_tags=stage_op_tags("ingest"),
    check_specs=[dg.AssetCheckSpec(EVERY_OBJECT_RECORDED, asset="raw_images")],
    description=(
        "Raw objects of one ingest batch, staged to NVMe, verified as images (ZIPs expanded), "
        "registered in the manifest store with ETag and SHA-256; bad objects quarantined."
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
    # No silent loss: every planned member has a ledger record (ok, quarantined or skipped).
    recorded = {r["object_uri"] for r in store.processed_objects(INGEST, batch_id)}
    missing = [m.uri for m in store.batch_members(batch_id) if m.uri not in recorded]
    metadata = {k: v for k, v in result.metadata().items()}
    metadata["manifest_uri"] = dg.MetadataValue.url(result.manifest_uri)
    if result.quarantined:
        metadata["quarantined"] = dg.MetadataValue.json(result.quarantined)
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


@dg.sensor(
    name="raw_objects_sensor",
    job_name="ingest_and_augment_job",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Polls RAW_URI after its cursor key; every RAW_FULL_SCAN_EVERY_TICKS ticks lists the "
        "whole prefix to catch keys that sort before the cursor. The manifest store decides "
        "what is new."
    ),
)
def raw_objects_sensor(
    context: dg.SensorEvaluationContext,
    object_store: ObjectStoreResource,
    manifest_store: ManifestStoreResource,
    layout: DataLayoutResource,
) -> dg.SensorResult:
    found = discover(
        object_store.get_client(),
        manifest_store.get_store(),
        layout.uri("raw"),
        DiscoveryCursor.parse(context.cursor),
        max_objects=layout.ingest_batch_max_objects,
        max_bytes=layout.ingest_batch_max_mb * 1024 * 1024,
        full_scan_every=layout.raw_full_scan_every_ticks,
        source="poll",
        max_new_objects=layout.ingest_batch_max_objects * 20,
    )
    batch_ids = [b.batch_id for b in found.new_batches] + found.pending_batches
    context.log.info(
        f"listed {found.listed} objects ({'full scan' if found.full_scan else 'after cursor'}); "
        f"{len(found.new_batches)} new batches, {len(found.pending_batches)} re-requested"
    )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=batch_id, partition_key=batch_id, tags={"imageml/trigger": "poll"}
            )
            for batch_id in batch_ids
        ],
        dynamic_partitions_requests=[ingest_batches.build_add_request(batch_ids)]
        if batch_ids
        else [],
        cursor=found.cursor.serialize(),
    )
