"""The crmqueue command line: CLI -> Settings -> runtime, kept apart (the uvicorn shape).

One module per command group; :mod:`crmqueue.cli.common` holds what they share. Every
command and group takes ``--config FILE``, before or after the command.
"""

from __future__ import annotations

import click

from crmqueue.cli import (
    api,
    configuration,
    db,
    deploy,
    dlq,
    email,
    enqueue,
    events,
    jobs,
    monitor,
    notifications,
    push,
    queues,
    report,
    schedules,
    serve,
    transfer,
    users,
    webhooks,
)
from crmqueue.cli.common import group
from crmqueue.cli.serve import SIGNAL_ECHO_SECONDS

__all__ = ["SIGNAL_ECHO_SECONDS", "main"]


@group()
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=deploy.print_version,
    help="Show the version and the git commit of this build, then exit.",
)
def main() -> None:
    """crmqueue: the background-job system of a CRM."""


for _module in (
    serve,
    enqueue,
    monitor,
    jobs,
    dlq,
    configuration,
    db,
    transfer,
    deploy,
    email,
    notifications,
    push,
    users,
    report,
    webhooks,
    schedules,
    events,
    api,
    queues,
):
    for _command in _module.COMMANDS:
        main.add_command(_command)
