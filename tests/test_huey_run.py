"""A Huey task module written as Huey's documentation writes them runs unchanged under a
real ``crmqueue run`` subprocess (listed in ``[runner] imports``), on SQLite and Redis:
tasks, retries, the periodic task, a locked task and a pipeline; a SIGKILL mid-task loses
nothing (the task runs again after its lease and completes)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import wait_until
from test_reliability import ConsumerProcess, spawn, wait_live, write_config  # noqa: F401

from crmqueue import jobs
from crmqueue.engine import Broker
from tests import huey_doc_tasks as doc

MODULE = "tests.huey_doc_tasks"
# The consumers under test are subprocesses that import the module as it is. This test
# process only enqueues: without this, any in-process consumer of the webhook queue in
# this pytest process (other test files) would offer the periodic task's occurrences.
doc.every_minute.unregister()
LEASE = 1.5


@pytest.fixture
def side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "side.txt"
    monkeypatch.setenv("HUEY_DOC_SIDE", str(path))  # the subprocess inherits it
    return path


def state(broker: Broker, job_id: str) -> str:
    record = broker.queue("webhook").store.get_job(job_id)
    return str(record["state"]) if record else "missing"


def config(tmp_path: Path, storage_url: str) -> Path:
    return write_config(
        tmp_path / "crmqueue.toml",
        storage_url,
        imports=[MODULE],
        runner={"heartbeat_seconds": 0.3},
        queues={"webhook": {"lease_seconds": LEASE, "backoff_seconds": 0.1}},
    )


def test_huey_module_runs_under_crmqueue_run(
    make_broker: Callable[..., Broker],
    storage_url: str,
    tmp_path: Path,
    side: Path,
    spawn: Callable[..., ConsumerProcess],  # noqa: F811
) -> None:
    broker = make_broker({"queues.webhook.lease_seconds": LEASE})
    proc = spawn(config(tmp_path, storage_url), "run", "--queues", "webhook")
    wait_live(broker.queue("webhook").store, proc)

    added = doc.add_numbers(2, 3)
    flaky = doc.flaky_task("a")
    report = doc.generate_report("q3")
    pipeline = doc.h.enqueue(doc.add_numbers.s(1, 2).then(doc.add_numbers, 10))

    assert added.get(blocking=True, timeout=30) == 5, proc.tail()
    assert flaky.get(blocking=True, timeout=30) == "a ok after 3", proc.tail()
    assert report.get(blocking=True, timeout=30) == "q3"
    assert pipeline.get(blocking=True, timeout=30) == [3, 13]
    wait_until(lambda: "every_minute" in doc.notes(), 30, message=proc.tail)

    info = jobs.get(flaky.id)
    assert (info.state, info.attempts, info.max_attempts) == ("completed", 3, 3)
    assert [e["type"] for e in info.errors] == ["ValueError", "ValueError"]
    assert jobs.get(added.id).name == f"{MODULE}.add_numbers"
    assert not doc.h.is_locked("reports-lock")
    stats = jobs.stats("webhook")
    assert stats["completed"] >= 6 and stats["dead"] == 0 and stats["workers"] >= 1


def test_sigkill_mid_task_loses_nothing(
    make_broker: Callable[..., Broker],
    storage_url: str,
    tmp_path: Path,
    side: Path,
    spawn: Callable[..., ConsumerProcess],  # noqa: F811
) -> None:
    broker = make_broker({"queues.webhook.lease_seconds": LEASE})
    cfg = config(tmp_path, storage_url)
    release = tmp_path / "release"
    proc = spawn(cfg, "run", "--queues", "webhook")
    wait_live(broker.queue("webhook").store, proc)

    result = doc.slow_task("s1", str(release))
    wait_until(lambda: "slow_task start s1" in doc.notes(), 30, message=proc.tail)
    assert state(broker, result.id) == "active"
    proc.kill()  # SIGKILL mid-task: the job stays stored, leased

    assert state(broker, result.id) == "active"
    release.touch()
    again = spawn(cfg, "run", "--queues", "webhook")
    assert result.get(blocking=True, timeout=60) == "s1 done", again.tail()
    wait_until(lambda: state(broker, result.id) == "completed", 30, message=again.tail)
    record = broker.queue("webhook").store.get_job(result.id)
    assert record["stalls"] == 1  # handed back by the reaper once its lease expired
    assert doc.notes().count("slow_task start s1") == 2
    assert doc.notes().count("slow_task end s1") == 1
