"""``crmqueue schedules add|list|show|pause|resume|remove|run-now``: a tenant's recurring
schedules (issue #16), through the domain service :mod:`crmqueue.schedules` that the
scheduler in ``crmqueue run`` uses too.

Every error is one line on stderr and exit status 1; a refused definition names each
bad field (``cron``, ``time_zone``, ``payload.format``...).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from crmqueue.cli.common import QUEUE_CHOICE, console, emit_json, group, open_broker
from crmqueue.cli.enqueue import _read_payload
from crmqueue.errors import CrmQueueError
from crmqueue.json_text import text_problems

if TYPE_CHECKING:
    from crmqueue.schedules import Schedule, ScheduleService

TENANT = click.option("--tenant", required=True, help="The tenant the schedule belongs to.")
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
SCHEDULE_ID = click.argument("schedule_id", metavar="ID", type=click.IntRange(min=1, max=2**63 - 1))


@contextlib.contextmanager
def _service(tenant: str) -> Iterator[ScheduleService]:
    """The schedule service of this invocation's settings (the broker configured, for
    validation and run-now); a CRM database that cannot be reached or read becomes one
    line naming it (its URL without the password)."""
    import sqlalchemy as sa

    from crmqueue.config import mask_url
    from crmqueue.schedules import service

    found = text_problems(tenant)
    if found:
        raise CrmQueueError(f"--tenant: {found[0][1]}")
    settings = open_broker().settings
    try:
        yield service(settings)
    except sa.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise CrmQueueError(f"CRM database {mask_url(settings.database.url)}: {reason}") from None


def _time(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat(timespec="seconds")


def _dict(schedule: Schedule) -> dict[str, Any]:
    return {
        "id": schedule.id,
        "tenant_id": schedule.tenant_id,
        "name": schedule.name,
        "cron": schedule.cron,
        "interval_seconds": schedule.interval_seconds,
        "time_zone": schedule.time_zone,
        "queue": schedule.queue,
        "kind": schedule.kind,
        "payload": schedule.payload,
        "catch_up": schedule.catch_up,
        "paused": schedule.paused,
        "source": schedule.source,
        "next_due_at": _time(schedule.next_due_at),
        "last_run_at": _time(schedule.last_run_at),
        "last_job_id": schedule.last_job_id,
        "last_error": schedule.last_error,
        "created_at": _time(schedule.created_at),
        "updated_at": _time(schedule.updated_at),
    }


def _line(schedule: Schedule, verb: str) -> None:
    state = "paused" if schedule.paused else f"next {_time(schedule.next_due_at) or 'never'}"
    click.echo(f"schedule {schedule.id} ({schedule.name}) {verb}: {schedule.every}, {state}")


@group("schedules")
def schedules_group() -> None:
    """A tenant's recurring jobs: a cron expression in a time zone, or an interval."""


@schedules_group.command("add")
@TENANT
@click.option("--name", required=True, help="A name, unique within the tenant.")
@click.option("--cron", default=None, help="5-field cron expression, e.g. '0 8 * * MON'.")
@click.option(
    "--every", "interval", type=int, default=None, help="Or: an interval in whole seconds."
)
@click.option(
    "--tz", "time_zone", default="UTC", show_default=True, help="IANA time zone of --cron."
)
@click.option("--queue", required=True, type=QUEUE_CHOICE, help="The queue of the job.")
@click.option("--kind", default=None, help="Job kind (e.g. export, publish).")
@click.option("--payload", "json_text", default=None, help="The job's payload, a JSON object.")
@click.option(
    "--payload-file", "file", type=click.Path(dir_okay=False), default=None, help="Or a file."
)
@click.option(
    "--catch-up",
    type=click.Choice(["skip", "run-once"]),
    default="skip",
    show_default=True,
    help="After an outage: skip the missed occurrences, or run once for all of them.",
)
@click.option("--paused", is_flag=True, help="Add it paused.")
@AS_JSON
def schedules_add(
    tenant: str,
    name: str,
    cron: str | None,
    interval: int | None,
    time_zone: str,
    queue: str,
    kind: str | None,
    json_text: str | None,
    file: str | None,
    catch_up: str,
    paused: bool,
    as_json: bool,
) -> None:
    """Add a schedule; its payload is validated now as its jobs will be. A report's
    date_range may be last_7_days, previous_month or month_to_date: each run gets the
    dates of its day in --tz."""
    try:
        payload = _read_payload(json_text, file)
    except click.UsageError:
        raise click.UsageError("give exactly one of --payload or --payload-file") from None
    with _service(tenant) as schedules:
        schedule = schedules.add(
            tenant, name, queue=queue, payload=payload, cron=cron, interval_seconds=interval,
            time_zone=time_zone, kind=kind, catch_up=catch_up, paused=paused,
        )  # fmt: skip
    if as_json:
        emit_json(_dict(schedule))
        return
    _line(schedule, "added")


@schedules_group.command("list")
@TENANT
@AS_JSON
def schedules_list(tenant: str, as_json: bool) -> None:
    """List the tenant's schedules."""
    with _service(tenant) as schedules:
        found = schedules.list(tenant)
    if as_json:
        emit_json([_dict(schedule) for schedule in found])
        return
    table = Table(title=f"schedules of tenant {tenant}")
    for column in ("id", "name", "when", "job", "catch-up", "state", "next", "last run"):
        table.add_column(column)
    for one in found:
        table.add_row(
            str(one.id), one.name, one.every, f"{one.queue} {one.kind or ''}".strip(),
            one.catch_up, "paused" if one.paused else "active",
            _time(one.next_due_at) or "-", _time(one.last_run_at) or "-",
        )  # fmt: skip
    console.print(table)


@schedules_group.command("show")
@SCHEDULE_ID
@TENANT
@AS_JSON
def schedules_show(schedule_id: int, tenant: str, as_json: bool) -> None:
    """Show one schedule: timing, job, state, last run and last error."""
    with _service(tenant) as schedules:
        data = _dict(schedules.show(tenant, schedule_id))
    if as_json:
        emit_json(data)
        return
    table = Table(show_header=False, title=f"schedule {schedule_id}")
    for key, value in data.items():
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)


@schedules_group.command("pause")
@SCHEDULE_ID
@TENANT
@AS_JSON
def schedules_pause(schedule_id: int, tenant: str, as_json: bool) -> None:
    """Stop enqueueing its occurrences (those of the paused time never run)."""
    with _service(tenant) as schedules:
        schedule = schedules.pause(tenant, schedule_id)
    if as_json:
        emit_json(_dict(schedule))
    else:
        _line(schedule, "paused")


@schedules_group.command("resume")
@SCHEDULE_ID
@TENANT
@AS_JSON
def schedules_resume(schedule_id: int, tenant: str, as_json: bool) -> None:
    """Enqueue its occurrences again, from the next one on."""
    with _service(tenant) as schedules:
        schedule = schedules.resume(tenant, schedule_id)
    if as_json:
        emit_json(_dict(schedule))
    else:
        _line(schedule, "resumed")


@schedules_group.command("remove")
@SCHEDULE_ID
@TENANT
@AS_JSON
def schedules_remove(schedule_id: int, tenant: str, as_json: bool) -> None:
    """Delete the schedule (jobs it enqueued stay)."""
    with _service(tenant) as schedules:
        schedule = schedules.remove(tenant, schedule_id)
    if as_json:
        emit_json(_dict(schedule))
        return
    click.echo(f"schedule {schedule.id} ({schedule.name}) removed")


@schedules_group.command("run-now")
@SCHEDULE_ID
@TENANT
@AS_JSON
def schedules_run_now(schedule_id: int, tenant: str, as_json: bool) -> None:
    """Enqueue the schedule's job now (paused or not); prints the job id."""
    with _service(tenant) as schedules:
        job_id = schedules.run_now(tenant, schedule_id)
    if as_json:
        emit_json({"schedule_id": schedule_id, "job_id": job_id})
        return
    click.echo(job_id)


COMMANDS = (schedules_group,)
