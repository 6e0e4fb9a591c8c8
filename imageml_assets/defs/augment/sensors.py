"""The trigger of re-augmentation: annotation files that arrive after their images."""

from typing import Any

import dagster as dg

from imageml_core.annotations.intake import folder_of
from imageml_core.manifest import AUGMENT, INGEST
from imageml_core.manifest.annotation_versions import batches_with_images_in, current_augment_key
from imageml_core.manifest.cursor import PublicationCursor
from imageml_resources import AugmentationResource, ManifestStoreResource


def build_annotation_changes_sensor(job: Any) -> dg.SensorDefinition:
    """``job`` is the augment-only asset job. For each newly published ingest batch that
    brought annotation files or a ``label_config.xml``, every *other* batch with images in
    those folders whose current annotation version has no augment manifest yet is
    requested (the batch itself is augmented by its own stage 1 run). The cursor is a
    :class:`~imageml_core.manifest.cursor.PublicationCursor` over ingest manifests; the run
    key is the new augment partition key, so a version is requested once."""

    @dg.sensor(
        name="annotation_changes_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Re-augments earlier batches whose images an annotation file that arrived later "
            "names (a new annotation version of those images)."
        ),
    )
    def annotation_changes_sensor(
        context: dg.SensorEvaluationContext,
        manifest_store: ManifestStoreResource,
        augmentation: AugmentationResource,
    ) -> dg.SensorResult:
        store = manifest_store.get_store()
        tag = augmentation.get_spec().tag
        published, cursor = PublicationCursor.parse(context.cursor).read(store, INGEST)
        requests: dict[str, dg.RunRequest] = {}
        for m in published:
            # Quarantined revisions count too: a broken upload over a good export makes a
            # version that reports it (annotation_versions.RefusedRevision).
            folders = {
                folder_of(r.uri)
                for r in store.processed_objects(INGEST, m.partition_key)
                if r.details.get("kind") in ("annotation", "label_config")
            }
            for batch in sorted(batches_with_images_in(store, folders) - {m.partition_key}):
                key = current_augment_key(store, batch, tag)
                if str(key) not in requests and store.get_manifest(AUGMENT, str(key)) is None:
                    requests[str(key)] = dg.RunRequest(
                        run_key=str(key),
                        partition_key=batch,
                        tags={"imageml/trigger": "annotations-changed"},
                    )
        return dg.SensorResult(run_requests=list(requests.values()), cursor=cursor.serialize())

    return annotation_changes_sensor
