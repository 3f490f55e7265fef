"""Recurring schedules at their edges: names that would break the one-line listings, ids
beyond a BIGINT (a traceback before), and a report's relative range that fits
reports.max_range_days on the day it is added but not on every later occurrence."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crmqueue.config import load_settings
from crmqueue.engine.storage import open_store
from crmqueue.errors import ConfigError, CrmQueueError, PayloadError
from crmqueue.schedules import ScheduleService
from tests.conftest import ROOT, wait_until
from tests.test_schedules_cli import cli, config  # noqa: F401  (fixtures)

UTC = dt.UTC
EMAIL = {"to": "ann@example.com", "template": "welcome", "context": {"firstName": "Ann"}}
REPORT = {"user_id": "u1", "report_type": "sales", "format": "pdf"}
NOW = dt.datetime(2026, 3, 10, 10, tzinfo=UTC)
SQLITE_ONLY = pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)


@pytest.fixture
def service(broker: Any) -> ScheduleService:
    return ScheduleService(broker.settings)


@SQLITE_ONLY
@pytest.mark.parametrize("name", ["a\nb", "tab\there", "\u202eevil", "bell\x07"])
def test_a_name_with_control_characters_is_refused(service: ScheduleService, name: str) -> None:
    with pytest.raises(PayloadError) as caught:
        service.add("t1", name, queue="email", payload=EMAIL, cron="0 8 * * *", now=NOW)
    assert [field for field, _ in caught.value.errors] == ["name"]
    assert service.list("t1") == []


@SQLITE_ONLY
@pytest.mark.parametrize("schedule_id", [0, -1, 2**63, 10**20])
def test_an_id_out_of_range_is_not_found(service: ScheduleService, schedule_id: int) -> None:
    for call in (service.show, service.pause, service.resume, service.remove, service.run_now):
        with pytest.raises(CrmQueueError, match="no schedule"):
            call("t1", schedule_id)


def test_the_cli_refuses_an_id_beyond_a_bigint_in_one_line(
    cli: Callable[..., Any],  # noqa: F811
) -> None:
    for verb in ("show", "pause", "resume", "remove", "run-now"):
        result = cli(verb, "99999999999999999999", "--tenant", "t1")
        # Not an id (beyond 64 bits), so looked up as a name: one line saying so.
        assert result.exit_code == 1, (verb, result.output, result.exception)
        assert "no schedule '99999999999999999999'" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.output


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("relative", "days"), [("previous_month", 28), ("month_to_date", 30), ("last_7_days", 6)]
)
def test_a_relative_range_is_checked_at_its_longest(
    make_broker: Callable[..., Any], relative: str, days: int
) -> None:
    """Added on 10 March (February: 28 days, March to date: 10) with max_range_days
    under 31, previous_month and month_to_date would fail on most later occurrences:
    refused at add, naming payload.date_range."""
    broker = make_broker({"reports.max_range_days": days})
    service = ScheduleService(broker.settings)
    with pytest.raises(PayloadError) as caught:
        service.add(
            "t1", "r", queue="report", payload={**REPORT, "date_range": relative},
            cron="0 8 * * *", now=NOW,
        )  # fmt: skip
    assert any(field.startswith("payload.date_range") for field, _ in caught.value.errors)
    assert service.list("t1") == []


def test_a_sigkilled_leader_is_taken_over_and_no_occurrence_doubles(
    config: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Two ``crmqueue run`` processes on one storage, an every-second schedule: the
    leader is SIGKILLed (no hand-over); the other takes the lock once it expires and the
    occurrences go on, each enqueued once (one job per occurrence time)."""
    with config.open("a") as file:
        file.write(
            "[runner]\nheartbeat_seconds = 0.5\nschedules_refresh_seconds = 1.0\n"
            '[[schedules]]\nname = "tick"\ntenant_id = "t1"\ninterval_seconds = 1\n'
            'queue = "email"\npayload = { to = "ann@example.com", template = "welcome",'
            ' context = { firstName = "Ann" } }\n'
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMQUEUE_", "REDIS_"))}
    env["PYTHONPATH"] = str(ROOT)
    settings = load_settings(str(config), environ={})
    store = open_store(settings.storage.url, "email", 2.0)

    def occurrences() -> list[str]:
        found = [job["id"] for state in ("waiting", "active", "completed")
                 for job in store.list_jobs(state, 10_000)]  # fmt: skip
        return sorted(job_id for job_id in found if job_id.startswith("sched-"))

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "crmqueue", "run", "--config", str(config)],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    first = start()
    second = None
    try:
        wait_until(lambda: len(occurrences()) >= 2, timeout=60, message="the first leads")
        second = start()
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = len(occurrences())
        wait_until(
            lambda: len(occurrences()) >= killed_at + 3, timeout=60, message="the second leads"
        )
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.communicate(timeout=60)
    ids = occurrences()
    stamps = [job_id.rsplit("-", 1)[1] for job_id in ids]
    assert len(stamps) == len(set(stamps)), ids  # one job per occurrence time
    assert second is not None and second.returncode == 0, second.stderr


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"interval_seconds": 10**12}, "schedules.0.interval_seconds"),
        ({"tenant_id": "bad tenant"}, "schedules.0.tenant_id"),
        ({"name": "two\nlines"}, "schedules.0.name"),
        ({"name": "   "}, "schedules.0.name"),
    ],
)
def test_bad_configured_schedules_are_refused_at_load_naming_the_key(
    change: dict[str, Any], field: str
) -> None:
    """Refused when the file is loaded, not left out later by the scheduler's leader
    with only a log line."""
    entry = {"name": "x", "tenant_id": "t1", "interval_seconds": 60, "queue": "email", **change}
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(config_file=None, overrides={"schedules": [entry]}, environ={})


def test_two_configured_schedules_of_one_name_are_refused() -> None:
    """The scheduler keys them by tenant and name: the second replaced the first."""
    first = {"name": "x", "tenant_id": "t1", "interval_seconds": 60, "queue": "email"}
    second = {**first, "interval_seconds": None, "cron": "0 8 * * *"}
    with pytest.raises(ConfigError, match="two schedules of tenant 't1' are named 'x'"):
        load_settings(config_file=None, overrides={"schedules": [first, second]}, environ={})
    other = {**first, "tenant_id": "t2"}
    assert (
        len(load_settings(None, overrides={"schedules": [first, other]}, environ={}).schedules) == 2
    )


def test_config_check_validates_configured_schedules_payloads(config: Path) -> None:  # noqa: F811
    """'config check' said "configuration ok" for a [[schedules]] payload the leading
    scheduler then left out with only a log line."""
    from click.testing import CliRunner

    from crmqueue.cli import main

    text = config.read_text()
    config.write_text(
        text + '[[schedules]]\nname = "x"\ntenant_id = "t1"\ninterval_seconds = 60\n'
        'queue = "email"\npayload = { to = "not-an-email" }\n'
    )
    result = CliRunner().invoke(main, ["config", "check", "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert "schedules.0.payload.to" in result.output
    assert "schedules.0.payload.template" in result.output
    config.write_text(
        text + '[[schedules]]\nname = "x"\ntenant_id = "t1"\ninterval_seconds = 60\n'
        'queue = "email"\npayload = { to = "ann@example.com", template = "welcome",'
        ' context = { firstName = "Ann" } }\n'
    )
    result = CliRunner().invoke(main, ["config", "check", "--config", str(config)])
    assert result.exit_code == 0 and "configuration ok" in result.output, result.output
