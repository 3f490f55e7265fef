"""``crmqueue config show|check|default``: the effective configuration."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from crmqueue.cli.common import emit_json, group, load_config
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
    click.echo("configuration ok")


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
