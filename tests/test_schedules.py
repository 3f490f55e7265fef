"""Recurring schedules (issue #16) with a controllable clock, on real storages: each
occurrence enqueued once with three schedulers racing (one lock, and three overlapping
leaders) on SQLite and Redis; both catch-up policies after a 3-hour outage; DST in
Europe/Berlin and America/New_York; pause and resume; a relative report range resolved
on the occurrence's day in the schedule's zone; bad definitions refused naming the
field; the CRM store on SQLite and PostgreSQL; [[schedules]] from the configuration."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from crmqueue.config import load_settings
from crmqueue.errors import ConfigError, CrmQueueError, PayloadError
from crmqueue.schedules import Schedule, Scheduler, ScheduleService, occurrence_job_id
from tests.conftest import wait_until
from tests.crm_db import crm_url, pg_url  # noqa: F401  (fixtures)

UTC = dt.UTC
EMAIL = {"to": "ann@example.com", "template": "welcome", "context": {"firstName": "Ann"}}
REPORT = {"user_id": "u1", "report_type": "sales", "format": "pdf"}
SQLITE_ONLY = pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)


class Clock:
    """A clock the test moves: Unix seconds."""

    def __init__(self, start: dt.datetime) -> None:
        self.t = start.timestamp()

    def __call__(self) -> float:
        return self.t

    def set(self, moment: dt.datetime) -> None:
        self.t = moment.timestamp()

    @property
    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.t, UTC)


def at(text: str, zone: str = "UTC") -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)


def sched_jobs(broker: Any, queue: str = "email") -> list[dict[str, Any]]:
    store = broker.queue(queue).store
    found = store.list_jobs("waiting", 10_000) + store.list_jobs("scheduled", 10_000)
    return sorted((job for job in found if job["id"].startswith("sched-")), key=lambda j: j["id"])


def payload_of(broker: Any, queue: str, job_id: str) -> dict[str, Any]:
    record = broker.queue(queue).store.get_job(job_id)
    assert record is not None, job_id
    message: dict[str, Any] = json.loads(record["message"])
    return message["payload"]  # type: ignore[no-any-return]


def run_until(scheduler: Scheduler, clock: Clock, end: dt.datetime) -> list[dt.datetime]:
    """Tick at every time the scheduler says the next occurrence is due, up to `end`:
    the times it woke for."""
    woke = []
    scheduler.tick()
    while scheduler.next_due_at is not None and scheduler.next_due_at <= end:
        clock.set(scheduler.next_due_at)
        woke.append(scheduler.next_due_at)
        scheduler.tick()
    return woke


@pytest.fixture
def service(broker: Any) -> ScheduleService:
    return ScheduleService(broker.settings)


@pytest.fixture
def scheduler(make_broker: Callable[..., Any]) -> Iterator[Callable[..., Scheduler]]:
    """make(clock, ...) builds a Scheduler on the process broker's settings (the test's
    latest make_broker); each is stopped at the end."""
    from crmqueue.engine.queues import get_broker

    made: list[Scheduler] = []

    def make(clock: Clock, **kwargs: Any) -> Scheduler:
        made.append(Scheduler(get_broker().settings, clock=clock, **kwargs))
        return made[-1]

    yield make
    for one in made:
        one.stop()


def add_email(service: ScheduleService, now: dt.datetime, **kwargs: Any) -> Schedule:
    fields: dict[str, Any] = {"queue": "email", "payload": EMAIL, "now": now}
    fields.update(kwargs)
    return service.add("t1", fields.pop("name", "mail"), **fields)


# --------------------------------------------------------------------------- exactly once


@pytest.mark.parametrize("one_lock", [True, False], ids=["one-lock", "overlapping-leaders"])
def test_each_occurrence_once_with_three_schedulers_racing(
    broker: Any, service: ScheduleService, scheduler: Callable[..., Scheduler], one_lock: bool
) -> None:
    start = at("2026-06-01T10:00:00")
    clock = Clock(start)
    schedule = add_email(service, start, cron="*/5 * * * *")
    # overlapping-leaders: each holds a lock of its own, so all three enqueue every time
    racers = [scheduler(clock, lock_name="scheduler" if one_lock else f"lock{i}") for i in range(3)]
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def race(one: Scheduler) -> None:
        try:
            barrier.wait(10)
            one.tick()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    expected = []
    for step in range(1, 13):
        clock.set(start + dt.timedelta(minutes=5 * step))
        expected.append(occurrence_job_id(schedule.id, clock.now))
        threads = [threading.Thread(target=race, args=(one,)) for one in racers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert not errors, errors
    assert sum(one.is_leader for one in racers) == (1 if one_lock else 3)
    jobs = sched_jobs(broker)
    assert [job["id"] for job in jobs] == expected
    assert broker.queue("email").store.counts()["waiting"] == 12
    shown = service.show("t1", schedule.id)
    assert shown.last_run_at == start + dt.timedelta(hours=1)
    assert shown.next_due_at == start + dt.timedelta(hours=1, minutes=5)


def test_a_second_enqueue_of_an_occurrence_is_a_no_op(
    broker: Any, service: ScheduleService
) -> None:
    """Two leaders that both read the same due row: the second enqueues nothing (the
    revision moved). A leader whose state update was lost after its enqueue (a crash
    before the commit) enqueues the occurrence again under the same id: the job, already
    run, is left as it is and not run twice."""
    import sqlalchemy as sa

    from crmqueue.crm import schema

    start = at("2026-06-01T10:00:00")
    schedule = add_email(service, start, interval_seconds=60)
    other = ScheduleService(broker.settings)
    due = start + dt.timedelta(seconds=60)
    first = service.fire_due(due)
    second = other.fire_due(due)
    assert first == [occurrence_job_id(schedule.id, due)] and second == []
    store = broker.queue("email").store
    (claim,) = store.claim("test-consumer", 30.0, 1).jobs
    assert claim.id == first[0]
    assert store.complete(claim, None, 3600)
    with service.engine.begin() as conn:  # the state as before the first fire
        conn.execute(
            sa.update(schema.schedules)
            .where(schema.schedules.c.id == schedule.id)
            .values(next_due_at=due)
        )
    assert other.fire_due(due) == first
    record = store.get_job(first[0])
    assert record is not None and record["state"] == "completed"
    assert store.counts()["waiting"] == 0 and store.counts()["completed"] == 1


# --------------------------------------------------------------------------- catch-up


@SQLITE_ONLY
@pytest.mark.parametrize("policy", ["skip", "run-once"])
def test_catch_up_after_a_three_hour_outage(
    broker: Any, service: ScheduleService, scheduler: Callable[..., Scheduler], policy: str
) -> None:
    start = at("2026-06-01T10:00:00")
    clock = Clock(start)
    schedule = add_email(service, start, cron="*/15 * * * *", catch_up=policy)
    one = scheduler(clock)
    woke = run_until(one, clock, start + dt.timedelta(minutes=30))
    assert woke == [start + dt.timedelta(minutes=15), start + dt.timedelta(minutes=30)]
    assert len(sched_jobs(broker)) == 2
    # Down from 10:30 to 13:40: the occurrences 10:45 .. 13:30 (12 of them) are missed.
    clock.set(start + dt.timedelta(hours=3, minutes=40))
    one.tick()
    ids = [job["id"] for job in sched_jobs(broker)]
    latest_missed = start + dt.timedelta(hours=3, minutes=30)
    if policy == "skip":
        assert len(ids) == 2
    else:
        assert len(ids) == 3 and occurrence_job_id(schedule.id, latest_missed) in ids
    assert one.next_due_at == start + dt.timedelta(hours=3, minutes=45)
    # Then on time again: the next one runs as usual.
    clock.set(start + dt.timedelta(hours=3, minutes=45))
    one.tick()
    assert len(sched_jobs(broker)) == (3 if policy == "skip" else 4)


@SQLITE_ONLY
def test_an_occurrence_found_within_the_grace_runs_under_skip(
    broker: Any, service: ScheduleService
) -> None:
    start = at("2026-06-01T10:00:00")
    add_email(service, start, interval_seconds=3600, catch_up="skip")
    assert len(service.fire_due(start + dt.timedelta(hours=1, seconds=30))) == 1  # 30 s late
    assert service.fire_due(start + dt.timedelta(hours=2, minutes=5)) == []  # 5 min late


# --------------------------------------------------------------------------- DST


DST_CASES = [
    # zone, cron, the days around the change, the one run expected on the change day
    ("Europe/Berlin", "30 2 * * *", "2026-03-28", "2026-03-29T03:00:00"),  # spring forward
    ("Europe/Berlin", "30 2 * * *", "2026-10-24", "2026-10-25T02:30:00+02:00"),  # fall back
    ("America/New_York", "30 2 * * *", "2026-03-07", "2026-03-08T03:00:00"),
    ("America/New_York", "30 1 * * *", "2026-10-31", "2026-11-01T01:30:00-04:00"),
]


@SQLITE_ONLY
@pytest.mark.parametrize(("zone", "cron", "first_day", "change_run"), DST_CASES)
def test_dst_neither_skips_nor_doubles(
    broker: Any,
    service: ScheduleService,
    scheduler: Callable[..., Scheduler],
    zone: str,
    cron: str,
    first_day: str,
    change_run: str,
) -> None:
    start = at(f"{first_day}T12:00:00", zone)
    clock = Clock(start)
    schedule = add_email(service, start, cron=cron, time_zone=zone)
    woke = run_until(scheduler(clock), clock, start + dt.timedelta(days=3))
    local_days = [w.astimezone(ZoneInfo(zone)).date() for w in woke]
    first = dt.date.fromisoformat(first_day)
    assert local_days == [first + dt.timedelta(days=n) for n in (1, 2, 3)]  # once a day
    moment = dt.datetime.fromisoformat(change_run)
    expected = (
        moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(zone))
    ).astimezone(UTC)
    assert woke[0] == expected
    ids = [job["id"] for job in sched_jobs(broker)]
    assert ids == [occurrence_job_id(schedule.id, w) for w in woke]


@SQLITE_ONLY
def test_hourly_follows_real_time_through_fall_back(
    broker: Any, service: ScheduleService, scheduler: Callable[..., Scheduler]
) -> None:
    zone = "America/New_York"
    start = at("2026-11-01T00:00:00", zone)
    clock = Clock(start)
    add_email(service, start, cron="0 * * * *", time_zone=zone)
    woke = run_until(scheduler(clock), clock, at("2026-11-02T00:00:00", zone))
    assert len(woke) == 25  # the day has 25 hours, 01:00 twice
    assert all(b - a == dt.timedelta(hours=1) for a, b in itertools.pairwise(woke))


# --------------------------------------------------------------------------- pause/resume


@SQLITE_ONLY
def test_pause_and_resume(
    broker: Any, service: ScheduleService, scheduler: Callable[..., Scheduler]
) -> None:
    start = at("2026-06-01T10:00:00")
    clock = Clock(start)
    schedule = add_email(service, start, interval_seconds=600)
    one = scheduler(clock)
    run_until(one, clock, start + dt.timedelta(minutes=10))
    assert len(sched_jobs(broker)) == 1
    paused = service.pause("t1", schedule.id, now=clock.now)
    assert paused.paused
    clock.set(start + dt.timedelta(hours=1))
    one.tick()
    assert len(sched_jobs(broker)) == 1 and one.next_due_at is None
    resumed = service.resume("t1", schedule.id, now=clock.now)
    assert resumed.next_due_at == start + dt.timedelta(hours=1, minutes=10)
    woke = run_until(one, clock, start + dt.timedelta(hours=1, minutes=20))
    assert woke == [
        start + dt.timedelta(hours=1, minutes=10),
        start + dt.timedelta(hours=1, minutes=20),
    ]
    assert len(sched_jobs(broker)) == 3


# --------------------------------------------------------------------------- relative ranges


@SQLITE_ONLY
def test_relative_ranges_resolve_on_the_occurrence_day_in_the_schedule_zone(
    broker: Any, service: ScheduleService, scheduler: Callable[..., Scheduler]
) -> None:
    zone = "Europe/Berlin"
    start = at("2026-11-27T12:00:00", zone)  # a Friday
    clock = Clock(start)
    weekly = service.add(
        "t1", "weekly sales", queue="report", cron="0 8 * * MON", time_zone=zone,
        payload={**REPORT, "date_range": "last_7_days"}, now=start,
    )  # fmt: skip
    # 00:30 in Berlin on the 1st is still the 30th (UTC): the zone decides the month.
    monthly = service.add(
        "t1", "monthly", queue="report", cron="30 0 1 * *", time_zone=zone,
        payload={**REPORT, "dateRange": "previous_month"}, now=start,
    )  # fmt: skip
    mtd = service.add(
        "t1", "mtd", queue="report", cron="30 0 1 * *", time_zone=zone,
        payload={**REPORT, "date_range": "month_to_date"}, now=start,
    )  # fmt: skip
    assert weekly.payload["date_range"] == "last_7_days"  # stored as given
    run_until(scheduler(clock), clock, at("2026-12-01T00:30:00", zone))
    by_schedule = {job["id"].split("-")[1]: job["id"] for job in sched_jobs(broker, "report")}
    week = payload_of(broker, "report", by_schedule[str(weekly.id)])
    assert week["date_range"] == {"start_date": "2026-11-23", "end_date": "2026-11-29"}
    month = payload_of(broker, "report", by_schedule[str(monthly.id)])
    assert month["date_range"] == {"start_date": "2026-11-01", "end_date": "2026-11-30"}
    to_date = payload_of(broker, "report", by_schedule[str(mtd.id)])
    assert to_date["date_range"] == {"start_date": "2026-12-01", "end_date": "2026-12-01"}


# --------------------------------------------------------------------------- refusals


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * * * *"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),
        ({"cron": "0 8 * * *", "interval_seconds": 60}, "cron"),
        ({"interval_seconds": 0}, "interval_seconds"),
        ({"cron": "0 8 * * *", "time_zone": "Mars/Olympus"}, "time_zone"),
        ({"cron": "0 8 * * *", "time_zone": "localtime"}, "time_zone"),
        ({"cron": "0 8 * * *", "catch_up": "all"}, "catch_up"),
        ({"cron": "0 8 * * *", "queue": "fax"}, "queue"),
        ({"cron": "0 8 * * *", "kind": "nope"}, "kind"),
        ({"cron": "0 8 * * *", "payload": {"to": "ann@example.com"}}, "payload.template"),
        (
            {"cron": "0 8 * * *", "payload": {**EMAIL, "tenant_id": "t2"}},
            "payload.tenant_id",
        ),
        (
            {"cron": "0 8 * * *", "queue": "report", "payload": {**REPORT, "date_range": "ever"}},
            "payload.date_range",
        ),
        (
            {
                "cron": "0 8 * * *",
                "queue": "report",
                "payload": {**REPORT, "format": "doc", "date_range": "last_7_days"},
            },
            "payload.format",
        ),
        ({"cron": "0 8 * * *", "name": ""}, "name"),
    ],
)
def test_bad_definitions_are_refused_naming_the_field(
    service: ScheduleService, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(PayloadError) as caught:
        add_email(service, at("2026-06-01T10:00:00"), **fields)
    assert field in [name for name, _ in caught.value.errors], caught.value.errors
    assert service.list("t1") == []


@SQLITE_ONLY
def test_names_are_unique_per_tenant_and_tenants_are_isolated(service: ScheduleService) -> None:
    now = at("2026-06-01T10:00:00")
    first = add_email(service, now, cron="0 8 * * *")
    with pytest.raises(PayloadError, match="name"):
        add_email(service, now, cron="0 9 * * *")
    other = service.add("t2", "mail", queue="email", payload=EMAIL, cron="0 8 * * *", now=now)
    assert [s.id for s in service.list("t1")] == [first.id]
    with pytest.raises(CrmQueueError, match="no schedule"):
        service.show("t1", other.id)
    with pytest.raises(CrmQueueError, match="no schedule"):
        service.remove("t1", other.id)
    service.remove("t2", other.id)
    assert service.list("t2") == []


def test_a_removed_schedules_id_is_never_reused(service: ScheduleService) -> None:
    now = at("2026-06-01T10:00:00")
    old = add_email(service, now, name="a", cron="0 8 * * *")
    service.remove("t1", old.id)
    new = add_email(service, now, name="b", cron="0 8 * * *")
    assert new.id != old.id


# --------------------------------------------------------------------------- stores


@SQLITE_ONLY
def test_the_crm_store_on_sqlite_and_postgresql(
    make_broker: Callable[..., Any],
    crm_url: str,  # noqa: F811
) -> None:
    broker = make_broker({"database.url": crm_url})
    service = ScheduleService(broker.settings)
    start = at("2026-06-01T10:00:00", "Europe/Berlin")
    schedule = add_email(service, start, cron="0 * * * *", time_zone="Europe/Berlin")
    assert schedule.next_due_at == start + dt.timedelta(hours=1)
    assert schedule.next_due_at.tzinfo is not None
    fired = service.fire_due(start + dt.timedelta(hours=1))
    assert fired == [occurrence_job_id(schedule.id, start + dt.timedelta(hours=1))]
    assert ScheduleService(broker.settings).fire_due(start + dt.timedelta(hours=1)) == []
    assert service.next_due() == start + dt.timedelta(hours=2)
    service.pause("t1", schedule.id)
    assert service.next_due() is None
    job_id = service.run_now("t1", schedule.id)
    assert broker.queue("email").store.get_job(job_id) is not None
    assert service.show("t1", schedule.id).last_job_id == job_id


# --------------------------------------------------------------------------- configuration


@SQLITE_ONLY
def test_configured_schedules_run_the_same_way(
    make_broker: Callable[..., Any], scheduler: Callable[..., Scheduler]
) -> None:
    entry = {
        "name": "nightly export", "tenant_id": "t1", "cron": "0 2 * * *",
        "time_zone": "Europe/Berlin", "queue": "import-export", "kind": "export",
        "payload": {"user_id": "ops", "entity_type": "contacts", "format": "csv"},
        "catch_up": "run-once",
    }  # fmt: skip
    broker = make_broker({"schedules": [entry]})
    start = at("2026-06-01T12:00:00", "Europe/Berlin")
    clock = Clock(start)
    one = scheduler(clock)
    woke = run_until(one, clock, start + dt.timedelta(days=1))
    assert woke == [at("2026-06-02T02:00:00", "Europe/Berlin")]
    service = ScheduleService(broker.settings)
    (stored,) = service.list("t1")
    assert stored.source == "config" and stored.catch_up == "run-once"
    assert [job["id"] for job in sched_jobs(broker, "import-export")] == [
        occurrence_job_id(stored.id, woke[0])
    ]
    with pytest.raises(CrmQueueError, match="configuration"):
        service.remove("t1", stored.id)
    # Gone from the configuration: gone from the store at the next leader's start.
    service.sync_config([], clock.now)
    assert service.list("t1") == []


def test_bad_configured_schedules_are_refused_at_load() -> None:
    bad = {"name": "x", "tenant_id": "t1", "cron": "99 * * * *", "queue": "email"}
    with pytest.raises(ConfigError, match=r"schedules\.0\.cron"):
        load_settings(config_file=None, overrides={"schedules": [bad]}, environ={})
    both = {"name": "x", "tenant_id": "t1", "queue": "email"}
    with pytest.raises(ConfigError, match="cron or interval_seconds"):
        load_settings(config_file=None, overrides={"schedules": [both]}, environ={})


# --------------------------------------------------------------------------- the loop


@SQLITE_ONLY
def test_the_loop_sleeps_until_the_next_occurrence_or_the_refresh(
    make_broker: Callable[..., Any], scheduler: Callable[..., Scheduler]
) -> None:
    broker = make_broker(
        {"runner.heartbeat_seconds": 30.0, "runner.schedules_refresh_seconds": 10.0}
    )
    start = at("2026-06-01T10:00:00")
    clock = Clock(start)
    one = scheduler(clock)
    assert one.tick() == pytest.approx(10.0, abs=0.5)  # nothing scheduled: the refresh
    service = ScheduleService(broker.settings)
    add_email(service, start - dt.timedelta(seconds=57), interval_seconds=60)
    assert one.tick() == pytest.approx(3.0, abs=0.5)  # due in 3 s
    clock.set(start + dt.timedelta(seconds=3))
    assert one.tick() == pytest.approx(10.0, abs=0.5)  # fired; the next is 60 s away
    assert len(sched_jobs(broker)) == 1


@SQLITE_ONLY
def test_a_stopped_leader_hands_over_at_once(
    broker: Any, service: ScheduleService, scheduler: Callable[..., Scheduler]
) -> None:
    start = at("2026-06-01T10:00:00")
    clock = Clock(start)
    add_email(service, start, interval_seconds=60)
    first, second = scheduler(clock), scheduler(clock)
    first.tick()
    second.tick()
    assert first.is_leader and not second.is_leader
    first.stop()  # the lock now expires within a millisecond, not after 3 heartbeats
    clock.set(start + dt.timedelta(seconds=60))

    def renewed() -> bool:
        second._lock_due = 0.0  # its next renewal, without waiting for it
        second.tick()
        return second.is_leader

    wait_until(renewed, timeout=2.0, message="the second scheduler leading")
    assert len(sched_jobs(broker)) == 1


@SQLITE_ONLY
def test_an_occurrence_whose_job_no_longer_validates_is_recorded_and_skipped(
    broker: Any, service: ScheduleService
) -> None:
    import sqlalchemy as sa

    from crmqueue.crm import schema

    start = at("2026-06-01T10:00:00")
    schedule = add_email(service, start, interval_seconds=60)
    with service.engine.begin() as conn:  # e.g. a template removed since it was added
        conn.execute(
            sa.update(schema.schedules)
            .where(schema.schedules.c.id == schedule.id)
            .values(payload={"tenant_id": "t1", "to": "ann@example.com"})
        )
    assert service.fire_due(start + dt.timedelta(seconds=60)) == []
    shown = service.show("t1", schedule.id)
    assert shown.last_error is not None and "template" in shown.last_error
    assert shown.next_due_at == start + dt.timedelta(seconds=120)
    assert sched_jobs(broker) == []


def test_the_schema_step_upgrades_an_older_database(crm_url: str) -> None:  # noqa: F811
    import sqlalchemy as sa

    from crmqueue.crm import schema
    from crmqueue.crm.store import create_engine, init_db

    step = schema.MIGRATIONS.index(schema._schedules) + 1
    engine = create_engine(crm_url)
    try:
        init_db(engine, target=step - 1)
        assert not sa.inspect(engine).has_table("schedules")
        assert init_db(engine) == (step - 1, schema.SCHEMA_VERSION)
        assert sa.inspect(engine).has_table("schedules")
        with engine.begin() as conn:  # present already (another branch's order): no-op
            schema._schedules(conn)
    finally:
        engine.dispose()
