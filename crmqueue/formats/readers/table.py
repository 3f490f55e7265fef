"""What every import reader yields: a `Table` of rows (`Row`, or a `ProblemRow` naming
what could not be read), the cell and header rules they share, and the file types."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

Row = dict[str, str | None]
FileType = Literal["csv", "tsv", "txt", "xlsx", "xls", "ods", "json"]
FILE_TYPES: tuple[FileType, ...] = ("csv", "tsv", "txt", "xlsx", "xls", "ods", "json")

# The longest cell an import reads, in characters (the largest text field, an activity's
# notes, holds about 250 pages). CSV's own field limit is set to it; a longer cell is
# refused in its row.
MAX_CELL_CHARS = 1024 * 1024
PEEK_RECORDS = 1000  # records read ahead to learn the columns (JSON) or the number style

WHOLE_ROW = ""  # the `problems` key of a problem that is not one column's


class ProblemRow(dict[str, str | None]):
    """A row read only in part: `problems` maps a column (WHOLE_ROW: the row itself) to
    the reason it cannot be trusted."""

    __slots__ = ("problems",)

    def __init__(self, cells: Row, problems: dict[str, str]) -> None:
        super().__init__(cells)
        self.problems = problems


@dataclass
class Table:
    """An opened source: its columns, its rows (streamed once) and how far it has got.

    `date_system` is the spreadsheet date system of serial numbers in the source (1900, or
    1904 for workbooks saved with that option; text sources use 1900, as Excel does);
    `delimiter` is the delimited file's field separator."""

    columns: list[str]
    rows: Iterator[tuple[int, Row]]
    notes: list[str] = field(default_factory=list)
    encoding: str | None = None
    _progress: Callable[[], float | None] | None = None
    date_system: int = 1900
    delimiter: str | None = None
    # A header given to several columns: its text -> the column names they were given
    # ("email", "email_2"); an import that uses one of them is ambiguous.
    repeated: dict[str, list[str]] = field(default_factory=dict)

    def progress(self) -> float | None:
        """Fraction read so far (0-1), when the reader can tell."""
        return self._progress() if self._progress else None


# Byte order marks, longest first (UTF-32 LE's starts with UTF-16 LE's): Excel's "Unicode
# Text" (.txt) export is UTF-16 LE with a BOM. The codec named reads and drops the BOM.
_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)


def bom_encoding(head: bytes) -> str | None:
    """The UTF-16 or UTF-32 codec a file's first bytes announce with a BOM (None: no such
    BOM; UTF-8's BOM is left to the readers' "utf-8-sig")."""
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    return None


def looks_binary(head: bytes) -> bool:
    """Whether a file's first bytes (without a UTF-16/32 BOM) are clearly not text: a NUL
    in the first line (binary, or UTF-16 without a BOM) or more than 8 NULs and more than
    1 in 1,000 bytes. A stray NUL further on is only its row's problem (cell_problem)."""
    if b"\x00" not in head:
        return False
    first_line = head.split(b"\n", 1)[0]
    return b"\x00" in first_line or head.count(b"\x00") > max(8, len(head) // 1000)


_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")


def cell_problem(text: str) -> str | None:
    """Why a cell's text cannot be stored as it is (None: it can): a lone surrogate (a
    truncated emoji, or bytes not valid in the file's encoding, which the readers decode
    with `surrogateescape`), a NUL character, or more than MAX_CELL_CHARS characters."""
    if len(text) > MAX_CELL_CHARS:
        return f"cell of {len(text):,} characters, over the import's limit of {MAX_CELL_CHARS:,}"
    if text.isascii() and "\x00" not in text:
        return None
    found = _NOT_TEXT.search(text)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return "contains a NUL character"
    if "\udc80" <= char <= "\udcff":
        return f"byte 0x{ord(char) - 0xDC00:02X} is not valid in the file's encoding"
    return f"lone surrogate U+{ord(char):04X} (a truncated emoji?) is not valid text"


def cells_fine(values: Iterable[str | None]) -> bool:
    """Whether cell_problem finds nothing in any of `values`: one check over them all,
    for the common case (this runs once per row)."""
    joined = "".join(filter(None, values))
    if len(joined) > MAX_CELL_CHARS:
        return False
    if joined.isascii():
        return "\x00" not in joined
    return _NOT_TEXT.search(joined) is None


def printable(text: str) -> str:
    """`text` with what cell_problem refuses replaced by U+FFFD, for messages and files."""
    return _NOT_TEXT.sub("\ufffd", text) if not text.isascii() or "\x00" in text else text


def header_names(names: list[Any]) -> tuple[list[str], dict[str, list[str]]]:
    """(column names, repeated headers): a header cell's text, or ``column_<n>`` for an
    empty one; a header that repeats an earlier one is named ``<header>_2``, ``_3``, and
    listed under its text in the second value (see Table.repeated)."""
    columns: list[str] = []
    given: dict[str, list[str]] = {}
    for index, raw in enumerate(names, start=1):
        name = cell_text(raw)
        name = printable(name) if name else f"column_{index}"
        base, n = name, 2
        while name in columns:
            name, n = f"{base}_{n}", n + 1
        columns.append(name)
        given.setdefault(base, []).append(name)
    return columns, {text: named for text, named in given.items() if len(named) > 1}


def cell_text(value: Any) -> str | None:
    """A cell as text: None for empty; integral floats without '.0'; ISO dates."""
    kind = type(value)
    if kind is str:  # most cells: first, by exact type (this runs once per cell)
        text = value.strip()
        return text or None
    if kind is int:
        return str(value)
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict | list):
        return json.dumps(value)
    text = str(value).strip()
    return text or None
