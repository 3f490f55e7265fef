"""``crmqueue stats --tenant T`` and ``crmqueue stats --top-tenants`` (issue #17): one
tenant's jobs per state and daily quota use, and the tenants with most waiting jobs.
Helpers of the stats command (crmqueue.cli.monitor), not a command group of their own."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from crmqueue import jobs
from crmqueue.cli.common import console, emit_json
from crmqueue.engine.health import stats as queue_stats
from crmqueue.engine.queues import Broker
from crmqueue.engine.tenant_stats import TENANT_STATES


def show_tenant_stats(
    broker: Broker, names: list[str], tenant: str | None, as_json: bool, single: bool
) -> None:
    """Print per-tenant rows (with `tenant`) or queue stats with their top tenants."""
    if tenant is not None:
        rows = [jobs.stats(name, tenant=tenant) for name in names]
        if as_json:
            emit_json(rows[0] if single else rows)
        else:
            console.print(_tenant_table(tenant, rows))
        return
    rows = []
    for name in names:
        row = queue_stats(broker, name)
        row["top_tenants"] = jobs.top_tenants(name)
        rows.append(row)
    if as_json:
        emit_json(rows[0] if single else rows)
        return
    table = Table(title="tenants with most waiting jobs")
    for header in ("queue", "tenant", "waiting"):
        table.add_column(header, justify="left" if header != "waiting" else "right")
    for row in rows:
        for top in row["top_tenants"]:
            table.add_row(row["queue"], top["tenant"], str(top["waiting"]))
    console.print(table)


def _tenant_table(tenant: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"tenant {tenant}")
    table.add_column("queue", no_wrap=True)
    for state in TENANT_STATES:
        table.add_column(state, justify="right")
    table.add_column("quota today", justify="right")
    for row in rows:
        quota = row["quota"]
        used = f"{quota['used']}/{quota['limit']}" if quota else "-"
        table.add_row(row["queue"], *(str(row[state]) for state in TENANT_STATES), used)
    return table
