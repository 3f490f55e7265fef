"""Recurring schedules (issue #16): per tenant, a cron expression in an IANA time zone or
an interval, the job each occurrence enqueues (queue, kind, payload) and a catch-up
policy; and the scheduler that enqueues every occurrence exactly once, however many
``crmqueue run`` processes and hosts run.

Store: the CRM database (crmqueue.crm.schema.schedules); every query a tenant makes is
scoped by tenant_id. Operators' ``[[schedules]]`` from the configuration are stored the
same way (source ``config``) by the scheduler's leader, and run the same way.

Exactly once per occurrence:
- one scheduler at a time leads, by the queue storage's expiring lock (renewed every
  ``runner.heartbeat_seconds``, lost after three times that);
- the job of an occurrence has the id ``sched-<schedule id>-<occurrence, UTC>`` and is
  enqueued with ``skip_existing``, so a second enqueue of it is a no-op on every storage
  even when two leaders overlap;
- a schedule's state moves by compare-and-set on its revision, in the transaction that
  enqueues, so a leader that read a stale row enqueues nothing.

Catch-up: occurrences found due more than ``runner.schedules_grace_seconds`` late are
missed (an outage, a stopped scheduler). ``skip`` runs none of them (the next occurrence
runs as usual); ``run-once`` runs one job for all of them, keyed to the latest.

Relative report ranges: a report payload's ``date_range`` may be one of
crmqueue.payloads.RELATIVE_RANGES; each occurrence's job gets the concrete dates of the
occurrence's day in the schedule's time zone.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import threading
import time
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from crmqueue.config import QUEUE_NAMES, ScheduleSettings, Settings
from crmqueue.crm import schema
from crmqueue.crm.store import get_engine
from crmqueue.errors import CrmQueueError, PayloadError, StorageUnavailable
from crmqueue.json_text import text_problems
from crmqueue.payloads import RELATIVE_RANGES, relative_range
from crmqueue.schedule_rules import cron_problem, latest_at_or_before, next_after
from crmqueue.tenancy import tenant_problem
from crmqueue.zones import time_zone_problem

__all__ = [
    "CATCH_UP",
    "SCHEDULER_LOCK",
    "Schedule",
    "ScheduleError",
    "ScheduleNotFound",
    "ScheduleService",
    "Scheduler",
    "occurrence_job_id",
    "service",
]

log = logging.getLogger("crmqueue.schedules")

CATCH_UP = ("skip", "run-once")
SCHEDULER_LOCK = "scheduler"
MAX_NAME = 100
MAX_INTERVAL = 366 * 86400  # seconds: a year; longer is a cron expression's job
MAX_ID = 2**63 - 1  # a schedule id is a BIGINT
DUE_BATCH = 500  # schedules fired per store read

_table = schema.schedules
_DEFINITION = ("cron", "interval_seconds", "time_zone", "queue", "kind", "payload", "catch_up")


class ScheduleNotFound(CrmQueueError):
    """No schedule of that id for this tenant."""


class ScheduleError(PayloadError):
    """A schedule's definition failed validation (a PayloadError: `errors` lists each
    field and why); nothing was stored."""

    def __init__(self, errors: builtins.list[tuple[str, str]]) -> None:
        super().__init__(errors)
        CrmQueueError.__init__(
            self, "schedule invalid: " + "; ".join(f"{field}: {why}" for field, why in errors)
        )


@dataclass(frozen=True)
class Schedule:
    """One stored schedule. Times are aware UTC datetimes; `next_due_at` is the next
    occurrence the scheduler will enqueue (None: the expression has no more),
    `last_run_at` the occurrence last enqueued (by the scheduler or run-now) and
    `last_job_id` its job."""

    id: int
    tenant_id: str
    name: str
    cron: str | None
    interval_seconds: int | None
    time_zone: str
    queue: str
    kind: str | None
    payload: dict[str, Any]
    catch_up: Literal["skip", "run-once"]
    paused: bool
    source: str
    anchor_at: dt.datetime
    next_due_at: dt.datetime | None
    last_run_at: dt.datetime | None
    last_job_id: str | None
    last_error: str | None
    revision: int
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def every(self) -> str:
        """The timing as shown: the cron expression and zone, or ``every N s``."""
        if self.cron is not None:
            return f"{self.cron} ({self.time_zone})"
        return f"every {self.interval_seconds} s"

    def next_after(self, moment: dt.datetime) -> dt.datetime | None:
        """The first occurrence strictly after `moment` (UTC; None: no more)."""
        return next_after(
            moment,
            cron=self.cron,
            time_zone=self.time_zone,
            interval_seconds=self.interval_seconds,
            anchor=self.anchor_at,
        )

    def latest_at_or_before(self, moment: dt.datetime) -> dt.datetime | None:
        return latest_at_or_before(
            moment,
            cron=self.cron,
            time_zone=self.time_zone,
            interval_seconds=self.interval_seconds,
            anchor=self.anchor_at,
        )


def occurrence_job_id(schedule_id: int, occurrence: dt.datetime) -> str:
    """The job id of one occurrence: ``sched-<id>-<YYYYMMDDTHHMMSSZ>`` (UTC)."""
    return f"sched-{schedule_id}-{occurrence.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}"


def _as_utc(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        raise ValueError("a schedule's times are aware datetimes")
    return moment.astimezone(dt.UTC)


def _row(row: Any) -> Schedule:
    return Schedule(
        **{field.name: getattr(row, field.name) for field in dataclasses.fields(Schedule)}
    )


# --------------------------------------------------------------------------- payloads


def resolve_payload(
    queue: str, payload: Mapping[str, Any], time_zone: str, moment: dt.datetime
) -> dict[str, Any]:
    """The payload an occurrence at `moment` enqueues: a report's relative ``date_range``
    (crmqueue.payloads.RELATIVE_RANGES) becomes the concrete range of `moment`'s day in
    `time_zone`. Raises PayloadError naming ``payload.date_range`` for an unknown name."""
    resolved = dict(payload)
    if queue != "report":
        return resolved
    for key in ("date_range", "dateRange"):
        given = resolved.get(key)
        if isinstance(given, str):
            if given not in RELATIVE_RANGES:
                raise PayloadError(
                    [
                        (
                            f"payload.{key}",
                            f"{given!r} is not a relative range ({', '.join(RELATIVE_RANGES)})"
                            " nor {start_date, end_date}",
                        )
                    ]
                )
            today = moment.astimezone(zoneinfo.ZoneInfo(time_zone)).date()
            resolved[key] = relative_range(given, today)
    return resolved


# Days on which the relative ranges are at their longest, 31 days (previous_month on
# 1 February: January; month_to_date on 31 January): a definition that fits
# reports.max_range_days today (10 March: February's 28 days) must fit on every
# occurrence. Checked at noon of those days in the schedule's zone.
_LONGEST_RANGE_DAYS = (dt.date(2026, 2, 1), dt.date(2026, 1, 31))


def _prepared(
    queue: str, kind: str | None, payload: Mapping[str, Any], time_zone: str, moment: dt.datetime
) -> tuple[str, Any]:
    """(task name, what the engine stores) for the job of an occurrence at `moment`:
    validated exactly as crmqueue.tasks.enqueue validates. PayloadError names the field
    (``kind``, ``payload.<field>``)."""
    from crmqueue import tasks  # the face whose validation every job gets

    resolved = resolve_payload(queue, payload, time_zone, moment)
    name, model = tasks._resolve(queue, kind)
    try:
        data = tasks._data(model, resolved)
    except PayloadError as exc:
        raise PayloadError([(f"payload.{field}", why) for field, why in exc.errors]) from None
    return name, data


def check_definition(
    *,
    tenant_id: object,
    name: object,
    cron: object,
    interval_seconds: object,
    time_zone: object,
    queue: object,
    kind: object,
    payload: object,
    catch_up: object,
    now: dt.datetime,
) -> dict[str, Any]:
    """A schedule's definition checked, field by field: PayloadError naming every bad
    one (tenant_id, name, cron, interval_seconds, time_zone, queue, kind, catch_up,
    payload.<field>). The payload is validated as the job of an occurrence now would be
    (a relative report range resolved for today); a payload without tenant_id gets the
    schedule's. Returns the definition to store."""
    errors: list[tuple[str, str]] = []
    if (why := tenant_problem(tenant_id)) is not None:
        errors.append(("tenant_id", why))
    if not isinstance(name, str) or not name.strip():
        errors.append(("name", "must be a non-empty text"))
    elif len(name) > MAX_NAME:
        errors.append(("name", f"at most {MAX_NAME} characters"))
    elif problems := text_problems(name):
        errors.append(("name", problems[0][1]))
    elif not name.isprintable():
        # A line break splits the one-line listings; a bidi override reverses them.
        errors.append(("name", "must be printable text on one line (no control characters)"))
    if (cron is None) == (interval_seconds is None):
        errors.append(("cron", "give cron or interval_seconds, one of them"))
    elif cron is not None and (why := cron_problem(cron)) is not None:
        errors.append(("cron", why))
    elif interval_seconds is not None and (
        type(interval_seconds) is not int or not 1 <= interval_seconds <= MAX_INTERVAL
    ):
        errors.append(("interval_seconds", f"must be whole seconds from 1 to {MAX_INTERVAL}"))
    if (why := time_zone_problem(time_zone)) is not None:
        errors.append(("time_zone", why))
    if queue not in QUEUE_NAMES:
        errors.append(("queue", f"unknown queue {queue!r}; queues are {', '.join(QUEUE_NAMES)}"))
    if kind is not None and not isinstance(kind, str):
        errors.append(("kind", "must be text"))
    if catch_up not in CATCH_UP:
        errors.append(("catch_up", f"must be one of {', '.join(CATCH_UP)}, not {catch_up!r}"))
    if not isinstance(payload, Mapping):
        errors.append(("payload", "must be a JSON object (a mapping of field names)"))
    else:
        payload = dict(payload)
        given = payload.setdefault("tenant_id", tenant_id)
        if given != tenant_id and "tenant_id" not in {e[0] for e in errors}:
            errors.append(("payload.tenant_id", f"must be the schedule's tenant {tenant_id!r}"))
        try:
            json.dumps(payload, allow_nan=False)
        except (TypeError, ValueError) as exc:
            errors.append(("payload", f"must be JSON: {exc}"))
        else:
            told = {field for field, _ in errors}
            if not {"tenant_id", "queue", "time_zone", "kind"} & told:
                assert isinstance(queue, str) and isinstance(time_zone, str)
                zone = zoneinfo.ZoneInfo(time_zone)
                longest = [dt.datetime.combine(d, dt.time(12), zone) for d in _LONGEST_RANGE_DAYS]
                for moment in (now, *longest):
                    try:
                        _prepared(
                            queue, kind if isinstance(kind, str) else None, payload,
                            time_zone, moment,
                        )  # fmt: skip
                    except PayloadError as exc:
                        later = "" if moment is now else f" (on an occurrence on {moment:%d %B})"
                        errors += [(field, why + later) for field, why in exc.errors]
                        break
    if errors:
        raise ScheduleError(errors)
    assert isinstance(payload, dict) and isinstance(name, str)
    return {
        "tenant_id": tenant_id,
        "name": name.strip(),
        "cron": " ".join(cron.split()) if isinstance(cron, str) else None,
        "interval_seconds": interval_seconds,
        "time_zone": time_zone,
        "queue": queue,
        "kind": kind,
        "payload": payload,
        "catch_up": catch_up,
    }


# --------------------------------------------------------------------------- service


class ScheduleService:
    """Schedules in the CRM store of `settings`; the scheduler's steps. Every time
    argument (`now`) is an aware datetime, default the current time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: Engine = get_engine(settings.database.url)

    # ------------------------------------------------------------------ tenants' API

    def add(
        self,
        tenant_id: str,
        name: str,
        *,
        queue: str,
        payload: Mapping[str, Any],
        cron: str | None = None,
        interval_seconds: int | None = None,
        time_zone: str = "UTC",
        kind: str | None = None,
        catch_up: str = "skip",
        paused: bool = False,
        now: dt.datetime | None = None,
        source: str = "api",
    ) -> Schedule:
        """Store a new schedule, its payload validated as its jobs will be (PayloadError
        naming each bad field, also ``name`` when the tenant has one of that name).
        Its first occurrence is the first after `now`."""
        moment = _as_utc(now or dt.datetime.now(dt.UTC))
        definition = check_definition(
            tenant_id=tenant_id, name=name, cron=cron, interval_seconds=interval_seconds,
            time_zone=time_zone, queue=queue, kind=kind, payload=payload, catch_up=catch_up,
            now=moment,
        )  # fmt: skip
        anchor = moment.replace(microsecond=0)
        values = {
            **definition,
            "paused": paused,
            "source": source,
            "anchor_at": anchor,
            "revision": 0,
            "created_at": moment,
            "updated_at": moment,
        }
        values["next_due_at"] = _first_due(values, moment)
        try:
            with self.engine.begin() as conn:
                new_id = conn.execute(_table.insert().values(values).returning(_table.c.id))
                schedule_id = int(new_id.scalar_one())
        except sa.exc.IntegrityError:
            raise ScheduleError(
                [("name", f"tenant {tenant_id!r} has a schedule named {definition['name']!r}")]
            ) from None
        return self.show(tenant_id, schedule_id)

    def list(self, tenant_id: str) -> list[Schedule]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(_table).where(_table.c.tenant_id == tenant_id).order_by(_table.c.id)
            )
            return [_row(row) for row in rows]

    def show(self, tenant_id: str, schedule_id: int) -> Schedule:
        """The tenant's schedule; ScheduleNotFound (another tenant's is not found)."""
        with self.engine.connect() as conn:
            return self._get(conn, tenant_id, schedule_id)

    def _get(self, conn: Connection, tenant_id: str, schedule_id: int) -> Schedule:
        if type(schedule_id) is not int or not 1 <= schedule_id <= MAX_ID:
            # beyond SQL's BIGINT: SQLite raised OverflowError, PostgreSQL a DataError
            raise ScheduleNotFound(f"tenant {tenant_id!r} has no schedule {schedule_id!r}")
        row = conn.execute(
            sa.select(_table).where(_table.c.tenant_id == tenant_id, _table.c.id == schedule_id)
        ).first()
        if row is None:
            raise ScheduleNotFound(f"tenant {tenant_id!r} has no schedule {schedule_id}")
        return _row(row)

    def pause(self, tenant_id: str, schedule_id: int, now: dt.datetime | None = None) -> Schedule:
        """Stop enqueueing its occurrences until resumed (none of the paused time's run)."""
        return self._set_paused(tenant_id, schedule_id, True, now)

    def resume(self, tenant_id: str, schedule_id: int, now: dt.datetime | None = None) -> Schedule:
        """Enqueue its occurrences again, from the first after `now`."""
        return self._set_paused(tenant_id, schedule_id, False, now)

    def _set_paused(
        self, tenant_id: str, schedule_id: int, paused: bool, now: dt.datetime | None
    ) -> Schedule:
        moment = _as_utc(now or dt.datetime.now(dt.UTC))
        with self.engine.begin() as conn:
            current = self._get(conn, tenant_id, schedule_id)
            values: dict[str, Any] = {
                "paused": paused,
                "updated_at": moment,
                "revision": current.revision + 1,
            }
            if not paused and current.paused:
                values["next_due_at"] = current.next_after(moment)
            conn.execute(_table.update().where(_table.c.id == schedule_id).values(values))
            return self._get(conn, tenant_id, schedule_id)

    def remove(self, tenant_id: str, schedule_id: int) -> Schedule:
        """Delete the schedule (jobs already enqueued stay). A schedule from the
        configuration is removed there, not here (CrmQueueError)."""
        with self.engine.begin() as conn:
            current = self._get(conn, tenant_id, schedule_id)
            if current.source == "config":
                raise CrmQueueError(
                    f"schedule {schedule_id} ({current.name}) comes from the configuration"
                    " ([[schedules]]): remove it there"
                )
            conn.execute(_table.delete().where(_table.c.id == schedule_id))
            return current

    def run_now(self, tenant_id: str, schedule_id: int, now: dt.datetime | None = None) -> str:
        """Enqueue the schedule's job at once (a relative range resolved for `now`),
        paused or not; its regular occurrences are unchanged. Returns the job id."""
        from crmqueue.engine.queues import Enqueue, get_broker

        moment = _as_utc(now or dt.datetime.now(dt.UTC))
        current = self.show(tenant_id, schedule_id)
        name, data = _prepared(
            current.queue, current.kind, current.payload, current.time_zone, moment
        )
        job_id = f"sched-{current.id}-now-{os.urandom(6).hex()}"
        get_broker().queue(current.queue).enqueue_many([Enqueue(name, data, job_id=job_id)])
        with self.engine.begin() as conn:
            conn.execute(
                _table.update()
                .where(_table.c.id == schedule_id)
                .values(last_run_at=moment, last_job_id=job_id, last_error=None, updated_at=moment)
            )
        return job_id

    # ------------------------------------------------------------------ the scheduler

    def next_due(self) -> dt.datetime | None:
        """The earliest next occurrence of any schedule not paused."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(sa.func.min(_table.c.next_due_at)).where(_table.c.paused.is_(False))
            ).scalar()
        if value is None:
            return None
        stamp: dt.datetime = value
        # min() bypasses the column type on SQLite: text or a naive datetime
        if isinstance(value, str):
            stamp = dt.datetime.fromisoformat(value)
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)

    def fire_due(self, now: dt.datetime, grace_seconds: float | None = None) -> builtins.list[str]:
        """Enqueue the due occurrences of every schedule not paused, as the catch-up
        policies say (see the module's doc); returns the job ids enqueued (an id already
        stored is in the list but was not stored twice). A job that fails validation at
        its occurrence is recorded in the schedule's last_error and skipped."""
        from crmqueue.engine.queues import get_broker

        moment = _as_utc(now)
        grace = dt.timedelta(
            seconds=self.settings.runner.schedules_grace_seconds
            if grace_seconds is None
            else grace_seconds
        )
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(_table)
                .where(_table.c.paused.is_(False), _table.c.next_due_at <= moment)
                .order_by(_table.c.next_due_at)
                .limit(DUE_BATCH)
            ).all()
        enqueued: builtins.list[str] = []
        broker = get_broker()
        for schedule in map(_row, rows):
            try:
                job_id = self._fire_one(schedule, moment, grace, broker)
            except (StorageUnavailable, sa.exc.SQLAlchemyError):
                raise  # the stores: the whole pass is retried
            except Exception:  # one schedule's fault must not starve the others
                log.exception(
                    "schedule %d (%s): occurrence not handled", schedule.id, schedule.name
                )
                continue
            if job_id is not None:
                enqueued.append(job_id)
        return enqueued

    def _fire_one(
        self, schedule: Schedule, moment: dt.datetime, grace: dt.timedelta, broker: Any
    ) -> str | None:
        from crmqueue.engine.queues import Enqueue

        assert schedule.next_due_at is not None
        latest = schedule.latest_at_or_before(moment) or schedule.next_due_at
        latest = max(latest, schedule.next_due_at)
        several = latest > schedule.next_due_at
        on_time = moment - latest <= grace
        run: dt.datetime | None = None
        if on_time or schedule.catch_up == "run-once":
            run = latest
        if several or not on_time:
            log.info(
                "schedule %d (%s, tenant %s): occurrences from %s to %s missed; %s",
                schedule.id, schedule.name, schedule.tenant_id,
                schedule.next_due_at.isoformat(), latest.isoformat(),
                f"one run ({run.isoformat()})" if run else "none run (catch_up skip)",
            )  # fmt: skip
        values: dict[str, Any] = {
            "next_due_at": schedule.next_after(moment),
            "revision": schedule.revision + 1,
        }
        job: tuple[str, str, Any] | None = None
        if run is not None:
            try:
                name, data = _prepared(
                    schedule.queue, schedule.kind, schedule.payload, schedule.time_zone, run
                )
                job = (occurrence_job_id(schedule.id, run), name, data)
                values.update(last_run_at=run, last_job_id=job[0], last_error=None)
            except CrmQueueError as exc:  # PayloadError, ConfigError: not this occurrence
                log.error(
                    "schedule %d (%s, tenant %s): occurrence %s not enqueued: %s",
                    schedule.id, schedule.name, schedule.tenant_id, run.isoformat(), exc,
                )  # fmt: skip
                values["last_error"] = f"{run.isoformat()}: {exc}"[:2000]
        with self.engine.begin() as conn:
            moved = conn.execute(
                _table.update()
                .where(_table.c.id == schedule.id, _table.c.revision == schedule.revision)
                .values(values)
            ).rowcount
            if moved != 1 or job is None:
                return None  # moved: another leader moved it on and enqueued this occurrence
            # Inside the transaction: if the enqueue fails, the state stays and the next
            # pass enqueues the same occurrence under the same id.
            broker.queue(schedule.queue).enqueue_many(
                [Enqueue(job[1], job[2], job_id=job[0])], skip_existing=True
            )
            return job[0]

    def sync_config(self, entries: builtins.list[ScheduleSettings], now: dt.datetime) -> None:
        """Store the configuration's ``[[schedules]]`` (source ``config``): new ones
        added, changed ones updated (a changed timing starts again from `now`), ones no
        longer configured removed. An entry whose name a tenant's own schedule has, or
        whose payload fails validation, is logged and left out."""
        moment = _as_utc(now)
        wanted: dict[tuple[str, str], dict[str, Any]] = {}
        for entry in entries:
            try:
                wanted[(entry.tenant_id, entry.name)] = check_definition(
                    tenant_id=entry.tenant_id, name=entry.name, cron=entry.cron,
                    interval_seconds=entry.interval_seconds, time_zone=entry.time_zone,
                    queue=entry.queue, kind=entry.kind, payload=entry.payload,
                    catch_up=entry.catch_up, now=moment,
                )  # fmt: skip
            except PayloadError as exc:
                log.error(
                    "[[schedules]] %r of tenant %r left out: %s", entry.name, entry.tenant_id, exc
                )
        with self.engine.begin() as conn:
            stored = {
                (row.tenant_id, row.name): _row(row) for row in conn.execute(sa.select(_table))
            }
            for key, definition in wanted.items():
                current = stored.get(key)
                if current is None:
                    values = {
                        **definition, "paused": False, "source": "config",
                        "anchor_at": moment.replace(microsecond=0), "revision": 0,
                        "created_at": moment, "updated_at": moment,
                    }  # fmt: skip
                    values["next_due_at"] = _first_due(values, moment)
                    conn.execute(_table.insert().values(values))
                    continue
                if current.source != "config":
                    log.error(
                        "[[schedules]] %r of tenant %r left out: the tenant has a schedule"
                        " of that name (id %d)", key[1], key[0], current.id,
                    )  # fmt: skip
                    continue
                changed = {
                    f: definition[f] for f in _DEFINITION if definition[f] != getattr(current, f)
                }
                if not changed:
                    continue
                changed.update(updated_at=moment, revision=current.revision + 1)
                if {"cron", "interval_seconds", "time_zone"} & changed.keys():
                    changed["anchor_at"] = moment.replace(microsecond=0)
                    changed["next_due_at"] = _first_due({**definition, **changed}, moment)
                conn.execute(_table.update().where(_table.c.id == current.id).values(changed))
            gone = [s.id for k, s in stored.items() if s.source == "config" and k not in wanted]
            if gone:
                conn.execute(_table.delete().where(_table.c.id.in_(gone)))


def _first_due(values: Mapping[str, Any], moment: dt.datetime) -> dt.datetime | None:
    return next_after(
        moment,
        cron=values["cron"],
        time_zone=values["time_zone"],
        interval_seconds=values["interval_seconds"],
        anchor=values["anchor_at"],
    )


_services: dict[str, ScheduleService] = {}
_services_lock = threading.Lock()


def service(settings: Settings | None = None) -> ScheduleService:
    """The ScheduleService of `settings` (default: the process broker's), cached per
    database URL; a service built from different settings replaces it."""
    if settings is None:
        from crmqueue.engine.queues import get_broker

        settings = get_broker().settings
    url = settings.database.url
    with _services_lock:
        cached = _services.get(url)
        if cached is None or not (cached.settings is settings or cached.settings == settings):
            cached = _services[url] = ScheduleService(settings)
        return cached


# --------------------------------------------------------------------------- the loop


class Scheduler:
    """The loop ``crmqueue run`` starts in a thread of its own: while this process holds
    the scheduler lock (the queue storage's acquire_lock), it enqueues due occurrences,
    then sleeps until the next one is due, the lock needs renewing, or
    ``runner.schedules_refresh_seconds`` have passed (schedules added by other
    processes), whichever comes first. `clock` (Unix seconds) is injectable for tests;
    the lock's expiry is the storage's real time."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
        lock_name: str = SCHEDULER_LOCK,
    ) -> None:
        from crmqueue.engine.queues import get_broker

        self.settings = settings
        self.clock = clock
        self.owner = owner or f"{os.uname().nodename}-{os.getpid()}-{os.urandom(4).hex()}"
        self.lock_name = lock_name
        self.lock_ttl = settings.runner.heartbeat_seconds * 3
        self.refresh = settings.runner.schedules_refresh_seconds
        self.lock_store = get_broker().queue("email").store
        self._service: ScheduleService | None = None
        self.is_leader = False
        self.next_due_at: dt.datetime | None = None
        self._lock_due = 0.0  # monotonic time of the next lock renewal
        self._synced = False
        self._warned = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    @property
    def service(self) -> ScheduleService:
        """The schedules' store, opened on first use (a CRM database down at start-up
        is retried by the loop, not fatal)."""
        if self._service is None:
            self._service = ScheduleService(self.settings)
        return self._service

    def tick(self) -> float:
        """One pass; returns the seconds to sleep before the next (real time for the
        lock, `clock` time for the next occurrence)."""
        started = time.monotonic()
        try:
            if started >= self._lock_due:
                was = self.is_leader
                self.is_leader = self.lock_store.acquire_lock(
                    self.lock_name, self.owner, self.lock_ttl
                )
                self._lock_due = started + self.lock_ttl / 3
                if self.is_leader and not was:
                    log.info("scheduler %s leads", self.owner)
                    self._synced = False
            if not self.is_leader:
                return max(self._lock_due - time.monotonic(), 0.0)
            if not self._synced:
                self.service.sync_config(self.settings.schedules, self.now())
                self._synced = True
            self.service.fire_due(self.now())
            self.next_due_at = self.service.next_due()
            self._warned = False
        except StorageUnavailable as exc:
            self.is_leader = False  # unconfirmed leadership is no leadership
            self._lock_due = 0.0
            log.warning("scheduler: queue storage unavailable: %s", exc)
            return min(1.0, self.refresh)
        except sa.exc.SQLAlchemyError as exc:
            if not self._warned:
                reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                log.warning(
                    "scheduler: CRM database unusable (run 'crmqueue db init'?): %s", reason
                )
                self._warned = True
            return self.refresh
        wait = min(self.refresh, max(self._lock_due - time.monotonic(), 0.0))
        if self.next_due_at is not None:
            due_in = (self.next_due_at - self.now()).total_seconds()
            # Still due after a pass: more than a batch, or one that failed (logged);
            # retried after a second rather than at once.
            wait = min(wait, due_in if due_in > 0 else min(1.0, self.refresh))
        return wait

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="crmqueue-scheduler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.tick()
            except Exception:
                log.exception("scheduler step failed")
                wait = min(1.0, self.refresh)
            self._stop.wait(wait)

    def stop(self, timeout: float = 5.0) -> None:
        """End the loop (at most one pass's work later) and give up the lead, so another
        process's scheduler takes over at its next renewal, not after the lock expires."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.is_leader:
            with contextlib.suppress(Exception):
                self.lock_store.acquire_lock(self.lock_name, self.owner, 0.001)
            self.is_leader = False
