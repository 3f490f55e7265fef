"""Postpone: a job body says "not now" without spending an attempt, on both storages.

A postponed job goes to ``delayed`` for the given seconds, its attempt count goes back,
no failure is counted in the stats window, the reason shows in its record, and a stale
claim (lease lost) cannot postpone. ``current_attempt()`` tells a body its attempt.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until

from crmqueue import jobs, tasks
from crmqueue.engine import Broker, current_attempt, job
from crmqueue.engine.storage import Claim, JobStore, error_record
from crmqueue.errors import Postpone, RetryableError

_lock = threading.Lock()
CALLS: dict[str, int] = {}
ATTEMPTS: dict[str, list[tuple[int, int]]] = {}


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    with _lock:
        CALLS.clear()
        ATTEMPTS.clear()


def _call(key: str) -> int:
    with _lock:
        CALLS[key] = CALLS.get(key, 0) + 1
        ATTEMPTS.setdefault(key, []).append(current_attempt())
        return CALLS[key]


@job("email")
def postpone_then_done(payload: dict[str, Any]) -> dict[str, Any]:
    """Postponed `times` times (after `fail_first` failed attempts), then completes."""
    key = str(payload["key"])
    call = _call(key)
    fail_first = int(payload.get("fail_first", 0))
    if call <= fail_first:
        raise RetryableError(f"failure {call}", delay=0.0)
    if call <= fail_first + int(payload["times"]):
        raise Postpone(f"not yet ({call})", float(payload.get("delay", 0.0)))
    return {"call": call, "attempt": list(current_attempt())}


def enqueue(func: str, payload: dict[str, Any]) -> jobs.Job:
    name = f"{postpone_then_done.__module__}.{func}"
    return tasks.enqueue("email", {"tenant_id": "t1", **payload}, kind=name)


def claim_one(store: JobStore, lease: float = 30.0) -> Claim:
    result = store.claim("c1", lease)
    assert len(result.jobs) == 1, result
    return result.jobs[0]


def test_postponing_twenty_times_never_kills_a_job_with_three_attempts(
    make_broker: Callable[..., Broker], start_consumer: Callable[..., Any]
) -> None:
    broker = make_broker({"queues.email.attempts": 3})
    start_consumer(broker, workers={"email": 2})
    job_ = enqueue("postpone_then_done", {"key": "p20", "times": 20})
    done = job_.wait(20)
    assert done.state == "completed", done.errors
    assert done.result == {"call": 21, "attempt": [1, 3]}
    assert (done.attempts, done.max_attempts) == (1, 3)
    # One entry for the run of postponements, with its count and the last reason.
    assert [(e["type"], e["message"], e["count"]) for e in done.errors] == [
        ("Postponed", "not yet (20)", 20)
    ]
    assert ATTEMPTS["p20"] == [(1, 3)] * 21
    store = broker.queue("email").store
    assert store.window_counts(300) == (1, 0)  # no failure counted
    assert jobs.stats("email")["failure_rate"] == 0.0


def test_attempts_count_failures_only(
    make_broker: Callable[..., Broker], start_consumer: Callable[..., Any]
) -> None:
    broker = make_broker({"queues.email.attempts": 3})
    start_consumer(broker)
    job_ = enqueue("postpone_then_done", {"key": "mix", "times": 4, "fail_first": 2})
    done = job_.wait(20)
    assert done.state == "completed", done.errors
    # two failed attempts, four postponements, then the third attempt succeeds
    assert ATTEMPTS["mix"] == [(1, 3), (2, 3), (3, 3), (3, 3), (3, 3), (3, 3), (3, 3)]
    assert done.attempts == 3
    assert [e["type"] for e in done.errors] == ["RetryableError", "RetryableError", "Postponed"]
    assert broker.queue("email").store.window_counts(300) == (1, 2)


def test_a_postponed_job_waits_its_delay_then_runs_again(broker: Broker) -> None:
    store = broker.queue("email").store
    job_ = enqueue("postpone_then_done", {"key": "d", "times": 1})
    first = claim_one(store)
    assert first.attempts == 1
    before = time.time()
    assert store.postpone(first, 0.3, "endpoint breaker open") is True
    record = store.get_job(job_.id)
    assert record is not None
    assert (record["state"], record["attempts"]) == ("delayed", 0)
    assert before + 0.25 <= record["run_at"] <= time.time() + 0.35
    assert [(e["type"], e["message"], e["count"]) for e in record["errors"]] == [
        ("Postponed", "endpoint breaker open", 1)
    ]
    assert store.counts()["delayed"] == 1 and store.counts()["active"] == 0
    early = store.claim("c1", 30)
    assert early.jobs == [] and early.next_due is not None
    second = wait_until(lambda: store.claim("c1", 30).jobs)[0]
    assert time.time() >= record["run_at"] - 0.01
    assert (second.id, second.attempts) == (job_.id, 1)  # the postponed claim was no attempt
    assert store.window_counts(300) == (0, 0)
    info = jobs.get(job_.id)  # what `crmqueue jobs show` prints
    assert info.state == "active"
    assert ("Postponed", "endpoint breaker open") in [
        (e["type"], e["message"]) for e in info.errors
    ]


def test_postponements_never_push_real_errors_out_of_the_history(broker: Broker) -> None:
    store = broker.queue("email").store
    job_ = enqueue("postpone_then_done", {"key": "h", "times": 1})
    claim = claim_one(store)
    assert store.fail(claim, error_record("RuntimeError", "real failure"), 0.0) == "delayed"
    for n in range(30):
        claim = wait_until(lambda: store.claim("c1", 30).jobs)[0]
        assert claim.attempts == 2
        assert store.postpone(claim, 0.0, f"later {n}")
    record = store.get_job(job_.id)
    assert record is not None
    assert [(e["type"], e["message"], e.get("count")) for e in record["errors"]] == [
        ("RuntimeError", "real failure", None),
        ("Postponed", "later 29", 30),
    ]
    assert record["attempts"] == 1
    assert store.window_counts(300) == (0, 1)


def test_a_stale_claim_cannot_postpone(broker: Broker) -> None:
    store = broker.queue("email").store
    job_ = enqueue("postpone_then_done", {"key": "s", "times": 1})
    stale = claim_one(store, lease=0.1)
    assert wait_until(lambda: store.reap(3)) == [job_.id]
    fresh = claim_one(store)
    assert fresh.token != stale.token
    assert store.postpone(stale, 60, "late") is False
    assert store.postpone(dataclasses.replace(fresh, token="forged"), 60, "forged") is False
    record = store.get_job(job_.id)
    assert record is not None
    assert (record["state"], record["errors"]) == ("active", [])

    assert store.postpone(fresh, 60, "ok") is True
    assert store.postpone(fresh, 60, "twice") is False  # that claim is over
    assert store.complete(fresh, "late", 3600) is False
    record = store.get_job(job_.id)
    assert record is not None
    assert record["state"] == "delayed"
    assert [e["message"] for e in record["errors"]] == ["ok"]


def test_jobs_show_prints_the_reason(broker: Broker, storage_url: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from crmqueue.cli import main

    store = broker.queue("email").store
    job_ = enqueue("postpone_then_done", {"key": "cli", "times": 1})
    assert store.postpone(claim_one(store), 600, "tenant share used up")
    config = tmp_path / "crmqueue.toml"
    config.write_text(f'[storage]\nurl = "{storage_url}"\n')
    shown = CliRunner().invoke(main, ["jobs", "show", job_.id, "--config", str(config)])
    assert shown.exit_code == 0, shown.output
    assert "delayed" in shown.output
    assert "Postponed: tenant share used up" in shown.output


def test_current_attempt_outside_a_job() -> None:
    assert current_attempt() == (1, 1)
