"""Import readers against a real CRM database: every format (CSV, TSV, TXT, XLSX through
both readers, XLS, ODS, JSON array, JSON Lines) and the kinds of input that used to lose a
whole import or store a wrong value: delimiters fooled by quoted cells, over-long cells,
spreadsheet date serials, formulas without a computed value, lone surrogates and invalid
bytes, decimal commas. Files are generated here (XlsxWriter, openpyxl, a hand-built ODS);
the XLS is tests/fixtures/legacy.xls (see tests/fixtures/make_legacy_xls.py)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import shutil
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import crm_db
import openpyxl
import pytest
import sqlalchemy as sa
import xlsxwriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from crmqueue.crm import schema
from crmqueue.crm.entities import ROW_MODELS, check_export_filters, number_style
from crmqueue.crm.store import create_engine, init_db
from crmqueue.errors import PermanentError
from crmqueue.formats.readers import MAX_CELL_CHARS, open_table, spreadsheet
from crmqueue.formats.readers.delimited import detect_delimiter
from crmqueue.formats.readers.spreadsheet import ERROR_REASON, FORMULA_REASON
from crmqueue.payloads import ImportPayload
from crmqueue.workers.import_export import Importer

FIXTURES = Path(__file__).parent / "fixtures"
crm_url = crm_db.crm_url
crm_engine = crm_db.crm_engine
pg_url = crm_db.pg_url


@pytest.fixture
def files(tmp_path: Path) -> Path:
    path = tmp_path / "files"
    path.mkdir()
    return path


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    """A SQLite CRM database (the PostgreSQL cases use crm_engine)."""
    db = create_engine(f"sqlite:///{tmp_path}/crm.db")
    init_db(db)
    yield db
    db.dispose()


@pytest.fixture(params=["calamine", "openpyxl"])
def xlsx_reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both XLSX readers: python-calamine, and openpyxl's streaming reader that takes
    sheets over CALAMINE_MAX_SHEET_BYTES."""
    if request.param == "openpyxl":
        monkeypatch.setattr(spreadsheet, "CALAMINE_MAX_SHEET_BYTES", 0)
    return str(request.param)


def write(files: Path, name: str, data: str | bytes, encoding: str = "utf-8") -> str:
    (files / name).write_bytes(data if isinstance(data, bytes) else data.encode(encoding))
    return name


def do_import(engine: Any, files: Path, file_url: str, entity: str = "contacts",
              **fields: Any) -> dict[str, Any]:  # fmt: skip
    file_type = file_url.split("#")[0].rsplit(".", 1)[-1]
    data = {"tenant_id": "t1", "user_id": "u1", "file_url": file_url,
            "file_type": file_type, "entity_type": entity, **fields}  # fmt: skip
    return Importer(ImportPayload.model_validate(data), engine, files, None, lambda _: None).run()


def stored(engine: Any, entity: str, *columns: str) -> list[tuple[Any, ...]]:
    table = schema.ENTITY_TABLES[entity]
    with engine.connect() as conn:
        query = sa.select(*(table.c[c] for c in columns)).order_by(table.c.id)
        return [tuple(row) for row in conn.execute(query)]


def naive(value: Any) -> Any:
    """A time stamp in UTC without its zone (serials, like every time stamp without an
    offset, are taken as UTC)."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def errors_by_row(result: dict[str, Any]) -> dict[int, list[tuple[str, str]]]:
    found: dict[int, list[tuple[str, str]]] = {}
    for error in result["errors"]:
        found.setdefault(error["row"], []).append((error["column"], error["reason"]))
    return found


# --------------------------------------------------------------------------- delimiters

ISSUE_NOTES = '"' + "Agenda: pricing; contract; next steps.\r\n" * 50 + '"'


def test_issue_sample_comma_file_with_multiline_semicolon_notes(engine: Any,
                                                                files: Path) -> None:  # fmt: skip
    text = "external_id,type,subject,notes\r\n" + "".join(
        f"a{n},call,Call {n},{ISSUE_NOTES}\r\n" for n in range(1, 4)
    )
    result = do_import(engine, files, write(files, "a.csv", text), "activities")
    assert result["counts"]["new"] == 3 and result["errors"] == []
    notes = [row[0] for row in stored(engine, "activities", "notes")]
    assert notes == [ISSUE_NOTES[1:-1].strip()] * 3


def test_delimiter_found_when_the_sample_ends_in_a_quoted_cell(engine: Any,
                                                                files: Path) -> None:  # fmt: skip
    long_notes = '"' + "pricing; contract; next | steps\t.\n" * 2000 + '"'  # about 70 KB
    text = "external_id;type;subject;notes\n" + "".join(
        f"a{n};call;Call, {n};{long_notes if n % 2 else 'short'}\n" for n in range(1, 5)
    )
    result = do_import(engine, files, write(files, "b.csv", text), "activities")
    assert result["counts"]["new"] == 4 and result["errors"] == []
    assert stored(engine, "activities", "subject")[0] == ("Call, 1",)


cells = st.text(st.sampled_from("ab;,|\t\"' \n\r1.é"), max_size=12)
names = st.from_regex(r"[a-z]{1,8}", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(
    delimiter=st.sampled_from(",;\t|"),
    header=st.lists(names, min_size=2, max_size=6, unique=True),
    body=st.lists(st.lists(cells, min_size=6, max_size=6), min_size=1, max_size=30),
    terminator=st.sampled_from(["\n", "\r\n"]),
)
def test_delimiter_is_the_one_that_parses_consistently(
    delimiter: str, header: list[str], body: list[list[str]], terminator: str
) -> None:
    """Any cells (other delimiters, quotes, line breaks), written as a CSV writer does:
    the file's delimiter is found, also from a sample cut short."""
    if terminator == "\n":  # Python's writer quotes a CR only when it ends its lines
        body = [[cell.replace("\r", "") for cell in record] for record in body]
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=terminator)
    writer.writerow(header)
    for record in body:
        if any(cell.strip() for cell in record[: len(header)]):
            writer.writerow(record[: len(header)])
    text = out.getvalue()
    assert detect_delimiter(text) == delimiter
    cut = text[: max(len(text) * 2 // 3, text.index(terminator) + len(terminator))]
    assert detect_delimiter(cut[: cut.rindex("\n") + 1], truncated=True) == delimiter


@pytest.mark.parametrize(
    ("name", "text", "company"),
    [
        ("t.tsv", "email\tfirst_name\tcompany\na@x.com\tAnn\tSmith, Jones & Co\nb@x.com\tBo\t\n",
         "Smith, Jones & Co"),
        ("t.txt", "email;first_name;company\na@x.com;Ann;Smith, Jones\nb@x.com;Bo;x|y\n",
         "Smith, Jones"),
        ("p.txt", "email|first_name|company\na@x.com|Ann|Smith; Jones, Co\nb@x.com|Bo|\n",
         "Smith; Jones, Co"),
        ("s.csv", 'email, first_name, company\na@x.com, Ann, "Smith, Jones"\nb@x.com, Bo, x\n',
         "Smith, Jones"),
    ],
)  # fmt: skip
def test_tsv_txt_and_spaced_delimiters(engine: Any, files: Path, name: str, text: str,
                                       company: str) -> None:  # fmt: skip
    result = do_import(engine, files, write(files, name, text))
    assert result["counts"]["new"] == 2 and result["errors"] == []
    assert stored(engine, "contacts", "email", "company")[0] == ("a@x.com", company)


# --------------------------------------------------------------------------- long cells


@pytest.mark.parametrize("quoted", [False, True])
def test_over_long_cell_is_refused_in_its_row(engine: Any, files: Path, quoted: bool) -> None:
    fine = "n" * 200_000  # over csv's default limit of 131,072, under the import's
    unit = "line; with, delimiters\n" if quoted else "x"
    over = unit * (MAX_CELL_CHARS // len(unit) + 2)
    over_cell = f'"{over}"' if quoted else over
    text = (
        "external_id,type,subject,notes\n"
        f'a1,call,first,"multi\nline"\n'
        f"a2,call,second,{fine}\n"
        'a2b,call,a 5" screen,\n'  # a stray quote in an unquoted cell: literal
        f"a3,call,third,{over_cell}\n"
        f'a4,call,fourth,"after ""it"""\n'
        "a5,call,fifth,\n"
    )
    result = do_import(engine, files, write(files, "long.csv", text), "activities")
    assert result["counts"] == {"new": 5, "updated": 0, "skipped": 0, "invalid": 1}
    assert list(errors_by_row(result)) == [5]  # the header is row 1
    assert "limit of 1,048,576 characters" in result["errors"][0]["reason"]
    rows = stored(engine, "activities", "external_id", "subject", "notes")
    assert [r[0] for r in rows] == ["a1", "a2", "a2b", "a4", "a5"]
    assert rows[1][2] == fine and rows[2][1] == 'a 5" screen' and rows[3][2] == 'after "it"'


def test_over_long_cell_in_json_and_xlsx_rows(engine: Any, files: Path) -> None:
    over = "y" * (MAX_CELL_CHARS + 1)
    lines = [{"email": "a@x.com"}, {"email": "b@x.com", "title": "t", "company": over},
             {"email": "c@x.com"}]  # fmt: skip
    result = do_import(engine, files, write(files, "l.json", "\n".join(map(json.dumps, lines))))
    assert result["counts"]["new"] == 2
    assert errors_by_row(result) == {2: [("company", result["errors"][0]["reason"])]}
    assert "over the import's limit" in result["errors"][0]["reason"]


# --------------------------------------------------------------------------- dates


def test_serials_in_csv_date_columns(engine: Any, files: Path) -> None:
    text = (
        "external_id,type,subject,due_at,completed_at\n"
        "a1,call,serial,45678.5,45678\n"
        "a2,call,unix time,1737460800,\n"
        "a3,call,a year,2025,\n"
        "a4,call,iso,2025-01-21T12:00:00,\n"
        "a5,call,leap bug,60,\n"
    )
    result = do_import(engine, files, write(files, "d.csv", text), "activities")
    assert result["counts"]["new"] == 2
    errors = errors_by_row(result)
    assert sorted(errors) == [3, 4, 6] and all(e[0][0] == "due_at" for e in errors.values())
    assert "never as a Unix time stamp" in errors[3][0][1] and "ambiguous" in errors[4][0][1]
    rows = [tuple(map(naive, r)) for r in stored(engine, "activities", "due_at", "completed_at")]
    assert rows == [(dt.datetime(2025, 1, 21, 12), dt.datetime(2025, 1, 21)),
                    (dt.datetime(2025, 1, 21, 12), None)]  # fmt: skip

    text = "title,close_date\nserial,45678\nwith time,45678.5\niso,2025-01-21\n"
    result = do_import(engine, files, write(files, "l.csv", text), "leads")
    assert result["counts"]["new"] == 2
    assert errors_by_row(result)[3][0][0] == "close_date"
    assert stored(engine, "leads", "close_date") == [(dt.date(2025, 1, 21),)] * 2


@pytest.mark.parametrize("date_1904", [False, True])
def test_serials_in_xlsx_use_the_workbooks_date_system(
    crm_engine: Any, files: Path, xlsx_reader: str, date_1904: bool
) -> None:
    book = xlsxwriter.Workbook(str(files / "d.xlsx"), {"date_1904": date_1904})
    sheet = book.add_worksheet()
    stamp = book.add_format({"num_format": "yyyy-mm-dd hh:mm"})
    sheet.write_row(0, 0, ["external_id", "type", "subject", "due_at"])
    sheet.write_row(1, 0, ["a1", "call", "General serial", 45678.5])
    sheet.write_row(2, 0, ["a2", "call", "formatted"])
    sheet.write_datetime(2, 3, dt.datetime(2025, 1, 21, 12), stamp)
    sheet.write_row(3, 0, ["a3", "call", "unix", 1737460800])
    book.close()
    result = do_import(crm_engine, files, "d.xlsx", "activities")
    assert result["counts"]["new"] == 2 and list(errors_by_row(result)) == [4]
    serial = dt.datetime(2029, 1, 22, 12) if date_1904 else dt.datetime(2025, 1, 21, 12)
    due = [naive(r[0]) for r in stored(crm_engine, "activities", "due_at")]
    assert due == [serial, dt.datetime(2025, 1, 21, 12)]


def holds(annotation: Any, kind: type) -> bool:
    from typing import get_args

    return annotation is kind or any(holds(arg, kind) for arg in get_args(annotation))


def test_no_date_field_of_any_entity_reads_a_number_as_unix_time() -> None:
    date_fields = [
        (entity, name, field.annotation)
        for entity, model in ROW_MODELS.items()
        for name, field in model.model_fields.items()
        if holds(field.annotation, dt.date) or holds(field.annotation, dt.datetime)
    ]
    assert {(e, n) for e, n, _ in date_fields} >= {
        ("leads", "close_date"), ("activities", "due_at"), ("activities", "completed_at")
    }  # fmt: skip
    for entity, name, annotation in date_fields:
        is_datetime = holds(annotation, dt.datetime)
        model = ROW_MODELS[entity]
        required = {"email": "a@x.com", "type": "call"}
        base = {n: required.get(n, "x") for n, f in model.model_fields.items() if f.is_required()}
        for number in (1737460800, "1737460800", 1.7e9, "0", "-1", "2025"):
            with pytest.raises(ValidationError, match=name):
                model.model_validate({**base, name: number})
        value = naive(model.model_validate({**base, name: "45678"}).model_dump()[name])
        assert value == (dt.datetime(2025, 1, 21) if is_datetime else dt.date(2025, 1, 21))
    filters = check_export_filters("activities", {"due_at": 45678.5, "created_at": "45678"})
    assert {name: naive(value) for name, value in filters.items()} == {
        "due_at": dt.datetime(2025, 1, 21, 12),
        "created_at": dt.date(2025, 1, 21),  # a whole serial: the day (all of it, in UTC)
    }
    with pytest.raises(ValueError, match="Unix"):
        check_export_filters("leads", {"close_date": 1737460800})


@settings(max_examples=200, deadline=None)
@given(
    moment=st.datetimes(dt.datetime(1900, 3, 1), dt.datetime(9999, 12, 31, 23, 59, 59)),
    system=st.sampled_from([1900, 1904]),
)
def test_serials_round_trip_to_the_millisecond(moment: dt.datetime, system: int) -> None:
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    epoch = dt.datetime(1899, 12, 30) if system == 1900 else dt.datetime(1904, 1, 1)
    if moment < epoch:
        return
    delta = moment - epoch
    serial = Decimal(delta.days) + Decimal(delta.seconds * 1000 + delta.microseconds // 1000) / (
        86_400_000
    )
    if serial == serial.to_integral_value() and 1000 <= serial <= 2999:
        return  # refused as ambiguous (a year?)
    model = ROW_MODELS["activities"]
    row = model.model_validate(
        {"type": "call", "subject": "s", "due_at": str(serial)}, context={"date_system": system}
    )
    assert naive(row.model_dump()["due_at"]) == moment
    as_float = model.model_validate(
        {"type": "call", "subject": "s", "due_at": float(serial)}, context={"date_system": system}
    )
    assert abs(naive(as_float.model_dump()["due_at"]) - moment) <= dt.timedelta(milliseconds=1)


# --------------------------------------------------------------------------- formulas


def _drop_full_calc(path: Path) -> None:
    """Rewrite an XlsxWriter file as Excel saves one: cached values computed, no
    fullCalcOnLoad."""
    source = path.with_suffix(".tmp")
    shutil.move(path, source)
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as new:
        for item in old.infolist():
            data = old.read(item)
            if item.filename == "xl/workbook.xml":
                data = data.replace(b' fullCalcOnLoad="1"', b"")
            new.writestr(item, data)
    source.unlink()


def test_formulas_without_a_computed_value_are_refused(engine: Any, files: Path,
                                                       xlsx_reader: str) -> None:  # fmt: skip
    book = xlsxwriter.Workbook(str(files / "xw.xlsx"))
    sheet = book.add_worksheet()
    sheet.write_row(0, 0, ["email", "first_name", "last_name", "notes"])
    sheet.write_row(1, 0, ["a@x.com", "Ann", "Plain"])
    sheet.write_row(2, 0, ["b@x.com"])
    sheet.write_formula(2, 1, '=UPPER("bo")')  # XlsxWriter's cached value: 0
    sheet.write_row(3, 0, ["c@x.com", "Cy", "Calc"])
    sheet.write_formula(3, 3, "=1+1")  # an unmapped column: the row is fine
    book.close()
    result = do_import(engine, files, "xw.xlsx",
                       mapping_config={"email": "email", "first_name": "first_name",
                                       "last_name": "last_name"})  # fmt: skip
    assert result["counts"]["new"] == 2
    assert errors_by_row(result) == {3: [("first_name", FORMULA_REASON)]}
    assert "open and save the file in a spreadsheet program" in FORMULA_REASON

    book = openpyxl.Workbook()
    book.active.append(["email", "first_name", "last_name"])
    book.active.append(["d@x.com", '=CONCAT("D","i")', "Op"])
    book.active.append(["e@x.com", "Ed", "Op"])
    book.save(files / "op.xlsx")
    result = do_import(engine, files, "op.xlsx")
    assert result["counts"]["new"] == 1 and list(errors_by_row(result)) == [2]

    book = xlsxwriter.Workbook(str(files / "excel.xlsx"))
    sheet = book.add_worksheet()
    sheet.write_row(0, 0, ["email", "first_name"])
    sheet.write(1, 0, "f@x.com")
    sheet.write_formula(1, 1, '=UPPER("fi")', None, "FI")
    sheet.write(2, 0, "g@x.com")
    sheet.write_formula(2, 1, "=1/0", None, "#DIV/0!")
    book.close()
    _drop_full_calc(files / "excel.xlsx")
    result = do_import(engine, files, "excel.xlsx")
    assert result["counts"]["new"] == 1
    assert result["errors"] == [{"row": 3, "column": "first_name",
                                 "reason": f"{ERROR_REASON} (#DIV/0!)"}]  # fmt: skip
    assert ("f@x.com", "FI") in stored(engine, "contacts", "email", "first_name")


# --------------------------------------------------------------------------- bad text


def test_lone_surrogates_and_nul_refuse_only_their_row(crm_engine: Any, files: Path) -> None:
    lines = ['{"email": "a@x.com", "first_name": "A"}',
             '{"email": "b@x.com", "first_name": "B\\ud83d"}',
             '{"email": "c@x.com", "first_name": "C\\ud83d\\ude00"}',
             '{"email": "d@x.com", "last_name": "D\\u0000"}',
             '{"email": "e@x.com", "first_name": oops}',
             '{"email": "f@x.com", "first_name": "F"}']  # fmt: skip
    result = do_import(crm_engine, files, write(files, "s.json", "\n".join(lines)))
    assert result["counts"]["new"] == 3
    errors = errors_by_row(result)
    assert sorted(errors) == [2, 4, 5]
    assert errors[2][0][0] == "first_name" and "lone surrogate U+D83D" in errors[2][0][1]
    assert errors[4][0][0] == "last_name" and "NUL" in errors[4][0][1]
    assert "not valid JSON" in errors[5][0][1]
    assert ("c@x.com", "C\U0001f600") in stored(crm_engine, "contacts", "email", "first_name")
    error_file = (files / result["error_file"]).read_text(encoding="utf-8-sig")
    assert "B\ufffd" in error_file

    array = "[" + ",".join(line for line in lines if "oops" not in line) + "]"
    result = do_import(crm_engine, files, write(files, "s2.json", array), on_duplicate="create")
    assert result["counts"]["new"] == 3 and sorted(errors_by_row(result)) == [2, 4]
    assert all("?" not in (r[0] or "") for r in stored(crm_engine, "contacts", "first_name"))


def test_bytes_invalid_in_the_encoding_refuse_only_their_row(engine: Any, files: Path) -> None:
    text = ("email,first_name,last_name\na@x.com,Zoë,Müller\n".encode()
            + b"b@x.com,Bj\xf6rn,Bad\nc@x.com,\xc3\x89mile,Ok\n")  # fmt: skip
    result = do_import(engine, files, write(files, "u.csv", text))
    assert result["counts"]["new"] == 2 and result["encoding"] == "utf-8-sig"
    assert errors_by_row(result) == {3: [("first_name", "byte 0xF6 is not valid in the file's"
                                          " encoding")]}  # fmt: skip
    assert "not valid UTF-8" in result["notes"][0]
    assert [r[0] for r in stored(engine, "contacts", "first_name")] == ["Zoë", "Émile"]

    cp1252 = "email,first_name\nd@x.com,Zoë\n".encode("cp1252") + b"e@x.com,Und\x81fined\n"
    result = do_import(engine, files, write(files, "w.csv", cp1252))
    assert result["encoding"] == "cp1252" and result["counts"]["new"] == 1
    assert "0x81" in result["errors"][0]["reason"] and result["errors"][0]["row"] == 3


def test_escaped_surrogates_in_xlsx(engine: Any, files: Path, xlsx_reader: str) -> None:
    """OOXML escapes a character XML cannot hold as _xHHHH_: a lone surrogate half so
    written is refused, a pair is joined."""
    book = xlsxwriter.Workbook(str(files / "x.xlsx"), {"constant_memory": True})
    sheet = book.add_worksheet()
    sheet.write_row(0, 0, ["email", "first_name"])
    sheet.write_row(1, 0, ["a@x.com", "PAIR"])
    sheet.write_row(2, 0, ["b@x.com", "LONE"])
    sheet.write_row(3, 0, ["c@x.com", "line_x000D_break"])
    book.close()
    path = files / "x.xlsx"
    with zipfile.ZipFile(path) as old:
        parts = {item.filename: old.read(item) for item in old.infolist()}
    sheet_xml = parts["xl/worksheets/sheet1.xml"]
    parts["xl/worksheets/sheet1.xml"] = sheet_xml.replace(
        b"PAIR", b"A_xD83D__xDE00_"
    ).replace(b"LONE", b"B_xD83D_")  # fmt: skip
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as new:
        for name, data in parts.items():
            new.writestr(name, data)
    result = do_import(engine, files, "x.xlsx")
    assert result["counts"]["new"] == 2
    assert result["errors"] == [
        {"row": 3, "column": "first_name", "reason": "lone surrogate U+D83D (a truncated"
         " emoji?) is not valid text"}
    ]  # fmt: skip
    assert stored(engine, "contacts", "first_name")[0] == ("A\U0001f600",)


# --------------------------------------------------------------------------- decimal commas


def test_decimal_commas_detected_in_semicolon_files(engine: Any, files: Path) -> None:
    text = ("external_id;title;amount\nL1;a;1250,50\nL2;b;1.250,50\nL3;c;300\n"
            "L4;d;1 250 000,5\nL5;e;1.250\nL6;f;1,250\n")  # fmt: skip
    result = do_import(engine, files, write(files, "dc.csv", text), "leads")
    assert result["decimal_comma"] is True and "decimal comma" in result["notes"][-1]
    assert result["counts"]["new"] == 4
    errors = errors_by_row(result)
    assert sorted(errors) == [6, 7] and all("ambiguous" in e[0][1] for e in errors.values())
    assert [r[0] for r in stored(engine, "leads", "amount")] == [
        Decimal("1250.50"), Decimal("1250.50"), Decimal("300"), Decimal("1250000.50")
    ]  # fmt: skip


def test_decimal_comma_setting_and_mixed_files(engine: Any, files: Path) -> None:
    text = "title;amount\na;1250,50\nb;99\n"
    result = do_import(engine, files, write(files, "n.csv", text), "leads", decimal_comma=False)
    assert result["decimal_comma"] is False and list(errors_by_row(result)) == [2]
    mixed = "title;amount\na;1250,50\nb;1250.50\n"  # both styles: nothing is guessed
    result = do_import(engine, files, write(files, "m.csv", mixed), "leads")
    assert result["decimal_comma"] is False and list(errors_by_row(result)) == [2]
    unknown = "title;amount\na;1.250\nb;7\nc;3,5\n"  # nothing tells 1.250 apart
    result = do_import(engine, files, write(files, "u.csv", unknown), "leads")
    assert result["decimal_comma"] is True and list(errors_by_row(result)) == [2]
    unknown = "title;amount\na;1.250\nb;7\n"
    result = do_import(engine, files, write(files, "v.csv", unknown), "leads")
    assert result["decimal_comma"] is None and result["counts"]["new"] == 1
    assert "ambiguous" in errors_by_row(result)[2][0][1]
    tabs = "title\tamount\na\t1.250,50\nb\t7\n"
    result = do_import(engine, files, write(files, "t.tsv", tabs), "leads")
    assert result["decimal_comma"] is True and result["counts"]["new"] == 2
    comma = 'name,employees\nACME,"1.250.000"\nBeta,12\n'
    result = do_import(engine, files, write(files, "c.csv", comma), "companies",
                       decimal_comma=True)  # fmt: skip
    assert result["counts"]["new"] == 2
    assert stored(engine, "companies", "employees") == [(1250000,), (12,)]
    with pytest.raises(ValidationError, match="decimal_comma"):
        ImportPayload.model_validate({"tenant_id": "t", "user_id": "u", "file_url": "x.csv",
                                      "file_type": "csv", "entity_type": "leads",
                                      "decimal_comma": "maybe"})  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.decimals(min_value=0, max_value=Decimal("999999999999.99"), places=2))
def test_decimal_comma_numbers_read_exactly_or_are_refused(value: Decimal) -> None:
    whole, fraction = f"{value:.2f}".split(".")
    grouped = f"{int(whole):,}".replace(",", ".")
    model = ROW_MODELS["leads"]
    for text in (f"{whole},{fraction}", f"{grouped},{fraction}", grouped, whole):
        try:
            amount = model.model_validate(
                {"title": "t", "amount": text}, context={"decimal_comma": True}
            ).model_dump()["amount"]
        except ValidationError as exc:
            assert number_style(text) == "ambiguous", exc
            continue
        assert amount == (value if "," in text else Decimal(whole)), text


# --------------------------------------------------------------------------- XLS, ODS, rows


def test_legacy_xls(engine: Any, files: Path) -> None:
    shutil.copy(FIXTURES / "legacy.xls", files / "legacy.xls")
    result = do_import(engine, files, "legacy.xls")
    assert result["counts"]["new"] == 2 and list(errors_by_row(result)) == [3]
    assert stored(engine, "contacts", "last_name", "company")[1] == ("Ørsted", "Łódź Sp. z o.o.")
    result = do_import(engine, files, "legacy.xls#sheet=leads", "leads")
    assert result["counts"]["new"] == 2
    assert stored(engine, "leads", "close_date", "amount") == [
        (dt.date(2025, 1, 21), Decimal("1250.50")), (dt.date(2025, 3, 1), Decimal("99"))
    ]  # fmt: skip
    result = do_import(engine, files, "legacy.xls#sheet=activities", "activities")
    assert result["counts"]["new"] == 3
    due = [naive(r[0]) for r in stored(engine, "activities", "due_at")]
    assert due == [dt.datetime(2025, 1, 21, 12)] * 3


def write_ods(path: Path, sheets: dict[str, list[list[Any]]], null_date: str = "") -> None:
    """A minimal OpenDocument spreadsheet (ODF 1.2): a cell is None, text, a number,
    ("date", ISO) or ("formula", formula, value or None)."""

    def cell(value: Any) -> str:
        if value is None:
            return "<table:table-cell/>"
        if isinstance(value, tuple) and value[0] == "date":
            return (f'<table:table-cell office:value-type="date" office:date-value="{value[1]}">'
                    f"<text:p>{value[1]}</text:p></table:table-cell>")  # fmt: skip
        if isinstance(value, tuple):
            computed = "" if value[2] is None else (
                f' office:value-type="float" office:value="{value[2]}"')  # fmt: skip
            return f"<table:table-cell table:formula={quoteattr(value[1])}{computed}/>"
        if isinstance(value, int | float):
            return (f'<table:table-cell office:value-type="float" office:value="{value}">'
                    f"<text:p>{value}</text:p></table:table-cell>")  # fmt: skip
        return (f'<table:table-cell office:value-type="string"><text:p>{escape(value)}'
                "</text:p></table:table-cell>")  # fmt: skip

    tables = "".join(
        f"<table:table table:name={quoteattr(name)}>"
        + "".join(
            "<table:table-row>" + "".join(cell(v) for v in row) + "</table:table-row>"
            for row in rows
        )
        + "</table:table>"
        for name, rows in sheets.items()
    )
    content = (
        '<?xml version="1.0" encoding="UTF-8"?><office:document-content'
        ' xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0"'
        ' xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"'
        ' xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2">'
        "<office:body><office:spreadsheet>"
        + (
            f'<table:calculation-settings><table:null-date table:date-value="{null_date}"/>'
            "</table:calculation-settings>"
            if null_date
            else ""
        )
        + f"{tables}</office:spreadsheet></office:body>"
        "</office:document-content>"
    )
    manifest = (
        '<?xml version="1.0" encoding="UTF-8"?><manifest:manifest'
        ' xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0"'
        ' manifest:version="1.2"><manifest:file-entry manifest:full-path="/"'
        ' manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/>'
        '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>'
        "</manifest:manifest>"
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet")
        archive.writestr("META-INF/manifest.xml", manifest, zipfile.ZIP_DEFLATED)
        archive.writestr("content.xml", content, zipfile.ZIP_DEFLATED)


def test_ods(crm_engine: Any, files: Path) -> None:
    write_ods(files / "a.ods", {
        "Notes": [["ignored"]],
        "Activities": [
            ["external_id", "type", "subject", "due_at"],
            ["a1", "call", "serial", 45678.5],
            [],
            ["a2", "meeting", "a date", ("date", "2025-01-21T12:00:00")],
            ["a3", "bogus", "bad type", 45678],
            ["a4", "note", "formula", ("formula", "of:=1+1", None)],
            ["a5", "note", "computed", 45678, ("formula", "of:=1+1", None)],
            ["a6", "note", ("formula", "of:=\"com\"&\"puted\"", None), None],
        ],
    })  # fmt: skip
    result = do_import(crm_engine, files, "a.ods#sheet=Activities", "activities")
    assert result["counts"]["new"] == 3  # a5's formula is in a column of no field
    errors = errors_by_row(result)
    assert errors == {5: [("type", errors[5][0][1])], 6: [("due_at", FORMULA_REASON)],
                      8: [("subject", FORMULA_REASON)]}  # fmt: skip
    due = [naive(r[0]) for r in stored(crm_engine, "activities", "due_at")]
    assert due == [dt.datetime(2025, 1, 21, 12)] * 2 + [dt.datetime(2025, 1, 21)]
    rows = [["external_id", "type", "subject", "due_at"], ["b1", "call", "1904", 45678.5]]
    write_ods(files / "b.ods", {"S": rows}, null_date="1904-01-01")
    assert do_import(crm_engine, files, "b.ods", "activities")["counts"]["new"] == 1
    assert naive(stored(crm_engine, "activities", "due_at")[-1][0]) == dt.datetime(2029, 1, 22, 12)


def test_spreadsheet_rows_keep_their_sheet_numbers(engine: Any, files: Path,
                                                   xlsx_reader: str) -> None:  # fmt: skip
    book = openpyxl.Workbook()
    sheet = book.active
    sheet["B3"], sheet["C3"] = "email", "first_name"  # two blank rows, a blank column A
    sheet["B4"], sheet["C4"] = "a@x.com", "A"
    sheet["B6"], sheet["C6"] = "bad", "B"  # row 5 is blank
    sheet["B7"], sheet["C7"] = "c@x.com", "C"
    book.save(files / "r.xlsx")
    result = do_import(engine, files, "r.xlsx")
    assert result["counts"]["new"] == 2 and list(errors_by_row(result)) == [6]
    assert result["unmapped_columns"] == ["column_1"]


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("bad.xls", b"\xd0\xcf\x11\xe0 not really", "not a valid XLS"),
        ("bad.ods", b"PK\x03\x04 not a zip", "not a valid ODS"),
        ("bad.tsv", b"\x00\x01", "NUL bytes"),
        ("empty.txt", b"\r\n", "empty"),
    ],
)
def test_unreadable_new_formats_are_permanent(engine: Any, files: Path, name: str,
                                              data: bytes, message: str) -> None:  # fmt: skip
    with pytest.raises(PermanentError, match=message):
        do_import(engine, files, write(files, name, data))


def test_every_file_type_of_the_payload_opens(files: Path) -> None:
    """open_table takes every file type ImportPayload accepts."""
    from typing import get_args

    types = get_args(ImportPayload.model_fields["file_type"].annotation)
    assert set(types) == {"csv", "tsv", "txt", "xlsx", "xls", "ods", "json"}
    book = openpyxl.Workbook()
    book.active.append(["email"])
    book.active.append(["a@x.com"])
    book.save(files / "f.xlsx")
    write_ods(files / "f.ods", {"S": [["email"], ["a@x.com"]]})
    shutil.copy(FIXTURES / "legacy.xls", files / "f.xls")
    for kind in ("csv", "tsv", "txt"):
        write(files, f"f.{kind}", "email\na@x.com\n")
    write(files, "f.json", '[{"email": "a@x.com"}]')
    for kind in types:
        table = open_table(files / f"f.{kind}", kind)
        assert table.columns[0] == "email"
        assert next(iter(table.rows))[1]["email"] in ("a@x.com", "ana@example.com")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(["ok", "blank", "bad"]), min_size=1, max_size=25))
def test_error_rows_are_the_files_own_rows_in_every_format(files: Path, kinds: list[str]) -> None:
    """The same rows (some blank, some invalid) in every format: the reported rows are
    each format's own row numbers."""
    header = ["email", "first_name"]
    records = [
        [f"p{n}@x.com", "Ok"]
        if kind == "ok"
        else ([None, None] if kind == "blank" else ["bad", "X"])
        for n, kind in enumerate(kinds)
    ]
    # csv: the header is row 1, blank lines count; json lines: one line a record
    expected = sorted(n + 2 for n, kind in enumerate(kinds) if kind == "bad")
    text = "\n".join(",".join(c or "" for c in r) for r in [header, *records]) + "\n"
    write(files, "e.csv", text)
    write(files, "e.json", "\n".join(json.dumps(dict(zip(header, r, strict=True))) if r[0] else ""
                                     for r in [header, *records]))  # fmt: skip
    book = openpyxl.Workbook()
    for record in [header, *records]:
        book.active.append(record)
    book.save(files / "e.xlsx")
    write_ods(files / "e.ods", {"S": [header, *[[c for c in r] for r in records]]})
    for kind in ("csv", "json", "xlsx", "ods"):
        table = open_table(files / f"e.{kind}", kind)
        seen = [n for n, row in table.rows if row.get("email") == "bad"]
        assert seen == expected, kind


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.sampled_from(["text", "number", "formula", "computed", "shared", "empty"]),
                 max_size=5),
        max_size=12,
    ),
    prefix=st.sampled_from(["", "x:", "ss:"]),
    numbered=st.booleans(),
    chunk=st.integers(16, 400),
)  # fmt: skip
def test_formula_scan_finds_every_uncomputed_formula(
    rows: list[list[str]], prefix: str, numbered: bool, chunk: int
) -> None:
    """The XLSX formula scan, over sheet XML as writers write it (namespace prefix or not,
    r="..." or not, blank rows self-closed), read in chunks of any size."""
    from crmqueue.formats.readers.spreadsheet import _formula_cells

    def tag(name: str, attrs: str = "", body: str | None = None) -> str:
        if body is None:
            return f"<{prefix}{name}{attrs}/>"
        return f"<{prefix}{name}{attrs}>{body}</{prefix}{name}>"

    expected: dict[int, set[int]] = {}
    parts = []
    for r, cells in enumerate(rows, start=1):
        body = []
        for c, kind in enumerate(cells):
            ref = f' r="{chr(65 + c)}{r}"' if numbered else ""
            if kind == "text":
                body.append(tag("c", ref + ' t="inlineStr"', tag("is", "", tag("t", "", "</f> f"))))
            elif kind == "number":
                body.append(tag("c", ref, tag("v", "", "1.5")))
            elif kind == "formula":  # as openpyxl writes it: no value
                body.append(tag("c", ref, tag("f", "", "SUM(A1:A2)") + tag("v", "", "")))
                expected.setdefault(r, set()).add(c)
            elif kind == "computed":  # as Excel saves it
                body.append(tag("c", ref, tag("f", "", "1+1") + tag("v", "", "2")))
            elif kind == "shared":
                body.append(tag("c", ref, tag("f", ' t="shared" si="0"')))
                expected.setdefault(r, set()).add(c)
            else:
                body.append(tag("c", ref))
        row_ref = f' r="{r}"' if numbered else ""
        parts.append(tag("row", row_ref, "".join(body)) if body else tag("row", row_ref))
    xml = (
        f'<?xml version="1.0"?><{prefix}worksheet xmlns{":" + prefix[:-1] if prefix else ""}='
        '"http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        + tag("sheetData", "", "".join(parts))
        + f"</{prefix}worksheet>"
    ).encode()
    import crmqueue.formats.readers.spreadsheet as module

    original = module._SCAN_CHUNK
    module._SCAN_CHUNK = chunk
    try:
        found = _formula_cells(io.BytesIO(xml), full_calc=False)
        assert {row: set(cells) for row, cells in found.items()} == expected
    finally:
        module._SCAN_CHUNK = original


@pytest.mark.parametrize("form", ["lines", "array"])
def test_invalid_bytes_in_json_refuse_only_their_row(engine: Any, files: Path, form: str) -> None:
    records = [b'{"email": "a@x.com", "first_name": "\xc3\x89mile"}',
               b'{"email": "b@x.com", "first_name": "Bj\xf6rn"}',
               b'{"email": "c@x.com", "first_name": "C"}']  # fmt: skip
    data = b"\n".join(records) if form == "lines" else b"[" + b",\n".join(records) + b"]"
    result = do_import(engine, files, write(files, f"{form}.json", data))
    assert result["counts"]["new"] == 2
    reason = "byte 0xF6 is not valid in the file's encoding"
    assert result["errors"] == [{"row": 2, "column": "first_name", "reason": reason}]
    assert [r[0] for r in stored(engine, "contacts", "first_name")] == ["Émile", "C"]


# --------------------------------------------------------------------------- repeated headers

REPEATED = [["email", "First Name", "email"], ["ann@x.com", "Ann", "ann@y.com"]]


def write_repeated(files: Path, kind: str) -> str:
    if kind in ("csv", "tsv"):
        sep = "," if kind == "csv" else "\t"
        return write(files, f"r.{kind}", "\n".join(sep.join(r) for r in REPEATED) + "\n")
    if kind == "ods":
        write_ods(files / "r.ods", {"S": REPEATED})
        return "r.ods"
    book = xlsxwriter.Workbook(str(files / "r.xlsx"))
    sheet = book.add_worksheet()
    for number, record in enumerate(REPEATED):
        sheet.write_row(number, 0, record)
    book.close()
    return "r.xlsx"


@pytest.mark.parametrize("kind", ["csv", "tsv", "xlsx", "ods"])
def test_a_repeated_header_in_use_is_refused_naming_its_columns(
    engine: Any, files: Path, kind: str, xlsx_reader: str
) -> None:
    """`email,email`: which address? The import is refused before any row is stored; the
    later copy can still be chosen by name in mapping_config."""
    name = write_repeated(files, kind)
    with pytest.raises(PermanentError) as info:
        do_import(engine, files, name)
    assert str(info.value) == (
        "the header 'email' is on 2 columns (read as 'email', 'email_2'): which one to import"
        " is ambiguous; rename the columns, or name one in mapping_config"
    )
    assert stored(engine, "contacts", "email") == []
    with pytest.raises(PermanentError, match="the header 'email' is on 2 columns"):
        do_import(engine, files, name, mapping_config={"email": "email"})
    result = do_import(
        engine, files, name, mapping_config={"email": "email_2", "first_name": "First Name"}
    )
    assert result["counts"]["new"] == 1
    assert stored(engine, "contacts", "email", "first_name") == [("ann@y.com", "Ann")]


def test_a_repeated_header_not_in_use_is_only_an_unused_column(engine: Any, files: Path) -> None:
    name = write(files, "u.csv", "email,tag,tag\nann@x.com,a,b\n")
    result = do_import(engine, files, name)
    assert result["counts"]["new"] == 1
    assert stored(engine, "contacts", "email") == [("ann@x.com",)]
