"""The Redis store: sorted-set indexes per queue and a hash per job, each step one Lua
script (the scripts are the .lua files beside this module, read once a process)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.resources
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from huey.constants import EmptyData

from crmqueue.engine.storage.contract import (
    MAX_ERRORS_KEPT,
    REMOVABLE,
    TOTALS,
    Claim,
    ClaimResult,
    JobStore,
    KeptRecord,
    NewJob,
    Quota,
    error_record,
    key_text,
)
from crmqueue.errors import InvalidJobState, JobNotFound, StorageUnavailable

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
        events_max_len: int = 10_000,
    ) -> None:
        super().__init__(name)
        self.url = url
        self.pool = pool or redis_pool(url, connect_timeout)
        # redis-py's command stubs are unions of sync and async results; Any keeps them honest here.
        self.conn: Any = redis.Redis(connection_pool=self.pool)
        self._keys = [f"{prefix}:q:{name}:", f"{prefix}:job:", name]
        self._local = threading.local()

        scripts = _lua_scripts()
        self._events_key = f"{prefix}:events"
        scripts = _event_scripts(self._events_key, events_max_len)

        def script(name: str) -> _Script:
            return _Script(self.conn, *scripts[name])

        self._enqueue = script("enqueue")
        self._claim = script("claim")
        self._complete = script("complete")
        self._fail = script("fail")
        self._postpone = script("postpone")
        self._release = script("release")
        self._touch = script("touch")
        self._reap = script("reap")
        self._retry = script("retry")
        self._remove = script("remove")
        self._sweep = script("sweep")
        self._lock = script("lock")

    def _qkey(self, suffix: str) -> str:
        return self._keys[0] + suffix

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> StorageUnavailable:
        return StorageUnavailable(f"Redis storage {_masked(self.url)}: {exc}")

    def ping(self) -> None:
        with self._guard():
            self.conn.ping()

    def enqueue_jobs(
        self, jobs: Sequence[NewJob], skip_existing: bool = False, quotas: Sequence[Quota] = ()
    ) -> None:
        """created_at is this process's clock, as the SQLite store's and every run_at.
        With quotas, every job goes in one script call (all or nothing)."""
        if quotas:
            self._enqueue_with_quotas(jobs, skip_existing, quotas)
            return
        if len(jobs) == 1:  # the common single enqueue, with the least Python
            job = jobs[0]
            args: list[Any] = [
                1, 1 if skip_existing else 0, repr(time.time()),
                job.id, job.name, job.tenant, job.priority, job.max_attempts, job.message,
                "" if job.run_at is None else repr(job.run_at),
            ]  # fmt: skip
            try:
                self._enqueue(self._keys, args)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise self._unavailable(exc) from exc
            return
        for start in range(0, len(jobs), 500):
            chunk = jobs[start : start + 500]
            args = [len(chunk), 1 if skip_existing else 0, repr(time.time())]
            for job in chunk:
                args += [
                    job.id, job.name, job.tenant, job.priority, job.max_attempts, job.message,
                    "" if job.run_at is None else repr(job.run_at),
                ]  # fmt: skip
            with self._guard():
                self._enqueue(keys=self._keys, args=args)

    def _enqueue_with_quotas(
        self, jobs: Sequence[NewJob], skip_existing: bool, quotas: Sequence[Quota]
    ) -> None:
        now = time.time()
        args: list[Any] = [len(jobs), 1 if skip_existing else 0, repr(now)]
        for job in jobs:
            args += [
                job.id, job.name, job.tenant, job.priority, job.max_attempts, job.message,
                "" if job.run_at is None else repr(job.run_at),
            ]  # fmt: skip
        args.append(len(quotas))
        for quota in quotas:
            # Kept an hour past the reset: a producer whose clock lags still finds it.
            expire = int(quota.reset_at) + 3600
            args += [quota.tenant, f"quota:{quota.tenant}:{quota.day}", quota.limit, expire]
        with self._guard():
            reply = self._enqueue(keys=self._keys, args=args)
        if isinstance(reply, list):
            tenant, used, asked = reply[0].decode(), int(reply[1]), int(reply[2])
            quota = next(q for q in quotas if q.tenant == tenant)
            raise quota.exceeded(self.name, used, asked)

    def claim(self, consumer: str, lease_seconds: float, limit: int = 1) -> ClaimResult:
        with self._guard():
            rows, next_due = self._claim(keys=self._keys, args=[consumer, lease_seconds, limit])
        claims = [
            Claim(
                r[0].decode(), r[1].decode(), bytes(r[2]), int(r[3]), int(r[4]), r[5].decode(),
                r[6] == 1, int(r[7]) if len(r) > 7 else 0,
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

    def postpone(self, claim: Claim, delay: float, reason: str) -> bool:
        with self._guard():
            return bool(
                self._postpone(keys=self._keys, args=[claim.id, claim.token, reason, repr(delay)])
            )

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

    def tenant_counts(
        self, states: Sequence[str], tenant: str | None = None
    ) -> dict[str, dict[str, int]]:
        """O(jobs in those states): each index read 1,000 ids at a time and each job's
        tenant fetched in one pipeline per step (no per-tenant counters are kept)."""
        found: dict[str, dict[str, int]] = {state: {} for state in states}
        retrying = found.get("failed")
        step = 1000
        with self._guard():
            for state in states:
                if state == "failed":
                    continue  # counted while reading `delayed`
                counts = found[state]
                start = 0
                while True:
                    ids = self.conn.zrange(self._qkey(state), start, start + step - 1)
                    if not ids:
                        break
                    pipe = self.conn.pipeline(transaction=False)
                    for job_id in ids:
                        pipe.hmget(self._keys[1] + job_id.decode(), "tenant", "attempts")
                    for who, attempts in pipe.execute():
                        if who is None:
                            continue  # removed meanwhile
                        name = who.decode()
                        if tenant is None or name == tenant:
                            counts[name] = counts.get(name, 0) + 1
                            if retrying is not None and state == "delayed" and int(attempts or 0):
                                retrying[name] = retrying.get(name, 0) + 1
                    if len(ids) < step:
                        break
                    start += step
        return found

    def quota_used(self, tenant: str, day: str) -> int:
        with self._guard():
            return int(self.conn.get(self._qkey(f"quota:{tenant}:{day}")) or 0)

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

    def totals(self) -> dict[str, int]:
        with self._guard():
            raw = self.conn.hgetall(self._qkey("totals"))
        counts = dict.fromkeys(TOTALS, 0)
        counts.update({k.decode(): int(v) for k, v in raw.items() if k.decode() in counts})
        return counts

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
        return self._qkey("kv:" + key_text(key))

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

    # Job events: the stream the scripts add to (XADD MAXLEN ~ events_max_len).
    def read_events(
        self, after: str, limit: int = 500, timeout: float = 0.0
    ) -> list[dict[str, Any]]:
        _stream_id(after)
        # A blocking read waits at most 1 s, well inside the socket timeout.
        block = max(1, int(min(timeout, 1.0) * 1000)) if timeout > 0 else None
        conn = self._blocking_conn() if block else self.conn
        with self._guard():
            reply = conn.xread({self._events_key: after}, count=limit, block=block)
        if not reply:
            return []
        return [_decode_event(entry_id, fields) for entry_id, fields in reply[0][1]]

    def events_bounds(self) -> tuple[str, str, str]:
        with self._guard():
            try:
                info = self.conn.xinfo_stream(self._events_key)
            except redis.ResponseError:  # no stream yet: no event written
                return "0-0", "0-0", "0-0"
        last = _text(info.get("last-generated-id") or b"0-0")
        first_entry = info.get("first-entry")
        first = _text(first_entry[0]) if first_entry else _next_id(last)
        # Trimming (MAXLEN) leaves max-deleted-entry-id alone: all that is known is that
        # entries-added exceeds the length, and that what went came before the first.
        trimmed = int(info.get("entries-added") or 0) > int(info.get("length") or 0)
        return first, last, _previous_id(first) if trimmed else "0-0"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_id(cursor: str) -> tuple[int, int]:
    """A stream entry id ("<ms>-<seq>", or "<ms>") as a comparable pair; ValueError else."""
    ms, _, seq = cursor.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        raise ValueError(
            f"cursor {cursor!r} is not a Redis event cursor (<milliseconds>-<sequence>)"
        ) from None


def _next_id(entry_id: str) -> str:
    ms, seq = _stream_id(entry_id)
    return f"{ms}-{seq + 1}"


def _previous_id(entry_id: str) -> str:
    ms, seq = _stream_id(entry_id)
    return f"{ms}-{seq - 1}" if seq else f"{ms - 1}-18446744073709551615"


def _decode_event(entry_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    event: dict[str, Any] = {k.decode(): v.decode() for k, v in fields.items()}
    cursor = entry_id.decode()
    event["cursor"] = cursor
    event["progress"] = int(event.get("progress") or 0)
    event["attempt"] = int(event.get("attempt") or 0)
    event["consumer"] = event.get("consumer") or None
    event["error"] = event.get("error") or None
    event["at"] = int(cursor.partition("-")[0]) / 1000
    return event


class _Script:
    """A Lua script called by its SHA1, loaded again if the server lost it (a restart).
    redis-py's Script does the same, with a per-call import and pipeline check that cost
    about 5 µs of each single enqueue. The call goes over this thread's own connection
    (see _ThreadConnections)."""

    def __init__(self, conn: redis.Redis, source: str, sha: str) -> None:
        self.conn = conn
        self.source = source
        self.sha = sha

    def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        pool = self.conn.connection_pool
        try:
            return _call(pool, ("EVALSHA", self.sha, len(keys), *keys, *args))
        except redis.exceptions.NoScriptError:
            self.sha = self.conn.script_load(self.source)
            return _call(pool, ("EVALSHA", self.sha, len(keys), *keys, *args))


class _ThreadConnections(dict[Any, Any]):
    """A thread's own connection from each pool, kept between calls: redis-py's checkout
    from the pool, its instrumentation and wrappers cost as much CPU per command as the
    rest of an enqueue (measured: a script call 48 µs of client CPU through redis-py, 19 µs
    on a kept connection). When the thread ends they go back to their pools."""

    def __del__(self) -> None:
        for pool, connection in self.items():
            with contextlib.suppress(Exception):
                pool.release(connection)


_thread_connections = threading.local()

_pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack_command
except ImportError:  # redis-py packs the command itself
    _pack_command = None


def _call(pool: redis.ConnectionPool, command: tuple[Any, ...]) -> Any:
    """One command on this thread's connection of `pool`, with the connection's own retry
    policy on connection errors (as redis-py's execute_command: disconnect, try again)."""
    held = getattr(_thread_connections, "held", None)
    if held is None:
        held = _thread_connections.held = _ThreadConnections()
    connection = held.get(pool)
    if connection is not None and connection.pid != os.getpid():
        # Inherited through fork (an app built its broker, then forked its workers): that
        # socket is the parent's. The pool gives this process its own, as redis-py does.
        connection = None
    if connection is None:
        connection = held[pool] = pool.get_connection()
    else:
        # What the pool checks at each checkout: connected, and nothing to read (EOF from
        # a server that went away, or a reply left unread). Else start afresh, before
        # sending: a command is never sent twice.
        connection.connect()
        try:
            if connection.can_read():
                raise redis.ConnectionError("connection not ready")
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            connection.disconnect()
            connection.connect()

    def send() -> Any:
        if _pack_command is None:
            connection.send_command(*command)
        else:
            # What send_command does after redis-py's per-argument checks (our commands
            # are a name without spaces and str/int/float arguments): about 5 us a call.
            try:
                packed = _pack_command(command)
            except TypeError as exc:
                raise redis.DataError(str(exc)) from None
            connection.send_packed_command([packed])
        return connection.read_response()

    try:
        return connection.retry.call_with_retry(send, lambda _error: connection.disconnect())
    except redis.ResponseError:
        raise  # the reply was read: the connection is in step
    except BaseException:
        # Anything else (an outage, a time limit raised in this thread between the send
        # and the read) may leave a reply unread: start afresh on the next call.
        connection.disconnect()
        raise


LUA_SCRIPTS = (
    "enqueue", "claim", "complete", "fail", "postpone", "release", "touch", "reap", "retry",
    "remove", "sweep", "lock",
)  # fmt: skip


@functools.cache
def _lua_scripts() -> dict[str, tuple[str, str]]:
    """Each script's full source and its SHA1, read once a process from the package's
    lua/ directory (package data; in the executable too): a line setting MAX_ERRORS_KEPT,
    the shared helpers.lua, then <name>.lua."""
    lua = importlib.resources.files("crmqueue.engine.storage").joinpath("lua")
    helpers = lua.joinpath("helpers.lua").read_text(encoding="utf-8")
    prelude = f"local MAX_ERRORS_KEPT = {MAX_ERRORS_KEPT}\n{helpers}"
    scripts = {}
    for name in LUA_SCRIPTS:
        source = prelude + lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        scripts[name] = (source, hashlib.sha1(source.encode()).hexdigest())
    return scripts


@functools.cache
def _event_scripts(key: str, max_len: int) -> dict[str, tuple[str, str]]:
    """The scripts with the job events' stream key and cap defined first (helpers.lua's
    emit functions use them), with their SHA1s."""
    prelude = f"local EVENTS_KEY = {json.dumps(key)}\nlocal EVENTS_MAXLEN = {int(max_len)}\n"
    scripts = {}
    for name, (source, _) in _lua_scripts().items():
        scripts[name] = (prelude + source, hashlib.sha1((prelude + source).encode()).hexdigest())
    return scripts


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
