"""What a report job may ask for: its filters and dimensions per report type, checked at
enqueue (crmqueue.payloads.ReportPayload) and read the same way by the queries
(crmqueue.reports.queries). Issue #13 item 1 gives the vocabulary; filter values keep the
original system's spelling (`status: "closed-won"`, `minAmount`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "ACTIVITY_STATUSES",
    "DIMENSIONS",
    "FILTERS",
    "LEAD_STATUSES",
    "PERIODS",
    "REPORT_TYPES",
    "ReportFilters",
    "check_dimensions",
    "check_filters",
]

REPORT_TYPES = ("sales", "pipeline", "contact-growth", "activity")
# Period dimensions: at most one per report (month when none is given).
PERIODS = ("day", "week", "month", "quarter", "year")
# The breakdowns beside the period that each report type can group by.
DIMENSIONS: dict[str, tuple[str, ...]] = {
    "sales": ("owner", "stage", "source", "company", "status"),
    "pipeline": ("owner", "stage", "source", "company"),
    "contact-growth": ("source", "status", "company"),
    "activity": ("owner", "status"),
}
FILTERS: dict[str, tuple[str, ...]] = {
    "sales": ("status", "stage", "owner", "source", "min_amount", "max_amount", "currency"),
    "pipeline": ("status", "stage", "owner", "source", "min_amount", "max_amount", "currency"),
    "contact-growth": ("status", "source"),
    "activity": ("status", "owner"),
}
# A filter key in the original's camelCase -> ours.
_FILTER_NAMES = {"minAmount": "min_amount", "maxAmount": "max_amount"}
# A lead status as a filter may name it (the original's lead vocabulary too) -> the stored
# statuses it stands for.
LEAD_STATUSES: dict[str, tuple[str, ...]] = {
    "open": ("open",),
    "won": ("won",),
    "lost": ("lost",),
    "closed": ("won", "lost"),
    "closed-won": ("won",),
    "closed-lost": ("lost",),
}
# An activity's state: done, not done and not yet due (or without a due time), past due.
ACTIVITY_STATUSES = ("completed", "open", "overdue")
# The widths of the columns a text filter compares with (crmqueue.crm.schema).
_TEXT_LIMITS = {"stage": 50, "owner": 64, "source": 100}
# leads.amount is NUMERIC(14, 2).
MAX_AMOUNT = Decimal("999999999999.99")
# Values one list filter may hold: each is a bound parameter, and PostgreSQL refuses a
# statement with more than 65,535 of them (SQLite takes more), so a bound well below that,
# for every filter of every report type, keeps both backends alike; a longer list is a
# sign of a mistake (a report over 1,000 owners is a report without an owner filter).
MAX_FILTER_VALUES = 1000
_PLAIN_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


@dataclass(frozen=True)
class ReportFilters:
    """Checked filters in stored terms: each tuple is "any of these" (empty: no filter);
    `status` holds stored statuses (won, lost, open; a contact status in its configured
    spelling; completed, open, overdue for activities)."""

    status: tuple[str, ...] = ()
    stage: tuple[str, ...] = ()
    owner: tuple[str, ...] = ()
    source: tuple[str, ...] = ()
    currency: tuple[str, ...] = ()
    min_amount: Decimal | None = None
    max_amount: Decimal | None = None


def _texts(value: Any) -> list[str] | str:
    """The filter's values, or the reason it has none usable."""
    values = value if isinstance(value, list) else [value]
    if not values:
        return "an empty list matches nothing: leave the filter out"
    if len(values) > MAX_FILTER_VALUES:
        return f"{len(values)} values; at most {MAX_FILTER_VALUES}"
    if not all(isinstance(item, str) and item.strip() for item in values):
        return "a non-empty text or a list of them"
    return [item.strip() for item in values]


def _amount(value: Any) -> Decimal | str:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return "a number, such as 50000 or 1250.50"
    # Text is a plain decimal number: Decimal() would also read "5_000", " 5 " and "1E2".
    if isinstance(value, str) and not _PLAIN_NUMBER.fullmatch(value):
        return "a number, such as 50000 or 1250.50"
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return "a number, such as 50000 or 1250.50"
    if not amount.is_finite() or amount < 0 or amount > MAX_AMOUNT:
        return f"a number from 0 to {MAX_AMOUNT}"
    if amount != amount.quantize(Decimal("0.01")):
        return "at most 2 decimal places"
    return amount


def check_filters(
    report_type: str,
    filters: Mapping[str, Any],
    contact_statuses: Sequence[str],
    stages: Sequence[str] = (),
) -> tuple[ReportFilters, list[tuple[str, str]]]:
    """`filters` (keys in snake_case or camelCase, as given in a payload) for a report of
    `report_type`: the checked filters, and (key as given, reason) for each refused one:
    a key that is no filter of this report type, a key given in both spellings, a value of
    the wrong kind or outside the stored vocabulary (a status of another kind of report,
    `open` for sales, which count closed deals only; a stage not among `stages`, the
    configured reports.stage_probabilities, when given), min_amount above max_amount.
    Stages and statuses match case-insensitively and are stored as configured."""
    allowed = FILTERS[report_type]
    errors: list[tuple[str, str]] = []
    checked: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in filters.items():
        name = _FILTER_NAMES.get(key, key)
        if name not in allowed:
            known = any(name in names for names in FILTERS.values())
            what = f"not a filter of {report_type} reports" if known else "unknown filter"
            errors.append((key, f"{what} (filters: {', '.join(allowed)})"))
            continue
        if name in given_as:
            errors.append((key, f"given twice (also as {given_as[name]!r})"))
            continue
        given_as[name] = key
        if name in ("min_amount", "max_amount"):
            amount = _amount(value)
            if isinstance(amount, str):
                errors.append((key, amount))
            else:
                checked[name] = amount
            continue
        texts = _texts(value)
        if isinstance(texts, str):
            errors.append((key, texts))
            continue
        problem = _vocabulary_problem(report_type, name, texts, contact_statuses, stages)
        if problem:
            errors.append((key, problem))
            continue
        checked[name] = _stored(report_type, name, texts, contact_statuses, stages)
    low, high = checked.get("min_amount"), checked.get("max_amount")
    if low is not None and high is not None and low > high:
        errors.append((given_as["max_amount"], f"must not be below min_amount ({low})"))
    return ReportFilters(**checked), errors


def _vocabulary_problem(
    report_type: str,
    name: str,
    texts: list[str],
    contact_statuses: Sequence[str],
    stages: Sequence[str],
) -> str | None:
    if name == "currency":
        bad = [t for t in texts if len(t) != 3 or not t.isascii() or not t.isalpha()]
        return f"{', '.join(map(repr, bad))}: a currency is 3 letters (EUR)" if bad else None
    if name == "status":
        vocabulary = _statuses(report_type, contact_statuses)
        bad = [t for t in texts if t.casefold() not in vocabulary]
        if bad:
            known = ", ".join(vocabulary)
            if report_type == "sales" and any(t.casefold() == "open" for t in bad):
                return f"'open': a sales report counts closed deals only (statuses: {known})"
            return f"{', '.join(map(repr, bad))}: not a status (statuses: {known})"
        return None
    if name == "stage" and stages:
        folded = {stage.casefold() for stage in stages}
        bad = [t for t in texts if t.casefold() not in folded]
        if bad:
            return (
                f"{', '.join(map(repr, bad))}: not a configured stage "
                f"(stages: {', '.join(stages)}; reports.stage_probabilities)"
            )
    limit = _TEXT_LIMITS[name]
    long = [t for t in texts if len(t) > limit]
    return f"longer than {limit} characters" if long else None


def _statuses(report_type: str, contact_statuses: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """casefolded status as a filter may give it -> the stored statuses it means."""
    if report_type == "contact-growth":
        return {status.casefold(): (status,) for status in contact_statuses}
    if report_type == "activity":
        return {status: (status,) for status in ACTIVITY_STATUSES}
    if report_type == "sales":
        return {name: stored for name, stored in LEAD_STATUSES.items() if "open" not in stored}
    return LEAD_STATUSES


def _stored(
    report_type: str,
    name: str,
    texts: list[str],
    contact_statuses: Sequence[str],
    stages: Sequence[str],
) -> tuple[str, ...]:
    if name == "stage" and stages:
        spelled = {stage.casefold(): stage for stage in stages}
        return tuple(dict.fromkeys(spelled[t.casefold()] for t in texts))
    if name == "currency":
        return tuple(dict.fromkeys(t.upper() for t in texts))
    if name == "status":
        vocabulary = _statuses(report_type, contact_statuses)
        return tuple(dict.fromkeys(s for t in texts for s in vocabulary[t.casefold()]))
    return tuple(dict.fromkeys(texts))


def check_dimensions(
    report_type: str, dimensions: Sequence[str]
) -> tuple[tuple[str, tuple[str, ...]], list[tuple[int, str]]]:
    """((period, breakdowns), errors) of the `dimensions` of a `report_type` report: the
    period unit (month when none is given) and the other dimensions in the order given;
    (index, reason) for an unknown dimension, one that does not apply to the type, a
    second period or a repeated dimension."""
    allowed = DIMENSIONS[report_type]
    period: str | None = None
    breakdowns: list[str] = []
    errors: list[tuple[int, str]] = []
    for index, dimension in enumerate(dimensions):
        if dimension in PERIODS:
            if period is not None:
                errors.append(
                    (index, f"{dimension!r}: a second period ({period!r} is given already)")
                )
            else:
                period = dimension
        elif dimension in breakdowns:
            errors.append((index, f"{dimension!r}: given twice"))
        elif dimension in allowed:
            breakdowns.append(dimension)
        else:
            known = any(dimension in names for names in DIMENSIONS.values())
            what = f"not a dimension of {report_type} reports" if known else "unknown dimension"
            errors.append(
                (
                    index,
                    f"{dimension!r}: {what} "
                    f"(dimensions: {'|'.join(PERIODS)}, {', '.join(allowed)})",
                )
            )
    return (period or "month", tuple(breakdowns)), errors
