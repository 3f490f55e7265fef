"""Per-queue stats and overall health, as the JSON documented in DESIGN.md §3."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from huey.constants import EmptyData

from crmqueue.engine.pause import is_paused
from crmqueue.engine.queues import Broker, Queue
from crmqueue.errors import StorageUnavailable

HEALTH_KEY = "health:last"
EXIT_CODES = {"healthy": 0, "degraded": 1, "error": 2}


def queue_stats(queue: Queue, window_seconds: int, threshold: float) -> dict[str, Any]:
    counts = queue.store.counts()
    completed_recent, failed_recent = queue.store.window_counts(window_seconds)
    consumers = queue.store.live_consumers()
    workers = sum(consumers.values())
    finished = completed_recent + failed_recent
    failure_rate = failed_recent / finished if finished else 0.0
    stranded = counts["waiting"] > 0 and workers == 0
    return {
        "queue": queue.name,
        "waiting": counts["waiting"],
        "active": counts["active"],
        "delayed": counts["delayed"],
        "scheduled": counts["scheduled"],
        "completed": counts["completed"],
        "failed": failed_recent,
        "dead": counts["dead"],
        "workers": workers,
        "consumers": len(consumers),
        "throughput_per_min": round(completed_recent / (window_seconds / 60), 2),
        "failure_rate": round(failure_rate, 4),
        "healthy": failure_rate < threshold and not stranded,
        "paused": is_paused(queue.store),
    }


def stats(broker: Broker, queue: str) -> dict[str, Any]:
    health_settings = broker.settings.health
    return queue_stats(
        broker.queue(queue), health_settings.window_seconds, health_settings.failure_rate_threshold
    )


def health(broker: Broker) -> dict[str, Any]:
    """healthy, degraded (a queue unhealthy) or error (storage unreachable, or a queue
    with no live consumer)."""
    timestamp = dt.datetime.now(dt.UTC).isoformat()
    try:
        queues = [stats(broker, name) for name in broker.queues]
    except StorageUnavailable as exc:
        return {"status": "error", "timestamp": timestamp, "error": str(exc), "queues": []}
    if any(q["consumers"] == 0 for q in queues):
        status = "error"
    elif all(q["healthy"] for q in queues):
        status = "healthy"
    else:
        status = "degraded"
    return {"status": status, "timestamp": timestamp, "queues": queues}


def last_check(broker: Broker) -> dict[str, Any] | None:
    """The report the periodic health check recorded last, if any."""
    raw = broker.queue("email").store.peek_data(HEALTH_KEY)
    if raw is EmptyData:
        return None
    report: dict[str, Any] = json.loads(raw)
    return report
