"""``crmqueue events tail``: follow the job events stream live."""

from __future__ import annotations

import datetime as dt
import json
import signal
import sys
from types import FrameType

import click

from crmqueue.cli.common import QUEUE_CHOICE, group, open_broker
from crmqueue.engine.storage import EVENT_TYPES


@group()
def events() -> None:
    """Job events: every transition of every job, from all consumers and hosts."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@events.command("tail")
@click.option("--queue", type=QUEUE_CHOICE, default=None, help="Only this queue's jobs.")
@click.option("--tenant", default=None, help="Only this tenant's jobs.")
@click.option(
    "--kind", default=None, help="Only this job kind (send, export, sms, push...) or task name."
)
@click.option(
    "--type",
    "types",
    type=click.Choice(EVENT_TYPES),
    multiple=True,
    help="Only this event type (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
@click.option(
    "--from",
    "cursor",
    default=None,
    metavar="CURSOR",
    help="Start after this event's cursor (0: the oldest kept); default: from now on.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this many seconds without any event shown (default: follow until stopped).",
)
def tail(
    queue: str | None,
    tenant: str | None,
    kind: str | None,
    types: tuple[str, ...],
    as_json: bool,
    cursor: str | None,
    idle_timeout: float | None,
) -> None:
    """Print job events as they happen (Ctrl-C or SIGTERM stops). Each line ends with
    the event's cursor: --from CURSOR resumes after it without gaps."""
    from crmqueue import events as events_api

    open_broker()
    signal.signal(signal.SIGTERM, _stop)
    stream = events_api.subscribe(
        queue, tenant, kind, cursor, types=types or None, idle_timeout=idle_timeout
    )
    try:
        for event in stream:
            if as_json:
                line = json.dumps(event.to_dict(), separators=(",", ":"))
            else:
                when = dt.datetime.fromtimestamp(event.at, dt.UTC).strftime("%H:%M:%S.%f")[:-3]
                line = (
                    f"{when} {event.type:<9} {event.queue:<13} {event.tenant} {event.kind}"
                    f" {event.job_id} state={event.state} attempt={event.attempt}"
                    f" progress={event.progress}"
                    + (f" error={event.error!r}" if event.error else "")
                    + f" cursor={event.cursor}"
                )
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # | head: the reader is gone
        sys.stderr.close()


COMMANDS = (events,)
