"""``crmqueue jobs show|retry|remove JOB_ID``: one job."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
from rich.table import Table

from crmqueue.cli.common import console, emit_json, group, open_broker


@group()
def jobs() -> None:
    """Show, retry or remove one job."""


def _job_command(
    name: str, help_text: str
) -> Callable[[Callable[[str, bool], None]], click.Command]:
    def decorate(func: Callable[[str, bool], None]) -> click.Command:
        with_json = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
        return jobs.command(name=name, help=help_text)(click.argument("job_id")(with_json(func)))

    return decorate


def _print_job(info: Any, as_json: bool) -> None:
    """One job as a table (or its JSON with ``as_json``)."""
    if as_json:
        emit_json(info.to_dict())
        return
    table = Table(show_header=False, title=f"job {info.id}")
    for key, value in info.to_dict().items():
        if key == "errors":
            value = "\n".join(f"{e['type']}: {e['message']}" for e in value) or "-"
        elif isinstance(value, dict | list):
            value = json.dumps(value)
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)


@_job_command("show", "Show a job's state, progress, attempts, errors and result.")
def jobs_show(job_id: str, as_json: bool) -> None:
    from crmqueue import jobs as jobs_api

    open_broker()
    _print_job(jobs_api.get(job_id), as_json)


@_job_command("retry", "Put a dead job back to waiting with a fresh attempt budget.")
def jobs_retry(job_id: str, as_json: bool) -> None:
    from crmqueue import jobs as jobs_api

    open_broker()
    _print_job(jobs_api.retry(job_id), as_json)


@_job_command("remove", "Delete a waiting, scheduled, delayed or dead job.")
def jobs_remove(job_id: str, as_json: bool) -> None:
    from crmqueue import jobs as jobs_api

    open_broker()
    _print_job(jobs_api.remove(job_id), as_json)


COMMANDS = (jobs,)
