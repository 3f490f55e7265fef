"""Leased job storage behind Huey's storage interface, on SQLite and on Redis.

The queue and the job registry are one structure: each job has one record,
and the queue indexes hold only ids.  Every operation that moves a job
(enqueue, claim, complete, fail, release, reap, retry, remove, sweep) changes
the record, the queue index and the counts in one atomic step: a single
transaction on SQLite, a single Lua script on Redis.

A claimed job stays in storage under a lease until it finishes; a reaper
returns jobs whose lease expired (their consumer died) to the queue.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from huey.constants import EmptyData
from huey.storage import BaseStorage

from crmqueue.errors import InvalidJobState, JobNotFound, StorageUnavailable

STATES = ("waiting", "scheduled", "active", "delayed", "completed", "dead")
REMOVABLE = ("waiting", "scheduled", "delayed", "dead")
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


class JobStore(BaseStorage):  # type: ignore[misc]
    """One queue's leased storage. Huey's key-value methods serve locks and records."""

    blocking = True
    priority = True

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name)

    # Huey's plain queue interface deletes on dequeue; crmqueue always goes through
    # enqueue_jobs/claim so that nothing is lost, so these entry points are closed.
    def enqueue(self, data: bytes, priority: float | None = None) -> None:
        raise NotImplementedError("use JobStore.enqueue_jobs")

    def dequeue(self) -> bytes | None:
        raise NotImplementedError("use JobStore.claim")

    def add_to_schedule(self, data: bytes, ts: Any) -> None:
        raise NotImplementedError("use JobStore.enqueue_jobs with run_at")

    def read_schedule(self, ts: Any) -> list[bytes]:
        return []  # due jobs are promoted inside claim()

    def queue_size(self) -> int:
        return self.counts()["waiting"]

    def schedule_size(self) -> int:
        counts = self.counts()
        return counts["scheduled"] + counts["delayed"]

    def enqueued_items(self, limit: int | None = None) -> list[bytes]:
        return [job["message"] for job in self.list_jobs("waiting", limit or 1000)]

    def scheduled_items(self, limit: int | None = None) -> list[bytes]:
        return [job["message"] for job in self.list_jobs("scheduled", limit or 1000)]

    def result_store_size(self) -> int:
        return self.counts()["completed"]

    def result_items(self) -> dict[str, Any]:
        return {}

    def flush_queue(self) -> None:
        self.flush_all()

    def flush_schedule(self) -> None:
        self.flush_all()

    def flush_results(self) -> None:
        self.flush_all()

    # The crmqueue interface, implemented by each backend.
    def enqueue_jobs(self, jobs: Sequence[NewJob]) -> None:
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

    def window_counts(self, seconds: int) -> tuple[int, int]:
        """(completed, failed attempts) over the last `seconds`."""
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


def error_record(exc_type: str, message: str, traceback_excerpt: str = "") -> dict[str, Any]:
    return {"type": exc_type, "message": message, "traceback": traceback_excerpt, "at": time.time()}


# --------------------------------------------------------------------------- SQLite

_SQLITE_SCHEMA = """
create table if not exists jobs (
    rowid integer primary key,
    id text not null unique,
    queue text not null,
    name text not null,
    tenant text not null,
    state text not null,
    priority integer not null,
    order_key integer not null,
    run_at real,
    progress integer not null default 0,
    attempts integer not null default 0,
    max_attempts integer not null,
    stalls integer not null default 0,
    errors text not null default '[]',
    result text,
    message blob not null,
    created_at real not null,
    started_at real,
    finished_at real,
    lease_until real,
    lease_token text,
    consumer text
);
create index if not exists jobs_claim on jobs (queue, state, priority desc, order_key);
create index if not exists jobs_due on jobs (queue, state, run_at);
create index if not exists jobs_finished on jobs (queue, state, finished_at);
create table if not exists job_counts (
    queue text not null, state text not null, n integer not null default 0,
    primary key (queue, state)
);
-- Inserts are counted per batch by enqueue_jobs; every later change by these triggers.
create trigger if not exists jobs_count_delete after delete on jobs begin
    update job_counts set n = n - 1 where queue = old.queue and state = old.state;
end;
create trigger if not exists jobs_count_update after update of state on jobs
when old.state != new.state begin
    update job_counts set n = n - 1 where queue = old.queue and state = old.state;
    insert into job_counts (queue, state, n) values (new.queue, new.state, 1)
        on conflict (queue, state) do update set n = n + 1;
end;
create table if not exists job_stats (
    queue text not null, minute integer not null,
    completed integer not null default 0, failed integer not null default 0,
    primary key (queue, minute)
);
create table if not exists kv (
    queue text not null, key text not null, value blob not null, expires_at real,
    primary key (queue, key)
);
create table if not exists consumers (
    queue text not null, consumer text not null, workers integer not null,
    expires_at real not null, primary key (queue, consumer)
);
"""

SQLITE_SCHEMA_VERSION = 2
_SQLITE_UPGRADES = {
    1: "drop trigger if exists jobs_count_insert; drop index if exists jobs_lease;",
}

_JOB_COLUMNS = (
    "id, queue, name, tenant, state, priority, run_at, progress, attempts, max_attempts, "
    "stalls, errors, result, message, created_at, started_at, finished_at, lease_until, consumer"
)


class _SqliteWatcher:
    """Wakes idle consumers when another connection commits (PRAGMA data_version).

    One thread per database file and process, running only while consumers wait; it
    makes pickup immediate instead of the growing poll interval of Huey's SQLite consumer.
    """

    _instances: dict[str, _SqliteWatcher] = {}
    _instances_guard = threading.Lock()
    IDLE_EXIT_SECONDS = 5.0

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.changed = threading.Condition()
        self.version = 0
        self._waiters = 0
        self._last_wait = time.monotonic()
        self._running = False

    @classmethod
    def for_file(cls, filename: str) -> _SqliteWatcher:
        with cls._instances_guard:
            if filename not in cls._instances:
                cls._instances[filename] = cls(filename)
            return cls._instances[filename]

    def _watch(self) -> None:
        conn = sqlite3.connect(self.filename, isolation_level=None, check_same_thread=False)
        last = None
        try:
            while True:
                try:
                    current = conn.execute("pragma data_version").fetchone()[0]
                except sqlite3.Error:
                    current = last
                if current != last:
                    last = current
                    self.bump()
                with self.changed:
                    idle = time.monotonic() - self._last_wait > self.IDLE_EXIT_SECONDS
                    if self._waiters == 0 and idle:
                        self._running = False
                        return
                time.sleep(0.005)
        finally:
            conn.close()

    def bump(self) -> None:
        with self.changed:
            self.version += 1
            self.changed.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        with self.changed:
            if not self._running:
                self._running = True
                threading.Thread(
                    target=self._watch, name="crmqueue-sqlite-watch", daemon=True
                ).start()
            self._waiters += 1
            try:
                self.changed.wait_for(lambda: self.version != seen, timeout)
            finally:
                self._waiters -= 1
                self._last_wait = time.monotonic()
            return self.version


def _decode_row(row: sqlite3.Row) -> dict[str, Any]:
    job = dict(row)
    job["errors"] = json.loads(job["errors"])
    job["result"] = json.loads(job["result"]) if job["result"] is not None else None
    job["message"] = bytes(job["message"])
    return job


class SqliteJobStore(JobStore):
    """All queues share one database file; each row carries its queue name."""

    blocking = True

    def __init__(self, name: str, filename: str = "crmqueue-data/queues.db", timeout: float = 5.0):
        super().__init__(name)
        self.filename = filename
        self.timeout = timeout
        parent = Path(filename).parent
        parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self._connection()
        version = conn.execute("pragma user_version").fetchone()[0]
        if version == 0:
            conn.executescript(f"{_SQLITE_SCHEMA}; pragma user_version = {SQLITE_SCHEMA_VERSION};")
        elif version in _SQLITE_UPGRADES:
            steps = "".join(_SQLITE_UPGRADES[v] for v in range(version, SQLITE_SCHEMA_VERSION))
            conn.executescript(
                f"begin; {steps} pragma user_version = {SQLITE_SCHEMA_VERSION}; commit;"
            )
        elif version != SQLITE_SCHEMA_VERSION:
            raise StorageUnavailable(
                f"{filename}: queue schema version {version}; this crmqueue uses"
                f" {SQLITE_SCHEMA_VERSION}"
            )
        self._watcher = _SqliteWatcher.for_file(filename)
        self._seen = self._watcher.version

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(
                self.filename, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    conn.execute("pragma journal_mode=wal")
                    break
                except sqlite3.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            conn.execute("pragma synchronous=normal")
            conn.execute(f"pragma busy_timeout={int(self.timeout * 1000)}")
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        try:
            conn.execute("begin immediate")
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"SQLite storage {self.filename}: {exc}") from exc
        try:
            yield conn
        except BaseException:
            conn.execute("rollback")
            raise
        else:
            conn.execute("commit")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"SQLite storage {self.filename}: {exc}") from exc

    def ping(self) -> None:
        self._read("select 1")

    def enqueue_jobs(self, jobs: Sequence[NewJob]) -> None:
        now = time.time()
        rows = []
        for job in jobs:
            future = job.run_at is not None and job.run_at > now
            rows.append(
                (
                    job.id, job.queue, job.name, job.tenant,
                    "scheduled" if future else "waiting",
                    job.priority, time.time_ns(), job.run_at if future else None,
                    job.max_attempts, job.message, now,
                )
            )  # fmt: skip
        added = Counter((row[1], row[4]) for row in rows)
        with self._tx() as conn:
            conn.executemany(
                "insert into jobs (id, queue, name, tenant, state, priority, order_key, run_at,"
                " max_attempts, message, created_at) values (?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            conn.executemany(
                "insert into job_counts (queue, state, n) values (?, ?, ?)"
                " on conflict (queue, state) do update set n = n + excluded.n",
                [(queue, state, n) for (queue, state), n in added.items()],
            )
        self._watcher.bump()

    def claim(self, consumer: str, lease_seconds: float, limit: int = 1) -> ClaimResult:
        now = time.time()
        # A read first: WAL readers never block, and idle queues woken by another queue's
        # commit must not queue up for the write lock.
        waiting, *due = self._read(
            "select exists (select 1 from jobs where queue = ?1 and state = 'waiting'),"
            " (select min(run_at) from jobs where queue = ?1 and state = 'scheduled'),"
            " (select min(run_at) from jobs where queue = ?1 and state = 'delayed')",
            (self.name,),
        )[0]
        next_due = min((t for t in due if t is not None), default=None)
        if not waiting and (next_due is None or next_due > now):
            return ClaimResult([], next_due)
        with self._tx() as conn:
            conn.execute(
                "update jobs set state = 'waiting', order_key = cast(run_at * 1e9 as integer)"
                " where queue = ? and state in ('scheduled', 'delayed') and run_at <= ?",
                (self.name, now),
            )
            # Picked first, since RETURNING sees started_at only as this claim sets it.
            picked = conn.execute(
                "select rowid, started_at is null from jobs where queue = ?"
                " and state = 'waiting' order by priority desc, order_key limit ?",
                (self.name, limit),
            ).fetchall()
            first_runs = {rowid for rowid, never_started in picked if never_started}
            rows = (
                []
                if not picked
                else conn.execute(
                    "update jobs set state = 'active', attempts = attempts + 1, started_at = ?,"
                    " lease_until = ?, consumer = ?, lease_token = lower(hex(randomblob(8)))"
                    f" where rowid in ({','.join('?' * len(picked))}) returning rowid, id, name,"
                    " message, attempts, max_attempts, priority, order_key, lease_token",
                    (now, now + lease_seconds, consumer, *(rowid for rowid, _ in picked)),
                ).fetchall()
            )
            next_due = None
            if not rows:
                next_due = conn.execute(
                    "select min(run_at) from jobs where queue = ?"
                    " and state in ('scheduled', 'delayed')",
                    (self.name,),
                ).fetchone()[0]
        rows.sort(key=lambda r: (-r["priority"], r["order_key"]))
        claims = [
            Claim(
                r["id"],
                r["name"],
                bytes(r["message"]),
                r["attempts"],
                r["max_attempts"],
                r["lease_token"],
                r["rowid"] in first_runs,
            )
            for r in rows
        ]
        return ClaimResult(claims, next_due)

    def wait_for_jobs(self, timeout: float) -> None:
        self._seen = self._watcher.wait(self._seen, timeout)

    def wake(self) -> None:
        self._watcher.bump()

    def _bump_stats(self, conn: sqlite3.Connection, column: str, now: float) -> None:
        conn.execute(
            f"insert into job_stats (queue, minute, {column}) values (?, ?, 1)"
            f" on conflict (queue, minute) do update set {column} = {column} + 1",
            (self.name, int(now // 60)),
        )

    def complete_many(
        self,
        done: Sequence[tuple[Claim, Any]],
        keep_seconds: int,
        records: Sequence[KeptRecord] = (),
    ) -> list[bool]:
        now = time.time()
        owned = []
        with self._tx() as conn:
            for record in records:
                self._put_if_empty(conn, record.key, record.value, record.ttl, now)
            for claim, result in done:
                if keep_seconds > 0:
                    cursor = conn.execute(
                        "update jobs set state = 'completed', progress = 100, finished_at = ?,"
                        " result = ?, lease_until = null, lease_token = null where id = ?"
                        " and state = 'active' and lease_token = ?",
                        (now, json.dumps(result, default=str), claim.id, claim.token),
                    )
                else:
                    cursor = conn.execute(
                        "delete from jobs where id = ? and state = 'active' and lease_token = ?",
                        (claim.id, claim.token),
                    )
                owned.append(cursor.rowcount == 1)
            if any(owned):
                conn.execute(
                    "insert into job_stats (queue, minute, completed) values (?, ?, ?)"
                    " on conflict (queue, minute) do update set completed = completed + ?",
                    (self.name, int(now // 60), sum(owned), sum(owned)),
                )
        return owned

    def fail(self, claim: Claim, error: dict[str, Any], retry_delay: float | None) -> str | None:
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                "select errors from jobs where id = ? and state = 'active' and lease_token = ?",
                (claim.id, claim.token),
            ).fetchone()
            if row is None:
                return None
            errors = [*json.loads(row["errors"]), error][-MAX_ERRORS_KEPT:]
            if retry_delay is None:
                state, run_at, finished = "dead", None, now
            else:
                state, run_at, finished = "delayed", now + retry_delay, None
            conn.execute(
                "update jobs set state = ?, run_at = ?, finished_at = ?, errors = ?,"
                " lease_until = null, lease_token = null where id = ?",
                (state, run_at, finished, json.dumps(errors), claim.id),
            )
            self._bump_stats(conn, "failed", now)
        return state

    def release(self, claim: Claim) -> bool:
        with self._tx() as conn:
            cursor = conn.execute(
                "update jobs set state = 'waiting', attempts = attempts - 1, order_key = 0,"
                " lease_until = null, lease_token = null where id = ? and state = 'active'"
                " and lease_token = ?",
                (claim.id, claim.token),
            )
        self._watcher.bump()
        return cursor.rowcount == 1

    def touch(self, claim: Claim, lease_seconds: float, progress: int | None = None) -> bool:
        with self._tx() as conn:
            cursor = conn.execute(
                "update jobs set lease_until = ?, progress = coalesce(?, progress)"
                " where id = ? and state = 'active' and lease_token = ?",
                (time.time() + lease_seconds, progress, claim.id, claim.token),
            )
        return cursor.rowcount == 1

    def reap(self, max_stalls: int) -> list[str]:
        now = time.time()
        with self._tx() as conn:
            rows = conn.execute(
                "select id, stalls, errors from jobs where queue = ? and state = 'active'"
                " and lease_until < ? limit 500",
                (self.name, now),
            ).fetchall()
            for row in rows:
                stalls = row["stalls"] + 1
                if stalls > max_stalls:
                    stalled = error_record("Stalled", f"lease expired {stalls} times")
                    errors = [*json.loads(row["errors"]), stalled]
                    conn.execute(
                        "update jobs set state = 'dead', stalls = ?, finished_at = ?,"
                        " errors = ?, lease_until = null, lease_token = null where id = ?",
                        (stalls, now, json.dumps(errors[-MAX_ERRORS_KEPT:]), row["id"]),
                    )
                    self._bump_stats(conn, "failed", now)
                else:
                    conn.execute(
                        "update jobs set state = 'waiting', stalls = ?, attempts = attempts - 1,"
                        " order_key = 0, lease_until = null, lease_token = null where id = ?",
                        (stalls, row["id"]),
                    )
        return [row["id"] for row in rows]

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._read(f"select {_JOB_COLUMNS} from jobs where id = ?", (job_id,))
        return _decode_row(rows[0]) if rows else None

    def list_jobs(self, state: str, limit: int = 100) -> list[dict[str, Any]]:
        order = {
            "waiting": "priority desc, order_key",
            "scheduled": "run_at",
            "delayed": "run_at",
            "active": "started_at",
        }.get(state, "finished_at desc")
        rows = self._read(
            f"select {_JOB_COLUMNS} from jobs where queue = ? and state = ?"
            f" order by {order} limit ?",
            (self.name, state, limit),
        )
        return [_decode_row(row) for row in rows]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for row in self._read("select state, n from job_counts where queue = ?", (self.name,)):
            counts[row["state"]] = row["n"]
        return counts

    def window_counts(self, seconds: int) -> tuple[int, int]:
        since = int((time.time() - seconds) // 60)
        row = self._read(
            "select coalesce(sum(completed), 0), coalesce(sum(failed), 0) from job_stats"
            " where queue = ? and minute > ?",
            (self.name, since),
        )[0]
        return int(row[0]), int(row[1])

    def _job_state(self, conn: sqlite3.Connection, job_id: str) -> str:
        row = conn.execute(
            "select state from jobs where id = ? and queue = ?", (job_id, self.name)
        ).fetchone()
        if row is None:
            raise JobNotFound(f"job {job_id} not found in queue {self.name}")
        return str(row["state"])

    def retry_job(self, job_id: str, max_attempts: int) -> None:
        with self._tx() as conn:
            state = self._job_state(conn, job_id)
            if state != "dead":
                raise InvalidJobState(f"job {job_id} is {state}; only dead jobs can be retried")
            conn.execute(
                "update jobs set state = 'waiting', attempts = 0, stalls = 0, max_attempts = ?,"
                " order_key = ?, finished_at = null, progress = 0 where id = ?",
                (max_attempts, time.time_ns(), job_id),
            )
        self._watcher.bump()

    def remove_job(self, job_id: str) -> dict[str, Any]:
        with self._tx() as conn:
            state = self._job_state(conn, job_id)
            if state not in REMOVABLE:
                raise InvalidJobState(
                    f"job {job_id} is {state}; only waiting, scheduled, delayed or dead jobs"
                    " can be removed"
                )
            row = conn.execute(
                f"delete from jobs where id = ? returning {_JOB_COLUMNS}", (job_id,)
            ).fetchone()
        return _decode_row(row)

    def sweep(self, keep_completed: int, keep_failed: int) -> int:
        now = time.time()
        removed = 0
        for state, keep in (("completed", keep_completed), ("dead", keep_failed)):
            while True:
                with self._tx() as conn:
                    cursor = conn.execute(
                        "delete from jobs where rowid in (select rowid from jobs where queue = ?"
                        " and state = ? and finished_at < ? limit 2000)",
                        (self.name, state, now - keep),
                    )
                removed += cursor.rowcount
                if cursor.rowcount < 2000:
                    break
        with self._tx() as conn:
            conn.execute(
                "delete from job_stats where queue = ? and minute < ?",
                (self.name, int(now // 60) - 24 * 60),
            )
            conn.execute("delete from kv where expires_at is not null and expires_at < ?", (now,))
            conn.execute("delete from consumers where expires_at < ?", (now - 3600,))
        return removed

    def heartbeat(self, consumer: str, workers: int, ttl: float) -> None:
        with self._tx() as conn:
            conn.execute(
                "insert into consumers (queue, consumer, workers, expires_at) values (?,?,?,?)"
                " on conflict (queue, consumer) do update set workers = excluded.workers,"
                " expires_at = excluded.expires_at",
                (self.name, consumer, workers, time.time() + ttl),
            )

    def forget_consumer(self, consumer: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "delete from consumers where queue = ? and consumer = ?", (self.name, consumer)
            )

    def live_consumers(self) -> dict[str, int]:
        rows = self._read(
            "select consumer, workers from consumers where queue = ? and expires_at > ?",
            (self.name, time.time()),
        )
        return {row["consumer"]: row["workers"] for row in rows}

    def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                "select value, expires_at from kv where queue = ? and key = ?", (self.name, name)
            ).fetchone()
            if (
                row is not None
                and row["expires_at"] > now
                and bytes(row["value"]) != owner.encode()
            ):
                return False
            conn.execute(
                "insert or replace into kv (queue, key, value, expires_at) values (?,?,?,?)",
                (self.name, name, owner.encode(), now + ttl),
            )
        return True

    def flush_all(self) -> None:
        with self._tx() as conn:
            for table in ("jobs", "job_stats", "kv", "consumers"):
                conn.execute(f"delete from {table} where queue = ?", (self.name,))

    # Huey's key-value interface (locks, health records).
    def put_data(self, key: str | bytes, value: bytes, is_result: bool = False) -> None:
        with self._tx() as conn:
            conn.execute(
                "insert or replace into kv (queue, key, value, expires_at) values (?,?,?,null)",
                (self.name, _text(key), value),
            )

    def peek_data(self, key: str | bytes) -> Any:
        rows = self._read(
            "select value from kv where queue = ? and key = ?"
            " and (expires_at is null or expires_at > ?)",
            (self.name, _text(key), time.time()),
        )
        return bytes(rows[0]["value"]) if rows else EmptyData

    def pop_data(self, key: str | bytes) -> Any:
        with self._tx() as conn:
            row = conn.execute(
                "delete from kv where queue = ? and key = ? returning value",
                (self.name, _text(key)),
            ).fetchone()
        return bytes(row["value"]) if row else EmptyData

    def has_data_for_key(self, key: str | bytes) -> bool:
        return self.peek_data(key) is not EmptyData

    def put_if_empty(self, key: str | bytes, value: bytes, ttl: float | None = None) -> bool:
        with self._tx() as conn:
            return self._put_if_empty(conn, key, value, ttl, time.time())

    def _put_if_empty(
        self,
        conn: sqlite3.Connection,
        key: str | bytes,
        value: bytes,
        ttl: float | None,
        now: float,
    ) -> bool:
        conn.execute(
            "delete from kv where queue = ? and key = ? and expires_at < ?",
            (self.name, _text(key), now),
        )
        cursor = conn.execute(
            "insert or ignore into kv (queue, key, value, expires_at) values (?,?,?,?)",
            (self.name, _text(key), value, now + ttl if ttl else None),
        )
        return bool(cursor.rowcount == 1)

    def delete_data(self, key: str | bytes) -> bool:
        return self.pop_data(key) is not EmptyData


def _text(key: str | bytes) -> str:
    return key.decode() if isinstance(key, bytes) else key


# --------------------------------------------------------------------------- Redis

_LUA_HELPERS = """
local function now_seconds()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function queue_key(name) return KEYS[1] .. name end
local function job_key(id) return KEYS[2] .. id end
local function waiting_score(priority, seq) return (1000 - priority) * 1099511627776 + seq end
local function bump_stats(field, now)
  local key = queue_key('stats:' .. math.floor(now / 60))
  redis.call('HINCRBY', key, field, 1)
  redis.call('EXPIRE', key, 90000)
end
local function owned(jk, token)
  local v = redis.call('HMGET', jk, 'state', 'lease_token')
  return v[1] == 'active' and v[2] == token
end
local function append_error(jk, error_json)
  local errors = cjson.decode(redis.call('HGET', jk, 'errors') or '[]')
  table.insert(errors, cjson.decode(error_json))
  while #errors > %(max_errors)d do table.remove(errors, 1) end
  return cjson.encode(errors)
end
"""

# KEYS[1] = queue prefix, KEYS[2] = job prefix.  ARGV: count, then per job
# id, name, tenant, priority, max_attempts, message, run_at ('' = now).
_LUA_ENQUEUE = """
local now = now_seconds()
local n = tonumber(ARGV[1])
local woke = 0
-- One sequence step and one ZADD for the whole batch (in order), not one per job.
local seq = redis.call('INCRBY', queue_key('seq'), n) - n
local waiting = {}
for i = 0, n - 1 do
  local b = 2 + i * 7
  local id, priority, run_at = ARGV[b], tonumber(ARGV[b + 3]), ARGV[b + 6]
  local jk = job_key(id)
  local state = 'waiting'
  if run_at ~= '' and tonumber(run_at) > now then state = 'scheduled' end
  -- progress, attempts, stalls and errors start absent: readers take them as 0 and [].
  redis.call('HSET', jk, 'id', id, 'queue', KEYS[3], 'name', ARGV[b + 1],
    'tenant', ARGV[b + 2], 'state', state, 'priority', priority,
    'max_attempts', ARGV[b + 4], 'message', ARGV[b + 5], 'created_at', now)
  if state == 'scheduled' then
    redis.call('HSET', jk, 'run_at', run_at)
    redis.call('ZADD', queue_key('scheduled'), tonumber(run_at), id)
  else
    waiting[#waiting + 1] = waiting_score(priority, seq + i + 1)
    waiting[#waiting + 1] = id
  end
  woke = woke + 1
end
if #waiting > 0 then redis.call('ZADD', queue_key('waiting'), unpack(waiting)) end
-- Scheduled jobs wake a consumer too: it learns the new due time instead of sleeping on.
if woke > 0 then
  redis.call('LPUSH', queue_key('wake'), '1')
  redis.call('LTRIM', queue_key('wake'), 0, 63)
end
return n
"""

# ARGV: consumer, lease_seconds, limit
_LUA_CLAIM = """
local now = now_seconds()
for _, set in ipairs({'scheduled', 'delayed'}) do
  local due = redis.call('ZRANGEBYSCORE', queue_key(set), '-inf', now, 'LIMIT', 0, 200)
  for _, id in ipairs(due) do
    redis.call('ZREM', queue_key(set), id)
    local jk = job_key(id)
    local priority = tonumber(redis.call('HGET', jk, 'priority') or '0')
    local seq = redis.call('INCR', queue_key('seq'))
    redis.call('ZADD', queue_key('waiting'), waiting_score(priority, seq), id)
    redis.call('HSET', jk, 'state', 'waiting')
  end
end
local popped = redis.call('ZPOPMIN', queue_key('waiting'), tonumber(ARGV[3]))
local out = {}
local lease_until = now + tonumber(ARGV[2])
for i = 1, #popped, 2 do
  local id = popped[i]
  local jk = job_key(id)
  local attempts = redis.call('HINCRBY', jk, 'attempts', 1)
  local first_run = 1 - redis.call('HEXISTS', jk, 'started_at')
  local token = ARGV[1] .. '#' .. redis.call('INCR', queue_key('lease-seq'))
  redis.call('HSET', jk, 'state', 'active', 'started_at', now, 'lease_until', lease_until,
    'consumer', ARGV[1], 'lease_token', token)
  redis.call('ZADD', queue_key('active'), lease_until, id)
  local v = redis.call('HMGET', jk, 'name', 'message', 'max_attempts')
  table.insert(out, {id, v[1] or '', v[2] or '', attempts, tonumber(v[3] or '1'), token,
    first_run})
end
if #out == 0 then
  local next_due = nil
  for _, set in ipairs({'scheduled', 'delayed'}) do
    local first = redis.call('ZRANGE', queue_key(set), 0, 0, 'WITHSCORES')
    if #first > 0 and (next_due == nil or tonumber(first[2]) < next_due) then
      next_due = tonumber(first[2])
    end
  end
  if next_due then return {{}, tostring(next_due)} end
end
return {out, false}
"""

# ARGV: keep_seconds, job count, then id, token, result_json for each job, then key,
# value, ttl_ms ('0' = none) for each record kept with the completions
_LUA_COMPLETE = """
local now = now_seconds()
local keep = tonumber(ARGV[1])
local jobs_end = 2 + tonumber(ARGV[2]) * 3
local out = {}
for i = jobs_end + 1, #ARGV, 3 do
  if ARGV[i + 2] == '0' then
    redis.call('SET', ARGV[i], ARGV[i + 1], 'NX')
  else
    redis.call('SET', ARGV[i], ARGV[i + 1], 'PX', ARGV[i + 2], 'NX')
  end
end
for i = 3, jobs_end, 3 do
  local id = ARGV[i]
  local jk = job_key(id)
  if owned(jk, ARGV[i + 1]) then
    redis.call('ZREM', queue_key('active'), id)
    if keep > 0 then
      redis.call('HSET', jk, 'state', 'completed', 'progress', 100, 'finished_at', now,
        'result', ARGV[i + 2])
      redis.call('HDEL', jk, 'lease_until', 'lease_token')
      redis.call('ZADD', queue_key('completed'), now, id)
    else
      redis.call('DEL', jk)
    end
    bump_stats('completed', now)
    table.insert(out, 1)
  else
    table.insert(out, 0)
  end
end
return out
"""

# ARGV: id, token, error_json, retry_delay ('' = dead)
_LUA_FAIL = """
local jk = job_key(ARGV[1])
if not owned(jk, ARGV[2]) then return false end
local now = now_seconds()
redis.call('ZREM', queue_key('active'), ARGV[1])
local errors = append_error(jk, ARGV[3])
redis.call('HDEL', jk, 'lease_until', 'lease_token')
local state
if ARGV[4] == '' then
  state = 'dead'
  redis.call('HSET', jk, 'state', state, 'finished_at', now, 'errors', errors)
  redis.call('ZADD', queue_key('dead'), now, ARGV[1])
else
  state = 'delayed'
  local run_at = now + tonumber(ARGV[4])
  redis.call('HSET', jk, 'state', state, 'run_at', run_at, 'errors', errors)
  redis.call('ZADD', queue_key('delayed'), run_at, ARGV[1])
  -- wake an idle consumer so that it waits for this due time, not its full poll timeout
  redis.call('LPUSH', queue_key('wake'), '1')
  redis.call('LTRIM', queue_key('wake'), 0, 63)
end
bump_stats('failed', now)
return state
"""

# ARGV: id, token
_LUA_RELEASE = """
local jk = job_key(ARGV[1])
if not owned(jk, ARGV[2]) then return 0 end
redis.call('ZREM', queue_key('active'), ARGV[1])
local priority = tonumber(redis.call('HGET', jk, 'priority'))
redis.call('HINCRBY', jk, 'attempts', -1)
redis.call('HSET', jk, 'state', 'waiting')
redis.call('HDEL', jk, 'lease_until', 'lease_token')
redis.call('ZADD', queue_key('waiting'), waiting_score(priority, 0), ARGV[1])
redis.call('LPUSH', queue_key('wake'), '1')
redis.call('LTRIM', queue_key('wake'), 0, 63)
return 1
"""

# ARGV: id, token, lease_seconds, progress ('' = unchanged)
_LUA_TOUCH = """
local jk = job_key(ARGV[1])
if not owned(jk, ARGV[2]) then return 0 end
local lease_until = now_seconds() + tonumber(ARGV[3])
redis.call('HSET', jk, 'lease_until', lease_until)
if ARGV[4] ~= '' then redis.call('HSET', jk, 'progress', ARGV[4]) end
redis.call('ZADD', queue_key('active'), lease_until, ARGV[1])
return 1
"""

# ARGV: max_stalls, stalled_error_json
_LUA_REAP = """
local now = now_seconds()
local expired = redis.call('ZRANGEBYSCORE', queue_key('active'), '-inf', now, 'LIMIT', 0, 500)
for _, id in ipairs(expired) do
  local jk = job_key(id)
  redis.call('ZREM', queue_key('active'), id)
  local stalls = redis.call('HINCRBY', jk, 'stalls', 1)
  redis.call('HDEL', jk, 'lease_until', 'lease_token')
  if stalls > tonumber(ARGV[1]) then
    redis.call('HSET', jk, 'state', 'dead', 'finished_at', now,
      'errors', append_error(jk, ARGV[2]))
    redis.call('ZADD', queue_key('dead'), now, id)
    bump_stats('failed', now)
  else
    local priority = tonumber(redis.call('HGET', jk, 'priority') or '0')
    redis.call('HINCRBY', jk, 'attempts', -1)
    redis.call('HSET', jk, 'state', 'waiting')
    redis.call('ZADD', queue_key('waiting'), waiting_score(priority, 0), id)
  end
end
if #expired > 0 then redis.call('LPUSH', queue_key('wake'), '1') end
return expired
"""

# ARGV: id, max_attempts
_LUA_RETRY = """
local jk = job_key(ARGV[1])
local v = redis.call('HMGET', jk, 'state', 'queue', 'priority')
if not v[1] or v[2] ~= KEYS[3] then return 'missing' end
if v[1] ~= 'dead' then return v[1] end
redis.call('ZREM', queue_key('dead'), ARGV[1])
local seq = redis.call('INCR', queue_key('seq'))
redis.call('HSET', jk, 'state', 'waiting', 'attempts', 0, 'stalls', 0, 'progress', 0,
  'max_attempts', ARGV[2])
redis.call('HDEL', jk, 'finished_at')
redis.call('ZADD', queue_key('waiting'), waiting_score(tonumber(v[3]), seq), ARGV[1])
redis.call('LPUSH', queue_key('wake'), '1')
return 'ok'
"""

# ARGV: id, removable states joined by ','
_LUA_REMOVE = """
local jk = job_key(ARGV[1])
local v = redis.call('HMGET', jk, 'state', 'queue')
if not v[1] or v[2] ~= KEYS[3] then return {'missing'} end
if not string.find(',' .. ARGV[2] .. ',', ',' .. v[1] .. ',', 1, true) then return {v[1]} end
local all = redis.call('HGETALL', jk)
redis.call('ZREM', queue_key(v[1]), ARGV[1])
redis.call('DEL', jk)
return {'ok', all}
"""

# ARGV: state, cutoff, batch
_LUA_SWEEP = """
local ids = redis.call('ZRANGEBYSCORE', queue_key(ARGV[1]), '-inf', ARGV[2], 'LIMIT', 0,
  tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('DEL', job_key(id))
  redis.call('ZREM', queue_key(ARGV[1]), id)
end
return #ids
"""

# KEYS[4] = lock key. ARGV: owner, ttl_ms
_LUA_LOCK = """
local holder = redis.call('GET', KEYS[4])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[2])
return 1
"""

_REDIS_STATE_SETS = ("waiting", "scheduled", "active", "delayed", "completed", "dead")
_REDIS_INT_FIELDS = ("priority", "progress", "attempts", "max_attempts", "stalls")
_REDIS_FLOAT_FIELDS = ("run_at", "created_at", "started_at", "finished_at", "lease_until")


def _decode_hash(raw: dict[bytes, bytes]) -> dict[str, Any]:
    job: dict[str, Any] = {k.decode(): v for k, v in raw.items()}
    for key, value in list(job.items()):
        if key != "message":
            job[key] = value.decode()
    for key in _REDIS_INT_FIELDS:
        job[key] = int(job[key]) if key in job else 0
    for key in _REDIS_FLOAT_FIELDS:
        job[key] = float(job[key]) if job.get(key) not in (None, "") else None
    job["errors"] = json.loads(job.get("errors", "[]"))
    job["result"] = json.loads(job["result"]) if job.get("result") else None
    job.setdefault("consumer", None)
    return job


class RedisJobStore(JobStore):
    """Keys: crmqueue:q:<queue>:<index> sorted sets and crmqueue:job:<id> hashes."""

    blocking = True

    def __init__(
        self,
        name: str,
        url: str = "redis://127.0.0.1:6379/0",
        connect_timeout: float = 5.0,
        pool: redis.ConnectionPool | None = None,
        prefix: str = "crmqueue",
    ) -> None:
        super().__init__(name)
        self.url = url
        self.pool = pool or redis_pool(url, connect_timeout)
        # redis-py's command stubs are unions of sync and async results; Any keeps them honest here.
        self.conn: Any = redis.Redis(connection_pool=self.pool)
        self._keys = [f"{prefix}:q:{name}:", f"{prefix}:job:", name]
        self._local = threading.local()

        def script(source: str) -> _Script:
            return _Script(self.conn, source)

        helpers = _LUA_HELPERS % {"max_errors": MAX_ERRORS_KEPT}
        self._enqueue = script(helpers + _LUA_ENQUEUE)
        self._claim = script(helpers + _LUA_CLAIM)
        self._complete = script(helpers + _LUA_COMPLETE)
        self._fail = script(helpers + _LUA_FAIL)
        self._release = script(helpers + _LUA_RELEASE)
        self._touch = script(helpers + _LUA_TOUCH)
        self._reap = script(helpers + _LUA_REAP)
        self._retry = script(helpers + _LUA_RETRY)
        self._remove = script(helpers + _LUA_REMOVE)
        self._sweep = script(helpers + _LUA_SWEEP)
        self._lock = script(helpers + _LUA_LOCK)

    def _qkey(self, suffix: str) -> str:
        return self._keys[0] + suffix

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StorageUnavailable(f"Redis storage {_masked(self.url)}: {exc}") from exc

    def ping(self) -> None:
        with self._guard():
            self.conn.ping()

    def enqueue_jobs(self, jobs: Sequence[NewJob]) -> None:
        for start in range(0, len(jobs), 500):
            chunk = jobs[start : start + 500]
            args: list[Any] = [len(chunk)]
            for job in chunk:
                args += [
                    job.id, job.name, job.tenant, job.priority, job.max_attempts, job.message,
                    "" if job.run_at is None else repr(job.run_at),
                ]  # fmt: skip
            with self._guard():
                self._enqueue(keys=self._keys, args=args)

    def claim(self, consumer: str, lease_seconds: float, limit: int = 1) -> ClaimResult:
        with self._guard():
            rows, next_due = self._claim(keys=self._keys, args=[consumer, lease_seconds, limit])
        claims = [
            Claim(
                r[0].decode(), r[1].decode(), bytes(r[2]), int(r[3]), int(r[4]), r[5].decode(),
                r[6] == 1,
            )
            for r in rows
        ]  # fmt: skip
        return ClaimResult(claims, float(next_due) if next_due else None)

    def _blocking_conn(self) -> Any:
        conn = getattr(self._local, "blocking", None)
        if conn is None:
            conn = redis.Redis(connection_pool=self.pool)
            self._local.blocking = conn
        return conn

    def wait_for_jobs(self, timeout: float) -> None:
        with self._guard():
            self._blocking_conn().brpop([self._qkey("wake")], timeout=max(timeout, 0.01))

    def wake(self) -> None:
        with self._guard():
            self.conn.lpush(self._qkey("wake"), "1")

    def complete_many(
        self,
        done: Sequence[tuple[Claim, Any]],
        keep_seconds: int,
        records: Sequence[KeptRecord] = (),
    ) -> list[bool]:
        args: list[Any] = [keep_seconds, len(done)]
        for claim, result in done:
            args += [claim.id, claim.token, json.dumps(result, default=str)]
        for record in records:
            ttl_ms = max(1, int(record.ttl * 1000)) if record.ttl else 0
            args += [self._kv(record.key), record.value, ttl_ms]
        with self._guard():
            return [bool(flag) for flag in self._complete(keys=self._keys, args=args)]

    def fail(self, claim: Claim, error: dict[str, Any], retry_delay: float | None) -> str | None:
        delay = "" if retry_delay is None else repr(retry_delay)
        with self._guard():
            state = self._fail(
                keys=self._keys, args=[claim.id, claim.token, json.dumps(error), delay]
            )
        return state.decode() if state else None

    def release(self, claim: Claim) -> bool:
        with self._guard():
            return bool(self._release(keys=self._keys, args=[claim.id, claim.token]))

    def touch(self, claim: Claim, lease_seconds: float, progress: int | None = None) -> bool:
        args: list[Any] = [
            claim.id,
            claim.token,
            lease_seconds,
            "" if progress is None else progress,
        ]
        with self._guard():
            return bool(self._touch(keys=self._keys, args=args))

    def reap(self, max_stalls: int) -> list[str]:
        stalled = error_record("Stalled", f"lease expired more than {max_stalls} times")
        with self._guard():
            ids = self._reap(keys=self._keys, args=[max_stalls, json.dumps(stalled)])
        return [i.decode() for i in ids]

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self._guard():
            raw = self.conn.hgetall(self._keys[1] + job_id)
        return _decode_hash(raw) if raw else None

    def list_jobs(self, state: str, limit: int = 100) -> list[dict[str, Any]]:
        key = self._qkey(state)
        with self._guard():
            if state in ("completed", "dead"):
                ids = self.conn.zrevrange(key, 0, limit - 1)
            else:
                ids = self.conn.zrange(key, 0, limit - 1)
            pipe = self.conn.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(self._keys[1] + job_id.decode())
            rows = pipe.execute()
        return [_decode_hash(raw) for raw in rows if raw]

    def counts(self) -> dict[str, int]:
        with self._guard():
            pipe = self.conn.pipeline(transaction=False)
            for state in _REDIS_STATE_SETS:
                pipe.zcard(self._qkey(state))
            values = pipe.execute()
        return dict(zip(_REDIS_STATE_SETS, (int(v) for v in values), strict=True))

    def window_counts(self, seconds: int) -> tuple[int, int]:
        current = int(time.time() // 60)
        minutes = range(current - seconds // 60 + 1, current + 1)
        with self._guard():
            pipe = self.conn.pipeline(transaction=False)
            for minute in minutes:
                pipe.hmget(self._qkey(f"stats:{minute}"), "completed", "failed")
            rows = pipe.execute()
        completed = sum(int(r[0] or 0) for r in rows)
        failed = sum(int(r[1] or 0) for r in rows)
        return completed, failed

    def retry_job(self, job_id: str, max_attempts: int) -> None:
        with self._guard():
            outcome = self._retry(keys=self._keys, args=[job_id, max_attempts]).decode()
        if outcome == "missing":
            raise JobNotFound(f"job {job_id} not found in queue {self.name}")
        if outcome != "ok":
            raise InvalidJobState(f"job {job_id} is {outcome}; only dead jobs can be retried")

    def remove_job(self, job_id: str) -> dict[str, Any]:
        with self._guard():
            outcome = self._remove(keys=self._keys, args=[job_id, ",".join(REMOVABLE)])
        status = outcome[0].decode()
        if status == "missing":
            raise JobNotFound(f"job {job_id} not found in queue {self.name}")
        if status != "ok":
            raise InvalidJobState(
                f"job {job_id} is {status}; only waiting, scheduled, delayed or dead jobs"
                " can be removed"
            )
        flat = outcome[1]
        return _decode_hash(dict(zip(flat[::2], flat[1::2], strict=True)))

    def sweep(self, keep_completed: int, keep_failed: int) -> int:
        now = time.time()
        removed = 0
        for state, keep in (("completed", keep_completed), ("dead", keep_failed)):
            while True:
                with self._guard():
                    n = int(self._sweep(keys=self._keys, args=[state, repr(now - keep), 1000]))
                removed += n
                if n < 1000:
                    break
        with self._guard():
            self.conn.zremrangebyscore(self._qkey("consumers"), "-inf", now - 3600)
        return removed

    def heartbeat(self, consumer: str, workers: int, ttl: float) -> None:
        with self._guard():
            pipe = self.conn.pipeline(transaction=True)
            pipe.zadd(self._qkey("consumers"), {consumer: time.time() + ttl})
            pipe.hset(self._qkey("consumer-workers"), consumer, workers)
            pipe.execute()

    def forget_consumer(self, consumer: str) -> None:
        with self._guard():
            pipe = self.conn.pipeline(transaction=True)
            pipe.zrem(self._qkey("consumers"), consumer)
            pipe.hdel(self._qkey("consumer-workers"), consumer)
            pipe.execute()

    def live_consumers(self) -> dict[str, int]:
        with self._guard():
            ids = self.conn.zrangebyscore(self._qkey("consumers"), time.time(), "+inf")
            workers = self.conn.hmget(self._qkey("consumer-workers"), ids) if ids else []
        return {i.decode(): int(w or 0) for i, w in zip(ids, workers, strict=True)}

    def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        keys = [*self._keys, self._qkey(f"lock:{name}")]
        with self._guard():
            return bool(self._lock(keys=keys, args=[owner, int(ttl * 1000)]))

    def flush_all(self) -> None:
        with self._guard():
            ids: list[bytes] = []
            for state in _REDIS_STATE_SETS:
                ids += self.conn.zrange(self._qkey(state), 0, -1)
            for chunk in _chunks(ids, 500):
                self.conn.delete(*(self._keys[1] + i.decode() for i in chunk))
            keys = list(self.conn.scan_iter(match=self._qkey("*"), count=1000))
            for chunk in _chunks(keys, 500):
                self.conn.delete(*chunk)

    def _kv(self, key: str | bytes) -> str:
        return self._qkey("kv:" + _text(key))

    def put_data(self, key: str | bytes, value: bytes, is_result: bool = False) -> None:
        with self._guard():
            self.conn.set(self._kv(key), value)

    def peek_data(self, key: str | bytes) -> Any:
        with self._guard():
            value = self.conn.get(self._kv(key))
        return EmptyData if value is None else value

    def pop_data(self, key: str | bytes) -> Any:
        with self._guard():
            value = self.conn.getdel(self._kv(key))
        return EmptyData if value is None else value

    def has_data_for_key(self, key: str | bytes) -> bool:
        with self._guard():
            return bool(self.conn.exists(self._kv(key)))

    def put_if_empty(self, key: str | bytes, value: bytes, ttl: float | None = None) -> bool:
        with self._guard():
            px = int(ttl * 1000) if ttl else None
            return bool(self.conn.set(self._kv(key), value, nx=True, px=px))

    def delete_data(self, key: str | bytes) -> bool:
        with self._guard():
            return bool(self.conn.delete(self._kv(key)))


class _Script:
    """A Lua script called by its SHA1, loaded again if the server lost it (a restart).
    redis-py's Script does the same, with a per-call import and pipeline check that cost
    about 5 µs of each single enqueue."""

    def __init__(self, conn: redis.Redis, source: str) -> None:
        self.conn = conn
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return self.conn.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.sha = self.conn.script_load(self.source)
            return self.conn.evalsha(self.sha, len(keys), *keys, *args)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _masked(url: str) -> str:
    from crmqueue.config import mask_url

    return mask_url(url)


_POOLS: dict[str, redis.ConnectionPool] = {}
_POOLS_GUARD = threading.Lock()


def redis_pool(url: str, connect_timeout: float) -> redis.ConnectionPool:
    """One pool per URL and process; connect and socket timeouts keep calls bounded."""
    key = f"{os.getpid()}:{url}"
    with _POOLS_GUARD:
        if key not in _POOLS:
            _POOLS[key] = redis.ConnectionPool.from_url(
                url,
                socket_connect_timeout=connect_timeout,
                # Bounded calls: a hung server raises instead of hanging a worker or a client.
                # Blocking pops wait at most 1 s, well inside this.
                socket_timeout=max(connect_timeout, 2.0),
                health_check_interval=30,
            )
        return _POOLS[key]


def open_store(url: str, queue: str, connect_timeout: float = 5.0) -> JobStore:
    """The JobStore for one queue on the storage named by `url`."""
    if url.startswith("sqlite://"):
        return SqliteJobStore(queue, filename=sqlite_path(url), timeout=connect_timeout)
    return RedisJobStore(queue, url=url, connect_timeout=connect_timeout)


def sqlite_path(url: str) -> str:
    """sqlite:///relative/path.db or sqlite:////absolute/path.db to a file name."""
    path = url[len("sqlite://") :]
    if path.startswith("/"):
        path = path[1:]
    if not path:
        raise ValueError(f"{url}: no database file named")
    return path
