"""An interrupted stage stops promptly: queued tasks are cancelled, only running ones finish
(issue 10: SIGTERM during normalize went on through the whole batch)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from imageml_core.executors import interruptible


def test_an_interrupt_cancels_queued_tasks() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def task(n: int) -> int:
        with lock:
            started.append(n)
        time.sleep(0.05)
        return n

    with pytest.raises(KeyboardInterrupt), interruptible(ThreadPoolExecutor(2)) as pool:
        futures = [pool.submit(task, n) for n in range(40)]
        futures[0].result()
        raise KeyboardInterrupt  # what SIGTERM becomes in the runner
    # Without the cancel every one of the 40 tasks would have run before the block exited.
    assert len(started) <= 6
    assert sum(f.cancelled() for f in futures) >= 34


def test_without_an_exception_every_task_runs() -> None:
    with interruptible(ThreadPoolExecutor(2)) as pool:
        futures = [pool.submit(lambda n=n: n * 2) for n in range(10)]
    assert [f.result() for f in futures] == [n * 2 for n in range(10)]
