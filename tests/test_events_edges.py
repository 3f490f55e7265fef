"""Job events: cursors that are not ones this storage wrote are refused with an error
naming the cursor (not a storage traceback, not a silent stream), on SQLite and Redis."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import engine_settings, wait_until

import crmqueue.engine
from crmqueue import events
from crmqueue.engine import Broker, job
from crmqueue.engine.queues import Enqueue
from crmqueue.errors import CrmQueueError, PermanentError, Postpone, StorageUnavailable

EMAIL = {"to": "ann@example.com", "template": "welcome", "context": {"firstName": "Ann"}}


@pytest.mark.parametrize(
    "cursor",
    [
        "99999999999999999999999",  # beyond a 64-bit integer (SQLite OverflowError)
        "18446744073709551616-0",  # beyond a Redis stream id's 64-bit milliseconds
        "1-18446744073709551616",
        "\uff15",  # a fullwidth 5: int() reads it, no storage does
        "\u0665-0",  # an Arabic-Indic 5
        "1_0",  # int() reads 10
        " 3",
        "3-",
        "+3",
        "3\x00",
        "\udc80",
    ],
)
def test_a_malformed_cursor_is_refused_naming_it(broker: Broker, cursor: str) -> None:
    with pytest.raises(CrmQueueError, match="not an event cursor"):
        events.subscribe(cursor=cursor, idle_timeout=0.1)


def test_a_cursor_after_the_newest_event_is_refused(broker: Broker) -> None:
    broker.queue("email").enqueue_many(
        [Enqueue("crmqueue.workers.email.send", {**EMAIL, "tenant_id": "t1"})]
    )
    newest = events.latest_cursor()
    first, _, second = newest.partition("-")
    future = str(int(first) + 10**6) + (f"-{second}" if second else "")
    with pytest.raises(CrmQueueError, match="after the newest event"):
        events.subscribe(cursor=future, idle_timeout=0.1)
    # the newest itself and "0" are fine
    assert list(events.subscribe(cursor=newest, idle_timeout=0.1)) == []
    assert len(list(events.subscribe(cursor="0", idle_timeout=0.1))) == 1


def test_tail_follows_across_a_redis_restart(redis_server_aof: Any, tmp_path: Path) -> None:
    """``events tail`` as a process, its Redis stopped and started again under it: the
    events before and after all appear, once each, in order, and tail exits cleanly."""
    from tests.test_events import CRMQUEUE, subprocess_env

    config = tmp_path / "crmqueue.toml"
    config.write_text(
        f'[storage]\nurl = "{redis_server_aof.url}"\nconnect_timeout_seconds = 1.0\n'
        f'[database]\nurl = "sqlite:///{tmp_path}/crm.db"\n',
        encoding="utf-8",
    )
    settings = engine_settings(redis_server_aof.url, tmp_path)
    broker = crmqueue.engine.configure(settings)
    out = tmp_path / "tail.out"
    with out.open("wb") as sink:
        tail = subprocess.Popen(
            [CRMQUEUE, "events", "tail", "--json", "--from", "0", "--config", str(config)],
            cwd=tmp_path, env=subprocess_env(), stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def seen() -> list[str]:
            lines = out.read_text(encoding="utf-8", errors="replace").splitlines()
            return [json.loads(line)["job_id"] for line in lines if line.startswith("{")]

        def enqueue(n: int) -> list[str]:
            job = {**EMAIL, "tenant_id": "t1"}
            return broker.queue("email").enqueue_many(
                [Enqueue("crmqueue.workers.email.send", job) for _ in range(n)]
            )

        before = enqueue(5)
        wait_until(lambda: len(seen()) >= 5, timeout=15, message=lambda: out.read_text())
        redis_server_aof.stop()  # tail is now blocked on a dead connection
        redis_server_aof.start()

        def enqueue_after() -> list[str] | None:
            try:
                return enqueue(5)
            except StorageUnavailable:  # the producer's own reconnect is not under test
                return None

        after: list[str] = wait_until(enqueue_after, timeout=20, interval=0.1)
        wait_until(lambda: len(seen()) >= 10, timeout=20, message=lambda: out.read_text())
        assert seen() == before + after, out.read_text()
        assert tail.poll() is None, out.read_text()
    finally:
        tail.send_signal(signal.SIGTERM)
        tail.wait(10)
    assert tail.returncode == 0, out.read_text()


def test_idle_timeout_counts_only_the_events_the_filter_lets_through(broker: Broker) -> None:
    """A tail for a tenant with no jobs, while other tenants' jobs go on: it prints
    nothing, so it is idle, and stops after its idle timeout (it followed forever)."""
    import threading

    done = threading.Event()
    seen: list[Any] = []

    def follow() -> None:
        seen.extend(events.subscribe(tenant="nobody", idle_timeout=0.5))
        done.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    job = {**EMAIL, "tenant_id": "t1"}

    def busy_elsewhere() -> bool:
        broker.queue("email").enqueue_many([Enqueue("crmqueue.workers.email.send", job)])
        return done.wait(0.05)

    wait_until(busy_elsewhere, timeout=10, message="the idle tail to stop")
    assert seen == []


# a lone surrogate (os.fsdecode of a Latin-1 file name) and a NUL
ODD = "bad file name caf\udce9\x00.csv"


@job("email")
def fail_with_odd_text(payload: dict[str, Any]) -> None:
    raise PermanentError(ODD)


@job("email")
def postpone_with_odd_text(payload: dict[str, Any]) -> None:
    raise Postpone(ODD, 3600)


@job("email")
def return_odd_text(payload: dict[str, Any]) -> str:
    return ODD


@pytest.mark.parametrize(
    ("body", "state", "event_type"),
    [
        ("fail_with_odd_text", "dead", "dead"),
        ("postpone_with_odd_text", "delayed", "postponed"),
        ("return_odd_text", "completed", "completed"),
    ],
)
def test_odd_text_from_a_job_is_recorded(
    broker: Broker, start_consumer: Any, body: str, state: str, event_type: str
) -> None:
    """A lone surrogate and a NUL in what a job raises, postpones with or returns: the
    outcome is recorded (not the job stuck active, its consumer's step failing on the
    encoding: SQLite's UnicodeEncodeError, Redis's cjson 'invalid unicode escape') and
    its event written."""
    start = events.latest_cursor()
    [job_id] = broker.queue("email").enqueue_many(
        [Enqueue(f"{__name__}.{body}", {"tenant_id": "t1"})]
    )
    start_consumer(broker, ["email"])
    wait_until(
        lambda: (broker.queue("email").store.get_job(job_id) or {}).get("state") == state,
        timeout=15,
        message=lambda: str(broker.queue("email").store.get_job(job_id)),
    )
    seen = [e for e in events.subscribe(cursor=start, idle_timeout=0.3) if e.type == event_type]
    assert [e.job_id for e in seen] == [job_id]
