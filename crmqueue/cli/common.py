"""What every command group shares: the ``--config`` option (taken before or after any
command), opening the broker, JSON output, one-line errors, logging setup.

Commands are built with :func:`command` and :func:`group` (or on a group made by
:func:`group`): each of them then takes ``--config FILE`` and turns crmqueue's own errors
into one line on stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import IO, Any

import click
from rich.console import Console

from crmqueue.config import QUEUE_NAMES, Settings, load_settings
from crmqueue.engine.queues import Broker, configure
from crmqueue.errors import CrmQueueError
from crmqueue.workers.loading import load_bodies

# No markup: the tables show job data (subjects, error messages) that may hold "[...]";
# colours are given as rich Text styles instead.
console = Console(width=None if sys.stdout.isatty() else 160, markup=False)
QUEUE_CHOICE = click.Choice(QUEUE_NAMES)
log = logging.getLogger("crmqueue")

# ctx.meta is one dict shared by a context and all the contexts nested in it: the
# --config of any level (crmqueue, a group, the command) lands in the same place.
_CONFIG_KEY = "crmqueue.config_file"


class OneLineUsageError(click.UsageError):
    """A usage error shown as one line (``crmqueue: error: ...``), exit status 2."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"crmqueue: error: {self.format_message()}", err=True, file=file)


def _remember_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is None or ctx.resilient_parsing:
        return
    given = ctx.meta.get(_CONFIG_KEY)
    if given is not None and os.path.realpath(given) != os.path.realpath(value):
        raise OneLineUsageError(
            f"--config given twice with different files ({given} and {value}); give it once,"
            " before or after the command",
            ctx,
        )
    ctx.meta[_CONFIG_KEY] = value


def _config_option() -> click.Option:
    return click.Option(
        ["--config", "config_file"],
        type=click.Path(dir_okay=False),
        default=None,
        expose_value=False,
        callback=_remember_config,
        help="TOML config file (default: $CRMQUEUE_CONFIG, else ./crmqueue.toml if present)."
        " Before or after the command.",
    )


def config_file() -> str | None:
    """The --config FILE of this invocation, from whichever level gave it; None if none did
    (then $CRMQUEUE_CONFIG, else ./crmqueue.toml, else the defaults apply)."""
    value = click.get_current_context().meta.get(_CONFIG_KEY)
    return None if value is None else str(value)


def load_config() -> Settings:
    """The effective settings of this invocation; raises ConfigError naming bad keys."""
    return load_settings(config_file())


def open_broker() -> Broker:
    """Load the settings and the job bodies, and configure the broker every queue uses."""
    settings = load_config()
    load_bodies(settings)
    return configure(settings)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def describe_job(info: Any) -> str:
    """``job ID STATE (attempts N/M)``, with the last error of a dead job."""
    line = f"job {info.id} {info.state} (attempts {info.attempts}/{info.max_attempts})"
    if info.state == "dead" and info.errors:
        last = info.errors[-1]
        line += f": {last['type']}: {last['message']}"
    return line


class CrmQueueCommand(click.Command):
    """A command that takes --config."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(_config_option())


class CrmQueueGroup(click.Group):
    """A group that takes --config, makes its commands and groups the same way, and turns
    crmqueue's own errors into one clear line on stderr and exit status 1."""

    command_class = CrmQueueCommand
    group_class = type  # subgroups are CrmQueueGroups too

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(_config_option())

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (CrmQueueError, TimeoutError) as exc:
            click.echo(f"crmqueue: error: {exc}", err=True)
            sys.exit(1)


def command(name: str | None = None, **attrs: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """``click.command`` for crmqueue: the command takes --config."""
    return click.command(name, cls=CrmQueueCommand, **attrs)


def group(name: str | None = None, **attrs: Any) -> Callable[[Callable[..., Any]], click.Group]:
    """``click.group`` for crmqueue: the group and everything under it take --config."""
    return click.group(name, cls=CrmQueueGroup, **attrs)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: Settings) -> None:
    """Log to stderr as text or JSON lines (``logging.format``) at ``logging.level``."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.logging.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.logging.level)
    logging.getLogger("huey").setLevel(logging.WARNING)
