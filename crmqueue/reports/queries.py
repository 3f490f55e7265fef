"""Report figures as SQL aggregates (issue #13 item 1): one SQLAlchemy Core query per
table, grouped in the database, the same on SQLite and PostgreSQL; only grouped rows come
back to Python.

Dates are the tenant's: a report's `start`/`end` are calendar days in its time zone (the
job's `time_zone`, else `reports.tenant_time_zones`, else `reports.time_zone`), a time
stamp counts on the day it falls on there, and periods (day, ISO week from Monday, month,
quarter, year) are cut there. PostgreSQL converts with ``timezone(zone, t)``; SQLite has
no time-zone data, so the zone's UTC offsets over the report's range are read from
zoneinfo and applied as ``date(t, '+540 minutes')``, changing at each transition inside
the range.

What each report counts:
- sales: closed deals (status won or lost) whose close date falls in the range (a deal
  without `close_date` closes on its local `updated_at` day); won revenue, won deals,
  average won deal size (over won deals with an amount) and win rate (won / closed, in
  deals) by period, owner and each requested dimension; top deals per currency.
- pipeline: the deals open at the end of the range, in the stage they were in then (the
  last stage-history entry before it; a lead without history as it is now, if created by
  then), with their current amount: count and value by stage, weighted by
  `reports.stage_probabilities`; from the stage
  history: stage-to-stage conversion (of the deals active in the range, how many reached
  each listed stage or a later one, won last: a skipped stage counts as passed), average
  days in stage (open spells that ended in the range) and deals moved per period (a deal
  counts once in each period it moved in; the headline counts it once over the range).
- contact-growth: contacts created in the range per period, the running total (all
  contacts created before each period's end), growth rate (new / total before), by source
  and by status.
- activity: activities due in the range (created, when without a due time) by type, owner
  and period: count, completed, overdue (not completed and due before the report was
  generated) and completion rate.
Money is summed per currency in whole cents (exact on SQLite's floating-point NUMERIC too)
and returned as Decimal; a deal without a currency counts under XXX (ISO 4217: no
currency). On SQLite, where nothing stops an amount beyond NUMERIC(14, 2) written directly,
a sales or pipeline report over a tenant holding one fails permanently rather than sum it
wrongly (_check_amounts).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from crmqueue.config import ReportsSettings, Settings
from crmqueue.crm import schema
from crmqueue.crm.store import get_engine
from crmqueue.errors import PermanentError
from crmqueue.payloads import ReportPayload
from crmqueue.reports.model import Chart, Column, Figure, ReportData, Series, Table
from crmqueue.reports.options import (
    ACTIVITY_STATUSES,
    MAX_AMOUNT,
    ReportFilters,
    check_dimensions,
    check_filters,
)

__all__ = ["NO_CURRENCY", "build_report", "period_label", "periods"]

NO_CURRENCY = "XXX"
NONE_LABEL = "(none)"
WON_STEP = "won"
TITLES = {
    "sales": "Sales report",
    "pipeline": "Pipeline report",
    "contact-growth": "Contact growth report",
    "activity": "Activity report",
}
_CENT = Decimal("0.01")
_TENTH = Decimal("0.1")
# The breakdowns every report of a type has, asked for or not.
ALWAYS = {
    "sales": ("owner",),
    "pipeline": ("stage",),
    "contact-growth": ("source", "status"),
    "activity": ("owner",),
}
_DIMENSION_TITLES = {"owner": "Owner", "stage": "Stage", "source": "Source",
                     "company": "Company", "status": "Status"}  # fmt: skip

L, C, CO, H, A = (schema.leads, schema.contacts, schema.companies, schema.lead_stage_history,
                  schema.activities)  # fmt: skip


# --------------------------------------------------------------------------- scope


@dataclass(frozen=True)
class Scope:
    """Everything one report's queries share."""

    conn: Connection
    postgres: bool
    tenant: str
    zone_name: str
    zone: zoneinfo.ZoneInfo
    start: dt.date
    end: dt.date
    start_at: dt.datetime  # UTC instant of the local midnight starting `start`
    end_at: dt.datetime  # UTC instant of the local midnight after `end` (exclusive)
    period: str
    breakdowns: tuple[str, ...]
    filters: ReportFilters
    reports: ReportsSettings
    generated_at: dt.datetime

    def day(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[dt.date]:
        """The local calendar day of a UTC time stamp column."""
        if self.postgres:
            return sa.cast(sa.func.timezone(self.zone_name, column), sa.Date)
        segments = utc_offsets(self.zone, self.start_at, self.end_at)
        modifier: sa.ColumnElement[str]
        if len(segments) == 1:
            modifier = sa.literal(_minutes(segments[0][1]))
        else:
            whens = [
                (column < sa.literal(until, schema.UtcDateTime()), _minutes(offset))
                for until, offset in segments[:-1]
            ]
            modifier = sa.case(*whens, else_=_minutes(segments[-1][1]))
        return sa.func.date(column, modifier, type_=sa.Date)

    def bucket(self, day: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
        """The first day of `day`'s period, as ISO text (YYYY-MM-DD) on both databases."""
        unit = self.period
        if self.postgres:
            start = sa.func.date_trunc(unit, sa.cast(day, sa.DateTime))
            return sa.func.to_char(start, "YYYY-MM-DD", type_=sa.String)
        if unit == "day":
            return sa.func.date(day, type_=sa.String)
        if unit == "week":
            return sa.func.date(day, "-6 days", "weekday 1", type_=sa.String)
        if unit == "month":
            return sa.func.date(day, "start of month", type_=sa.String)
        if unit == "year":
            return sa.func.date(day, "start of year", type_=sa.String)
        back = sa.func.printf(
            "-%d months", (sa.cast(sa.func.strftime("%m", day), sa.Integer) - 1) % 3
        )
        return sa.func.date(day, "start of month", back, type_=sa.String)

    def in_range(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        """A UTC time stamp column within the report's days (index-friendly)."""
        return sa.and_(
            column >= sa.literal(self.start_at, schema.UtcDateTime()),
            column < sa.literal(self.end_at, schema.UtcDateTime()),
        )

    def days_between(
        self, earlier: sa.ColumnElement[Any], later: sa.ColumnElement[Any]
    ) -> sa.ColumnElement[Any]:
        if self.postgres:
            return sa.func.extract("epoch", later - earlier) / 86400
        return sa.func.julianday(later) - sa.func.julianday(earlier)


def _minutes(offset: dt.timedelta) -> str:
    return f"{int(offset.total_seconds()) // 60:+d} minutes"


def utc_offsets(
    zone: dt.tzinfo, start_at: dt.datetime, end_at: dt.datetime
) -> list[tuple[dt.datetime, dt.timedelta]]:
    """[(until, offset), ...]: the zone's UTC offset up to each transition between a day
    before `start_at` and a day after `end_at` (the last `until` is that end), found by
    stepping a day at a time and bisecting to the second."""

    def offset(at: dt.datetime) -> dt.timedelta:
        return at.astimezone(zone).utcoffset() or dt.timedelta()

    def instant(seconds: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)

    day = 86400
    moment = int(start_at.timestamp()) - day
    stop = int(end_at.timestamp()) + day
    current = offset(instant(moment))
    segments: list[tuple[dt.datetime, dt.timedelta]] = []
    while moment < stop:
        following = min(moment + day, stop)
        if offset(instant(following)) != current:
            low, high = moment, following  # offset(low) is current, offset(high) is not
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if offset(instant(middle)) == current else (low, middle)
            segments.append((instant(high), current))
            current = offset(instant(high))
        moment = following
    segments.append((instant(stop), current))
    return segments


def periods(unit: str, start: dt.date, end: dt.date) -> list[dt.date]:
    """The first day of every `unit` period that overlaps start..end."""
    first = period_start(unit, start)
    found = []
    while first <= end:
        found.append(first)
        first = _next_period(unit, first)
    return found


def period_start(unit: str, day: dt.date) -> dt.date:
    if unit == "week":
        return day - dt.timedelta(days=day.weekday())
    if unit == "month":
        return day.replace(day=1)
    if unit == "quarter":
        return dt.date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
    if unit == "year":
        return dt.date(day.year, 1, 1)
    return day


def _next_period(unit: str, first: dt.date) -> dt.date:
    if unit == "day":
        return first + dt.timedelta(days=1)
    if unit == "week":
        return first + dt.timedelta(days=7)
    months = {"month": 1, "quarter": 3, "year": 12}[unit]
    index = first.year * 12 + first.month - 1 + months
    return dt.date(index // 12, index % 12 + 1, 1)


def period_label(unit: str, first: dt.date) -> str:
    """2025-01-15 (day), 2025-W03 (ISO week), 2025-01, 2025-Q1, 2025."""
    if unit == "week":
        year, week, _ = first.isocalendar()
        return f"{year}-W{week:02d}"
    if unit == "month":
        return f"{first.year}-{first.month:02d}"
    if unit == "quarter":
        return f"{first.year}-Q{(first.month - 1) // 3 + 1}"
    if unit == "year":
        return str(first.year)
    return first.isoformat()


def _local_midnight(day: dt.date, zone: dt.tzinfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), zone).astimezone(dt.UTC)


# --------------------------------------------------------------------------- numbers


def money(cents: Any) -> Decimal:
    return (Decimal(int(cents or 0)) / 100).quantize(_CENT)


def _average(cents: Any, count: int) -> Decimal | None:
    if not count:
        return None
    return (Decimal(int(cents or 0)) / 100 / count).quantize(_CENT, ROUND_HALF_UP)


def fraction(part: int, whole: int) -> Decimal | None:
    """part / whole at Decimal's full precision (28 significant digits; exact whenever the
    ratio has a finite decimal expansion), None when whole is 0. Not rounded here: every
    format rounds it once, for display (crmqueue.reports.model.percent_text)."""
    if not whole:
        return None
    return Decimal(part) / Decimal(whole)


def _rate_meaningful(scope: Scope, outcomes: Sequence[str]) -> bool:
    """Whether a rate between `outcomes` (won and lost; completed and not) means anything
    under the status filter: one that keeps only some of them also filters the rate's
    denominator (status closed-won made every win rate 100 %)."""
    return not scope.filters.status or set(outcomes) <= set(scope.filters.status)


NOT_MEANINGFUL = "not meaningful: the status filter keeps only some outcomes"
NOT_MEANINGFUL_SHORT = "n/a: status filter"  # in a column title


def _cents(amount: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """An amount in whole cents: sums stay exact where NUMERIC is a float (SQLite)."""
    return sa.cast(sa.func.round(amount * 100), sa.BigInteger)


def _count_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
    return sa.func.sum(sa.case((condition, 1), else_=0))


def _label(value: Any) -> str:
    return NONE_LABEL if value is None or value == "" else str(value)


# --------------------------------------------------------------------------- entry point


def _check_amounts(conn: Connection, tenant: str) -> None:
    """Raise PermanentError if the tenant's leads hold an amount NUMERIC(14, 2) cannot: on
    SQLite (NUMERIC is a float there, and nothing refuses such a value written directly)
    it would be summed wrongly without a word (1e20 clamped to 2^63 cents, 0.015 rounded to
    a cent). PostgreSQL's column refuses them. A fraction of a cent is judged to 0.1 cent,
    well above a float's error on the largest amount (about 0.015 cent)."""
    cents = L.c.amount * 100
    bad = (sa.func.abs(L.c.amount) > MAX_AMOUNT) | (sa.func.abs(cents - sa.func.round(cents)) > 0.1)
    row = conn.execute(
        sa.select(sa.func.count(), sa.func.min(L.c.id)).where(L.c.tenant_id == tenant, bad)
    ).one()
    if row[0]:
        raise PermanentError(
            f"leads.amount: {row[0]} lead(s) hold an amount beyond NUMERIC(14, 2) (more than"
            f" {MAX_AMOUNT} or a fraction of a cent; the first is lead id {row[1]}): the"
            " figures could not be exact; correct those amounts"
        )


def build_report(
    settings: Settings,
    payload: ReportPayload,
    *,
    engine: Engine | None = None,
    generated_at: dt.datetime | None = None,
) -> ReportData:
    """The figures, tables and charts of `payload`'s report, from the CRM database of
    `settings` (or `engine`), for its tenant only. `generated_at` (aware; default now)
    is when "overdue" is judged. Raises PermanentError for filters or dimensions the
    payload's validation would refuse now (crm.contact_statuses changed since enqueue)."""
    zone_name = payload.time_zone or settings.reports.zone_for(payload.tenant_id)
    zone = zoneinfo.ZoneInfo(zone_name)
    report_type = payload.report_type
    (period, breakdowns), dimension_errors = check_dimensions(report_type, payload.dimensions)
    filters, filter_errors = check_filters(
        report_type,
        payload.filters,
        settings.crm.contact_statuses,
        tuple(settings.reports.probabilities()),
    )
    errors = [(f"dimensions.{i}", reason) for i, reason in dimension_errors] + [
        (f"filters.{key}", reason) for key, reason in filter_errors
    ]
    if errors:  # checked at enqueue; the configured contact statuses may have changed since
        raise PermanentError(
            "report options refused: " + "; ".join(f"{field}: {why}" for field, why in errors)
        )
    start, end = payload.date_range.start_date, payload.date_range.end_date
    stamp = (generated_at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    engine = engine or get_engine(settings.database.url)
    with engine.connect() as conn:
        if filters.owner:
            filters = dataclasses.replace(
                filters, owner=_owner_ids(conn, payload.tenant_id, filters.owner)
            )
        if report_type in ("sales", "pipeline") and conn.dialect.name != "postgresql":
            _check_amounts(conn, payload.tenant_id)
        scope = Scope(
            conn=conn, postgres=conn.dialect.name == "postgresql", tenant=payload.tenant_id,
            zone_name=zone_name, zone=zone, start=start, end=end,
            start_at=_local_midnight(start, zone),
            end_at=_local_midnight(end + dt.timedelta(days=1), zone),
            period=period, breakdowns=breakdowns, filters=filters,
            reports=settings.reports, generated_at=stamp,
        )  # fmt: skip
        figures, tables, charts, empty = BUILDERS[report_type](scope)
    return ReportData(
        report_type=report_type,
        title=TITLES[report_type],
        tenant_id=payload.tenant_id,
        start=start,
        end=end,
        time_zone=zone_name,
        generated_at=stamp,
        filters={key: _shown(value) for key, value in payload.filters.items()},
        # what the report is grouped by: its period, the breakdowns it always has, then the
        # requested ones (the cover lists them all)
        dimensions=tuple(dict.fromkeys((period, *ALWAYS[report_type], *breakdowns))),
        figures=tuple(figures),
        tables=tuple(tables),
        charts=tuple(charts),
        empty=empty,
    )


def _owner_ids(conn: Connection, tenant: str, given: Sequence[str]) -> tuple[str, ...]:
    """An owner filter's values as owner ids: each value is an id, or the display name
    (case-insensitive) of the tenant's users that bear it, as the reports print owners."""
    users = schema.users
    wanted = {value.casefold() for value in given}
    named = [
        row.user_id
        for row in conn.execute(
            sa.select(users.c.user_id, users.c.name).where(users.c.tenant_id == tenant)
        )
        if row.name and row.name.casefold() in wanted
    ]
    return tuple(dict.fromkeys([*given, *named]))


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


Built = tuple[list[Figure], list[Table], list[Chart], bool]


# --------------------------------------------------------------------------- leads


def _needs_contact(scope: Scope, dimensions: Iterable[str]) -> bool:
    wanted = set(dimensions)
    return bool(scope.filters.source) or bool(wanted & {"source", "company"})


def _lead_from(scope: Scope, dimensions: Iterable[str]) -> sa.FromClause:
    """leads, joined to their contact and company (same tenant) when a dimension or
    filter needs them."""
    wanted = set(dimensions)
    joined: sa.FromClause = L
    if _needs_contact(scope, wanted):
        joined = joined.outerjoin(
            C, sa.and_(C.c.id == L.c.contact_id, C.c.tenant_id == scope.tenant)
        )
    if "company" in wanted:
        joined = joined.outerjoin(
            CO, sa.and_(CO.c.id == L.c.company_id, CO.c.tenant_id == scope.tenant)
        )
    return joined


def _lead_dimension(scope: Scope, dimension: str) -> sa.ColumnElement[Any]:
    if dimension == "source":
        return C.c.source
    if dimension == "company":
        return sa.func.coalesce(CO.c.name, C.c.company)
    column: sa.ColumnElement[Any] = L.c[dimension]  # owner, stage, status
    return column


def _lead_conditions(
    scope: Scope,
    statuses: Sequence[str],
    status: sa.ColumnElement[Any] | None = None,
    stage: sa.ColumnElement[Any] | None = None,
) -> list[sa.ColumnElement[bool]]:
    """The tenant, the filters, and a status among `statuses` (intersected with the status
    filter's); `status` and `stage` are the columns compared (the lead's own by default;
    the pipeline's as they stood at the end of the range)."""
    f = scope.filters
    status = L.c.status if status is None else status
    stage = L.c.stage if stage is None else stage
    wanted = [s for s in statuses if not f.status or s in f.status]
    conditions = [L.c.tenant_id == scope.tenant, status.in_(wanted)]
    if f.stage:
        conditions.append(stage.in_(f.stage))
    if f.owner:
        conditions.append(L.c.owner.in_(f.owner))
    if f.currency:
        conditions.append(sa.func.coalesce(L.c.currency, NO_CURRENCY).in_(f.currency))
    if f.min_amount is not None:
        conditions.append(L.c.amount >= f.min_amount)
    if f.max_amount is not None:
        conditions.append(L.c.amount <= f.max_amount)
    if f.source:
        conditions.append(C.c.source.in_(f.source))
    return conditions


def _currency() -> sa.ColumnElement[str]:
    return sa.func.coalesce(L.c.currency, NO_CURRENCY)


def _owner_names(scope: Scope) -> dict[str, str]:
    users = schema.users
    rows = scope.conn.execute(
        sa.select(users.c.user_id, users.c.name).where(users.c.tenant_id == scope.tenant)
    )
    return {row.user_id: row.name for row in rows}


def _key_label(scope: Scope, dimension: str, names: Mapping[str, str]) -> Callable[[Any], str]:
    if dimension == "owner":
        return lambda value: names.get(value, _label(value)) if value else NONE_LABEL
    return _label


# --------------------------------------------------------------------------- sales


@dataclass(frozen=True)
class _Closed:
    """One group of closed deals: its keys, currency and additive measures."""

    keys: tuple[Any, ...]
    currency: str
    won_cents: int
    won: int
    won_priced: int
    closed: int

    @staticmethod
    def merge(
        groups: Iterable[_Closed], key: Callable[[tuple[Any, ...]], tuple[Any, ...]]
    ) -> list[_Closed]:
        """`groups` summed by (key(keys), currency), in first-seen order."""
        sums: dict[tuple[tuple[Any, ...], str], list[int]] = {}
        for group in groups:
            total = sums.setdefault((key(group.keys), group.currency), [0, 0, 0, 0])
            for index, value in enumerate(
                (group.won_cents, group.won, group.won_priced, group.closed)
            ):
                total[index] += value
        return [_Closed(keys, currency, *values) for (keys, currency), values in sums.items()]


def _sales(scope: Scope) -> Built:
    closed_on = sa.func.coalesce(L.c.close_date, scope.day(L.c.updated_at), type_=sa.Date)
    won = L.c.status == "won"
    measures = [
        sa.func.sum(sa.case((won, _cents(L.c.amount)))).label("won_cents"),
        _count_if(won).label("won"),
        _count_if(sa.and_(won, L.c.amount.is_not(None))).label("won_priced"),
        sa.func.count().label("closed"),
    ]
    dimensions = ("owner", *[d for d in scope.breakdowns if d != "owner"])
    base = [
        *_lead_conditions(scope, ("won", "lost")),
        closed_on >= sa.literal(scope.start, sa.Date),
        closed_on <= sa.literal(scope.end, sa.Date),
    ]
    source = _lead_from(scope, dimensions)

    def grouped(*keys: sa.Label[Any]) -> list[_Closed]:
        query = (
            sa.select(*keys, _currency().label("currency"), *measures)
            .select_from(source)
            .where(*base)
            .group_by(*[key.name for key in keys], "currency")
        )
        return [
            _Closed(tuple(row[: len(keys)]), row.currency, int(row.won_cents or 0), int(row.won),
                    int(row.won_priced), int(row.closed))
            for row in scope.conn.execute(query)
        ]  # fmt: skip

    rate_ok = _rate_meaningful(scope, ("won", "lost"))
    # One scan for the totals, the periods and the owners: summed up here from its groups.
    by_period_owner = grouped(scope.bucket(closed_on).label("k"), L.c.owner.label("o"))
    totals = _Closed.merge(by_period_owner, lambda keys: ())
    currencies = sorted(row.currency for row in totals)
    won_count = sum(row.won for row in totals)
    closed_count = sum(row.closed for row in totals)
    figures = [
        *[
            Figure("won_revenue", f"Won revenue ({row.currency})", money(row.won_cents), "money",
                   row.currency)
            for row in sorted(totals, key=lambda r: r.currency)
        ],
        Figure("won_deals", "Won deals", won_count, "int"),
        *[
            Figure("average_deal", f"Average deal size ({row.currency})",
                   _average(row.won_cents, row.won_priced), "money", row.currency)
            for row in sorted(totals, key=lambda r: r.currency)
        ],
        Figure("win_rate",
               "Win rate (won / closed deals)" if rate_ok else f"Win rate ({NOT_MEANINGFUL})",
               fraction(won_count, closed_count) if rate_ok else None, "percent"),
    ]  # fmt: skip
    columns = (
        Column("currency", "Currency", "text"),
        Column("won_revenue", "Won revenue", "money"),
        Column("won_deals", "Won deals", "int"),
        Column("average_deal", "Average deal size", "money"),
        Column(
            "win_rate", "Win rate" if rate_ok else f"Win rate ({NOT_MEANINGFUL_SHORT})", "percent"
        ),
    )

    def row_values(row: _Closed) -> tuple[Any, ...]:
        return (
            row.currency,
            money(row.won_cents),
            row.won,
            _average(row.won_cents, row.won_priced),
            fraction(row.won, row.closed) if rate_ok else None,
        )

    # By period: the table holds the periods and currencies with closed deals (a day
    # dimension over years would otherwise be thousands of zero rows); the chart shows
    # every period of the range, zeros included.
    found = {
        (row.keys[0], row.currency): row
        for row in _Closed.merge(by_period_owner, lambda keys: keys[:1])
    }
    labels = [period_label(scope.period, first) for first in periods(scope.period, scope.start,
                                                                     scope.end)]  # fmt: skip
    firsts = periods(scope.period, scope.start, scope.end)
    period_rows = [
        (label, *row_values(found[(first.isoformat(), currency)]))
        for first, label in zip(firsts, labels, strict=True)
        for currency in currencies
        if (first.isoformat(), currency) in found
    ]
    tables = [
        Table("revenue_by_period", f"Won revenue by {scope.period}",
              (Column("period", scope.period.capitalize(), "text"), *columns),
              tuple(period_rows)),
    ]  # fmt: skip

    def won_in(first: dt.date, currency: str) -> Decimal:
        row = found.get((first.isoformat(), currency))
        return money(row.won_cents if row else 0)

    revenue_chart = Chart(
        "revenue_by_period", f"Won revenue by {scope.period}", "bar", tuple(labels),
        tuple(
            Series(currency, tuple(won_in(first, currency) for first in firsts))
            for currency in currencies
        ),
        x_title=scope.period.capitalize(), y_title="Won revenue",
    )  # fmt: skip
    charts = [revenue_chart]
    names = _owner_names(scope)
    for dimension in dimensions:
        label_of = _key_label(scope, dimension, names)
        if dimension == "owner":
            rows = _Closed.merge(by_period_owner, lambda keys: keys[1:])
        else:
            rows = grouped(_lead_dimension(scope, dimension).label("k"))
        ordered = sorted(rows, key=lambda r: (-r.won_cents, label_of(r.keys[0]), r.currency))
        table_rows = tuple((label_of(row.keys[0]), *row_values(row)) for row in ordered)
        title = f"Won revenue by {dimension}"
        tables.append(
            Table(f"revenue_by_{dimension}", title,
                  (Column(dimension, _DIMENSION_TITLES[dimension], "text"), *columns),
                  table_rows)
        )  # fmt: skip
        if dimension == "owner":
            keys = list(dict.fromkeys(row[0] for row in table_rows))
            by_key = {(row[0], row[1]): row[2] for row in table_rows}
            charts.append(
                Chart("revenue_by_owner", title, "bar", tuple(keys),
                      tuple(Series(c, tuple(by_key.get((k, c), money(0)) for k in keys))
                            for c in currencies),
                      x_title="Owner", y_title="Won revenue")
            )  # fmt: skip
    tables.append(_top_deals(scope, closed_on, base, source, names, currencies))
    return figures, tables, charts, closed_count == 0


def _top_deals(
    scope: Scope,
    closed_on: sa.ColumnElement[Any],
    base: list[sa.ColumnElement[bool]],
    source: sa.FromClause,
    names: Mapping[str, str],
    currencies: Sequence[str],
) -> Table:
    # Per currency, ORDER BY ... LIMIT: a top-N sort each, where a window over every won
    # deal would sort them all.
    rows = []
    for currency in currencies:
        query = (
            sa.select(
                L.c.title, L.c.owner, closed_on.label("closed_on"),
                _cents(L.c.amount).label("cents"),
            )
            .select_from(source)
            .where(*base, L.c.status == "won", L.c.amount.is_not(None), _currency() == currency)
            .order_by(L.c.amount.desc(), L.c.id)
            .limit(scope.reports.top_deals)
        )  # fmt: skip
        rows += [
            (
                rank, row.title, names.get(row.owner, _label(row.owner)),
                _as_date(row.closed_on), currency, money(row.cents),
            )
            for rank, row in enumerate(scope.conn.execute(query), 1)
        ]  # fmt: skip
    columns = (
        Column("rank", "#", "int"),
        Column("deal", "Deal", "text"),
        Column("owner", "Owner", "text"),
        Column("close_date", "Close date", "date"),
        Column("currency", "Currency", "text"),
        Column("amount", "Amount", "money"),
    )
    top = scope.reports.top_deals
    return Table("top_deals", f"Top {top} won deals per currency", columns, tuple(rows))


def _as_date(value: Any) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


# --------------------------------------------------------------------------- pipeline


def _stage_order(scope: Scope, stages: Iterable[str | None]) -> list[str | None]:
    """Configured stages in pipeline order, then the others by name, no stage last."""
    stages = list(stages)
    listed = list(scope.reports.probabilities())
    others = sorted({s for s in stages if s is not None and s not in listed})
    present = set(stages)
    return [s for s in listed if s in present] + others + ([None] if None in present else [])


def _as_of_end(scope: Scope) -> sa.Subquery:
    """Each lead's stage and status at the end of the range, as (lead_id, stage, status):
    from its last stage-history entry before then; a lead without any history (one from
    before the history table) as it is now, if it was created by then. A union of the two,
    so each side joins leads by primary key (a CASE over an outer join made SQLite scan
    the history once per lead)."""
    end_at = sa.literal(scope.end_at, schema.UtcDateTime())
    order = sa.func.row_number().over(
        partition_by=H.c.lead_id, order_by=(H.c.changed_at.desc(), H.c.id.desc())
    )
    ranked = (
        sa.select(H.c.lead_id, H.c.to_stage, H.c.to_status, order.label("rn"))
        .where(H.c.tenant_id == scope.tenant, H.c.changed_at < end_at)
        .subquery()
    )
    from_history = sa.select(
        ranked.c.lead_id.label("lead_id"),
        ranked.c.to_stage.label("stage"),
        ranked.c.to_status.label("status"),
    ).where(ranked.c.rn == 1)
    without_history = sa.select(
        L.c.id.label("lead_id"), L.c.stage.label("stage"), L.c.status.label("status")
    ).where(
        L.c.tenant_id == scope.tenant,
        L.c.created_at < end_at,
        ~sa.exists().where(H.c.tenant_id == scope.tenant, H.c.lead_id == L.c.id),
    )
    return sa.union_all(from_history, without_history).subquery("as_of_end")


def _pipeline(scope: Scope) -> Built:
    """The pipeline as it stood at the end of the range (the local midnight after `end`):
    the deals open then, in the stage they were in then (from the stage history), with
    their current amount and currency."""
    probabilities = scope.reports.probabilities()
    dimensions = [d for d in scope.breakdowns if d != "stage"]
    as_of = _as_of_end(scope)
    stage_at, status_at = as_of.c.stage, as_of.c.status
    source = as_of.join(_lead_from(scope, dimensions), L.c.id == as_of.c.lead_id)
    base = _lead_conditions(scope, ("open",), status=status_at, stage=stage_at)

    def grouped(key: sa.ColumnElement[Any] | None) -> list[sa.Row[Any]]:
        keys = [] if key is None else [key.label("k")]
        query = (
            sa.select(
                *keys, stage_at.label("stage"), _currency().label("currency"),
                sa.func.count().label("deals"), sa.func.sum(_cents(L.c.amount)).label("cents"),
            )
            .select_from(source)
            .where(*base)
            # by the expression: PostgreSQL reads GROUP BY "stage" as leads.stage
            .group_by(*(["k"] if keys else []), stage_at, "currency")
        )  # fmt: skip
        return list(scope.conn.execute(query))

    def weighted(cents: Any, stage: str | None) -> Decimal:
        return (money(cents) * probabilities.get(stage or "", Decimal(0))).quantize(
            _CENT, ROUND_HALF_UP
        )

    by_stage = grouped(None)
    currencies = sorted({row.currency for row in by_stage})
    order = _stage_order(scope, (row.stage for row in by_stage))
    stage_rows = tuple(
        (
            _label(row.stage), row.currency, int(row.deals), money(row.cents),
            probabilities.get(row.stage or "", Decimal(0)), weighted(row.cents, row.stage),
        )
        for row in sorted(by_stage, key=lambda r: (order.index(r.stage), r.currency))
    )  # fmt: skip
    at_end = f"at the end of {scope.end.isoformat()}"
    figures = [
        Figure("open_deals", f"Open deals {at_end}", sum(int(r.deals) for r in by_stage), "int")
    ]
    for currency in currencies:
        mine = [r for r in stage_rows if r[1] == currency]
        figures.append(
            Figure(
                "open_value",
                f"Open pipeline {at_end} ({currency})",
                sum((r[3] for r in mine), Decimal("0.00")),
                "money",
                currency,
            )
        )
        weighted_total = sum((r[5] for r in mine), Decimal("0.00"))
        figures.append(
            Figure("weighted_value", f"Weighted pipeline {at_end} ({currency})", weighted_total,
                   "money", currency)
        )  # fmt: skip
    stage_columns = (
        Column("stage", "Stage", "text"),
        Column("currency", "Currency", "text"),
        Column("open_deals", "Open deals", "int"),
        Column("open_value", "Open value", "money"),
        Column("probability", "Probability", "percent"),
        Column("weighted_value", "Weighted value", "money"),
    )
    tables = [
        Table("pipeline_by_stage", f"Open pipeline {at_end} by stage", stage_columns, stage_rows)
    ]
    stage_labels = [_label(s) for s in order]
    value_of = {(r[0], r[1]): r[3] for r in stage_rows}
    charts = [
        Chart("pipeline_by_stage", f"Open pipeline {at_end} by stage", "bar",
              tuple(stage_labels),
              tuple(Series(c, tuple(value_of.get((s, c), money(0)) for s in stage_labels))
                    for c in currencies),
              x_title="Stage", y_title="Open value"),
    ]  # fmt: skip
    names = _owner_names(scope)
    for dimension in dimensions:
        label_of = _key_label(scope, dimension, names)
        merged: dict[tuple[str, str], list[Any]] = {}
        for row in grouped(_lead_dimension(scope, dimension)):
            entry = merged.setdefault((label_of(row.k), row.currency), [0, money(0), money(0)])
            entry[0] += int(row.deals)
            entry[1] += money(row.cents)
            entry[2] += weighted(row.cents, row.stage)
        rows = tuple(
            (key, currency, *values)
            for (key, currency), values in sorted(merged.items(), key=lambda i: (-i[1][1], i[0]))
        )
        tables.append(
            Table(f"pipeline_by_{dimension}", f"Open pipeline {at_end} by {dimension}",
                  (Column(dimension, _DIMENSION_TITLES[dimension], "text"),
                   *stage_columns[1:4], stage_columns[5]), rows)
        )  # fmt: skip
    conversion, conversion_chart, active = _conversion(scope, list(probabilities))
    days = _days_in_stage(scope)
    moved, moved_chart, moved_total = _moved(scope)
    tables += [conversion, days, moved]
    charts += [conversion_chart, moved_chart]
    figures.append(
        Figure("deals_moved", "Deals moved between stages (each deal once)", moved_total, "int")
    )
    empty = not by_stage and not active and not days.rows and not moved_total
    return figures, tables, charts, empty


def _history_from(scope: Scope) -> tuple[sa.FromClause, list[sa.ColumnElement[bool]]]:
    """The stage history joined to its leads, with the lead filters (any status); without
    filters, the history alone (the join costs more than the rest of the query)."""
    if scope.filters == ReportFilters():
        return H, [H.c.tenant_id == scope.tenant]
    joined: sa.FromClause = H.join(
        L, sa.and_(L.c.id == H.c.lead_id, L.c.tenant_id == H.c.tenant_id)
    )
    if scope.filters.source:
        joined = joined.outerjoin(
            C, sa.and_(C.c.id == L.c.contact_id, C.c.tenant_id == scope.tenant)
        )
    conditions = [H.c.tenant_id == scope.tenant,
                  *_lead_conditions(scope, ("open", "won", "lost"))]  # fmt: skip
    return joined, conditions


def _conversion(scope: Scope, stages: list[str]) -> tuple[Table, Chart, int]:
    joined, conditions = _history_from(scope)
    steps = [*stages, WON_STEP]
    rank = sa.case(
        (H.c.to_status == "won", len(steps)),
        *[(H.c.to_stage == stage, number) for number, stage in enumerate(stages, 1)],
        else_=0,
    )
    per_lead = (
        sa.select(H.c.lead_id, sa.func.max(rank).label("reached"))
        .select_from(joined)
        .where(*conditions, H.c.changed_at < sa.literal(scope.end_at, schema.UtcDateTime()))
        .group_by(H.c.lead_id)
        .having(sa.func.max(H.c.changed_at) >= sa.literal(scope.start_at, schema.UtcDateTime()))
        .subquery()
    )
    counts = {
        int(row.reached): int(row.leads)
        for row in scope.conn.execute(
            sa.select(per_lead.c.reached, sa.func.count().label("leads")).group_by(
                per_lead.c.reached
            )
        )
    }
    active = sum(counts.values())
    reached = [
        sum(n for r, n in counts.items() if r >= number) for number in range(1, len(steps) + 1)
    ]
    rate_ok = _rate_meaningful(scope, ("open", "won", "lost"))
    rows = tuple(
        (
            steps[i],
            steps[i + 1],
            reached[i],
            reached[i + 1],
            fraction(reached[i + 1], reached[i]) if rate_ok else None,
        )
        for i in range(len(steps) - 1)
    )
    table = Table(
        "stage_conversion", "Stage-to-stage conversion",
        (Column("from_stage", "From stage", "text"), Column("to_stage", "To stage", "text"),
         Column("reached_from", "Deals reaching it", "int"),
         Column("reached_to", "Deals going on", "int"),
         Column("conversion",
                "Conversion" if rate_ok else f"Conversion ({NOT_MEANINGFUL_SHORT})",
                "percent")),
        rows,
    )  # fmt: skip
    chart = Chart("stage_funnel", "Deals reaching each stage", "bar", tuple(steps),
                  (Series("Deals", tuple(reached)),), x_title="Stage", y_title="Deals")  # fmt: skip
    return table, chart, active


def _days_in_stage(scope: Scope) -> Table:
    joined, conditions = _history_from(scope)
    left = (
        sa.func.lead(H.c.changed_at)
        .over(partition_by=H.c.lead_id, order_by=(H.c.changed_at, H.c.id))
        .label("left_at")
    )
    spells = (
        sa.select(
            H.c.to_stage.label("stage"), H.c.to_status.label("status"),
            H.c.changed_at.label("entered_at"), left,
        )
        .select_from(joined)
        .where(*conditions, H.c.changed_at < sa.literal(scope.end_at, schema.UtcDateTime()))
        .subquery()
    )  # fmt: skip
    query = (
        sa.select(
            spells.c.stage,
            sa.func.count().label("spells"),
            sa.func.avg(scope.days_between(spells.c.entered_at, spells.c.left_at)).label("days"),
        )
        .where(
            spells.c.status == "open",
            spells.c.left_at.is_not(None),
            scope.in_range(spells.c.left_at),
        )
        .group_by(spells.c.stage)
    )
    found = list(scope.conn.execute(query))
    order = _stage_order(scope, (row.stage for row in found))
    rows = tuple(
        (_label(row.stage), int(row.spells), _days(row.days))
        for row in sorted(found, key=lambda r: order.index(r.stage))
    )
    columns = (
        Column("stage", "Stage", "text"),
        Column("exits", "Deals leaving it", "int"),
        Column("average_days", "Average days in stage", "days"),
    )
    return Table("days_in_stage", "Average days in stage", columns, rows)


def _days(value: Any) -> Decimal | None:
    if value is None:
        return None
    return Decimal(str(value)).quantize(_TENTH, ROUND_HALF_UP)


def _moved(scope: Scope) -> tuple[Table, Chart, int]:
    joined, conditions = _history_from(scope)
    bucket = scope.bucket(scope.day(H.c.changed_at)).label("k")
    moves = sa.or_(H.c.from_stage.is_not(None), H.c.from_status.is_not(None))
    query = (
        sa.select(bucket, sa.func.count(sa.distinct(H.c.lead_id)).label("deals"))
        .select_from(joined)
        .where(*conditions, moves, scope.in_range(H.c.changed_at))
        .group_by("k")
    )
    found = {row.k: int(row.deals) for row in scope.conn.execute(query)}
    total = int(
        scope.conn.execute(
            sa.select(sa.func.count(sa.distinct(H.c.lead_id)))
            .select_from(joined)
            .where(*conditions, moves, scope.in_range(H.c.changed_at))
        ).scalar_one()
    )
    firsts = periods(scope.period, scope.start, scope.end)
    labels = [period_label(scope.period, first) for first in firsts]
    values = [found.get(first.isoformat(), 0) for first in firsts]
    title = f"Deals moved by {scope.period}"
    note = f"{title} (a deal moving in several {scope.period}s counts in each)"
    table = Table(
        "moved_by_period", note,
        (Column("period", scope.period.capitalize(), "text"),
         Column("deals_moved", "Deals moved", "int")),
        tuple((label, n) for label, n in zip(labels, values, strict=True) if n),
    )  # fmt: skip
    chart = Chart("moved_by_period", title, "line", tuple(labels),
                  (Series("Deals moved", tuple(values)),),
                  x_title=scope.period.capitalize(), y_title="Deals")  # fmt: skip
    return table, chart, total


# --------------------------------------------------------------------------- contacts


def _contact_growth(scope: Scope) -> Built:
    f = scope.filters
    conditions = [C.c.tenant_id == scope.tenant]
    if f.status:
        conditions.append(C.c.status.in_(f.status))
    if f.source:
        conditions.append(C.c.source.in_(f.source))
    created = scope.in_range(C.c.created_at)
    before = int(
        scope.conn.execute(
            sa.select(sa.func.count())
            .select_from(C)
            .where(*conditions, C.c.created_at < sa.literal(scope.start_at, schema.UtcDateTime()))
        ).scalar_one()
    )
    bucket = scope.bucket(scope.day(C.c.created_at)).label("k")
    # One scan by period, source and status serves the periods, both breakdowns and the
    # stacked chart (summed up here: a few hundred groups at most).
    groups = [
        (row.k, _label(row.s), _label(row.st), int(row.n))
        for row in scope.conn.execute(
            sa.select(bucket, C.c.source.label("s"), C.c.status.label("st"),
                      sa.func.count().label("n"))
            .where(*conditions, created)
            .group_by("k", "s", "st")
        )
    ]  # fmt: skip
    per_period: dict[str, int] = defaultdict(int)
    stacked: dict[tuple[str, str], int] = defaultdict(int)
    by_key: dict[str, dict[str, int]] = {"source": defaultdict(int), "status": defaultdict(int)}
    for period_key, source_label, status_label, count in groups:
        per_period[period_key] += count
        stacked[(period_key, source_label)] += count
        by_key["source"][source_label] += count
        by_key["status"][status_label] += count
    firsts = periods(scope.period, scope.start, scope.end)
    labels = [period_label(scope.period, first) for first in firsts]
    total = before
    growth_rows = []
    for first, label in zip(firsts, labels, strict=True):
        new = per_period.get(first.isoformat(), 0)
        growth_rows.append((label, new, total + new, fraction(new, total)))
        total += new
    # The table leaves out the periods without a new contact (the curve keeps them).
    growth_table = tuple(row for row in growth_rows if row[1])
    new_total = total - before
    figures = [
        Figure("new_contacts", "New contacts", new_total, "int"),
        Figure("total_contacts", "Contacts at the end of the period", total, "int"),
        Figure("growth_rate", "Growth over the period", fraction(new_total, before), "percent"),
    ]
    tables = [
        Table(
            "growth_by_period", f"New contacts by {scope.period}",
            (Column("period", scope.period.capitalize(), "text"),
             Column("new_contacts", "New contacts", "int"),
             Column("total_contacts", "Total contacts", "int"),
             Column("growth_rate", "Growth rate", "percent")),
            growth_table,
        )
    ]  # fmt: skip
    charts = [
        Chart("growth_curve", "Total contacts", "line", tuple(labels),
              (Series("Total contacts", tuple(r[2] for r in growth_rows)),),
              x_title=scope.period.capitalize(), y_title="Contacts"),
    ]  # fmt: skip
    dimensions = list(dict.fromkeys(("source", "status", *scope.breakdowns)))
    for dimension in dimensions:
        if dimension in by_key:
            counted = list(by_key[dimension].items())
        else:
            key = C.c[dimension].label("k")
            counted = [
                (_label(row.k), int(row.n))
                for row in scope.conn.execute(
                    sa.select(key, sa.func.count().label("n"))
                    .where(*conditions, created)
                    .group_by("k")
                )
            ]
        rows = sorted(counted, key=lambda r: (-r[1], r[0]))
        tables.append(
            Table(f"new_by_{dimension}", f"New contacts by {dimension}",
                  (Column(dimension, _DIMENSION_TITLES[dimension], "text"),
                   Column("new_contacts", "New contacts", "int"),
                   Column("share", "Share", "percent")),
                  tuple((k, n, fraction(n, new_total)) for k, n in rows))
        )  # fmt: skip
    sources = sorted({s for _, s in stacked})
    charts.append(
        Chart("new_by_source", f"New contacts by {scope.period} and source", "stacked_bar",
              tuple(labels),
              tuple(Series(s, tuple(stacked.get((first.isoformat(), s), 0) for first in firsts))
                    for s in sources),
              x_title=scope.period.capitalize(), y_title="New contacts")
    )  # fmt: skip
    return figures, tables, charts, new_total == 0


# --------------------------------------------------------------------------- activities


def _activity(scope: Scope) -> Built:
    when = sa.func.coalesce(A.c.due_at, A.c.created_at, type_=schema.UtcDateTime())
    now = sa.literal(scope.generated_at, schema.UtcDateTime())
    done = A.c.completed_at.is_not(None)
    overdue = sa.and_(A.c.completed_at.is_(None), A.c.due_at < now)
    status = sa.case((done, "completed"), (overdue, "overdue"), else_="open")
    conditions = [A.c.tenant_id == scope.tenant, scope.in_range(when)]
    if scope.filters.status:
        conditions.append(status.in_(scope.filters.status))
    if scope.filters.owner:
        conditions.append(A.c.owner.in_(scope.filters.owner))
    measures = [
        sa.func.count().label("n"),
        _count_if(done).label("done"),
        _count_if(overdue).label("overdue"),
    ]
    bucket = scope.bucket(scope.day(when)).label("k")

    def grouped(*keys: sa.ColumnElement[Any]) -> list[sa.Row[Any]]:
        names = [key.name for key in keys if isinstance(key, sa.Label)]
        query = sa.select(*keys, *measures).where(*conditions)
        return list(scope.conn.execute(query.group_by(*names) if names else query))

    rate_ok = _rate_meaningful(scope, ACTIVITY_STATUSES)
    (totals,) = grouped()
    count, completed = int(totals.n), int(totals.done or 0)
    figures = [
        Figure("activities", "Activities", count, "int"),
        Figure("completed", "Completed", completed, "int"),
        Figure(
            "completion_rate",
            "Completion rate" if rate_ok else f"Completion rate ({NOT_MEANINGFUL})",
            fraction(completed, count) if rate_ok else None,
            "percent",
        ),
        Figure("overdue", "Overdue", int(totals.overdue or 0), "int"),
    ]
    columns = (
        Column("activities", "Activities", "int"),
        Column("completed", "Completed", "int"),
        Column("overdue", "Overdue", "int"),
        Column(
            "completion_rate",
            "Completion rate" if rate_ok else f"Completion rate ({NOT_MEANINGFUL_SHORT})",
            "percent",
        ),
    )

    def values(row: Any) -> tuple[Any, ...]:
        n, finished = int(row.n), int(row.done or 0)
        return (n, finished, int(row.overdue or 0), fraction(finished, n) if rate_ok else None)

    by_type = sorted(grouped(A.c.type.label("k")), key=lambda r: (-int(r.n), r.k))
    tables = [
        Table("activities_by_type", "Activities by type",
              (Column("type", "Type", "text"), *columns),
              tuple((row.k, *values(row)) for row in by_type)),
    ]  # fmt: skip
    names = _owner_names(scope)
    label_of = _key_label(scope, "owner", names)
    by_owner = sorted(grouped(A.c.owner.label("k")), key=lambda r: (-int(r.n), _label(r.k)))
    tables.append(
        Table("activities_by_owner", "Activities by owner",
              (Column("owner", "Owner", "text"), *columns),
              tuple((label_of(row.k), *values(row)) for row in by_owner))
    )  # fmt: skip
    firsts = periods(scope.period, scope.start, scope.end)
    labels = [period_label(scope.period, first) for first in firsts]
    found = {row.k: row for row in grouped(bucket)}
    tables.append(
        Table("activities_by_period", f"Activities by {scope.period}",
              (Column("period", scope.period.capitalize(), "text"), *columns),
              tuple(  # the periods with activities (the chart shows them all)
                  (label, *values(found[first.isoformat()]))
                  for first, label in zip(firsts, labels, strict=True)
                  if first.isoformat() in found
              ))
    )  # fmt: skip
    if "status" in scope.breakdowns:
        by_status = {row.k: row for row in grouped(status.label("k"))}
        tables.append(
            Table("activities_by_status", "Activities by status",
                  (Column("status", "Status", "text"), *columns),
                  tuple((s, *values(by_status[s])) for s in ("completed", "open", "overdue")
                        if s in by_status))
        )  # fmt: skip
    types = [row.k for row in by_type]
    per_period_type = {
        (row.k, row.kind): int(row.n) for row in grouped(bucket, A.c.type.label("kind"))
    }
    charts = [
        Chart("activities_by_type", "Activities by type", "bar", tuple(types),
              (Series("Activities", tuple(int(row.n) for row in by_type)),),
              x_title="Type", y_title="Activities"),
        Chart("activities_by_period", f"Activities by {scope.period} and type", "stacked_bar",
              tuple(labels),
              tuple(Series(t, tuple(per_period_type.get((first.isoformat(), t), 0)
                                    for first in firsts)) for t in types),
              x_title=scope.period.capitalize(), y_title="Activities"),
    ]  # fmt: skip
    return figures, tables, charts, count == 0


BUILDERS: dict[str, Callable[[Scope], Built]] = {
    "sales": _sales,
    "pipeline": _pipeline,
    "contact-growth": _contact_growth,
    "activity": _activity,
}
