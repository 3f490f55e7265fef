"""Huey's storage interface on a leased JobStore: a mixin the JobStore contract inherits.

Huey's queue methods go through the job registry, so a message given to ``enqueue`` is a
job like any other (stats, ``jobs show``, dead letters, leases) and ``dequeue`` claims it
under a lease instead of deleting it: the message stays in storage, ``active``, until the
caller acknowledges it (crmqueue.engine.huey_api.QueueHuey.execute does) or its lease
expires and the reaper hands it back. The schedule is the store's own: a message whose
time has come is promoted by ``claim`` (see ``read_schedule``).

The result store and Huey's key-value calls are the store's key-value records (SQLite:
the ``kv`` table; Redis: ``<prefix>:q:<queue>:kv:<key>`` strings); Huey's counters (chords,
rate limits) live apart from them (SQLite: ``huey_counters``; Redis:
``<prefix>:q:<queue>:counter:<key>``), as Huey's own storages keep them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Any

from huey.constants import EmptyData

if TYPE_CHECKING:
    from crmqueue.engine.storage.contract import Claim, JobStore, NewJob

# The consumer id under which Huey's own dequeue() claims (shown in `jobs show`).
HUEY_CONSUMER = f"huey-api:{socket.gethostname()}:{os.getpid()}"
_COUNTERS_SQL = (
    "create table if not exists huey_counters (queue text not null, key text not null,"
    " n integer not null, primary key (queue, key))"
)


def message_fields(data: bytes) -> tuple[str, str, str, int | None, str | None]:
    """(id, name, tenant, retries, eta) of a stored message (eta: Huey's naive ISO time);
    a message that is not crmqueue's JSON (Huey's storage tests enqueue plain bytes) gets
    a new id and the name ``huey.message``."""
    from crmqueue.tenancy import tenant_problem

    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        message = None
    if not isinstance(message, dict) or not isinstance(message.get("id"), str):
        return os.urandom(16).hex(), "huey.message", "-", None, None
    payload = message.get("payload")
    tenant = payload.get("tenant_id") if isinstance(payload, dict) else None
    options = message.get("huey")
    options = options if isinstance(options, dict) else {}
    retries = options.get("retries")
    eta = options.get("eta")
    return (
        message["id"],
        str(message.get("name", "huey.message")),
        str(tenant) if tenant_problem(tenant) is None else "-",
        retries if isinstance(retries, int) else None,
        str(eta["~dt"]) if isinstance(eta, dict) and "~dt" in eta else None,
    )


class HueyStorageMixin:
    """Huey's BaseStorage methods in terms of the crmqueue JobStore interface."""

    # Set by QueueHuey from the queue's settings.
    huey_lease_seconds: float = 30.0
    huey_attempts: int = 1
    huey_utc: bool = True
    huey_priority: int = 0

    name: str

    def _huey_claims(self) -> dict[str, Claim]:
        claims: dict[str, Claim] | None = self.__dict__.get("_huey_claimed")
        if claims is None:
            claims = self.__dict__.setdefault("_huey_claimed", {})
        return claims

    def huey_new_job(
        self,
        data: bytes,
        priority: float | None,
        run_at: float | None,
        max_attempts: int | None = None,
    ) -> NewJob:
        """The registry job for one Huey message (see message_fields)."""
        from crmqueue.engine.storage.contract import PRIORITY_LIMIT, NewJob

        job_id, name, tenant, retries, eta = message_fields(data)
        if max_attempts is None:
            max_attempts = retries + 1 if retries else self.huey_attempts
        if run_at is None and eta is not None:
            run_at = self.huey_timestamp(dt.datetime.fromisoformat(eta))
        level = int(self.huey_priority if priority is None else priority)
        return NewJob(
            id=job_id,
            queue=self.name,
            name=name,
            tenant=tenant,
            priority=max(-PRIORITY_LIMIT, min(PRIORITY_LIMIT, level)),
            max_attempts=max_attempts,
            message=data,
            run_at=run_at,
        )

    def huey_timestamp(self, when: dt.datetime) -> float:
        """A Huey eta (naive: UTC when huey_utc, else local time) as a Unix time."""
        if when.tzinfo is None and self.huey_utc:
            when = when.replace(tzinfo=dt.UTC)
        return when.timestamp()

    # Huey's queue interface.
    def enqueue(self: Any, data: bytes, priority: float | None = None) -> None:
        """Store a message as a job (its id is the message's). A message whose id is
        stored already adds nothing: enqueueing by id is idempotent."""
        self.huey_enqueue(self.huey_new_job(data, priority, None))

    def huey_enqueue(self: Any, job: NewJob) -> None:
        """Store one Huey job unless its id is stored already (see enqueue)."""
        if hasattr(self, "_tx"):  # SQLite: the unique id refuses a duplicate, no lookup
            try:
                self.enqueue_jobs((job,))
            except sqlite3.IntegrityError:
                self.enqueue_jobs((job,), skip_existing=True)
        else:  # Redis: the script checks the id in the same step
            self.enqueue_jobs((job,), skip_existing=True)

    def dequeue(self: Any) -> bytes | None:
        """Claim the next message under a lease of huey_lease_seconds; it stays stored
        (active) until acknowledged (see ack_huey) or its lease expires."""
        result = self.claim(HUEY_CONSUMER, self.huey_lease_seconds, 1)
        if not result.jobs:
            return None
        claim = result.jobs[0]
        self._huey_claims()[claim.id] = claim
        return bytes(claim.message)

    def take_huey_claim(self, job_id: str) -> Claim | None:
        """The claim dequeue() took for `job_id`, handed to whoever acknowledges it."""
        return self._huey_claims().pop(job_id, None)

    def add_to_schedule(
        self: Any, data: bytes, ts: dt.datetime, priority: float | None = None
    ) -> None:
        self.huey_enqueue(self.huey_new_job(data, priority, self.huey_timestamp(ts)))

    def read_schedule(self, ts: Any) -> list[bytes]:
        """Nothing: claim() promotes due messages itself, by the storage's clock, so no
        scheduler process has to move them (and none can lose them in between)."""
        return []

    # Pending, in Huey's sense, is what a claim would take now: waiting jobs and retries
    # that are due (a retry is the same job, `delayed` until the claim promotes it).
    def _due_retries(self: Any, limit: int = 10_000) -> list[dict[str, Any]]:
        now = time.time()
        return [job for job in self.list_jobs("delayed", limit) if (job["run_at"] or 0) <= now]

    def queue_size(self: Any) -> int:
        counts = self.counts()
        due = len(self._due_retries()) if counts["delayed"] else 0
        return int(counts["waiting"]) + due

    def schedule_size(self: Any) -> int:
        counts = self.counts()
        due = len(self._due_retries()) if counts["delayed"] else 0
        return int(counts["scheduled"] + counts["delayed"]) - due

    def enqueued_items(self: Any, limit: int | None = None) -> list[bytes]:
        jobs = self.list_jobs("waiting", limit or 10_000)
        jobs += self._due_retries(limit or 10_000)
        return [bytes(job["message"]) for job in jobs[: limit or None]]

    def scheduled_items(self: Any, limit: int | None = None) -> list[bytes]:
        now = time.time()
        jobs = self.list_jobs("scheduled", limit or 10_000)
        jobs += [j for j in self.list_jobs("delayed", limit or 10_000) if (j["run_at"] or 0) > now]
        jobs.sort(key=lambda job: job["run_at"] or 0.0)
        return [bytes(job["message"]) for job in jobs[: limit or None]]

    def _remove_all(self: Any, states: tuple[str, ...]) -> None:
        from crmqueue.errors import InvalidJobState, JobNotFound

        for state in states:
            while jobs := self.list_jobs(state, 1000):
                for job in jobs:
                    with contextlib.suppress(InvalidJobState, JobNotFound):  # just claimed
                        self.remove_job(job["id"])

    def flush_queue(self: Any) -> None:
        """Remove the waiting jobs (not the leased ones: they are running)."""
        self._remove_all(("waiting",))

    def flush_schedule(self: Any) -> None:
        """Remove the scheduled jobs and the retries waiting for their time."""
        self._remove_all(("scheduled", "delayed"))

    # The result store: the key-value records.
    def result_items(self: Any) -> dict[str, bytes]:
        return dict(_kv_items(self))

    def result_store_size(self: Any) -> int:
        return len(_kv_items(self))

    def flush_results(self: Any) -> None:
        for key, _ in _kv_items(self):
            self.delete_data(key)

    def peek_many(self: Any, keys: list[str | bytes]) -> dict[Any, bytes]:
        if hasattr(self, "_kv") and hasattr(self, "conn") and keys:  # Redis: one MGET
            with self._guard():
                values = self.conn.mget([self._kv(key) for key in keys])
            return {k: v for k, v in zip(keys, values, strict=True) if v is not None}
        if hasattr(self, "_read") and keys:  # SQLite: one query
            names = {(k.decode() if isinstance(k, bytes) else k): k for k in keys}
            marks = ",".join("?" * len(names))
            rows = self._read(
                f"select key, value from kv where queue = ? and key in ({marks})"
                " and (expires_at is null or expires_at > ?)",
                (self.name, *names, time.time()),
            )
            return {names[row[0]]: bytes(row[1]) for row in rows}
        found = {}
        for key in keys:
            value = self.peek_data(key)
            if value is not EmptyData:
                found[key] = value
        return found

    # Revocations: does the queue hold any? (Lets a consumer skip the per-task check.)
    def huey_note_revocation(self: Any, key: str, present: bool) -> None:
        """Record that revocation `key` was stored (before it is) or deleted (after)."""
        if hasattr(self, "_qkey") and hasattr(self, "conn"):  # SQLite needs no index
            with self._guard():
                member = self._qkey("revocations")
                if present:
                    self.conn.sadd(member, key)
                else:
                    self.conn.srem(member, key)

    def huey_any_revocations(self: Any) -> bool:
        """Whether any revocation key (Huey's ``r:<id>``, ``rt:<task>``) may be stored."""
        if hasattr(self, "_qkey") and hasattr(self, "conn"):
            with self._guard():
                return bool(self.conn.scard(self._qkey("revocations")))
        rows = self._read(
            "select exists (select 1 from kv where queue = ?1 and ((key >= 'r:' and key < 'r;')"
            " or (key >= 'rt:' and key < 'rt;')))",
            (self.name,),
        )
        return bool(rows[0][0])

    # Huey's counters (chords, rate limits).
    def incr(self: Any, key: str | bytes, amount: int = 1) -> int:
        name = key.decode() if isinstance(key, bytes) else key
        if hasattr(self, "_qkey") and hasattr(self, "conn"):
            with self._guard():
                return int(self.conn.incrby(self._qkey("counter:" + name), amount))
        _counters_table(self)
        with self._tx() as conn:
            row = conn.execute(
                "insert into huey_counters (queue, key, n) values (?, ?, ?) on conflict"
                " (queue, key) do update set n = n + excluded.n returning n",
                (self.name, name, amount),
            ).fetchone()
        return int(row[0])

    def delete_counter(self: Any, key: str | bytes) -> None:
        name = key.decode() if isinstance(key, bytes) else key
        if hasattr(self, "_qkey") and hasattr(self, "conn"):
            with self._guard():
                self.conn.delete(self._qkey("counter:" + name))
            return
        _counters_table(self)
        with self._tx() as conn:
            conn.execute("delete from huey_counters where queue = ? and key = ?", (self.name, name))

    def flush_counters(self: Any) -> None:
        if hasattr(self, "_qkey") and hasattr(self, "conn"):
            with self._guard():
                keys = list(self.conn.scan_iter(match=self._qkey("counter:*"), count=1000))
                if keys:
                    self.conn.delete(*keys)
            return
        _counters_table(self)
        with self._tx() as conn:
            conn.execute("delete from huey_counters where queue = ?", (self.name,))


_tables_made: set[str] = set()
_tables_guard = threading.Lock()


def _counters_table(store: Any) -> None:
    with _tables_guard:
        if store.filename in _tables_made:
            return
        with store._tx() as conn:
            conn.execute(_COUNTERS_SQL)
        _tables_made.add(store.filename)


def _kv_items(store: JobStore | Any) -> list[tuple[str, bytes]]:
    """(key, value) of every live key-value record of the store's queue."""
    if hasattr(store, "_kv") and hasattr(store, "conn"):  # Redis
        prefix = store._kv("")
        with store._guard():
            keys = list(store.conn.scan_iter(match=prefix + "*", count=1000))
            values = store.conn.mget(keys) if keys else []
        return [
            (key.decode()[len(prefix) :], value)
            for key, value in zip(keys, values, strict=True)
            if value is not None
        ]
    rows = store._read(
        "select key, value from kv where queue = ? and (expires_at is null or expires_at > ?)"
        " order by key",
        (store.name, time.time()),
    )
    return [(row[0], bytes(row[1])) for row in rows]
