"""`crmqueue doctor`'s CRM database row on PostgreSQL: connected (server and schema
versions), not yet initialised, and unreachable, never showing the URL's password."""

from __future__ import annotations

from pathlib import Path

import crm_db
import pytest
import sqlalchemy as sa
from conftest import free_port

from crmqueue.crm import schema
from crmqueue.crm.store import create_engine, init_db
from crmqueue.doctor import Check, run_checks

pg_url = crm_db.pg_url


def database_row(tmp_path: Path, url: str) -> Check:
    config = tmp_path / "crmqueue.toml"
    config.write_text(
        f'[storage]\nurl = "sqlite:///{tmp_path}/q.db"\n[files]\ndir = "{tmp_path}/files"\n'
        f'[database]\nurl = "{url}"\n'
    )
    return next(row for row in run_checks(str(config)) if row.name == "CRM database")


def test_postgresql_before_and_after_db_init(tmp_path: Path, pg_url: str) -> None:
    before = database_row(tmp_path, pg_url)
    assert before.status == "warn"
    assert before.detail.startswith("PostgreSQL ")
    assert before.detail.endswith("no CRM schema yet: run crmqueue db init")
    engine = create_engine(pg_url)
    init_db(engine)
    after = database_row(tmp_path, pg_url)
    assert after.status == "ok"
    assert after.detail.endswith(f"; schema version {schema.SCHEMA_VERSION}")
    with engine.begin() as conn:  # a newer crmqueue has been here
        conn.execute(
            schema.schema_version.insert().values(
                version=schema.SCHEMA_VERSION + 1, applied_at=sa.func.now()
            )
        )
    engine.dispose()
    newer = database_row(tmp_path, pg_url)
    assert newer.status == "FAIL" and "is newer than this crmqueue" in newer.detail


def test_unreachable_postgresql_fails_without_its_password(tmp_path: Path) -> None:
    row = database_row(tmp_path, f"postgresql://crm:s3cr3t-pw@127.0.0.1:{free_port()}/crm")
    assert row.status == "FAIL"
    assert "cannot connect" in row.detail and "127.0.0.1" in row.detail
    assert "s3cr3t-pw" not in row.detail


@pytest.mark.parametrize("url", ["mysql://root@127.0.0.1/crm"])
def test_unsupported_database_url_fails(tmp_path: Path, url: str) -> None:
    row = database_row(tmp_path, url)
    assert row.status == "FAIL"
