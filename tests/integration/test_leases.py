"""Leases that do not outlive their holder (issue 10, part 3): a heartbeat keeps a live
holder's lease, a dead holder's lease lapses within its TTL, a released lease is free at
once; on PostgreSQL and SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from imageml_core.manifest import NORMALIZE, SqlManifestStore
from imageml_core.manifest.lease import Lease


def test_renew_only_by_the_holder_and_never_after_a_takeover(
    manifest_store: SqlManifestStore,
) -> None:
    store = manifest_store
    assert store.claim(NORMALIZE, "b1", "work", "run-a", ttl_s=60)
    assert store.renew(NORMALIZE, "b1", "work", "run-a")
    assert not store.renew(NORMALIZE, "b1", "work", "run-b")  # not the holder
    assert not store.renew(NORMALIZE, "b2", "work", "run-a")  # no such lease
    time.sleep(0.3)
    assert store.claim(NORMALIZE, "b1", "work", "run-b", ttl_s=0.2)  # run-a missed beats
    assert not store.renew(NORMALIZE, "b1", "work", "run-a")  # taken over: lost
    assert store.renew(NORMALIZE, "b1", "work", "run-b")


def test_a_heartbeat_keeps_the_lease_and_release_frees_it_at_once(
    manifest_store: SqlManifestStore,
) -> None:
    holder = Lease(manifest_store, NORMALIZE, "b1", "work", "run-a", ttl_s=0.6)
    other = Lease(manifest_store, NORMALIZE, "b1", "work", "run-b", ttl_s=0.6)
    assert holder.acquire()
    deadline = time.monotonic() + 2.0  # more than three TTLs, heartbeats all along
    while time.monotonic() < deadline:
        assert not other.acquire()
        time.sleep(0.1)
    assert not holder.lost
    holder.release()
    assert other.acquire()  # no waiting out the TTL after a release
    other.release()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from imageml_core.manifest import NORMALIZE, SqlManifestStore
    from imageml_core.manifest.lease import Lease

    store = SqlManifestStore(sys.argv[1])
    lease = Lease(store, NORMALIZE, "b1", "work", "doomed-run", ttl_s=float(sys.argv[2]))
    assert lease.acquire()
    print("holding", flush=True)
    time.sleep(600)
    """
)


def test_a_killed_holder_is_replaced_within_the_ttl(manifest_store: SqlManifestStore) -> None:
    ttl = 2.0
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, manifest_store.url, str(ttl)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
        waiter = Lease(manifest_store, NORMALIZE, "b1", "work", "next-run", ttl_s=ttl)
        time.sleep(ttl * 1.5)
        assert not waiter.acquire()  # alive: its heartbeats keep the lease
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        killed = time.monotonic()
        while not waiter.acquire():
            assert time.monotonic() - killed < ttl + 1.0, "the dead holder's lease outlived it"
            time.sleep(0.1)
        waiter.release()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
