"""Event-driven trigger: S3 "Object Created" notifications from SQS (S3 or EventBridge form).

At-least-once, two-phase across ticks: a tick receives messages, plans batches in the
manifest store and returns run requests, keeping the messages' receipt handles in its
cursor; the *next* tick deletes them. Dagster commits a tick's run requests together with
its cursor, so a message is deleted only after the run request it caused was recorded. If a
tick dies first, the cursor never names those handles and SQS redelivers the messages after
the visibility timeout (which must exceed the sensor interval). The manifest store, not the
queue, decides what is new, so duplicates and out-of-order deliveries plan nothing twice,
and the polling sensor running alongside never re-processes what events already planned.
"""

import json

import dagster as dg

from imageml_assets.partitions import ingest_batches
from imageml_core.discovery import PlannedBatch
from imageml_core.events import ReceivedMessage, consume_once
from imageml_resources import DataLayoutResource, EventQueueResource, ManifestStoreResource


@dg.sensor(
    name="raw_events_sensor",
    job_name="ingest_and_augment_job",
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
    if not event_queue.queue_url:
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
                f"{len(report.failed)} message(s) not deleted; they will be redelivered and deduplicated"
            )
    batches: list[PlannedBatch] = []
    result = consume_once(
        source,
        manifest_store.get_store(),
        layout.uri("raw"),
        layout.ingest_batch_max_objects,
        layout.ingest_batch_max_mb * 1024 * 1024,
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
        f"{result.messages} message(s), {result.events} event(s), {result.duplicates_dropped} duplicate(s), "
        f"{result.already_known} already known, {len(result.planned)} new batch(es), {len(result.resent)} re-sent"
    )
    batch_ids = list(dict.fromkeys(b.batch_id for b in batches))
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=b, partition_key=b, tags={"imageml/trigger": "event"})
            for b in batch_ids
        ],
        dynamic_partitions_requests=[ingest_batches.build_add_request(batch_ids)]
        if batch_ids
        else [],
        cursor=json.dumps({"delete": [[m.message_id, m.receipt_handle] for m in result.received]}),
    )
