"""XLSX exports write text as string cells as it is: formula-looking text (a phone number
`+49 ...`, `=SUM(A1)`, `-5 units`, `@handle`) without the apostrophe a CSV export puts
before it (OWASP, "CSV Injection"), which would show in the cell; digits with leading
zeros (`00123`) stay text. An import of the export reads every value back as stored."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import openpyxl
import pytest

from crmqueue.crm.entities import Row
from crmqueue.formats.readers import open_table
from crmqueue.formats.writers import write_csv, write_xlsx, xlsx_text

FORMULA_LIKE = ["=SUM(A1:A3)", "+49 30 1234567", "-5 units", "@handle", "=1+1"]
KEPT = ["00123", "0", "007", "0012.50", "1e5", "TRUE", "2025-01-21"]
ESCAPED = ["\tindented", "\nnew line first", "'=already quoted", "''", "'+1"]


class Note(Row):
    """A row model with one text field: the import's cleaning (Row._cleaned) applied."""

    value: str | None = None


def test_xlsx_text_escapes_only_what_an_import_would_change() -> None:
    for text in FORMULA_LIKE + KEPT + ["'plain", "'", "it's"]:
        assert xlsx_text(text) == text
    for text in ESCAPED:
        assert xlsx_text(text) == "'" + text


def test_xlsx_writes_formula_like_text_and_leading_zeros_as_plain_strings(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x.xlsx"
    values = FORMULA_LIKE + KEPT
    write_xlsx(path, ["id", "value"], [(n, v) for n, v in enumerate(values)], title="t")
    sheet = openpyxl.load_workbook(path)["t"]
    cells = [row[1] for row in sheet.iter_rows(min_row=2)]
    assert [cell.value for cell in cells] == values
    assert {cell.data_type for cell in cells} == {"s"}  # strings, never formulas or numbers
    with zipfile.ZipFile(path) as archive:
        xml = archive.read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in xml  # no formula element anywhere


def test_csv_keeps_the_apostrophe(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    write_csv(path, ["value"], [(v,) for v in FORMULA_LIKE])
    with path.open(encoding="utf-8-sig", newline="") as handle:
        written = [row[0] for row in csv.reader(handle)][1:]
    assert written == ["'" + v for v in FORMULA_LIKE]


@pytest.mark.parametrize("file_type", ["xlsx", "csv"])
def test_an_import_of_the_export_reads_every_value_back(tmp_path: Path, file_type: str) -> None:
    values = FORMULA_LIKE + KEPT + ESCAPED + ["'plain", "it's"]
    path = tmp_path / f"x.{file_type}"
    rows = [(n, v) for n, v in enumerate(values)]
    if file_type == "xlsx":
        write_xlsx(path, ["id", "value"], rows, title="t")
    else:
        write_csv(path, ["id", "value"], rows)
    table = open_table(path, file_type)
    read = [Note.model_validate({"value": row["value"]}).value for _, row in table.rows]
    assert read == values
