"""Streaming readers for imports: CSV (sniffed dialect, BOM, quoted newlines, UTF-8 with a
reported cp1252 fallback), XLSX (openpyxl read-only, first or named sheet) and JSON (an
array, or JSON Lines). Every reader yields (row number, {column: text or None}) with the
header as row 1, and raises PermanentError for input that cannot be read at all."""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crmqueue.errors import PermanentError

SNIFF_BYTES = 64 * 1024
XLSX_MAX_UNCOMPRESSED = 1024 * 1024 * 1024  # 1 GiB of XML inside the zip
XLSX_MAX_RATIO = 200  # uncompressed / compressed: beyond this it is a zip bomb
PEEK_RECORDS = 1000  # JSON records read ahead to learn the columns

Row = dict[str, str | None]


@dataclass
class Table:
    """An opened source: its columns, its rows (streamed once) and how far it has got."""

    columns: list[str]
    rows: Iterator[tuple[int, Row]]
    notes: list[str] = field(default_factory=list)
    encoding: str | None = None
    _progress: Any = None

    def progress(self) -> float | None:
        """Fraction read so far (0-1), when the reader can tell."""
        return self._progress() if self._progress else None


def _header(names: list[Any]) -> list[str]:
    columns: list[str] = []
    for index, raw in enumerate(names, start=1):
        name = _text(raw) or f"column_{index}"
        base, n = name, 2
        while name in columns:
            name, n = f"{base}_{n}", n + 1
        columns.append(name)
    return columns


def _text(value: Any) -> str | None:
    """A cell as text: None for empty; integral floats without '.0'; ISO dates."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value)
    text = str(value).strip()
    return text or None


def open_table(path: Path, file_type: str, sheet: str | None = None) -> Table:
    if file_type == "csv":
        return read_csv(path)
    if file_type == "xlsx":
        return read_xlsx(path, sheet)
    if file_type == "json":
        return read_json(path)
    raise PermanentError(f"unknown file type {file_type!r}")


# --------------------------------------------------------------------------- CSV


def _detect_encoding(path: Path) -> tuple[str, list[str]]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError:
                return "cp1252", ["the file is not valid UTF-8: decoded as cp1252 (Windows-1252)"]
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "cp1252", ["the file is not valid UTF-8: decoded as cp1252 (Windows-1252)"]
    return "utf-8-sig", []


def read_csv(path: Path) -> Table:
    with path.open("rb") as handle:
        sample = handle.read(SNIFF_BYTES)
    if b"\x00" in sample:
        raise PermanentError(
            f"{path.name}: not a text CSV file (it contains NUL bytes; binary or UTF-16?)"
        )
    if not sample.lstrip(codecs.BOM_UTF8).strip():
        raise PermanentError(f"{path.name}: the file is empty")
    encoding, notes = _detect_encoding(path)
    text = sample.decode(encoding, errors="ignore")
    if len(sample) == SNIFF_BYTES and "\n" in text:
        text = text[: text.rindex("\n")]
    try:
        dialect: Any = csv.Sniffer().sniff(text, delimiters=",;\t|")
        dialect.doublequote = True  # the sniffer guesses this badly; RFC 4180 files use it
    except csv.Error:
        dialect = csv.excel
    raw = path.open("r", encoding=encoding, newline="")
    size = max(1, path.stat().st_size)
    reader = csv.reader(raw, dialect)
    try:
        header = next(reader)
    except StopIteration:
        raw.close()
        raise PermanentError(f"{path.name}: the file is empty") from None
    except csv.Error as exc:
        raw.close()
        raise PermanentError(f"{path.name}: not a readable CSV file: {exc}") from None
    columns = _header(header)

    def rows() -> Iterator[tuple[int, Row]]:
        number = 1
        try:
            for record in reader:
                number += 1
                if not any(cell.strip() for cell in record):
                    continue
                values = [_text(cell) for cell in record]
                row = dict(zip(columns, values, strict=False))
                if len(values) > len(columns):
                    row["__extra__"] = ",".join(v or "" for v in values[len(columns) :])
                yield number, row
        except csv.Error as exc:
            raise PermanentError(f"{path.name}: CSV error near row {number}: {exc}") from None
        finally:
            raw.close()

    def progress() -> float:
        try:
            return min(1.0, raw.buffer.tell() / size) if not raw.closed else 1.0  # type: ignore[attr-defined]
        except (OSError, ValueError):
            return 1.0

    return Table(columns, rows(), notes, encoding, progress)


# --------------------------------------------------------------------------- XLSX


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise PermanentError(
            f"{path.name}: not a valid XLSX file (corrupt, or password-protected): {exc}"
        ) from None
    total = sum(info.file_size for info in infos)
    packed = sum(info.compress_size for info in infos) or 1
    if total > XLSX_MAX_UNCOMPRESSED or (
        total > 10 * 1024 * 1024 and total / packed > XLSX_MAX_RATIO
    ):
        raise PermanentError(
            f"{path.name}: refused: the XLSX expands to {total} bytes"
            f" ({total // packed}x its size), a zip bomb or over the limit"
        )


def _xml_unescape(value: Any) -> Any:
    """OOXML writes characters XML cannot hold (CR, control characters) as _xHHHH_;
    openpyxl's read-only reader leaves them so."""
    if isinstance(value, str) and "_x" in value:
        from openpyxl.utils.escape import unescape  # type: ignore[import-untyped]

        return unescape(value)
    return value


def read_xlsx(path: Path, sheet: str | None = None) -> Table:
    import openpyxl  # type: ignore[import-untyped]
    from openpyxl.utils.exceptions import InvalidFileException  # type: ignore[import-untyped]

    _check_zip(path)
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise PermanentError(f"{path.name}: not a valid XLSX file: {exc}") from None
    if sheet is not None and sheet not in book.sheetnames:
        book.close()
        raise PermanentError(
            f"{path.name}: no sheet named {sheet!r} (sheets: {', '.join(book.sheetnames)})"
        )
    ws = book[sheet] if sheet is not None else book.worksheets[0]
    values = ws.iter_rows(values_only=True)
    header = next(values, None)
    if header is None or not any(cell is not None for cell in header):
        book.close()
        raise PermanentError(f"{path.name}: the sheet {ws.title!r} is empty")
    columns = _header(list(header))
    total = ws.max_row or 0
    state = {"row": 1}

    def rows() -> Iterator[tuple[int, Row]]:
        try:
            for number, record in enumerate(values, start=2):
                state["row"] = number
                cells = [_text(_xml_unescape(cell)) for cell in record]
                if not any(cells):
                    continue
                yield number, dict(zip(columns, cells, strict=False))
        finally:
            book.close()

    def progress() -> float | None:
        return min(1.0, state["row"] / total) if total else None

    return Table(columns, rows(), [], None, progress)


# --------------------------------------------------------------------------- JSON


def read_json(path: Path) -> Table:
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if b"\x00" in head:
        raise PermanentError(f"{path.name}: not a UTF-8 JSON file (it contains NUL bytes)")
    stripped = head.lstrip(codecs.BOM_UTF8).lstrip()
    if not stripped:
        raise PermanentError(f"{path.name}: the file is empty")
    if stripped.startswith(b"["):
        return _json_array(path)
    return _json_lines(path)


def _as_row(item: Any, where: str) -> Row:
    if not isinstance(item, dict):
        raise PermanentError(f"{where}: each record must be a JSON object")
    return {str(key): _text(value) for key, value in item.items()}


def _json_array(path: Path) -> Table:
    """Stream the array's items with ijson (its C parser), so a file of any size is read
    in constant memory; the columns are the keys of the first PEEK_RECORDS items, as for
    JSON Lines."""
    import ijson  # type: ignore[import-untyped]

    raw = path.open("rb")
    if raw.read(len(codecs.BOM_UTF8)) != codecs.BOM_UTF8:
        raw.seek(0)
    size = max(1, path.stat().st_size)
    items = iter(ijson.items(raw, "item", use_float=True))
    state = {"n": 0}

    def take() -> Row | None:
        number = state["n"] + 1
        try:
            item = next(items)
        except StopIteration:
            return None
        except (ijson.JSONError, UnicodeDecodeError) as exc:
            raw.close()
            raise PermanentError(f"{path.name}: not valid JSON at item {number}: {exc}") from None
        state["n"] = number
        return _as_row(item, f"{path.name}: item {number}")

    peeked: list[tuple[int, Row]] = []
    while len(peeked) < PEEK_RECORDS and (record := take()) is not None:
        peeked.append((state["n"], record))
    columns = _header(list(dict.fromkeys(key for _, row in peeked for key in row)))
    if not columns and peeked:
        raw.close()
        raise PermanentError(f"{path.name}: the records have no fields")

    def rows() -> Iterator[tuple[int, Row]]:
        try:
            yield from peeked
            while (record := take()) is not None:
                yield state["n"], record
        finally:
            raw.close()

    def progress() -> float:
        return 0.0 if raw.closed else min(1.0, raw.tell() / size)

    return Table(columns, rows(), [], "utf-8", progress)


def _json_lines(path: Path) -> Table:
    raw = path.open("r", encoding="utf-8-sig")
    size = max(1, path.stat().st_size)
    peeked: list[tuple[int, Row]] = []
    lines = iter(raw)
    number = 0

    def parse(line: str, number: int) -> Row:
        try:
            return _as_row(json.loads(line), f"{path.name}: line {number}")
        except ValueError as exc:
            raise PermanentError(f"{path.name}: line {number} is not valid JSON: {exc}") from None

    try:
        for line in lines:
            number += 1
            if line.strip():
                peeked.append((number, parse(line, number)))
                if len(peeked) >= PEEK_RECORDS:
                    break
    except UnicodeDecodeError as exc:
        raw.close()
        raise PermanentError(f"{path.name}: not UTF-8 JSON: {exc}") from None
    columns = _header(list(dict.fromkeys(key for _, row in peeked for key in row)))
    consumed = {"bytes": 0}

    def rows() -> Iterator[tuple[int, Row]]:
        nonlocal number
        try:
            yield from peeked
            for line in lines:
                number += 1
                consumed["bytes"] += len(line)
                if line.strip():
                    yield number, parse(line, number)
        finally:
            raw.close()

    return Table(columns, rows(), [], "utf-8", lambda: min(1.0, consumed["bytes"] / size))
