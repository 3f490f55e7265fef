"""The engine on both storages: job states, priorities, scheduling, retries and backoff,
dead letters, removal, retention, exact counts under concurrency, progress, stats and
health, leases, poison messages, and payload validation at the facade.

Every test that touches storage runs on SQLite and on a real redis-server (the
``storage_url`` parameter behind the ``broker`` fixture). Waiting for work is always a
condition polled with a deadline (``wait_until``), never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import random
import sqlite3
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import QUEUES, ROOT, RedisServer, engine_settings, free_port, wait_until

from crmqueue import jobs, tasks
from crmqueue.config import QueueSettings
from crmqueue.engine import Broker, retry
from crmqueue.engine.queues import encode_message
from crmqueue.engine.storage import (
    Claim,
    JobStore,
    KeptRecord,
    NewJob,
    error_record,
    sqlite_path,
)
from crmqueue.errors import (
    InvalidJobState,
    JobNotFound,
    PayloadError,
    PermanentError,
    RetryableError,
)
from crmqueue.jobs import Job, JobInfo
from tests import fixture_jobs as fj

STATS_KEYS = {
    "queue", "waiting", "active", "delayed", "scheduled", "completed", "failed", "dead",
    "workers", "throughput_per_min", "failure_rate", "healthy", "consumers", "paused",
}  # fmt: skip
ALL_ZERO = dict.fromkeys(("waiting", "scheduled", "active", "delayed", "completed", "dead"), 0)


# --------------------------------------------------------------------------- helpers


def kind(func: str) -> str:
    return f"tests.fixture_jobs.{func}"


def enqueue(func: str, payload: dict[str, Any] | None = None, **options: Any) -> Job:
    return tasks.enqueue(
        "email", {"tenant_id": "t1", **(payload or {})}, kind=kind(func), **options
    )


def store_of(broker: Broker, queue: str = "email") -> JobStore:
    return broker.queue(queue).store


def counts(broker: Broker, queue: str = "email") -> dict[str, int]:
    return store_of(broker, queue).counts()


def expect_counts(broker: Broker, queue: str = "email", **nonzero: int) -> None:
    assert counts(broker, queue) == {**ALL_ZERO, **nonzero}


def wait_state(job_id: str, *states: str, timeout: float = 10.0) -> JobInfo:
    seen: list[JobInfo] = []

    def reached() -> JobInfo | None:
        info = jobs.get(job_id)
        seen[:] = [info]
        return info if info.state in states else None

    return wait_until(
        reached,
        timeout,
        message=lambda: (
            f"job {job_id} to be {'/'.join(states)}; it is "
            + (f"{seen[0].state} after {seen[0].attempts} attempt(s)" if seen else "unknown")
        ),
    )


def wait_counts(
    broker: Broker, timeout: float = 30.0, queue: str = "email", **nonzero: int
) -> None:
    expected = {**ALL_ZERO, **nonzero}
    wait_until(
        lambda: counts(broker, queue) == expected,
        timeout,
        interval=0.05,
        message=lambda: f"counts {expected}; they are {counts(broker, queue)}",
    )


def epoch(iso: str | None) -> float:
    assert iso is not None
    return dt.datetime.fromisoformat(iso).timestamp()


def job_records(storage_url: str) -> int:
    """Job records left in the storage itself, whatever the counts say."""
    if storage_url.startswith("sqlite://"):
        with contextlib.closing(sqlite3.connect(sqlite_path(storage_url))) as conn:
            return int(conn.execute("select count(*) from jobs").fetchone()[0])
    client = redis.Redis.from_url(storage_url)
    try:
        return sum(1 for _ in client.scan_iter(match="crmqueue:job:*", count=1000))
    finally:
        client.close()


def claim_one(store: JobStore, consumer: str = "c1", lease: float = 30.0) -> Claim:
    result = store.claim(consumer, lease)
    assert len(result.jobs) == 1, result
    return result.jobs[0]


# --------------------------------------------------------------------------- states


def test_waiting_active_completed(broker: Broker, start_consumer: Callable[..., Any]) -> None:
    job = enqueue("slow", {"key": "a"})
    info = jobs.get(job.id)
    assert (info.id, info.queue, info.name, info.tenant) == (job.id, "email", kind("slow"), "t1")
    assert (info.state, info.attempts, info.progress, info.errors) == ("waiting", 0, 0, [])
    assert info.max_attempts == broker.queue("email").spec.attempts == 5
    assert info.payload == {"tenant_id": "t1", "key": "a"}
    assert info.created_at is not None and info.started_at is None and info.finished_at is None
    expect_counts(broker, waiting=1)

    start_consumer(broker, workers={"email": 2})
    active = wait_state(job.id, "active")
    assert active.attempts == 1
    assert epoch(active.started_at) >= epoch(active.created_at)
    expect_counts(broker, active=1)

    fj.gate("a").set()
    done = wait_state(job.id, "completed")
    assert (done.result, done.progress, done.attempts, done.errors) == ("finished", 100, 1, [])
    assert epoch(done.finished_at) >= epoch(done.started_at)
    expect_counts(broker, completed=1)
    assert fj.CALLS["a"] == 1


def test_result_and_current_job_id(broker: Broker, start_consumer: Callable[..., Any]) -> None:
    start_consumer(broker)
    job = enqueue("noop", {"n": 7})
    assert job.wait(10).result == {"ok": True, "n": 7, "job": job.id}


def test_failed_attempts_retry_through_delayed_then_complete(
    broker: Broker, start_consumer: Callable[..., Any]
) -> None:
    start_consumer(broker, workers={"email": 3})
    job = enqueue("flaky", {"key": "f", "fail_times": 2})
    done = wait_state(job.id, "completed", "dead")
    assert done.state == "completed"
    assert (done.attempts, done.result) == (3, {"succeeded_on_call": 3})
    assert [e["type"] for e in done.errors] == ["RuntimeError", "RuntimeError"]
    assert [e["message"] for e in done.errors] == ["flaky failure 1", "flaky failure 2"]
    assert "flaky failure 2" in done.errors[1]["traceback"]
    assert fj.CALLS["f"] == 3
    assert store_of(broker).window_counts(300) == (1, 2)
    expect_counts(broker, completed=1)


def test_delayed_job_returns_to_waiting_when_due(broker: Broker) -> None:
    store = store_of(broker)
    job = enqueue("noop")
    first = claim_one(store)
    before = time.time()
    assert store.fail(first, error_record("RuntimeError", "x"), 0.3) == "delayed"
    record = store.get_job(job.id)
    assert record is not None
    assert record["state"] == "delayed"
    assert before + 0.3 - 0.05 <= record["run_at"] <= time.time() + 0.3 + 0.05
    expect_counts(broker, delayed=1)

    early = store.claim("c1", 30)
    assert early.jobs == []
    assert early.next_due == pytest.approx(record["run_at"], abs=0.01)

    second = wait_until(lambda: store.claim("c1", 30).jobs)[0]
    assert time.time() >= record["run_at"] - 0.01
    assert (second.id, second.attempts) == (job.id, 2)


def test_attempts_exhausted_goes_dead(
    make_broker: Callable[..., Broker], start_consumer: Callable[..., Any]
) -> None:
    broker = make_broker({"queues.email.attempts": 3})
    start_consumer(broker, workers={"email": 2})
    job = enqueue("always_fail", {"key": "x"})
    dead = wait_state(job.id, "dead")
    assert (dead.attempts, dead.max_attempts) == (3, 3)
    assert [e["message"] for e in dead.errors] == ["boom 1", "boom 2", "boom 3"]
    assert dead.finished_at is not None
    assert [info.id for info in jobs.dead("email")] == [job.id]
    expect_counts(broker, dead=1)
    stats = jobs.stats("email")
    assert (stats["failed"], stats["dead"], stats["failure_rate"]) == (3, 1, 1.0)


def test_permanent_error_goes_dead_at_once(
    broker: Broker, start_consumer: Callable[..., Any]
) -> None:
    start_consumer(broker)
    job = enqueue("permanent", {"key": "p"})
    dead = wait_state(job.id, "dead")
    assert dead.attempts == 1 and dead.max_attempts == 5
    assert [(e["type"], e["message"]) for e in dead.errors] == [("PermanentError", "bad recipient")]
    assert fj.CALLS["p"] == 1
    expect_counts(broker, dead=1)


def test_retryable_error_on_last_attempt_goes_dead(
    make_broker: Callable[..., Broker], start_consumer: Callable[..., Any]
) -> None:
    broker = make_broker({"queues.email.attempts": 1})
    start_consumer(broker)
    job = enqueue("retry_later", {"key": "r", "delay": 0.01})
    dead = wait_state(job.id, "dead")
    assert dead.attempts == 1
    assert [e["type"] for e in dead.errors] == ["RetryableError"]


# --------------------------------------------------------------------------- scheduling


def test_delay_schedules_and_runs_when_due(
    broker: Broker, start_consumer: Callable[..., Any]
) -> None:
    start_consumer(broker, workers={"email": 4})
    before = time.time()
    job = enqueue("record", {"key": "d"}, delay=0.6)
    info = jobs.get(job.id)
    assert info.state == "scheduled"
    run_at = epoch(info.run_at)
    assert before + 0.6 <= run_at <= time.time() + 0.6
    expect_counts(broker, scheduled=1)

    done = wait_state(job.id, "completed")
    started = fj.STARTED["d"][0]
    assert started >= run_at - 0.01, "the job started before its time"
    assert started - run_at < 0.5, f"the job started {started - run_at:.3f}s late"
    assert done.attempts == 1


def test_eta_schedules_and_runs_when_due(
    broker: Broker, start_consumer: Callable[..., Any]
) -> None:
    start_consumer(broker, workers={"email": 4})
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.6)
    job = enqueue("record", {"key": "e"}, eta=eta)
    info = jobs.get(job.id)
    assert info.state == "scheduled"
    assert epoch(info.run_at) == pytest.approx(eta.timestamp(), abs=0.001)

    wait_state(job.id, "completed")
    started = fj.STARTED["e"][0]
    assert started >= eta.timestamp() - 0.01, "the job started before its eta"
    assert started - eta.timestamp() < 0.5, f"started {started - eta.timestamp():.3f}s late"


def test_eta_in_the_past_runs_now(broker: Broker) -> None:
    job = enqueue("noop", eta=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    assert jobs.get(job.id).state == "waiting"
    assert claim_one(store_of(broker)).id == job.id


# --------------------------------------------------------------------------- priorities


def test_priorities_higher_first_fifo_within(
    broker: Broker, start_consumer: Callable[..., Any]
) -> None:
    plan = [(0, 0), (1, 100), (2, -5), (3, 100), (4, 50), (5, 0), (6, 1000), (7, 50)]
    plan += [(8, -1000), (9, 100), (10, None)]  # None: the queue's priority (100 for email)
    for n, priority in plan:
        enqueue("record_order", {"n": n}, priority=priority)
    batch = [{"tenant_id": "t1", "n": n} for n in range(11, 16)]  # one batch, queue priority
    tasks.enqueue_many("email", batch, kind=kind("record_order"))
    # and a scheduled job that becomes due before the consumer starts: it queues by due time
    enqueue("record_order", {"n": 16}, delay=0.05)
    wait_until(lambda: time.time() > epoch(jobs.list_jobs("email", "scheduled")[0].run_at))

    start_consumer(broker, workers={"email": 1})
    wait_until(lambda: len(fj.ORDER) == 17, message=lambda: f"17 runs; order so far {fj.ORDER}")
    assert fj.ORDER == [6, 1, 3, 9, 10, 11, 12, 13, 14, 15, 16, 4, 7, 0, 5, 2, 8]


def test_priority_out_of_range_and_negative_delay_rejected(broker: Broker) -> None:
    with pytest.raises(PayloadError) as info:
        enqueue("noop", priority=1001)
    assert [field for field, _ in info.value.errors] == ["priority"]
    with pytest.raises(PayloadError) as info:
        enqueue("noop", delay=-1)
    assert [field for field, _ in info.value.errors] == ["delay"]
    expect_counts(broker)


# --------------------------------------------------------------------------- backoff


def test_backoff_delay_within_full_jitter_bounds() -> None:
    rng = random.Random(20240601)
    base, cap = 0.5, 20.0
    ceilings = [retry.backoff_ceiling(n, base, cap) for n in range(1, 11)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0, 20.0, 20.0]
    for attempt, ceiling in enumerate(ceilings, start=1):
        assert ceiling == min(cap, base * 2 ** (attempt - 1))
        samples = [retry.backoff_delay(attempt, base, cap, rng) for _ in range(2000)]
        assert all(0.0 <= s <= ceiling for s in samples)
        # full jitter spreads over the whole range, not just near the ceiling
        assert min(samples) < 0.05 * ceiling and max(samples) > 0.95 * ceiling
        assert 0.45 * ceiling < statistics.fmean(samples) < 0.55 * ceiling
    # the ceiling doubles with each attempt until the cap
    for lower, upper in itertools.pairwise(ceilings):
        assert upper == min(cap, 2 * lower)
    # the module's own random source stays within bounds too
    assert all(0.0 <= retry.backoff_delay(3, 1.0, 3.0) <= 3.0 for _ in range(500))
    assert retry.backoff_delay(1, 0.0, 10.0) == 0.0


def test_next_delay_policy() -> None:
    spec = QueueSettings(
        workers=1, attempts=5, timeout_seconds=1, backoff_seconds=1, backoff_max_seconds=4
    )
    assert retry.next_delay(PermanentError("x"), 1, 5, spec) is None
    assert retry.next_delay(PayloadError([("to", "bad")]), 1, 5, spec) is None
    assert retry.next_delay(RuntimeError("x"), 5, 5, spec) is None
    assert retry.next_delay(RetryableError("x", delay=7.5), 2, 5, spec) == 7.5
    assert retry.next_delay(RetryableError("x", delay=-3), 2, 5, spec) == 0.0
    assert retry.next_delay(RetryableError("x", delay=7.5), 5, 5, spec) is None
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 4.0)]:
        delays = [retry.next_delay(RuntimeError("x"), attempt, 5, spec) for _ in range(300)]
        assert all(d is not None and 0.0 <= d <= ceiling for d in delays)


def test_runner_backs_off_between_attempts(
    make_broker: Callable[..., Broker],
    start_consumer: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Take the jitter out (always the ceiling) so the waits between attempts are exact
    # lower bounds: 0.1, 0.2, then capped at 0.3.
    monkeypatch.setattr(
        retry,
        "backoff_delay",
        lambda attempt, base, cap, rng=None: retry.backoff_ceiling(attempt, base, cap),
    )
    broker = make_broker(
        {
            "queues.email.attempts": 4,
            "queues.email.backoff_seconds": 0.1,
            "queues.email.backoff_max_seconds": 0.3,
        }
    )
    start_consumer(broker, workers={"email": 4})
    job = enqueue("always_fail", {"key": "b"})
    dead = wait_state(job.id, "dead")
    assert dead.attempts == 4
    starts = fj.STARTED["b"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert len(gaps) == 3
    for gap, ceiling in zip(gaps, [0.1, 0.2, 0.3], strict=True):
        assert ceiling - 0.01 <= gap < ceiling + 0.5, gaps


def test_retryable_error_delay_sets_run_at(
    broker: Broker, start_consumer: Callable[..., Any]
) -> None:
    start_consumer(broker, workers={"email": 2})
    job = enqueue("retry_later", {"key": "later", "delay": 30})
    delayed = wait_state(job.id, "delayed")
    failed_at = delayed.errors[-1]["at"]
    assert delayed.errors[-1]["type"] == "RetryableError"
    assert epoch(delayed.run_at) - failed_at == pytest.approx(30, abs=0.5)
    assert delayed.attempts == 1
    expect_counts(broker, delayed=1)

    soon = enqueue("retry_later", {"key": "soon", "delay": 0.3})
    done = wait_state(soon.id, "completed")
    assert done.attempts == 2
    first, second = fj.STARTED["soon"]
    assert 0.3 - 0.01 <= second - first < 0.3 + 0.5

    assert jobs.remove(job.id).state == "removed"  # delayed -> removed
    expect_counts(broker, completed=1)


# --------------------------------------------------------------------------- dead letters


def test_dead_job_retried_with_a_fresh_attempt_budget(
    make_broker: Callable[..., Broker], start_consumer: Callable[..., Any]
) -> None:
    broker = make_broker({"queues.email.attempts": 2})
    start_consumer(broker, workers={"email": 2})
    # fails on calls 1-3: dead after two attempts, and fails once more after the retry
    job = enqueue("flaky", {"key": "dl", "fail_times": 3})
    dead = wait_state(job.id, "dead")
    assert (dead.attempts, len(dead.errors)) == (2, 2)
    assert [info.id for info in jobs.dead("email")] == [job.id]

    retried = jobs.retry(job.id)
    assert retried.id == job.id
    assert retried.state in ("waiting", "active", "delayed", "completed")
    assert retried.max_attempts == 2
    done = wait_state(job.id, "completed", "dead")
    assert done.state == "completed", "the retry did not get a fresh attempt budget"
    assert done.attempts == 2  # attempt 1 of the new budget failed, attempt 2 succeeded
    assert done.result == {"succeeded_on_call": 4}
    assert len(done.errors) == 3  # the history is kept
    assert jobs.dead("email") == []
    expect_counts(broker, completed=1)


def test_retry_refuses_live_jobs_and_unknown_ids(broker: Broker) -> None:
    job = enqueue("noop")
    with pytest.raises(InvalidJobState):
        jobs.retry(job.id)
    with pytest.raises(JobNotFound):
        jobs.retry("no-such-job")
    assert jobs.get(job.id).state == "waiting"


def test_replay_dead_for_a_whole_queue(
    make_broker: Callable[..., Broker], start_consumer: Callable[..., Any]
) -> None:
    broker = make_broker({"queues.email.attempts": 1})
    consumer = start_consumer(broker, workers={"email": 4})
    flaky = [enqueue("flaky", {"key": f"k{i}", "fail_times": 1}) for i in range(6)]
    wait_counts(broker, dead=6)
    assert jobs.replay_dead("webhook") == []

    replayed = jobs.replay_dead("email")
    assert sorted(replayed) == sorted(job.id for job in flaky)
    wait_counts(broker, completed=6)
    assert all(fj.CALLS[f"k{i}"] == 2 for i in range(6))

    # Jobs that die again while the replay runs are replayed once, not over and over.
    doomed = [enqueue("always_fail", {"key": f"d{i}"}) for i in range(30)]
    wait_counts(broker, completed=6, dead=30)
    outcome: list[list[str]] = []
    replay = threading.Thread(target=lambda: outcome.append(jobs.replay_dead("email")))
    replay.start()
    replay.join(10)
    alive = replay.is_alive()
    consumer.stop(5)  # lets a runaway replay finish so the test can report it
    replay.join(10)
    assert not alive, "replay_dead kept replaying jobs that died again"
    assert sorted(outcome[0]) == sorted(job.id for job in doomed)


# --------------------------------------------------------------------------- removal


def test_remove_each_removable_state_and_refuse_active(broker: Broker) -> None:
    store = store_of(broker)
    delayed = enqueue("noop")
    store.fail(claim_one(store), error_record("RuntimeError", "x"), 3600)
    dead = enqueue("noop")
    store.fail(claim_one(store), error_record("RuntimeError", "x"), None)
    active = enqueue("noop")
    active_claim = claim_one(store)
    waiting = enqueue("noop", {"n": 1})
    scheduled = enqueue("noop", delay=3600)
    expect_counts(broker, waiting=1, scheduled=1, active=1, delayed=1, dead=1)

    for job, state in [(waiting, "waiting"), (scheduled, "scheduled"), (delayed, "delayed")]:
        assert jobs.get(job.id).state == state
        removed = jobs.remove(job.id)
        assert (removed.id, removed.state) == (job.id, "removed")
        with pytest.raises(JobNotFound):
            jobs.get(job.id)
    assert jobs.get(dead.id).state == "dead"
    assert jobs.remove(dead.id).state == "removed"
    assert jobs.dead("email") == []

    with pytest.raises(InvalidJobState):
        jobs.remove(active.id)
    assert jobs.get(active.id).state == "active"
    assert store.complete(active_claim, None, 3600)
    with pytest.raises(InvalidJobState):
        jobs.remove(active.id)  # completed is not removable either
    with pytest.raises(JobNotFound):
        jobs.remove(waiting.id)  # already gone
    expect_counts(broker, completed=1)


def test_removed_waiting_job_never_runs(broker: Broker, start_consumer: Callable[..., Any]) -> None:
    removed = enqueue("record", {"key": "gone"})
    kept = enqueue("record", {"key": "kept"})
    jobs.remove(removed.id)
    start_consumer(broker, workers={"email": 1})
    wait_state(kept.id, "completed")
    assert "gone" not in fj.CALLS
    expect_counts(broker, completed=1)


# --------------------------------------------------------------------------- retention


def test_retention_sweeps_every_record_of_10000_jobs(
    make_broker: Callable[..., Broker], start_consumer: Callable[..., Any], storage_url: str
) -> None:
    broker = make_broker(
        {
            "queues.email.keep_completed_seconds": 1,
            "queues.email.keep_failed_seconds": 1,
            "runner.sweep_interval_seconds": 3600,
        }
    )
    payloads = [{"tenant_id": "t1", "n": n} for n in range(10_000)]
    enqueued = tasks.enqueue_many("email", payloads, kind=kind("noop"))
    assert len({job.id for job in enqueued}) == 10_000
    for n in range(5):
        enqueue("permanent", {"key": f"p{n}"})
    expect_counts(broker, waiting=10_005)
    start_consumer(broker, workers={"email": 10})
    wait_counts(broker, timeout=60, completed=10_000, dead=5)
    assert job_records(storage_url) == 10_005

    store, spec = store_of(broker), broker.queue("email").spec
    assert store.sweep(3600, 3600) == 0  # nothing is old enough yet
    removed = 0

    def swept_all() -> bool:
        nonlocal removed
        removed += store.sweep(spec.keep_completed_seconds, spec.keep_failed_seconds)
        return removed == 10_005

    wait_until(swept_all, timeout=10, interval=0.1, message=lambda: f"sweep; removed {removed}")
    expect_counts(broker)
    assert job_records(storage_url) == 0
    with pytest.raises(JobNotFound):
        jobs.get(enqueued[0].id)


def test_keep_completed_zero_deletes_on_completion(
    make_broker: Callable[..., Broker], start_consumer: Callable[..., Any], storage_url: str
) -> None:
    broker = make_broker({"queues.email.keep_completed_seconds": 0})
    start_consumer(broker, workers={"email": 4})
    tasks.enqueue_many(
        "email", [{"tenant_id": "t1", "n": n} for n in range(300)], kind=kind("count")
    )
    wait_until(lambda: len(fj.DONE) == 300 and counts(broker) == ALL_ZERO)
    assert job_records(storage_url) == 0
    stats = jobs.stats("email")
    assert (stats["completed"], stats["throughput_per_min"]) == (0, 60.0)  # 300 per 5 min


# --------------------------------------------------------------------------- concurrency


def test_exact_counts_2000_jobs_10_workers(
    broker: Broker, start_consumer: Callable[..., Any]
) -> None:
    payloads = [{"tenant_id": "t1", "n": n} for n in range(2000)]
    tasks.enqueue_many("email", payloads, kind=kind("count"))
    start_consumer(broker, workers={"email": 10})
    wait_counts(broker, timeout=30, completed=2000)
    assert sorted(fj.DONE) == list(range(2000))  # each job ran exactly once
    stats = jobs.stats("email")
    assert (stats["completed"], stats["failed"], stats["failure_rate"]) == (2000, 0, 0.0)
    assert store_of(broker).window_counts(300) == (2000, 0)


def test_exact_counts_two_concurrent_producers(
    broker: Broker, start_consumer: Callable[..., Any]
) -> None:
    start_consumer(broker, workers={"email": 10})
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def produce(offset: int) -> None:
        try:
            barrier.wait(5)
            for n in range(offset, offset + 600):
                enqueue("count", {"n": n})
            tasks.enqueue_many(
                "email",
                [{"tenant_id": "t1", "n": n} for n in range(offset + 600, offset + 1000)],
                kind=kind("count"),
            )
        except BaseException as exc:
            errors.append(exc)

    producers = [threading.Thread(target=produce, args=(offset,)) for offset in (0, 1000)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join(30)
    assert errors == []
    wait_counts(broker, timeout=30, completed=2000)
    assert sorted(fj.DONE) == list(range(2000))


# --------------------------------------------------------------------------- progress


def test_progress_visible_while_running(broker: Broker, start_consumer: Callable[..., Any]) -> None:
    start_consumer(broker)
    job = enqueue("progress", {"key": "pg"})
    go = fj.step("pg")
    for percent in (10, 50, 90):
        wait_until(
            lambda p=percent: jobs.get(job.id).progress == p,
            message=lambda p=percent: f"progress {p}; it is {jobs.get(job.id).progress}",
        )
        info = jobs.get(job.id)
        assert (info.state, info.progress) == ("active", percent)
        go.release()
    done = wait_state(job.id, "completed")
    assert (done.progress, done.result) == (100, "done")


def test_report_progress_outside_a_job_is_an_error() -> None:
    from crmqueue.engine import report_progress
    from crmqueue.errors import CrmQueueError

    with pytest.raises(CrmQueueError):
        report_progress(50)


# --------------------------------------------------------------------------- stats, health


def test_stats_keys_and_failure_rate(broker: Broker, start_consumer: Callable[..., Any]) -> None:
    empty = jobs.stats("email")
    assert set(empty) == STATS_KEYS
    assert {k: empty[k] for k in ("completed", "failed", "failure_rate", "workers")} == {
        "completed": 0, "failed": 0, "failure_rate": 0.0, "workers": 0,
    }  # fmt: skip
    assert empty["healthy"] is True

    start_consumer(broker, workers={"email": 3})
    ok = [enqueue("noop", {"n": n}) for n in range(3)]
    bad = enqueue("permanent", {"key": "s"})
    for job in [*ok, bad]:
        wait_state(job.id, "completed", "dead")
    stats = jobs.stats("email")
    assert set(stats) == STATS_KEYS
    assert json.loads(json.dumps(stats)) == stats
    assert stats == {
        "queue": "email", "waiting": 0, "active": 0, "delayed": 0, "scheduled": 0,
        "completed": 3, "failed": 1, "dead": 1, "workers": 3, "consumers": 1,
        "throughput_per_min": 0.6, "failure_rate": 0.25, "healthy": False, "paused": False,
    }  # fmt: skip
    assert set(jobs.stats("webhook")) == STATS_KEYS


def test_health_error_without_consumer_healthy_with_one(
    broker: Broker, start_consumer: Callable[..., Any]
) -> None:
    report = jobs.health()
    assert report["status"] == "error"
    assert dt.datetime.fromisoformat(report["timestamp"]).tzinfo is not None
    assert [q["queue"] for q in report["queues"]] == list(QUEUES)
    assert all(set(q) == STATS_KEYS and q["consumers"] == 0 for q in report["queues"])

    consumer = start_consumer(broker, QUEUES, workers={"email": 2})
    report = jobs.health()
    assert report["status"] == "healthy", report
    by_queue = {q["queue"]: q for q in report["queues"]}
    assert by_queue["email"]["workers"] == 2
    assert all(q["consumers"] == 1 for q in report["queues"])

    job = enqueue("permanent", {"key": "h"})
    wait_state(job.id, "dead")
    report = jobs.health()
    assert report["status"] == "degraded"
    assert [q["queue"] for q in report["queues"] if not q["healthy"]] == ["email"]

    consumer.stop(1)
    assert jobs.health()["status"] == "error"


def test_consumer_maintenance_reaps_sweeps_and_records_health(
    make_broker: Callable[..., Broker], start_consumer: Callable[..., Any]
) -> None:
    from crmqueue.engine.health import last_check

    broker = make_broker(
        {"queues.email.keep_failed_seconds": 0, "runner.sweep_interval_seconds": 0.2}
    )
    store = store_of(broker)
    orphan = enqueue("record", {"key": "orphan"})
    claim_one(store, "crashed-consumer", lease=0.05)  # its consumer died holding it
    assert last_check(broker) is None

    consumer = start_consumer(broker, QUEUES, workers={"email": 2})
    done = wait_state(orphan.id, "completed")  # reaped by the leader, then run again
    assert done.attempts == 1 and fj.CALLS["orphan"] == 1
    record = store.get_job(orphan.id)
    assert record is not None and record["stalls"] == 1

    dead = enqueue("permanent", {"key": "gone"})
    wait_until(lambda: fj.CALLS["gone"] == 1)
    wait_until(lambda: store.get_job(dead.id) is None, message="the sweep to remove it")
    assert consumer.is_leader
    report = wait_until(lambda: last_check(broker))
    assert report["status"] in ("healthy", "degraded")
    assert [q["queue"] for q in report["queues"]] == list(QUEUES)


def test_health_error_when_storage_unreachable(tmp_path: Path) -> None:
    settings = engine_settings(
        f"redis://127.0.0.1:{free_port()}/0",
        tmp_path,
        {"storage.connect_timeout_seconds": 0.5},
    )
    from crmqueue.engine.health import health

    report = health(Broker(settings))
    assert report["status"] == "error"
    assert report["queues"] == []
    assert "Redis storage" in report["error"]


# --------------------------------------------------------------------------- leases


def test_expired_lease_is_reaped_as_stall_then_dead(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker({"queues.email.max_stalls": 2})
    store = store_of(broker)
    job = enqueue("noop")
    healthy = enqueue("noop")
    for stall in (1, 2, 3):
        claim = claim_one(store, "doomed", lease=0.05)  # a reaped job is first in line again
        assert (claim.id, claim.attempts) == (job.id, 1)
        if stall == 1:
            assert claim_one(store, "alive", lease=60).id == healthy.id
        # the consumer "dies": it never completes; only the expired lease is reaped
        assert wait_until(lambda: store.reap(2)) == [job.id]
        record = store.get_job(job.id)
        assert record is not None
        if stall <= 2:
            assert (record["state"], record["stalls"], record["attempts"]) == ("waiting", stall, 0)
            assert record["lease_until"] is None
            expect_counts(broker, waiting=1, active=1)

    dead = jobs.get(job.id)
    assert (dead.state, dead.attempts) == ("dead", 1)
    assert [e["type"] for e in dead.errors] == ["Stalled"]
    expect_counts(broker, dead=1, active=1)
    assert store.window_counts(300) == (0, 1)
    assert jobs.get(healthy.id).state == "active"


def test_touch_renews_lease_and_records_progress(broker: Broker) -> None:
    store = store_of(broker)
    job = enqueue("noop")
    claim = claim_one(store, "c1", lease=0.2)
    assert store.touch(claim, 60, progress=40) is True
    record = store.get_job(job.id)
    assert record is not None
    assert record["lease_until"] > time.time() + 59
    assert record["progress"] == 40
    assert store.touch(dataclasses.replace(claim, token="forged"), 60) is False


def test_stale_consumer_cannot_finish_a_reclaimed_job(broker: Broker) -> None:
    store = store_of(broker)
    job = enqueue("noop")
    stale = claim_one(store, "c1", lease=0.1)
    assert wait_until(lambda: store.reap(3)) == [job.id]
    fresh = claim_one(store, "c1")  # the same consumer: only the claim token tells them apart
    assert (fresh.id, fresh.attempts) == (job.id, stale.attempts)
    assert fresh.token != stale.token

    assert store.complete(stale, "stale", 3600) is False
    assert store.fail(stale, error_record("RuntimeError", "late"), None) is None
    assert store.touch(stale, 60, progress=50) is False
    assert store.release(stale) is False
    assert jobs.get(job.id).state == "active"

    assert store.complete(fresh, "fresh", 3600) is True
    assert store.complete(fresh, "again", 3600) is False  # no double completion
    done = jobs.get(job.id)
    assert (done.state, done.result, done.progress, done.errors) == ("completed", "fresh", 100, [])
    expect_counts(broker, completed=1)
    assert store.window_counts(300) == (1, 0)


def test_a_claim_tells_whether_the_body_may_have_run_before(broker: Broker) -> None:
    store = store_of(broker)
    job = enqueue("noop")
    first = claim_one(store, "c1", lease=0.1)
    assert first.first_run
    assert wait_until(lambda: store.reap(5)) == [job.id]  # reaped
    after_reap = claim_one(store, "c1")
    assert not after_reap.first_run
    assert store.release(after_reap)  # handed back
    assert not claim_one(store, "c1").first_run
    other = enqueue("noop")
    claim = claim_one(store, "c1")
    assert claim.id == other.id and claim.first_run
    assert store.fail(claim, error_record("RuntimeError", "boom"), 0.0) == "delayed"
    assert not wait_until(lambda: store.claim("c1", 60, 1).jobs)[0].first_run  # a retry


def test_records_kept_with_completions_are_stored_even_for_a_lost_lease(
    broker: Broker,
) -> None:
    from huey.constants import EmptyData

    store = store_of(broker)
    job = enqueue("noop")
    stale = claim_one(store, "c1", lease=0.1)
    assert wait_until(lambda: store.reap(3)) == [job.id]
    fresh = claim_one(store, "c2")
    store.put_data("taken", b"first")
    kept = [KeptRecord("sent:a", b"A", ttl=0.3), KeptRecord("sent:b", b"B"),
            KeptRecord("taken", b"second")]  # fmt: skip
    assert store.complete_many([(stale, "late")], 3600, kept) == [False]
    assert store.peek_data("sent:a") == b"A" and store.peek_data("sent:b") == b"B"
    assert store.peek_data("taken") == b"first"  # kept only where the key was empty
    assert jobs.get(job.id).state == "active"  # the stale run did not complete the job
    assert store.complete_many([(fresh, "done")], 3600, [KeptRecord("sent:c", b"C")]) == [True]
    assert store.peek_data("sent:c") == b"C" and jobs.get(job.id).result == "done"
    assert wait_until(lambda: store.peek_data("sent:a") is EmptyData, timeout=5)  # ttl
    assert store.peek_data("sent:b") == b"B"


def test_release_puts_job_back_at_the_front(broker: Broker) -> None:
    store = store_of(broker)
    first, second, third = (enqueue("noop", {"n": n}) for n in range(3))
    claim = claim_one(store)
    assert (claim.id, claim.attempts) == (first.id, 1)
    assert store.release(claim) is True
    record = store.get_job(first.id)
    assert record is not None
    assert (record["state"], record["attempts"]) == ("waiting", 0)
    assert store.release(claim) is False  # not ours any more

    urgent = enqueue("noop", priority=1000)  # a higher priority still goes first
    claims = store.claim("c1", 30, limit=10).jobs
    assert [c.id for c in claims] == [urgent.id, first.id, second.id, third.id]
    assert claims[1].attempts == 1


def test_shutdown_hands_unfinished_jobs_back(
    broker: Broker, start_consumer: Callable[..., Any]
) -> None:
    consumer = start_consumer(broker, workers={"email": 1})
    job = enqueue("slow", {"key": "s"})
    # The body must have started: a job claimed a moment before stop() is handed back
    # unstarted, which is right but not what this test is about.
    wait_until(lambda: fj.CALLS["s"] == 1)
    consumer.stop(0.1)
    info = jobs.get(job.id)
    assert (info.state, info.attempts) == ("waiting", 0)
    fj.gate("s").set()  # the abandoned run finishes; its outcome must not count
    wait_until(lambda: not consumer.runners[0].inflight)
    assert jobs.get(job.id).state == "waiting"

    start_consumer(broker, workers={"email": 1})
    done = wait_state(job.id, "completed")
    assert done.attempts == 1 and fj.CALLS["s"] == 2, (done, dict(fj.CALLS), fj.STARTED["s"])
    expect_counts(broker, completed=1)


# --------------------------------------------------------------------------- poison


def test_poison_messages_go_dead_and_consumer_keeps_working(
    broker: Broker, start_consumer: Callable[..., Any]
) -> None:
    store = store_of(broker)
    bad: dict[str, bytes] = {
        "not-json": b"{not json",
        "not-an-object": b"[1, 2, 3]",
        "unknown-task": encode_message("x", "tests.fixture_jobs.missing", {"tenant_id": "t1"}),
        "other-queue": encode_message("x", "crmqueue.workers.webhook.deliver", {"tenant_id": "t"}),
    }
    ids = {label: f"poison-{label}-{uuid.uuid4().hex[:6]}" for label in bad}
    store.enqueue_jobs(
        [
            NewJob(ids[label], "email", kind("noop"), "t1", 100, 5, message)
            for label, message in bad.items()
        ]
    )
    before = enqueue("noop", {"n": 1})
    start_consumer(broker, workers={"email": 2})
    for label, job_id in ids.items():
        dead = wait_state(job_id, "dead")
        assert dead.attempts == 1, label
        assert [e["type"] for e in dead.errors] == ["PoisonMessage"], label
        assert "cannot run message" in dead.errors[0]["message"]
    assert "not found" in jobs.get(ids["unknown-task"]).errors[0]["message"]
    assert jobs.get(ids["not-json"]).payload == {}
    assert wait_state(before.id, "completed").result["n"] == 1
    after = enqueue("noop", {"n": 2})
    assert wait_state(after.id, "completed").result["n"] == 2
    expect_counts(broker, completed=2, dead=4)


# --------------------------------------------------------------------------- bodies


def test_body_with_payload_model(broker: Broker, start_consumer: Callable[..., Any]) -> None:
    start_consumer(broker)
    good = tasks.enqueue("email", {"tenant_id": "t1", "name": "Ann"}, kind=kind("typed"))
    assert good.wait(10).result == "hello Ann"
    with pytest.raises(PayloadError) as info:
        tasks.enqueue("email", {"tenant_id": "t1", "nme": "Ann"}, kind=kind("typed"))
    assert sorted(field for field, _ in info.value.errors) == ["name", "nme"]
    # a payload that slips past the producer fails validation in the worker: dead at once
    bad_id = broker.queue("email").enqueue(kind("typed"), {"tenant_id": "t1"})
    dead = wait_state(bad_id, "dead")
    assert dead.attempts == 1
    assert dead.errors[0]["type"] == "PermanentError"
    assert "payload failed validation" in dead.errors[0]["message"]
    expect_counts(broker, completed=1, dead=1)


def test_queue_without_bodies_keeps_its_jobs_waiting(
    broker: Broker, start_consumer: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from crmqueue.engine import queues as engine_queues

    # Every queue has bodies now: a deployment whose notification bodies are not loaded
    # (not in its runner imports, say) is what this looks like.
    for name, body in list(engine_queues.BODIES.items()):
        if body.queue == "notification":
            monkeypatch.delitem(engine_queues.BODIES, name)
    start_consumer(broker, QUEUES, workers={"email": 1})
    job = tasks.send_notification(
        tenant_id="t1", user_id="u1", type="in-app", title="Hi", message="Hello"
    )
    probe = enqueue("noop")
    wait_state(probe.id, "completed")  # the consumer is up and fetching
    assert jobs.get(job.id).state == "waiting"
    stranded = jobs.stats("notification")
    assert (stranded["waiting"], stranded["workers"], stranded["consumers"]) == (1, 0, 1)
    assert stranded["healthy"] is False  # stranded: waiting jobs and nobody to run them
    assert jobs.health()["status"] == "degraded"


# --------------------------------------------------------------------------- Redis outage


def test_jobs_survive_a_redis_restart_and_consumer_recovers(
    redis_server_aof: RedisServer,
    tmp_path: Path,
    start_consumer: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crmqueue.engine import configure
    from crmqueue.engine import queues as engine_queues

    monkeypatch.setattr(engine_queues, "_broker", None)
    fj.reset()
    broker = configure(engine_settings(redis_server_aof.url, tmp_path))
    for n in range(20):
        enqueue("count", {"n": n})
    redis_server_aof.restart()  # graceful: the append-only file has every job
    expect_counts(broker, waiting=20)

    start_consumer(broker, workers={"email": 4})
    wait_counts(broker, completed=20)
    redis_server_aof.kill()  # a crash, with the consumer idle on its blocking pop
    redis_server_aof.start()
    after = enqueue("count", {"n": 100})
    wait_state(after.id, "completed", timeout=20)
    assert sorted(fj.DONE) == [*range(20), 100]


# --------------------------------------------------------------------------- facade


def test_payload_errors_enqueue_nothing(broker: Broker) -> None:
    def fields(call: Callable[[], Any]) -> list[str]:
        with pytest.raises(PayloadError) as info:
            call()
        return [field for field, _ in info.value.errors]

    email = {"to": "a@example.com", "template": "welcome"}
    assert fields(lambda: tasks.send_email(tenant_id=None, **email)) == ["tenant_id"]
    assert fields(lambda: tasks.send_email(tenant_id="", **email)) == ["tenant_id"]
    assert fields(lambda: tasks.enqueue("email", {**email, "bogus": 1, "tenant_id": "t"})) == [
        "bogus"
    ]
    assert fields(lambda: tasks.send_email(tenant_id="t1", context="x", **email)) == ["context"]
    assert fields(lambda: tasks.send_email(tenant_id="t1", to=42, template="w")) == [
        "to",
        "template",
    ]
    assert fields(
        lambda: tasks.send_notification(
            tenant_id="t1", user_id="u1", type="fax", title="Hi", message="Hello"
        )
    ) == ["type"]
    assert fields(
        lambda: tasks.generate_report(
            tenant_id="t1", user_id="u1", report_type="sales", format="pdf",
            date_range={"start_date": "2024-02-01", "end_date": "2024-01-01"},
        )
    ) == ["date_range.end_date"]  # fmt: skip
    assert fields(
        lambda: tasks.import_records(
            tenant_id="t1", user_id="u1", file_url="x.csv", file_type="pdf",
            entity_type="contacts", batch_size=0,
        )
    ) == ["file_type", "batch_size"]  # fmt: skip
    assert fields(lambda: tasks.enqueue("email", {"n": 1}, kind=kind("noop"))) == ["tenant_id"]
    assert fields(lambda: tasks.enqueue("email", {"tenant_id": "t1"}, kind="nope")) == ["kind"]
    many = [{"tenant_id": "t1", **email}, {"tenant_id": "t1", "to": "bad", "template": "w"}]
    assert fields(lambda: tasks.enqueue_many("email", many)) == ["1.to", "1.template"]
    assert fields(lambda: tasks.enqueue_many("email", [{"n": 1}], kind=kind("noop"))) == [
        "0.tenant_id"
    ]
    for queue in QUEUES:
        expect_counts(broker, queue)


def test_typed_task_enqueues_validated_payload(broker: Broker) -> None:
    job = tasks.send_email(
        tenant_id="t1", to="a@example.com", subject="Welcome", template="welcome",
        context={"first_name": "John"}, priority=7,
    )  # fmt: skip
    info = jobs.get(job.id)
    assert (info.queue, info.name, info.state) == (
        "email",
        "crmqueue.workers.email.send_email",
        "waiting",
    )
    assert info.payload["to"] == ["a@example.com"]
    assert info.payload["context"] == {"first_name": "John"}
    assert store_of(broker).list_jobs("waiting")[0]["priority"] == 7
    webhook = tasks.publish_event(tenant_id="t1", event_type="contact.created", payload={"id": 1})
    assert jobs.get(webhook.id).queue == "webhook"
    expect_counts(broker, waiting=1)
    expect_counts(broker, "webhook", waiting=1)


def test_sqlite_schema_upgrade_from_version_1_keeps_counts_exact(tmp_path: Path) -> None:
    from crmqueue.engine.storage import SQLITE_SCHEMA_VERSION, SqliteJobStore

    path = str(tmp_path / "queues.db")
    SqliteJobStore("email", filename=path)
    with contextlib.closing(sqlite3.connect(path)) as conn:  # make it look like version 1
        conn.executescript(
            "create trigger jobs_count_insert after insert on jobs begin"
            " insert into job_counts (queue, state, n) values (new.queue, new.state, 1)"
            " on conflict (queue, state) do update set n = n + 1; end;"
            "create index jobs_lease on jobs (queue, state, lease_until);"
            "pragma user_version = 1;"
        )
    store = SqliteJobStore("email", filename=path)
    store.enqueue_jobs([NewJob("j1", "email", "a.b", "t1", 0, 1, b"{}")])
    assert store.counts()["waiting"] == 1
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("pragma user_version").fetchone()[0] == SQLITE_SCHEMA_VERSION
        names = {row[0] for row in conn.execute("select name from sqlite_master")}
    assert "jobs_count_insert" not in names and "jobs_lease" not in names


# --------------------------------------------------------------------------- storage package


def test_error_history_keeps_the_newest_entries(broker: Broker) -> None:
    """Both stores keep the last MAX_ERRORS_KEPT errors (on Redis the constant reaches the
    Lua scripts from Python)."""
    from crmqueue.engine.storage import MAX_ERRORS_KEPT

    store = store_of(broker)
    attempts = MAX_ERRORS_KEPT + 5
    store.enqueue_jobs([NewJob("hist", "email", kind("noop"), "t1", 0, attempts, b"{}")])
    for n in range(1, attempts + 1):
        claim = claim_one(store)
        last = n == attempts
        state = store.fail(claim, error_record("E", f"attempt {n}"), None if last else 0.0)
        assert state == ("dead" if last else "delayed")
    record = store.get_job("hist")
    assert record is not None
    assert [e["message"] for e in record["errors"]] == [
        f"attempt {n}" for n in range(attempts - MAX_ERRORS_KEPT + 1, attempts + 1)
    ]


def test_redis_scripts_are_package_files_loaded_once(redis_url: str) -> None:
    """The Lua scripts are files under crmqueue/engine/storage/lua, each one used, each one
    shipped as package data, read once a process, and loaded again by a store whose server
    lost them (SCRIPT FLUSH, as after a restart)."""
    import tomllib

    from crmqueue.engine.storage import RedisJobStore
    from crmqueue.engine.storage import redis as redis_store

    lua_dir = ROOT / "crmqueue" / "engine" / "storage" / "lua"
    files = {path.stem for path in lua_dir.glob("*.lua")}
    assert files == {*redis_store.LUA_SCRIPTS, "helpers"}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = pyproject["tool"]["setuptools"]["package-data"]["crmqueue"]
    package = ROOT / "crmqueue"
    for path in lua_dir.glob("*.lua"):
        assert any(path.relative_to(package).match(g) for g in globs), path

    assert redis_store._lua_scripts() is redis_store._lua_scripts()  # read once
    store = RedisJobStore(f"scripts-{uuid.uuid4().hex[:6]}", url=redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        client.script_flush()
        store.enqueue_jobs([NewJob("s1", store.name, kind("noop"), "t1", 0, 1, b"{}")])
        claim = claim_one(store)
        assert store.complete(claim, "ok", 60) is True
        assert store.counts()["completed"] == 1
    finally:
        store.flush_all()
        client.close()
