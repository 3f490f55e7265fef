"""Streaming readers for imports, one module per family of formats:

- `delimited`: CSV, TSV and TXT (delimiter detected on parsed records, BOM, quoted newlines,
  UTF-8 or cp1252 detected, bytes invalid in the encoding refused per row);
- `spreadsheet`: XLSX (python-calamine, or openpyxl's streaming reader for very large
  sheets), XLS and ODS (python-calamine); formulas without a computed value refused per row;
- `records`: JSON (an array, or JSON Lines).

Every reader yields (row number, {column: text or None}) with the header as row 1 (for a
spreadsheet: the sheet's own row numbers), and raises PermanentError for input that cannot
be read at all. A row the reader could read only in part is a `ProblemRow`: its
`problems` name the column (or "" for the whole row) and why; the importer refuses such a
row when a problem touches a column it uses and imports the others.
"""

from __future__ import annotations

from pathlib import Path

from crmqueue.errors import PermanentError
from crmqueue.formats.readers.table import (
    FILE_TYPES,
    MAX_CELL_CHARS,
    PEEK_RECORDS,
    WHOLE_ROW,
    FileType,
    ProblemRow,
    Row,
    Table,
    cell_problem,
    cells_fine,
    printable,
)

__all__ = [
    "FILE_TYPES",
    "MAX_CELL_CHARS",
    "PEEK_RECORDS",
    "WHOLE_ROW",
    "FileType",
    "ProblemRow",
    "Row",
    "Table",
    "cell_problem",
    "cells_fine",
    "open_table",
    "printable",
]


def open_table(path: Path, file_type: str, sheet: str | None = None) -> Table:
    """Open `path` as `file_type` (one of FILE_TYPES) for reading; `sheet` names a
    spreadsheet's sheet (default: the first). PermanentError when it cannot be read."""
    if file_type in ("csv", "tsv", "txt"):
        from crmqueue.formats.readers.delimited import read_delimited

        return read_delimited(path, file_type)
    if file_type in ("xlsx", "xls", "ods"):
        from crmqueue.formats.readers.spreadsheet import read_spreadsheet

        return read_spreadsheet(path, file_type, sheet)
    if file_type == "json":
        from crmqueue.formats.readers.records import read_json

        return read_json(path)
    raise PermanentError(f"unknown file type {file_type!r} (types: {', '.join(FILE_TYPES)})")
