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
    bom_encoding,
    cell_text,
    header_names,
    looks_binary,
)

SNIFF_BYTES = 64 * 1024
CHUNK_CHARS = 1024 * 1024
MAX_ITEM_CHARS = 64 * 1024 * 1024  # one array item; beyond it the file is refused
# Numbers as their text: no float or Decimal spelling (1E+20) replaces what was written,
# and no int conversion limit (4,300 digits) stops the file.
_DECODER = json.JSONDecoder(parse_float=str, parse_int=str)
_WHITESPACE = " \t\r\n"


_TOO_DEEP = "nested too deeply to read (more levels of arrays or objects than Python allows)"


def read_json(path: Path) -> Table:
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    encoding = bom_encoding(head) or "utf-8-sig"
    if encoding == "utf-8-sig" and looks_binary(head):
        raise PermanentError(f"{path.name}: not a UTF-8 JSON file (it contains NUL bytes)")
    stripped = head.decode(encoding, errors="ignore").lstrip("\ufeff" + _WHITESPACE)
    if not stripped:
        raise PermanentError(f"{path.name}: the file is empty")
    if stripped.startswith("["):
        return _json_array(path, encoding)
    return _json_lines(path, encoding)


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


def _open(path: Path, encoding: str) -> IO[str]:
    return path.open("r", encoding=encoding, errors="surrogateescape", newline="")


def _finish(
    path: Path, raw: IO[str], records: Iterator[tuple[int, Row]], progress: Any, encoding: str
) -> Table:
    """Peek PEEK_RECORDS records to learn the columns (the keys of all of them, in order
    of appearance), then stream the rest. A later record's key not among them is that
    record's problem, under the key's own name (not a column): the importer refuses the
    row when the key would have mapped to a field, rather than lose its value."""
    peeked: list[tuple[int, Row]] = []
    try:
        for item in records:
            peeked.append(item)
            if len(peeked) >= PEEK_RECORDS:
                break
    except BaseException:
        raw.close()
        raise
    keys = list(dict.fromkeys(key for _, row in peeked for key in row))
    columns, _ = header_names(keys)  # keys of a mapping never repeat
    if not columns and peeked:
        raw.close()
        raise PermanentError(f"{path.name}: the records have no fields")
    known = set(keys)
    late = f"field first seen after record {PEEK_RECORDS:,}: it was not among the columns"

    def rows() -> Iterator[tuple[int, Row]]:
        try:
            yield from peeked
            for number, row in records:
                if not known.issuperset(row):
                    problems = dict(getattr(row, "problems", {}))
                    problems.update((key, late) for key in row if key not in known)
                    row = ProblemRow(row, problems)
                yield number, row
        finally:
            raw.close()

    name = "utf-8" if encoding == "utf-8-sig" else encoding
    return Table(columns, rows(), [], name, progress)


def _json_array(path: Path, encoding: str) -> Table:
    raw = _open(path, encoding)
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
                row: Row | None = None
                while True:
                    try:
                        item, end = _DECODER.raw_decode(buffer, pos)
                        # a number could go on in the next chunk
                        if end < len(buffer) or at_end:
                            break
                    except json.JSONDecodeError as exc:
                        if at_end or len(buffer) - pos > MAX_ITEM_CHARS:
                            raise fail(exc.msg) from None
                    except RecursionError:
                        skipped = _nested_end(buffer, pos)
                        if skipped is not None:
                            end, row = skipped, ProblemRow({}, {WHOLE_ROW: _TOO_DEEP})
                            break
                        if at_end or len(buffer) - pos > MAX_ITEM_CHARS:
                            raise fail(_TOO_DEEP) from None
                    if not fill():
                        continue
                pos, expect, number = end, ",", number + 1
                yield number, _as_row(item) if row is None else row
            else:
                raise fail(f"unexpected {char!r}")

    def progress() -> float:
        return 1.0 if raw.closed else min(1.0, state["read"] / size)

    return _finish(path, raw, items(), progress, encoding)


def _nested_end(text: str, start: int) -> int | None:
    """The end of the array or object opening at `start` (None: not within `text`),
    counting brackets outside strings: the item is skipped without being decoded."""
    depth, in_string, escaped = 0, False, False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return index + 1
    return None


def _json_lines(path: Path, encoding: str) -> Table:
    raw = _open(path, encoding)
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
            except RecursionError:
                yield number, ProblemRow({}, {WHOLE_ROW: _TOO_DEEP})
                continue
            yield number, _as_row(item)

    return _finish(
        path,
        raw,
        lines(),
        lambda: 1.0 if raw.closed else min(1.0, state["read"] / size),
        encoding,
    )
