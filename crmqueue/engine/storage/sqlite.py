"""The SQLite store: all queues in one database file (WAL), one transaction a step."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from huey.constants import EmptyData

from crmqueue.engine.storage.contract import (
    EVENT_TYPES,
    MAX_ERRORS_KEPT,
    REMOVABLE,
    STATES,
    TOTALS,
    Claim,
    ClaimResult,
    JobStore,
    KeptRecord,
    NewJob,
    Quota,
    error_record,
    error_summary,
    key_text,
    postponed_errors,
)
from crmqueue.errors import InvalidJobState, JobNotFound, StorageUnavailable

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
create table if not exists job_totals (
    queue text not null, name text not null, n integer not null default 0,
    primary key (queue, name)
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
# Job events (crmqueue.engine.events): one row a transition, written in the transaction
# that makes it; seq is the cursor. Not autoincrement (its sqlite_sequence row would be
# one more page written by every transaction): the trim always keeps the newest rows, so
# max(seq) + 1 never reuses a cursor. Compact: type and state are their index in
# EVENT_TYPES and _EVENT_STATES (one byte, no text to copy), the state passed by each
# transition rather than read back; no index besides seq. The job's own fields (id,
# queue, name, tenant) are copied, since an event outlives its job (sweep, removal).
_EVENT_STATES = (*STATES, "removed")
_TYPE_CODE = {kind: code for code, kind in enumerate(EVENT_TYPES)}
_STATE_CODE = {state: code for code, state in enumerate(_EVENT_STATES)}
_SQLITE_EVENTS_SCHEMA = """
create table if not exists job_events (
    seq integer primary key,
    type integer not null, job_id text not null, queue text not null, name text not null,
    tenant text not null, state integer not null, progress integer not null default 0,
    attempt integer not null default 0, consumer text, error text, at real not null
);
"""
_SQLITE_SCHEMA += _SQLITE_EVENTS_SCHEMA
_EVENT_INSERT = (
    "insert into job_events (type, state, progress, error, at, job_id, queue, name, tenant,"
    " attempt, consumer) select ?, ?, coalesce(?, progress), ?, ?, id, queue, name, tenant,"
    " attempts, consumer from jobs where "
)

_EVENT_INSERT_EACH = {
    key: "insert into job_events (type, state, progress, at, job_id, queue, name, tenant,"
    " attempt, consumer) select ?, ?, jobs.progress, ?, jobs.id, jobs.queue, jobs.name,"
    " jobs.tenant, jobs.attempts, jobs.consumer from json_each(?) as batch cross join jobs"
    f" on jobs.{key} = batch.value"
    for key in ("rowid", "id")
}


def _code_case(column: str, names: Sequence[str]) -> str:
    return (
        f"case {column} " + " ".join(f"when '{n}' then {i}" for i, n in enumerate(names)) + " end"
    )


# Version 3's events table (type and state as text), and its conversion to version 4's.
_SQLITE_EVENTS_V3 = """
create table if not exists job_events (
    seq integer primary key,
    type text not null, job_id text not null, queue text not null, name text not null,
    tenant text not null, state text not null, progress integer not null default 0,
    attempt integer not null default 0, consumer text, error text, at real not null
);
"""
_SQLITE_EVENTS_TO_V4 = f"""
alter table job_events rename to job_events_v3;
{_SQLITE_EVENTS_SCHEMA}
insert into job_events (seq, type, job_id, queue, name, tenant, state, progress, attempt,
    consumer, error, at)
select seq, {_code_case("type", EVENT_TYPES)}, job_id, queue, name, tenant,
    {_code_case("state", _EVENT_STATES)}, progress, attempt, consumer, error, at
from job_events_v3;
drop table job_events_v3;
"""

SQLITE_SCHEMA_VERSION = 4
_SQLITE_UPGRADES = {
    1: "drop trigger if exists jobs_count_insert; drop index if exists jobs_lease;",
    2: _SQLITE_EVENTS_V3,
    3: _SQLITE_EVENTS_TO_V4,
}

# Counters since the queue was created (Prometheus *_total): see JobStore.totals.
_TOTALS_TABLE = (
    "create table if not exists job_totals (queue text not null, name text not null,"
    " n integer not null default 0, primary key (queue, name))"
)

# Daily quota counters (crmqueue.engine.quotas): created at open like job_totals, no
# version step; rows past expires_at are deleted now and then by a quota enqueue.
_QUOTA_TABLE = (
    "create table if not exists quota_counts (queue text not null, tenant text not null,"
    " day text not null, n integer not null, expires_at real not null,"
    " primary key (queue, tenant, day))"
)

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

    def __init__(
        self,
        name: str,
        filename: str = "crmqueue-data/queues.db",
        timeout: float = 5.0,
        events_max_len: int = 10_000,
    ):
        super().__init__(name)
        self.filename = filename
        self.timeout = timeout
        self.events_max_len = events_max_len
        # Trimmed once this process has written this many events since its last trim.
        self._events_trim_every = max(1, min(500, events_max_len // 10))
        self._events_untrimmed = 0
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
        conn.execute(_TOTALS_TABLE)  # added after schema 2 shipped: no version step needed
        conn.execute(_QUOTA_TABLE)
        self._quota_writes = 0
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

    def enqueue_jobs(
        self, jobs: Sequence[NewJob], skip_existing: bool = False, quotas: Sequence[Quota] = ()
    ) -> None:
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
        with self._tx() as conn:
            if skip_existing:
                taken = self._existing(conn, [row[0] for row in rows])
                rows = [row for row in rows if row[0] not in taken]
            if quotas:
                self._count_quotas(conn, quotas, Counter(row[3] for row in rows), now)
            added = Counter((row[1], row[4]) for row in rows)
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
            if self.events_max_len and rows:
                self._new_events(conn, rows, now)
        self._watcher.bump()

    def _count_quotas(
        self,
        conn: sqlite3.Connection,
        quotas: Sequence[Quota],
        wanted: Counter[str],
        now: float,
    ) -> None:
        """Check every quota against the jobs about to be stored, then count them; inside
        enqueue_jobs' write transaction (begin immediate), so producers take turns."""
        self._quota_writes += 1
        if self._quota_writes % 1000 == 1:  # amortised: past days' counters go
            conn.execute("delete from quota_counts where expires_at < ?", (now - 3600,))
        asked = [(quota, wanted[quota.tenant]) for quota in quotas if wanted[quota.tenant]]
        for quota, n in asked:
            row = conn.execute(
                "select n from quota_counts where queue = ? and tenant = ? and day = ?",
                (self.name, quota.tenant, quota.day),
            ).fetchone()
            used = row[0] if row else 0
            if used + n > quota.limit:
                raise quota.exceeded(self.name, used, n)
        conn.executemany(
            "insert into quota_counts (queue, tenant, day, n, expires_at) values (?,?,?,?,?)"
            " on conflict (queue, tenant, day) do update set n = n + excluded.n",
            [(self.name, q.tenant, q.day, n, q.reset_at) for q, n in asked],
        )

    @staticmethod
    def _existing(conn: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
        taken: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found = conn.execute(f"select id from jobs where id in ({marks})", chunk)
            taken.update(row[0] for row in found)
        return taken

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
            if rows:
                self._batch_events(
                    conn, "active", "active", "rowid", [r["rowid"] for r in rows], now
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
                r["priority"],
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

    def _bump_totals(self, conn: sqlite3.Connection, **counts: int) -> None:
        conn.executemany(
            "insert into job_totals (queue, name, n) values (?, ?, ?)"
            " on conflict (queue, name) do update set n = n + excluded.n",
            [(self.name, name, n) for name, n in counts.items()],
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
                    self._events(
                        conn, "completed", "completed",
                        "id = ? and state = 'active' and lease_token = ?",
                        (claim.id, claim.token), now, progress=100,
                    )  # fmt: skip
                    cursor = conn.execute(
                        "delete from jobs where id = ? and state = 'active' and lease_token = ?",
                        (claim.id, claim.token),
                    )
                owned.append(cursor.rowcount == 1)
            kept = [c.id for (c, _), mine in zip(done, owned, strict=True) if mine]
            if keep_seconds > 0 and kept:
                self._batch_events(conn, "completed", "completed", "id", kept, now)
            if any(owned):
                conn.execute(
                    "insert into job_stats (queue, minute, completed) values (?, ?, ?)"
                    " on conflict (queue, minute) do update set completed = completed + ?",
                    (self.name, int(now // 60), sum(owned), sum(owned)),
                )
                self._bump_totals(conn, completed=sum(owned))
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
            summary = error_summary(error)
            self._events(conn, "failed", state, "id = ?", (claim.id,), now, error=summary)
            then = "dead" if state == "dead" else "retrying"
            self._events(conn, then, state, "id = ?", (claim.id,), now, error=summary)
            self._bump_stats(conn, "failed", now)
            self._bump_totals(conn, failed=1, **{"dead" if state == "dead" else "retried": 1})
        return state

    def postpone(self, claim: Claim, delay: float, reason: str) -> bool:
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                "select errors from jobs where id = ? and state = 'active' and lease_token = ?",
                (claim.id, claim.token),
            ).fetchone()
            if row is None:
                return False
            errors = postponed_errors(json.loads(row["errors"]), reason, now)
            conn.execute(
                "update jobs set state = 'delayed', run_at = ?, attempts = attempts - 1,"
                " errors = ?, lease_until = null, lease_token = null where id = ?",
                (now + delay, json.dumps(errors), claim.id),
            )
            self._events(
                conn, "postponed", "delayed", "id = ?", (claim.id,), now, error=reason[:300]
            )
        return True

    def release(self, claim: Claim) -> bool:
        with self._tx() as conn:
            cursor = conn.execute(
                "update jobs set state = 'waiting', attempts = attempts - 1, order_key = 0,"
                " lease_until = null, lease_token = null where id = ? and state = 'active'"
                " and lease_token = ?",
                (claim.id, claim.token),
            )
            if cursor.rowcount == 1:
                self._events(conn, "released", "waiting", "id = ?", (claim.id,), time.time())
        self._watcher.bump()
        return cursor.rowcount == 1

    def touch(self, claim: Claim, lease_seconds: float, progress: int | None = None) -> bool:
        with self._tx() as conn:
            cursor = conn.execute(
                "update jobs set lease_until = ?, progress = coalesce(?, progress)"
                " where id = ? and state = 'active' and lease_token = ?",
                (time.time() + lease_seconds, progress, claim.id, claim.token),
            )
            if progress is not None and cursor.rowcount == 1:
                self._events(conn, "progress", "active", "id = ?", (claim.id,), time.time())
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
                    self._bump_totals(conn, failed=1, dead=1)
                else:
                    conn.execute(
                        "update jobs set state = 'waiting', stalls = ?, attempts = attempts - 1,"
                        " order_key = 0, lease_until = null, lease_token = null where id = ?",
                        (stalls, row["id"]),
                    )
                after = "dead" if stalls > max_stalls else "waiting"
                self._events(conn, "stalled", after, "id = ?", (row["id"],), now, error=_STALLED)
                if stalls > max_stalls:
                    self._events(conn, "dead", "dead", "id = ?", (row["id"],), now, error=_STALLED)
            if rows:
                self._bump_totals(conn, stalled=len(rows))
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

    def tenant_counts(
        self, states: Sequence[str], tenant: str | None = None
    ) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {state: {} for state in states}
        # "failed": delayed jobs that failed an attempt (retrying), read with `delayed`.
        marks = ",".join("?" * len(states))
        sql = (
            "select state, tenant, count(*), sum(attempts > 0) from jobs"
            f" where queue = ? and state in ({marks})"
        )
        params: list[Any] = [self.name, *states]
        if "failed" in states and "delayed" not in states:
            params.append("delayed")
            sql = sql.replace(f"({marks})", f"({marks},?)")
        if tenant is not None:
            sql += " and tenant = ?"
            params.append(tenant)
        for state, who, n, tried in self._read(sql + " group by state, tenant", params):
            if state in found:
                found[state][who] = n
            if state == "delayed" and "failed" in found and tried:
                found["failed"][who] = tried
        return found

    def quota_used(self, tenant: str, day: str) -> int:
        rows = self._read(
            "select n from quota_counts where queue = ? and tenant = ? and day = ?",
            (self.name, tenant, day),
        )
        return int(rows[0][0]) if rows else 0

    def window_counts(self, seconds: int) -> tuple[int, int]:
        since = int((time.time() - seconds) // 60)
        row = self._read(
            "select coalesce(sum(completed), 0), coalesce(sum(failed), 0) from job_stats"
            " where queue = ? and minute > ?",
            (self.name, since),
        )[0]
        return int(row[0]), int(row[1])

    def totals(self) -> dict[str, int]:
        counts = dict.fromkeys(TOTALS, 0)
        for row in self._read("select name, n from job_totals where queue = ?", (self.name,)):
            counts[row["name"]] = row["n"]
        return counts

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
            self._events(conn, "replayed", "waiting", "id = ?", (job_id,), time.time())
        self._watcher.bump()

    def remove_job(self, job_id: str) -> dict[str, Any]:
        with self._tx() as conn:
            state = self._job_state(conn, job_id)
            if state not in REMOVABLE:
                raise InvalidJobState(
                    f"job {job_id} is {state}; only waiting, scheduled, delayed or dead jobs"
                    " can be removed"
                )
            self._events(conn, "removed", "removed", "id = ?", (job_id,), time.time())
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
            for table in ("jobs", "job_stats", "job_totals", "kv", "consumers"):
                conn.execute(f"delete from {table} where queue = ?", (self.name,))

    # Huey's key-value interface (locks, health records).
    def put_data(self, key: str | bytes, value: bytes, is_result: bool = False) -> None:
        with self._tx() as conn:
            conn.execute(
                "insert or replace into kv (queue, key, value, expires_at) values (?,?,?,null)",
                (self.name, key_text(key), value),
            )

    def peek_data(self, key: str | bytes) -> Any:
        rows = self._read(
            "select value from kv where queue = ? and key = ?"
            " and (expires_at is null or expires_at > ?)",
            (self.name, key_text(key), time.time()),
        )
        return bytes(rows[0]["value"]) if rows else EmptyData

    def pop_data(self, key: str | bytes) -> Any:
        with self._tx() as conn:
            row = conn.execute(
                "delete from kv where queue = ? and key = ? returning value",
                (self.name, key_text(key)),
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
            (self.name, key_text(key), now),
        )
        cursor = conn.execute(
            "insert or ignore into kv (queue, key, value, expires_at) values (?,?,?,?)",
            (self.name, key_text(key), value, now + ttl if ttl else None),
        )
        return bool(cursor.rowcount == 1)

    def delete_data(self, key: str | bytes) -> bool:
        return self.pop_data(key) is not EmptyData

    # Job events (crmqueue.engine.events).
    def _events(
        self,
        conn: sqlite3.Connection,
        kind: str,
        state: str,
        where: str,
        params: Sequence[Any],
        now: float,
        *,
        progress: int | None = None,
        error: str | None = None,
    ) -> None:
        """One event row per job matching `where` (one statement for a batch), from its
        row as this transaction left it; `state`: the job's state after the transition
        (known to every caller, so not read back), `progress`: what to record instead of
        the row's, for a row about to go."""
        if self.events_max_len:
            cursor = conn.execute(
                _EVENT_INSERT + where,
                (_TYPE_CODE[kind], _STATE_CODE[state], progress, error, now, *params),
            )
            self._trim_events(conn, cursor.rowcount)

    def _batch_events(
        self,
        conn: sqlite3.Connection,
        kind: str,
        state: str,
        key: str,
        values: Sequence[Any],
        now: float,
    ) -> None:
        """`_events` for the jobs whose `key` ("rowid" or "id") is one of `values` (a
        claim's or a group commit's batch): one statement walking a JSON array of them,
        each a lookup by that key. (`key in (?, ...)` would build a temporary b-tree
        first, a third of the cost of the whole event write.)"""
        if len(values) == 1:
            self._events(conn, kind, state, f"{key} = ?", values, now)
        elif self.events_max_len:
            cursor = conn.execute(
                _EVENT_INSERT_EACH[key],
                (_TYPE_CODE[kind], _STATE_CODE[state], now, _json_array(key, values)),
            )
            self._trim_events(conn, cursor.rowcount)

    def _new_events(
        self, conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]], now: float
    ) -> None:
        if len(rows) == 1:  # a single enqueue: execute costs half of executemany
            row = rows[0]
            conn.execute(_NEW_EVENT, (*row[:4], _STATE_CODE[row[4]], now))
        else:
            conn.executemany(_NEW_EVENT, [(*row[:4], _STATE_CODE[row[4]], now) for row in rows])
        self._trim_events(conn, len(rows))

    def _trim_events(self, conn: sqlite3.Connection, written: int) -> None:
        """Keep about events_max_len events: amortised, a delete once this process has
        written a tenth of the cap (500 at most) since its last one."""
        self._events_untrimmed += written
        if self._events_untrimmed >= self._events_trim_every:
            self._events_untrimmed = 0
            conn.execute(
                "delete from job_events where seq <= (select max(seq) from job_events) - ?",
                (self.events_max_len,),
            )

    def read_events(
        self, after: str, limit: int = 500, timeout: float = 0.0
    ) -> list[dict[str, Any]]:
        seen = self._watcher.version
        rows = self._read(_EVENT_SELECT, (_sqlite_cursor(after), limit))
        if not rows and timeout > 0:
            self._watcher.wait(seen, timeout)
            rows = self._read(_EVENT_SELECT, (_sqlite_cursor(after), limit))
        return [
            {
                **dict(row),
                "type": EVENT_TYPES[row["type"]],
                "state": _EVENT_STATES[row["state"]],
                "cursor": str(row["seq"]),
            }
            for row in rows
        ]

    def events_bounds(self) -> tuple[str, str, str]:
        row = self._read("select min(seq), max(seq) from job_events")[0]
        last = row[1] or 0
        first = row[0] if row[0] is not None else last + 1
        # Everything before the oldest kept event was trimmed.
        return str(first), str(last), str(first - 1)


_NEW_EVENT = (
    "insert into job_events (type, job_id, queue, name, tenant, state, at)"
    f" values ({_TYPE_CODE['enqueued']}, ?, ?, ?, ?, ?, ?)"
)
_EVENT_SELECT = (
    "select seq, type, job_id as id, queue, name, tenant, state, progress, attempt, consumer,"
    " error, at from job_events where seq > ? order by seq limit ?"
)
_STALLED = "Stalled: lease expired (its consumer stopped renewing it)"


def _json_array(key: str, values: Sequence[Any]) -> str:
    """A batch's rowids (whole numbers: joined, cheaper than json.dumps) or ids as JSON."""
    if key == "rowid":
        return "[" + ",".join(map(str, values)) + "]"
    return json.dumps(values)


def _sqlite_cursor(cursor: str) -> int:
    try:
        return int(cursor)
    except ValueError:
        raise ValueError(
            f"cursor {cursor!r} is not an SQLite event cursor (a whole number)"
        ) from None


def sqlite_path(url: str) -> str:
    """sqlite:///relative/path.db or sqlite:////absolute/path.db to a file name."""
    path = url[len("sqlite://") :]
    if path.startswith("/"):
        path = path[1:]
    if not path:
        raise ValueError(f"{url}: no database file named")
    return path
