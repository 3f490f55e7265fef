"""Client-side job information and operator actions: get, stats, health, retry, remove, dead."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from crmqueue.engine import health as _health
from crmqueue.engine import tenant_stats as _tenant_stats
from crmqueue.engine.queues import get_broker
from crmqueue.engine.storage import STATES
from crmqueue.errors import CrmQueueError, InvalidJobState, JobNotFound, PayloadError
from crmqueue.tenancy import tenant_problem

FINAL_STATES = ("completed", "dead")


def _iso(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat() if ts else None


@dataclass(frozen=True)
class JobInfo:
    id: str
    queue: str
    name: str
    tenant: str
    state: str
    progress: int
    attempts: int
    max_attempts: int
    errors: list[dict[str, Any]]
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    run_at: str | None
    result: Any
    payload: dict[str, Any]

    @classmethod
    def from_record(cls, record: dict[str, Any], state: str | None = None) -> JobInfo:
        try:
            payload = json.loads(record["message"]).get("payload", {})
        except (ValueError, AttributeError):
            payload = {}
        return cls(
            id=record["id"],
            queue=record["queue"],
            name=record["name"],
            tenant=record["tenant"],
            state=state or record["state"],
            progress=record["progress"],
            attempts=record["attempts"],
            max_attempts=record["max_attempts"],
            errors=record["errors"],
            created_at=_iso(record["created_at"]),
            started_at=_iso(record["started_at"]),
            finished_at=_iso(record["finished_at"]),
            run_at=_iso(record["run_at"]),
            result=record["result"],
            payload=payload if isinstance(payload, dict) else {},
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Job:
    """A handle on an enqueued job."""

    id: str
    queue: str

    def info(self) -> JobInfo:
        return get(self.id)

    def wait(
        self, timeout: float | None = None, on_poll: Callable[[JobInfo], None] | None = None
    ) -> JobInfo:
        """Block until the job is completed or dead; TimeoutError after `timeout` seconds.
        `on_poll` sees every reading (a progress bar uses it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.01
        while True:
            info = get(self.id)
            if on_poll is not None:
                on_poll(info)
            if info.state in FINAL_STATES:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} still {info.state} after {timeout}s")
            time.sleep(pause)
            pause = min(pause * 1.5, 0.5)


def get(job_id: str) -> JobInfo:
    found = get_broker().find_job(job_id)
    if found is None:
        raise JobNotFound(f"job {job_id} not found (never existed, or removed by retention)")
    return JobInfo.from_record(found[1])


def list_jobs(queue: str, state: str, limit: int = 100) -> list[JobInfo]:
    if state not in STATES:
        raise CrmQueueError(f"unknown state {state!r}; states are {', '.join(STATES)}")
    records = get_broker().queue(queue).store.list_jobs(state, limit)
    return [JobInfo.from_record(r) for r in records]


def dead(queue: str, limit: int = 100) -> list[JobInfo]:
    return list_jobs(queue, "dead", limit)


def stats(queue: str, tenant: str | None = None) -> dict[str, Any]:
    """The queue's stats (DESIGN.md §3); with `tenant`, that tenant's job counts per state
    and its daily quota use instead (crmqueue.engine.tenant_stats; O(jobs kept), read from
    the storage). PayloadError for a malformed tenant id."""
    if tenant is None:
        return _health.stats(get_broker(), queue)
    problem = tenant_problem(tenant)
    if problem is not None:
        raise PayloadError([("tenant", problem)])
    return _tenant_stats.tenant_stats(get_broker().queue(queue), tenant)


def top_tenants(queue: str, limit: int = _tenant_stats.TOP_TENANTS) -> list[dict[str, Any]]:
    """The tenants with the most waiting jobs on `queue`: [{"tenant", "waiting"}]."""
    return _tenant_stats.top_tenants(get_broker().queue(queue), limit)


def health() -> dict[str, Any]:
    return _health.health(get_broker())


def retry(job_id: str) -> JobInfo:
    """Put a dead job back to waiting with a fresh attempt budget."""
    broker = get_broker()
    found = broker.find_job(job_id)
    if found is None:
        raise JobNotFound(f"job {job_id} not found")
    queue, _ = found
    queue.store.retry_job(job_id, queue.spec.attempts)
    return get(job_id)


def remove(job_id: str) -> JobInfo:
    """Delete a waiting, scheduled, delayed or dead job; an active one is refused."""
    broker = get_broker()
    found = broker.find_job(job_id)
    if found is None:
        raise JobNotFound(f"job {job_id} not found")
    queue, _ = found
    return JobInfo.from_record(queue.store.remove_job(job_id), state="removed")


def replay_dead(queue: str) -> list[str]:
    """Retry every dead job of a queue once; returns their ids.

    A replayed job that dies again while this runs stays dead (it is not replayed again),
    and one retried or removed by someone else meanwhile is skipped.
    """
    broker = get_broker()
    q = broker.queue(queue)
    replayed: list[str] = []
    seen: set[str] = set()
    while True:
        # Re-died jobs sort first (newest finish first): widen the window past them.
        batch = [r for r in q.store.list_jobs("dead", len(seen) + 500) if r["id"] not in seen]
        if not batch:
            return replayed
        for record in batch:
            seen.add(record["id"])
            try:
                q.store.retry_job(record["id"], q.spec.attempts)
            except (InvalidJobState, JobNotFound):
                continue
            replayed.append(record["id"])
