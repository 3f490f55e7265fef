"""The consumer's I/O-bound levers (issue #17): jobs claimed ahead of free workers
(`[queues.<name>] prefetch`) stay leased, renewed while they wait, and go back unstarted
at once when the consumer stops; a success's completion goes to the group-commit thread
without holding its worker, and waits for what the body asked it to (complete_after).
Real consumer, SQLite and Redis storage."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from conftest import wait_until
from test_engine import ALL_ZERO, enqueue, store_of, wait_state

from crmqueue import jobs
from crmqueue.engine import Broker
from tests import fixture_jobs as fj


def test_a_completion_waits_for_its_barrier_while_the_worker_goes_on(
    broker: Broker, start_consumer: Callable[..., Any]
) -> None:
    start_consumer(broker, workers={"email": 1})
    held = enqueue("after_gate", {"key": "g"})
    wait_until(lambda: fj.CALLS["g"] == 1)
    later = enqueue("count", {"n": 7})
    wait_until(lambda: fj.DONE == [7])  # the one worker was free for the next job
    time.sleep(0.2)  # a completion written early would show by now (nothing to wait for)
    assert jobs.get(held.id).state == "active"
    fj.gate("g").set()
    assert wait_state(held.id, "completed").result == "recorded after the gate"
    assert wait_state(later.id, "completed").result == 7


def test_prefetched_jobs_wait_leased_and_go_back_unstarted_at_stop(
    make_broker: Callable[..., Broker], start_consumer: Callable[..., Any]
) -> None:
    broker = make_broker({"queues.email.prefetch": 3})
    store = store_of(broker)
    running = enqueue("slow", {"key": "s"})
    waiting = [enqueue("record", {"key": f"r{n}"}) for n in range(5)]
    consumer = start_consumer(broker, workers={"email": 1})
    wait_until(lambda: fj.CALLS["s"] == 1)
    # One running, three claimed ahead (the prefetch), two left in the queue.
    wait_until(lambda: store.counts()["active"] == 4, message=lambda: str(store.counts()))
    assert store.counts()["waiting"] == 2
    began = time.monotonic()
    consumer.stop(0.3)
    assert time.monotonic() - began < 2.0
    assert not any(fj.CALLS[f"r{n}"] for n in range(5))  # none of them started
    for job in waiting:
        info = jobs.get(job.id)
        assert (info.state, info.attempts) == ("waiting", 0), info
    assert jobs.get(running.id).state == "waiting"  # overran the grace: handed back
    assert store.counts() == {**ALL_ZERO, "waiting": 6}


def test_a_prefetched_job_keeps_its_lease_while_it_waits(
    make_broker: Callable[..., Broker], start_consumer: Callable[..., Any]
) -> None:
    """Leases of 1 s, a job holding the only worker for 2.5 s: the two claimed behind it
    are renewed as a running job is, so none stalls (no reap, one attempt each)."""
    broker = make_broker({"queues.email.prefetch": 2, "queues.email.lease_seconds": 1.0})
    gated = enqueue("slow", {"key": "long"})
    behind = [enqueue("record", {"key": f"b{n}"}) for n in range(2)]
    start_consumer(broker, workers={"email": 1})
    wait_until(lambda: fj.CALLS["long"] == 1)
    wait_until(lambda: store_of(broker).counts()["active"] == 3)
    time.sleep(2.5)  # the leases would have expired (and been reaped) without renewal
    fj.gate("long").set()
    for job in (gated, *behind):
        info = wait_state(job.id, "completed")
        record = store_of(broker).get_job(job.id)
        assert record is not None
        assert (info.attempts, record["stalls"]) == (1, 0), record
    assert [fj.CALLS[f"b{n}"] for n in range(2)] == [1, 1]
