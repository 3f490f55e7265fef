"""``crmqueue config show|check|default``: the effective configuration."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from crmqueue.cli.common import emit_json, group, load_config
from crmqueue.config import Settings
from crmqueue.errors import CrmQueueError
from crmqueue.workers.loading import load_bodies


@group("config")
def config_group() -> None:
    """Show or check the effective configuration, or print the documented defaults."""


@config_group.command("show")
def config_show() -> None:
    """Print the effective configuration as JSON, secrets masked."""
    emit_json(load_config().public_dict())


@config_group.command("check")
def config_check() -> None:
    """Validate the configuration; exit non-zero naming every bad key."""
    settings = load_config()
    load_bodies(settings)
    from crmqueue.providers.push import get_provider

    get_provider(settings)  # a configured VAPID key must read and match its public key
    _check_schedules(settings)
    click.echo("configuration ok")


def _check_schedules(settings: Settings) -> None:
    """Each [[schedules]] entry's job validated as its occurrences' will be (the leading
    scheduler leaves a failing one out with only a log line); ConfigError naming every
    bad field as ``schedules.<index>.<field>``."""
    if not settings.schedules:
        return
    import datetime as dt

    from crmqueue.engine import configure
    from crmqueue.errors import ConfigError, PayloadError
    from crmqueue.schedules import check_definition

    configure(settings)  # payload rules read the settings (templates, report limits)
    now = dt.datetime.now(dt.UTC)
    errors: list[str] = []
    for index, entry in enumerate(settings.schedules):
        try:
            check_definition(
                tenant_id=entry.tenant_id, name=entry.name, cron=entry.cron,
                interval_seconds=entry.interval_seconds, time_zone=entry.time_zone,
                queue=entry.queue, kind=entry.kind, payload=entry.payload,
                catch_up=entry.catch_up, now=now,
            )  # fmt: skip
        except PayloadError as exc:
            errors += [f"schedules.{index}.{field}: {why}" for field, why in exc.errors]
    if errors:
        raise ConfigError("; ".join(errors))


def default_config_file() -> Path | None:
    """config/crmqueue.toml: bundled inside the executable, or in a source checkout."""
    candidates = [Path(__file__).resolve().parents[2] / "config" / "crmqueue.toml"]
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        candidates.insert(0, Path(bundle) / "config" / "crmqueue.toml")
    return next((path for path in candidates if path.is_file()), None)


@config_group.command("default")
def config_default() -> None:
    """Print the documented default configuration: every key, its default and a comment.
    (--config is accepted and has no effect here.)"""
    path = default_config_file()
    if path is None:
        raise CrmQueueError(
            "this installation does not include config/crmqueue.toml (see the source tree)"
        )
    click.echo(path.read_text(encoding="utf-8"), nl=False)


COMMANDS = (config_group,)
