"""The restart policy's timing: how long a failed gang waits before its next attempt.

Exponential backoff with a cap, as Kubernetes Jobs space their pod retries: the
first restart waits `base` seconds, each further one twice as long, never more
than `cap`. Every restart still counts against spec.runPolicy.backoffLimit; the
wait only spaces them, so that a fault that needs a minute to clear (an S3
outage, a node coming back) does not use the whole limit in seconds.
"""

from __future__ import annotations

from datetime import datetime, timedelta

DEFAULT_BASE_SECONDS = 10.0
DEFAULT_CAP_SECONDS = 300.0


def backoff_seconds(restart: int, base: float, cap: float) -> float:
    """The wait before restart number `restart` (1 for the first)."""
    if restart < 1 or base <= 0:
        return 0.0
    return min(cap, base * 2.0 ** min(restart - 1, 32))


def next_attempt_at(now: datetime, restart: int, base: float, cap: float) -> datetime:
    return now + timedelta(seconds=backoff_seconds(restart, base, cap))


def wait_left(next_attempt: datetime | None, now: datetime) -> float:
    """Seconds until the next attempt may start (0 when it may start now)."""
    if next_attempt is None:
        return 0.0
    return max(0.0, (next_attempt - now).total_seconds())
