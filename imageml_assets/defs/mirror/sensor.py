"""Mirror of Dagster materialization metadata into the manifest store.

The position is the greatest Dagster event storage id already mirrored, read from the
store itself, so after any downtime the mirror resumes where it stopped, and the storage
id's primary key makes a replay insert nothing twice.
"""

from collections.abc import Iterable
from typing import Any

import dagster as dg

from imageml_core.manifest import ManifestStore, MirroredMaterialization
from imageml_resources import ManifestStoreResource

PAGE = 500


def _jsonable(value: Any) -> Any:
    """Metadata values as JSON: tables as lists of row dicts, anything unknown as text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dg.TableMetadataValue):
        return [_jsonable(dict(r.data)) for r in value.records]
    if isinstance(value, dg.TableRecord):
        return _jsonable(dict(value.data))
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def mirror_materializations(
    instance: dg.DagsterInstance, asset_keys: Iterable[dg.AssetKey], store: ManifestStore
) -> int:
    """Copy every not-yet-mirrored materialization of ``asset_keys``; returns rows added."""
    added = 0
    for key in asset_keys:
        after = store.last_mirrored_storage_id(key.to_user_string())
        while True:
            page = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, after_storage_id=after),
                limit=PAGE,
                ascending=True,
            )
            rows = []
            for record in page.records:
                mat = record.asset_materialization
                if mat is None:
                    continue
                rows.append(
                    MirroredMaterialization(
                        storage_id=record.storage_id,
                        asset_key=key.to_user_string(),
                        partition_key=mat.partition,
                        run_id=record.run_id,
                        metadata={k: _jsonable(v.value) for k, v in mat.metadata.items()},
                        timestamp=record.timestamp,
                    )
                )
            added += store.mirror_materializations(rows)
            if not page.records or not page.has_more:
                break
            after = page.records[-1].storage_id
    return added


def build_mirror_sensor(asset_keys: list[dg.AssetKey]) -> dg.SensorDefinition:
    """``manifest_mirror_sensor``: every 30 s (running by default) mirrors new materializations
    of ``asset_keys`` into the manifest store. It launches no runs: each tick returns a
    SkipReason saying how many rows it added; its position comes from the store, not a cursor."""

    @dg.sensor(
        name="manifest_mirror_sensor",
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Copies materialization metadata of every asset into the manifest store.",
    )
    def manifest_mirror_sensor(
        context: dg.SensorEvaluationContext, manifest_store: ManifestStoreResource
    ) -> dg.SkipReason:
        added = mirror_materializations(context.instance, asset_keys, manifest_store.get_store())
        return dg.SkipReason(f"mirrored {added} materializations")

    return manifest_mirror_sensor
