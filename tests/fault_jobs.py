"""Job bodies for the fault tests (tests/test_reliability.py), all on the email queue.

They run inside ``crmqueue worker`` subprocesses (imported through ``runner.imports``,
with the repository root on PYTHONPATH) and inside in-process consumers. Each body
records what it did as rows in a *side database*: a separate SQLite file named by the
payload's ``side`` key, one INSERT per event, committed at once (WAL, busy timeout), so
that a consumer killed a moment later cannot take the record with it and every repeated
execution is visible afterwards.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import closing
from typing import Any

from crmqueue.engine import current_job_id, job

SIDE_SCHEMA = (
    "create table if not exists runs (rowid integer primary key, job_id text not null,"
    " pid integer not null, event text not null, at real not null)"
)
SIDE_BUSY_TIMEOUT_MS = 30_000
_local = threading.local()


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=SIDE_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.execute(f"pragma busy_timeout={SIDE_BUSY_TIMEOUT_MS}")
    conn.execute("pragma synchronous=normal")
    return conn


def init_side(path: str) -> None:
    """Create the side database (WAL) before any body writes to it."""
    with closing(_connect(path)) as conn:
        conn.execute("pragma journal_mode=wal")
        conn.execute(SIDE_SCHEMA)


def side_rows(path: str, event: str | None = None) -> list[tuple[str, int, str, float]]:
    """(job_id, pid, event, at) rows in insertion order, optionally of one event."""
    with closing(_connect(path)) as conn:
        sql = "select job_id, pid, event, at from runs"
        params: tuple[Any, ...] = ()
        if event is not None:
            sql += " where event = ?"
            params = (event,)
        return [tuple(row) for row in conn.execute(sql + " order by rowid", params)]


def side_count(path: str, event: str = "run", distinct: bool = False) -> int:
    what = "count(distinct job_id)" if distinct else "count(*)"
    with closing(_connect(path)) as conn:
        return int(conn.execute(f"select {what} from runs where event = ?", (event,)).fetchone()[0])


def _side(payload: dict[str, Any]) -> sqlite3.Connection:
    path = str(payload["side"])
    conns: dict[str, sqlite3.Connection] = getattr(_local, "conns", None) or {}
    _local.conns = conns
    if path not in conns:
        conns[path] = _connect(path)
    return conns[path]


def note(payload: dict[str, Any], event: str) -> int:
    """Record one event of the running job in the payload's side database; returns how
    many times this job has recorded this event, this one included."""
    conn = _side(payload)
    job_id = current_job_id()
    conn.execute(
        "insert into runs (job_id, pid, event, at) values (?, ?, ?, ?)",
        (job_id, os.getpid(), event, time.time()),
    )
    row = conn.execute(
        "select count(*) from runs where job_id = ? and event = ?", (job_id, event)
    ).fetchone()
    return int(row[0])


@job("email")
def record(payload: dict[str, Any]) -> int:
    """Records the execution, then works for payload["ms"] milliseconds."""
    note(payload, "run")
    ms = float(payload.get("ms", 0))
    if ms:
        time.sleep(ms / 1000)
    return os.getpid()


@job("email")
def sleepy(payload: dict[str, Any]) -> str:
    """Runs for payload["seconds"] (payload["again_seconds"], if given, when this job ran
    before), recording its start and its end."""
    first = note(payload, "start") == 1
    time.sleep(float(payload["seconds"] if first else payload.get("again_seconds", 0)))
    note(payload, "end")
    return "slept"


@job("email")
def spin(payload: dict[str, Any]) -> str:
    """Busy in pure Python for payload["seconds"] (past any short time limit)."""
    note(payload, "start")
    end = time.monotonic() + float(payload.get("seconds", 60))
    n = 0
    while time.monotonic() < end:
        n += 1
    note(payload, "end")
    return "spun"


@job("email")
def write_file(payload: dict[str, Any]) -> str:
    """Writes payload["path"] the safe way (a temporary file, then os.replace), taking
    payload["seconds"] to write it."""
    note(payload, "start")
    final = str(payload["path"])
    tmp = final + ".tmp"
    end = time.monotonic() + float(payload.get("seconds", 60))
    with open(tmp, "w", encoding="utf-8") as out:
        while time.monotonic() < end:
            out.write("a line of a long export\n")
    os.replace(tmp, final)
    note(payload, "end")
    return final


@job("email")
def sqlite_transaction(payload: dict[str, Any]) -> str:
    """Inserts rows into the database payload["db"] (made by init_side; not the side
    database, which other bodies write meanwhile) inside one transaction for
    payload["seconds"]; `with conn` commits on success and rolls back on any exception."""
    note(payload, "start")
    end = time.monotonic() + float(payload.get("seconds", 60))
    conn = sqlite3.connect(str(payload["db"]), timeout=SIDE_BUSY_TIMEOUT_MS / 1000)
    try:
        with conn:
            while time.monotonic() < end:
                conn.execute(
                    "insert into runs (job_id, pid, event, at) values (?, ?, 'tx-row', ?)",
                    (current_job_id(), os.getpid(), time.time()),
                )
    finally:
        conn.close()
    note(payload, "end")
    return "committed"
