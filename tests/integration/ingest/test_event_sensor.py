"""The SQS sensor in Dagster: moto's SQS server, the real S3 server, the real manifest store."""

from __future__ import annotations

import json
import random

import dagster as dg
import pytest

from imageml_assets.definitions import build_definitions, build_resources
from imageml_core.manifest import INGEST
from imageml_core.settings import Settings
from imageml_core.storage.object_store import ObjectStore
from imageml_resources.manifest_store import open_manifest_store
from tests.helpers import jpeg_bytes, sqs_client


def _s3_event(bucket: str, key: str, etag: str, size: int, seq: int) -> str:
    from urllib.parse import quote_plus

    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "eventTime": "2026-11-23T12:00:00.000Z",
        "s3": {
            "bucket": {"name": bucket},
            "object": {
                "key": quote_plus(key),
                "size": size,
                "eTag": etag,
                "sequencer": f"{seq:016X}",
            },
        },
    }
    return json.dumps({"Records": [record]})


def _eventbridge_event(bucket: str, key: str, etag: str, size: int, seq: int) -> str:
    return json.dumps(
        {
            "version": "0",
            "source": "aws.s3",
            "detail-type": "Object Created",
            "time": "2026-11-23T12:00:00Z",
            "detail": {
                "bucket": {"name": bucket},
                "object": {"key": key, "size": size, "etag": etag, "sequencer": f"{seq:016X}"},
            },
        }
    )


@pytest.fixture
def settings(
    s3_env: dict[str, str], sqs_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    sqs = sqs_client(sqs_endpoint)
    queue_url = sqs.create_queue(QueueName=f"raw-events-{random.randrange(10**9)}")["QueueUrl"]
    env = {
        **s3_env,
        "RAW_EVENTS_QUEUE_URL": queue_url,
        "SQS_ENDPOINT_URL": sqs_endpoint,
        "INGEST_BATCH_MAX_OBJECTS": "8",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


def _tick(
    defs: dg.Definitions,
    settings: Settings,
    instance: dg.DagsterInstance,
    name: str,
    cursor: str | None,
):
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=build_resources(settings), definitions=defs
    ) as ctx:
        return defs.resolve_sensor_def(name)(ctx)


def test_duplicated_shuffled_events_process_each_object_once_then_polling_adds_nothing(
    settings: Settings, object_store: ObjectStore
) -> None:
    bucket = settings.raw_uri.bucket
    infos = [
        object_store.put_bytes(settings.raw_uri.join(f"cam/{i:02d} shot.jpg"), jpeg_bytes(i))
        for i in range(20)
    ]
    bodies = [
        (_s3_event if i % 2 else _eventbridge_event)(bucket, info.uri.key, info.etag, info.size, i)
        for i, info in enumerate(infos)
    ]
    bodies += random.Random(1).sample(bodies, 5)  # 5 duplicates
    random.Random(2).shuffle(bodies)
    sqs = sqs_client(settings.sqs_endpoint_url)
    for start in range(0, len(bodies), 10):
        sqs.send_message_batch(
            QueueUrl=settings.raw_events_queue_url,
            Entries=[
                {"Id": str(n), "MessageBody": b} for n, b in enumerate(bodies[start : start + 10])
            ],
        )
    defs = build_definitions(settings)
    store = open_manifest_store(settings.manifest_db_url)
    requested: list[str] = []
    with dg.instance_for_test() as instance:
        cursor = None
        for _ in range(10):
            result = _tick(defs, settings, instance, "raw_events_sensor", cursor)
            requested += [r.partition_key for r in result.run_requests]
            cursor = result.cursor
            if not json.loads(cursor)["delete"]:
                break
        assert json.loads(cursor) == {
            "delete": []
        }  # the last tick deleted what the one before received
        attrs = sqs.get_queue_attributes(
            QueueUrl=settings.raw_events_queue_url, AttributeNames=["All"]
        )["Attributes"]
        assert (
            attrs["ApproximateNumberOfMessages"] == "0"
            and attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
        )

        members = [m.uri for b in requested for m in store.batch_members(b)]
        assert sorted(members) == sorted(str(i.uri) for i in infos)  # every object exactly once
        assert len(set(requested)) == len(requested)

        job = defs.resolve_job_def("ingest_and_augment_job")
        for batch in requested:
            instance.add_dynamic_partitions("ingest_batches", [batch])
            assert job.execute_in_process(
                instance=instance, partition_key=batch, asset_selection=[dg.AssetKey("raw_images")]
            ).success
        assert len(store.processed_objects(INGEST)) == 20
        # The polling sensor, full scan, sees the same objects and launches nothing.
        polled = _tick(defs, settings, instance, "raw_objects_sensor", None)
        assert polled.run_requests == []


def test_a_tick_lost_before_commit_redelivers_and_re_requests_the_same_batch(
    settings: Settings, object_store: ObjectStore
) -> None:
    info = object_store.put_bytes(settings.raw_uri.join("x.jpg"), jpeg_bytes(1))
    sqs = sqs_client(settings.sqs_endpoint_url)
    sqs.send_message(
        QueueUrl=settings.raw_events_queue_url,
        MessageBody=_s3_event(settings.raw_uri.bucket, info.uri.key, info.etag, info.size, 1),
    )
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        lost = _tick(defs, settings, instance, "raw_events_sensor", None)
        (first,) = lost.run_requests
        # The daemon died before committing this tick: its cursor (the receipt handles to
        # delete) and its run request are gone. The visibility timeout then expires:
        for _message_id, handle in json.loads(lost.cursor)["delete"]:
            sqs.change_message_visibility(
                QueueUrl=settings.raw_events_queue_url, ReceiptHandle=handle, VisibilityTimeout=0
            )
        retry = _tick(defs, settings, instance, "raw_events_sensor", None)
        (second,) = retry.run_requests
        assert second.run_key == first.run_key  # Dagster launches it at most once
