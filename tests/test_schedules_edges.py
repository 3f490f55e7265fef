"""Recurring schedules at their edges: names that would break the one-line listings, ids
beyond a BIGINT (a traceback before), and a report's relative range that fits
reports.max_range_days on the day it is added but not on every later occurrence."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from crmqueue.errors import CrmQueueError, PayloadError
from crmqueue.schedules import ScheduleService
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
        assert result.exit_code == 2, (verb, result.output, result.exception)
        assert "ID" in result.stderr and "Traceback" not in result.output


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
