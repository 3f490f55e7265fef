"""Streaming writers for exports (CSV, XLSX in write-only mode) with formula-injection
escaping: a text cell starting with = + - @ tab CR or LF gets a leading apostrophe, so
spreadsheet programs show it as text instead of evaluating it."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")


def escape_cell(value: Any) -> Any:
    """Text that a spreadsheet would run as a formula, prefixed with `'`; other values
    (numbers, dates, None) unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, str):
        return str(escape_cell(value))
    return str(value)


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Write a UTF-8 CSV (with BOM, so spreadsheet programs pick the encoding); returns the
    number of data rows."""
    count = 0
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([_csv_cell(c) for c in columns])
        for row in rows:
            writer.writerow([_csv_cell(value) for value in row])
            count += 1
    return count


def _xlsx_cell(value: Any) -> Any:
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)  # Excel has no time zones
    if isinstance(value, Decimal):
        return float(value)
    return escape_cell(value)


def write_xlsx(
    path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "Export"
) -> int:
    """Write an XLSX in openpyxl's write-only mode (rows streamed to disk)."""
    from openpyxl import Workbook  # type: ignore[import-untyped]

    book = Workbook(write_only=True)
    sheet = book.create_sheet(title=title[:31])
    sheet.append([_xlsx_cell(c) for c in columns])
    count = 0
    for row in rows:
        sheet.append([_xlsx_cell(value) for value in row])
        count += 1
    book.save(path)
    return count
