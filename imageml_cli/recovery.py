"""What ``imageml run`` mends after a crash (``kill -9``, a lost machine) before it works.

- A run killed mid-flight stays ``STARTED`` in Dagster for good: runs this command started
  carry their host and process id (:data:`HOST_TAG`, :data:`PID_TAG`); one whose process
  is gone is marked failed, and the staging directories it left on this node are removed.
  (On Kubernetes, Dagster's run monitoring marks the run, see ``dagster.yaml``, and the
  pod's volume goes with the pod.)
- A run killed right after a partition's manifest was published leaves the manifest store
  ahead of Dagster: the partition is done, but Dagster shows no materialization and would
  call it missing. Each published partition without one gets a materialization reported
  from its manifest (``imageml/reconciled`` metadata says so).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import dagster as dg

from imageml_core.manifest import AUGMENT, INGEST, NORMALIZE, ManifestStore
from imageml_core.manifest.keys import AugmentKey, NormalizeKey

HOST_TAG = "imageml/host"
PID_TAG = "imageml/pid"
#: When the process started (``/proc/<pid>/stat`` field 22, clock ticks since boot): a pid
#: is reused, and in a container the command gets the same pid on every start, so a pid
#: alone cannot tell a dead run's process from a live one.
STARTED_TAG = "imageml/process_started"


def _start_time(pid: int) -> str | None:
    """The process's start time from ``/proc`` (Linux), or None where there is none."""
    try:
        stat = open(f"/proc/{pid}/stat", "rb").read().decode()  # noqa: SIM115
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ")".
    return stat.rsplit(")", 1)[1].split()[19]


def run_tags() -> dict[str, str]:
    """The tags that let a later ``imageml run`` tell this process's runs are dead."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    started = _start_time(os.getpid())
    if started is not None:
        tags[STARTED_TAG] = started
    return tags


def _alive(pid: int, started: str | None) -> bool:
    """Whether the process that ran a run still runs: ``pid`` exists and, when the run
    recorded it, started when that process did (else the pid was reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, unless the pid was reused
        pass
    if started is None:
        return True
    now = _start_time(pid)
    return now is None or now == started


def fail_dead_runs(instance: dg.DagsterInstance, echo: Callable[[str], None]) -> list[str]:
    """Mark failed every run this host's ``imageml run`` started whose process is gone;
    returns their run ids."""
    host = socket.gethostname()
    records = instance.get_run_records(
        dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING],
            tags={HOST_TAG: host},
        )
    )
    failed: list[str] = []
    for record in records:
        run = record.dagster_run
        pid = run.tags.get(PID_TAG, "")
        if pid.isdigit() and not _alive(int(pid), run.tags.get(STARTED_TAG)):
            instance.report_run_failed(
                run, f"the process that ran it (pid {pid} on {host}) is gone (killed?)"
            )
            echo(f"[recovery] run {run.run_id} was left running by a dead process: marked failed")
            failed.append(run.run_id)
    return failed


def reconcile_materializations(
    instance: dg.DagsterInstance,
    store: ManifestStore,
    tag: str,
    variant_hashes: dict[str, str],
    echo: Callable[[str], None],
) -> int:
    """Report a materialization for every partition the manifest store published (for the
    current augmentation ``tag`` and normalization policy) that Dagster has none of;
    returns how many."""
    events: list[tuple[str, dg.AssetMaterialization]] = []  # (batch, event)
    have = instance.get_materialized_partitions(dg.AssetKey("raw_images"))
    for m in store.manifests(INGEST):
        if m.partition_key not in have:
            events.append((m.partition_key, _event("raw_images", m.partition_key, m.manifest_uri)))
    have = instance.get_materialized_partitions(dg.AssetKey("augmented_images"))
    for m in store.manifests(AUGMENT):
        key = AugmentKey.parse(m.partition_key)
        if key.tag == tag and key.batch_id not in have:
            event = _event("augmented_images", key.batch_id, m.manifest_uri)
            events.append((key.batch_id, event))
    have = instance.get_materialized_partitions(dg.AssetKey("normalized_variants"))
    for m in store.manifests(NORMALIZE):
        nkey = NormalizeKey.parse(m.partition_key)
        current = variant_hashes.get(nkey.variant, "")[: len(nkey.policy_hash)]
        partition = dg.MultiPartitionKey({"batch": nkey.batch_id, "variant": nkey.variant})
        if nkey.tag == tag and nkey.policy_hash == current and str(partition) not in have:
            event = _event("normalized_variants", partition, m.manifest_uri)
            events.append((nkey.batch_id, event))
    for batch, event in events:
        if not instance.has_dynamic_partition("ingest_batches", batch):
            instance.add_dynamic_partitions("ingest_batches", [batch])
        instance.report_runless_asset_event(event)
    if events:
        echo(
            f"[recovery] {len(events)} partition(s) published in the manifest store but not "
            "recorded by Dagster (a run killed after publishing): materializations reported"
        )
    return len(events)


def _event(asset: str, partition: object, manifest_uri: str | None) -> dg.AssetMaterialization:
    return dg.AssetMaterialization(
        asset_key=asset,
        partition=str(partition),
        metadata={
            "manifest_uri": dg.MetadataValue.url(manifest_uri or ""),
            "imageml/reconciled": "from the manifest store after a run that did not finish",
        },
    )
