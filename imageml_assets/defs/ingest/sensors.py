"""Triggers of stage 1: the raw-prefix polling sensor and the SQS event sensor.

Both plan ingest batches in the manifest store (which decides what is new, so they may run
together without processing an object twice) and request one ``ingest_and_augment_job``
run per batch, with the batch id as partition and run key.

The event sensor is at-least-once, two-phase across ticks: a tick receives messages, plans
batches and returns run requests, keeping the messages' receipt handles in its cursor; the
*next* tick deletes them. Dagster commits a tick's run requests together with its cursor,
so a message is deleted only after the run request it caused was recorded. If a tick dies
first, the cursor never names those handles and SQS redelivers the messages after the
visibility timeout (which must exceed the sensor interval).
"""

import json
from collections.abc import Sequence

import dagster as dg

from imageml_assets.jobs import ingest_and_augment_job
from imageml_assets.partitions import ingest_batches
from imageml_core.discovery import DiscoveryCursor, PlannedBatch, discover
from imageml_core.discovery.events import ReceivedMessage, consume_once
from imageml_resources import (
    DataLayoutResource,
    EventQueueResource,
    ManifestStoreResource,
    ObjectStoreResource,
)

#: How many new objects one polling tick lists at most (in batches' worth), so a tick
#: stays well inside Dagster's sensor timeout on a large backlog.
MAX_BATCHES_PER_TICK = 20


def batch_requests(batch_ids: Sequence[str], trigger: str) -> dict[str, object]:
    """Run requests (run key = partition key = batch id) and the dynamic partitions they
    need, as ``dg.SensorResult`` keyword arguments."""
    ids = list(dict.fromkeys(batch_ids))
    return {
        "run_requests": [
            dg.RunRequest(run_key=b, partition_key=b, tags={"imageml/trigger": trigger})
            for b in ids
        ],
        "dynamic_partitions_requests": [ingest_batches.build_add_request(ids)] if ids else [],
    }


@dg.sensor(
    name="raw_objects_sensor",
    job=ingest_and_augment_job,
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
    """Discover new raw objects, plan them into batches and request a run per new batch
    (on a full scan also per batch planned earlier and still unpublished).

    Cursor: :class:`~imageml_core.discovery.DiscoveryCursor` as JSON,
    ``{"last_key": <greatest raw key seen>, "ticks_since_full_scan": <n>}``; an unreadable
    cursor means a full scan."""
    found = discover(
        object_store.get_client(),
        manifest_store.get_store(),
        layout.uri("raw"),
        DiscoveryCursor.parse(context.cursor),
        max_objects=layout.ingest_batch_max_objects,
        max_bytes=layout.ingest_batch_max_bytes,
        full_scan_every=layout.raw_full_scan_every_ticks,
        source="poll",
        max_new_objects=layout.ingest_batch_max_objects * MAX_BATCHES_PER_TICK,
    )
    batch_ids = [b.batch_id for b in found.new_batches] + found.pending_batches
    context.log.info(
        f"listed {found.listed} objects ({'full scan' if found.full_scan else 'after cursor'}); "
        f"{len(found.new_batches)} new batches, {len(found.pending_batches)} re-requested"
    )
    return dg.SensorResult(
        **batch_requests(batch_ids, "poll"),  # type: ignore[arg-type]
        cursor=found.cursor.serialize(),
    )


@dg.sensor(
    name="raw_events_sensor",
    job=ingest_and_augment_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches ingest batches from S3/EventBridge 'Object Created' events on SQS.",
)
def raw_events_sensor(
    context: dg.SensorEvaluationContext,
    event_queue: EventQueueResource,
    manifest_store: ManifestStoreResource,
    layout: DataLayoutResource,
) -> dg.SensorResult | dg.SkipReason:
    """Delete the messages the previous tick received, then receive events, plan batches
    and request a run per new batch; skips while ``RAW_EVENTS_QUEUE_URL`` is unset.

    Cursor: JSON ``{"delete": [[message id, receipt handle], ...]}``, every message this tick
    received, for the next tick to delete (phase 2, see the module docstring)."""
    if not event_queue.enabled:
        return dg.SkipReason(
            "RAW_EVENTS_QUEUE_URL is not set: event mode is off (polling still runs)"
        )
    source = event_queue.get_source()
    state = json.loads(context.cursor or "{}")
    # Phase 2 of the previous tick: its run requests are committed, its messages can go.
    to_delete = [ReceivedMessage(m, h, "") for m, h in state.get("delete", [])]
    if to_delete:
        report = source.delete(to_delete)
        if report.failed:
            context.log.warning(
                f"{len(report.failed)} message(s) not deleted; they will be redelivered and "
                "deduplicated"
            )
    batches: list[PlannedBatch] = []
    result = consume_once(
        source,
        manifest_store.get_store(),
        layout.uri("raw"),
        layout.ingest_batch_max_objects,
        layout.ingest_batch_max_bytes,
        on_batches=batches.extend,
        max_messages=event_queue.max_messages,
        visibility_timeout=event_queue.visibility_timeout_s,
        delete=False,
    )
    for message_id, reason in result.unrecognized:
        context.log.warning(
            f"SQS message {message_id} is not an S3 event ({reason}); it will be deleted"
        )
    context.log.info(
        f"{result.messages} message(s), {result.events} event(s), "
        f"{result.duplicates_dropped} duplicate(s), {result.already_known} already known, "
        f"{len(result.planned)} new batch(es), {len(result.resent)} re-sent"
    )
    return dg.SensorResult(
        **batch_requests([b.batch_id for b in batches], "event"),  # type: ignore[arg-type]
        cursor=json.dumps({"delete": [[m.message_id, m.receipt_handle] for m in result.received]}),
    )
