"""The trigger of stage 2: every variant of each batch whose augment manifest was published."""

from typing import Any

import dagster as dg

from imageml_core.manifest import AUGMENT
from imageml_core.manifest.cursor import PublicationCursor
from imageml_core.manifest.keys import AugmentKey, NormalizeKey
from imageml_resources import AugmentationResource, ManifestStoreResource, NormalizationResource


def build_augmented_batches_sensor(job: Any) -> dg.SensorDefinition:
    """``job`` is the normalize asset job (``dg.define_asset_job``). The cursor is a
    :class:`~imageml_core.manifest.cursor.PublicationCursor`: the last manifest id read, and
    ids skipped because they were still committing (read again on later ticks)."""

    @dg.sensor(
        name="augmented_batches_sensor",
        job=job,
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
        tag = augmentation.get_spec().tag
        policy = normalization.get_policy()
        published, cursor = PublicationCursor.parse(context.cursor).read(store, AUGMENT)
        requests = []
        for m in published:
            augmented = AugmentKey.parse(m.partition_key)
            if augmented.tag != tag:
                continue  # made by another augmentation config than the current one
            for v in policy.variants:
                key = NormalizeKey.of(augmented, v.name, policy.variant_hash(v))
                requests.append(
                    dg.RunRequest(
                        run_key=str(key),
                        partition_key=dg.MultiPartitionKey(
                            {"batch": augmented.batch_id, "variant": v.name}
                        ),
                        tags={"imageml/trigger": "augment-published"},
                    )
                )
        return dg.SensorResult(run_requests=requests, cursor=cursor.serialize())

    return augmented_batches_sensor
