"""PDF output (crmqueue.formats.pdf), read back with pypdf: the export table across pages
and chunks (repeated header, "Page N of M", every row once), escaping of hostile values,
no resource fetches (a loopback HTTP server and an audit hook watch), a chart, the row
limit, and an export job run through run_export on a SQLite CRM store."""

from __future__ import annotations

import datetime as dt
import http.server
import io
import re
import subprocess
import sys
import threading
import unicodedata
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pypdf import PdfReader

from crmqueue.config import Settings
from crmqueue.crm.schema import ENTITY_TABLES
from crmqueue.crm.store import create_engine, init_db, seed
from crmqueue.errors import PermanentError
from crmqueue.formats import pdf
from crmqueue.formats.pdf import html_to_pdf, write_pdf
from crmqueue.formats.writers import ExportNotes
from crmqueue.payloads import ExportPayload
from crmqueue.workers.import_export import run_export

COLUMNS = ["id", "email", "first_name", "company", "created_at", "amount"]
GENERATED = dt.datetime(2024, 5, 1, 9, 30, tzinfo=dt.UTC)
# A 1x1 PNG: what the loopback server hands out, so that a fetch would have succeeded.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def pages_text(path: Path | io.BytesIO) -> list[str]:
    return [page.extract_text() for page in PdfReader(path).pages]


def squash(text: str) -> str:
    """Text without whitespace: a long cell wraps over lines in the extracted text."""
    return re.sub(r"\s+", "", text)


def people(count: int) -> Iterator[tuple[Any, ...]]:
    for n in range(count):
        amount = Decimal("12.50") if n % 3 else None
        yield (n, f"person{n}@example.com", "Ann", "Smith & Co",
               GENERATED + dt.timedelta(minutes=n), amount)  # fmt: skip


# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize("chunk_rows", [1000, 70], ids=["one-chunk", "five-chunks"])
def test_table_spans_pages_with_header_page_numbers_and_every_row(
    tmp_path: Path, chunk_rows: int
) -> None:
    path = tmp_path / "out.pdf"
    count = write_pdf(path, COLUMNS, people(300), title="contacts", generated_at=GENERATED,
                      chunk_rows=chunk_rows)  # fmt: skip
    assert count == 300
    texts = pages_text(path)
    total = len(texts)
    assert total >= 5
    assert "contacts" in texts[0] and "Generated at 2024-05-01T09:30:00+00:00" in texts[0]
    for number, text in enumerate(texts, start=1):
        # the header row on every page, not only the first
        assert all(column in text for column in COLUMNS), (number, text[:200])
        assert f"Page {number} of {total}" in text
        assert "contacts · generated at 2024-05-01T09:30:00+00:00" in text
    assert "Page 1 of" in texts[0] and f"Page {total} of {total}" in texts[-1]
    found = [int(n) for text in texts for n in re.findall(r"person(\d+)@example\.com", text)]
    assert found == list(range(300)), "every row exactly once, in order"
    assert "2024-05-01T09:31:00+00:00" in texts[0]  # datetimes ISO 8601
    page = PdfReader(path).pages[0]
    assert page.mediabox.width < page.mediabox.height, "six columns fit on portrait A4"


def test_many_columns_are_landscape_and_an_empty_export_has_one_page(tmp_path: Path) -> None:
    wide = [f"column_{n}" for n in range(12)]
    path = tmp_path / "wide.pdf"
    assert write_pdf(path, wide, [tuple(range(12))] * 3, generated_at=GENERATED) == 3
    page = PdfReader(path).pages[0]
    assert page.mediabox.width > page.mediabox.height

    empty = tmp_path / "empty.pdf"
    assert write_pdf(empty, COLUMNS, [], title="leads", generated_at=GENERATED) == 0
    (text,) = pages_text(empty)
    assert "No records." in text and "Page 1 of 1" in text and "first_name" in text


def test_cell_values_are_escaped_and_formatted(tmp_path: Path) -> None:
    hostile = [
        "<b>x</b>",
        '<img src="file:///etc/passwd">',
        "</td></tr></table><h1>injected</h1>",
        "&amp; &lt;",
        "<pdf:pagecount>",
        "\"quotes\" and 'apostrophes'",
    ]
    rows = [(value, None, dt.date(2024, 2, 29), Decimal("1.10"), True) for value in hostile]
    rows.append(("x" * 1000, "nul\x00 and vt\x0b", None, None, None))
    path = tmp_path / "hostile.pdf"
    write_pdf(path, ["value", "none", "date", "decimal", "flag"], rows, title="<i>t</i>")
    text = squash("".join(pages_text(path)))
    for value in hostile:
        assert squash(value) in text, value
    assert "<i>t</i>" in text  # the title too
    assert "2024-02-29" in text and "1.10" in text and "True" in text
    assert "None" not in text
    # a long value is cut for the page (the CSV and XLSX exports carry it whole)
    assert "x" * (pdf.MAX_CELL_CHARS - 1) + "…" in text and "x" * pdf.MAX_CELL_CHARS not in text


# --------------------------------------------------------------------------- no fetches


class Recorder(http.server.BaseHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        body = PNG if self.path.endswith(".png") else b"body { color: red; }"
        self.send_response(200)
        self.send_header("Content-Type", "image/png" if body is PNG else "text/css")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def loopback() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 that records every request it gets."""
    requests: list[str] = []
    handler = type("Handler", (Recorder,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Opens:
    """Paths opened and addresses connected to while `active` (an audit hook cannot be
    removed, so it stays installed and idle after its test)."""

    active = False
    paths: list[str] = []
    connects: list[str] = []

    @classmethod
    def hook(cls, event: str, args: tuple[Any, ...]) -> None:
        if not cls.active:
            return
        if event == "open" and isinstance(args[0], str | bytes | Path):
            cls.paths.append(str(args[0]))
        elif event == "socket.connect":
            cls.connects.append(str(args[1]))


sys.addaudithook(Opens.hook)


def hostile_document(base: str, secret: Path, font: bool = True) -> str:
    """Every way a document asks xhtml2pdf for a resource, at the server and the file."""
    font_face = f"@font-face {{ font-family: Evil; src: url({base}/font.ttf); }}" if font else ""
    return f"""<html><head>
<link rel="stylesheet" href="{base}/link.css">
<link rel="stylesheet" href="file://{secret.with_suffix(".css")}">
<style>
@import url({base}/import.css);
@import url("{secret.with_suffix(".css")}");
{font_face}
body {{ background-image: url({base}/background.png); }}
</style></head><body>
<p>Before</p>
<img src="{base}/x.png">
<img src="file://{secret}">
<img src="{secret}">
<img src="file:///etc/passwd">
<p style="background-image: url({base}/inline.png)">After</p>
</body></html>"""


def test_nothing_is_fetched_from_the_network_or_the_disk(
    loopback: tuple[str, list[str]], tmp_path: Path
) -> None:
    base, requests = loopback
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG)
    secret.with_suffix(".css").write_text("body { color: red; }")
    document = hostile_document(base, secret)

    out = io.BytesIO()
    Opens.paths, Opens.connects, Opens.active = [], [], True
    try:
        html_to_pdf(document, out)
    finally:
        Opens.active = False
    assert requests == []
    assert Opens.connects == []
    assert not [p for p in Opens.paths if "secret" in p or p == "/etc/passwd"], Opens.paths
    text = pages_text(out)[0]
    assert "Before" in text and "After" in text, "the document itself still renders"

    # The same document under xhtml2pdf's permissive policy does fetch: the watch above
    # would have seen it. (Without the font: the server's answer is no TrueType file.)
    from xhtml2pdf import pisa  # type: ignore[import-untyped]
    from xhtml2pdf.config.resources import PERMISSIVE_POLICY  # type: ignore[import-untyped]

    Opens.paths, Opens.active = [], True
    try:
        pisa.CreatePDF(hostile_document(base, secret, font=False), dest=io.BytesIO(),
                       resource_policy=PERMISSIVE_POLICY)  # fmt: skip
    finally:
        Opens.active = False
    assert "/x.png" in requests and "/link.css" in requests, requests
    assert any("secret" in p for p in Opens.paths), Opens.paths


def test_export_values_cannot_fetch_either(loopback: tuple[str, list[str]], tmp_path: Path) -> None:
    base, requests = loopback
    values = [f'<img src="{base}/cell.png">', '<img src="file:///etc/passwd">',
              f'<link rel="stylesheet" href="{base}/cell.css">']  # fmt: skip
    write_pdf(tmp_path / "x.pdf", ["value"], [(v,) for v in values], title=values[0])
    assert requests == []
    assert all(squash(v) in squash(pages_text(tmp_path / "x.pdf")[0]) for v in values)


def test_a_report_with_a_chart_and_page_numbers_renders() -> None:
    """What the report queue will hand html_to_pdf: a footer frame and a native chart."""
    chart = '{"type": "verticalbar", "data": [[5, 9, 3]]}'
    document = f"""<html><head><style>
@page {{ size: a4; margin: 2cm;
  @frame footer {{ -pdf-frame-content: footer; bottom: 1cm; margin-left: 2cm;
                   margin-right: 2cm; height: 1cm; }} }}
</style></head><body>
<div id="footer">Page <pdf:pagenumber> of <pdf:pagecount></div>
<h1>Sales</h1><canvas type="graph" width="300" height="150">{chart}</canvas>
<pdf:nextpage></pdf:nextpage><p>Second page</p></body></html>"""
    out = io.BytesIO()
    html_to_pdf(document, out)
    first, second = pages_text(out)
    assert "Sales" in first and "Page 1 of 2" in first
    assert "9" in first, "the chart's value axis is drawn as text"
    assert "Second page" in second and "Page 2 of 2" in second


# --------------------------------------------------------------------------- the limit


def test_the_limit_is_on_cells_not_rows(tmp_path: Path) -> None:
    path = tmp_path / "big.pdf"
    # six columns: 100 rows is 600 cells
    refused = r"101 rows x 6 fields = 606 cells is over the PDF export limit of 600 cells"
    with pytest.raises(PermanentError, match=refused + r" .*100 rows with 6 fields.*csv or xlsx"):
        write_pdf(path, COLUMNS, people(10**6), max_cells=600, expected_rows=101)
    with pytest.raises(PermanentError, match=r"fewer fields"):
        write_pdf(path, COLUMNS, people(120), max_cells=600, chunk_rows=50)
    assert not path.exists()
    assert write_pdf(path, COLUMNS, people(100), max_cells=600, chunk_rows=50) == 100
    # the same cells in fewer columns: more rows
    three = [row[:3] for row in people(200)]
    assert write_pdf(path, COLUMNS[:3], three, max_cells=600, expected_rows=200) == 200
    with pytest.raises(PermanentError, match=r"201 rows x 3 fields"):
        write_pdf(path, COLUMNS[:3], three, max_cells=600, expected_rows=201)
    assert Settings().files.max_pdf_cells == pdf.DEFAULT_MAX_PDF_CELLS


def test_chunks_are_sized_in_cells_and_report_as_they_render(tmp_path: Path) -> None:
    assert pdf.chunk_rows_for(6) == 1000 and pdf.chunk_rows_for(16) == 375
    assert pdf.chunk_rows_for(1000) == 50  # never a chunk of a handful of rows
    done: list[int] = []
    write_pdf(tmp_path / "p.pdf", COLUMNS, people(300), chunk_rows=70, rendered=done.append)
    assert done == [70, 140, 210, 280, 300]


# --------------------------------------------------------------------------- the job


@pytest.fixture
def sqlite_crm(tmp_path: Path) -> Iterator[Any]:
    engine = create_engine(f"sqlite:///{tmp_path}/crm.db")
    init_db(engine)
    yield engine
    engine.dispose()


def test_run_export_to_pdf(sqlite_crm: Any, tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    seed(sqlite_crm, "t1", 120)
    seed(sqlite_crm, "t2", 20)
    seen: list[float] = []
    payload = ExportPayload(tenant_id="t1", user_id="u1", entity_type="contacts", format="pdf")
    out = run_export(payload, sqlite_crm, files, "job-pdf", seen.append)
    assert out["rows"] == 120 and out["format"] == "pdf" and out["path"].endswith(".pdf")
    assert seen[-1] == 100
    path = files / out["path"]
    texts = pages_text(path)
    assert f"Page {len(texts)} of {len(texts)}" in texts[-1]
    assert "contacts" in texts[0]
    for text in (texts[0], texts[-1]):  # 16 columns, and every header whole on each page
        assert set(out["fields"]) <= set(text.splitlines()), text[:300]
    assert PdfReader(path).pages[0].mediabox.width > 800, "16 columns: landscape"
    assert not list(path.parent.glob(".*partial")), "no partial file left behind"

    narrow = ExportPayload(tenant_id="t1", user_id="u1", entity_type="contacts", format="pdf",
                           fields=["email", "city"])  # fmt: skip
    out = run_export(narrow, sqlite_crm, files, "job-narrow", seen.append)
    text = "".join(pages_text(files / out["path"]))
    assert len(re.findall(r"@", text)) == 120, "tenant t1's 120 emails, none of t2's"

    with pytest.raises(PermanentError, match=r"120 rows x 16 fields.*limit of 1000 cells"):
        run_export(payload, sqlite_crm, files, "job-big", seen.append, max_pdf_cells=1000)
    assert not list((files / "exports" / "t1").glob("*job-big*"))


def test_a_pdf_export_reports_progress_chunk_by_chunk(
    sqlite_crm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(sqlite_crm, "t1", 160)
    monkeypatch.setattr(pdf, "CHUNK_CELLS", 800)  # 50 rows of 16 fields: four chunks
    seen: list[float] = []
    payload = ExportPayload(tenant_id="t1", user_id="u1", entity_type="contacts", format="pdf")
    run_export(payload, sqlite_crm, tmp_path, "job-progress", seen.append)
    assert seen == [100 * n / 160 for n in (50, 100, 150)] + [99.0, 100], seen


@pytest.mark.parametrize("entity", sorted(ENTITY_TABLES))
def test_every_header_of_every_entity_prints_whole(
    sqlite_crm: Any, tmp_path: Path, entity: str
) -> None:
    """All fields of an entity, with seeded values as long as they come (emails, dates,
    company names): the headers keep their width, the data columns wrap instead."""
    seed(sqlite_crm, "t1", 40)
    payload = ExportPayload(tenant_id="t1", user_id="u1", entity_type=entity, format="pdf")
    out = run_export(payload, sqlite_crm, tmp_path, f"job-{entity}", lambda _: None)
    lines = pages_text(tmp_path / out["path"])[0].splitlines()
    assert set(out["fields"]) <= set(lines), [line for line in lines if "_" in line][:20]


FIELD_NAMES = st.from_regex(r"[a-z]{1,12}(_[a-z]{1,10}){0,2}", fullmatch=True)


@given(st.lists(FIELD_NAMES, min_size=1, max_size=16, unique=True), st.integers(1, 60))
@settings(max_examples=60, deadline=None)
def test_each_column_is_at_least_as_wide_as_its_header(columns: list[str], chars: int) -> None:
    from reportlab.pdfbase.pdfmetrics import stringWidth

    sample = [["W" * chars + "@example.com" for _ in columns]] * 3
    layout = pdf._Layout.fit(columns, sample)
    frame = pdf._FRAME_WIDTH_PT[layout.landscape]
    assert sum(layout.widths) <= 100.1
    assert layout.header_pt >= 2 and layout.header_pt <= layout.font_pt
    if len(columns) <= 16 and max(map(len, columns)) <= 12:
        assert layout.header_pt == layout.font_pt  # all our entities' fields: 16 at most
    for name, share in zip(columns, layout.widths, strict=True):
        header = stringWidth(name, "DejaVuSans-Bold", layout.header_pt) + pdf._CELL_PADDING_PT
        assert frame * share / 100 >= header, (name, layout)


# --------------------------------------------------------------------------- fonts and scripts

NAMES = [
    "Дмитрий Иванов",  # Cyrillic
    "Γιώργος Παπαδόπουλος",  # Greek
    "Łukasz Żółć-Gęślą",  # Polish
    "Nguyễn Văn Đức",  # Vietnamese
    "王小明",  # Chinese
    "山田太郎 やまだ カタカナ",  # Japanese
    "김민준",  # Korean
    "Jürgen Ørsted Ñuñez",
]


def fonts_of(path: Path) -> set[str]:
    """The base font names a PDF's pages use (subset prefixes dropped)."""
    names = set()
    for page in PdfReader(path).pages:
        for font in page["/Resources"]["/Font"].values():
            font = font.get_object()
            assert "/FontFile2" in (
                font["/DescendantFonts"][0].get_object()["/FontDescriptor"]
                if "/DescendantFonts" in font
                else font.get("/FontDescriptor", {})
            ) or font["/BaseFont"] in ("/Helvetica", "/Helvetica-Bold"), font["/BaseFont"]
            names.add(str(font["/BaseFont"]).split("+")[-1].lstrip("/"))
    return names


def test_names_in_every_script_print_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "names.pdf"
    notes = ExportNotes()
    rows = [(n, name, f"p{n}@example.com") for n, name in enumerate(NAMES, start=1)]
    # Vietnamese as a keyboard may send it: decomposed (NFD); printed composed
    rows.append((9, unicodedata.normalize("NFD", "Nguyễn Thị Ánh"), "nfd@example.com"))
    write_pdf(path, ["id", "name", "email"], rows, title="contacts", generated_at=GENERATED,
              notes=notes)  # fmt: skip
    text = squash("".join(pages_text(path)))
    for name in [*NAMES, "Nguyễn Thị Ánh"]:
        assert squash(name) in text, name
    assert "\ufffd" not in text and "■" not in text
    assert notes.result() == {}
    assert {"DejaVuSans", "DejaVuSans-Bold", "DroidSansFallback", "NanumSquareR"} <= fonts_of(path)


def test_characters_no_font_has_are_marked_and_their_rows_listed(tmp_path: Path) -> None:
    path = tmp_path / "missing.pdf"
    notes = ExportNotes()
    rows = [(1, "Ann"), (2, "สมชาย ใจดี"), (3, "nul\x00 here"), (4, "देवनागरी"), (5, "Zoë")]
    write_pdf(path, ["id", "name"], rows, generated_at=GENERATED, notes=notes)
    result = notes.result()
    assert result["missing_glyph_rows"] == [2, 3, 4]
    assert result["missing_glyph_rows_total"] == 3
    assert "\x00" in result["missing_glyphs"] and "ส" in result["missing_glyphs"]
    (warning,) = notes.warnings("pdf")
    assert warning.startswith("3 row(s) have characters the PDF's fonts cannot show")
    assert "rows 2, 3, 4." in warning
    text = "".join(pages_text(path))
    assert "nul\ufffd here" in text and "Zoë" in text


LETTERS = st.characters(
    codec="utf-8",
    categories=["Lu", "Ll", "Lo"],
    # Basic Latin to Greek and Cyrillic, CJK ideographs, kana, Hangul syllables
    min_codepoint=0x41,
    max_codepoint=0xD7A3,
).filter(
    lambda ch: (
        ch.isalpha()
        and (
            ord(ch) < 0x530
            or 0x3041 <= ord(ch) <= 0x30FF
            or 0x4E00 <= ord(ch) <= 0x9FFF
            or 0xAC00 <= ord(ch) <= 0xD7A3
            or 0x1E00 <= ord(ch) <= 0x1EFF
        )
        and unicodedata.normalize("NFC", ch) == ch
        and not pdf.missing_glyphs(ch)
    )
)


@given(st.lists(st.text(LETTERS, min_size=1, max_size=12), min_size=1, max_size=25))
@settings(max_examples=8, deadline=None)
def test_any_name_the_fonts_cover_reads_back(names: list[str]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.pdf"
        notes = ExportNotes()
        write_pdf(path, ["id", "name"], [(n, name) for n, name in enumerate(names)],
                  generated_at=GENERATED, notes=notes)  # fmt: skip
        text = squash("".join(pages_text(path)))
        for name in names:
            assert squash(name) in text, name
        assert notes.result() == {}


def test_a_latin_export_loads_no_cjk_font() -> None:
    probe = (
        "import sys, tempfile, pathlib;"
        "from crmqueue.formats import pdf;"
        "d = tempfile.mkdtemp();"
        "pdf.write_pdf(pathlib.Path(d) / 'x.pdf', ['id', 'name'], [(1, 'Zoë Łódź Ωmega Жук')]);"
        "print(sorted(pdf._cmaps))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)  # fmt: skip
    assert result.stdout.strip() == "['DejaVuSans']"


def test_the_fonts_ship_with_their_licences() -> None:
    from importlib.resources import files

    fonts = files("crmqueue.formats") / "fonts"
    names = {entry.name for entry in fonts.iterdir()}
    assert {"DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DroidSansFallbackFull.ttf",
            "NanumSquareR.ttf", "LICENSE-DejaVu.txt", "LICENSE-DroidSansFallback.txt",
            "LICENSE-Nanum.txt"} <= names  # fmt: skip
    assert "Bitstream Vera" in (fonts / "LICENSE-DejaVu.txt").read_text()
    assert "Apache License" in (fonts / "LICENSE-DroidSansFallback.txt").read_text()
    assert "SIL Open Font License" in (fonts / "LICENSE-Nanum.txt").read_text()
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert '"formats/fonts/*.ttf", "formats/fonts/LICENSE-*.txt"' in pyproject


def test_wait_prints_one_row_and_the_warnings(
    sqlite_crm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crmqueue.cli.transfer import _finish
    from crmqueue.crm import schema
    from crmqueue.jobs import JobInfo

    seed(sqlite_crm, "t1", 1)
    with sqlite_crm.begin() as conn:
        conn.execute(schema.contacts.update().values(title="x" * 400, city="Bangkok กรุงเทพ"))
    payload = ExportPayload(tenant_id="t1", user_id="u1", entity_type="contacts", format="pdf")
    out = run_export(payload, sqlite_crm, tmp_path, "job-one", lambda _: None)
    info = JobInfo(id="job-one", queue="import-export", name="export_records", tenant="t1",
                   state="completed", progress=100, attempts=1, max_attempts=3, errors=[],
                   created_at=None, started_at=None, finished_at=None, run_at=None,
                   result=out, payload={})  # fmt: skip
    _finish(info)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"1 row exported to {out['file']}"
    assert len(out["warnings"]) == 2
    assert printed[1:] == [f"warning: {warning}" for warning in out["warnings"]]
    assert "title" in printed[1] and "CSV" in printed[1]
