"""JSON records: an array of objects, or JSON Lines (one object a line).

Both are read with the standard library's C decoder (the array item by item with
`raw_decode`, so a file of any size is read in bounded memory), text decoded as UTF-8 with
`surrogateescape`: a lone surrogate escape ("\\ud83d") stays a lone surrogate and an
invalid byte an escaped one, and crmqueue.formats.readers.cell_problem refuses that row
alone (ijson's C parser, used before, turned the former into "?" and stopped at the
latter). Numbers are kept as written (1e20 stays "1e20", 1250.50 "1250.50": a text field
stores what the file says, a number field reads every digit). An object or array is no
cell's value: that column's problem in its row. A JSON
Lines line that is not a JSON object is that row's problem; an array that is not valid
JSON stops the import, naming the item, as nothing after the fault can be trusted.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from crmqueue.errors import PermanentError
from crmqueue.formats.readers.table import (
    PEEK_RECORDS,
    WHOLE_ROW,
    ProblemRow,
    Row,
    Table,
    cell_text,
    header_names,
)

SNIFF_BYTES = 64 * 1024
CHUNK_CHARS = 1024 * 1024
MAX_ITEM_CHARS = 64 * 1024 * 1024  # one array item; beyond it the file is refused
# Numbers as their text: no float or Decimal spelling (1E+20) replaces what was written,
# and no int conversion limit (4,300 digits) stops the file.
_DECODER = json.JSONDecoder(parse_float=str, parse_int=str)
_WHITESPACE = " \t\r\n"


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


def _as_row(item: Any) -> Row:
    if not isinstance(item, dict):
        return ProblemRow({}, {WHOLE_ROW: "each record must be a JSON object"})
    row: Row = {}
    problems: dict[str, str] = {}
    for key, value in item.items():
        if isinstance(value, dict | list):
            kind = "an object" if isinstance(value, dict) else "an array"
            problems[str(key)] = f"{kind} is not a value: a column takes text, a number or null"
            row[str(key)] = None
        else:
            row[str(key)] = cell_text(value)
    return ProblemRow(row, problems) if problems else row


def _open(path: Path) -> IO[str]:
    return path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="")


def _finish(path: Path, raw: IO[str], records: Iterator[tuple[int, Row]], progress: Any) -> Table:
    """Peek PEEK_RECORDS records to learn the columns (the keys of all of them, in order
    of appearance), then stream the rest."""
    peeked: list[tuple[int, Row]] = []
    try:
        for item in records:
            peeked.append(item)
            if len(peeked) >= PEEK_RECORDS:
                break
    except BaseException:
        raw.close()
        raise
    columns = header_names(list(dict.fromkeys(key for _, row in peeked for key in row)))
    if not columns and peeked:
        raw.close()
        raise PermanentError(f"{path.name}: the records have no fields")

    def rows() -> Iterator[tuple[int, Row]]:
        try:
            yield from peeked
            yield from records
        finally:
            raw.close()

    return Table(columns, rows(), [], "utf-8", progress)


def _json_array(path: Path) -> Table:
    raw = _open(path)
    size = max(1, path.stat().st_size)
    state = {"read": 0}

    def items() -> Iterator[tuple[int, Row]]:
        buffer, pos, at_end = "", 0, False
        number = 0
        expect = "["  # then: an item or "]", then "," or "]"

        def fill() -> bool:
            nonlocal buffer, pos, at_end
            chunk = raw.read(CHUNK_CHARS)
            state["read"] += len(chunk)
            if not chunk:
                at_end = True
                return False
            buffer = buffer[pos:] + chunk
            pos = 0
            return True

        def fail(what: str) -> PermanentError:
            return PermanentError(f"{path.name}: not valid JSON at item {number + 1}: {what}")

        while True:
            while pos < len(buffer) and buffer[pos] in _WHITESPACE:
                pos += 1
            if pos >= len(buffer):
                if not fill():
                    raise fail("the file ends before the array is closed")
                continue
            char = buffer[pos]
            if expect == "[":
                if char != "[":
                    raise fail("expected '['")
                pos, expect = pos + 1, "item"
            elif expect == "," and char == ",":
                pos, expect = pos + 1, "next"
            elif char == "]" and expect in ("item", ","):
                return
            elif expect in ("item", "next"):
                while True:
                    try:
                        item, end = _DECODER.raw_decode(buffer, pos)
                        # a number could go on in the next chunk
                        if end < len(buffer) or at_end:
                            break
                    except json.JSONDecodeError as exc:
                        if at_end or len(buffer) - pos > MAX_ITEM_CHARS:
                            raise fail(exc.msg) from None
                    if not fill():
                        continue
                pos, expect, number = end, ",", number + 1
                yield number, _as_row(item)
            else:
                raise fail(f"unexpected {char!r}")

    def progress() -> float:
        return 1.0 if raw.closed else min(1.0, state["read"] / size)

    return _finish(path, raw, items(), progress)


def _json_lines(path: Path) -> Table:
    raw = _open(path)
    size = max(1, path.stat().st_size)
    state = {"read": 0}

    def lines() -> Iterator[tuple[int, Row]]:
        for number, line in enumerate(raw, start=1):
            state["read"] += len(line)
            if not line.strip():
                continue
            try:
                item = _DECODER.decode(line)
            except json.JSONDecodeError as exc:
                yield number, ProblemRow({}, {WHOLE_ROW: f"not valid JSON: {exc}"})
                continue
            yield number, _as_row(item)

    return _finish(
        path, raw, lines(), lambda: 1.0 if raw.closed else min(1.0, state["read"] / size)
    )
