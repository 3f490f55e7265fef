"""``crmqueue doctor`` and ``crmqueue --version``: what a deployment runs and whether it
can work."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from crmqueue import __version__
from crmqueue.cli.common import command, config_file, console, emit_json


def build_commit() -> str:
    """The git commit crmqueue was built from: ``crmqueue/_build.py`` inside an executable
    (scripts/build.sh writes it), else ``git rev-parse`` in a checkout, else "unknown"."""
    try:
        built = getattr(importlib.import_module("crmqueue._build"), "COMMIT", None)
    except ImportError:
        built = None
    if built and getattr(sys, "frozen", False):
        return str(built)
    return _checkout_commit() or (str(built) if built else "unknown")


def _checkout_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    git = ["git", "-C", str(root)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            [*git, "diff", "--quiet", "HEAD", "--"], capture_output=True, timeout=5
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty == 1 else "")


def print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """The eager callback of ``crmqueue --version``."""
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"crmqueue, version {__version__} (commit {build_commit()})")
    ctx.exit()


@command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json: bool) -> None:
    """Check a deployment: config, storage, clock, directories, email, database.

    Exits 1 when a check FAILs. Secrets never print."""
    from crmqueue.doctor import run_checks

    checks = run_checks(config_file())
    failed = any(check.status == "FAIL" for check in checks)
    if as_json:
        emit_json({"ok": not failed, "checks": [check.to_dict() for check in checks]})
    else:
        table = Table(title="crmqueue doctor")
        for column in ("check", "status", "detail"):
            table.add_column(column, no_wrap=column != "detail")
        colours = {"ok": "green", "warn": "yellow", "FAIL": "bold red"}
        for check in checks:
            status = Text(check.status, style=colours[check.status])
            table.add_row(check.name, status, check.detail)
        console.print(table)
    sys.exit(1 if failed else 0)


COMMANDS = (doctor,)
