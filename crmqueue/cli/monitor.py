"""``crmqueue stats`` and ``crmqueue health``: counts per queue, and the health verdict
with its exit status."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from crmqueue.cli.common import QUEUE_CHOICE, command, console, emit_json, open_broker
from crmqueue.config import QUEUE_NAMES
from crmqueue.engine import health as health_mod

_STATS_COLUMNS = {
    "queue": "queue", "waiting": "wait", "active": "active", "delayed": "delay",
    "scheduled": "sched", "completed": "done", "failed": "failed", "dead": "dead",
    "workers": "workers", "paused": "paused", "throughput_per_min": "/min", "failure_rate": "fail%",
    "healthy": "ok",
}  # fmt: skip


def _stats_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="crmqueue queues")
    for key, header in _STATS_COLUMNS.items():
        table.add_column(header, justify="left" if key == "queue" else "right", no_wrap=True)
    for row in rows:
        cells: list[str | Text] = [str(row[key]) for key in _STATS_COLUMNS]
        cells[-2] = f"{row['failure_rate'] * 100:.1f}"
        cells[-4] = "yes" if row["paused"] else "no"
        cells[-1] = Text("yes", style="green") if row["healthy"] else Text("no", style="red")
        table.add_row(*cells)
    return table


@command()
@click.argument("queue", type=QUEUE_CHOICE, required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--tenant", default=None, help="One tenant's jobs per state and quota use.")
@click.option(
    "--top-tenants", is_flag=True, help="Also the tenants with most waiting jobs per queue."
)
def stats(queue: str | None, as_json: bool, tenant: str | None, top_tenants: bool) -> None:
    """Counts, throughput and failure rate per queue."""
    broker = open_broker()
    names = [queue] if queue else list(QUEUE_NAMES)
    if tenant is not None or top_tenants:
        from crmqueue.cli.tenant_stats import show_tenant_stats

        show_tenant_stats(broker, names, tenant, as_json, single=queue is not None)
        return
    rows = [health_mod.stats(broker, name) for name in names]
    if as_json:
        emit_json(rows[0] if queue else rows)
    else:
        console.print(_stats_table(rows))


@command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def health(as_json: bool) -> None:
    """Exit 0 healthy, 1 degraded, 2 error (storage unreachable or a queue without consumer)."""
    broker = open_broker()
    report = health_mod.health(broker)
    last = None
    if report["status"] != "error" or report["queues"]:
        last = health_mod.last_check(broker)
    report["last_check"] = last["timestamp"] if last else None
    if as_json:
        emit_json(report)
    else:
        colour = {"healthy": "green", "degraded": "yellow", "error": "red"}[report["status"]]
        console.print(
            Text.assemble("status: ", (report["status"], colour), f"  at {report['timestamp']}")
        )
        if report.get("error"):
            console.print(f"error: {report['error']}")
        console.print(f"last periodic check: {report['last_check'] or 'never'}")
        if report["queues"]:
            console.print(_stats_table(report["queues"]))
            for row in report["queues"]:
                if row["consumers"] == 0:
                    console.print(Text(f"queue {row['queue']}: no live consumer", style="red"))
    sys.exit(health_mod.EXIT_CODES[report["status"]])


COMMANDS = (stats, health)
