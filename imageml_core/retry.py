"""Retries with exponential backoff and full jitter, for work whose failure is transient."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


def call_with_retries(
    fn: Callable[[], T],
    *,
    retry_on: tuple[type[BaseException], ...],
    attempts: int = 5,
    base_delay_s: float = 0.2,
    max_delay_s: float = 10.0,
    what: str = "operation",
) -> T:
    """Call ``fn`` until it succeeds, retrying ``retry_on`` errors up to ``attempts`` times.

    The sleep before retry ``n`` (1-based) is uniform in ``[0, min(max, base * 2**n)]``
    ("full jitter"), so many workers retrying at once spread out instead of stampeding.
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except retry_on as exc:
            if attempt == attempts:
                raise
            delay = random.uniform(0, min(max_delay_s, base_delay_s * 2**attempt))
            log.warning(
                "%s failed (%s); retry %d/%d in %.2fs", what, exc, attempt, attempts - 1, delay
            )
            time.sleep(delay)
    raise AssertionError("unreachable")
