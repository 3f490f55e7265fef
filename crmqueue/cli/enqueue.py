"""``crmqueue enqueue``: validate a JSON payload and enqueue it on a queue."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from crmqueue.cli.common import QUEUE_CHOICE, command, describe_job, open_broker
from crmqueue.errors import CrmQueueError


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
        payload = json.loads(json_text or "")
    except json.JSONDecodeError as exc:
        raise CrmQueueError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise CrmQueueError(f"{source}: the payload must be a JSON object")
    return payload


@command()
@click.argument("queue", type=QUEUE_CHOICE)
@click.option("--json", "json_text", default=None, help="The payload as a JSON object.")
@click.option("--file", type=click.Path(dir_okay=False), default=None, help="A JSON payload file.")
@click.option("--kind", default=None, help="Job kind (e.g. import, export, publish).")
@click.option("--priority", type=int, default=None, help="Higher runs first (-1000..1000).")
@click.option("--delay", type=click.FloatRange(min=0), default=None, help="Seconds to wait.")
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


COMMANDS = (enqueue,)
