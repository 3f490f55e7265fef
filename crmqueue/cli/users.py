"""``crmqueue users add|list``: the CRM users notifications and emails go to."""

from __future__ import annotations

import click
from rich.table import Table

from crmqueue.cli.common import console, emit_json, group, load_config


@group("users")
def users_group() -> None:
    """CRM users: their email address, time zone and phone."""


@users_group.command("add")
@click.option("--tenant", required=True, help="Tenant id.")
@click.option("--user", "user_id", required=True, help="The user's id in the tenant.")
@click.option("--name", required=True, help="Full name (the first word greets them).")
@click.option("--email", required=True, help="Email address (local@domain).")
@click.option("--time-zone", default=None, help="IANA time zone, e.g. Europe/Berlin.")
@click.option("--phone", default=None, help="Phone in E.164, e.g. +14155550100.")
def users_add(
    tenant: str, user_id: str, name: str, email: str, time_zone: str | None, phone: str | None
) -> None:
    """Add a user, or update the one with that id."""
    from crmqueue.crm.store import get_engine
    from crmqueue.crm.users import add_user

    engine = get_engine(load_config().database.url)
    user, added = add_user(
        engine, tenant, user_id, name=name, email=email, time_zone=time_zone, phone=phone
    )
    click.echo(f"{'added' if added else 'updated'} user {user.user_id} of tenant {tenant}")


@users_group.command("list")
@click.option("--tenant", required=True, help="Tenant id.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def users_list(tenant: str, as_json: bool) -> None:
    """The tenant's users."""
    from dataclasses import asdict

    from crmqueue.crm.store import get_engine
    from crmqueue.crm.users import list_users

    users = list_users(get_engine(load_config().database.url), tenant)
    if as_json:
        emit_json([asdict(user) for user in users])
        return
    table = Table(title=f"users of {tenant}")
    for column in ("user", "name", "email", "time zone", "phone", "quiet hours"):
        table.add_column(column)
    for user in users:
        quiet = f"{user.quiet_start}-{user.quiet_end}" if user.quiet_start else "-"
        table.add_row(user.user_id, user.name, user.email, user.time_zone or "UTC",
                      user.phone or "-", quiet)  # fmt: skip
    console.print(table)


COMMANDS = (users_group,)
