"""CRM database fixtures for the store and import-export tests: a fresh SQLite file, and a
PostgreSQL database of the test's own on 127.0.0.1:5432 (created, then dropped). Without
a reachable PostgreSQL the PostgreSQL cases are skipped locally and fail when CI=true."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PG_HOST = os.environ.get("CRMQUEUE_TEST_PG", "127.0.0.1:5432")
PG_USERS = ("postgres", "root")


def _admin() -> tuple[Any, str]:
    import psycopg

    errors = []
    for user in PG_USERS:
        try:
            conn = psycopg.connect(
                f"postgresql://{user}@{PG_HOST}/test", autocommit=True, connect_timeout=3
            )
            return conn, user
        except psycopg.Error as exc:
            errors.append(f"{user}: {str(exc).strip()}")
    reason = f"PostgreSQL at {PG_HOST} unreachable ({'; '.join(errors)})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}: CI must run the PostgreSQL tests", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def pg_url() -> Iterator[str]:
    admin, user = _admin()
    name = f"crmqueue_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{user}@{PG_HOST}/{name}"
    finally:
        from crmqueue.crm.store import dispose_engines

        dispose_engines()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def crm_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both CRM databases: a fresh SQLite file, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/crm.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def crm_engine(crm_url: str) -> Iterator[Any]:
    from crmqueue.crm.store import create_engine, init_db

    engine = create_engine(crm_url)
    init_db(engine)
    yield engine
    engine.dispose()
