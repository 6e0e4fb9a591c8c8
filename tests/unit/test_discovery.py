"""Batch identity and bounds (pure logic)."""

from __future__ import annotations

from imageml_core.discovery import DiscoveryCursor, batch_id_for, group_into_batches
from imageml_core.manifest import BatchMember


def _members(n: int, size: int = 10) -> list[BatchMember]:
    return [BatchMember(f"s3://b/raw/{i:04d}.jpg", f"etag{i}", size) for i in range(n)]


def test_batch_id_depends_on_content_only() -> None:
    members = _members(5)
    assert batch_id_for(members) == batch_id_for(list(reversed(members)))
    changed = [*members[:-1], BatchMember(members[-1].uri, "other-etag", 10)]
    assert batch_id_for(changed) != batch_id_for(members)
    assert batch_id_for(members).startswith("batch-") and len(batch_id_for(members)) == 22


def test_batches_are_bounded_by_count_and_bytes() -> None:
    by_count = group_into_batches(_members(25), max_objects=10, max_bytes=10**9)
    assert [len(b.members) for b in by_count] == [10, 10, 5]
    by_bytes = group_into_batches(_members(10, size=40), max_objects=100, max_bytes=100)
    assert [len(b.members) for b in by_bytes] == [2, 2, 2, 2, 2]
    huge = group_into_batches([BatchMember("s3://b/x", "e", 500)], max_objects=10, max_bytes=100)
    assert len(huge) == 1 and huge[0].total_bytes == 500
    # Same input, same batches: a re-planned tick makes the same partition keys.
    assert group_into_batches(_members(25), max_objects=10, max_bytes=10**9) == by_count


def test_cursor_round_trip_and_garbage() -> None:
    cursor = DiscoveryCursor("raw/x.jpg", 3)
    assert DiscoveryCursor.parse(cursor.serialize()) == cursor
    assert DiscoveryCursor.parse("not json") == DiscoveryCursor()
    assert DiscoveryCursor.parse(None) == DiscoveryCursor()
