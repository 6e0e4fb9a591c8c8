"""Executors that stop promptly when the run is interrupted.

``concurrent.futures`` executors used as context managers wait, on the way out, for every
task already *queued*, not only the running ones (``shutdown(wait=True)`` without
``cancel_futures``). After SIGTERM (Kubernetes' stop signal, turned into
``KeyboardInterrupt`` by the runner) a stage would then go on through a whole batch and
overrun the pod's grace period. :func:`interruptible` cancels what has not started when an
exception leaves the block, then waits only for the tasks already running.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import TypeVar

E = TypeVar("E", bound=Executor)


@contextmanager
def interruptible(executor: E) -> Iterator[E]:
    """``with interruptible(ThreadPoolExecutor(4)) as pool:``: like ``with executor``, but
    an exception (``KeyboardInterrupt`` included) leaving the block cancels queued tasks
    first, so only the running ones are waited for."""
    with executor:
        try:
            yield executor
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            raise
