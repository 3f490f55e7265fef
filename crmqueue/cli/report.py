"""``crmqueue report``: a sales, pipeline, contact-growth or activity report as a file."""

from __future__ import annotations

import datetime as dt
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from crmqueue.cli.common import command, describe_job, open_broker
from crmqueue.cli.transfer import _pairs, _wait_with_progress
from crmqueue.reports.model import percent_text

REPORT_TYPES = ("sales", "pipeline", "contact-growth", "activity")
FORMATS = ("pdf", "xlsx", "html")


_ONE_VALUE = ("minAmount", "maxAmount", "min_amount", "max_amount")


def _filters(items: tuple[str, ...]) -> dict[str, str | list[str]]:
    """--filter NAME=VALUE items as the payload's ``filters`` (the values stay text: the
    payload reads them). A name given again means any of its values (``--filter
    status=won --filter status=lost`` is ``{"status": ["won", "lost"]}``, as a JSON
    payload and exports take it); an amount bound takes one value."""
    filters: dict[str, str | list[str]] = {}
    for name, value in _pairs(items, "--filter", "NAME=VALUE"):
        if name not in filters:
            filters[name] = value
        elif name in _ONE_VALUE:
            raise click.BadParameter(f"{name} takes one value", param_hint="--filter")
        else:
            given = filters[name]
            filters[name] = [*(given if isinstance(given, list) else [given]), value]
    return filters


def _shown(value: Any, kind: str) -> str:
    """A headline figure of the job's result (Decimal figures are exact text there) as
    the report prints it: 1,234.50 / 1,234 / 37.5 %."""
    if value is None:
        return "–"
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    if kind == "percent":
        return percent_text(number)
    if kind in ("money", "decimal"):
        return f"{number:,.2f}"
    if kind == "days":
        return f"{number:,.1f}"
    return f"{number:,}"


def _finish(info: Any) -> None:
    click.echo(describe_job(info), err=True)
    if info.state != "completed":
        sys.exit(1)
    print_result(info.result or {})


def print_result(result: dict[str, Any]) -> None:
    """A completed report job's result as ``crmqueue report --wait`` (and ``crmqueue
    enqueue report --wait``) print it: title, size and file, then the headline figures."""
    size = result.get("size", 0)
    click.echo(f"{result.get('title', 'report')} ({size:,} bytes): {result.get('file')}")
    if result.get("empty"):
        click.echo(result.get("note", "No data in this period."))
    for figure in result.get("figures", []):
        # no unit after the dash of a figure without a value (an average of no deals)
        unit = f" {figure['currency']}" if figure.get("currency") and figure["value"] else ""
        click.echo(f"  {figure['label']}: {_shown(figure['value'], figure['kind'])}{unit}")


@command("report")
@click.option(
    "--type", "report_type", type=click.Choice(REPORT_TYPES, case_sensitive=False), required=True
)
@click.option("--format", "fmt", type=click.Choice(FORMATS, case_sensitive=False), required=True)
@click.option(
    "--from",
    "start",
    type=click.DateTime(["%Y-%m-%d"]),
    required=True,
    help="First day (YYYY-MM-DD), in the report's time zone.",
)
@click.option(
    "--to",
    "end",
    type=click.DateTime(["%Y-%m-%d"]),
    required=True,
    help="Last day (YYYY-MM-DD), included.",
)
@click.option(
    "--filter",
    "filter_items",
    multiple=True,
    metavar="NAME=VALUE",
    help="status, stage, owner, source, minAmount, maxAmount, currency (by report type)."
    " Repeatable.",
)
@click.option(
    "--dimension",
    "dimensions",
    multiple=True,
    metavar="D",
    help="day|week|month|quarter|year, owner, stage, source, company, status. Repeatable.",
)
@click.option("--tenant", default="default", show_default=True, help="Tenant id.")
@click.option("--user", "user_id", default="cli", show_default=True, help="Requesting user.")
@click.option("--time-zone", default=None, help="IANA time zone (default: the tenant's).")
@click.option("--wait", is_flag=True, help="Show progress until done, then the file.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Seconds for --wait.")
def report_command(
    report_type: str,
    fmt: str,
    start: dt.datetime,
    end: dt.datetime,
    filter_items: tuple[str, ...],
    dimensions: tuple[str, ...],
    tenant: str,
    user_id: str,
    time_zone: str | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Enqueue a report over --from .. --to; prints the job id. The file lands under the
    files directory (reports/<tenant>/) and the user gets a report-ready email."""
    from crmqueue import tasks

    filters = _filters(filter_items)
    open_broker()
    job = tasks.generate_report(
        tenant_id=tenant, user_id=user_id, report_type=report_type, format=fmt,
        date_range={"start_date": start.date(), "end_date": end.date()},
        filters=filters, dimensions=list(dimensions), time_zone=time_zone,
    )  # fmt: skip
    click.echo(job.id)
    if wait:
        _finish(_wait_with_progress(job, timeout))


COMMANDS = (report_command,)
