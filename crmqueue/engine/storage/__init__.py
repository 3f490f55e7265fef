"""Leased job storage behind Huey's storage interface, on SQLite and on Redis.

The queue and the job registry are one structure: each job has one record,
and the queue indexes hold only ids.  Every operation that moves a job
(enqueue, claim, complete, fail, release, reap, retry, remove, sweep) changes
the record, the queue index and the counts in one atomic step: a single
transaction on SQLite, a single Lua script on Redis.

A claimed job stays in storage under a lease until it finishes; a reaper
returns jobs whose lease expired (their consumer died) to the queue.

Modules: ``contract`` (JobStore and the records it passes), ``sqlite`` and ``redis``
(one backend each; the Redis scripts are the files under ``lua/``).
"""

from __future__ import annotations

from crmqueue.engine.storage.contract import (
    EVENT_FIELDS,
    EVENT_TYPES,
    MAX_ERRORS_KEPT,
    PRIORITY_LIMIT,
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
)
from crmqueue.engine.storage.redis import RedisJobStore, redis_pool
from crmqueue.engine.storage.sqlite import SQLITE_SCHEMA_VERSION, SqliteJobStore, sqlite_path
from crmqueue.engine.storage.sqlite import _SqliteWatcher as _SqliteWatcher

__all__ = [
    "EVENT_FIELDS",
    "EVENT_TYPES",
    "MAX_ERRORS_KEPT",
    "PRIORITY_LIMIT",
    "REMOVABLE",
    "SQLITE_SCHEMA_VERSION",
    "STATES",
    "TOTALS",
    "Claim",
    "ClaimResult",
    "JobStore",
    "KeptRecord",
    "NewJob",
    "Quota",
    "RedisJobStore",
    "SqliteJobStore",
    "error_record",
    "open_store",
    "redis_pool",
    "sqlite_path",
]


def open_store(
    url: str, queue: str, connect_timeout: float = 5.0, events_max_len: int = 10_000
) -> JobStore:
    """The JobStore for one queue on the storage named by `url`; `events_max_len`: about
    how many job events its stream keeps (0: none written)."""
    if url.startswith("sqlite://"):
        return SqliteJobStore(
            queue, filename=sqlite_path(url), timeout=connect_timeout, events_max_len=events_max_len
        )
    return RedisJobStore(
        queue, url=url, connect_timeout=connect_timeout, events_max_len=events_max_len
    )
