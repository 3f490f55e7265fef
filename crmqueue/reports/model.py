"""What a report is, independent of its format: headline figures, tables and chart
descriptions. `crmqueue.reports.queries.build_report` computes one; the renderers draw
it as HTML, PDF or XLSX."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

__all__ = [
    "Chart",
    "Column",
    "ColumnKind",
    "Figure",
    "ReportData",
    "Series",
    "Table",
    "empty_message",
    "percent_text",
]

ColumnKind = Literal["text", "int", "money", "decimal", "percent", "date", "days"]


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    kind: ColumnKind


@dataclass(frozen=True)
class Table:
    key: str  # "revenue_by_period"
    title: str  # "Won revenue by month"
    columns: tuple[Column, ...]
    # str | int | Decimal | date | None per column kind; money is Decimal with a
    # "currency" text column beside it; percent is a Decimal fraction (0.25 = 25 %).
    rows: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class Figure:
    """A headline figure."""

    key: str
    label: str
    value: Decimal | int | None
    kind: ColumnKind
    currency: str | None = None


@dataclass(frozen=True)
class Series:
    name: str
    values: tuple[Decimal | int, ...]


@dataclass(frozen=True)
class Chart:
    key: str
    title: str
    kind: Literal["bar", "stacked_bar", "line"]
    categories: tuple[str, ...]  # x labels ("2025-01", "Qualified", ...)
    series: tuple[Series, ...]  # one per currency / source / type ...
    x_title: str = ""
    y_title: str = ""


@dataclass(frozen=True)
class ReportData:
    report_type: str  # sales | pipeline | contact-growth | activity
    title: str  # "Sales report"
    tenant_id: str
    start: date  # inclusive, in time_zone
    end: date  # inclusive, in time_zone
    time_zone: str  # IANA name
    generated_at: datetime  # aware, UTC
    filters: Mapping[str, str]  # as the user gave them, for the cover
    dimensions: tuple[str, ...]
    figures: tuple[Figure, ...]
    tables: tuple[Table, ...]
    charts: tuple[Chart, ...]
    empty: bool  # no data in this period: renderers say so


_PERCENT_STEP = Decimal("0.1")


def percent_text(value: Decimal | int | float) -> str:
    """A fraction (0.25) as a percentage with one decimal ("25.0 %"), rounded once, half
    away from zero, from the value as computed: the rule Excel's "0.0%" number format
    applies to the same cell, so HTML, PDF, XLSX and the command line agree (1/16 is
    6.3 % everywhere, 6/11 is 54.5 %)."""
    percent = (Decimal(value) * 100).quantize(_PERCENT_STEP, ROUND_HALF_UP)
    return f"{percent:,.1f} %"


NO_DATA = "No data in this period."
NO_MATCH = "Nothing in this period matches the filters."


def empty_message(data: ReportData) -> str:
    """What an empty report says: with filters, that nothing matches them (the period may
    well have data); else that the period has none."""
    return NO_MATCH if data.filters else NO_DATA
