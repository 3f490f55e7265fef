"""``crmqueue queues pause|resume QUEUE``: stop and restart claiming from a queue."""

from __future__ import annotations

import click

from crmqueue.cli.common import QUEUE_CHOICE, group, open_broker
from crmqueue.engine import pause as pause_mod


@group()
def queues() -> None:
    """Pause or resume a queue (all consumers, every host)."""


@queues.command("pause")
@click.argument("queue", type=QUEUE_CHOICE)
def queues_pause(queue: str) -> None:
    """Consumers stop claiming jobs from QUEUE within a second (running jobs finish);
    jobs can still be enqueued and wait."""
    pause_mod.pause(open_broker().queue(queue).store)
    click.echo(f"queue {queue} paused")


@queues.command("resume")
@click.argument("queue", type=QUEUE_CHOICE)
def queues_resume(queue: str) -> None:
    """Consumers claim jobs from QUEUE again within a second."""
    pause_mod.resume(open_broker().queue(queue).store)
    click.echo(f"queue {queue} resumed")


COMMANDS = (queues,)
