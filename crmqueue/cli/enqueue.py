"""``crmqueue enqueue``: validate a JSON payload and enqueue it on a queue."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from crmqueue.cli.common import QUEUE_CHOICE, command, describe_job, open_broker
from crmqueue.engine.queues import MAX_DELAY, MAX_PRIORITY, MIN_PRIORITY
from crmqueue.errors import CrmQueueError
from crmqueue.json_text import loads


def _read_payload(json_text: str | None, file: str | None) -> dict[str, Any]:
    if (json_text is None) == (file is None):
        raise click.UsageError("give exactly one of --json or --file")
    source = "--json"
    if file is not None:
        source = file
        try:
            json_text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise CrmQueueError(f"{file}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:  # JSON is UTF-8 (RFC 8259 section 8.1)
            raise CrmQueueError(f"{file}: not UTF-8 at byte {exc.start}: {exc.reason}") from None
    try:
        payload = loads(json_text or "")  # nested too deeply: a PayloadError naming the field
    except json.JSONDecodeError as exc:
        raise CrmQueueError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise CrmQueueError(f"{source}: the payload must be a JSON object")
    return payload


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    # click's FloatRange lets NaN through (every comparison with it is false).
    if value is not None and value != value:
        raise click.BadParameter("nan is not a number of seconds", ctx, param)
    return value


@command()
@click.argument("queue", type=QUEUE_CHOICE)
@click.option("--json", "json_text", default=None, help="The payload as a JSON object.")
@click.option("--file", type=click.Path(dir_okay=False), default=None, help="A JSON payload file.")
@click.option("--kind", default=None, help="Job kind (e.g. import, export, publish).")
@click.option(
    "--priority",
    type=click.IntRange(MIN_PRIORITY, MAX_PRIORITY),
    default=None,
    help=f"Higher runs first ({MIN_PRIORITY}..{MAX_PRIORITY}).",
)
@click.option(
    "--delay",
    type=click.FloatRange(0, MAX_DELAY, max_open=True),
    callback=_finite,
    default=None,
    help="Seconds to wait (less than ten years).",
)
@click.option("--wait", is_flag=True, help="Wait until the job is completed or dead.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Seconds for --wait.")
def enqueue(
    queue: str,
    json_text: str | None,
    file: str | None,
    kind: str | None,
    priority: int | None,
    delay: float | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Validate a payload and enqueue it; prints the job id."""
    from crmqueue import tasks

    payload = _read_payload(json_text, file)
    open_broker()
    job = tasks.enqueue(queue, payload, kind=kind, priority=priority, delay=delay)
    click.echo(job.id)
    if wait:
        info = job.wait(timeout)
        click.echo(describe_job(info), err=True)
        if info.state != "completed":
            sys.exit(1)
        if queue == "report":  # the file and figures, as `crmqueue report --wait` prints
            from crmqueue.cli.report import print_result

            print_result(info.result or {})
        elif queue == "notification" and kind in (None, "send"):  # each channel's outcome
            from crmqueue.cli.notifications import print_result as print_channels

            print_channels(info.result or {})


COMMANDS = (enqueue,)
