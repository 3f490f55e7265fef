"""Report jobs refused at enqueue (issue #13 item 7), each refusal naming its field; the
original system's report call validating as written; the [reports] settings."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crmqueue import jobs, tasks
from crmqueue.config import ReportsSettings, load_settings
from crmqueue.errors import ConfigError, PayloadError
from crmqueue.payloads import ReportPayload, payload_json, validate_payload
from crmqueue.reports.options import ReportFilters, check_dimensions, check_filters

EXAMPLES = Path(__file__).parent / "data" / "original-examples.json"
D = Decimal
CONTEXT = {"max_range_days": 3660, "contact_statuses": ["lead", "prospect", "customer"]}


def _report(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "tenantId": "t1",
        "userId": "u1",
        "reportType": "sales",
        "format": "pdf",
        "dateRange": {"startDate": "2025-01-01", "endDate": "2025-12-31"},
    }
    data.update(overrides)
    return data


def _valid(data: dict[str, Any], context: dict[str, Any] | None = None) -> ReportPayload:
    return ReportPayload.model_validate(data, context=context or CONTEXT)


def _errors(data: dict[str, Any], context: dict[str, Any] | None = None) -> dict[str, str]:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        _valid(data, context)
    return {".".join(map(str, e["loc"])): e["msg"] for e in info.value.errors()}


def test_the_original_sales_call_validates_as_written() -> None:
    examples = json.loads(EXAMPLES.read_text())["examples"]
    (payload,) = [e["payload"] for e in examples if e["queue"] == "report"]
    job = _valid(payload)
    assert job.report_type == "sales" and job.format == "pdf"
    assert job.date_range.start_date == date(2025, 1, 1)
    assert job.date_range.end_date == date(2025, 12, 31)
    # Kept as given (the report's cover shows them so), read in stored terms.
    assert job.filters == {"status": "closed-won", "minAmount": 50000}
    checked, errors = check_filters("sales", job.filters, ())
    assert errors == []
    assert checked == ReportFilters(status=("won",), min_amount=Decimal(50000))
    # No time zone given: none in the job's JSON (the tenant's applies).
    assert "time_zone" not in job.model_dump(mode="json")


def test_snake_case_and_camel_case_alike() -> None:
    snake = _valid(
        {
            "tenant_id": "t1", "user_id": "u1", "report_type": "pipeline", "format": "xlsx",
            "date_range": {"start_date": "2025-01-01", "end_date": "2025-03-31"},
            "filters": {"min_amount": "10.50", "max_amount": 99}, "dimensions": ["week"],
            "time_zone": "Asia/Tokyo",
        }
    )  # fmt: skip
    camel = _valid(
        _report(
            reportType="pipeline", format="xlsx",
            dateRange={"startDate": "2025-01-01", "endDate": "2025-03-31"},
            filters={"min_amount": "10.50", "max_amount": 99}, dimensions=["week"],
            timeZone="Asia/Tokyo",
        )
    )  # fmt: skip
    assert snake == camel
    assert camel.time_zone == "Asia/Tokyo"
    assert camel.model_dump(mode="json")["time_zone"] == "Asia/Tokyo"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (
            {"dateRange": {"startDate": "2025-02-01", "endDate": "2025-01-31"}},
            "date_range.end_date",
        ),
        ({"reportType": "forecast"}, "report_type"),
        ({"format": "docx"}, "format"),
        ({"filters": {"bogus": 1}}, "filters.bogus"),
        ({"dimensions": ["month", "bogus"]}, "dimensions.1"),
        ({"dateRange": {"startDate": "2015-01-01", "endDate": "2025-12-31"}}, "date_range"),
        ({"timeZone": "Mars/Olympus"}, "time_zone"),
    ],
)
def test_item_7_refusals_name_their_field(overrides: dict[str, Any], field: str) -> None:
    errors = _errors(_report(**overrides))
    assert list(errors) == [field], errors


def test_range_limit_is_inclusive_and_configurable() -> None:
    # 3,660 days, both ends included: allowed; one more day refused.
    ok = {"startDate": "2016-01-08", "endDate": "2026-01-14"}
    assert (date(2026, 1, 14) - date(2016, 1, 8)).days + 1 == 3660
    _valid(_report(dateRange=ok))
    errors = _errors(_report(dateRange={**ok, "startDate": "2016-01-07"}))
    assert errors == {"date_range": "spans 3661 days; at most 3660 (reports.max_range_days)"}
    short = {**CONTEXT, "max_range_days": 31}
    assert list(_errors(_report(), short)) == ["date_range"]
    _valid(_report(dateRange={"startDate": "2025-01-01", "endDate": "2025-01-31"}), short)


def test_every_bad_filter_and_dimension_is_named() -> None:
    errors = _errors(
        _report(
            reportType="contact-growth",
            filters={"owner": "u1", "minAmount": 5, "status": "Customer", "source": ["web", 3],
                     "nonsense": "x"},
            dimensions=["month", "week", "stage", "source", "source", "nope"],
        )
    )  # fmt: skip
    assert set(errors) == {
        "filters.owner", "filters.minAmount", "filters.source", "filters.nonsense",
        "dimensions.1", "dimensions.2", "dimensions.4", "dimensions.5",
    }  # fmt: skip
    assert "not a filter of contact-growth reports" in errors["filters.owner"]
    assert errors["filters.nonsense"] == "unknown filter (filters: status, source)"
    assert "a second period" in errors["dimensions.1"]
    assert "not a dimension of contact-growth reports" in errors["dimensions.2"]
    assert errors["dimensions.4"] == "'source': given twice"
    assert errors["dimensions.5"].startswith("'nope': unknown dimension")


@pytest.mark.parametrize(
    ("filters", "field", "reason"),
    [
        ({"status": "pending"}, "filters.status", "not a status"),
        ({"minAmount": -1}, "filters.minAmount", "from 0"),
        ({"minAmount": True}, "filters.minAmount", "a number"),
        ({"maxAmount": "lots"}, "filters.maxAmount", "a number"),
        ({"minAmount": "1.005"}, "filters.minAmount", "2 decimal places"),
        ({"minAmount": 10, "maxAmount": 5}, "filters.maxAmount", "below min_amount"),
        ({"min_amount": 1, "minAmount": 2}, "filters.minAmount", "given twice"),
        ({"currency": "EURO"}, "filters.currency", "3 letters"),
        ({"owner": []}, "filters.owner", "empty list"),
        ({"stage": "x" * 51}, "filters.stage", "not a configured stage"),
    ],
)
def test_bad_filter_values(filters: dict[str, Any], field: str, reason: str) -> None:
    errors = _errors(_report(filters=filters))
    assert list(errors) == [field], errors
    assert reason in errors[field]


def test_filters_that_can_never_match_are_refused() -> None:
    """Finding 3: a stage outside reports.stage_probabilities, status open for sales."""
    errors = _errors(_report(filters={"stage": "nowhere"}), {**CONTEXT, "stages": ["a", "b"]})
    assert errors == {
        "filters.stage": "'nowhere': not a configured stage "
        "(stages: a, b; reports.stage_probabilities)"
    }
    job = _valid(_report(filters={"stage": ["B", "a"]}), {**CONTEXT, "stages": ["a", "b"]})
    assert check_filters("sales", job.filters, (), ["a", "b"])[0].stage == ("b", "a")
    errors = _errors(_report(filters={"status": ["won", "open"]}))
    assert list(errors) == ["filters.status"]
    assert "'open': a sales report counts closed deals only" in errors["filters.status"]
    assert "open" not in errors["filters.status"].split("statuses: ")[1]
    assert _valid(_report(reportType="pipeline", filters={"status": "open"})).filters
    _, problems = check_filters("sales", {"currency": "12E"}, ())
    assert problems and "3 letters" in problems[0][1]


def test_status_vocabularies_per_report_type() -> None:
    lead, _ = check_filters("pipeline", {"status": ["Closed-Lost", "open", "closed"]}, ())
    assert lead.status == ("lost", "open", "won")
    contact, _ = check_filters("contact-growth", {"status": "CUSTOMER"}, ["Lead", "Customer"])
    assert contact.status == ("Customer",)
    _, errors = check_filters("activity", {"status": ["overdue", "won"]}, ())
    assert errors and errors[0][0] == "status" and "'won'" in errors[0][1]
    currency, _ = check_filters("sales", {"currency": ["eur", "USD", "EUR"]}, ())
    assert currency.currency == ("EUR", "USD")
    assert check_dimensions("activity", []) == (("month", ()), [])
    assert check_dimensions("sales", ["owner", "quarter"]) == (("quarter", ("owner",)), [])


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_contact_statuses_come_from_settings_without_context(broker: Any) -> None:
    data = _report(reportType="contact-growth", filters={"status": "prospect"})
    assert validate_payload(ReportPayload, data).filters == {"status": "prospect"}
    with pytest.raises(PayloadError) as info:
        validate_payload(ReportPayload, {**data, "filters": {"status": "closed-won"}})
    assert [field for field, _ in info.value.errors] == ["filters.status"]


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_generate_report_refuses_at_enqueue_and_stores_nothing(broker: Any) -> None:
    with pytest.raises(PayloadError) as info:
        tasks.generate_report(
            tenant_id="t1", user_id="u1", report_type="sales", format="pdf",
            date_range={"startDate": "2025-01-31", "endDate": "2025-01-01"},
            filters={"color": "red"}, dimensions=["hour"],
        )  # fmt: skip
    assert {field for field, _ in info.value.errors} == {
        "date_range.end_date",
        "filters.color",
        "dimensions.0",
    }
    assert jobs.list_jobs("report", "waiting") == []
    job = tasks.generate_report(
        tenant_id="t1", user_id="u1", report_type="sales", format="html",
        date_range={"startDate": "2025-01-01", "endDate": "2025-01-31"},
        filters={"status": "closed-won", "minAmount": 50000}, time_zone="Europe/Berlin",
    )  # fmt: skip
    stored = jobs.get(job.id).payload
    assert stored["filters"] == {"status": "closed-won", "minAmount": 50000}
    assert stored["time_zone"] == "Europe/Berlin"
    _, encoded = payload_json(ReportPayload, stored)
    assert json.loads(encoded) == stored


def test_reports_settings(tmp_path: Path) -> None:
    defaults = ReportsSettings()
    assert defaults.max_range_days == 3660 and defaults.zone_for("t1") == "UTC"
    assert list(defaults.probabilities().items())[:2] == [
        ("prospecting", Decimal("0.1")),
        ("qualification", Decimal("0.25")),
    ]
    settings = load_settings(
        config_file=None,
        environ={
            "CRMQUEUE_REPORTS__TENANT_TIME_ZONES": "acme=Asia/Tokyo, b=America/New_York",
            "CRMQUEUE_REPORTS__STAGE_PROBABILITIES": "lead=0.2,deal=0.9",
        },
    )
    assert settings.reports.zone_for("acme") == "Asia/Tokyo"
    assert settings.reports.zone_for("other") == "UTC"
    assert settings.reports.probabilities() == {"lead": Decimal("0.2"), "deal": Decimal("0.9")}
    table = tmp_path / "reports.toml"
    table.write_text(
        '[reports.tenant_time_zones]\nacme = "Asia/Tokyo"\n'
        "[reports.stage_probabilities]\nlead = 0.2\ndeal = 0.9\n"
    )
    from_table = load_settings(config_file=table, environ={}).reports
    assert from_table.tenant_time_zones == ["acme=Asia/Tokyo"]
    assert from_table.probabilities() == {"lead": Decimal("0.2"), "deal": Decimal("0.9")}
    for key, value, reason in [
        ("TIME_ZONE", "Nowhere/Land", "reports.time_zone"),
        ("TENANT_TIME_ZONES", "acme", "reports.tenant_time_zones"),
        ("STAGE_PROBABILITIES", "lead=1.5", "reports.stage_probabilities"),
        ("MAX_RANGE_DAYS", "0", "reports.max_range_days"),
    ]:
        with pytest.raises(ConfigError, match=reason):
            load_settings(config_file=None, environ={f"CRMQUEUE_REPORTS__{key}": value})


def test_cli_repeated_filter_means_any_of_its_values() -> None:
    """Finding 11: `--filter status=won --filter status=lost` as JSON's list and exports."""
    import click

    from crmqueue.cli.report import _filters

    filters = _filters(("status=won", "status=lost", "owner=u1", "minAmount=10"))
    assert filters == {"status": ["won", "lost"], "owner": "u1", "minAmount": "10"}
    checked, errors = check_filters("sales", filters, ())
    assert errors == [] and checked.status == ("won", "lost")
    assert _filters(("owner=u1", "owner=u2", "owner=u3")) == {"owner": ["u1", "u2", "u3"]}
    with pytest.raises(click.BadParameter, match="minAmount takes one value"):
        _filters(("minAmount=1", "minAmount=2"))


def test_case_insensitive_names_and_clear_reasons() -> None:
    """Finding 13: type, format and dimensions in any case (stored lower case); the bad
    dimension named in its error; a start date with a time of day says so."""
    job = _valid(_report(reportType="Sales", format="PDF", dimensions=["Month", " OWNER "]))
    assert (job.report_type, job.format, job.dimensions) == ("sales", "pdf", ["month", "owner"])
    assert json.loads(payload_json(ReportPayload, job.model_dump())[1])["format"] == "pdf"
    errors = _errors(_report(dimensions=["moonth", "month", "Week", "owner", "owner"]))
    assert errors["dimensions.0"].startswith("'moonth': unknown dimension")
    assert errors["dimensions.2"] == "'week': a second period ('month' is given already)"
    assert errors["dimensions.4"] == "'owner': given twice"
    errors = _errors(_report(dateRange={"startDate": "2025-01-01T10:30:00",
                                        "endDate": "2025-12-31"}))  # fmt: skip
    assert errors == {
        "dateRange.startDate": "a calendar day (YYYY-MM-DD) without a time of day, got "
        "2025-01-01T10:30:00"
    } or errors == {
        "date_range.start_date": "a calendar day (YYYY-MM-DD) without a time of day, got "
        "2025-01-01T10:30:00"
    }
    midnight = _valid(_report(dateRange={"startDate": "2025-01-01T00:00:00",
                                         "endDate": "2025-12-31"}))  # fmt: skip
    assert midnight.date_range.start_date == date(2025, 1, 1)


@pytest.mark.parametrize("report_type", ["sales", "pipeline", "contact-growth", "activity"])
def test_list_filters_hold_at_most_1000_values(report_type: str) -> None:
    """Finding 2: 70,000 owners passed enqueue and broke PostgreSQL's 65,535-parameter
    limit (SQLite ran it). Every list filter of every report type is bounded alike."""
    from crmqueue.reports.options import FILTERS, MAX_FILTER_VALUES

    text_filters = [n for n in FILTERS[report_type] if n not in ("min_amount", "max_amount")]
    assert text_filters
    for name in text_filters:
        errors = _errors(_report(reportType=report_type, filters={name: ["x"] * 1001}))
        assert list(errors) == [f"filters.{name}"], errors
        assert "1001 values; at most 1000" in errors[f"filters.{name}"]
    many = [f"o{i}" for i in range(MAX_FILTER_VALUES)]
    free = "source" if report_type == "contact-growth" else "owner"
    assert _valid(_report(reportType=report_type, filters={free: many})).filters[free] == many


@pytest.mark.parametrize(
    ("date_range", "field"),
    [
        ({"startDate": 0, "endDate": 2592000}, "start_date"),  # read as epoch seconds
        ({"startDate": "2025-01-01", "endDate": "2592000"}, "end_date"),
        ({"startDate": "20250101", "endDate": "2025-12-31"}, "start_date"),
        ({"startDate": 1.5, "endDate": "2025-12-31"}, "start_date"),
        ({"startDate": True, "endDate": "2025-12-31"}, "start_date"),
    ],
)
def test_dates_are_iso_text_or_date_objects(date_range: dict[str, Any], field: str) -> None:
    """Finding 12: numbers were read as epoch seconds (0..2592000: January 1970)."""
    errors = _errors(_report(dateRange=date_range))
    assert f"date_range.{field}" in errors, errors
    assert all("a calendar day as text (YYYY-MM-DD)" in reason for reason in errors.values())
    job = _valid(_report(dateRange={"startDate": date(2025, 1, 1), "endDate": "2025-01-31"}))
    assert (job.date_range.start_date, job.date_range.end_date) == (
        date(2025, 1, 1), date(2025, 1, 31),
    )  # fmt: skip


@pytest.mark.parametrize("report_type", ["sales", "pipeline"])
@pytest.mark.parametrize("key", ["minAmount", "maxAmount", "min_amount"])
def test_amount_filters_are_plain_decimal_numbers(report_type: str, key: str) -> None:
    """Finding 12: "5_000", " 5 " and "1E2" were read as numbers."""
    for text in ("5_000", " 5 ", "1E2", "1e2", "+5", "5.", ".5", "٥", "NaN", "Infinity"):
        errors = _errors(_report(reportType=report_type, filters={key: text}))
        assert errors == {f"filters.{key}": "a number, such as 50000 or 1250.50"}, (text, errors)
    for given, read in (("5000", D("5000")), ("1250.50", D("1250.50")), (5000, D("5000")),
                        (12.5, D("12.5")), (D("7.25"), D("7.25"))):  # fmt: skip
        checked, errors = check_filters(report_type, {key: given}, ())
        assert errors == [] and read in (checked.min_amount, checked.max_amount), given
