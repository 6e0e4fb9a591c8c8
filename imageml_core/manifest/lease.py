"""Leases that do not outlive their holder: a short TTL kept alive by a heartbeat.

A holder renews its lease every ``ttl_s / 3`` seconds from a background thread; if it dies
(``kill -9``, a lost node, the database unreachable) the heartbeats stop and another run
takes the lease over at most ``ttl_s`` seconds after the last one (:data:`DEFAULT_TTL_S`:
one minute). The holder releases the lease when it finishes or fails, so a retry does not
wait at all.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from imageml_core.manifest.interface import Checkpoints, Step

log = logging.getLogger(__name__)

#: How long a lease outlives its holder's last heartbeat, in seconds.
DEFAULT_TTL_S = 60.0


class Lease:
    """A named lease on one partition of one step, held while its ``with`` block runs.

    ``acquire()`` takes it (True) if nobody holds it or its holder's heartbeats stopped
    more than ``ttl_s`` seconds ago; the heartbeat runs until ``release()`` (or the end of
    the ``with`` block). ``lost`` tells whether a heartbeat found the lease taken over.
    """

    def __init__(
        self,
        store: Checkpoints,
        step: Step,
        partition_key: str,
        name: str,
        holder: str,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        self.store, self.step, self.partition_key = store, step, partition_key
        self.name, self.holder, self.ttl_s = name, holder, ttl_s
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the lease; start the heartbeat when taken."""
        if not self.store.claim(self.step, self.partition_key, self.name, self.holder, self.ttl_s):
            return False
        self._thread = threading.Thread(
            target=self._heartbeat, name=f"lease-{self.name}", daemon=True
        )
        self._thread.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.store.renew(self.step, self.partition_key, self.name, self.holder):
                    self.lost = True
                    log.warning("lease %s on %s was taken over", self.name, self.partition_key)
                    return
            except Exception as exc:  # the store unreachable: keep trying until the TTL
                log.warning("could not renew lease %s: %s", self.name, exc)

    def release(self) -> None:
        """Stop the heartbeat and give the lease back (if still held)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            self.store.release(self.step, self.partition_key, self.name, self.holder)
        except Exception as exc:  # it expires by itself within ttl_s
            log.warning("could not release lease %s: %s", self.name, exc)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
