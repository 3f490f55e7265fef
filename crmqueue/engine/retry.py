"""Retry policy: exponential backoff with full jitter and a cap."""

from __future__ import annotations

import random

from crmqueue.config import QueueSettings
from crmqueue.errors import PayloadError, PermanentError, RetryableError


def backoff_ceiling(attempt: int, base: float, cap: float) -> float:
    """The upper bound of the delay after failed attempt number `attempt` (1-based)."""
    return float(min(cap, base * 2.0 ** max(attempt - 1, 0)))


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full jitter: uniform between 0 and base * 2**(attempt - 1), capped."""
    return float((rng or random).uniform(0, backoff_ceiling(attempt, base, cap)))


def next_delay(
    exc: BaseException, attempt: int, max_attempts: int, spec: QueueSettings
) -> float | None:
    """Seconds until the next attempt, or None when the job goes dead."""
    if isinstance(exc, PermanentError | PayloadError) or attempt >= max_attempts:
        return None
    if isinstance(exc, RetryableError) and exc.delay is not None:
        return max(0.0, exc.delay)
    return backoff_delay(attempt, spec.backoff_seconds, spec.backoff_max_seconds)
