"""Streaming writers for exports (CSV, XLSX in write-only mode) with formula-injection
escaping. CSV: a text cell starting with = + - @ tab CR or LF gets a leading apostrophe,
so spreadsheet programs show it as text instead of evaluating it (OWASP, "CSV
Injection"). XLSX: text is a string cell, which no spreadsheet program runs as a formula,
so `+49 30 1234` and `=SUM(A1)` are written as they are, without a visible apostrophe
(see xlsx_text for the few that keep one).

Nothing is cut silently: what a format cannot hold as stored is written as near as it can
be and recorded in an `ExportNotes` (the job's result lists the cells, the export-ready
email says so). XLSX: a text over Excel's 32,767 characters a cell (counted in UTF-16
units, as Excel does) is cut; a date before 1900, which Excel's dates cannot hold, is
written as ISO 8601 text; rows past Excel's 1,048,576 a sheet continue on another sheet.
CSV holds every value. PDF (crmqueue.formats.pdf): long texts are shortened for reading
and characters without a glyph in the embedded fonts print as U+FFFD, reported by row."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

# Excel's specifications and limits (Microsoft support, "Excel specifications and limits"):
# 32,767 characters in a cell, 1,048,576 rows a worksheet, dates from 1900-01-01.
XLSX_MAX_CELL_CHARS = 32_767
XLSX_MAX_ROWS = 1_048_576
XLSX_FIRST_DATE = dt.date(1900, 1, 1)
# Cells listed one by one in a result; past this only counted.
MAX_LISTED_CELLS = 1000


def cell_name(row: int, col: int) -> str:
    """The A1 name of a zero-based (row, column): (2, 27) -> "AB3"."""
    letters = ""
    col += 1
    while col:
        col, rest = divmod(col - 1, 26)
        letters = chr(65 + rest) + letters
    return f"{letters}{row + 1}"


@dataclass
class ExportNotes:
    """What an export could not write exactly as stored. Rows are record numbers (1: the
    first record after the header); `cell` is the XLSX cell ("contacts!C3")."""

    cut: list[dict[str, Any]] = field(default_factory=list)
    cut_total: int = 0
    cut_limit: int = 0  # characters a cell holds in this format
    as_text: list[dict[str, Any]] = field(default_factory=list)
    as_text_total: int = 0
    missing_glyph_rows: list[int] = field(default_factory=list)
    missing_glyph_rows_total: int = 0
    missing_glyphs: set[str] = field(default_factory=set)
    sheets: int = 1

    def add_cut(self, row: int, column: str, length: int, cell: str | None = None) -> None:
        self.cut_total += 1
        if len(self.cut) < MAX_LISTED_CELLS:
            entry: dict[str, Any] = {"row": row, "column": column, "length": length}
            if cell is not None:
                entry["cell"] = cell
            self.cut.append(entry)

    def add_as_text(self, row: int, column: str, value: str, cell: str | None = None) -> None:
        self.as_text_total += 1
        if len(self.as_text) < MAX_LISTED_CELLS:
            entry: dict[str, Any] = {"row": row, "column": column, "value": value}
            if cell is not None:
                entry["cell"] = cell
            self.as_text.append(entry)

    def add_missing_glyphs(self, row: int, characters: Iterable[str]) -> None:
        if not self.missing_glyph_rows or self.missing_glyph_rows[-1] != row:
            self.missing_glyph_rows_total += 1
            if len(self.missing_glyph_rows) < MAX_LISTED_CELLS:
                self.missing_glyph_rows.append(row)
        self.missing_glyphs.update(characters)

    def result(self) -> dict[str, Any]:
        """The notes as JSON-ready fields of a job result (only those that apply)."""
        out: dict[str, Any] = {}
        if self.cut_total:
            out["cut_cells"] = self.cut
            out["cut_cells_total"] = self.cut_total
            out["cut_cell_limit"] = self.cut_limit
        if self.as_text_total:
            out["cells_as_text"] = self.as_text
            out["cells_as_text_total"] = self.as_text_total
        if self.missing_glyph_rows_total:
            out["missing_glyph_rows"] = self.missing_glyph_rows
            out["missing_glyph_rows_total"] = self.missing_glyph_rows_total
            out["missing_glyphs"] = "".join(sorted(self.missing_glyphs))
        if self.sheets > 1:
            out["sheets"] = self.sheets
        return out

    def warnings(self, fmt: str) -> list[str]:
        """One sentence per kind of note, for the person who asked for the export."""
        out = []
        if self.cut_total:
            where = ", ".join(_where(entry) for entry in self.cut[:5])
            more = f" and {self.cut_total - 5} more" if self.cut_total > 5 else ""
            why = (
                f"Excel's limit of {self.cut_limit:,} characters a cell"
                if fmt == "xlsx"
                else f"{self.cut_limit:,} characters, the most a {fmt.upper()} cell shows"
            )
            out.append(
                f"{self.cut_total} cell(s) longer than {why} were cut: {where}{more}."
                " The CSV export holds the full values."
            )
        if self.as_text_total:
            where = ", ".join(_where(entry) for entry in self.as_text[:5])
            more = f" and {self.as_text_total - 5} more" if self.as_text_total > 5 else ""
            out.append(
                f"{self.as_text_total} date(s) before 1900, which Excel cannot hold as dates,"
                f" were written as text: {where}{more}."
            )
        if self.missing_glyph_rows_total:
            rows = ", ".join(map(str, self.missing_glyph_rows[:10]))
            more = (
                f" and {self.missing_glyph_rows_total - 10} more"
                if self.missing_glyph_rows_total > 10
                else ""
            )
            glyphs = " ".join(f"U+{ord(ch):04X}" for ch in sorted(self.missing_glyphs)[:10])
            out.append(
                f"{self.missing_glyph_rows_total} row(s) have characters the PDF's fonts"
                f" cannot show ({glyphs}), printed as \ufffd: rows {rows}{more}."
                " The CSV and XLSX exports hold them."
            )
        if self.sheets > 1:
            out.append(
                f"More rows than an Excel sheet holds ({XLSX_MAX_ROWS - 1:,} after the"
                f" header): the rows continue over {self.sheets} sheets."
            )
        return out


def _where(entry: dict[str, Any]) -> str:
    return f"row {entry['row']} {entry['column']}" + (
        f" ({entry['cell']})" if "cell" in entry else ""
    )


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")
# What an import reads as an escaped cell: an apostrophe before a formula character, or
# before another apostrophe (a stored value that itself starts that way is escaped again,
# so export-then-import gives back exactly what was stored).
ESCAPED_PREFIXES = (*FORMULA_PREFIXES, "'")


def escape_cell(value: Any) -> Any:
    """Text that a spreadsheet would run as a formula, or that an import would take for an
    escaped cell, prefixed with `'`; other values (numbers, dates, None) unchanged."""
    if isinstance(value, str) and (
        value.startswith(FORMULA_PREFIXES) or (value[:1] == "'" and value[1:2] in ESCAPED_PREFIXES)
    ):
        return "'" + value
    return value


# XLSX text that keeps the apostrophe: leading whitespace an import would strip, and text
# that itself starts like an escaped cell (both read back as stored only so).
_XLSX_ESCAPED = ("\t", "\r", "\n")


def xlsx_text(value: str) -> str:
    """`value` for an XLSX string cell. A string cell is text to Excel and LibreOffice
    whatever it starts with (a formula is a cell of its own type), so formula-looking text
    needs no apostrophe there, and one would show: only text starting with tab, CR or LF,
    or with an apostrophe before a character escape_cell escapes, is prefixed, so that an
    import (crmqueue.crm.entities, unescape_cell) reads every cell back as stored."""
    if value.startswith(_XLSX_ESCAPED) or (value[:1] == "'" and value[1:2] in ESCAPED_PREFIXES):
        return "'" + value
    return value


def unescape_cell(value: str) -> tuple[str, bool]:
    """The inverse of escape_cell: (text, whether it was escaped)."""
    if value[:1] == "'" and value[1:2] and value[1:2] in ESCAPED_PREFIXES:
        return value[1:], True
    return value, False


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


def write_xlsx(
    path: Path,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    title: str = "Export",
    *,
    notes: ExportNotes | None = None,
    max_sheet_rows: int = XLSX_MAX_ROWS,
) -> int:
    """Write an XLSX row by row with XlsxWriter in constant-memory mode (each row goes to
    disk as it is written); returns the number of data rows. XlsxWriter rather than
    openpyxl's write-only mode: it writes about four times as many rows a second, which
    is what puts a million-row export under two minutes. Its automatic string
    conversions are off, so text stays text (`00123` too), written with write_string as
    a string cell, never a formula (see xlsx_text).
    What Excel cannot hold goes into `notes` (see the module docstring); past
    `max_sheet_rows` rows (header included) a sheet "<title> (2)" continues."""
    import xlsxwriter  # type: ignore[import-untyped]

    notes = notes if notes is not None else ExportNotes()
    notes.cut_limit = XLSX_MAX_CELL_CHARS
    book = xlsxwriter.Workbook(
        str(path),
        {
            "constant_memory": True,
            "strings_to_formulas": False,
            "strings_to_urls": False,
            "strings_to_numbers": False,
        },
    )
    try:
        header = book.add_format({"bold": True})
        when = book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        day = book.add_format({"num_format": "yyyy-mm-dd"})
        base_title = _sheet_title(title)
        heading = [xlsx_text(str(name)) for name in columns]

        def new_sheet(number: int) -> Any:
            suffix = f" ({number})" if number > 1 else ""
            sheet = book.add_worksheet(base_title[: 31 - len(suffix)] + suffix)
            for col, name in enumerate(heading):
                sheet.write_string(0, col, name, header)
            return sheet

        sheet = new_sheet(1)
        sheet_ref = _sheet_ref(sheet.get_name())
        line = 0  # the sheet row of the current record
        count = 0
        for count, row in enumerate(rows, start=1):
            line += 1
            if line >= max_sheet_rows:
                notes.sheets += 1
                sheet = new_sheet(notes.sheets)
                sheet_ref = _sheet_ref(sheet.get_name())
                line = 1
            for col, value in enumerate(row):
                if value is None:
                    continue
                if isinstance(value, str):
                    text = xlsx_text(value)
                    if sheet.write_string(line, col, text) == -2:  # cut by XlsxWriter
                        units = len(text.encode("utf-16-le")) // 2  # Excel counts these
                        notes.add_cut(count, columns[col], units, sheet_ref + cell_name(line, col))
                elif isinstance(value, bool):
                    sheet.write_boolean(line, col, value)
                elif isinstance(value, int | float | Decimal):
                    sheet.write_number(line, col, float(value))
                elif isinstance(value, dt.datetime):
                    if value.tzinfo is not None:  # Excel has no time zones: UTC, naive
                        value = value.astimezone(dt.UTC).replace(tzinfo=None)
                    if value.date() < XLSX_FIRST_DATE:
                        text = value.isoformat(sep=" ")
                        sheet.write_string(line, col, text)
                        notes.add_as_text(
                            count, columns[col], text, sheet_ref + cell_name(line, col)
                        )
                    else:
                        sheet.write_datetime(line, col, value, when)
                elif isinstance(value, dt.date):
                    if value < XLSX_FIRST_DATE:
                        sheet.write_string(line, col, value.isoformat())
                        cell = sheet_ref + cell_name(line, col)
                        notes.add_as_text(count, columns[col], value.isoformat(), cell)
                    else:
                        sheet.write_datetime(line, col, value, day)
                else:
                    sheet.write_string(line, col, xlsx_text(str(value)))
    finally:
        book.close()
    return count


def _sheet_ref(name: str) -> str:
    """The prefix of a cell reference on sheet `name`: contacts! or 'contacts (2)'!."""
    return f"{name}!" if name.isalnum() else "'" + name.replace("'", "''") + "'!"


def _sheet_title(title: str) -> str:
    """Excel's rules: at most 31 characters, none of []:*?/\\."""
    cleaned = "".join("_" if ch in "[]:*?/\\" else ch for ch in title).strip("'")
    return cleaned[:31] or "Export"
