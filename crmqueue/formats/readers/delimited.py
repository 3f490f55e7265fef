"""Delimited text: CSV, TSV and TXT.

- Encoding: UTF-16/32 when the file starts with their byte order mark (Excel's "Unicode
  Text"); else UTF-8 (with or without BOM), or, when the file's bytes outside ASCII are
  mostly not UTF-8, the legacy encoding charset-normalizer detects in the first 64 KiB
  if it is one of a script cp1252 cannot spell (Shift-JIS, GBK, cp1251, KOI8-R ...),
  else cp1252 (Windows-1252). Bytes not valid in the chosen encoding are decoded
  with `surrogateescape`, so only their rows are refused (crmqueue.formats.readers.
  cell_problem), not the file.
- Delimiter: comma, semicolon, tab or pipe, whichever splits the first 64 KiB into records
  of the most consistent field count, parsed as CSV (RFC 4180 quoting): a quoted cell that
  spans lines or holds another candidate delimiter does not fool it (csv.Sniffer counts
  characters per line and does). clevercsv was evaluated for this and chose ';' for 26 of
  90 variants of exactly that case (comma files with quoted multi-line notes holding ';').
- Excel's first-line hint `sep=;` names the delimiter and is not the header.
- A file ending inside a quoted cell, or a row with non-empty fields beyond the header,
  is that row's problem: the rest of the file read as one cell, or a cell split in two,
  would be silently wrong values.
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
    bom_encoding,
    cell_text,
    header_names,
    looks_binary,
)

SNIFF_BYTES = 64 * 1024
DELIMITERS = {"csv": ",;\t|", "txt": ",;\t|", "tsv": "\t,;|"}  # ties go to the first
_ESCAPED = re.compile("[\udc80-\udcff]")
_HIGH_BYTES = bytes(range(128, 256))
# Excel's first-line hint naming the delimiter ("sep=;"), optionally quoted; "\\t" as
# two characters is taken for a tab too.
_SEP_HINT = re.compile(r'"?sep=(\\t|[,;\t|])"?\r?\n')


# A character that two cp1252 bytes make when read as UTF-8 by chance ("É»" is U+027B,
# "Ñ«" U+046B): outside the Western ranges (Latin-1, Latin Extended-A, general punctuation,
# the euro and trade mark signs) and next to an ASCII letter or a byte that is not UTF-8,
# as no word of a real UTF-8 text puts it ("CAFɻ"; a Cyrillic or Greek word's letters
# stand next to their own script's).
_NOT_WESTERN = "[^\x00-\x7f\u00a0-\u017f\u2000-\u206f\u20ac\u2122\udc80-\udcff]"
_BY_CHANCE = re.compile(
    f"(?<=[A-Za-z\udc80-\udcff]){_NOT_WESTERN}|{_NOT_WESTERN}(?=[A-Za-z\udc80-\udcff])"
)
_NON_ASCII = re.compile("[^\x00-\x7f]")


def _detect_encoding(path: Path) -> tuple[str, list[str]]:
    """UTF-8 unless the file's non-ASCII bytes are mostly invalid UTF-8 (then cp1252, as
    Excel on Windows saves "CSV"); a few invalid bytes in a UTF-8 file are refused in
    their rows instead of turning every other row's accents into mojibake. But a file
    with invalid bytes whose valid-looking UTF-8 characters are mostly ones two cp1252
    bytes make by chance (see _BY_CHANCE; at least as many as the others) is cp1252,
    however few its bytes: "José" and "CAFÉ»", not a refused row and "CAFɻ"."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    invalid = non_ascii = valid = by_chance = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            text = decoder.decode(chunk)
            if text.isascii():
                continue
            escaped = len(_ESCAPED.findall(text))
            invalid += escaped
            non_ascii += len(chunk) - len(chunk.translate(None, _HIGH_BYTES))
            valid += len(_NON_ASCII.findall(text)) - escaped  # characters
            by_chance += len(_BY_CHANCE.findall(text))
    invalid += len(_ESCAPED.findall(decoder.decode(b"", final=True)))
    if invalid == 0:
        return "utf-8-sig", []
    if non_ascii - invalid >= invalid and not (by_chance and by_chance >= valid - by_chance):
        return "utf-8-sig", [
            f"{invalid} byte(s) are not valid UTF-8: the rows holding them are refused"
        ]
    with path.open("rb") as handle:
        sample = handle.read(SNIFF_BYTES)
    guessed = _non_western_encoding(sample)
    if guessed is not None:
        return guessed, [f"the file is not valid UTF-8: decoded as {guessed} (detected)"]
    note = "the file is not valid UTF-8: decoded as cp1252 (Windows-1252)"
    if _high_bytes(sample) < MIN_EVIDENCE_BYTES:
        note += " (too little non-ASCII text to detect another encoding: save it as UTF-8)"
    return "cp1252", [note]


def _high_bytes(data: bytes) -> int:
    return len(data) - len(data.translate(None, _HIGH_BYTES))


# Encodings charset-normalizer may name that are taken over cp1252: legacy code pages of
# scripts cp1252 cannot spell (CJK, Cyrillic, Greek, Hebrew, Arabic, Thai). Its guesses
# among Latin code pages (cp1250, cp775, mac_latin2 ...) for Western text are ignored:
# Excel on Western Windows writes cp1252.
_NON_WESTERN = frozenset(
    [
        "cp932",
        "shift_jis",
        "shift_jis_2004",
        "shift_jisx0213",
        "euc_jp",
        "euc_jis_2004",
        "iso2022_jp",
        "gb2312",
        "gbk",
        "gb18030",
        "hz",
        "big5",
        "big5hkscs",
        "cp950",
        "cp949",
        "euc_kr",
        "johab",
        "cp1251",
        "koi8_r",
        "koi8_u",
        "mac_cyrillic",
        "iso8859_5",
        "cp866",
        "cp855",
        "cp1253",
        "iso8859_7",
        "cp1255",
        "iso8859_8",
        "cp1256",
        "iso8859_6",
        "cp874",
        "tis_620",
    ]
)
MIN_EVIDENCE_BYTES = 32  # fewer non-ASCII bytes than this: too few to tell encodings apart


def _non_western_encoding(sample: bytes) -> str | None:
    """The non-Western encoding charset-normalizer finds for `sample` (the file's first
    SNIFF_BYTES) when it names one with a language, else None (cp1252 stays)."""
    if _high_bytes(sample) < MIN_EVIDENCE_BYTES:
        return None
    from charset_normalizer import from_bytes  # only for files that are not UTF-8

    best = from_bytes(sample).best()
    if best is None or best.encoding not in _NON_WESTERN or best.language == "Unknown":
        return None
    return str(best.encoding)


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


def _quote_left_open(text: str, delimiter: str, skip_space: bool) -> bool:
    """Whether `text` (one record's lines, at the end of the file) ends inside a quoted
    cell: the csv module, not strict, returns such a record as if the quote closed."""
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"',
        skipinitialspace=skip_space, strict=True,
    )  # fmt: skip
    try:
        for _ in reader:
            pass
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


def read_delimited(path: Path, file_type: str = "csv") -> Table:
    with path.open("rb") as handle:
        sample = handle.read(SNIFF_BYTES)
    bom = bom_encoding(sample)
    if bom is None and looks_binary(sample):
        raise PermanentError(
            f"{path.name}: not a text file (it contains NUL bytes; binary, or UTF-16"
            " without a byte order mark?)"
        )
    if bom is not None:
        encoding, notes = bom, [f"decoded as {bom} (byte order mark)"]
    else:
        encoding, notes = _detect_encoding(path)
    text = sample.decode(encoding, errors="ignore")
    if not text.lstrip("\ufeff").strip():
        raise PermanentError(f"{path.name}: the file is empty")
    truncated = len(sample) == SNIFF_BYTES
    hint = _SEP_HINT.match(text.lstrip("\ufeff"))
    if hint is not None:
        delimiter = "\t" if hint.group(1) == "\\t" else hint.group(1)
        notes.append(
            f"delimiter {delimiter!r} from the file's first line {hint.group(0).strip()!r}"
        )
    else:
        delimiter = detect_delimiter(text, DELIMITERS.get(file_type, DELIMITERS["csv"]), truncated)
    skip_space = _skips_space(text, delimiter)
    if csv.field_size_limit() < MAX_CELL_CHARS:
        csv.field_size_limit(MAX_CELL_CHARS)  # process-wide; only ever raised
    raw = path.open("r", encoding=encoding, errors="surrogateescape", newline="")
    size = max(1, path.stat().st_size)
    # Quote parity over the lines of the record being read: odd while a quoted cell is
    # open. Lets a record the csv module gave up on be skipped to its end.
    open_quote = [False]
    # The lines of the record being read, and whether the file has ended: a record the
    # file ends in while a quoted cell is open is refused, not imported with the rest of
    # the file as its cell.
    record_lines: list[str] = []
    at_end = [False]

    def lines() -> Iterator[str]:
        for line in raw:
            if line.count('"') % 2:
                open_quote[0] = not open_quote[0]
            record_lines.append(line)
            yield line
        at_end[0] = True

    source = lines()
    if hint is not None:
        next(source)  # the "sep=" line: not the header
    reader = csv.reader(source, delimiter=delimiter, quotechar='"', skipinitialspace=skip_space)
    try:
        header = next(reader)
    except StopIteration:
        raw.close()
        raise PermanentError(f"{path.name}: the file is empty") from None
    except csv.Error as exc:
        raw.close()
        raise PermanentError(f"{path.name}: row 1 (the header) is not readable: {exc}") from None
    columns, repeated = header_names(header)
    width = len(columns)
    first_row = 2 if hint is None else 3

    def unclosed(number: int) -> str:
        return (
            f"a quote opened in row {number} is never closed: the rest of the file was read"
            " as this cell"
        )

    def rows() -> Iterator[tuple[int, Row]]:
        number = first_row - 1
        try:
            while True:
                record_lines.clear()
                try:
                    record = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    number += 1
                    while open_quote[0] and next(source, None) is not None:
                        pass
                    never_closed = open_quote[0]  # the file ended inside the quote
                    open_quote[0] = False
                    record_lines.clear()
                    reason = (
                        unclosed(number)
                        if never_closed
                        else f"a cell is over the import's limit of {MAX_CELL_CHARS:,} characters"
                        if "field limit" in str(exc)
                        else f"not readable as delimited text: {exc}"
                    )
                    yield number, ProblemRow({}, {WHOLE_ROW: reason})
                    continue
                number += 1
                ended_open = (
                    open_quote[0]
                    and at_end[0]
                    and _quote_left_open("".join(record_lines), delimiter, skip_space)
                )
                open_quote[0] = False  # the record ended: its quotes were balanced
                values = [cell_text(cell) for cell in record]
                if not any(values):
                    continue
                row: Row = dict(zip(columns, values, strict=False))
                problems: dict[str, str] = {}
                if ended_open:
                    problems[WHOLE_ROW] = unclosed(number)
                elif len(values) > width:
                    extra = len(values) - width
                    while extra and values[width + extra - 1] is None:
                        extra -= 1  # empty trailing fields (trailing delimiters) are fine
                    if extra:
                        problems[WHOLE_ROW] = (
                            f"row has {extra} more field{'s' if extra > 1 else ''} than the"
                            f" header ({width} columns): a delimiter inside an unquoted cell?"
                        )
                yield number, ProblemRow(row, problems) if problems else row
        finally:
            raw.close()

    def progress() -> float:
        try:
            return min(1.0, raw.buffer.tell() / size) if not raw.closed else 1.0  # type: ignore[attr-defined]
        except (OSError, ValueError):
            return 1.0

    return Table(columns, rows(), notes, encoding, progress, delimiter=delimiter, repeated=repeated)
