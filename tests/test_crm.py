"""The CRM store on SQLite and PostgreSQL: schema creation and versioned upgrade keeping
data, seeding, tenant scoping, and the `crmqueue db` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import crm_db
import sqlalchemy as sa
from click.testing import CliRunner

from crmqueue.cli import main
from crmqueue.crm import schema
from crmqueue.crm.store import create_engine, current_version, init_db, seed, sqlalchemy_url

# the CRM database fixtures, both SQLite and PostgreSQL
crm_url = crm_db.crm_url
crm_engine = crm_db.crm_engine
pg_url = crm_db.pg_url


def count(engine: Any, table: sa.Table, tenant: str) -> int:
    with engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(table).where(table.c.tenant_id == tenant)
        return int(conn.execute(query).scalar_one())


def test_urls() -> None:
    assert sqlalchemy_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlalchemy_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlalchemy_url("sqlite:///x/crm.db") == "sqlite:///x/crm.db"


def test_init_creates_every_table_and_is_idempotent(crm_url: str) -> None:
    engine = create_engine(crm_url)
    try:
        assert init_db(engine) == (0, schema.SCHEMA_VERSION)
        assert init_db(engine) == (schema.SCHEMA_VERSION, schema.SCHEMA_VERSION)
        names = set(sa.inspect(engine).get_table_names())
        assert {t.name for t in schema.metadata.sorted_tables} <= names
        for table in schema.metadata.sorted_tables:
            if table.name != "schema_version":
                assert "tenant_id" in table.c, table.name
    finally:
        engine.dispose()


def test_upgrade_keeps_data(crm_url: str) -> None:
    engine = create_engine(crm_url)
    try:
        assert init_db(engine, target=1) == (0, 1)
        assert not sa.inspect(engine).has_table("import_checkpoints")
        stamp = sa.func.now()
        with engine.begin() as conn:
            conn.execute(
                schema.contacts.insert().values(
                    tenant_id="t1", email="keep@example.com", created_at=stamp, updated_at=stamp
                )
            )
        assert init_db(engine) == (1, schema.SCHEMA_VERSION)
        assert sa.inspect(engine).has_table("import_checkpoints")
        with engine.connect() as conn:
            assert current_version(conn) == schema.SCHEMA_VERSION
            emails = conn.execute(sa.select(schema.contacts.c.email)).scalars().all()
        assert emails == ["keep@example.com"]
    finally:
        engine.dispose()


def test_seed_is_realistic_and_scoped_by_tenant(crm_engine: Any) -> None:
    counts = seed(crm_engine, "t1", 300)
    assert counts == {
        "users": 5, "companies": 15, "contacts": 300, "leads": 60, "activities": 60
    }  # fmt: skip
    seed(crm_engine, "t2", 40)
    assert count(crm_engine, schema.contacts, "t1") == 300
    assert count(crm_engine, schema.contacts, "t2") == 40
    assert count(crm_engine, schema.leads, "t1") == 60
    with crm_engine.connect() as conn:
        emails = conn.execute(
            sa.select(schema.contacts.c.email).where(schema.contacts.c.tenant_id == "t1")
        ).scalars()
        emails = list(emails)
    assert len(set(emails)) == 300 and all(e.isascii() and "@" in e for e in emails)
    seed(crm_engine, "t1", 10)  # seeding again adds rows with fresh emails
    assert count(crm_engine, schema.contacts, "t1") == 310
    assert count(crm_engine, schema.users, "t1") == 5


def test_cli_db_init_and_seed(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CRMQUEUE_CONFIG", raising=False)
    runner = CliRunner()
    first = runner.invoke(main, ["db", "init"])
    assert first.exit_code == 0, first.output
    assert f"0 -> {schema.SCHEMA_VERSION}" in first.output
    assert (tmp_path / "crmqueue-data" / "crm.db").is_file()
    again = runner.invoke(main, ["db", "init"])
    assert "up to date" in again.output
    seeded = runner.invoke(main, ["db", "seed", "--tenant", "t1", "--contacts", "200"])
    assert seeded.exit_code == 0, seeded.output
    assert "200 contacts" in seeded.output
    engine = create_engine("sqlite:///crmqueue-data/crm.db")
    try:
        assert count(engine, schema.contacts, "t1") == 200
    finally:
        engine.dispose()
    # the statuses it gives contacts are the configured ones
    (tmp_path / "crmqueue.toml").write_text('[crm]\ncontact_statuses = ["Trial", "Paying"]\n')
    seeded = runner.invoke(main, ["db", "seed", "--tenant", "t2", "--contacts", "50"])
    assert seeded.exit_code == 0, seeded.output
    engine = create_engine("sqlite:///crmqueue-data/crm.db")
    try:
        with engine.connect() as conn:
            c = schema.contacts.c
            query = sa.select(c.status, c.name).where(c.tenant_id == "t2")
            rows = conn.execute(query).all()
        assert {row.status for row in rows} == {"Trial", "Paying"}
        assert all(row.name for row in rows)
    finally:
        engine.dispose()
