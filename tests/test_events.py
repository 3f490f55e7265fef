"""Job events (issue 16, item 1), on SQLite and Redis: every transition is an event in
the storage's capped stream, written in the step that makes the transition.

The cross-process test runs real ``crmqueue worker`` and ``crmqueue events tail``
subprocesses and SIGKILLs the consumer mid-run; the others use in-process consumers and
the Python API. Waiting is always a condition with a deadline.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, wait_until

from crmqueue import events, jobs
from crmqueue.engine import Broker
from crmqueue.engine.events import EventFilter, ListenerHub
from crmqueue.engine.queues import Enqueue
from crmqueue.errors import CrmQueueError

CRMQUEUE = str(Path(sys.executable).parent / "crmqueue")
STEP = "tests.test_events_jobs.step"
FIXTURE = "tests.fixture_jobs"


@pytest.fixture(autouse=True)
def _close_listeners() -> Iterator[None]:
    yield
    events.close()


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMQUEUE_", "REDIS_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def write_config(path: Path, storage_url: str, lease: float, heartbeat: float) -> Path:
    path.write_text(
        f'[storage]\nurl = "{storage_url}"\n'
        f'[runner]\nimports = ["tests.test_events_jobs"]\nheartbeat_seconds = {heartbeat}\n'
        f"[queues.email]\nlease_seconds = {lease}\nbackoff_seconds = 0.01\n",
        encoding="utf-8",
    )
    return path


class Process:
    """A crmqueue subprocess with its output in a file of its own."""

    def __init__(self, args: list[str], out: Path) -> None:
        self.out = out
        with out.open("ab") as sink:
            self.popen = subprocess.Popen(
                [CRMQUEUE, *args], cwd=out.parent, env=subprocess_env(), stdout=sink,
                stderr=subprocess.STDOUT if "tail" not in args else None,
            )  # fmt: skip

    def text(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


@pytest.fixture
def spawn() -> Iterator[Callable[[list[str], Path], Process]]:
    started: list[Process] = []

    def start(args: list[str], out: Path) -> Process:
        started.append(Process(args, out))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


def follow_all(cursor: str, idle: float = 0.5) -> list[events.Event]:
    return list(events.subscribe(cursor=cursor, idle_timeout=idle))


# --------------------------------------------------------------------------- across processes

JOBS = 200


def _walk(job_events: list[dict[str, Any]]) -> None:
    """One job's events are a possible life, in order: enqueued; each run active (then
    progress), ending completed, failed + retrying, or stalled (its consumer killed)."""
    types = [e["type"] for e in job_events]
    assert types[0] == "enqueued", types
    state = "waiting"
    allowed = {
        "active": ({"waiting", "delayed"}, "active"),
        "progress": ({"active"}, "active"),
        "completed": ({"active"}, "completed"),
        "failed": ({"active"}, "failed"),
        "retrying": ({"failed"}, "delayed"),
        "stalled": ({"active"}, "waiting"),
    }
    for event in job_events[1:]:
        before, after = allowed[event["type"]]
        assert state in before, f"{event['type']} after {state}: {types}"
        state = after
    assert state == "completed", types


def test_subscriber_in_another_process_sees_every_transition_across_a_sigkill(
    make_broker: Callable[..., Broker],
    storage_url: str,
    tmp_path: Path,
    spawn: Callable[[list[str], Path], Process],
) -> None:
    lease, heartbeat = 1.5, 0.3
    broker = make_broker(
        {"queues.email.lease_seconds": lease, "runner.heartbeat_seconds": heartbeat}
    )
    store = broker.queue("email").store
    config = write_config(tmp_path / "crmqueue.toml", storage_url, lease, heartbeat)
    start = events.latest_cursor()
    tail = spawn(
        ["events", "tail", "--json", "--queue", "email", "--from", start, "--config", str(config)],
        tmp_path / "tail.jsonl",
    )
    items = [
        Enqueue(STEP, {"tenant_id": f"t{n % 3}", "ms": 30, "fail_first": n % 10 == 0})
        for n in range(JOBS)
    ]
    ids = broker.queue("email").enqueue_many(items)

    worker = ["worker", "email", "--workers", "4", "--config", str(config)]
    first = spawn(worker, tmp_path / "worker-1.log")
    wait_until(
        lambda: store.counts()["completed"] >= JOBS // 3,
        60,
        message=lambda: f"a third of the jobs to complete: {store.counts()}{first.text()[-2000:]}",
    )
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait(10)
    active_at_kill = store.counts()["active"]
    second = spawn(worker, tmp_path / "worker-2.log")
    wait_until(
        lambda: store.counts()["completed"] == JOBS,
        60,
        message=lambda: f"all jobs to complete: {store.counts()}{second.text()[-2000:]}",
    )

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in tail.text().splitlines() if line.strip()]

    wait_until(
        lambda: sum(e["type"] == "completed" for e in lines()) == JOBS,
        30,
        message=lambda: f"the subscriber to see {JOBS} completions: {tail.text()[-1500:]}",
    )
    tail.popen.send_signal(signal.SIGTERM)
    assert tail.popen.wait(10) == 0
    received = lines()

    cursors = [events.cursor_key(e["cursor"]) for e in received]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
    per_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in received:
        per_job[event["job_id"]].append(event)
    assert set(per_job) == set(ids)  # no event invented, no job missed
    for job_id in ids:
        record = store.get_job(job_id)
        assert record is not None
        mine = per_job[job_id]
        _walk(mine)
        count: defaultdict[str, int] = defaultdict(int)
        for event in mine:
            count[event["type"]] += 1
        # Every transition the record went through is there, once.
        assert count["active"] == record["attempts"] + record["stalls"], mine
        assert count["stalled"] == record["stalls"]
        assert count["failed"] == count["retrying"] == len(record["errors"])
        assert count["enqueued"] == count["completed"] == 1
        assert {e["tenant"] for e in mine} == {record["tenant"]}
        assert mine[-1]["progress"] == 100 and mine[-1]["kind"] == STEP
    stalled = [e for e in received if e["type"] == "stalled"]
    retried = [e for e in received if e["type"] == "retrying"]
    assert active_at_kill >= 1 and len(stalled) == active_at_kill
    assert all(e["error"].startswith("Stalled:") and e["state"] == "waiting" for e in stalled)
    assert len(retried) == JOBS // 10
    assert all(e["error"] == "RetryableError: first attempt fails" for e in retried)
    print(f"\n{storage_url.split(':')[0]}: {len(received)} events, {len(stalled)} stall(s)")


# --------------------------------------------------------------------------- listeners


def test_a_raising_listener_changes_no_outcome(
    broker: Broker, start_consumer: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[events.Event] = []
    raised = threading.Event()

    def explode(event: events.Event) -> None:
        raised.set()
        raise RuntimeError("listener bug")

    events.on_any(explode)
    events.on(["completed", "dead"], seen.append, queue="email")
    events.on("completed", seen.append, queue="report")  # never matches
    queue = broker.queue("email")
    good = [queue.enqueue(f"{FIXTURE}.noop", {"tenant_id": "t1", "key": str(n)}) for n in range(5)]
    bad = queue.enqueue(f"{FIXTURE}.permanent", {"tenant_id": "t1", "key": "p"})
    start_consumer(broker, ["email"])
    wait_until(lambda: len(seen) == 6, message=lambda: f"6 events, got {seen}")
    assert raised.is_set()
    assert all(jobs.get(job_id).state == "completed" for job_id in good)
    assert jobs.get(bad).state == "dead"
    assert {e.job_id: e.type for e in seen} == {**dict.fromkeys(good, "completed"), bad: "dead"}
    assert "PermanentError: bad recipient" in next(e.error or "" for e in seen if e.job_id == bad)
    assert "listener bug" in caplog.text and "the job is not affected" in caplog.text
    assert events.off(explode) == 1 and events.off(explode) == 0


def test_a_full_hand_off_drops_and_counts_without_slowing_producers(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    gate = threading.Event()
    store = broker.queue("email").store
    hub = ListenerHub(lambda: store, queue_size=2)
    got: list[str] = []
    hub.add(lambda e: (gate.wait(10), got.append(e.job_id)), EventFilter())
    try:
        started = time.monotonic()
        for n in range(40):
            broker.queue("email").enqueue(f"{FIXTURE}.noop", {"tenant_id": "t1", "n": n})
        took = time.monotonic() - started
        wait_until(lambda: hub.dropped >= 30, message=lambda: f"drops, {hub.dropped}")
        assert took < 5
        assert "event listeners are behind" in caplog.text
    finally:
        gate.set()
        hub.close()
    assert len(got) <= 40 - hub.dropped


# --------------------------------------------------------------------------- the stream


def test_the_stream_is_trimmed_at_its_cap(
    make_broker: Callable[..., Broker], caplog: pytest.LogCaptureFixture
) -> None:
    cap = 200
    broker = make_broker({"events.max_len": cap})
    queue, store = broker.queue("email"), broker.queue("email").store
    first = events.latest_cursor()
    for start in range(0, 3000, 100):
        batch = range(start, start + 100)
        queue.enqueue_many([Enqueue(f"{FIXTURE}.noop", {"tenant_id": "t1", "n": n}) for n in batch])
    last = queue.enqueue(f"{FIXTURE}.noop", {"tenant_id": "t1", "n": "last"})
    kept = store.read_events("0", 100_000)
    # Redis trims whole stream nodes (MAXLEN ~, 100 entries a node); SQLite a tenth of
    # the cap at a time.
    assert cap <= len(kept) <= cap + 120, len(kept)
    assert kept[-1]["id"] == last
    with caplog.at_level(logging.WARNING, "crmqueue.events"):
        replay = follow_all(first, idle=0.3)
    assert "were trimmed before they were read" in caplog.text
    assert [e.cursor for e in replay] == [e["cursor"] for e in kept]


def test_no_events_are_written_with_a_cap_of_zero(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker({"events.max_len": 0})
    first = events.latest_cursor()
    job_id = broker.queue("email").enqueue(f"{FIXTURE}.noop", {"tenant_id": "t1"})
    jobs.remove(job_id)
    assert broker.queue("email").store.read_events("0") == []
    assert follow_all(first, idle=0.2) == []


def test_a_subscriber_resumes_from_its_cursor_without_gaps(broker: Broker) -> None:
    queue = broker.queue("email")
    start = events.latest_cursor()
    written: list[str] = []

    def produce() -> None:
        for n in range(300):
            written.append(queue.enqueue(f"{FIXTURE}.noop", {"tenant_id": "t1", "n": n}))

    producer = threading.Thread(target=produce)
    producer.start()
    first: list[events.Event] = []
    for event in events.subscribe(cursor=start, idle_timeout=10):
        first.append(event)
        if len(first) == 100:
            break
    rest = list(events.subscribe(cursor=first[-1].cursor, idle_timeout=1.0))
    producer.join()
    assert [e.job_id for e in first + rest] == written
    assert {e.type for e in first + rest} == {"enqueued"}


def test_removed_replayed_and_the_rest_of_a_life_appear(
    broker: Broker, start_consumer: Callable[..., Any]
) -> None:
    queue = broker.queue("email")
    start = events.latest_cursor()
    doomed = queue.enqueue(f"{FIXTURE}.noop", {"tenant_id": "t9"}, delay=60)
    jobs.remove(doomed)
    dead = queue.enqueue(f"{FIXTURE}.permanent", {"tenant_id": "t9", "key": "d"})
    consumer = start_consumer(broker, ["email"])
    wait_until(lambda: jobs.get(dead).state == "dead")
    assert jobs.replay_dead("email") == [dead]
    wait_until(lambda: jobs.get(dead).state == "dead" and jobs.get(dead).attempts == 1)
    consumer.stop(1.0)
    got = [(e.job_id, e.type, e.state) for e in follow_all(start)]
    assert got == [
        (doomed, "enqueued", "scheduled"),
        (doomed, "removed", "removed"),
        (dead, "enqueued", "waiting"),
        (dead, "active", "active"),
        (dead, "failed", "dead"),
        (dead, "dead", "dead"),
        (dead, "replayed", "waiting"),
        (dead, "active", "active"),
        (dead, "failed", "dead"),
        (dead, "dead", "dead"),
    ]
    filtered = list(events.subscribe(tenant="t9", types="removed", cursor=start, idle_timeout=0.2))
    assert [e.job_id for e in filtered] == [doomed]
    assert list(events.subscribe(tenant="t1", cursor=start, idle_timeout=0.2)) == []


def test_bad_arguments_are_refused_with_a_clear_error(broker: Broker) -> None:
    with pytest.raises(CrmQueueError, match="unknown event type 'finished'"):
        events.on("finished", print)
    with pytest.raises(CrmQueueError, match="not an event cursor"):
        events.subscribe(cursor="yesterday")
    other = "5-0" if events.latest_cursor().isdigit() else "17"
    if other == "5-0":  # a Redis cursor given to SQLite
        with pytest.raises(CrmQueueError, match="SQLite event cursor"):
            events.subscribe(cursor=other)


def test_a_version_2_sqlite_queue_database_gains_the_events_table(tmp_path: Path) -> None:
    import contextlib
    import sqlite3

    from crmqueue.engine.storage import SQLITE_SCHEMA_VERSION, NewJob, SqliteJobStore

    path = str(tmp_path / "queues.db")
    SqliteJobStore("email", filename=path)
    with contextlib.closing(sqlite3.connect(path)) as conn:  # as crmqueue left it before
        conn.executescript("drop table job_events; pragma user_version = 2;")
    store = SqliteJobStore("email", filename=path)
    store.enqueue_jobs([NewJob("j1", "email", "a.b", "t1", 0, 1, b"{}")])
    assert [(e["type"], e["id"], e["cursor"]) for e in store.read_events("0")] == [
        ("enqueued", "j1", "1")
    ]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("pragma user_version").fetchone()[0] == SQLITE_SCHEMA_VERSION == 4


def test_notification_follow_up_jobs_have_short_kinds() -> None:
    """The sms and push jobs a notification queues show (and filter) as kinds `sms` and
    `push`, like `send` for the notification itself, not as their dotted task names."""
    from crmqueue.engine.events import Event
    from crmqueue.workers.notification import SMS_TASK
    from crmqueue.workers.push import SEND_PUSH

    def event(name: str) -> Event:
        return Event("completed", "j1", "notification", name, "t1", "completed", 100, 1,
                     None, None, 0.0, "1")  # fmt: skip

    sms, push = event(SMS_TASK), event(SEND_PUSH)
    assert (sms.kind, push.kind) == ("sms", "push")
    assert sms.to_dict()["kind"] == "sms"
    assert EventFilter.of(kinds="sms").matches(sms)
    assert not EventFilter.of(kinds="sms").matches(push)
    assert EventFilter.of(kinds=SEND_PUSH).matches(push)  # the task name still works


def test_a_version_3_sqlite_events_table_is_converted_to_the_compact_one(tmp_path: Path) -> None:
    """Version 3 kept type and state as text; version 4 as codes. The kept events come
    through the upgrade unchanged (same cursors, same fields), and new ones follow them."""
    import contextlib
    import sqlite3

    from crmqueue.engine.storage import NewJob, SqliteJobStore

    path = str(tmp_path / "queues.db")
    SqliteJobStore("email", filename=path)
    with contextlib.closing(sqlite3.connect(path)) as conn:  # as version 3 left it
        conn.executescript(
            "drop table job_events;"
            "create table job_events (seq integer primary key, type text not null,"
            " job_id text not null, queue text not null, name text not null,"
            " tenant text not null, state text not null, progress integer not null default 0,"
            " attempt integer not null default 0, consumer text, error text, at real not null);"
            "insert into job_events values (7, 'dead', 'j0', 'email', 'a.b', 't1', 'dead', 40,"
            " 3, 'h:1:abc', 'Boom: no', 1.5);"
            "insert into job_events values (8, 'removed', 'j0', 'email', 'a.b', 't1',"
            " 'removed', 40, 3, null, null, 2.5);"
            "pragma user_version = 3;"
        )
    store = SqliteJobStore("email", filename=path)
    store.enqueue_jobs([NewJob("j1", "email", "a.b", "t2", 0, 1, b"{}")])
    got = store.read_events("0")
    assert [{k: e[k] for k in ("cursor", "type", "id", "state")} for e in got] == [
        {"cursor": "7", "type": "dead", "id": "j0", "state": "dead"},
        {"cursor": "8", "type": "removed", "id": "j0", "state": "removed"},
        {"cursor": "9", "type": "enqueued", "id": "j1", "state": "waiting"},
    ]
    assert {k: got[0][k] for k in ("progress", "attempt", "consumer", "error", "at")} == {
        "progress": 40, "attempt": 3, "consumer": "h:1:abc", "error": "Boom: no", "at": 1.5,
    }  # fmt: skip
    assert store.events_bounds() == ("7", "9", "6")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        types = {row[1]: row[2] for row in conn.execute("pragma table_info(job_events)")}
        assert types["type"] == types["state"] == "INTEGER"


@pytest.mark.parametrize("keep", [3600, 0])
def test_a_batch_claim_and_group_commit_write_one_event_a_job(tmp_path: Path, keep: int) -> None:
    """Claims and completions of several jobs write their events in one statement over
    the batch (SQLite): exactly one event a job, with that job's fields, also for ids
    that need quoting, and none for a job the batch no longer owns."""
    from crmqueue.engine.storage import NewJob, SqliteJobStore

    store = SqliteJobStore("email", filename=str(tmp_path / "queues.db"))
    ids = ["plain", 'q"uote', "back\\slash", "ünï", "gone"]
    store.enqueue_jobs([NewJob(i, "email", "a.b", f"t-{i}", 0, 3, b"{}") for i in ids])
    claims = store.claim("host:1:abc", 60, limit=5).jobs
    assert sorted(c.id for c in claims) == sorted(ids)
    store.complete_many([(c, None) for c in claims if c.id == "gone"], keep)
    lost = next(c for c in claims if c.id == "gone")  # already recorded: no second event
    rest = [c for c in claims if c.id != "gone"]
    assert store.complete_many([(c, None) for c in [*rest, lost]], keep) == [True] * 4 + [False]
    got = store.read_events("0")
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in got:
        by_type.setdefault(event["type"], []).append(event)
    assert sorted(by_type) == ["active", "completed", "enqueued"]
    for kind, state in (("active", "active"), ("completed", "completed")):
        assert sorted(e["id"] for e in by_type[kind]) == sorted(ids)
        for e in by_type[kind]:
            assert (e["tenant"], e["name"], e["queue"], e["state"]) == (
                f"t-{e['id']}",
                "a.b",
                "email",
                state,
            )
            assert (e["attempt"], e["consumer"]) == (1, "host:1:abc")
    assert {e["progress"] for e in by_type["completed"]} == {100}
    assert [int(e["cursor"]) for e in got] == list(range(1, len(got) + 1))
