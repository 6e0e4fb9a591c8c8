"""One-shot processing through the same Dagster definitions the sensors use.

``imageml run`` and ``imageml demo`` evaluate the sensors with an empty cursor (a full
scan: the manifest store decides what is new), register the dynamic partitions they ask
for, execute each run request in process on a real Dagster instance, then mirror the
materializations into the manifest store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from imageml_assets.definitions import build_definitions, build_resources
from imageml_assets.mirror import mirror_materializations
from imageml_core.settings import Settings

# Stages in pipeline order; `--until` accepts the ones that exist.
STAGES: dict[str, dict[str, str]] = {
    "ingest": {"sensor": "raw_objects_sensor", "job": "ingest_job"},
}


@dataclass
class StageRun:
    stage: str
    partition_key: str
    run_id: str
    success: bool
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSummary:
    runs: list[StageRun] = field(default_factory=list)
    mirrored: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> list[StageRun]:
        return [r for r in self.runs if not r.success]


def open_instance(home: Path) -> dg.DagsterInstance:
    """The Dagster instance of the embedded stack: SQLite storage under ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.from_config(str(home))


def run_pipeline(
    settings: Settings,
    instance: dg.DagsterInstance,
    *,
    until: str = "ingest",
    echo: Callable[[str], None] = print,
    log_level: str = "INFO",
) -> RunSummary:
    if until not in STAGES:
        raise ValueError(f"--until {until!r}: stages available are {', '.join(STAGES)}")
    started = time.monotonic()
    defs = build_definitions(settings)
    resources = build_resources(settings)
    summary = RunSummary()
    for stage, names in STAGES.items():
        sensor = defs.resolve_sensor_def(names["sensor"])
        with dg.build_sensor_context(
            instance=instance, cursor=None, resources=resources, definitions=defs
        ) as ctx:
            result = sensor(ctx)
        requests: list[dg.RunRequest] = (
            list(result.run_requests or []) if isinstance(result, dg.SensorResult) else []
        )
        for dpr in getattr(result, "dynamic_partitions_requests", None) or []:
            new = [
                k
                for k in dpr.partition_keys
                if not instance.has_dynamic_partition(dpr.partitions_def_name, k)
            ]
            if new:
                instance.add_dynamic_partitions(dpr.partitions_def_name, new)
        echo(f"[{stage}] {len(requests)} batch(es) to process")
        job = defs.resolve_job_def(names["job"])
        for i, request in enumerate(requests, start=1):
            echo(f"[{stage}] {i}/{len(requests)} {request.partition_key} ...")
            outcome = job.execute_in_process(
                instance=instance,
                partition_key=request.partition_key,
                tags=dict(request.tags),
                raise_on_error=False,
                # Dagster's DEBUG engine events drown the progress lines the stage logs at INFO.
                run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
            )
            metadata: dict[str, Any] = {}
            for event in outcome.get_asset_materialization_events():
                mat = event.event_specific_data.materialization  # type: ignore[union-attr]
                if mat is not None:
                    metadata.update({k: v.value for k, v in mat.metadata.items()})
            if not outcome.success:
                for event in outcome.all_events:
                    if event.is_step_failure and event.step_failure_data.error is not None:
                        metadata["error"] = event.step_failure_data.error.message.strip()
            summary.runs.append(
                StageRun(
                    stage, str(request.partition_key), outcome.run_id, outcome.success, metadata
                )
            )
        if stage == until:
            break
    asset_keys = list(defs.resolve_asset_graph().get_all_asset_keys())
    summary.mirrored = mirror_materializations(
        instance, asset_keys, resources["manifest_store"].get_store()
    )
    summary.seconds = time.monotonic() - started
    return summary
