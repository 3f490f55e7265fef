"""The storage contract: what a leased job store does, and the records it passes.

A backend implements JobStore's crmqueue interface (enqueue_jobs, claim, complete_many,
fail, release, touch, reap, ...) and Huey's key-value methods, which serve locks and
kept records. Every operation that moves a job changes its record, its queue index and
the counts in one atomic step.
"""

from __future__ import annotations

import datetime as dt
import math
import time
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from huey.storage import BaseStorage

from crmqueue.engine.storage.huey_methods import HueyStorageMixin
from crmqueue.errors import QuotaExceeded

STATES = ("waiting", "scheduled", "active", "delayed", "completed", "dead")
REMOVABLE = ("waiting", "scheduled", "delayed", "dead")
# Counters a store keeps since its queue was created (see JobStore.totals).
TOTALS = ("completed", "failed", "retried", "dead", "stalled")
MAX_ERRORS_KEPT = 25
PRIORITY_LIMIT = 1000


@dataclass(frozen=True)
class NewJob:
    id: str
    queue: str
    name: str
    tenant: str
    priority: int
    max_attempts: int
    message: bytes
    run_at: float | None = None  # epoch seconds; None runs now


@dataclass(frozen=True)
class Quota:
    """A tenant's daily cap on this queue, checked by enqueue_jobs in the step that stores
    the jobs (see crmqueue.engine.quotas): at most `limit` jobs of `tenant` counted under
    `day` (its local date, YYYY-MM-DD, in time zone `zone`); the count is forgotten after
    `reset_at` (epoch seconds of the next local midnight). `now`: the producer's clock
    when the day was read (the error's wait counts from it)."""

    tenant: str
    day: str
    limit: int
    reset_at: float
    zone: str
    now: float

    def exceeded(self, queue: str, used: int, requested: int) -> QuotaExceeded:
        """The error enqueue_jobs raises when `requested` more would pass the limit."""
        zone = zoneinfo.ZoneInfo(self.zone)
        reset = dt.datetime.fromtimestamp(self.reset_at, zone)
        wait = max(1, math.ceil(self.reset_at - self.now))
        return QuotaExceeded(self.tenant, queue, self.limit, used, requested, reset, wait)


@dataclass(frozen=True)
class Claim:
    id: str
    name: str
    message: bytes
    attempts: int
    max_attempts: int
    token: str  # unique to this claim: a stale worker's late outcome is refused
    # False when an earlier claim may have run the body (whatever happened to it since:
    # failed, reaped, handed back); bodies with side effects check for them only then.
    first_run: bool = False
    # The job's priority when it was claimed (higher runs first).
    priority: int = 0


@dataclass(frozen=True)
class KeptRecord:
    """A key-value record written with a job's completion (see complete_many)."""

    key: str
    value: bytes
    ttl: float | None = None


@dataclass(frozen=True)
class ClaimResult:
    jobs: list[Claim]
    next_due: float | None  # epoch seconds of the earliest scheduled or delayed job


class JobStore(HueyStorageMixin, BaseStorage):  # type: ignore[misc]
    """One queue's leased storage. Huey's key-value methods serve locks and records;
    Huey's queue, schedule, result and counter methods come from HueyStorageMixin."""

    blocking = True
    priority = True

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name)

    # The crmqueue interface, implemented by each backend.
    def enqueue_jobs(
        self, jobs: Sequence[NewJob], skip_existing: bool = False, quotas: Sequence[Quota] = ()
    ) -> None:
        """Store new jobs in one step. `skip_existing`: a job whose id is already stored
        (in any state) is left as it is and this one dropped, so a producer that runs
        again with deterministic ids (a fan-out re-run) adds nothing twice. `quotas`: per
        tenant, a daily cap checked and counted in the same step, shared by every producer
        on the storage (jobs dropped by skip_existing do not count); when any tenant would
        pass its cap nothing is stored and QuotaExceeded is raised."""
        raise NotImplementedError

    def claim(self, consumer: str, lease_seconds: float, limit: int = 1) -> ClaimResult:
        raise NotImplementedError

    def wait_for_jobs(self, timeout: float) -> None:
        """Block up to `timeout` seconds until a job may have arrived."""
        raise NotImplementedError

    def wake(self) -> None:
        """End a wait_for_jobs early (a stopping consumer uses it on its own fetcher)."""
        raise NotImplementedError

    def complete(self, claim: Claim, result: Any, keep_seconds: int) -> bool:
        """Record a finished job. False when the lease was no longer ours."""
        return self.complete_many([(claim, result)], keep_seconds)[0]

    def complete_many(
        self,
        done: Sequence[tuple[Claim, Any]],
        keep_seconds: int,
        records: Sequence[KeptRecord] = (),
    ) -> list[bool]:
        """Record many finished jobs in one step (group commit), each as complete() would,
        and in the same step store `records` as put_if_empty would: those are stored even
        for a job whose lease was lost, since what they record did happen."""
        raise NotImplementedError

    def fail(self, claim: Claim, error: dict[str, Any], retry_delay: float | None) -> str | None:
        """Record a failed attempt: to `delayed` after retry_delay, or to `dead` when None.

        Returns the new state, or None when the lease was no longer ours.
        """
        raise NotImplementedError

    def postpone(self, claim: Claim, delay: float, reason: str) -> bool:
        """Put a claimed job off for `delay` seconds without spending an attempt: to
        `delayed`, its attempt count back as before the claim, no failure counted, and
        `reason` noted in its errors (see postponed_errors). False when the lease was no
        longer ours."""
        raise NotImplementedError

    def release(self, claim: Claim) -> bool:
        """Hand an unfinished job back to the front of the queue (graceful shutdown)."""
        raise NotImplementedError

    def touch(self, claim: Claim, lease_seconds: float, progress: int | None = None) -> bool:
        """Renew a lease, and record progress when given. False when the lease was lost."""
        raise NotImplementedError

    def reap(self, max_stalls: int) -> list[str]:
        """Return jobs whose lease expired to the queue; dead after max_stalls stalls."""
        raise NotImplementedError

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def list_jobs(self, state: str, limit: int = 100) -> list[dict[str, Any]]:
        raise NotImplementedError

    def counts(self) -> dict[str, int]:
        raise NotImplementedError

    def tenant_counts(
        self, states: Sequence[str], tenant: str | None = None
    ) -> dict[str, dict[str, int]]:
        """Jobs per state and tenant ({state: {tenant: n}}, states without jobs empty);
        only `tenant`'s when given. The pseudo-state "failed" counts delayed jobs that
        failed an attempt (waiting for their retry). Reads the jobs of those states:
        O(jobs) (SQLite: one grouped query over the queue's state index; Redis: each
        state's index read and each job's tenant field fetched in pipelined batches)."""
        raise NotImplementedError

    def quota_used(self, tenant: str, day: str) -> int:
        """Jobs counted against `tenant`'s daily quota on this queue for local `day`."""
        raise NotImplementedError

    def window_counts(self, seconds: int) -> tuple[int, int]:
        """(completed, failed attempts) over the last `seconds`."""
        raise NotImplementedError

    def totals(self) -> dict[str, int]:
        """Counters since the queue was created, one per name in TOTALS: jobs completed,
        failed attempts (those retried and those that ended dead, stalls included), failed
        attempts scheduled to be retried, jobs that went dead, and expired leases (stalled:
        returned to the queue or dead). Every consumer process adds to the same counters in
        the step that moves the job, so a scrape of any process sees them all."""
        raise NotImplementedError

    def retry_job(self, job_id: str, max_attempts: int) -> None:
        raise NotImplementedError

    def remove_job(self, job_id: str) -> dict[str, Any]:
        raise NotImplementedError

    def sweep(self, keep_completed: int, keep_failed: int) -> int:
        raise NotImplementedError

    def heartbeat(self, consumer: str, workers: int, ttl: float) -> None:
        raise NotImplementedError

    def live_consumers(self) -> dict[str, int]:
        """Live consumer ids mapped to their worker counts."""
        raise NotImplementedError

    def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        """Take or extend a lock that always expires after `ttl` unless renewed."""
        raise NotImplementedError

    def flush_all(self) -> None:
        raise NotImplementedError

    def ping(self) -> None:
        raise NotImplementedError

    # Job events: each backend writes one per transition in the step that makes it (see
    # EVENT_TYPES), into one capped stream per storage; these read it.
    def read_events(
        self, after: str, limit: int = 500, timeout: float = 0.0
    ) -> list[dict[str, Any]]:
        """Up to `limit` events after cursor `after` ("0": from the oldest kept), oldest
        first, each a dict of EVENT_FIELDS plus its `cursor`; when there are none, waits
        up to `timeout` seconds for some. Raises ValueError for a cursor of another
        backend's form."""
        raise NotImplementedError

    def events_bounds(self) -> tuple[str, str, str]:
        """(oldest kept cursor, newest cursor, newest trimmed cursor): a reader whose
        cursor is older than the last has missed events ("0" when none were trimmed; on
        Redis, whose trimming records no id, the cursor just before the oldest kept
        once any were trimmed)."""
        raise NotImplementedError


# A job's transitions, each an event: enqueued (waiting or scheduled), active (claimed),
# progress, completed, failed (an attempt raised; then retrying or dead), retrying (to
# delayed), dead, stalled (lease expired: back to waiting, or dead), removed, replayed (a
# dead job put back, crmqueue dlq replay), postponed (delayed, no attempt spent),
# released (handed back unfinished at shutdown).
EVENT_TYPES = (
    "enqueued", "active", "progress", "completed", "failed", "retrying", "dead", "stalled",
    "removed", "replayed", "postponed", "released",
)  # fmt: skip
EVENT_FIELDS = (
    "type", "id", "queue", "name", "tenant", "state", "progress", "attempt", "consumer",
    "error", "at",
)  # fmt: skip


def error_summary(error: dict[str, Any]) -> str:
    """An error record's one-line summary in an event: "Type: message", 300 characters
    at most (the Redis scripts make the same)."""
    return f"{error.get('type', '')}: {error.get('message', '')}"[:300]


def error_record(exc_type: str, message: str, traceback_excerpt: str = "") -> dict[str, Any]:
    """A job's error entry; its texts storable on every storage (storable_text)."""
    return {
        "type": storable_text(exc_type), "message": storable_text(message),
        "traceback": storable_text(traceback_excerpt), "at": time.time(),
    }  # fmt: skip


def storable_text(text: str) -> str:
    """`text` with each lone surrogate written as its escape (``\\udce9``): an error
    message may carry one (os.fsdecode of a file name in another encoding), and neither
    UTF-8 (SQLite), nor Redis's cjson reading "\\udce9" from JSON, can store one; the
    job's failure could then never be recorded."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def postponed_errors(errors: list[dict[str, Any]], reason: str, now: float) -> list[dict[str, Any]]:
    """A job's error history with a postponement noted: an entry of type ``Postponed``
    with a `count`; consecutive postponements update the last entry instead of pushing
    real errors out of the kept history (the Redis script postpone.lua does the same)."""
    count = 1
    if errors and errors[-1].get("type") == "Postponed":
        count = int(errors[-1].get("count", 1)) + 1
        errors = errors[:-1]
    entry = {"type": "Postponed", "message": reason, "traceback": "", "at": now, "count": count}
    return [*errors, entry][-MAX_ERRORS_KEPT:]


def key_text(key: str | bytes) -> str:
    """A key-value key as text (Huey passes str or bytes)."""
    return key.decode() if isinstance(key, bytes) else key
