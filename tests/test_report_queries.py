"""Every figure of every report type against a hand-computed expectation, on SQLite and
PostgreSQL (issue #13, "How it is tested"): a small fixture for tenant t1 in Asia/Tokyo
(UTC+9, east of UTC) over 2025-10-01..2025-12-31 by month, with a deal closed on the last
day of the range, a time stamp on each side of the range's local midnights, two currencies
and a deal without one, stages skipped, an empty November; tenant t2's rows must never
show. Then how stage changes are recorded (the store's update path and the import)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import crm_db
import pytest
import sqlalchemy as sa

from crmqueue.config import Settings
from crmqueue.crm import schema
from crmqueue.crm.store import create_engine, init_db, seed, update_lead
from crmqueue.errors import PermanentError
from crmqueue.payloads import ImportPayload, ReportPayload
from crmqueue.reports.model import ReportData, Table
from crmqueue.reports.queries import build_report, period_label, periods, utc_offsets
from crmqueue.reports.render import format_value
from crmqueue.workers.import_export import Importer

D = Decimal
TOKYO = "Asia/Tokyo"
GENERATED = dt.datetime(2025, 12, 15, tzinfo=dt.UTC)
CONTEXT = {
    "max_range_days": 3660,
    "contact_statuses": ["lead", "prospect", "customer"],
    "stages": ["prospecting", "qualification", "proposal", "negotiation"],
}
pg_url = crm_db.pg_url


def utc(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=dt.UTC)  # type: ignore[misc]


# --------------------------------------------------------------------------- fixture

USERS = [("u1", "Ann Lee"), ("u2", "Bob Ray")]
# name: (status, stage, currency, amount, owner, close_date, updated_at, contact, company)
LEADS: dict[str, tuple[Any, ...]] = {
    "L1": ("won", "negotiation", "EUR", D("1000.00"), "u1", dt.date(2025, 10, 15), None, "c3",
           "Acme GmbH"),
    "L2": ("won", "negotiation", "EUR", D("3000.50"), "u2", dt.date(2025, 12, 31), None, None,
           None),  # closed on the last day of the range
    "L3": ("won", "proposal", "USD", D("500.00"), "u1", dt.date(2025, 12, 5), None, None, None),
    "L4": ("lost", "proposal", "EUR", D("2000.00"), "u2", dt.date(2025, 10, 20), None, None,
           None),
    # no close date: its local updated_at day, 23:59 on Dec 31 in Tokyo (in) ...
    "L5": ("won", "negotiation", "EUR", D("700.00"), "u1", None, utc(2025, 12, 31, 14, 59),
           None, None),
    # ... and 00:00 on Jan 1 in Tokyo, still Dec 31 in UTC (out)
    "L6": ("won", "negotiation", "EUR", D("9999.00"), "u1", None, utc(2025, 12, 31, 15, 0),
           None, None),
    "L7": ("won", "negotiation", "EUR", D("800.00"), "u1", dt.date(2026, 1, 1), None, None,
           None),
    "L8": ("won", None, None, None, None, dt.date(2025, 10, 2), None, None, None),
    "L9": ("lost", "qualification", "USD", D("100.00"), "u1", dt.date(2025, 12, 6), None, None,
           None),
    "L10": ("open", "proposal", "EUR", D("5000.00"), "u2", dt.date(2025, 11, 30), None, None,
            None),
    "L11": ("open", "prospecting", "USD", D("2000.00"), "u1", None, None, None, None),
    "L12": ("open", "custom", "EUR", D("1000.00"), "u1", dt.date(2025, 12, 1), None, None, None),
    "L13": ("open", "qualification", "EUR", D("4000.00"), "u1", dt.date(2026, 3, 1), None, None,
            None),
}  # fmt: skip
# lead: [(from_stage, to_stage, from_status, to_status, changed_at)]
HISTORY: dict[str, list[tuple[Any, ...]]] = {
    "L1": [(None, "prospecting", None, "open", utc(2025, 10, 1)),
           ("prospecting", "qualification", "open", "open", utc(2025, 10, 3)),
           ("qualification", "negotiation", "open", "open", utc(2025, 10, 8)),  # skips proposal
           ("negotiation", "negotiation", "open", "won", utc(2025, 10, 15))],
    "L10": [(None, "prospecting", None, "open", utc(2025, 9, 1)),
            ("prospecting", "proposal", "open", "open", utc(2025, 11, 1))],  # skips qualification
    "L11": [(None, "prospecting", None, "open", utc(2025, 12, 10))],
    "L4": [(None, "qualification", None, "open", utc(2025, 8, 1)),
           ("qualification", "proposal", "open", "open", utc(2025, 9, 1)),
           ("proposal", "proposal", "open", "lost", utc(2025, 10, 20))],
    "L12": [(None, "custom", None, "open", utc(2025, 6, 1))],
    "L13": [(None, "prospecting", None, "open", utc(2025, 12, 31, 16))],  # Jan 1 in Tokyo
}  # fmt: skip
# name: (created_at, source, status)
CONTACTS: dict[str, tuple[Any, ...]] = {
    "c1": (utc(2025, 9, 30, 15, 0), "web", "lead"),  # Oct 1, 00:00 in Tokyo
    "c2": (utc(2025, 9, 30, 14, 59, 59), "web", "customer"),  # still Sep 30 in Tokyo
    "c3": (utc(2025, 10, 15), "referral", "customer"),
    "c4": (utc(2025, 12, 31, 14, 59, 59), None, "lead"),
    "c5": (utc(2025, 12, 31, 15, 0), "web", "lead"),  # Jan 1 in Tokyo
    "c6": (utc(2025, 1, 1), "event", "prospect"),
    "c7": (utc(2026, 1, 4, 15, 0), "web", "lead"),  # Monday Jan 5 in Tokyo: ISO week 2
}
# (type, owner, due_at, completed_at, created_at)
ACTIVITIES = [
    ("call", "u1", utc(2025, 10, 5), utc(2025, 10, 5), utc(2025, 9, 1)),
    ("call", "u2", utc(2025, 11, 10), None, utc(2025, 9, 1)),  # overdue
    ("email", "u1", utc(2025, 12, 20), None, utc(2025, 9, 1)),  # due after GENERATED: open
    ("meeting", "u1", None, None, utc(2025, 12, 1)),  # no due time: its creation counts
    ("task", "u2", utc(2025, 12, 31, 15, 30), None, utc(2025, 9, 1)),  # Jan 1 in Tokyo
    ("call", "u1", utc(2025, 9, 30, 15, 30), utc(2025, 10, 2), utc(2025, 9, 1)),  # Oct 1
]


def _fill(engine: Any) -> None:
    stamp = utc(2025, 1, 1)
    with engine.begin() as conn:
        for tenant in ("t1", "t2"):
            conn.execute(schema.users.insert(), [
                {"tenant_id": tenant, "user_id": u, "name": n, "email": f"{u}@example.com",
                 "created_at": stamp, "updated_at": stamp} for u, n in USERS
            ])  # fmt: skip
        company = conn.execute(
            schema.companies.insert().values(
                tenant_id="t1", name="Acme GmbH", created_at=stamp, updated_at=stamp
            )
        ).inserted_primary_key[0]
        contact_ids = {}
        for name, (created, source, status) in CONTACTS.items():
            contact_ids[name] = conn.execute(
                schema.contacts.insert().values(
                    tenant_id="t1", name=name, email=f"{name}@example.com", source=source,
                    status=status, created_at=created, updated_at=created,
                )
            ).inserted_primary_key[0]  # fmt: skip
        lead_ids = {}
        for name, (
            status,
            stage,
            cur,
            amount,
            owner,
            close,
            updated,
            contact,
            comp,
        ) in LEADS.items():
            lead_ids[name] = conn.execute(
                schema.leads.insert().values(
                    tenant_id="t1", title=f"Deal {name}", status=status, stage=stage,
                    currency=cur, amount=amount, owner=owner, close_date=close,
                    contact_id=contact_ids.get(contact), company_id=company if comp else None,
                    created_at=stamp, updated_at=updated or stamp,
                )
            ).inserted_primary_key[0]  # fmt: skip
        for name, rows in HISTORY.items():
            conn.execute(schema.lead_stage_history.insert(), [
                {"tenant_id": "t1", "lead_id": lead_ids[name], "from_stage": a, "to_stage": b,
                 "from_status": c, "to_status": d, "changed_at": at}
                for a, b, c, d, at in rows
            ])  # fmt: skip
        for kind, owner, due, done, created in ACTIVITIES:
            conn.execute(
                schema.activities.insert().values(
                    tenant_id="t1", type=kind, subject=kind, owner=owner, due_at=due,
                    completed_at=done, created_at=created, updated_at=created,
                )
            )  # fmt: skip
        # Tenant t2: big numbers in the same range, never in t1's reports.
        other = conn.execute(
            schema.leads.insert().values(
                tenant_id="t2", title="Other", status="won", stage="negotiation",
                currency="EUR", amount=D("50000.00"), owner="u1", close_date=dt.date(2025, 10, 10),
                created_at=stamp, updated_at=stamp,
            )
        ).inserted_primary_key[0]  # fmt: skip
        conn.execute(
            schema.lead_stage_history.insert().values(
                tenant_id="t2", lead_id=other, from_stage="prospecting", to_stage="negotiation",
                from_status="open", to_status="won", changed_at=utc(2025, 10, 5),
            )
        )  # fmt: skip
        conn.execute(
            schema.contacts.insert().values(
                tenant_id="t2",
                email="x@example.com",
                source="web",
                status="lead",
                created_at=utc(2025, 10, 5),
                updated_at=utc(2025, 10, 5),
            )
        )
        conn.execute(
            schema.activities.insert().values(
                tenant_id="t2",
                type="call",
                subject="x",
                owner="u1",
                due_at=utc(2025, 10, 5),
                created_at=stamp,
                updated_at=stamp,
            )
        )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The fixture data, once per database (the reports only read it)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('reports')}/crm.db"
        admin = name = None
    else:
        admin, user = crm_db._admin()
        name = f"crmqueue_test_{uuid.uuid4().hex[:12]}"
        admin.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql://{user}@{crm_db.PG_HOST}/{name}"
    created = create_engine(url)
    try:
        init_db(created)
        _fill(created)
        yield created
    finally:
        created.dispose()
        if admin is not None:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()


def report(
    engine: Any,
    report_type: str,
    start: str = "2025-10-01",
    end: str = "2025-12-31",
    settings: Settings | None = None,
    **fields: Any,
) -> ReportData:
    data = {
        "tenantId": "t1", "userId": "u1", "reportType": report_type, "format": "html",
        "dateRange": {"startDate": start, "endDate": end}, "timeZone": TOKYO, **fields,
    }  # fmt: skip
    payload = ReportPayload.model_validate(data, context=CONTEXT)
    return build_report(settings or Settings(), payload, engine=engine, generated_at=GENERATED)


def figures(data: ReportData) -> list[tuple[str, Any, str | None]]:
    return [(f.key, f.value, f.currency) for f in data.figures]


def table(data: ReportData, key: str) -> Table:
    (found,) = [t for t in data.tables if t.key == key]
    return found


def rows(data: ReportData, key: str) -> list[tuple[Any, ...]]:
    return list(table(data, key).rows)


def chart(data: ReportData, key: str) -> tuple[tuple[str, ...], dict[str, tuple[Any, ...]]]:
    (found,) = [c for c in data.charts if c.key == key]
    return found.categories, {s.name: s.values for s in found.series}


ZERO = D("0.00")


# --------------------------------------------------------------------------- sales


def test_sales_figures(engine: Any) -> None:
    data = report(engine, "sales")
    assert (data.title, data.time_zone, data.start, data.end) == (
        "Sales report",
        TOKYO,
        dt.date(2025, 10, 1),
        dt.date(2025, 12, 31),
    )
    # finding 10: the owner breakdown every sales report has is listed too
    assert data.dimensions == ("month", "owner")
    assert not data.empty
    # Closed in range: L1 L2 L3 L5 L8 won, L4 L9 lost (L6 closes Jan 1 in Tokyo, L7 later).
    assert figures(data) == [
        ("won_revenue", D("4700.50"), "EUR"),  # L1 1000 + L2 3000.50 + L5 700
        ("won_revenue", D("500.00"), "USD"),
        ("won_revenue", ZERO, "XXX"),  # L8: no currency, no amount
        ("won_deals", 5, None),
        ("average_deal", D("1566.83"), "EUR"),  # 4700.50 / 3
        ("average_deal", D("500.00"), "USD"),
        ("average_deal", None, "XXX"),
        ("win_rate", D(5) / D(7), None),  # not rounded: 0.714285…
    ]
    assert rows(data, "revenue_by_period") == [
        ("2025-10", "EUR", D("1000.00"), 1, D("1000.00"), D("0.5")),  # L1 won, L4 lost
        ("2025-10", "XXX", ZERO, 1, None, D("1")),
        # no row for a period or currency without closed deals (the empty November)
        ("2025-12", "EUR", D("3700.50"), 2, D("1850.25"), D("1")),  # L2 and L5
        ("2025-12", "USD", D("500.00"), 1, D("500.00"), D("0.5")),  # L3 won, L9 lost
    ]
    assert rows(data, "revenue_by_owner") == [
        ("Bob Ray", "EUR", D("3000.50"), 1, D("3000.50"), D("0.5")),
        ("Ann Lee", "EUR", D("1700.00"), 2, D("850.00"), D("1")),
        ("Ann Lee", "USD", D("500.00"), 1, D("500.00"), D("0.5")),
        ("(none)", "XXX", ZERO, 1, None, D("1")),
    ]
    assert rows(data, "top_deals") == [
        (1, "Deal L2", "Bob Ray", dt.date(2025, 12, 31), "EUR", D("3000.50")),
        (2, "Deal L1", "Ann Lee", dt.date(2025, 10, 15), "EUR", D("1000.00")),
        (3, "Deal L5", "Ann Lee", dt.date(2025, 12, 31), "EUR", D("700.00")),
        (1, "Deal L3", "Ann Lee", dt.date(2025, 12, 5), "USD", D("500.00")),
    ]
    categories, series = chart(data, "revenue_by_period")
    assert categories == ("2025-10", "2025-11", "2025-12")
    assert series == {"EUR": (D("1000.00"), ZERO, D("3700.50")),
                      "USD": (ZERO, ZERO, D("500.00")), "XXX": (ZERO, ZERO, ZERO)}  # fmt: skip
    categories, series = chart(data, "revenue_by_owner")
    assert categories == ("Bob Ray", "Ann Lee", "(none)")
    assert series["EUR"] == (D("3000.50"), D("1700.00"), ZERO)
    assert all(isinstance(v, Decimal) for s in series.values() for v in s)


def test_sales_in_utc_moves_the_midnight_deals(engine: Any) -> None:
    # In UTC, L6 (Dec 31 15:00 UTC) closes in range: the zone is what decides.
    data = report(engine, "sales", timeZone="UTC")
    assert ("won_revenue", D("14699.50"), "EUR") in figures(data)


def test_sales_original_filters_and_tenant_isolation(engine: Any) -> None:
    # The original's call: t1 has no won deal of 50,000 or more (t2's is not seen).
    data = report(engine, "sales", filters={"status": "closed-won", "minAmount": 50000})
    assert data.empty
    assert data.filters == {"status": "closed-won", "minAmount": "50000"}
    assert figures(data) == [("won_deals", 0, None), ("win_rate", None, None)]
    assert rows(data, "top_deals") == []
    assert {r[2] for r in rows(data, "revenue_by_period")} == set()  # no currency at all
    data = report(engine, "sales", filters={"status": "closed-won", "minAmount": 1000})
    assert figures(data) == [
        ("won_revenue", D("4000.50"), "EUR"), ("won_deals", 2, None),
        ("average_deal", D("2000.25"), "EUR"), ("win_rate", None, None),  # filtered by status
    ]  # fmt: skip
    data = report(engine, "sales", filters={"currency": "usd", "maxAmount": "500"})
    assert figures(data) == [
        ("won_revenue", D("500.00"), "USD"), ("won_deals", 1, None),
        ("average_deal", D("500.00"), "USD"), ("win_rate", D("0.5"), None),
    ]  # fmt: skip
    data = report(engine, "sales", filters={"owner": ["u2"], "stage": "proposal"})
    assert figures(data) == [  # L4, lost
        ("won_revenue", ZERO, "EUR"), ("won_deals", 0, None), ("average_deal", None, "EUR"),
        ("win_rate", D("0"), None),
    ]  # fmt: skip
    assert not data.empty


def test_rates_are_not_meaningful_under_a_status_filter(engine: Any) -> None:
    """Finding 5: a status filter that keeps only some outcomes filters the rate's
    denominator too (closed-won gave 100 %): the rate is left out and says why."""
    from crmqueue.reports.render import render_html

    won = report(engine, "sales", filters={"status": "closed-won"})
    (rate,) = [f for f in won.figures if f.key == "win_rate"]
    assert rate.value is None and "not meaningful" in rate.label
    # Oct EUR (L1), Oct XXX (L8), Dec EUR (L2, L5), Dec USD (L3)
    assert [r[5] for r in rows(won, "revenue_by_period")] == [None] * 4
    assert [r[5] for r in rows(won, "revenue_by_owner")] == [None] * 4
    assert "n/a: status filter" in table(won, "revenue_by_owner").columns[5].title
    html = render_html(won).decode()
    assert "100.0 %" not in html and "not meaningful" in html
    # Both outcomes kept: the rate means something (5 of 7 closed deals won).
    closed = report(engine, "sales", filters={"status": ["won", "lost"]})
    assert ("win_rate", D(5) / D(7), None) in figures(closed)
    assert report(engine, "sales", filters={"status": "closed"}).figures[-1].value == D(5) / D(7)
    done = report(engine, "activity", filters={"status": "completed"})
    assert figures(done)[:3] == [("activities", 2, None), ("completed", 2, None),
                                 ("completion_rate", None, None)]  # fmt: skip
    assert {r[4] for r in rows(done, "activities_by_type")} == {None}
    every = report(engine, "activity", filters={"status": ["completed", "open", "overdue"]})
    assert figures(every)[2] == ("completion_rate", D("0.4"), None)  # 2 of 5
    open_only = report(engine, "pipeline", filters={"status": "open"})
    assert {r[4] for r in rows(open_only, "stage_conversion")} == {None}
    everything = report(engine, "pipeline", filters={"status": ["open", "closed"]})
    assert [r[4] for r in rows(everything, "stage_conversion")] == [
        D("0.75"),
        D("1"),
        D(1) / D(3),
        D("1"),
    ]  # fmt: skip  (as without filters)


def test_sales_dimensions_through_contacts_and_companies(engine: Any) -> None:
    data = report(engine, "sales", filters={"owner": "u1", "currency": "EUR"},
                  dimensions=["quarter", "source", "company", "stage", "status"])  # fmt: skip
    assert data.dimensions == ("quarter", "owner", "source", "company", "stage", "status")
    for kind, expected in [
        ("pipeline", ("month", "stage")),
        ("contact-growth", ("month", "source", "status")),
        ("activity", ("month", "owner")),
    ]:
        assert report(engine, kind).dimensions == expected
    assert rows(data, "revenue_by_period") == [
        ("2025-Q4", "EUR", D("1700.00"), 2, D("850.00"), D("1")),  # L1, L5
    ]
    assert rows(data, "revenue_by_source") == [
        ("referral", "EUR", D("1000.00"), 1, D("1000.00"), D("1")),  # L1's contact c3
        ("(none)", "EUR", D("700.00"), 1, D("700.00"), D("1")),
    ]
    assert rows(data, "revenue_by_company") == [
        ("Acme GmbH", "EUR", D("1000.00"), 1, D("1000.00"), D("1")),
        ("(none)", "EUR", D("700.00"), 1, D("700.00"), D("1")),
    ]
    assert rows(data, "revenue_by_stage") == [
        ("negotiation", "EUR", D("1700.00"), 2, D("850.00"), D("1")),
    ]
    assert rows(data, "revenue_by_status") == [
        ("won", "EUR", D("1700.00"), 2, D("850.00"), D("1")),
    ]
    only_web = report(engine, "sales", filters={"source": "referral"})
    assert figures(only_web)[0] == ("won_revenue", D("1000.00"), "EUR")


# --------------------------------------------------------------------------- pipeline


def test_pipeline_figures(engine: Any) -> None:
    data = report(engine, "pipeline", dimensions=["owner"])
    assert not data.empty
    # Open, closing in range or without a close date: L10, L11, L12 (L13 closes in March).
    assert figures(data) == [
        ("open_deals", 3, None),
        ("open_value", D("6000.00"), "EUR"),
        ("weighted_value", D("2500.00"), "EUR"),  # 5000 x 0.5 + 1000 x 0 (unlisted stage)
        ("open_value", D("2000.00"), "USD"),
        ("weighted_value", D("200.00"), "USD"),  # 2000 x 0.1
        ("deals_moved", 3, None),  # L1, L4 in October, L10 in November
    ]
    assert rows(data, "pipeline_by_stage") == [
        ("prospecting", "USD", 1, D("2000.00"), D("0.1"), D("200.00")),
        ("proposal", "EUR", 1, D("5000.00"), D("0.5"), D("2500.00")),
        ("custom", "EUR", 1, D("1000.00"), D("0"), ZERO),
    ]
    assert rows(data, "pipeline_by_owner") == [
        ("Bob Ray", "EUR", 1, D("5000.00"), D("2500.00")),
        ("Ann Lee", "USD", 1, D("2000.00"), D("200.00")),
        ("Ann Lee", "EUR", 1, D("1000.00"), ZERO),
    ]
    # Active in range: L1 (won), L10 (proposal, qualification skipped), L11 (prospecting),
    # L4 (proposal, then lost); L12 had no change in range, L13's came on Jan 1 in Tokyo.
    assert rows(data, "stage_conversion") == [
        ("prospecting", "qualification", 4, 3, D("0.75")),
        ("qualification", "proposal", 3, 3, D("1")),
        ("proposal", "negotiation", 3, 1, D(1) / D(3)),
        ("negotiation", "won", 1, 1, D("1")),
    ]
    assert chart(data, "stage_funnel") == (
        ("prospecting", "qualification", "proposal", "negotiation", "won"),
        {"Deals": (4, 3, 3, 1, 1)},
    )
    # Open spells that ended in range: L1 2, 5 and 7 days, L10 61 days in prospecting,
    # L4 49 days in proposal (its qualification spell ended in September).
    assert rows(data, "days_in_stage") == [
        ("prospecting", 2, D("31.5")),
        ("qualification", 1, D("5.0")),
        ("proposal", 1, D("49.0")),
        ("negotiation", 1, D("7.0")),
    ]
    assert rows(data, "moved_by_period") == [("2025-10", 2), ("2025-11", 1)]
    assert chart(data, "pipeline_by_stage") == (
        ("prospecting", "proposal", "custom"),
        {"EUR": (ZERO, D("5000.00"), D("1000.00")), "USD": (D("2000.00"), ZERO, ZERO)},
    )


def test_pipeline_as_it_stood_at_the_end_of_the_range(engine: Any) -> None:
    """Finding 4: the open pipeline is the deals open at the end of the range, in the stage
    they were in then (from the stage history), whatever their close date."""
    october = report(engine, "pipeline", end="2025-10-31")
    # End of Oct 31 in Tokyo: L10 open in prospecting since Sep 1 (closes Nov 30), L12 open
    # in custom since June (closes Dec 1); L1 won and L4 lost in October; L11 and L13 not
    # created yet (their history starts later).
    assert figures(october)[:3] == [
        ("open_deals", 2, None),
        ("open_value", D("6000.00"), "EUR"),
        ("weighted_value", D("500.00"), "EUR"),  # 5000 x 0.1 + 1000 x 0
    ]
    assert rows(october, "pipeline_by_stage") == [
        ("prospecting", "EUR", 1, D("5000.00"), D("0.1"), D("500.00")),
        ("custom", "EUR", 1, D("1000.00"), D("0"), ZERO),
    ]
    assert table(october, "pipeline_by_stage").title == (
        "Open pipeline at the end of 2025-10-31 by stage"
    )
    # Mid-September: L4 (lost since) was open in proposal, L10 in prospecting, L12 custom.
    september = report(engine, "pipeline", start="2025-09-01", end="2025-09-15")
    assert rows(september, "pipeline_by_stage") == [
        ("prospecting", "EUR", 1, D("5000.00"), D("0.1"), D("500.00")),
        ("proposal", "EUR", 1, D("2000.00"), D("0.5"), D("1000.00")),
        ("custom", "EUR", 1, D("1000.00"), D("0"), ZERO),
    ]
    # A stage filter reads the stage at the end too: L4 was in proposal then.
    proposal = report(engine, "pipeline", start="2025-09-01", end="2025-09-15",
                      filters={"stage": "proposal"})  # fmt: skip
    assert figures(proposal)[:2] == [("open_deals", 1, None), ("open_value", D("2000.00"), "EUR")]
    # The moves: the headline counts each deal once, the table once per month it moved in.
    year = report(engine, "pipeline", start="2025-01-01", end="2025-12-31")
    assert ("deals_moved", 3, None) in figures(year)  # L1, L4, L10
    # L4 moved in September and October: 4 in the table, 3 deals
    assert rows(year, "moved_by_period") == [("2025-09", 1), ("2025-10", 2), ("2025-11", 1)]
    assert "counts in each" in table(year, "moved_by_period").title


def test_pipeline_filters_and_an_empty_period(engine: Any) -> None:
    data = report(engine, "pipeline", filters={"owner": "u2"})
    # L10 open; history of L4 (lost) and L10.
    assert figures(data) == [
        ("open_deals", 1, None),
        ("open_value", D("5000.00"), "EUR"),
        ("weighted_value", D("2500.00"), "EUR"),
        ("deals_moved", 2, None),
    ]
    assert [r[2:] for r in rows(data, "stage_conversion")] == [
        (2, 2, D("1")), (2, 2, D("1")), (2, 0, D("0")), (0, 0, None),
    ]  # fmt: skip
    quiet = report(engine, "pipeline", start="2024-01-01", end="2024-03-31")
    assert rows(quiet, "moved_by_period") == []
    assert chart(quiet, "moved_by_period")[1] == {"Deals moved": (0, 0, 0)}
    assert [r[2:4] for r in rows(quiet, "stage_conversion")] == [(0, 0)] * 4
    assert rows(quiet, "days_in_stage") == []
    # No deal was open at the end of March 2024 (every history starts later; the leads
    # without history are closed).
    assert figures(quiet)[0] == ("open_deals", 0, None) and quiet.empty
    nothing = report(engine, "pipeline", start="2024-01-01", end="2024-03-31",
                     filters={"currency": "GBP"})  # fmt: skip
    assert nothing.empty
    assert figures(nothing) == [("open_deals", 0, None), ("deals_moved", 0, None)]


# --------------------------------------------------------------------------- contacts


def test_contact_growth_figures(engine: Any) -> None:
    data = report(engine, "contact-growth")
    # Before Oct 1 (Tokyo): c6, c2. October: c1 (00:00 in Tokyo) and c3; December: c4.
    assert figures(data) == [
        ("new_contacts", 3, None),
        ("total_contacts", 5, None),
        ("growth_rate", D("1.5"), None),
    ]
    assert rows(data, "growth_by_period") == [
        ("2025-10", 2, 4, D("1")),
        ("2025-12", 1, 5, D("0.25")),
    ]
    third = D(1) / D(3)
    assert rows(data, "new_by_source") == [("(none)", 1, third), ("referral", 1, third),
                                           ("web", 1, third)]  # fmt: skip
    assert rows(data, "new_by_status") == [("lead", 2, D(2) / D(3)), ("customer", 1, third)]
    assert chart(data, "growth_curve") == (("2025-10", "2025-11", "2025-12"),
                                           {"Total contacts": (4, 4, 5)})  # fmt: skip
    assert chart(data, "new_by_source") == (
        ("2025-10", "2025-11", "2025-12"),
        {"(none)": (0, 0, 1), "referral": (1, 0, 0), "web": (1, 0, 0)},
    )
    renamed = Settings.model_validate({"crm": {"contact_statuses": ["Lead", "Client"]}})
    with pytest.raises(PermanentError, match=r"filters\.status: 'customer': not a status"):
        report(engine, "contact-growth", settings=renamed, filters={"status": "customer"})
    leads_only = report(engine, "contact-growth", filters={"status": "LEAD"})
    assert figures(leads_only) == [("new_contacts", 2, None), ("total_contacts", 2, None),
                                   ("growth_rate", None, None)]  # fmt: skip
    assert [r[3] for r in rows(leads_only, "growth_by_period")] == [None, D("1")]


@pytest.mark.parametrize(
    ("period", "start", "end", "expected"),
    [
        # Mon 2025-12-29 starts ISO week 2026-W01; c7 is Monday Jan 5 in Tokyo (Sunday UTC).
        ("week", "2025-12-29", "2026-01-11", [("2026-W01", 2), ("2026-W02", 1)]),
        ("quarter", "2025-01-01", "2025-12-31",
         [("2025-Q1", 1), ("2025-Q3", 1), ("2025-Q4", 3)]),
        ("year", "2025-01-01", "2026-12-31", [("2025", 5), ("2026", 2)]),
        ("day", "2025-09-30", "2025-10-01", [("2025-09-30", 1), ("2025-10-01", 1)]),
    ],
)  # fmt: skip
def test_periods_are_cut_in_the_tenant_zone(
    engine: Any, period: str, start: str, end: str, expected: list[tuple[str, int]]
) -> None:
    data = report(engine, "contact-growth", start=start, end=end, dimensions=[period])
    assert [r[:2] for r in rows(data, "growth_by_period")] == expected


def test_time_zone_from_settings_and_dst(engine: Any) -> None:
    settings = Settings.model_validate({"reports": {"tenant_time_zones": [f"t1={TOKYO}"]}})
    data = report(engine, "contact-growth", settings=settings, timeZone=None)
    assert data.time_zone == TOKYO and figures(data)[0] == ("new_contacts", 3, None)
    # Europe/Berlin's offsets over 2025: +1, +2 from Mar 30 01:00 UTC, +1 from Oct 26 01:00.
    berlin = __import__("zoneinfo").ZoneInfo("Europe/Berlin")
    segments = utc_offsets(berlin, utc(2025, 1, 1), utc(2026, 1, 1))
    assert [(until, int(offset.total_seconds()) // 3600) for until, offset in segments] == [
        (utc(2025, 3, 30, 1), 1), (utc(2025, 10, 26, 1), 2), (utc(2026, 1, 2), 1),
    ]  # fmt: skip
    # c2 (Sep 30 14:59:59 UTC) is 16:59 in Berlin on summer time, c1 17:00.
    data = report(engine, "contact-growth", start="2025-09-30", end="2025-09-30",
                  dimensions=["day"], timeZone="Europe/Berlin")  # fmt: skip
    assert rows(data, "growth_by_period") == [("2025-09-30", 2, 3, D("2"))]


# --------------------------------------------------------------------------- activities


def test_activity_figures(engine: Any) -> None:
    data = report(engine, "activity", dimensions=["status"])
    # In range (Tokyo): calls of Oct 5, Oct 1 (00:30), Nov 10; email Dec 20; meeting created
    # Dec 1; the task falls on Jan 1 in Tokyo. Judged at GENERATED (Dec 15).
    assert figures(data) == [
        ("activities", 5, None),
        ("completed", 2, None),
        ("completion_rate", D("0.4"), None),
        ("overdue", 1, None),
    ]
    assert rows(data, "activities_by_type") == [
        ("call", 3, 2, 1, D(2) / D(3)),
        ("email", 1, 0, 0, D("0")),
        ("meeting", 1, 0, 0, D("0")),
    ]
    assert rows(data, "activities_by_owner") == [
        ("Ann Lee", 4, 2, 0, D("0.5")),
        ("Bob Ray", 1, 0, 1, D("0")),
    ]
    assert rows(data, "activities_by_period") == [
        ("2025-10", 2, 2, 0, D("1")),
        ("2025-11", 1, 0, 1, D("0")),
        ("2025-12", 2, 0, 0, D("0")),
    ]
    assert rows(data, "activities_by_status") == [
        ("completed", 2, 2, 0, D("1")),
        ("open", 2, 0, 0, D("0")),
        ("overdue", 1, 0, 1, D("0")),
    ]
    assert chart(data, "activities_by_type") == (("call", "email", "meeting"),
                                                 {"Activities": (3, 1, 1)})  # fmt: skip
    assert chart(data, "activities_by_period")[1] == {
        "call": (2, 1, 0), "email": (0, 0, 1), "meeting": (0, 0, 1),
    }  # fmt: skip
    overdue = report(engine, "activity", filters={"status": "overdue"})
    assert figures(overdue)[0] == ("activities", 1, None)
    bob = report(engine, "activity", filters={"owner": "u2"})
    assert figures(bob)[0] == ("activities", 1, None)  # the Jan 1 task is out of range
    empty = report(engine, "activity", start="2024-01-01", end="2024-01-31")
    assert empty.empty and figures(empty)[2] == ("completion_rate", None, None)


def test_filters_owner_by_name_and_nothing_matching(engine: Any) -> None:
    """Finding 3: an owner is filtered by id or by the name the reports print; a report
    whose filters match nothing says so instead of blaming the period."""
    from crmqueue.reports.model import NO_DATA, NO_MATCH, empty_message

    by_id = report(engine, "sales", filters={"owner": "u2"})
    by_name = report(engine, "sales", filters={"owner": "bob ray"})
    # u2 closed L2 (won, 3000.50 EUR) and L4 (lost): 1 of 2
    expected = [("won_revenue", D("3000.50"), "EUR"), ("won_deals", 1, None),
                ("average_deal", D("3000.50"), "EUR"), ("win_rate", D("0.5"), None)]  # fmt: skip
    assert figures(by_id) == figures(by_name) == expected
    both = report(engine, "sales", filters={"owner": ["Ann Lee", "u2"]})
    # all but L8, which has no owner: won L1 L2 L3 L5, lost L4 L9
    assert ("won_deals", 4, None) in figures(both)
    assert ("win_rate", D(4) / D(6), None) in figures(both)
    activity = report(engine, "activity", filters={"owner": "Bob Ray"})
    assert figures(activity)[:2] == [("activities", 1, None), ("completed", 0, None)]
    pipeline = report(engine, "pipeline", filters={"owner": "BOB RAY"})
    assert figures(pipeline)[:2] == [("open_deals", 1, None), ("open_value", D("5000.00"), "EUR")]
    nobody = report(engine, "sales", filters={"owner": "Nobody Here"})
    assert nobody.empty and empty_message(nobody) == NO_MATCH
    for kind, filters in [
        ("sales", {"currency": "XYZ"}),
        ("sales", {"stage": "Qualification", "status": "won"}),
        ("pipeline", {"owner": "nobody"}),
        ("contact-growth", {"source": "fax"}),
        ("activity", {"owner": "nobody"}),
    ]:
        data = report(engine, kind, filters=filters)
        assert data.empty and empty_message(data) == NO_MATCH, (kind, filters)
    quiet = report(engine, "sales", start="2024-01-01", end="2024-01-31")
    assert quiet.empty and empty_message(quiet) == NO_DATA
    staged = report(engine, "sales", filters={"stage": "PROPOSAL"})  # stored as configured
    assert figures(staged)[-1] == ("win_rate", D("0.5"), None)  # L3 won, L4 lost


def test_tables_leave_out_empty_periods_the_charts_keep_them(engine: Any, tmp_path: Path) -> None:
    """Finding 2: by day over a year, the tables hold only the days with data (the PDF's
    row cap no longer cuts every row with a deal); the charts keep every day."""
    from pypdf import PdfReader

    from crmqueue.reports.render import render_pdf

    year = {"start": "2025-01-01", "end": "2025-12-31", "dimensions": ["day"]}
    sales = report(engine, "sales", **year)
    assert rows(sales, "revenue_by_period") == [
        ("2025-10-02", "XXX", ZERO, 1, None, D("1")),  # L8
        ("2025-10-15", "EUR", D("1000.00"), 1, D("1000.00"), D("1")),  # L1
        ("2025-10-20", "EUR", ZERO, 0, None, D("0")),  # L4 lost
        ("2025-12-05", "USD", D("500.00"), 1, D("500.00"), D("1")),  # L3
        ("2025-12-06", "USD", ZERO, 0, None, D("0")),  # L9 lost
        ("2025-12-31", "EUR", D("3700.50"), 2, D("1850.25"), D("1")),  # L2, L5
    ]
    categories, series = chart(sales, "revenue_by_period")
    assert len(categories) == 365 and len(series["EUR"]) == 365
    assert sum(series["EUR"]) == D("4700.50")
    render_pdf(sales, tmp_path / "s.pdf")
    text = "".join(p.extract_text() for p in PdfReader(tmp_path / "s.pdf").pages)
    assert "2025-12-31" in text and "3,700.50" in text and "more rows" not in text
    assert rows(report(engine, "pipeline", **year), "moved_by_period") == [
        ("2025-09-01", 1),
        ("2025-10-03", 1),
        ("2025-10-08", 1),
        ("2025-10-15", 1),
        ("2025-10-20", 1),
        ("2025-11-01", 1),
    ]  # fmt: skip  (a deal's first entry, its creation, is no move)
    activity = report(engine, "activity", **year)
    assert [r[:2] for r in rows(activity, "activities_by_period")] == [
        ("2025-10-01", 1), ("2025-10-05", 1), ("2025-11-10", 1), ("2025-12-01", 1),
        ("2025-12-20", 1),
    ]  # fmt: skip
    growth = report(engine, "contact-growth", **year)
    assert [r[:3] for r in rows(growth, "growth_by_period")] == [
        ("2025-01-01", 1, 1), ("2025-09-30", 1, 2), ("2025-10-01", 1, 3), ("2025-10-15", 1, 4),
        ("2025-12-31", 1, 5),
    ]  # fmt: skip
    assert len(chart(growth, "growth_curve")[0]) == 365


def test_percentages_rounded_once_and_alike_in_every_format(engine: Any, tmp_path: Path) -> None:
    """Finding 1: a ratio is kept exact and rounded once (half away from zero, as Excel's
    0.0% does) for display; HTML, PDF, XLSX, the job's result and the CLI agree."""
    from openpyxl import load_workbook
    from pypdf import PdfReader

    from crmqueue.cli.report import _shown
    from crmqueue.reports.render import render_html, render_pdf, render_xlsx
    from crmqueue.workers.report import headline

    data = report(engine, "activity")  # completion 2 / 5; calls 2 / 3
    sales = report(engine, "sales")  # win rate 5 / 7 = 71.428…
    assert rows(data, "activities_by_type")[0][4] == D(2) / D(3)  # not 0.6667
    assert ("win_rate", D(5) / D(7), None) in figures(sales)
    html = render_html(sales).decode()
    assert "71.4 %" in html and "71.43" not in html
    html = render_html(data).decode()
    assert "66.7 %" in html and "40.0 %" in html
    render_pdf(sales, tmp_path / "s.pdf")
    assert "71.4 %" in "".join(p.extract_text() for p in PdfReader(tmp_path / "s.pdf").pages)
    render_xlsx(sales, tmp_path / "s.xlsx")
    summary = load_workbook(tmp_path / "s.xlsx")["Summary"]
    (rate,) = [r[1] for r in summary.iter_rows() if str(r[0].value).startswith("Win rate")]
    assert rate.value == pytest.approx(5 / 7, abs=1e-15) and rate.number_format == "0.0%"
    result = {f["key"]: f for f in headline(sales)}["win_rate"]
    assert D(result["value"]) == D(5) / D(7)
    assert _shown(result["value"], "percent") == "71.4 %"
    # The ties that double rounding or half-even got wrong: 6/11 (0.5455 -> 54.6 %) and
    # 1/16 (6.2 % in HTML, 6.3 % in Excel).
    assert format_value(D(6) / D(11), "percent") == "54.5 %"
    assert format_value(D(1) / D(16), "percent") == "6.3 %"
    assert _shown(str(D(1) / D(16)), "percent") == "6.3 %"
    assert (
        headline(report(engine, "activity", start="2025-10-01", end="2025-10-31"))[2]["value"]
        == "1"
    )  # 2 of 2, not "1.0000"


def test_periods_and_labels() -> None:
    assert [period_label("week", d) for d in periods("week", dt.date(2024, 12, 30),
                                                     dt.date(2025, 1, 12))] == [
        "2025-W01", "2025-W02"]  # fmt: skip
    assert periods("quarter", dt.date(2025, 2, 10), dt.date(2025, 7, 1)) == [
        dt.date(2025, 1, 1), dt.date(2025, 4, 1), dt.date(2025, 7, 1)]  # fmt: skip
    assert period_label("quarter", dt.date(2025, 10, 1)) == "2025-Q4"
    assert len(periods("day", dt.date(2024, 1, 1), dt.date(2024, 12, 31))) == 366


# --------------------------------------------------------------------------- recording


def _history(engine: Any, lead_id: int) -> list[tuple[Any, ...]]:
    h = schema.lead_stage_history.c
    with engine.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                sa.select(h.tenant_id, h.from_stage, h.to_stage, h.from_status, h.to_status)
                .where(h.lead_id == lead_id)
                .order_by(h.id)
            )
        ]


def test_store_update_records_stage_changes(crm_engine: Any) -> None:
    stamp = utc(2025, 1, 1)
    with crm_engine.begin() as conn:
        lead = conn.execute(
            schema.leads.insert().values(
                tenant_id="t1", title="D", status="open", stage="prospecting",
                created_at=stamp, updated_at=stamp,
            )
        ).inserted_primary_key[0]  # fmt: skip
    with crm_engine.begin() as conn:
        assert update_lead(conn, "t1", lead, {"stage": "qualification", "amount": D("5")}) == 1
        assert update_lead(conn, "t1", lead, {"stage": "qualification", "title": "E"}) == 1
        assert update_lead(conn, "t1", lead, {"status": "won", "stage": None}) == 1
        assert update_lead(conn, "t2", lead, {"stage": "proposal"}) == 0  # not t2's lead
    assert _history(crm_engine, lead) == [
        ("t1", "prospecting", "qualification", "open", "open"),
        ("t1", "qualification", "qualification", "open", "won"),
    ]


def test_import_records_new_leads_and_stage_changes(crm_engine: Any, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text(
        "external_id,title,stage,status\nX1,One,prospecting,open\nX2,Two,proposal,open\n"
    )
    (tmp_path / "b.csv").write_text(
        "external_id,title,stage,status\nX1,One,negotiation,open\nX2,Two,proposal,open\n"
        "X3,Three,qualification,lost\n"
    )

    def run(name: str) -> None:
        payload = ImportPayload.model_validate(
            {"tenant_id": "t1", "user_id": "u1", "file_url": name, "file_type": "csv",
             "entity_type": "leads", "on_duplicate": "update"},
            context={"files_dir": tmp_path},
        )  # fmt: skip
        Importer(payload, crm_engine, tmp_path, None, lambda _p: None).run()

    run("a.csv")
    run("b.csv")
    with crm_engine.connect() as conn:
        ids = dict(conn.execute(sa.select(schema.leads.c.external_id, schema.leads.c.id)).all())
    assert _history(crm_engine, ids["X1"]) == [
        ("t1", None, "prospecting", None, "open"),
        ("t1", "prospecting", "negotiation", "open", "open"),
    ]
    assert _history(crm_engine, ids["X2"]) == [("t1", None, "proposal", None, "open")]
    assert _history(crm_engine, ids["X3"]) == [("t1", None, "qualification", None, "lost")]


crm_url = crm_db.crm_url
crm_engine = crm_db.crm_engine


# --------------------------------------------------------------------------- seed


def test_seed_gives_every_report_a_history(crm_engine: Any) -> None:
    """Issue #13 item 5: 24 months of contacts, deals and activities that grow, with stage
    history, won and lost deals in two currencies or more, several owners."""
    counts = seed(crm_engine, "t1", 1000)
    assert counts["leads"] == 200 and counts["activities"] == 200
    today = dt.datetime.now(dt.UTC).date()
    first = today.replace(day=1)
    for _ in range(23):
        first = (first - dt.timedelta(days=1)).replace(day=1)
    span = {"start": first.isoformat(), "end": today.isoformat(), "timeZone": "UTC"}
    settings = Settings()

    def run(kind: str, **fields: Any) -> ReportData:
        data = {"tenantId": "t1", "userId": "u1", "reportType": kind, "format": "html",
                "dateRange": {"startDate": span["start"], "endDate": span["end"]},
                "timeZone": "UTC", **fields}  # fmt: skip
        payload = ReportPayload.model_validate(data, context=CONTEXT)
        return build_report(settings, payload, engine=crm_engine)

    growth = run("contact-growth")
    new = [r[1] for r in rows(growth, "growth_by_period")]
    assert len(new) == 24 and sum(new) == 1000 and min(new[:-1]) > 0
    assert sum(new[12:]) > 1.3 * sum(new[:12])  # growth
    sales = run("sales")
    won = [r for r in rows(sales, "revenue_by_period") if r[3]]
    assert len({r[0] for r in won}) >= 18 and len({r[1] for r in won}) >= 2
    win_rate = dict((k, v) for k, v, _ in figures(sales))["win_rate"]
    assert D("0.1") < win_rate < D("0.5")
    assert len({r[0] for r in rows(sales, "revenue_by_owner")}) == 5
    pipeline = run("pipeline")
    reached = [r[2] for r in rows(pipeline, "stage_conversion")] + [
        rows(pipeline, "stage_conversion")[-1][3]
    ]
    assert reached == sorted(reached, reverse=True) and reached[-1] > 0
    assert [r[0] for r in rows(pipeline, "days_in_stage")] == [
        "prospecting", "qualification", "proposal", "negotiation"]  # fmt: skip
    assert sum(1 for _, moved in rows(pipeline, "moved_by_period") if moved) >= 18
    activity = run("activity")
    numbers = {k: v for k, v, _ in figures(activity)}
    assert numbers["completed"] > numbers["overdue"] > 0
    # Each deal's history starts when it was created and ends in its stage and status.
    h, lead = schema.lead_stage_history.c, schema.leads.c
    with crm_engine.connect() as conn:
        last: dict[int, tuple[str, str]] = {}
        history = sa.select(h.lead_id, h.from_status, h.to_stage, h.to_status).order_by(
            h.lead_id, h.changed_at, h.id
        )
        for row in conn.execute(history):
            if row.lead_id not in last:
                assert row.from_status is None
            last[row.lead_id] = (row.to_stage, row.to_status)
        leads = sa.select(lead.id, lead.stage, lead.status)
        current = {r.id: (r.stage, r.status) for r in conn.execute(leads)}
    assert last == current
    assert {status for _, status in current.values()} == {"open", "won", "lost"}


def test_stage_history_step_upgrades_a_database_with_leads(crm_url: str) -> None:
    """The step from the version before it: existing leads get their creation row; run
    again on a database that has the table already (steps of parallel branches are ordered
    at merge), it adds nothing twice."""
    step = schema.MIGRATIONS.index(schema._stage_history) + 1
    engine = create_engine(crm_url)
    try:
        init_db(engine, target=step - 1)
        assert not sa.inspect(engine).has_table("lead_stage_history")
        stamp = utc(2024, 5, 1, 12)
        with engine.begin() as conn:
            conn.execute(schema.leads.insert(), [
                {"tenant_id": "t1", "title": "A", "status": "open", "stage": "proposal",
                 "created_at": stamp, "updated_at": stamp},
                {"tenant_id": "t2", "title": "B", "status": "won", "stage": None,
                 "created_at": stamp, "updated_at": stamp},
            ])  # fmt: skip
        assert init_db(engine) == (step - 1, schema.SCHEMA_VERSION)
        h = schema.lead_stage_history.c
        query = sa.select(h.tenant_id, h.from_stage, h.to_stage, h.to_status, h.changed_at)
        with engine.begin() as conn:
            rows = sorted(conn.execute(query).all())
            schema._stage_history(conn)  # present already: nothing added
            assert sorted(conn.execute(query).all()) == rows
        assert rows == [("t1", None, "proposal", "open", stamp), ("t2", None, None, "won", stamp)]
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- extreme dates

EDGE_ZONES = ["UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago", "Pacific/Auckland",
              "America/New_York"]  # fmt: skip


def test_the_years_a_report_accepts_run_in_every_zone(engine: Any) -> None:
    """Finding 3: 9999-12 in Auckland and 0001-01 in New York or UTC passed enqueue, then
    the worker overflowed (and SQLite refused year 0 where PostgreSQL answered). The years
    accepted, 1900..9998, run for every report type, period and zone (UTC+14 to UTC-11),
    on both databases; the years beyond are refused at enqueue, naming date_range."""
    for zone in EDGE_ZONES:
        for start, end in (("1900-01-01", "1900-12-31"), ("9998-01-01", "9998-12-31")):
            for report_type in ("sales", "pipeline", "contact-growth", "activity"):
                for period in ("day", "week", "month", "quarter", "year"):
                    data = report(engine, report_type, start, end, timeZone=zone,
                                  dimensions=[period])  # fmt: skip
                    assert data.start == dt.date.fromisoformat(start)
    for start, end in (("1899-12-31", "1900-01-31"), ("9998-12-01", "9999-01-01"),
                       ("0001-01-01", "0001-01-31"), ("9999-12-01", "9999-12-31")):  # fmt: skip
        data = {"tenantId": "t1", "userId": "u1", "reportType": "sales", "format": "xlsx",
                "dateRange": {"startDate": start, "endDate": end}}  # fmt: skip
        with pytest.raises(__import__("pydantic").ValidationError) as info:
            ReportPayload.model_validate(data, context=CONTEXT)
        (error,) = info.value.errors()
        assert error["loc"][0] == "date_range" and "1900-01-01 to 9998-12-31" in error["msg"]


def test_a_job_from_before_the_bound_fails_permanently_at_once(engine: Any, tmp_path: Path) -> None:
    """A job stored before the years were bounded (built here without validation) would
    overflow on every retry: it fails permanently at once, leaving no file."""
    from crmqueue.workers.report import run_report

    url = engine.url.render_as_string(hide_password=False)
    settings = Settings.model_validate({"database": {"url": url}, "files": {"dir": str(tmp_path)}})
    for zone, start, end in (("Pacific/Auckland", "9999-12-01", "9999-12-31"),
                             ("America/New_York", "0001-01-01", "0001-01-31")):  # fmt: skip
        payload = ReportPayload.model_construct(
            tenant_id="t1", user_id="u1", report_type="sales", format="xlsx", filters={},
            dimensions=["month"], time_zone=zone,
            date_range=schema_range(start, end),
        )  # fmt: skip
        with pytest.raises(PermanentError, match="report dates run from 1900-01-01"):
            run_report(payload, settings, "j1", progress=lambda _: None)
    assert not list(tmp_path.rglob("*.xlsx*"))


def schema_range(start: str, end: str) -> Any:
    from crmqueue.payloads import DateRange

    return DateRange(start_date=dt.date.fromisoformat(start), end_date=dt.date.fromisoformat(end))


def test_partial_files_of_killed_attempts_are_removed(engine: Any, tmp_path: Path) -> None:
    """Finding 4: an attempt killed mid-write (SIGKILL, a stalled lease) skips its cleanup
    and its ``.partial`` file stayed forever. A retry removes its own first, even when it
    then fails; a report's start sweeps other jobs' partials older than the report queue's
    timeout plus lease (any tenant, any format), and leaves younger ones (a live attempt)."""
    import os
    import time

    from crmqueue.workers.report import report_path, run_report

    url = engine.url.render_as_string(hide_password=False)
    settings = Settings.model_validate(
        {"database": {"url": url}, "files": {"dir": str(tmp_path)},
         "queues": {"report": {"workers": 1, "attempts": 3, "timeout_seconds": 60,
                               "lease_seconds": 10}}}
    )  # fmt: skip
    old = time.time() - 71
    dead = tmp_path / "reports" / "t2" / ".activity-2025-01-01-2025-01-31-dead.pdf.partial"
    live = tmp_path / "reports" / "t2" / ".sales-2025-01-01-2025-01-31-live.xlsx.partial"
    for path in (dead, live):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    os.utime(dead, (old, old))
    for fmt in ("pdf", "xlsx", "html"):
        # A retry of a job stored before the date bound: it fails, and its leftover is gone.
        payload = ReportPayload.model_construct(
            tenant_id="t1", user_id="u1", report_type="sales", format=fmt, filters={},
            dimensions=[], time_zone="UTC", date_range=schema_range("9999-12-01", "9999-12-31"),
        )  # fmt: skip
        final = report_path(tmp_path, payload, f"job-{fmt}")
        own = final.with_name(f".{final.name}.partial")
        own.parent.mkdir(parents=True, exist_ok=True)
        own.write_bytes(b"")  # fresh: only its own job may remove it this soon
        with pytest.raises(PermanentError):
            run_report(payload, settings, f"job-{fmt}", progress=lambda _: None)
        assert not own.exists()
    assert not dead.exists() and live.read_bytes() == b"half"
    # A report that succeeds sweeps too.
    os.utime(live, (old, old))
    data = {"tenantId": "t1", "userId": "u1", "reportType": "contact-growth", "format": "html",
            "dateRange": {"startDate": "2025-10-01", "endDate": "2025-12-31"}}  # fmt: skip
    result = run_report(ReportPayload.model_validate(data, context=CONTEXT), settings, "ok",
                        progress=lambda _: None)  # fmt: skip
    assert Path(result["file"]).is_file() and not live.exists()
    assert not list(tmp_path.rglob("*.partial"))


def test_amounts_beyond_numeric_14_2_are_never_summed_silently(engine: Any) -> None:
    """Finding 5: on SQLite (NUMERIC is a float there) amounts written directly beyond
    NUMERIC(14, 2) were summed wrongly without a word (GBP 1e20 as 92233720368547758.07,
    CHF 0.015 as 0.02). The largest amount and cents floats cannot hold exactly still sum
    exactly; a report over a tenant holding a bad amount fails permanently, naming it;
    PostgreSQL refuses such amounts when written (and rounds a fraction of a cent)."""

    def lead(tenant: str, amount: Any, currency: str) -> dict[str, Any]:
        stamp = utc(2025, 12, 1)
        return {"tenant_id": tenant, "title": "x", "status": "won", "stage": "negotiation",
                "currency": currency, "amount": amount, "close_date": dt.date(2025, 12, 1),
                "created_at": stamp, "updated_at": stamp}  # fmt: skip

    good = [lead("t8", D("999999999999.99"), "USD"), lead("t8", D("0.29"), "CHF"),
            lead("t8", D("0.01"), "CHF")]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(schema.leads.insert(), good)
    for kind in ("sales", "pipeline"):
        data = report(engine, kind, tenantId="t8")
        if kind == "sales":
            assert ("won_revenue", D("999999999999.99"), "USD") in figures(data)
            assert ("won_revenue", D("0.30"), "CHF") in figures(data)
    for bad in (lead("t9", D("1e20"), "GBP"), lead("t9", D("1234567890123456.78"), "USD"),
                lead("t9", D("0.015"), "CHF")):  # fmt: skip
        if engine.dialect.name == "postgresql":
            if bad["amount"] < 1:
                continue  # PostgreSQL rounds it to the cent when written
            with pytest.raises(sa.exc.DataError), engine.begin() as conn:
                conn.execute(schema.leads.insert(), [bad])
            continue
        with engine.begin() as conn:
            conn.execute(schema.leads.delete().where(schema.leads.c.tenant_id == "t9"))
            conn.execute(schema.leads.insert(), [bad])
        for kind in ("sales", "pipeline"):
            with pytest.raises(PermanentError, match=r"leads\.amount: 1 lead\(s\) hold"):
                report(engine, kind, tenantId="t9")
        assert report(engine, "activity", tenantId="t9").empty  # no amounts in it
