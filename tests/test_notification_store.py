"""In-app notifications stored by jobs are group-committed (crmqueue.notifications:
_WRITER, one transaction for the rows of many worker threads) and still stored once
per job id, on SQLite and PostgreSQL: retried jobs find their row, a job claiming a
first run it is not gets the row all the same (the unique index refuses a second), and
a row the database refuses fails only its own caller. Preferences read by jobs are
reused for notifications.preferences_cache_seconds but never across a change made in
this process."""

from __future__ import annotations

import threading
from typing import Any

import crm_db
import pytest
import sqlalchemy as sa

from crmqueue import notifications
from crmqueue.config import load_settings
from crmqueue.crm import schema
from crmqueue.crm.users import add_user

crm_url = crm_db.crm_url
crm_engine = crm_db.crm_engine
pg_url = crm_db.pg_url
SETTINGS = load_settings(environ={})


def _store(engine: Any, job: str, user: str = "u1", **kwargs: Any) -> int:
    return notifications.store("t1", user, title=f"for {job}", message="m", job_id=job,
                               engine=engine, settings=SETTINGS, **kwargs)  # fmt: skip


def _rows(engine: Any) -> list[tuple[int, str | None]]:
    n = schema.notifications
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.select(n.c.id, n.c.job_id).order_by(n.c.id))]


def test_many_threads_store_each_job_once(crm_engine: Any) -> None:
    """40 threads store 400 jobs' notifications, each job's twice (a re-run racing its
    first run) and some as first runs: 400 rows, and both stores of a job agree."""
    ids: dict[str, list[int]] = {}
    lock = threading.Lock()

    def work(offset: int) -> None:
        for i in range(offset, 400, 20):
            job = f"job-{i}"
            got = _store(crm_engine, job, first_run=i % 3 == 0)
            with lock:
                ids.setdefault(job, []).append(got)

    threads = [threading.Thread(target=work, args=(k % 20,)) for k in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = _rows(crm_engine)
    assert len(rows) == 400 and len({job for _, job in rows}) == 400
    by_job = {job: id_ for id_, job in rows}
    assert all(got == [by_job[job]] * 2 for job, got in ids.items())


def test_a_wrong_first_run_finds_the_stored_row(crm_engine: Any) -> None:
    first = _store(crm_engine, "job-1")
    assert _store(crm_engine, "job-1", first_run=True) == first
    assert _store(crm_engine, "job-1") == first
    assert len(_rows(crm_engine)) == 1


def test_a_refused_row_fails_only_its_caller(crm_engine: Any) -> None:
    """A title over the column's 200 characters (PostgreSQL refuses it; SQLite keeps
    it): its store raises, the others in the same batch are stored."""
    results: dict[str, Any] = {}

    def work(job: str, title: str) -> None:
        try:
            results[job] = notifications.store(
                "t1", "u1", title=title, message="m", job_id=job, engine=crm_engine,
                settings=SETTINGS,
            )  # fmt: skip
        except Exception as exc:
            results[job] = exc

    jobs = [(f"job-{i}", "x" * (300 if i == 5 else 10)) for i in range(10)]
    threads = [threading.Thread(target=work, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = {job for _, job in _rows(crm_engine)}
    if crm_engine.dialect.name == "postgresql":
        assert isinstance(results["job-5"], sa.exc.DBAPIError)
        assert stored == {f"job-{i}" for i in range(10) if i != 5}
    else:
        assert len(stored) == 10
    assert all(isinstance(results[f"job-{i}"], int) for i in range(10) if i != 5)


def test_recent_preferences_follow_changes_made_here(crm_engine: Any) -> None:
    def recent(max_age: float = 60.0) -> notifications.Preferences:
        return notifications.recent_preferences("t1", "u1", engine=crm_engine, max_age=max_age)

    assert recent().known is False
    add_user(crm_engine, "t1", "u1", name="Ann", email="ann@example.com")
    assert recent().known is True  # add_user in this process: forgotten at once
    notifications.set_preferences("t1", "u1", "lead.assigned", ["email"], engine=crm_engine)
    assert recent().own == {"lead.assigned": ("email",)}
    notifications.set_quiet_hours("t1", "u1", "22:00", "07:00", engine=crm_engine)
    assert recent().quiet_hours == ("22:00", "07:00")
    # A change made elsewhere (another process: here, straight in the table) shows
    # after max_age; with 0 at once.
    with crm_engine.begin() as conn:
        conn.execute(schema.notification_preferences.delete())
    assert recent().own == {"lead.assigned": ("email",)}
    assert recent(max_age=0).own == {}
    assert recent(max_age=1e-9).own == {}


@pytest.mark.parametrize("seconds", ["-1", "61"])
def test_preferences_cache_seconds_is_checked(seconds: str) -> None:
    from crmqueue.errors import ConfigError

    with pytest.raises(ConfigError, match=r"notifications\.preferences_cache_seconds"):
        load_settings(environ={"CRMQUEUE_NOTIFICATIONS__PREFERENCES_CACHE_SECONDS": seconds})
