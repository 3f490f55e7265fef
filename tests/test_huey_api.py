"""Huey's own API on crmqueue's queues (issue #18), on SQLite and on a real redis-server:
Huey tasks called as in Huey are jobs of the leased registry, run by crmqueue's consumer
through Huey's execute path (hooks, signals, results, pipelines, revocation, locks), with
Huey's retries mapped onto attempts, and JSON-only arguments checked at enqueue."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
from conftest import wait_until
from huey import crontab
from huey.exceptions import TaskException

from crmqueue import jobs
from crmqueue.engine import huey
from crmqueue.engine.huey_api import HueyMessages, PeriodicScheduler, PickleRefused, tag, untag
from crmqueue.errors import ConfigError, PayloadError
from tests import huey_tasks as t


@pytest.fixture
def h(broker: Any) -> Any:
    t.reset()
    return t.h


def state(broker: Any, job_id: str) -> str:
    record = broker.queue("report").store.get_job(job_id)
    return str(record["state"]) if record else "missing"


def test_huey_returns_the_queues_instance(broker: Any) -> None:
    assert huey("report") is broker.queue("report").huey is t.h
    with pytest.raises(ConfigError, match="unknown queue 'nope'"):
        huey("nope")


def test_task_call_is_a_registry_job_run_by_the_consumer(
    h: Any, broker: Any, start_consumer: Any
) -> None:
    result = t.add(2, 3)
    record = broker.queue("report").store.get_job(result.id)
    assert record["name"] == "tests.huey_tasks.add"
    assert record["state"] == "waiting"
    assert [task.id for task in h.pending()] == [result.id]
    assert jobs.stats("report")["waiting"] == 1
    start_consumer(broker, ["report"])
    assert result.get(blocking=True, timeout=10) == 5
    wait_until(lambda: state(broker, result.id) == "completed")
    assert jobs.get(result.id).result == 5
    assert ("pre", "add") in t.hooks and ("post", "add", 5, None) in t.hooks


def test_dequeue_and_execute_acknowledge_the_lease(h: Any, broker: Any) -> None:
    result = t.add(1, 1)
    task = h.dequeue()
    assert task.id == result.id
    assert state(broker, result.id) == "active"  # leased, still stored
    assert len(h) == 0
    assert h.execute(task) == 2
    assert state(broker, result.id) == "completed"
    assert result.get() == 2


def test_retries_map_onto_attempts_then_dead(h: Any, broker: Any, start_consumer: Any) -> None:
    result = t.always_fails(7)
    start_consumer(broker, ["report"])
    wait_until(lambda: state(broker, result.id) == "dead")
    info = jobs.get(result.id)
    assert (info.attempts, info.max_attempts) == (3, 3)  # retries=2: three attempts
    assert [c for c in t.calls if c[0] == "always_fails"] == [("always_fails", 7)] * 3
    with pytest.raises(TaskException, match="failure 7"):
        result.get(blocking=True, timeout=5)
    assert "failure 7" in info.errors[-1]["message"]
    assert [j["id"] for j in broker.queue("report").store.list_jobs("dead")] == [result.id]


def test_permanent_error_ends_huey_retries(h: Any, broker: Any, start_consumer: Any) -> None:
    result = t.permanent(1)
    start_consumer(broker, ["report"])
    wait_until(lambda: state(broker, result.id) == "dead")
    assert jobs.get(result.id).attempts == 1
    assert t.calls == [("permanent", 1)]


def test_retryable_error_delay_then_success(h: Any, broker: Any, start_consumer: Any) -> None:
    result = t.retry_once(4)
    start_consumer(broker, ["report"])
    assert result.get(blocking=True, timeout=10) == 40
    wait_until(lambda: state(broker, result.id) == "completed")
    info = jobs.get(result.id)
    assert info.attempts == 2 and info.errors[0]["type"] == "RetryableError"


def test_pipeline_runs_each_step_as_a_job(h: Any, broker: Any, start_consumer: Any) -> None:
    pipeline = t.add.s(1, 2).then(t.double).then(t.double)
    results = h.enqueue(pipeline)
    start_consumer(broker, ["report"])
    assert results.get(blocking=True, timeout=10) == [3, 6, 12]
    for result in results:
        wait_until(lambda r=result: state(broker, r.id) == "completed")


def test_delay_and_eta_schedule_the_job(h: Any, broker: Any) -> None:
    later = t.add.schedule((1, 2), delay=3600)
    at = t.add.schedule(
        (1, 2), eta=dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=2)
    )
    assert state(broker, later.id) == "scheduled" and state(broker, at.id) == "scheduled"
    assert {task.id for task in h.scheduled()} == {later.id, at.id}
    run_at = broker.queue("report").store.get_job(at.id)["run_at"]
    assert abs(run_at - (dt.datetime.now().timestamp() + 7200)) < 60


def test_revoke_by_id_and_by_task(h: Any, broker: Any, start_consumer: Any) -> None:
    first = t.add(1, 1)
    first.revoke()
    t.double.revoke()
    skipped = t.double(5)
    kept = t.add(2, 2)
    start_consumer(broker, ["report"])
    assert kept.get(blocking=True, timeout=10) == 4
    wait_until(lambda: state(broker, first.id) == "completed")
    wait_until(lambda: state(broker, skipped.id) == "completed")
    assert first.get() is None and skipped.get() is None
    assert t.double.restore()
    assert t.double(5).get(blocking=True, timeout=10) == 10


def test_lock_task_lets_one_run_at_a_time(h: Any, broker: Any, start_consumer: Any) -> None:
    first = t.locked(1)
    start_consumer(broker, ["report"], workers={"report": 2})
    wait_until(lambda: ("locked", 1) in t.calls)
    assert h.is_locked("one-at-a-time")
    second = t.locked(2)
    with pytest.raises(TaskException, match="unable to acquire lock"):
        second.get(blocking=True, timeout=10)
    t.gate.set()
    assert first.get(blocking=True, timeout=10) == 1
    assert not h.is_locked("one-at-a-time")


def test_context_task_and_signals(h: Any, broker: Any, start_consumer: Any) -> None:
    seen: list[tuple[str, str]] = []

    @h.signal()
    def record(signal: str, task: Any, *args: Any) -> None:
        seen.append((signal, task.id))

    try:
        result = t.with_context(3)
        start_consumer(broker, ["report"])
        assert result.get(blocking=True, timeout=10) == f"3:{result.id}"
        wait_until(lambda: ("complete", result.id) in seen)
        assert ("enqueued", result.id) in seen and ("executing", result.id) in seen
    finally:
        h.disconnect_signal(record)


def test_put_get_and_kv_live_in_the_queue_storage(h: Any, broker: Any) -> None:
    h.put("config", {"when": dt.date(2024, 1, 2), "pair": (1, 2), "raw": b"\x00"})
    assert h.get("config", peek=True) == {
        "when": dt.date(2024, 1, 2),
        "pair": (1, 2),
        "raw": b"\x00",
    }
    assert broker.queue("report").store.has_data_for_key("config")
    assert h.get("config") is not None and h.get("config") is None
    assert h.put_if_empty("once", 1) and not h.put_if_empty("once", 2)


def test_non_json_arguments_are_refused_at_enqueue(h: Any, broker: Any) -> None:
    with pytest.raises(PayloadError) as caught:
        t.add(1, {2})
    assert "args.1" in str(caught.value) and "pickle" in str(caught.value)
    with pytest.raises(PayloadError, match=r"kwargs\.b"):
        t.add(a=1, b=dt.datetime(2024, 1, 1))
    assert len(h) == 0 and broker.queue("report").store.counts()["waiting"] == 0


def test_crmqueue_job_messages_keep_their_format() -> None:
    from huey.registry import Message

    message = Message(id="ab12", name="m.f", args=(), kwargs={"tenant_id": "t1"})
    data = HueyMessages().serialize(message)
    assert data == b'{"id":"ab12","name":"m.f","payload":{"tenant_id":"t1"}}'
    assert HueyMessages().deserialize(data).kwargs == {"tenant_id": "t1"}


def test_values_round_trip() -> None:
    value = {"a": (1, [2, {3}]), "~odd": dt.timedelta(seconds=5), 4: "int key"}
    assert untag(tag(value)) == value


@pytest.fixture
def every_minute(h: Any) -> Any:
    @h.periodic_task(crontab(minute="*"), name="every_minute")
    def every_minute() -> None:
        t.calls.append(("every_minute",))

    yield every_minute
    every_minute.unregister()


def periodic_jobs(broker: Any) -> list[dict[str, Any]]:
    store = broker.queue("report").store
    found = [j for state in ("waiting", "active", "completed") for j in store.list_jobs(state)]
    return sorted((j for j in found if j["id"].startswith("periodic:")), key=lambda j: j["id"])


def test_periodic_task_runs_once_per_occurrence_across_consumers(
    h: Any, broker: Any, every_minute: Any, start_consumer: Any
) -> None:
    # Not in a minute's last seconds, so that the test sees one occurrence at first.
    wait_until(lambda: time.time() % 60 < 45, timeout=20)
    # Two consumers of the queue both offer the current minute's occurrence: one job.
    first = start_consumer(broker, ["report"])
    second = start_consumer(broker, ["report"])
    wait_until(lambda: ("every_minute",) in t.calls)
    wait_until(lambda: [j["state"] for j in periodic_jobs(broker)] == ["completed"])
    (job,) = periodic_jobs(broker)
    assert job["name"].endswith(".every_minute")
    assert job["id"].endswith(
        ":" + dt.datetime.fromtimestamp(job["created_at"], dt.UTC).strftime("%Y%m%d%H%M")
    )
    # The next minute, offered by each consumer's scheduler (and a third): one job more.
    later = time.time() + 60
    schedulers = (first._periodic, second._periodic, PeriodicScheduler())
    offered = [s.tick([broker.queue("report")], later) for s in schedulers]
    assert offered[0] == offered[1] == offered[2] and len(offered[0]) == 1
    wait_until(lambda: state(broker, offered[0][0]) == "completed")
    assert t.calls.count(("every_minute",)) == 2
    assert len(periodic_jobs(broker)) == 2


def test_pickle_is_opt_in_per_queue(make_broker: Any, start_consumer: Any) -> None:
    from decimal import Decimal

    t.reset()
    broker = make_broker({"queues.report.huey_pickle": True})
    result = t.echo(Decimal("1.5"))
    message = broker.queue("report").store.get_job(result.id)["message"]
    assert b'"pickle"' in message  # only the arguments JSON could not carry
    consumer = start_consumer(broker, ["report"])
    assert result.get(blocking=True, timeout=10) == Decimal("1.5")
    consumer.stop(5)

    # The same queue with huey_pickle off: pickled data is refused, never unpickled.
    stored = t.echo(Decimal("2.5"))
    t.h.put("kept", Decimal("3.5"))
    broker = make_broker()
    with pytest.raises(PayloadError, match="huey_pickle is off"):
        t.echo(Decimal("2.5"))
    with pytest.raises(PickleRefused):
        t.h.get("kept", peek=True)
    start_consumer(broker, ["report"])
    wait_until(lambda: state(broker, stored.id) == "dead")
    assert "huey_pickle is off" in jobs.get(stored.id).errors[-1]["message"]


def test_revocation_from_another_process_reaches_the_consumer(
    h: Any, broker: Any, start_consumer: Any
) -> None:
    from crmqueue.engine.huey_api import QueueHuey
    from crmqueue.engine.storage import open_store

    queue = broker.queue("report")
    start_consumer(broker, ["report"])
    assert t.add(1, 1).get(blocking=True, timeout=10) == 2  # the consumer saw none
    later = t.add.schedule((2, 2), delay=2)
    # Another process's Huey on the same storage revokes it by id.
    other = QueueHuey("report", open_store(broker.settings.storage.url, "report"), queue.spec)
    other.revoke_by_id(later.id)
    wait_until(lambda: state(broker, later.id) == "completed")
    assert later.get() is None and ("pre", "add") in t.hooks
    assert ("post", "add", 4, None) not in t.hooks  # skipped, never run
    assert other.restore_by_id(later.id)  # as in Huey, a revocation by id stays until restored
