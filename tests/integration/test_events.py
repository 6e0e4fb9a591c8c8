"""Event-driven discovery: S3/EventBridge "Object Created" events through a real SQS server.

SQS is moto's server on loopback (DESIGN.md section 5); objects live in the SeaweedFS S3
server and the manifest store is real SQLite/PostgreSQL.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from imageml_core.discovery import DiscoveryCursor, PlannedBatch, discover
from imageml_core.discovery.events import (
    ConsumeResult,
    ObjectCreated,
    ReceivedMessage,
    SqsEventSource,
    UnrecognizedEvent,
    consume_once,
    parse_message,
    plan_events,
    sequencer_newer,
)
from imageml_core.manifest import (
    INGEST,
    ManifestPublication,
    ProcessedObject,
    SqlManifestStore,
)
from imageml_core.storage.object_store import ObjectInfo, ObjectStore
from imageml_core.uris import S3Uri
from tests.helpers import jpeg_bytes, sqs_client

REGION = "us-east-1"
DUMMY_KEY = "testing"  # moto accepts any credentials; passed explicitly, never via os.environ


# --------------------------------------------------------------------------- event bodies
def s3_event(
    bucket: str,
    key: str,
    etag: str,
    size: int,
    sequencer: str = "0055AED6DCD90281E5",
    event_name: str = "ObjectCreated:Put",
) -> dict[str, Any]:
    """An S3 event notification as S3 sends it (key URL-encoded, spaces as '+')."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": REGION,
                "eventTime": "2026-01-02T03:04:05.678Z",
                "eventName": event_name,
                "userIdentity": {"principalId": "AWS:EXAMPLE"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810"},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "raw-created",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {
                        "key": quote_plus(key, safe="/"),
                        "size": size,
                        "eTag": etag,
                        "sequencer": sequencer,
                    },
                },
            }
        ]
    }


def eventbridge_event(
    bucket: str,
    key: str,
    etag: str,
    size: int,
    sequencer: str = "617f08299329d189",
    detail_type: str = "Object Created",
) -> dict[str, Any]:
    """An EventBridge S3 event as an EventBridge rule delivers it to SQS (key not encoded)."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2026-01-02T03:04:05Z",
        "region": REGION,
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {"key": key, "size": size, "etag": etag, "sequencer": sequencer},
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "reason": "PutObject",
        },
    }


def sns_envelope(inner: dict[str, Any], message_type: str = "Notification") -> dict[str, Any]:
    return {
        "Type": message_type,
        "MessageId": str(uuid.uuid4()),
        "TopicArn": f"arn:aws:sns:{REGION}:123456789012:raw-events",
        "Subject": "Amazon S3 Notification",
        "Message": json.dumps(inner),
        "Timestamp": "2026-01-02T03:04:06.000Z",
        "SignatureVersion": "1",
    }


TEST_EVENT = {
    "Service": "Amazon S3",
    "Event": "s3:TestEvent",
    "Time": "2026-01-02T03:04:05.000Z",
    "Bucket": "raw-bucket",
    "RequestId": "5582815E1AEA5ADF",
    "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
}


# --------------------------------------------------------------------------- parser
def test_s3_event_key_is_url_decoded_and_etag_unquoted() -> None:
    key = "raw/my photos/Ünïcode a+b 1.jpg"
    body = s3_event("bkt", key, '"9b2cf535f27731c974343645a3985328"', 1024)
    assert quote_plus(key, safe="/") in json.dumps(body)  # really encoded on the wire
    [event] = parse_message(json.dumps(body))
    assert event == ObjectCreated(
        bucket="bkt",
        key=key,
        etag="9b2cf535f27731c974343645a3985328",
        size=1024,
        sequencer="0055AED6DCD90281E5",
        event_time=event.event_time,
    )
    assert event.event_time is not None and event.event_time.isoformat().startswith(
        "2026-01-02T03:04:05.678"
    )
    assert event.uri == S3Uri("bkt", key)


def test_eventbridge_key_is_taken_literally() -> None:
    key = "raw/a+b 100%25 ü.jpg"  # '+' and '%25' are part of the key here
    [event] = parse_message(json.dumps(eventbridge_event("bkt", key, "abc", 7)))
    assert (event.bucket, event.key, event.etag, event.size) == ("bkt", key, "abc", 7)
    assert event.sequencer == "617f08299329d189"


def test_sns_envelope_is_unwrapped_for_both_formats() -> None:
    [a] = parse_message(json.dumps(sns_envelope(s3_event("bkt", "raw/x y.jpg", "e1", 1))))
    [b] = parse_message(json.dumps(sns_envelope(eventbridge_event("bkt", "raw/z.jpg", "e2", 2))))
    assert (a.key, a.etag, b.key, b.etag) == ("raw/x y.jpg", "e1", "raw/z.jpg", "e2")


@pytest.mark.parametrize(
    "body",
    [
        TEST_EVENT,
        sns_envelope(TEST_EVENT),
        s3_event("bkt", "raw/a.jpg", "e", 0, event_name="ObjectRemoved:Delete"),
        s3_event("bkt", "raw/a.jpg", "e", 0, event_name="ObjectRestore:Completed"),
        eventbridge_event("bkt", "raw/a.jpg", "e", 0, detail_type="Object Deleted"),
        {"Records": []},
    ],
    ids=["test-event", "sns-test-event", "removed", "restore", "eb-deleted", "no-records"],
)
def test_events_that_announce_nothing_new_parse_to_nothing(body: dict[str, Any]) -> None:
    assert parse_message(json.dumps(body)) == []


def _record_without(field: str) -> dict[str, Any]:
    body = s3_event("bkt", "raw/a.jpg", "e", 1)
    del body["Records"][0]["s3"]["object"][field]
    return body


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json at all", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"hello": "world"}), "not an S3 event notification"),
        (json.dumps({"Records": "nope"}), "'Records' is not a list"),
        (json.dumps({"Records": [{"eventSource": "aws:sqs"}]}), "is not 'aws:s3'"),
        (json.dumps(_record_without("key")), "missing 'key'"),
        (json.dumps(_record_without("eTag")), "missing 'eTag'"),
        (json.dumps(s3_event("bkt", "raw/a.jpg", "e", -1)), "expected bytes >= 0"),
        (
            json.dumps({**eventbridge_event("b", "k", "e", 1), "source": "aws.ec2"}),
            "not 'aws.s3'",
        ),
        (json.dumps(sns_envelope(TEST_EVENT, "SubscriptionConfirmation")), "confirm the"),
        (json.dumps({**sns_envelope(TEST_EVENT), "Message": "{oops"}), "SNS Message is not"),
    ],
    ids=[
        "not-json",
        "array",
        "unknown-object",
        "records-not-list",
        "other-source",
        "no-key",
        "no-etag",
        "negative-size",
        "eventbridge-other-source",
        "sns-subscription",
        "sns-garbage",
    ],
)
def test_garbage_raises_unrecognized_event_with_reason(body: str, reason: str) -> None:
    with pytest.raises(UnrecognizedEvent, match=reason):
        parse_message(body)


def test_sequencer_comparison_right_pads_like_s3_says() -> None:
    assert sequencer_newer("0055AED6DCD90281E6", "0055AED6DCD90281E5")
    assert not sequencer_newer("0055AED6DCD90281E5", "0055AED6DCD90281E6")
    assert sequencer_newer("1", "0F")  # "10" > "0F" once padded
    assert not sequencer_newer("0A", "0A00")  # equal once padded
    assert sequencer_newer("0055aed6dcd90281f0", "0055AED6DCD90281E5")  # case-insensitive


# --------------------------------------------------------------------------- planning
@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqlManifestStore]:
    store = SqlManifestStore(f"sqlite:///{tmp_path / 'manifest.db'}")
    store.migrate()
    try:
        yield store
    finally:
        store.close()


def test_plan_filters_prefix_and_keeps_latest_event_per_key(sqlite_store: SqlManifestStore) -> None:
    raw = S3Uri("bkt", "raw")
    events = [
        ObjectCreated("bkt", "raw/a.jpg", "old", 10, sequencer="00A0"),
        ObjectCreated("bkt", "raw/a.jpg", "new", 11, sequencer="00B0"),
        ObjectCreated("bkt", "raw/a.jpg", "old", 10, sequencer="00A0"),  # late duplicate
        ObjectCreated("bkt", "raw/b.jpg", "b1", 5, sequencer="0001"),
        ObjectCreated("bkt", "raw/b.jpg", "b1", 5, sequencer="0001"),
        ObjectCreated("bkt", "rawfile.jpg", "x", 1),  # shares the text, not the folder
        ObjectCreated("bkt", "other/c.jpg", "x", 1),
        ObjectCreated("other-bkt", "raw/d.jpg", "x", 1),
        ObjectCreated("bkt", "raw/.hidden.jpg", "x", 1),
        ObjectCreated("bkt", "raw/folder/", "x", 0),
    ]
    plan = plan_events(events, raw, sqlite_store, max_objects=10, max_bytes=10**9)
    assert (plan.events, plan.not_under_prefix) == (10, 3)
    # Hidden files and folder markers are planned too: ingest records them as skipped.
    assert (plan.duplicates_dropped, plan.new_objects, plan.already_known) == (3, 4, 0)
    [batch] = plan.batches
    assert [(m.uri, m.etag, m.size) for m in batch.members] == [
        ("s3://bkt/raw/.hidden.jpg", "x", 1),
        ("s3://bkt/raw/a.jpg", "new", 11),
        ("s3://bkt/raw/b.jpg", "b1", 5),
        ("s3://bkt/raw/folder/", "x", 0),
    ]
    assert sqlite_store.batch_members(batch.batch_id) == list(batch.members)
    # Same events again: nothing new; the unpublished batch is handed over again.
    again = plan_events(events, raw, sqlite_store, max_objects=10, max_bytes=10**9)
    assert (again.batches, again.already_known, [b.batch_id for b in again.resent]) == (
        [],
        4,
        [batch.batch_id],
    )
    # Once ingest published the batch, the same events plan and resend nothing at all.
    _publish(sqlite_store, [batch])
    done = plan_events(events, raw, sqlite_store, max_objects=10, max_bytes=10**9)
    assert done.batches + done.resent == []


def _publish(store: SqlManifestStore, batches: list[PlannedBatch]) -> None:
    """What a finished ingest run records for its batch (manifest last)."""
    for b in batches:
        store.publish(
            ManifestPublication(
                step=INGEST,
                partition_key=b.batch_id,
                dataset_name="bronze",
                manifest_uri=None,
                content_sha256="0" * 64,
                details={},
                objects=[ProcessedObject(m.uri, m.etag) for m in b.members],
            )
        )


# --------------------------------------------------------------------------- SQS server


@pytest.fixture
def sqs(sqs_endpoint: str) -> Iterator[SqsEventSource]:
    client = sqs_client(sqs_endpoint)
    url = client.create_queue(QueueName=f"raw-events-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    try:
        yield SqsEventSource(
            url,
            endpoint_url=sqs_endpoint,
            region=REGION,
            access_key_id=DUMMY_KEY,
            secret_access_key=DUMMY_KEY,
        )
    finally:
        client.delete_queue(QueueUrl=url)


def _send(source: SqsEventSource, bodies: list[str]) -> None:
    for start in range(0, len(bodies), 10):
        entries = [
            {"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies[start : start + 10])
        ]
        resp = source.client.send_message_batch(QueueUrl=source.queue_url, Entries=entries)
        assert not resp.get("Failed"), resp["Failed"]


def _depth(source: SqsEventSource) -> tuple[int, int]:
    attrs = source.client.get_queue_attributes(
        QueueUrl=source.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attrs["ApproximateNumberOfMessages"]),
        int(attrs["ApproximateNumberOfMessagesNotVisible"]),
    )


def _drain(
    source: SqsEventSource, manifest: SqlManifestStore, raw: S3Uri, emitted: list[PlannedBatch]
) -> list[ConsumeResult]:
    results: list[ConsumeResult] = []
    for _ in range(50):
        result = consume_once(source, manifest, raw, 4, 10**9, emitted.extend, max_messages=7)
        if result.messages == 0:
            return results
        results.append(result)
    raise AssertionError("queue never drained")


def test_receive_loops_in_batches_of_ten_and_delete_reports_failures(
    sqs: SqsEventSource,
) -> None:
    _send(sqs, [json.dumps({"n": i}) for i in range(25)])
    got = sqs.receive(max_messages=23, wait_seconds=0, visibility_timeout=30)
    assert len(got) == 23 and len({m.message_id for m in got}) == 23
    assert {m.receive_count for m in got} == {1}
    bogus = ReceivedMessage("bogus-id", "not-a-receipt-handle", "{}")
    report = sqs.delete([*got, bogus])
    assert report.deleted == 23
    assert [(f.message_id, f.code, f.sender_fault) for f in report.failed] == [
        ("bogus-id", "ReceiptHandleIsInvalid", True)
    ]
    assert len(sqs.receive(max_messages=10, wait_seconds=0, visibility_timeout=30)) == 2
    with pytest.raises(ValueError, match="wait_seconds"):
        sqs.receive(10, wait_seconds=21)


def test_twenty_objects_from_shuffled_duplicated_events_are_planned_exactly_once(
    sqs: SqsEventSource,
    manifest_store: SqlManifestStore,
    object_store: ObjectStore,
    bucket: str,
) -> None:
    raw = S3Uri(bucket, "raw")
    names = {
        f"cam {i % 3}/ïmg+{i:02d} é.jpg" if i % 4 == 0 else f"cams/{i:02d}.jpg" for i in range(20)
    }
    for i, name in enumerate(sorted(names)):
        object_store.put_bytes(raw.join(name), jpeg_bytes(i), content_type="image/jpeg")
    outside = object_store.put_bytes(S3Uri(bucket, "other/x.jpg"), jpeg_bytes(99))
    listed: list[ObjectInfo] = list(object_store.list_objects(raw))
    assert {raw.relative_key(o.uri) for o in listed} == names  # '+', spaces, unicode kept

    def body(info: ObjectInfo, i: int) -> str:
        args = (info.uri.bucket, info.uri.key, info.etag, info.size, f"{i + 1:016X}")
        kind = i % 3
        if kind == 0:
            return json.dumps(s3_event(*args))
        if kind == 1:
            return json.dumps(sns_envelope(s3_event(*args)))
        return json.dumps(eventbridge_event(*args))

    bodies = [body(info, i) for i, info in enumerate(listed)]
    # 5 duplicates: three identical redeliveries, two in the other format.
    dupes = [bodies[0], bodies[5], bodies[10]]
    for i in (13, 17):
        info = listed[i]
        dupes.append(
            json.dumps(
                eventbridge_event(
                    bucket, info.uri.key, info.etag, info.size, sequencer=f"{i + 1:016X}"
                )
                if i % 3 != 2
                else s3_event(bucket, info.uri.key, info.etag, info.size, f"{i + 1:016X}")
            )
        )
    extras = [
        json.dumps(TEST_EVENT),
        "definitely not an event",
        json.dumps(s3_event(bucket, "other/x.jpg", outside.etag, outside.size)),
    ]
    first_delivery = bodies + dupes + extras
    random.Random(7).shuffle(first_delivery)
    _send(sqs, first_delivery)

    started = time.monotonic()
    emitted: list[PlannedBatch] = []
    results = _drain(sqs, manifest_store, raw, emitted)
    assert time.monotonic() - started < 10
    assert len(results) >= 4  # 28 messages, 7 per poll: duplicates meet across polls too

    planned = [b for r in results for b in r.planned]
    members = Counter((m.uri, m.etag) for b in planned for m in b.members)
    expected = {(str(o.uri), o.etag) for o in listed}
    assert set(members) == expected and set(members.values()) == {1}
    assert all(len(b.members) <= 4 for b in planned)
    assert {b.batch_id for b in emitted} == {b.batch_id for b in planned}
    assert sorted(manifest_store.batch_ids()) == sorted(b.batch_id for b in planned)
    in_store = Counter(
        (m.uri, m.etag) for b in manifest_store.batch_ids() for m in manifest_store.batch_members(b)
    )
    assert set(in_store) == expected and set(in_store.values()) == {1}

    def total(name: str) -> int:
        return sum(getattr(r, name) for r in results)

    assert total("messages") == 28 and total("deleted") == 28
    assert total("events") == 26  # 20 + 5 duplicates + 1 outside the raw prefix
    assert total("new_objects") == 20
    assert total("duplicates_dropped") + total("already_known") == 5
    assert total("not_under_prefix") == 1
    assert total("ignored_messages") == 1  # the s3:TestEvent
    assert [reason for r in results for _, reason in r.unrecognized] == [
        "message body is not JSON (Expecting value: line 1 column 1 (char 0)): "
        "'definitely not an event'"
    ]
    assert _depth(sqs) == (0, 0)
    assert sqs.receive(10, wait_seconds=0, visibility_timeout=30) == []

    # A second delivery of the same events plans nothing; batches still unpublished are
    # handed over again (Dagster skips them by run key).
    _send(sqs, bodies + dupes)
    emitted_again: list[PlannedBatch] = []
    again = _drain(sqs, manifest_store, raw, emitted_again)
    assert sum(r.batches for r in again) == 0 and sum(r.new_objects for r in again) == 0
    assert {b.batch_id for b in emitted_again} <= {b.batch_id for b in planned}
    assert sorted(manifest_store.batch_ids()) == sorted(b.batch_id for b in planned)

    # After ingest published every batch, a redelivery hands over nothing at all.
    _publish(manifest_store, planned)
    _send(sqs, bodies)
    emitted_after: list[PlannedBatch] = []
    after = _drain(sqs, manifest_store, raw, emitted_after)
    assert emitted_after == [] and sum(r.already_known for r in after) == 20
    assert _depth(sqs) == (0, 0)

    # The polling path sees the same objects and plans nothing either.
    found = discover(
        object_store,
        manifest_store,
        raw,
        DiscoveryCursor(),
        max_objects=4,
        max_bytes=10**9,
        full_scan_every=1,
        source="poll",
    )
    assert found.full_scan and found.listed == 20
    assert found.new_batches == [] and found.pending_batches == []


def test_failing_on_batches_deletes_nothing_and_redelivery_resends_the_batch(
    sqs: SqsEventSource,
    sqlite_store: SqlManifestStore,
    object_store: ObjectStore,
    bucket: str,
) -> None:
    raw = S3Uri(bucket, "raw")
    infos = [object_store.put_bytes(raw.join(f"{i}.jpg"), jpeg_bytes(i)) for i in range(3)]
    _send(
        sqs,
        [json.dumps(s3_event(bucket, o.uri.key, o.etag, o.size)) for o in infos]
        + [json.dumps(TEST_EVENT)],
    )
    seen: list[PlannedBatch] = []

    def launch_fails(batches: list[PlannedBatch]) -> None:
        seen.extend(batches)
        raise RuntimeError("sensor could not emit run requests")

    with pytest.raises(RuntimeError, match="could not emit"):
        consume_once(sqs, sqlite_store, raw, 10, 10**9, launch_fails, visibility_timeout=1)
    assert len(seen) == 1 and len(seen[0].members) == 3
    assert _depth(sqs) == (0, 4)  # in flight, not deleted

    time.sleep(1.2)  # visibility timeout passes: the messages come back
    launched: list[PlannedBatch] = []
    result = consume_once(sqs, sqlite_store, raw, 10, 10**9, launched.extend, wait_seconds=1)
    assert (result.messages, result.redelivered, result.deleted) == (4, 4, 4)
    assert (result.batches, result.already_known, result.ignored_messages) == (0, 3, 1)
    assert [b.batch_id for b in launched] == [seen[0].batch_id]  # resent, not lost
    assert launched == seen
    assert _depth(sqs) == (0, 0)
