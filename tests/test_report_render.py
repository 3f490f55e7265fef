"""Report documents (crmqueue.reports.render, crmqueue.reports.charts) from hand-made
ReportData: PDFs read back with pypdf, XLSX with openpyxl, HTML parsed; tenant values
that look like markup or formulas stay text in every format, and nothing is fetched (a
loopback HTTP server named in the values counts the requests it gets)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from decimal import Decimal as D
from html.parser import HTMLParser
from pathlib import Path

import pytest
import test_pdf
from openpyxl import load_workbook
from pypdf import PdfReader

from crmqueue.reports import charts, render
from crmqueue.reports.model import Chart, Column, Figure, ReportData, Series, Table
from crmqueue.reports.render import (
    MAX_PDF_TABLE_ROWS,
    format_value,
    render_html,
    render_pdf,
    render_xlsx,
)

MONTHS = tuple(f"2025-{m:02d}" for m in range(1, 13))


# A loopback HTTP server recording what is requested from it: (its base URL, the paths).
trap = test_pdf.loopback


def _evil(base: str) -> str:
    return f'<img src="file:///etc/passwd"><link rel="stylesheet" href="{base}/x.css">'


def sample(base: str = "http://127.0.0.1:9", rows: int = 12, empty: bool = False) -> ReportData:
    evil = _evil(base)
    owners = ("Alice Novak", "Bob Smith", evil, '=HYPERLINK("http://x")')
    revenue = Table(
        "revenue_by_period",
        "Won revenue by month",
        (
            Column("period", "Month", "text"),
            Column("currency", "Currency", "text"),
            Column("revenue", "Revenue", "money"),
            Column("deals", "Deals", "int"),
            Column("win_rate", "Win rate", "percent"),
        ),
        tuple(
            (m, "USD", D(1000 * (i + 1)) + D("0.50"), i + 1, D(i) / 20)
            for i, m in enumerate(MONTHS)
        ),
    )
    deals = Table(
        "top_deals",
        "Top deals",
        (
            Column("name", "Deal", "text"),
            Column("owner", "Owner", "text"),
            Column("currency", "Currency", "text"),
            Column("amount", "Amount", "money"),
            Column("closed", "Closed", "date"),
            Column("days", "Days open", "days"),
        ),
        tuple(
            (
                f"Deal {i}",
                owners[i % 4],
                "EUR",
                D(50000 + i),
                dt.date(2025, 1 + i % 12, 1),
                D(i) / 4,
            )
            for i in range(rows)
        ),
    )
    chart_list = (
        Chart(
            "revenue",
            "Revenue by month",
            "bar",
            MONTHS,
            (Series("USD", tuple(range(1000, 13000, 1000))), Series("EUR", (5,) * 12)),
            "Month",
            "Revenue",
        ),
        Chart(
            "owners",
            "Revenue by owner",
            "stacked_bar",
            owners,
            (Series("USD", (1, 2, 3, 4)), Series(evil, (4, 3, 2, 1))),
        ),
        Chart(
            "growth", "Contacts over time", "line", MONTHS, (Series("Contacts", tuple(range(12))),)
        ),
    )
    return ReportData(
        report_type="sales",
        title="Sales report",
        tenant_id="tenant-123",
        start=dt.date(2025, 1, 1),
        end=dt.date(2025, 12, 31),
        time_zone="Asia/Tokyo",
        generated_at=dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC),
        filters={"status": "closed-won", "owner": evil},
        dimensions=("month", "owner"),
        figures=(
            Figure("revenue", "Won revenue (USD)", D("78000.00"), "money", "USD"),
            Figure("deals", "Deals won", 78, "int"),
            Figure("win_rate", "Win rate", D("0.375"), "percent"),
        ),
        tables=() if empty else (revenue, deals),
        charts=() if empty else chart_list,
        empty=empty,
    )


def _pdf_text(path: Path) -> list[str]:
    return [page.extract_text() for page in PdfReader(path).pages]


def test_format_value() -> None:
    assert format_value(D("1234.5"), "money", "EUR") == "1,234.50 EUR"
    assert format_value(1234567, "int") == "1,234,567"
    assert format_value(D("0.375"), "percent") == "37.5 %"
    assert format_value(D("2.25"), "days") == "2.2"  # half-even, as Decimal rounds
    assert format_value(dt.date(2025, 3, 1), "date") == "2025-03-01"
    assert format_value(None, "money") == "–"


def test_pdf_cover_pages_headers_and_vector_charts(
    tmp_path: Path, trap: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, hits = trap
    path = tmp_path / "r.pdf"
    cap = 80  # MAX_PDF_TABLE_ROWS, smaller: the test stays fast
    assert cap < MAX_PDF_TABLE_ROWS
    monkeypatch.setattr(render, "MAX_PDF_TABLE_ROWS", cap)
    size = render_pdf(sample(base, rows=cap + 10), path)
    assert size == path.stat().st_size > 0
    reader = PdfReader(path)
    pages = _pdf_text(path)
    count = len(pages)
    assert count >= 3
    for number, text in enumerate(pages, start=1):
        assert f"Page {number} of {count}" in text
    cover = pages[0]
    assert "Sales report" in cover and "tenant-123" in cover
    assert "2025-01-01 – 2025-12-31 (Asia/Tokyo)" in cover
    assert "2026-01-02 12:04 Asia/Tokyo (2026-01-02 03:04 UTC)" in cover
    assert "78,000.00 USD" in cover and "37.5 %" in cover
    # the charts are vectors: their labels are text, and no page holds an image
    assert "Revenue by month" in cover and "2025-07" in cover and "Alice Novak" in cover
    assert all(not page.images for page in reader.pages)
    # the long table runs over pages, its title and header row on each of them
    deal_pages = [text for text in pages if re.search(r"^Deal \d+$", text, re.M)]
    assert len(deal_pages) >= 2
    for text in deal_pages:
        assert re.search(
            r"Top deals\s+Deal\s+Owner\s+Currency\s+Amount\s+Closed\s+Days\s+open", text
        )
    # cut at MAX_PDF_TABLE_ROWS rows, saying so
    last = cap - 1
    assert f"Deal {last}\n" in pages[-1] and f"Deal {last + 1}\n" not in pages[-1]
    assert "… and 10 more rows, left out of the PDF" in pages[-1].replace("\n", " ")
    # tenant values are text, not markup; nothing was fetched
    whole = "\n".join(pages)
    assert '<img src="file:///etc/passwd">' in whole.replace("\n", "")
    assert hits == []


def test_xlsx_typed_cells_formats_charts(tmp_path: Path, trap: tuple[str, list[str]]) -> None:
    base, hits = trap
    path = tmp_path / "r.xlsx"
    render_xlsx(sample(base), path)
    book = load_workbook(path)
    assert book.sheetnames == ["Summary", "Chart data", "Won revenue by month", "Top deals"]
    summary = book["Summary"]
    assert summary["A1"].value == "Sales report"
    labels = {row[0].value: row for row in summary.iter_rows() if row[0].value}
    assert labels["Tenant"][1].value == "tenant-123"
    assert labels["Filters"][1].value == f"status = closed-won, owner = {_evil(base)}"
    revenue = labels["Won revenue (USD)"]
    assert (revenue[1].value, revenue[1].number_format, revenue[2].value) == (
        78000,
        '#,##0.00 "USD"',
        "USD",
    )
    assert labels["Win rate"][1].value == 0.375
    assert labels["Win rate"][1].number_format == "0.0%"
    assert len(summary._charts) == 3  # native charts, read back by openpyxl
    kinds = sorted(type(chart).__name__ for chart in summary._charts)
    assert kinds == ["BarChart", "BarChart", "LineChart"]

    table = book["Won revenue by month"]
    assert table.freeze_panes == "A2"
    assert [c.value for c in table[1]] == ["Month", "Currency", "Revenue", "Deals", "Win rate"]
    month, currency, amount, deals, rate = table[3]
    assert (month.value, currency.value, amount.value, deals.value, rate.value) == (
        "2025-02",
        "USD",
        2000.5,
        2,
        0.05,
    )
    assert (amount.number_format, deals.number_format, rate.number_format) == (
        '#,##0.00 "USD"',
        "#,##0",
        "0.0%",
    )
    assert table.column_dimensions["A"].width >= 9

    deals_sheet = book["Top deals"]
    first = [c.value for c in deals_sheet[2]]
    assert first[4] == dt.datetime(2025, 1, 1)
    assert deals_sheet["E2"].number_format == "yyyy-mm-dd"
    assert deals_sheet["B4"].value == _evil(base)  # text, as given
    # a formula-looking name is a string cell, as exports write it: no formula, no apostrophe
    assert deals_sheet["B5"].value == '=HYPERLINK("http://x")'
    assert deals_sheet["B5"].data_type == "s"
    assert hits == []


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "srcset", "action", "poster", "data"):
                self.refs.append(value or "")
            if name == "style":
                self.styles.append(value or "")

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False


def test_html_is_self_contained_and_escaped(trap: tuple[str, list[str]]) -> None:
    base, hits = trap
    page = render_html(sample(base)).decode("utf-8")
    parsed = _References()
    parsed.feed(page)
    assert parsed.refs == []  # no src or href at all
    urls = [u for style in parsed.styles for u in re.findall(r"url\(\s*([^)]*)\)", style)]
    urls += re.findall(r"url\(\s*([^)]*)\)", page)
    assert urls and all(u.startswith("#") for u in urls)  # the charts' own clip paths
    for bad in ("http://", "https://", "file:", "//"):
        assert not any(bad in u for u in parsed.refs + urls)
    assert not {"img", "link", "script", "iframe", "object"} & set(parsed.tags)
    assert parsed.tags.count("svg") == 3
    assert "&lt;img src=&#34;file:///etc/passwd&#34;&gt;" in page or (
        "&lt;img src=&quot;file:///etc/passwd&quot;&gt;" in page
    )
    assert "default-src 'none'" in page
    assert "78,000.00 USD" in page and "Asia/Tokyo" in page
    assert hits == []


def test_chart_svg_escapes_text_and_has_unique_ids() -> None:
    data = sample()
    first, second = (charts.svg(chart) for chart in data.charts[:2])
    assert first.startswith("<svg") and "<!DOCTYPE" not in first
    assert 'id="clip-revenue"' in first and 'id="clip-owners"' in second
    assert "<img" not in second and "&lt;img" in second
    drawing = charts.drawing(data.charts[0])
    assert (drawing.width, drawing.height) == (charts.WIDTH, charts.HEIGHT)


def test_empty_report_says_so_everywhere(tmp_path: Path) -> None:
    filtered = sample(empty=True)
    assert filtered.filters  # nothing matches them: the period is not to blame
    nothing = "Nothing in this period matches the filters."
    assert nothing in render_html(filtered).decode()
    render_pdf(filtered, tmp_path / "f.pdf")
    assert nothing in _pdf_text(tmp_path / "f.pdf")[0]
    render_xlsx(filtered, tmp_path / "f.xlsx")
    summary = load_workbook(tmp_path / "f.xlsx")["Summary"]
    assert nothing in [c.value for row in summary.iter_rows() for c in row]
    data = dataclasses.replace(filtered, filters={})
    assert "No data in this period." in render_html(data).decode()
    render_pdf(data, tmp_path / "e.pdf")
    (text,) = _pdf_text(tmp_path / "e.pdf")
    assert "No data in this period." in text and "Page 1 of 1" in text
    render_xlsx(data, tmp_path / "e.xlsx")
    summary = load_workbook(tmp_path / "e.xlsx")["Summary"]
    assert "No data in this period." in [c.value for row in summary.iter_rows() for c in row]
    assert summary._charts == []


def test_chart_without_categories_draws_a_note() -> None:
    empty = Chart("x", "Nothing", "line", (), ())
    assert "No data in this period" in charts.svg(empty)


def test_a_bar_chart_of_very_many_categories_is_drawn_as_lines() -> None:
    categories = tuple(f"d{i}" for i in range(charts.MAX_BARS + 1))
    chart = Chart("d", "By day", "bar", categories, (Series("USD", tuple(range(121))),))
    assert charts.drawn_kind(chart) == "line"
    assert charts.drawn_kind(Chart("s", "S", "stacked_bar", categories, chart.series)) == (
        "stacked_bar"
    )
    svg = charts.svg(chart)
    # every 6th category labelled (at most 24 labels), no bar drawn
    assert ">d0<" in svg and ">d6<" in svg and ">d5<" not in svg
    assert svg.count("<text") < 40
    assert "<polyline" in svg or "<path" in svg


def test_pdf_prints_what_no_font_draws_as_a_replacement_mark(tmp_path: Path) -> None:
    data = sample(empty=True)
    table = Table(
        "t", "Owners", (Column("owner", "Owner", "text"),), (("ไทย\x07 e\u0302\u0301 王小明",),)
    )
    render_pdf(dataclasses.replace(data, empty=False, tables=(table,)), tmp_path / "u.pdf")
    (text,) = _pdf_text(tmp_path / "u.pdf")
    # Thai and the control character: U+FFFD each; e + two combining marks: one glyph
    assert "\ufffd\ufffd\ufffd\ufffd ế 王小明" in text


def test_cosmetics_axis_top_none_figures_pdf_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 15: the top gridline is labelled and at or above the highest bar; a figure
    without a value is a dash with no unit; the PDF names its author and creator."""
    from crmqueue.cli.report import print_result
    from crmqueue.reports.charts import value_axis

    print_result({"title": "Sales report", "size": 1, "file": "f", "figures": [
        {"label": "Average deal size (GBP)", "value": None, "kind": "money", "currency": "GBP"},
        {"label": "Won revenue (GBP)", "value": "0.00", "kind": "money", "currency": "GBP"},
    ]})  # fmt: skip
    out = capsys.readouterr().out
    assert "  Average deal size (GBP): –\n" in out and "Won revenue (GBP): 0.00 GBP" in out

    assert value_axis(1_440_000) == (1_500_000, 500_000)
    assert value_axis(1_000_000) == (1_000_000, 200_000)
    assert value_axis(7) == (8, 2)
    chart = Chart("c", "Revenue", "bar", ("a", "b"), (Series("EUR", (D("1440000"), D("5"))),))
    plot = next(c for c in charts.drawing(chart).contents if hasattr(c, "valueAxis"))
    assert plot.valueAxis.valueMax == 1_500_000 and plot.valueAxis.valueStep == 500_000

    data = dataclasses.replace(
        sample(),
        figures=(Figure("average_deal", "Average deal size (GBP)", None, "money", "GBP"),),
    )
    render_xlsx(data, tmp_path / "n.xlsx")
    summary = load_workbook(tmp_path / "n.xlsx")["Summary"]
    (row,) = [r for r in summary.iter_rows() if r[0].value == "Average deal size (GBP)"]
    assert (row[1].value, row[2].value) == ("–", "GBP")
    render_pdf(data, tmp_path / "n.pdf")
    meta = PdfReader(tmp_path / "n.pdf").metadata
    assert meta is not None
    assert meta.creator == "crmqueue report queue"
    assert meta.author == "crmqueue for tenant tenant-123"
    assert meta.title == "Sales report 2025-01-01 – 2025-12-31"
