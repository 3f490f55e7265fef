"""A report (`crmqueue.reports.model.ReportData`) as HTML, PDF or XLSX.

- `render_html(data)`: one self-contained page: CSS in a `<style>` element, charts as
  inline `<svg>` (crmqueue.reports.charts), no script, no font, image, link or URL
  reference of any kind, and a Content-Security-Policy of `default-src 'none'` so that a
  browser would fetch nothing even if something slipped through.
- `render_pdf(data, path)`: the same content through xhtml2pdf (templates/reports/
  report.pdf.j2) under crmqueue.formats.pdf's no-fetch ResourceAccessPolicy, with the
  PDF exports' Unicode fonts: a cover header (tenant, report, period, generated time and
  zone, filters), "Page N of M" in the footer, table headers repeated on every page, and
  each chart as a ReportLab Drawing placed in the flow, i.e. vector graphics (see
  `_ChartTag`).
- `render_xlsx(data, path)`: XlsxWriter: a "Summary" sheet (cover, headline figures,
  native charts), a "Chart data" sheet the charts read, one sheet a table with typed
  cells (numbers, dates, currency, percent and date formats), a frozen header row and
  column widths from the longest value.

Every value is the tenant's: Jinja2 autoescapes it in HTML and PDF, ReportLab writes
chart text as text, and XLSX text goes into string cells, which no spreadsheet runs as a
formula, as exports write it (crmqueue.formats.writers.xlsx_text).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import io
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from markupsafe import Markup

from crmqueue.formats.pdf import FONT_FAMILY, html_to_pdf, missing_glyphs, register_fonts
from crmqueue.formats.writers import xlsx_text
from crmqueue.reports import charts
from crmqueue.reports.model import (
    NO_DATA,
    ColumnKind,
    ReportData,
    Table,
    empty_message,
    percent_text,
)

__all__ = ["NO_DATA", "format_value", "render_html", "render_pdf", "render_xlsx"]

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates" / "reports"
# Excel's limit on a sheet name, and the characters it refuses in one.
_SHEET_CHARS = 31
_SHEET_FORBIDDEN = re.compile(r"[\[\]:*?/\\]")
_CURRENCY_CODE = re.compile(r"[A-Z]{3}")
_MAX_WIDTH = 60  # characters: a wider column wraps in the spreadsheet program
# Rows of one table in the PDF. xhtml2pdf takes about 5 ms a cell on this machine, and
# longer with every page a table runs over (a year by day is 730 rows in two currencies:
# 20 s); a report is read, not searched, and its HTML and XLSX hold every row. The PDF
# says how many rows it leaves out.
MAX_PDF_TABLE_ROWS = 250
# The PDF template's page: A4 less 1.4 cm a side, cells of 8.5 pt text padded 4 pt a side.
_PDF_FRAME_WIDTH = 595.3 - 2 * 39.7
_PDF_FONT_PT = 8.5
_PDF_CELL_PADDING = 10.0


# --------------------------------------------------------------------------- values


def format_value(value: Any, kind: ColumnKind, currency: str | None = None) -> str:
    """A value as people read it in HTML and PDF: 1,234 / 1,234.50 / 25.0 % / 2025-01-31 /
    3.5; None as an en dash; money followed by its currency code when given."""
    if value is None:
        return "–"
    if kind == "int" and isinstance(value, int | Decimal | float):
        return f"{int(value):,}"
    if kind in ("money", "decimal") and isinstance(value, int | Decimal | float):
        text = f"{Decimal(value):,.2f}"
        return f"{text} {currency}" if currency else text
    if kind == "percent" and isinstance(value, int | Decimal | float):
        return percent_text(value)
    if kind == "days" and isinstance(value, int | Decimal | float):
        return f"{Decimal(value):,.1f}"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="minutes")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _numeric(kind: ColumnKind) -> bool:
    return kind in ("int", "money", "decimal", "percent", "days")


def _generated(data: ReportData) -> str:
    """The generated time in the report's time zone, with UTC beside it."""
    at = data.generated_at.astimezone(dt.UTC)
    utc = at.strftime("%Y-%m-%d %H:%M UTC")
    if data.time_zone in ("UTC", "Etc/UTC"):
        return utc
    try:
        local = at.astimezone(ZoneInfo(data.time_zone))
    except (KeyError, ValueError):
        return utc
    return f"{local.strftime('%Y-%m-%d %H:%M')} {data.time_zone} ({utc})"


def _cover(data: ReportData) -> list[tuple[str, str]]:
    """(label, text) lines of the cover, in every format."""
    lines = [
        ("Tenant", data.tenant_id),
        ("Period", f"{data.start.isoformat()} – {data.end.isoformat()} ({data.time_zone})"),
        ("Generated", _generated(data)),
    ]
    if data.filters:
        lines.append(("Filters", ", ".join(f"{k} = {v}" for k, v in data.filters.items())))
    if data.dimensions:
        lines.append(("Dimensions", ", ".join(data.dimensions)))
    return lines


def _currency_index(table: Table) -> int | None:
    for index, column in enumerate(table.columns):
        if column.key == "currency":
            return index
    return None


def _pdf_text(value: Any) -> Any:
    """What the PDF prints for a text: NFC (ReportLab places no combining marks), and a
    character no bundled font draws (Thai, Devanagari, control characters) as U+FFFD, as
    PDF exports print it (crmqueue.formats.pdf), rather than a blank or a box."""
    if not isinstance(value, str) or (value.isascii() and value.isprintable()):
        return value
    text = unicodedata.normalize("NFC", value)
    lacking = missing_glyphs(text)
    if not lacking:
        return text
    return "".join((" " if ch.isspace() else "\ufffd") if ch in lacking else ch for ch in text)


@functools.cache
def _environment(pdf: bool = False) -> jinja2.Environment:
    """The report templates' Jinja2 environment (autoescaped); for the PDF, every value
    printed passes `_pdf_text` first."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
        finalize=_pdf_text if pdf else None,
    )
    env.globals["format_value"] = format_value
    env.globals["numeric"] = _numeric
    return env


def _table_rows(table: Table) -> Iterator[list[tuple[str, bool]]]:
    """Each row as (text, right-aligned) cells; money cells carry no code (the table's
    currency column says it)."""
    for row in table.rows:
        yield [
            (format_value(value, column.kind), _numeric(column.kind))
            for value, column in zip(row, table.columns, strict=False)
        ]


def _widths(table: Table, rows: Sequence[Sequence[tuple[str, bool]]]) -> list[float]:
    """Column widths (percent of the frame) for the PDF, from the texts' printed widths:
    numbers, dates and codes never wrap (their columns get their widest text), and text
    columns share the rest in proportion to their widest text (up to 60 characters)."""
    from reportlab.pdfbase.pdfmetrics import stringWidth  # type: ignore[import-untyped]

    register_fonts()
    need = []
    for index, column in enumerate(table.columns):
        widest = stringWidth(column.title, "DejaVuSans-Bold", _PDF_FONT_PT)
        for row in rows:
            if index < len(row):
                text = row[index][0][:60]
                widest = max(widest, stringWidth(text, "DejaVuSans", _PDF_FONT_PT))
        need.append(widest + _PDF_CELL_PADDING)
    fixed = [column.kind != "text" or column.key == "currency" for column in table.columns]
    room = _PDF_FRAME_WIDTH
    if sum(need) > room:
        rest = room - sum(w for w, f in zip(need, fixed, strict=True) if f)
        wanted = sum(w for w, f in zip(need, fixed, strict=True) if not f) or 1.0
        share = max(rest, 0.3 * room) / wanted
        # a short text (a name, an id: up to 80 pt) keeps its width; long ones wrap
        need = [w if f else max(min(w, 80.0), w * share) for w, f in zip(need, fixed, strict=True)]
    total = sum(need) or 1.0
    return [round(100 * w / total, 2) for w in need]


def _context(data: ReportData, max_rows: int | None = None) -> dict[str, Any]:
    """What the templates read; tables cut to `max_rows` rows each when given (the PDF:
    `MAX_PDF_TABLE_ROWS`), with `omitted` saying how many rows each left out."""
    tables = [(table, list(_table_rows(table))) for table in data.tables]
    return {
        "data": data,
        "cover": _cover(data),
        "no_data": empty_message(data),
        "figures": [
            (figure.label, format_value(figure.value, figure.kind, figure.currency))
            for figure in data.figures
        ],
        "tables": [
            (table, rows[:max_rows], _widths(table, rows[:max_rows])) for table, rows in tables
        ],
        "omitted": [max(0, len(rows) - max_rows) if max_rows else 0 for _, rows in tables],
        "font_family": FONT_FAMILY,
    }


# --------------------------------------------------------------------------- HTML


def render_html(data: ReportData, charted: Callable[[], None] | None = None) -> bytes:
    """The report as one self-contained UTF-8 HTML document (see the module docstring).
    `charted()` is called once the charts are drawn (a job reports it as a step)."""
    context = _context(data)
    # Markup: renderSVG escapes every text it writes (see crmqueue.reports.charts)
    context["charts"] = [] if data.empty else [Markup(charts.svg(c)) for c in data.charts]
    if charted is not None:
        charted()
    return _environment().get_template("report.html.j2").render(context).encode("utf-8")


# --------------------------------------------------------------------------- PDF

# The Drawings of the document being rendered: `<crmqueuechart data-index="N">` places
# the N-th. xhtml2pdf renders one document at a time in a process (its own lock).
_drawings: contextvars.ContextVar[Sequence[Any]] = contextvars.ContextVar("report_drawings")


@functools.cache
def _register_chart_tag() -> None:
    """Teach xhtml2pdf the `<crmqueuechart>` element: it adds a ReportLab Drawing to the
    story as a flowable, so the chart is drawn as vectors in the flow of the document.

    xhtml2pdf has no API for custom elements: its parser looks an element's handler up as
    `pisaTag<NAME>` among the names of `xhtml2pdf.parser`, so one more name there is the
    whole hook (it replaces nothing). The alternatives were worse: an SVG `<img>` is
    rasterised (renderPM), and `<canvas type="graph">` draws its own charts from JSON,
    not the Drawing the HTML's SVG comes from."""
    from xhtml2pdf import parser, tags  # type: ignore[import-untyped]
    from xhtml2pdf.xhtml2pdf_reportlab import PmlDrawing  # type: ignore[import-untyped]

    class ChartTag(tags.pisaTag):  # type: ignore[misc]
        def start(self, c: Any) -> None:
            c.addPara()

        def end(self, c: Any) -> None:
            drawings = _drawings.get(())
            try:
                index = int(self.node.getAttribute("data-index"))
                chart = drawings[index]
            except (ValueError, IndexError):
                return
            # xhtml2pdf's own Drawing: it takes the margins a block flowable gets, and
            # scales itself down to a frame narrower than it.
            placed = PmlDrawing(chart.width, chart.height)
            for shape in chart.contents:
                placed.add(shape)
            placed.hAlign = "CENTER"
            c.addStory(placed)

    parser.pisaTagCRMQUEUECHART = ChartTag


def pdf_source(data: ReportData) -> str:
    """The XHTML xhtml2pdf renders (charts as `<crmqueuechart>` placeholders)."""
    context = _context(data, MAX_PDF_TABLE_ROWS)
    context["charts"] = [] if data.empty else [chart.title for chart in data.charts]
    return _environment(pdf=True).get_template("report.pdf.j2").render(context)


def render_pdf(data: ReportData, path: Path, charted: Callable[[], None] | None = None) -> int:
    """Write the report as a PDF to `path` (see the module docstring); returns its size in
    bytes. Raises PermanentError when xhtml2pdf reports errors. `charted()` is called once
    the charts are drawn."""
    _register_chart_tag()
    drawings = [] if data.empty else [charts.drawing(chart) for chart in data.charts]
    if charted is not None:
        charted()
    source = pdf_source(data)
    buffer = io.BytesIO()
    token = _drawings.set(drawings)
    try:
        html_to_pdf(source, buffer)
    finally:
        _drawings.reset(token)
    _set_pdf_metadata(buffer, data)
    path.write_bytes(buffer.getvalue())
    return len(buffer.getvalue())


def _set_pdf_metadata(buffer: io.BytesIO, data: ReportData) -> None:
    """Title, author and creator in the document information (xhtml2pdf leaves the
    creator "(unspecified)" and the author empty)."""
    from pypdf import PdfReader, PdfWriter

    buffer.seek(0)
    writer = PdfWriter(clone_from=PdfReader(buffer))
    writer.add_metadata({
        "/Title": f"{data.title} {data.start.isoformat()} – {data.end.isoformat()}",
        "/Author": f"crmqueue for tenant {data.tenant_id}",
        "/Creator": "crmqueue report queue",
        "/Subject": f"{data.title} for tenant {data.tenant_id}",
    })  # fmt: skip
    buffer.seek(0)
    buffer.truncate()
    writer.write(buffer)


# --------------------------------------------------------------------------- XLSX


class _Formats:
    """XlsxWriter formats, one per kind (and per currency code: `#,##0.00 "EUR"`)."""

    NUMBER = {
        "int": "#,##0",
        "money": "#,##0.00",
        "decimal": "#,##0.00",
        "percent": "0.0%",
        "days": "0.0",
        "date": "yyyy-mm-dd",
    }

    def __init__(self, book: Any) -> None:
        self.book = book
        self.bold = book.add_format({"bold": True})
        self.header = book.add_format(
            {"bold": True, "bg_color": "#D9E1EC", "bottom": 1, "border_color": "#7A8799"}
        )
        self.header_right = book.add_format(
            {"bold": True, "bg_color": "#D9E1EC", "bottom": 1, "border_color": "#7A8799",
             "align": "right"}
        )  # fmt: skip
        self.header_right_plain = book.add_format({"align": "right"})
        self.title = book.add_format({"bold": True, "font_size": 14})
        self.muted = book.add_format({"font_color": "#666666"})
        self._cache: dict[tuple[str, str | None], Any] = {}

    def of(self, kind: ColumnKind, currency: str | None = None) -> Any:
        code = (
            currency
            if kind == "money" and currency and _CURRENCY_CODE.fullmatch(currency)
            else None
        )
        key = (kind, code)
        if key not in self._cache:
            number = self.NUMBER.get(kind)
            if code is not None:
                number = f'#,##0.00 "{code}"'
            self._cache[key] = self.book.add_format({"num_format": number} if number else {})
        return self._cache[key]


def _write_cell(sheet: Any, row: int, col: int, value: Any, kind: ColumnKind, fmt: Any) -> str:
    """Write one typed cell; returns its text as shown (for the column width)."""
    if value is None:
        return ""
    if kind == "date" and isinstance(value, dt.datetime):
        sheet.write_datetime(row, col, value.replace(tzinfo=None), fmt)
        return value.isoformat(sep=" ", timespec="minutes")
    if kind == "date" and isinstance(value, dt.date):
        sheet.write_datetime(row, col, value, fmt)
        return value.isoformat()
    if isinstance(value, bool):
        sheet.write_boolean(row, col, value)
        return str(value)
    if _numeric(kind) and isinstance(value, int | float | Decimal):
        sheet.write_number(row, col, float(value), fmt)
        return format_value(value, kind)
    text = xlsx_text(str(value if isinstance(value, str) else format_value(value, kind)))
    sheet.write_string(row, col, text)
    return text


def _sheet_names(tables: Sequence[Table]) -> list[str]:
    """A unique sheet name per table from its title (Excel: 31 characters, none of
    []:*?/\\, not 'Summary' or 'Chart data', unique ignoring case)."""
    taken = {"summary", "chart data"}
    names = []
    for table in tables:
        base = _SHEET_FORBIDDEN.sub("_", table.title).strip("' ") or table.key or "Table"
        name = base[:_SHEET_CHARS]
        number = 2
        while name.lower() in taken:
            suffix = f" ({number})"
            name = base[: _SHEET_CHARS - len(suffix)] + suffix
            number += 1
        taken.add(name.lower())
        names.append(name)
    return names


def _fit(sheet: Any, widths: list[int]) -> None:
    for col, width in enumerate(widths):
        sheet.set_column(col, col, min(_MAX_WIDTH, max(8, width + 2)))


def _write_table(book: Any, formats: _Formats, name: str, table: Table) -> None:
    sheet = book.add_worksheet(name)
    currency_at = _currency_index(table)
    widths = [len(column.title) + 1 for column in table.columns]
    for col, column in enumerate(table.columns):
        style = formats.header_right if _numeric(column.kind) else formats.header
        sheet.write_string(0, col, xlsx_text(str(column.title)), style)
    for line, row in enumerate(table.rows, start=1):
        currency = row[currency_at] if currency_at is not None else None
        for col, (value, column) in enumerate(zip(row, table.columns, strict=False)):
            code = currency if isinstance(currency, str) else None
            fmt = formats.of(column.kind, code)
            shown = _write_cell(sheet, line, col, value, column.kind, fmt)
            widths[col] = max(widths[col], len(shown) + (4 if column.kind == "money" else 0))
    if not table.rows:
        sheet.write_string(1, 0, "No rows.", formats.muted)
    sheet.freeze_panes(1, 0)
    if table.rows:
        sheet.autofilter(0, 0, len(table.rows), max(0, len(table.columns) - 1))
    _fit(sheet, widths)


def render_xlsx(data: ReportData, path: Path, charted: Callable[[], None] | None = None) -> int:
    """Write the report as an XLSX workbook to `path` (see the module docstring); returns
    its size in bytes. `charted()` is called once the charts are added."""
    import xlsxwriter  # type: ignore[import-untyped]

    book = xlsxwriter.Workbook(
        str(path),
        {"strings_to_formulas": False, "strings_to_urls": False, "strings_to_numbers": False},
    )
    try:
        formats = _Formats(book)
        summary = book.add_worksheet("Summary")
        data_sheet = book.add_worksheet("Chart data")
        summary.write_string(0, 0, xlsx_text(str(data.title)), formats.title)
        row = 2
        for label, text in _cover(data):
            summary.write_string(row, 0, label, formats.bold)
            summary.write_string(row, 1, xlsx_text(str(text)))
            row += 1
        row += 1
        if data.empty:
            summary.write_string(row, 0, empty_message(data), formats.bold)
            row += 2
        widths = [12, 14, 10]
        if data.figures:
            summary.write_string(row, 0, "Figure", formats.header)
            summary.write_string(row, 1, "Value", formats.header_right)
            summary.write_string(row, 2, "Currency", formats.header)
            row += 1
            for figure in data.figures:
                widths[0] = max(widths[0], len(figure.label))
                summary.write_string(row, 0, xlsx_text(str(figure.label)))
                if figure.value is None:  # e.g. the average of no deals: say so, no blank
                    summary.write_string(row, 1, "–", formats.header_right_plain)
                    shown = "–"
                else:
                    shown = _write_cell(summary, row, 1, figure.value, figure.kind,
                                        formats.of(figure.kind, figure.currency))  # fmt: skip
                widths[1] = max(widths[1], len(shown) + 4)
                if figure.currency:
                    summary.write_string(row, 2, xlsx_text(str(figure.currency)))
                row += 1
            row += 1
        _fit(summary, widths)
        data_row = 0
        widest = 10
        for chart in () if data.empty else data.charts:
            native, data_row = charts.add_xlsx_chart(
                book, chart, data_sheet, data_row, formats.bold
            )
            widest = max([widest, *(len(c) for c in chart.categories)])
            if native is not None:
                summary.insert_chart(row, 0, native)
                row += 16  # 300 px at the default 20 px a row
        if charted is not None:
            charted()
        data_sheet.set_column(0, 0, min(_MAX_WIDTH, widest + 2))
        data_sheet.set_column(1, 20, 14)
        for name, table in zip(_sheet_names(data.tables), data.tables, strict=True):
            _write_table(book, formats, name, table)
        summary.activate()
    finally:
        book.close()
    return path.stat().st_size
