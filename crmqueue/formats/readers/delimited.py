"""Delimited text: CSV, TSV and TXT.

- Encoding: UTF-8 (with or without BOM), or cp1252 (Windows-1252) when the file's bytes
  outside ASCII are mostly not UTF-8. Bytes not valid in the chosen encoding are decoded
  with `surrogateescape`, so only their rows are refused (crmqueue.formats.readers.
  cell_problem), not the file.
- Delimiter: comma, semicolon, tab or pipe, whichever splits the first 64 KiB into records
  of the most consistent field count, parsed as CSV (RFC 4180 quoting): a quoted cell that
  spans lines or holds another candidate delimiter does not fool it (csv.Sniffer counts
  characters per line and does). clevercsv was evaluated for this and chose ';' for 26 of
  90 variants of exactly that case (comma files with quoted multi-line notes holding ';').
- A record the csv module cannot read (a cell over MAX_CELL_CHARS) is that row's problem:
  reading resumes after the record's closing quote.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from crmqueue.errors import PermanentError
from crmqueue.formats.readers.table import (
    MAX_CELL_CHARS,
    WHOLE_ROW,
    ProblemRow,
    Row,
    Table,
    cell_text,
    header_names,
)

SNIFF_BYTES = 64 * 1024
DELIMITERS = {"csv": ",;\t|", "txt": ",;\t|", "tsv": "\t,;|"}  # ties go to the first
_ESCAPED = re.compile("[\udc80-\udcff]")
_HIGH_BYTES = bytes(range(128, 256))


def _detect_encoding(path: Path) -> tuple[str, list[str]]:
    """UTF-8 unless the file's non-ASCII bytes are mostly invalid UTF-8 (then cp1252, as
    Excel on Windows saves "CSV"); a few invalid bytes in a UTF-8 file are refused in
    their rows instead of turning every other row's accents into mojibake."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    invalid = non_ascii = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            text = decoder.decode(chunk)
            if text.isascii():
                continue
            invalid += len(_ESCAPED.findall(text))
            non_ascii += len(chunk) - len(chunk.translate(None, _HIGH_BYTES))
    invalid += len(_ESCAPED.findall(decoder.decode(b"", final=True)))
    if invalid == 0:
        return "utf-8-sig", []
    if non_ascii - invalid >= invalid:
        return "utf-8-sig", [
            f"{invalid} byte(s) are not valid UTF-8: the rows holding them are refused"
        ]
    return "cp1252", ["the file is not valid UTF-8: decoded as cp1252 (Windows-1252)"]


def _records(text: str, delimiter: str, skip_space: bool) -> list[list[str]]:
    # newline="": lines end as the file reader ends them (also at a lone CR)
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"',
        skipinitialspace=skip_space,
    )  # fmt: skip
    records: list[list[str]] = []
    # A record the reader gives up on ends the sample: judge by the records before it.
    with contextlib.suppress(csv.Error):
        records.extend(record for record in reader if any(cell.strip() for cell in record))
    return records


def detect_delimiter(sample: str, candidates: str = ",;\t|", truncated: bool = False) -> str:
    """The candidate that parses `sample` into records of the most consistent field count
    (then the most fields, then the earliest candidate); `truncated`: the sample's last
    record may be cut short and is left out. ',' when none splits it."""
    best: tuple[float, int, int] | None = None
    chosen = candidates[0]
    for order, delimiter in enumerate(candidates):
        if delimiter not in sample:
            continue
        records = _records(sample, delimiter, _skips_space(sample, delimiter))
        if truncated and len(records) > 1:
            records.pop()
        if not records:
            continue
        width, count = Counter(len(r) for r in records).most_common(1)[0]
        if width < 2:
            continue
        score = (count / len(records), width, -order)
        if best is None or score > best:
            best, chosen = score, delimiter
    return chosen


def _skips_space(sample: str, delimiter: str) -> bool:
    """Whether the file writes a space after each delimiter (`a, "b, c"`)."""
    total = sample.count(delimiter)
    return total > 0 and sample.count(delimiter + " ") >= 0.9 * total


def read_delimited(path: Path, file_type: str = "csv") -> Table:
    with path.open("rb") as handle:
        sample = handle.read(SNIFF_BYTES)
    if b"\x00" in sample:
        raise PermanentError(
            f"{path.name}: not a text file (it contains NUL bytes; binary or UTF-16?)"
        )
    if not sample.lstrip(codecs.BOM_UTF8).strip():
        raise PermanentError(f"{path.name}: the file is empty")
    encoding, notes = _detect_encoding(path)
    text = sample.decode(encoding, errors="ignore")
    truncated = len(sample) == SNIFF_BYTES
    delimiter = detect_delimiter(text, DELIMITERS.get(file_type, DELIMITERS["csv"]), truncated)
    skip_space = _skips_space(text, delimiter)
    if csv.field_size_limit() < MAX_CELL_CHARS:
        csv.field_size_limit(MAX_CELL_CHARS)  # process-wide; only ever raised
    raw = path.open("r", encoding=encoding, errors="surrogateescape", newline="")
    size = max(1, path.stat().st_size)
    # Quote parity over the lines of the record being read: odd while a quoted cell is
    # open. Lets a record the csv module gave up on be skipped to its end.
    open_quote = [False]

    def lines() -> Iterator[str]:
        for line in raw:
            if line.count('"') % 2:
                open_quote[0] = not open_quote[0]
            yield line

    source = lines()
    reader = csv.reader(source, delimiter=delimiter, quotechar='"', skipinitialspace=skip_space)
    try:
        header = next(reader)
    except StopIteration:
        raw.close()
        raise PermanentError(f"{path.name}: the file is empty") from None
    except csv.Error as exc:
        raw.close()
        raise PermanentError(f"{path.name}: row 1 (the header) is not readable: {exc}") from None
    columns = header_names(header)

    def rows() -> Iterator[tuple[int, Row]]:
        number = 1
        try:
            while True:
                try:
                    record = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    number += 1
                    while open_quote[0] and next(source, None) is not None:
                        pass
                    open_quote[0] = False
                    reason = (
                        f"a cell is over the import's limit of {MAX_CELL_CHARS:,} characters"
                        if "field limit" in str(exc)
                        else f"not readable as delimited text: {exc}"
                    )
                    yield number, ProblemRow({}, {WHOLE_ROW: reason})
                    continue
                number += 1
                open_quote[0] = False  # the record ended: its quotes were balanced
                values = [cell_text(cell) for cell in record]
                if not any(values):
                    continue
                row = dict(zip(columns, values, strict=False))
                if len(values) > len(columns):
                    row["__extra__"] = delimiter.join(v or "" for v in values[len(columns) :])
                yield number, row
        finally:
            raw.close()

    def progress() -> float:
        try:
            return min(1.0, raw.buffer.tell() / size) if not raw.closed else 1.0  # type: ignore[attr-defined]
        except (OSError, ValueError):
            return 1.0

    return Table(columns, rows(), notes, encoding, progress, delimiter=delimiter)
