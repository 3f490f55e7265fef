"""One chart description (`crmqueue.reports.model.Chart`) drawn three ways:

- `drawing(chart)`: a ReportLab graphics Drawing (VerticalBarChart for "bar" and
  "stacked_bar", HorizontalLineChart for "line", with value grid, axis titles and a
  legend). The PDF renderer places it in the document as a flowable, so the chart is
  vector graphics in the PDF;
- `svg(chart)`: the same Drawing through ReportLab's renderSVG, as an inline `<svg>`
  element for the HTML report (no XML prolog or DTD reference, ids made unique per chart);
- `add_xlsx_chart(book, chart, data_sheet, first_row)`: an XlsxWriter native chart
  ("column", stacked "column" or "line") over the chart's values, which it writes as a
  block of cells on `data_sheet` (a native chart reads its values from cells).

Text in a chart is the tenant's (owner names, stages, sources): ReportLab's renderers
write it as text, escaped for SVG; nothing in it is markup. Labels longer than
`MAX_LABEL_CHARS` are cut with "…" so one long name cannot squeeze the plot.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from crmqueue.formats.pdf import FONT_FAMILY, register_fonts
from crmqueue.formats.writers import xlsx_text
from crmqueue.reports.model import Chart

__all__ = ["HEIGHT", "PALETTE", "WIDTH", "add_xlsx_chart", "drawing", "svg"]

# Points: the width of an A4 portrait content frame less a little, a 2:1 chart.
WIDTH = 500.0
HEIGHT = 230.0
MAX_LABEL_CHARS = 18
MAX_BARS = 120
# Colour-blind-safe qualitative palette (Okabe & Ito), starting from a calm blue.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#000000",
)
_FONT = "DejaVuSans"
_BOLD = "DejaVuSans-Bold"
_TEXT = "#222222"
_MUTED = "#666666"
_GRID = "#dddddd"
# How SVG text names its font: the browser has no "DejaVuSans" by that name.
_SVG_FONTS = "'DejaVu Sans', 'Segoe UI', Arial, sans-serif"


def _cut(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _font_for(text: str, default: str = _FONT) -> str:
    """The first bundled font (crmqueue.formats.pdf) that draws every character of
    `text`: a CJK owner name in a chart label gets Droid Sans Fallback rather than boxes.
    A String in a ReportLab Drawing has one font, not a list as the HTML body has, so a
    label mixing scripts no one font has (Latin and CJK) keeps DejaVu Sans."""
    if text.isascii():
        return default
    from reportlab.pdfbase import pdfmetrics  # type: ignore[import-untyped]

    register_fonts(text)
    for name in FONT_FAMILY.split(", "):
        try:
            face = pdfmetrics.getFont(name).face
        except KeyError:  # a fallback font not loaded: no character needed it
            continue
        if all(ord(ch) in face.charToGlyph for ch in text if not ch.isspace()):
            return name if name != _FONT else default
    return default


def drawn_kind(chart: Chart) -> str:
    """How a chart is drawn: as described, but a bar chart of more than `MAX_BARS`
    categories (a decade by day) as lines. Thousands of bars a hair wide say nothing a
    line does not, and cost seconds each to draw and megabytes of SVG. Stacked bars stay
    bars: lines would not add up."""
    if chart.kind == "bar" and len(chart.categories) > MAX_BARS:
        return "line"
    return chart.kind


def _number(value: Decimal | int | None) -> float:
    return float(value) if value is not None else 0.0


def _compact(value: float) -> str:
    """Axis label: 1,500 / 12.5k / 3.2M (an axis shows magnitudes, the tables the
    exact figures)."""
    size = abs(value)
    for limit, unit, suffix in ((1e9, 1e9, "B"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if size >= limit:
            return f"{value / unit:,.1f}".rstrip("0").rstrip(".") + suffix
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def value_axis(highest: float, lines: int = 5) -> tuple[float, float]:
    """(top, step) of a value axis from 0 for values up to `highest` > 0: a step of 1, 2,
    2.5 or 5 times a power of ten giving at most `lines` gridlines above 0, and the top the
    first of them at or above `highest`."""
    power = 10 ** math.floor(math.log10(highest / lines))
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * power
        if math.ceil(highest / step - 1e-9) <= lines:
            break
    return math.ceil(highest / step - 1e-9) * step, step


def _values(chart: Chart) -> list[list[float]]:
    width = len(chart.categories)
    return [
        [_number(v) for v in series.values[:width]] + [0.0] * max(0, width - len(series.values))
        for series in chart.series
    ]


def drawing(chart: Chart, width: float = WIDTH, height: float = HEIGHT) -> Any:
    """The chart as a ReportLab Drawing of `width` x `height` points: title top left,
    legend under it (when there is more than one series), the plot below with its value
    grid, compact value labels and category labels (slanted when there are many, every
    n-th when there are very many). A chart without categories or series draws its
    title and "No data in this period"."""
    from reportlab.graphics.charts.barcharts import VerticalBarChart  # type: ignore[import-untyped]
    from reportlab.graphics.charts.legends import Legend  # type: ignore[import-untyped]
    from reportlab.graphics.charts.linecharts import (  # type: ignore[import-untyped]
        HorizontalLineChart,
    )
    from reportlab.graphics.shapes import Drawing, String  # type: ignore[import-untyped]
    from reportlab.graphics.widgets.markers import makeMarker  # type: ignore[import-untyped]
    from reportlab.lib import colors  # type: ignore[import-untyped]

    register_fonts(chart.title + "".join(chart.categories) + "".join(s.name for s in chart.series))
    d = Drawing(width, height)
    d.add(
        String(0, height - 12, _cut(chart.title, 90), fontName=_font_for(chart.title, _BOLD),
               fontSize=10, fillColor=colors.HexColor(_TEXT))
    )  # fmt: skip
    data = _values(chart)
    if not chart.categories or not data:
        d.add(
            String(width / 2, height / 2, "No data in this period", fontName=_FONT, fontSize=9,
                   fillColor=colors.HexColor(_MUTED), textAnchor="middle")
        )  # fmt: skip
        return d

    top = height - 22  # under the title
    if len(chart.series) > 1:
        legend = Legend()
        legend.x, legend.y = 0, top
        legend.alignment = "right"
        legend.boxAnchor = "nw"
        legend.columnMaximum = 1
        legend.deltax = 8
        legend.dx = legend.dy = 7
        legend.fontName = _font_for("".join(s.name for s in chart.series))
        legend.fontSize = 7.5
        legend.fillColor = colors.HexColor(_TEXT)
        legend.strokeColor = None
        legend.colorNamePairs = [
            (colors.HexColor(PALETTE[i % len(PALETTE)]), _cut(series.name, 24))
            for i, series in enumerate(chart.series)
        ]
        # One row of legend entries across; ReportLab wraps to more columns of one row.
        legend.dxTextSpace = 4
        legend.variColumn = 1
        d.add(legend)
        top -= 16

    many = len(chart.categories) > 12
    bottom = 46 if many else 20  # room for the category labels
    left = 48
    if chart.x_title:
        bottom += 14
    if chart.y_title:
        left += 12
    plot: Any
    kind = drawn_kind(chart)
    if kind == "line":
        plot = HorizontalLineChart()
        plot.joinedLines = 1
        for i in range(len(data)):
            plot.lines[i].strokeColor = colors.HexColor(PALETTE[i % len(PALETTE)])
            plot.lines[i].strokeWidth = 1.6
            if len(chart.categories) <= 24:
                plot.lines[i].symbol = makeMarker("FilledCircle", size=3.5)
                plot.lines[i].symbol.fillColor = colors.HexColor(PALETTE[i % len(PALETTE)])
                plot.lines[i].symbol.strokeColor = None
    else:
        plot = VerticalBarChart()
        plot.barSpacing = 0.5
        plot.groupSpacing = 4 if len(chart.categories) > 24 else 8
        plot.bars.strokeColor = None
        for i in range(len(data)):
            plot.bars[i].fillColor = colors.HexColor(PALETTE[i % len(PALETTE)])
        if kind == "stacked_bar":
            plot.categoryAxis.style = "stacked"
    plot.x, plot.y = left, bottom
    plot.width, plot.height = width - left - 8, max(40.0, top - bottom - 6)
    plot.data = data

    axis = plot.categoryAxis
    step = max(1, -(-len(chart.categories) // 24))  # at most 24 labels
    axis.categoryNames = [
        _cut(name) if index % step == 0 else "" for index, name in enumerate(chart.categories)
    ]
    axis.labels.fontName = _FONT
    for index, name in enumerate(chart.categories):
        font = _font_for(name)
        if font != _FONT:  # a label of CJK or Hangul only: its own font
            axis.labels[index].fontName = font
    axis.labels.fontSize = 7
    axis.labels.fillColor = colors.HexColor(_TEXT)
    axis.strokeColor = colors.HexColor(_MUTED)
    axis.tickDown = 2
    # Past MAX_BARS categories ReportLab's axis would still build a label and a tick per
    # category (seconds for a decade by day): its own are hidden, and the every-n-th
    # labels are placed below as Strings of their own.
    own_labels = len(chart.categories) > MAX_BARS
    if own_labels:
        axis.visibleLabels = 0
        axis.visibleTicks = 0
    if many:
        axis.labels.angle = 35
        axis.labels.boxAnchor = "ne"
        axis.labels.dx, axis.labels.dy = 2, -3
    else:
        axis.labels.boxAnchor = "n"
        axis.labels.dy = -3

    values = plot.valueAxis
    flat = [v for row in data for v in row]
    if kind == "stacked_bar":
        flat = [sum(column) for column in zip(*data, strict=True)]
    if min(flat, default=0.0) >= 0:
        values.valueMin = 0
    if max(flat, default=0.0) <= 0 and min(flat, default=0.0) >= 0:
        values.valueMax = 1  # all zero: an axis of 0..1 rather than ReportLab's error
    elif min(flat, default=0.0) >= 0:
        # the top gridline at or above the highest bar, labelled (ReportLab's own steps
        # could leave a 1.44M bar above a top label of 1M)
        values.valueMax, values.valueStep = value_axis(max(flat))
    values.labelTextFormat = _compact
    values.labels.fontName = _FONT
    values.labels.fontSize = 7
    values.labels.fillColor = colors.HexColor(_TEXT)
    values.strokeColor = None
    values.visibleGrid = 1
    values.gridStrokeColor = colors.HexColor(_GRID)
    values.gridStrokeWidth = 0.5
    values.forceZero = 1
    d.add(plot)
    if own_labels:
        from reportlab.graphics.shapes import Group

        slot = plot.width / len(chart.categories)
        for index in range(0, len(chart.categories), step):
            name = chart.categories[index]
            text = String(0, 0, _cut(name), fontName=_font_for(name), fontSize=7,
                          fillColor=colors.HexColor(_TEXT), textAnchor="end")  # fmt: skip
            slanted = Group(text)
            slanted.translate(plot.x + (index + 0.5) * slot + 2, plot.y - 6)
            slanted.rotate(35)
            d.add(slanted)

    if chart.x_title:
        d.add(
            String(left + plot.width / 2, 3, _cut(chart.x_title, 60), fontSize=8,
                   fontName=_font_for(chart.x_title), fillColor=colors.HexColor(_MUTED),
                   textAnchor="middle")
        )  # fmt: skip
    if chart.y_title:
        label = String(0, 0, _cut(chart.y_title, 40), fontSize=8,
                       fontName=_font_for(chart.y_title), fillColor=colors.HexColor(_MUTED),
                       textAnchor="middle")  # fmt: skip
        from reportlab.graphics.shapes import Group

        turned = Group(label)
        turned.rotate(90)
        turned.translate(bottom + plot.height / 2, -8)
        d.add(turned)
    return d


def svg(chart: Chart, width: float = WIDTH, height: float = HEIGHT) -> str:
    """The chart's Drawing as an inline `<svg>` element (see the module docstring): no XML
    prolog, no DOCTYPE (it names a DTD by URL), `id`s suffixed with the chart's position
    so that two charts in one page do not share a clip path, and browser font names."""
    from reportlab.graphics import renderSVG  # type: ignore[import-untyped]

    text: str = renderSVG.drawToString(drawing(chart, width, height))
    start = text.index("<svg")
    text = text[start:]
    # renderSVG names every drawing's clip path and outer group the same; a page with
    # several inline SVGs needs them apart.
    suffix = "".join(ch if ch.isalnum() else "-" for ch in chart.key)[:40] or "chart"
    text = text.replace('id="clip"', f'id="clip-{suffix}"')
    text = text.replace("url(#clip)", f"url(#clip-{suffix})")
    text = text.replace('id="group"', f'id="group-{suffix}"')
    for name in (_FONT, _BOLD, "DroidSansFallback", "NanumSquare"):
        weight = "; font-weight: bold" if name == _BOLD else ""
        text = text.replace(f"font-family: {name};", f"font-family: {_SVG_FONTS}{weight};")
    # renderSVG's placeholders, and a title for screen readers: the chart's own
    title = chart.title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("<title>...</title>", f"<title>{title}</title>", 1)
    text = text.replace("<desc>...</desc>", "", 1)
    text = text.replace("<svg ", '<svg role="img" ', 1)
    return text


def _chart_type(chart: Chart) -> dict[str, str]:
    kind = drawn_kind(chart)
    if kind == "line":
        return {"type": "line"}
    if kind == "stacked_bar":
        return {"type": "column", "subtype": "stacked"}
    return {"type": "column"}


def write_chart_data(sheet: Any, chart: Chart, first_row: int, bold: Any) -> int:
    """Write the chart's values as a block on `sheet` from `first_row`: a title row, a
    header row (categories' title, one column a series) and a row a category. Returns the
    first row after the block and its blank separator row."""
    sheet.write_string(first_row, 0, xlsx_text(str(chart.title)), bold)
    header = first_row + 1
    sheet.write_string(header, 0, xlsx_text(str(chart.x_title or "Category")), bold)
    for col, series in enumerate(chart.series, start=1):
        sheet.write_string(header, col, xlsx_text(str(series.name)), bold)
    for row, name in enumerate(chart.categories, start=header + 1):
        sheet.write_string(row, 0, xlsx_text(str(name)))
    for col, column in enumerate(_values(chart), start=1):
        for row, value in enumerate(column, start=header + 1):
            sheet.write_number(row, col, value)
    return header + 1 + len(chart.categories) + 1


def add_xlsx_chart(
    book: Any, chart: Chart, data_sheet: Any, first_row: int, bold: Any
) -> tuple[Any, int]:
    """A native XlsxWriter chart of `chart` (to insert with `worksheet.insert_chart`),
    whose values are written on `data_sheet` from `first_row` (see `write_chart_data`;
    the chart's formulas refer to them by the sheet's name), and the first free row of
    `data_sheet` after them. The chart is None for a chart without categories or series
    (an empty native chart is a bare frame)."""
    end = write_chart_data(data_sheet, chart, first_row, bold)
    if not chart.categories or not chart.series:
        return None, end
    native = book.add_chart(_chart_type(chart))
    name = data_sheet.get_name()
    header = first_row + 1
    last = header + len(chart.categories)
    for col in range(1, len(chart.series) + 1):
        color = PALETTE[(col - 1) % len(PALETTE)]
        options: dict[str, Any] = {
            "name": [name, header, col],
            "categories": [name, header + 1, 0, last, 0],
            "values": [name, header + 1, col, last, col],
        }
        if drawn_kind(chart) == "line":
            options["line"] = {"color": color, "width": 2}
            options["marker"] = (
                {"type": "circle", "size": 4, "fill": {"color": color}, "border": {"none": True}}
                if len(chart.categories) <= 24
                else {"type": "none"}
            )
        else:
            options["fill"] = {"color": color}
            options["border"] = {"none": True}
        native.add_series(options)
    native.set_title({"name": chart.title, "name_font": {"size": 11, "bold": True}})
    if chart.x_title:
        native.set_x_axis({"name": chart.x_title})
    y_axis: dict[str, Any] = {"major_gridlines": {"visible": True, "line": {"color": _GRID}}}
    if chart.y_title:
        y_axis["name"] = chart.y_title
    native.set_y_axis(y_axis)
    if len(chart.series) > 1:
        native.set_legend({"position": "bottom"})
    else:
        native.set_legend({"none": True})
    if drawn_kind(chart) != "line":
        native.set_chartarea({"border": {"none": True}})
    native.set_size({"width": 720, "height": 300})
    return native, end
