"""PDF through xhtml2pdf: `html_to_pdf` for any HTML we render (exports now, reports with
`<canvas type="graph">` charts later), and `write_pdf`, the table of an export.

Every render runs under `no_fetch_policy()`: the HTML carries tenant data, and xhtml2pdf
fetches whatever an `<img>`, `<link>`, `@import`, `@font-face` or `background-image`
names (before 0.2.19 any local path and any URL, internal ones included). Nothing our
documents need lives outside them: styles are inline, images are `data:` URIs, charts are
drawn from the `<canvas>` JSON, and the fonts are embedded TrueType files shipped in
the package (`crmqueue/formats/fonts/`, registered with ReportLab, never fetched):

    DejaVu Sans (regular, bold)   Latin incl. Polish and Vietnamese, Greek, Cyrillic,
                                  Armenian, Georgian, Hebrew, Arabic (unshaped) ...
    Droid Sans Fallback Full      CJK ideographs, Japanese kana
    NanumSquare Regular           Korean Hangul

`font-family: DejaVuSans, DroidSansFallback, NanumSquare` lets xhtml2pdf pick a font per
character, the first one that has it; ReportLab embeds only the glyphs used (a few KB a
font and chunk). A character none of them has (Thai, Devanagari, control characters)
would print as a box or not at all: `write_pdf` prints U+FFFD instead and records the
rows in the ExportNotes.
ReportLab's CID fonts (STSong-Light ...) were not used for CJK: they are not embedded,
so a viewer without Adobe's Asian font packs shows nothing, and their text does not
extract.

Exports are rendered in chunks, because xhtml2pdf holds the whole document in memory.
Measured with bench/pdf_export.py on the 2-core reference machine, 6 columns:

    rows     one xhtml2pdf call       chunks of 1,000 rows
    1,000      3.2 s   107 MB           3.4 s   108 MB
    5,000     20 s     292 MB
    10,000    54 s     524 MB          31 s     113 MB
    50,000   (not run: ~2.5 GB)       155 s     134 MB    (1,050 pages, 3.7 MB)

One call grows by about 45 MB per 1,000 rows, and its time grows faster than the rows
(ReportLab splits the rest of a long table at every page break). Chunks keep the peak flat
and the time linear, 3 ms a row here and up to 5-6 ms while other work shares the
machine. Time is then the limit, and it goes by cells, not rows (about 1 ms of CPU a
cell: 3.5-4.5 ms a row of 4 columns, 13-18 ms a row of 16): `DEFAULT_MAX_PDF_CELLS` (config
`files.max_pdf_cells`) keeps a PDF export inside the import-export queue's 300 s job
timeout, and a larger export is refused up front, pointing to CSV or XLSX or fewer
fields. Chunks are `CHUNK_CELLS` cells (1,000 rows of 6 columns, 375 of 16).

Page numbers: each chunk is its own document, so its `<pdf:pagecount>` would count only
its own pages. The chunks are rendered without a footer, concatenated with pypdf, and the
footer ("title · generated at" and "Page N of M") is rendered once more by xhtml2pdf as a
document of M empty pages with the same `@page` layout, then laid over the content pages.
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import io
import itertools
import math
import re
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from crmqueue.errors import PermanentError
from crmqueue.formats.writers import ExportNotes

# Cells (rows x columns) per xhtml2pdf call: 1,000 rows of 6 columns, about 110-135 MB
# peak, and 6-20 s of one render under xhtml2pdf's 60 s a render (no_fetch_policy) on a
# loaded machine. Larger chunks cost memory and get slower per row (see the module
# docstring); smaller ones leave more half-empty pages where one chunk ends and the next
# begins on a new page.
CHUNK_CELLS = 6000
# The default of `files.max_pdf_cells`. The time goes by cells, 0.8-1.2 ms of CPU each
# (13-18 ms a row of 16 columns, 3.5-4.5 ms a row of 4: bench/pdf_export.py), and up to
# 2-3 times that in wall time while other work shares the 2 cores: 80,000 cells take
# 65-95 s of CPU, 100-250 s in all, inside the import-export queue's 300 s time limit.
DEFAULT_MAX_PDF_CELLS = 80_000
# More columns than this: landscape A4.
PORTRAIT_MAX_COLUMNS = 6
# A PDF is for reading; a cell longer than this is cut (with "…") so that one long note
# cannot fill pages, and the cut is listed in the ExportNotes. The CSV export carries
# full values.
MAX_CELL_CHARS = 300

FONT_DIR = Path(__file__).parent / "fonts"
# (ReportLab name, file, bold file): the body's font-family list, in order of preference.
_FONTS = (
    ("DejaVuSans", "DejaVuSans.ttf", "DejaVuSans-Bold.ttf"),
    ("DroidSansFallback", "DroidSansFallbackFull.ttf", None),
    ("NanumSquare", "NanumSquareR.ttf", None),
)
FONT_FAMILY = ", ".join(name for name, _, _ in _FONTS)
_fonts_lock = threading.Lock()
# C0 and C1 control characters other than tab, LF and CR: no font draws them.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

# The content frame leaves the bottom 1.5 cm to the footer frame. Both are declared:
# with a static frame only, xhtml2pdf guesses the content frame and warns on every render.
_CONTENT_FRAME = "top: 1.4cm; right: 1cm; bottom: 1.5cm; left: 1cm;"
_FOOTER_FRAME = "-pdf-frame-content: footer; bottom: 0.5cm; left: 1cm; right: 1cm; height: 0.6cm;"


_cmaps: dict[str, frozenset[int]] = {}


def _font_cmap(name: str, regular: str, bold: str | None) -> frozenset[int]:
    """Register one bundled font with ReportLab and xhtml2pdf (once a process) and return
    the code points it draws. The CJK fonts load only when a text needs them: parsed,
    they cost about 35 MB."""
    found = _cmaps.get(name)
    if found is not None:
        return found
    with _fonts_lock:
        if name in _cmaps:
            return _cmaps[name]
        from reportlab.lib.fonts import addMapping  # type: ignore[import-untyped]
        from reportlab.pdfbase import pdfmetrics  # type: ignore[import-untyped]
        from reportlab.pdfbase.ttfonts import TTFont  # type: ignore[import-untyped]
        from xhtml2pdf import default  # type: ignore[import-untyped]

        font = TTFont(name, str(FONT_DIR / regular))
        pdfmetrics.registerFont(font)
        bold_name = name
        if bold is not None:
            bold_name = f"{name}-Bold"
            pdfmetrics.registerFont(TTFont(bold_name, str(FONT_DIR / bold)))
        # bold and italic map to a face of the family, so <th> and <b> keep the font
        for is_bold, is_italic in ((0, 0), (0, 1), (1, 0), (1, 1)):
            addMapping(name, is_bold, is_italic, bold_name if is_bold else name)
        # xhtml2pdf copies DEFAULT_FONT into every document's font list
        default.DEFAULT_FONT[name.lower()] = name
        _cmaps[name] = frozenset(font.face.charToGlyph)
        return _cmaps[name]


def register_fonts(text: str = "") -> None:
    """Make DejaVu Sans known to ReportLab and xhtml2pdf, and the fallback fonts when
    `text` has characters DejaVu Sans lacks (see the module docstring); then
    `font-family: DejaVuSans, DroidSansFallback, NanumSquare` selects them. Thread-safe."""
    missing_glyphs(text)


def missing_glyphs(text: str) -> set[str]:
    """The characters of `text` that no bundled font draws: those outside the fonts'
    character maps and control characters (tab, LF and CR aside). Registers the fonts it
    consults."""
    main = _font_cmap(*_FONTS[0])
    if text.isascii() and text.isprintable():
        return set()
    lacking = {ch for ch in set(text) if ord(ch) not in main or _CONTROL.match(ch)}
    lacking.difference_update("\t\n\r")
    for font in _FONTS[1:]:
        if not lacking:
            break
        cmap = _font_cmap(*font)
        lacking = {ch for ch in lacking if ord(ch) not in cmap or _CONTROL.match(ch)}
    return lacking


@functools.cache
def no_fetch_policy() -> Any:
    """The xhtml2pdf ResourceAccessPolicy of every render: no remote fetches at all (not
    only the internal-address block of xhtml2pdf's default), and no directory to read
    from (base_dir=None with no extra roots denies every local read). The other limits
    are xhtml2pdf's "server" ones: document size and nesting, image pixels, 60 s a
    render (a chunk of an export takes a few seconds)."""
    from xhtml2pdf.config.resources import (  # type: ignore[import-untyped]
        ResourceAccessPolicy,
    )

    return ResourceAccessPolicy.server(base_dir=None, allow_remote=False, allowed_hosts=frozenset())


def html_to_pdf(source: str, dest: IO[bytes]) -> None:
    """Render an HTML document into `dest`, fetching nothing (see `no_fetch_policy`).

    A document xhtml2pdf reports errors for, or one over a render limit, raises
    PermanentError: the same HTML fails the same way on a retry."""
    # Imported here: xhtml2pdf and ReportLab take a third of a second to import, which
    # every CLI command and worker would pay otherwise.
    from xhtml2pdf import pisa
    from xhtml2pdf.config.resources import RenderLimitError

    register_fonts(source)
    try:
        status = pisa.CreatePDF(
            source, dest=dest, encoding="utf-8", resource_policy=no_fetch_policy()
        )
    except RenderLimitError as exc:
        raise PermanentError(f"PDF rendering stopped: {exc}") from None
    if status.err:
        raise PermanentError(f"PDF rendering failed ({status.err} error(s) from xhtml2pdf)")


# --------------------------------------------------------------------------- exports

# Width of the content frame: A4 less 1 cm each side.
_FRAME_WIDTH_PT = {False: 595.3 - 56.7, True: 841.9 - 56.7}
_CELL_PADDING_PT = 6.0
_FONT_PT = (5.5, 8.0)  # smallest and largest body font
_MAX_COLUMN_EM = 20.0  # a column wider than this (about 36 characters) wraps its text
_SLACK_EM = 0.6  # about one character: a later chunk's ids and emails may be a digit longer
# A header's own slack: the percent widths are rounded, and a header must not miss its
# column by a hair and break before its last letter.
_HEADER_SLACK_EM = 0.3


def _text(value: Any) -> str:
    """A cell's text: None empty, dates and datetimes ISO 8601 (to the second: a PDF is
    read by people)."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime | dt.time):
        return value.isoformat(timespec="seconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _row_texts(
    row: Sequence[Any], number: int, columns: Sequence[str], notes: ExportNotes
) -> list[str]:
    """The cells of record `number` as printed: long texts cut (listed in `notes`),
    control characters as U+FFFD and characters no font has listed by row in `notes`."""
    cells = []
    missing: set[str] = set()
    for index, value in enumerate(row):
        text = _text(value)
        if len(text) > MAX_CELL_CHARS:
            notes.add_cut(number, columns[index] if index < len(columns) else "", len(text))
            text = text[: MAX_CELL_CHARS - 1] + "…"
        if not (text.isascii() and text.isprintable()):
            # NFC: ReportLab places no combining marks, so "e" + U+0302 + U+0301 would
            # print apart; composed, Vietnamese "ế" is one glyph of DejaVu Sans.
            text = unicodedata.normalize("NFC", text)
            lacking = missing_glyphs(text)
            if lacking:
                # A space for a space; else U+FFFD, a visible mark, rather than a blank or
                # a box that looks like data.
                missing.update(ch for ch in lacking if not ch.isspace())
                text = "".join(
                    (" " if ch.isspace() else "\ufffd") if ch in lacking else ch for ch in text
                )
        cells.append(text)
    if missing:
        notes.add_missing_glyphs(number, missing)
    return cells


@dataclass(frozen=True)
class _Layout:
    """Page orientation, body font size and column widths (percent) of one export: from
    the header and the first chunk, then kept for every chunk."""

    landscape: bool
    font_pt: float
    widths: list[float]
    # smaller than font_pt only when the headers side by side are wider than the page
    header_pt: float

    @classmethod
    def fit(cls, columns: Sequence[str], sample: Sequence[Sequence[str]]) -> _Layout:
        """Each column as wide as its widest text (data capped at `_MAX_COLUMN_EM`) at the
        largest font from 8 down to 5.5 pt that fits them all; when even 5.5 pt does not,
        every header keeps its whole width (a header word never breaks) and the data
        columns share the rest: the narrow ones whole, the widest wrapping their text.
        Only headers that alone are wider than the page (never with our entities' fields:
        all 16 contact fields fit at 10 pt) get a smaller font of their own."""
        from reportlab.pdfbase.pdfmetrics import stringWidth  # type: ignore[import-untyped]

        register_fonts()
        landscape = len(columns) > PORTRAIT_MAX_COLUMNS
        least = []  # each column's narrowest width in ems: its header, in bold
        want = []  # each column's widest text, in ems of the body font
        for index, name in enumerate(columns):
            widest = max(
                (stringWidth(row[index], "DejaVuSans", 1) for row in sample if index < len(row)),
                default=0.0,
            )
            header = stringWidth(name, "DejaVuSans-Bold", 1) + _HEADER_SLACK_EM
            least.append(max(2.0, header))
            want.append(max(least[-1], min(_MAX_COLUMN_EM, widest + _SLACK_EM)))
        room = _FRAME_WIDTH_PT[landscape] - _CELL_PADDING_PT * len(columns)
        # The largest font at which the columns fit side by side without wrapping.
        font = min(_FONT_PT[1], max(_FONT_PT[0], math.floor(2 * room / sum(want)) / 2))
        ems = want
        header_pt = font
        if sum(least) * font > room:
            # So many long headers that even they do not fit: a smaller header font, the
            # columns as wide as their headers, every data column wrapping.
            header_pt = math.floor(4 * room / sum(least)) / 4
            ems = [s * header_pt / font for s in least]
        elif sum(want) * font > room:
            # Max-min fair shares: every column up to a common cap, the narrow ones (ids,
            # codes, phone numbers) whole, the widest wrapping; never under its header.
            low, high = 0.0, max(want)
            for _ in range(30):
                cap = (low + high) / 2
                used = sum(max(s, min(w, cap)) for s, w in zip(least, want, strict=True))
                low, high = (cap, high) if used * font <= room else (low, cap)
            ems = [max(s, min(w, low)) for s, w in zip(least, want, strict=True)]
        # Each column gets its text width plus its padding, as a share of the frame.
        points = [em * font + _CELL_PADDING_PT for em in ems]
        total = sum(points)
        return cls(landscape, font, [round(100 * p / total, 2) for p in points], header_pt)


def _page_css(landscape: bool) -> str:
    size = "a4 landscape" if landscape else "a4"
    return f"""
@page {{ size: {size};
  @frame content {{ {_CONTENT_FRAME} }}
  @frame footer {{ {_FOOTER_FRAME} }} }}
body {{ font-family: {FONT_FAMILY}; font-size: 7pt; color: #222222; }}
"""


_TABLE_CSS = """
h1 { font-size: 13pt; margin: 0 0 2pt 0; }
p.meta { color: #666666; margin: 0 0 6pt 0; }
table { width: 100%; }
th { background-color: #d9e1ec; text-align: left; font-weight: bold; overflow-wrap: break-word;
     padding: 2pt 3pt 1pt 3pt; border-bottom: 0.5pt solid #7a8799; }
td { padding: 2pt 3pt 1pt 3pt; vertical-align: top; overflow-wrap: break-word; }
tr.z td { background-color: #f1f4f8; }
"""


def _chunk_html(
    columns: Sequence[str],
    layout: _Layout,
    rows: Sequence[Sequence[str]],
    first_index: int,
    heading: str | None,
) -> str:
    """One chunk of the export: a table whose header row repeats on every page; the
    first chunk also carries the heading (title and generated-at line)."""
    out = [
        '<html><head><meta charset="utf-8"><style>',
        _page_css(layout.landscape),
        _TABLE_CSS,
        f"table {{ font-size: {layout.font_pt}pt; }} th {{ font-size: {layout.header_pt}pt; }}",
        '</style></head><body><div id="footer"></div>',
    ]
    if heading is not None:
        out.append(heading)
    out.append('<table repeat="1"><tr>')
    out.extend(
        f'<th width="{w}%">{html.escape(name)}</th>'
        for name, w in zip(columns, layout.widths, strict=True)
    )
    out.append("</tr>")
    for number, row in enumerate(rows, start=first_index):
        out.append('<tr class="z">' if number % 2 else "<tr>")
        out.extend(f"<td>{html.escape(cell)}</td>" for cell in row)
        out.append("</tr>")
    if not rows:
        out.append(f'<tr><td colspan="{len(columns)}">No records.</td></tr>')
    out.append("</table></body></html>")
    return "".join(out)


def _footer_html(pages: int, left: str, landscape: bool) -> str:
    """`pages` empty pages whose footer frame holds `left` and "Page N of M"."""
    footer = (
        '<div id="footer"><table><tr>'
        f"<td>{html.escape(left)}</td>"
        '<td style="text-align: right">Page <pdf:pagenumber> of <pdf:pagecount></td>'
        "</tr></table></div>"
    )
    # An explicit end tag: in HTML mode `<pdf:nextpage />` is an open element, and
    # thousands of them would nest past the policy's depth limit.
    pages_html = "<p>&#160;</p><pdf:nextpage></pdf:nextpage>" * (pages - 1) + "<p>&#160;</p>"
    css = _page_css(landscape) + "#footer { color: #666666; } #footer td { padding: 0; }"
    return (
        f'<html><head><meta charset="utf-8"><style>{css}</style></head>'
        f"<body>{footer}{pages_html}</body></html>"
    )


def _chunks(
    rows: Iterable[Sequence[Any]], size: int, columns: Sequence[str], notes: ExportNotes
) -> Iterator[list[list[str]]]:
    numbered = enumerate(rows, start=1)
    while chunk := [
        _row_texts(row, number, columns, notes) for number, row in itertools.islice(numbered, size)
    ]:
        yield chunk


def too_many_cells(rows: int, columns: int, limit: int) -> PermanentError:
    """The refusal of a PDF export over `limit` cells (rows x columns)."""
    fit = limit // max(1, columns)
    return PermanentError(
        f"{rows} rows x {columns} fields = {rows * columns} cells is over the PDF export"
        f" limit of {limit} cells (files.max_pdf_cells; {fit} rows with {columns} fields):"
        " export as csv or xlsx, or choose fewer fields or narrow the export with filters"
    )


def chunk_rows_for(columns: int) -> int:
    """Rows per xhtml2pdf call for a table of `columns` columns: CHUNK_CELLS cells."""
    return max(50, CHUNK_CELLS // max(1, columns))


def write_pdf(
    path: Path,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    title: str = "Export",
    *,
    generated_at: dt.datetime | None = None,
    max_cells: int = DEFAULT_MAX_PDF_CELLS,
    expected_rows: int | None = None,
    chunk_rows: int | None = None,
    notes: ExportNotes | None = None,
    rendered: Callable[[int], None] | None = None,
) -> int:
    """Write the rows as a PDF table (see the module docstring); returns the number of
    data rows. Raises PermanentError when rows x columns is over `max_cells`: up front
    when `expected_rows` says so, else on the first chunk past the limit. Cells cut to
    MAX_CELL_CHARS and rows with characters no bundled font has go into `notes`.
    `rendered(rows)` is called after each chunk with the rows rendered so far (a chunk
    is `chunk_rows` rows, by default `chunk_rows_for(len(columns))`)."""
    from pypdf import PdfReader, PdfWriter

    width = max(1, len(columns))
    if expected_rows is not None and expected_rows * width > max_cells:
        raise too_many_cells(expected_rows, width, max_cells)
    chunk_rows = chunk_rows or chunk_rows_for(width)
    stamp = (generated_at or dt.datetime.now(dt.UTC)).replace(microsecond=0).isoformat()
    heading = f'<h1>{html.escape(title)}</h1><p class="meta">Generated at {html.escape(stamp)}</p>'
    writer = PdfWriter()
    count = 0
    layout: _Layout | None = None
    notes = notes if notes is not None else ExportNotes()
    notes.cut_limit = MAX_CELL_CHARS
    chunks = _chunks(rows, chunk_rows, columns, notes)
    # The first chunk even when empty: an export with no rows still gets its page.
    for chunk in itertools.chain([next(chunks, [])], chunks):
        if (count + len(chunk)) * width > max_cells:
            raise too_many_cells(count + len(chunk), width, max_cells)
        if layout is None:
            layout = _Layout.fit(columns, chunk)
        source = _chunk_html(columns, layout, chunk, count, None if count else heading)
        buffer = io.BytesIO()
        html_to_pdf(source, buffer)
        writer.append(PdfReader(buffer))
        count += len(chunk)
        if rendered is not None:
            rendered(count)
    pages = len(writer.pages)
    footer = io.BytesIO()
    landscape = len(columns) > PORTRAIT_MAX_COLUMNS
    html_to_pdf(_footer_html(pages, f"{title} · generated at {stamp}", landscape), footer)
    overlay = PdfReader(footer)
    if len(overlay.pages) != pages:
        raise RuntimeError(f"footer has {len(overlay.pages)} pages for {pages} of content")
    for page, numbers in zip(writer.pages, overlay.pages, strict=True):
        page.merge_page(numbers)
        # merge_page leaves the content decoded: compressed again, a page stays ~4 KB
        page.compress_content_streams()
    writer.add_metadata({"/Title": title})
    with path.open("wb") as handle:
        writer.write(handle)
    return count
