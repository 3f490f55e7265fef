"""``crmqueue db init|seed``: the CRM database."""

from __future__ import annotations

import click

from crmqueue.cli.common import group, load_config


@group("db")
def db_group() -> None:
    """The CRM database: create or upgrade its schema, seed demo data."""


@db_group.command("init")
def db_init() -> None:
    """Create the CRM schema, or upgrade an existing database keeping its data."""
    from crmqueue.config import mask_url
    from crmqueue.crm.store import create_engine, init_db

    settings = load_config()
    engine = create_engine(settings.database.url)
    try:
        before, after = init_db(engine)
    finally:
        engine.dispose()
    where = mask_url(settings.database.url)
    if before == after:
        click.echo(f"CRM database {where}: schema version {after}, up to date")
    else:
        click.echo(f"CRM database {where}: schema version {before} -> {after}")


@db_group.command("seed")
@click.option("--tenant", required=True, help="Tenant id of the demo data.")
@click.option("--contacts", type=click.IntRange(min=0), default=1000, show_default=True)
def db_seed(tenant: str, contacts: int) -> None:
    """Insert realistic demo data for one tenant (companies, contacts, leads, activities)."""
    from crmqueue.crm.store import create_engine, init_db, seed

    settings = load_config()
    engine = create_engine(settings.database.url)
    try:
        init_db(engine)
        counts = seed(engine, tenant, contacts, contact_statuses=settings.crm.contact_statuses)
    finally:
        engine.dispose()
    click.echo(", ".join(f"{count} {name}" for name, count in counts.items()))


COMMANDS = (db_group,)
