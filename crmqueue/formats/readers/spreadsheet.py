"""Spreadsheets: XLSX, XLS (Excel 97-2003) and ODS (LibreOffice), first or named sheet.

python-calamine (Rust) reads all three, about 12x faster than openpyxl's streaming reader
(200,000 rows of 8 cells: 1.8 s against 21.6 s), but holds the whole sheet in memory:
a 1,000,000-row sheet (510 MB of XML) peaks at 894 MB against openpyxl's 178 MB
(bench/import_export.py). An XLSX sheet of more than CALAMINE_MAX_SHEET_BYTES of XML
(about 250,000 such rows, some 250 MB of memory) is therefore streamed with openpyxl
instead, in flat memory. XLS holds at most 65,536 rows; ODS is parsed whole by either.

What a reader of values alone cannot see is read from the XLSX package itself:
- the date system (`<workbookPr date1904="1">`), so that serial numbers in General cells
  are read as the workbook meant them (crmqueue.crm.entities reads the serials);
- formula cells without a computed value: `<f>` with an empty or missing `<v>`
  (openpyxl writes these), or any formula in a workbook marked `fullCalcOnLoad` (XlsxWriter
  and openpyxl write that, with a cached "0" or nothing: values the writer never computed).
  Both readers give those cells a value (None or 0) that would be stored silently; the
  sheet's XML is scanned for `<f` (the part holding no formula costs one pass of
  decompression and a byte search) and the rows are refused with FORMULA_REASON;
- formulas whose result is an error (`t="e"`, #DIV/0!, #N/A: calamine reads them as
  empty, openpyxl as the error's text), refused with ERROR_REASON.
Rows keep the sheet's own numbers (blank rows skipped, the first non-blank row is the
header).
"""

from __future__ import annotations

import posixpath
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crmqueue.errors import PermanentError
from crmqueue.formats.readers.table import ProblemRow, Row, Table, cell_text, header_names

XLSX_MAX_UNCOMPRESSED = 1024 * 1024 * 1024  # 1 GiB of XML inside the zip
XLSX_MAX_RATIO = 200  # uncompressed / compressed: beyond this it is a zip bomb
CALAMINE_MAX_SHEET_BYTES = 128 * 1024 * 1024  # larger XLSX sheets: openpyxl, streamed
ERROR_REASON = "the formula's result is a spreadsheet error"
FORMULA_REASON = (
    "formula without a computed value: open and save the file in a spreadsheet program first"
)
NAMES = {"xlsx": "XLSX", "xls": "XLS", "ods": "ODS"}
# {row number: {0-based column: why the cell's value cannot be trusted}}
Cells = dict[int, dict[int, str]]
_SCAN_CHUNK = 4 * 1024 * 1024
_FORMULA = re.compile(rb"<(?:\w+:)?f[\s/>]")
_ROW = re.compile(rb"<(?:\w+:)?row\b([^>]*?)(?:/>|>(.*?)</(?:\w+:)?row>)", re.S)
_ROW_START = re.compile(rb"<(?:\w+:)?row[\s/>]")
_ROW_END = re.compile(rb"</(?:\w+:)?row>|<(?:\w+:)?row\b[^>]*/>")
_CELL = re.compile(rb"<(?:\w+:)?c\b([^>]*?)(?:/>|>(.*?)</(?:\w+:)?c>)", re.S)
_VALUE = re.compile(rb"<(?:\w+:)?v(?:\s[^>]*)?>[^<]")
_ERROR_TYPE = re.compile(rb'\bt="e"')
_ERROR_VALUE = re.compile(rb"<(?:\w+:)?v(?:\s[^>]*)?>([^<]*)<")
_REF = re.compile(rb'\br="\$?([A-Za-z]*)\$?(\d*)"')
_XML_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")
_SURROGATE_ESCAPE = re.compile(r"_x([dD][89a-fA-F][0-9A-Fa-f]{2})_")
_NULL_DATE = re.compile(rb'null-date\b[^>]*?date-value="(\d{4}-\d\d-\d\d)')
_SURROGATE = re.compile("[\ud800-\udfff]")


def read_spreadsheet(path: Path, file_type: str, sheet: str | None = None) -> Table:
    if file_type in ("xlsx", "ods"):
        _check_zip(path, NAMES[file_type])
    if file_type != "xlsx":
        return _calamine(path, file_type, sheet, None)
    info = _xlsx_info(path, sheet)
    if info.sheet_bytes > CALAMINE_MAX_SHEET_BYTES:
        return _openpyxl(path, info)
    return _calamine(path, file_type, info.sheet, info)


# --------------------------------------------------------------------------- the package


def _check_zip(path: Path, kind: str) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise PermanentError(
            f"{path.name}: not a valid {kind} file (corrupt, or password-protected): {exc}"
        ) from None
    total = sum(info.file_size for info in infos)
    packed = sum(info.compress_size for info in infos) or 1
    if total > XLSX_MAX_UNCOMPRESSED or (
        total > 10 * 1024 * 1024 and total / packed > XLSX_MAX_RATIO
    ):
        raise PermanentError(
            f"{path.name}: refused: the {kind} expands to {total} bytes"
            f" ({total // packed}x its size), a zip bomb or over the limit"
        )


@dataclass
class XlsxInfo:
    """What the XLSX package says about the chosen sheet."""

    sheet: str
    part: str  # the sheet's XML inside the zip
    sheet_bytes: int
    date_system: int = 1900
    full_calc: bool = False  # cached formula values were not computed by the writer
    formula_cells: Cells = field(default_factory=dict)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attribute(element: ET.Element, name: str) -> str | None:
    for key, value in element.attrib.items():
        if _local(key) == name:
            return value
    return None


def _xlsx_info(path: Path, sheet: str | None) -> XlsxInfo:
    invalid = f"{path.name}: not a valid XLSX file"
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            book_part = "xl/workbook.xml"
            if "_rels/.rels" in names:
                for rel in ET.fromstring(archive.read("_rels/.rels")):
                    if (rel.get("Type") or "").endswith("/officeDocument"):
                        book_part = (rel.get("Target") or book_part).lstrip("/")
            book = ET.fromstring(archive.read(book_part))
            base = posixpath.dirname(book_part)
            rels_part = posixpath.join(base, "_rels", posixpath.basename(book_part) + ".rels")
            targets = {
                rel.get("Id"): rel.get("Target") or ""
                for rel in ET.fromstring(archive.read(rels_part))
            }
            sheets: list[tuple[str, str]] = []
            date_system, full_calc = 1900, False
            for element in book.iter():
                tag = _local(element.tag)
                if tag == "workbookPr":
                    date_system = 1904 if element.get("date1904") in ("1", "true") else 1900
                elif tag == "calcPr":
                    full_calc = element.get("fullCalcOnLoad") in ("1", "true")
                elif tag == "sheet":
                    target = targets.get(_attribute(element, "id") or "", "")
                    part = (
                        target.lstrip("/")
                        if target.startswith("/")
                        else posixpath.normpath(posixpath.join(base, target))
                    )
                    if part in names and "worksheets/" in part:  # not a chart sheet
                        sheets.append((element.get("name") or "", part))
            if not sheets:
                raise PermanentError(f"{path.name}: the workbook has no worksheet")
            if sheet is not None:
                chosen = [entry for entry in sheets if entry[0] == sheet]
                if not chosen:
                    raise PermanentError(
                        f"{path.name}: no sheet named {sheet!r}"
                        f" (sheets: {', '.join(name for name, _ in sheets)})"
                    )
                sheets = chosen
            name, part = sheets[0]
            info = XlsxInfo(name, part, archive.getinfo(part).file_size, date_system, full_calc)
            with archive.open(part) as stream:
                info.formula_cells = _formula_cells(stream, full_calc)
    except (KeyError, ET.ParseError, zipfile.BadZipFile, OSError) as exc:
        raise PermanentError(f"{invalid}: {exc}") from None
    return info


def _column_index(letters: bytes) -> int:
    index = 0
    for char in letters.upper():
        index = index * 26 + char - 64
    return index - 1


def _formula_marks(head: bytes) -> tuple[bytes, ...]:
    """What a byte search looks for to find formula elements (<f>, <f t="shared" .../>):
    "<f", which no other element of a sheet's cells starts with, or also ":f" when the
    sheet's elements carry a namespace prefix (<x:f>). About as fast as decompressing."""
    if b"<worksheet" in head:
        return (b"<f",)
    return (b"<f", b":f")  # prefixed, or the root not read yet


def _closes(between: bytes) -> bool:
    """Whether `between` ('<' ... 'row>') makes a closing row tag: </row> or </x:row>."""
    return between == b"/" or (between[:1] == b"/" and between[-1:] == b":")


def _cut(data: bytes) -> int:
    """The end of the last complete row in `data` (0: none)."""
    end = data.rfind(b"row>")
    while end > 0 and not _closes(data[data.rfind(b"<", 0, end) + 1 : end]):
        end = data.rfind(b"row>", 0, end)
    if end > 0:
        return end + 4
    ends = list(_ROW_END.finditer(data)) if len(data) > 16 * _SCAN_CHUNK else []
    return ends[-1].end() if ends else 0


def _last_row(part: bytes, last_row: int) -> int:
    """The number of the last row in `part`, a run of complete rows without formulas."""
    start = max(part.rfind(b"<row "), part.rfind(b"<row>"))
    if start < 0:  # rows with a namespace prefix: the slow way
        starts = list(_ROW_START.finditer(part))
        if not starts:
            return last_row
        start = starts[-1].start()
    ref = _REF.search(part, start, part.find(b">", start))
    if ref is not None and ref.group(2):
        return int(ref.group(2))
    return last_row + len(_ROW_START.findall(part))


def _formula_cells(stream: Any, full_calc: bool) -> Cells:
    """{row number: 0-based columns} of the formula cells whose value was not computed
    by a spreadsheet program (see the module docstring)."""
    found: Cells = {}
    last_row = 0  # the number of the last row seen, for rows written without r="..."
    tail = b""
    marks: tuple[bytes, ...] = ()
    while True:
        chunk = stream.read(_SCAN_CHUNK)
        data = tail + chunk
        if len(marks) != 1:
            marks = _formula_marks(data)
        cut = _cut(data) if chunk else len(data)
        part, tail = data[:cut], data[cut:]
        if not part:
            pass
        elif not any(mark in part for mark in marks) or _FORMULA.search(part) is None:
            last_row = _last_row(part, last_row)
        else:
            for row in _ROW.finditer(part):
                ref = _REF.search(row.group(1))
                last_row = int(ref.group(2)) if ref is not None and ref.group(2) else last_row + 1
                body = row.group(2) or b""
                if _FORMULA.search(body) is None:
                    continue
                column = -1
                for cell in _CELL.finditer(body):
                    ref = _REF.search(cell.group(1))
                    column = (
                        _column_index(ref.group(1))
                        if ref is not None and ref.group(1)
                        else column + 1
                    )
                    content = cell.group(2) or b""
                    if not _FORMULA.search(content):
                        continue
                    if full_calc or not _VALUE.search(content):
                        found.setdefault(last_row, {})[column] = FORMULA_REASON
                    elif _ERROR_TYPE.search(cell.group(1)):
                        error = _ERROR_VALUE.search(content)
                        text = error.group(1).decode("utf-8", "replace") if error else "?"
                        found.setdefault(last_row, {})[column] = f"{ERROR_REASON} ({text})"
        if not chunk:
            return found


_TABLE_NS = "{urn:oasis:names:tc:opendocument:xmlns:table:1.0}"
_OFFICE_NS = "{urn:oasis:names:tc:opendocument:xmlns:office:1.0}"
_ODS_CELLS = (f"{_TABLE_NS}table-cell", f"{_TABLE_NS}covered-table-cell")


def _ods_scan(path: Path, sheet: str) -> tuple[Cells, int]:
    """({row number: 0-based columns} of the ODS sheet's formula cells without a computed
    value, the date system of its serial numbers). A formula without a value is
    `table:formula` without `office:value-type` (ODF 1.2 Part 1, 19.385 and 19.642;
    LibreOffice always writes the value, generators may not). The date system is 1904
    when the document's null date (19.672) is 1904-01-01, else 1900 (LibreOffice's
    default null date, 1899-12-30, gives the 1900 system's dates from 1900-03-01 on)."""
    found: Cells = {}
    formulas, date_system = False, 1900
    with zipfile.ZipFile(path) as archive, archive.open("content.xml") as stream:
        tail = b""
        while chunk := stream.read(_SCAN_CHUNK):
            data = tail + chunk
            formulas = formulas or b"table:formula" in data
            if b"null-date" in data and (null := _NULL_DATE.search(data)) is not None:
                date_system = 1904 if null.group(1) == b"1904-01-01" else 1900
            tail = data[-200:]
    if not formulas:
        return found, date_system
    with zipfile.ZipFile(path) as archive, archive.open("content.xml") as stream:
        depth = 0  # inside the chosen table (nested tables are not rows of it)
        row, repeat_rows, column = 0, 1, 0
        for event, element in ET.iterparse(stream, events=("start", "end")):
            tag = element.tag
            if tag == f"{_TABLE_NS}table":
                if event == "start" and (depth or element.get(f"{_TABLE_NS}name") == sheet):
                    depth += 1
                elif event == "end" and depth:
                    depth -= 1
                    if not depth:
                        return found, date_system
            elif depth != 1 or event != "start":
                if event == "end" and depth == 1 and tag == f"{_TABLE_NS}table-row":
                    row += repeat_rows
                if event == "end":
                    element.clear()
            elif tag == f"{_TABLE_NS}table-row":
                repeat_rows = int(element.get(f"{_TABLE_NS}number-rows-repeated") or 1)
                column = 0
            elif tag in _ODS_CELLS:
                repeat = int(element.get(f"{_TABLE_NS}number-columns-repeated") or 1)
                if (
                    element.get(f"{_TABLE_NS}formula") is not None
                    and element.get(f"{_OFFICE_NS}value-type") is None
                ):
                    for number in range(row + 1, row + 1 + min(repeat_rows, 1000)):
                        found.setdefault(number, {}).update(
                            dict.fromkeys(range(column, column + repeat), FORMULA_REASON)
                        )
                column += repeat
    return found, date_system


# --------------------------------------------------------------------------- readers


def _unescape(value: Any, pattern: re.Pattern[str] = _XML_ESCAPE) -> Any:
    """OOXML writes characters XML cannot hold (CR, control characters, the halves of a
    surrogate pair a writer split) as _xHHHH_; openpyxl's streaming reader leaves them so,
    calamine all but surrogates. Pairs are joined; a lone half stays, to be refused."""
    if isinstance(value, str) and "_x" in value:
        text = pattern.sub(lambda m: chr(int(m.group(1), 16)), value)
        if text.isascii() or not _SURROGATE.search(text):
            return text
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
    return value


def _rows(
    records: Iterator[tuple[int, list[Any]]],
    formula_cells: Cells,
    columns: list[str],
) -> Iterator[tuple[int, Row]]:
    """(number, row) from (number, values): blank rows skipped, formula cells refused."""
    for number, values in records:
        cells = [cell_text(value) for value in values]
        if not any(cells):
            continue
        row = dict(zip(columns, cells, strict=False))
        bad = formula_cells.get(number)
        if bad:
            problems = {
                columns[index]: reason for index, reason in sorted(bad.items())
                if index < len(columns)
            }  # fmt: skip
            if problems:
                row = ProblemRow(row, problems)
        yield number, row


def _header_row(
    records: Iterator[tuple[int, list[Any]]], path: Path, sheet: str
) -> tuple[list[str], dict[str, list[str]]]:
    for _number, values in records:
        if any(cell_text(value) for value in values):
            return header_names(values)
    raise PermanentError(f"{path.name}: the sheet {sheet!r} is empty")


def _calamine(path: Path, file_type: str, sheet: str | None, info: XlsxInfo | None) -> Table:
    import python_calamine

    kind = NAMES[file_type]
    try:
        book = python_calamine.CalamineWorkbook.from_path(str(path))
    except (python_calamine.CalamineError, OSError, ValueError) as exc:
        raise PermanentError(
            f"{path.name}: not a valid {kind} file (corrupt, or password-protected): {exc}"
        ) from None
    try:
        if sheet is None:
            worksheets = [
                meta.name
                for meta in book.sheets_metadata
                if meta.typ == python_calamine.SheetTypeEnum.WorkSheet
            ]
            if not worksheets:
                raise PermanentError(f"{path.name}: the workbook has no worksheet")
            sheet = worksheets[0]
        elif sheet not in book.sheet_names:
            raise PermanentError(
                f"{path.name}: no sheet named {sheet!r} (sheets: {', '.join(book.sheet_names)})"
            )
        try:
            data = book.get_sheet_by_name(sheet)
        except (python_calamine.CalamineError, ValueError) as exc:
            raise PermanentError(
                f"{path.name}: the sheet {sheet!r} is not readable: {exc}"
            ) from None
    finally:
        book.close()
    start = data.start
    # iter_rows starts at the sheet's first row but at its first used column: pad, so that
    # columns are the sheet's own (and named as openpyxl's reader names them).
    padding: list[Any] = [None] * (start[1] if start else 0)
    total = data.total_height or 1
    state = {"row": 0}
    xlsx = file_type == "xlsx"

    def numbered() -> Iterator[tuple[int, list[Any]]]:
        for number, values in enumerate(data.iter_rows(), start=1):
            state["row"] = number
            if xlsx:
                values = [_unescape(value, _SURROGATE_ESCAPE) for value in values]
            yield number, padding + values if padding else values

    records = numbered()
    columns, repeated = _header_row(records, path, sheet)
    date_system = 1900  # XLS: its DATEMODE record is not read (calamine applies it only
    # to date-formatted cells): serials in General cells are read in the 1900 system
    if info is not None:
        formula_cells, date_system = info.formula_cells, info.date_system
    elif file_type == "ods":
        try:
            formula_cells, date_system = _ods_scan(path, sheet)
        except (KeyError, ET.ParseError, zipfile.BadZipFile, OSError) as exc:
            raise PermanentError(f"{path.name}: not a valid ODS file: {exc}") from None
    else:
        formula_cells = {}  # XLS: BIFF keeps every formula's last computed value
    return Table(
        columns,
        _rows(records, formula_cells, columns),
        [],
        None,
        lambda: min(1.0, state["row"] / total),
        date_system=date_system,
        repeated=repeated,
    )


def _openpyxl(path: Path, info: XlsxInfo) -> Table:
    import openpyxl  # type: ignore[import-untyped]
    from openpyxl.utils.exceptions import InvalidFileException  # type: ignore[import-untyped]

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise PermanentError(f"{path.name}: not a valid XLSX file: {exc}") from None
    ws = book[info.sheet]
    total = ws.max_row or 0
    state = {"row": 1}

    def numbered() -> Iterator[tuple[int, list[Any]]]:
        try:
            for number, record in enumerate(ws.iter_rows(values_only=True), start=1):
                state["row"] = number
                yield number, [_unescape(cell) for cell in record]
        finally:
            book.close()

    records = numbered()
    try:
        columns, repeated = _header_row(records, path, info.sheet)
    except PermanentError:
        book.close()
        raise
    return Table(
        columns,
        _rows(records, info.formula_cells, columns),
        [],
        None,
        lambda: min(1.0, state["row"] / total) if total else None,
        date_system=info.date_system,
        repeated=repeated,
    )
