"""Odd rows and odd files that used to lose a whole import or store a silently wrong
value (issue 11, section 3): JSON fields first seen after the records the columns are
learned from, UTF-16/32 text and stray NULs, JSON nested too deep, Excel's `sep=` hint,
a quote never closed, fields beyond the header, and legacy non-Western encodings. Each
is refused in its own row (naming row and column) or read right; the other rows import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmqueue.crm import schema
from crmqueue.crm.store import create_engine, init_db
from crmqueue.errors import PermanentError
from crmqueue.formats.readers import PEEK_RECORDS, WHOLE_ROW, ProblemRow, open_table
from crmqueue.payloads import ImportPayload
from crmqueue.workers.import_export import Importer


@pytest.fixture
def files(tmp_path: Path) -> Path:
    path = tmp_path / "files"
    path.mkdir()
    return path


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    db = create_engine(f"sqlite:///{tmp_path}/crm.db")
    init_db(db)
    yield db
    db.dispose()


def write(files: Path, name: str, data: str | bytes) -> str:
    (files / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    return name


def do_import(engine: Any, files: Path, name: str, **fields: Any) -> dict[str, Any]:
    data = {"tenant_id": "t1", "user_id": "u1", "file_url": name,
            "file_type": name.rsplit(".", 1)[-1], "entity_type": "contacts", **fields}  # fmt: skip
    return Importer(ImportPayload.model_validate(data), engine, files, None, lambda _: None).run()


def contacts(engine: Any, *columns: str) -> list[tuple[Any, ...]]:
    table = schema.ENTITY_TABLES["contacts"]
    with engine.connect() as conn:
        query = sa.select(*(table.c[c] for c in columns)).order_by(table.c.id)
        return [tuple(row) for row in conn.execute(query)]


def errors(result: dict[str, Any]) -> list[tuple[int, str, str]]:
    return [(e["row"], e["column"], e["reason"]) for e in result["errors"]]


# --------------------------------------------------------------------------- JSON late keys


def late_records(late: dict[str, Any]) -> list[dict[str, Any]]:
    early = [{"email": f"a{i}@x.com", "note": "n"} for i in range(PEEK_RECORDS)]
    return [*early, {"email": "late@x.com", **late}, {"email": "after@x.com"}]


@pytest.mark.parametrize("lines", [False, True])
def test_json_field_first_seen_late_refuses_its_row(engine: Any, files: Path, lines: bool) -> None:
    records = late_records({"first_name": "Late", "Company": "Acme"})
    text = "\n".join(map(json.dumps, records)) if lines else json.dumps(records)
    result = do_import(engine, files, write(files, "late.json", text))
    assert result["counts"]["new"] == PEEK_RECORDS + 1
    row = PEEK_RECORDS + 1
    assert {(r, c) for r, c, _ in errors(result)} == {(row, "first_name"), (row, "Company")}
    assert all("first seen after record 1,000" in reason for *_, reason in errors(result))
    emails = [e for (e,) in contacts(engine, "email")]
    assert "late@x.com" not in emails and "after@x.com" in emails


def test_json_late_key_naming_no_field_is_ignored_like_early_ones(engine: Any, files: Path) -> None:
    records = late_records({"favourite_colour": "blue", "note": "x"})
    result = do_import(engine, files, write(files, "late.json", json.dumps(records)))
    assert result["counts"]["new"] == PEEK_RECORDS + 2 and errors(result) == []


def test_json_late_key_with_mapping_config_is_unmapped_like_early_ones(
    engine: Any, files: Path
) -> None:
    # With a mapping only its columns are read: a late "first_name" would have been
    # unmapped among the columns too.
    records = late_records({"first_name": "Late"})
    name = write(files, "late.json", json.dumps(records))
    result = do_import(engine, files, name, mapping_config={"email": "email"})
    assert result["counts"]["new"] == PEEK_RECORDS + 2 and errors(result) == []


def test_json_late_key_in_reader_names_the_key(files: Path) -> None:
    name = write(files, "late.jsonl", "\n".join(map(json.dumps, late_records({"x y": 1}))))
    rows = list(open_table(files / name, "json", None).rows)
    number, row = rows[PEEK_RECORDS]
    assert number == PEEK_RECORDS + 1 and isinstance(row, ProblemRow)
    assert list(row.problems) == ["x y"] and row["x y"] == "1"
    assert not isinstance(rows[-1][1], ProblemRow)


# --------------------------------------------------------------------------- UTF-16/32, NUL


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be"])
@pytest.mark.parametrize("name", ["u.csv", "u.txt", "u.json"])
def test_utf16_and_utf32_with_bom(engine: Any, files: Path, codec: str, name: str) -> None:
    bom = {"utf-16-le": "\ufeff", "utf-16-be": "\ufeff", "utf-32-be": "\ufeff"}.get(codec, "")
    if name.endswith(".json"):
        text = '[{"email": "b@x.com", "first_name": "Bé 太郎"}]'
    else:
        sep = "\t" if name.endswith(".txt") else ","  # Excel's "Unicode Text" is tab-separated
        text = f"email{sep}first_name\r\nb@x.com{sep}Bé 太郎\r\n"
    result = do_import(engine, files, write(files, name, (bom + text).encode(codec)))
    assert errors(result) == [] and contacts(engine, "email", "first_name") == [
        ("b@x.com", "Bé 太郎")
    ]


@pytest.mark.parametrize("where", ["mapped", "unmapped"])
def test_a_stray_nul_refuses_only_its_row(engine: Any, files: Path, where: str) -> None:
    cell = "B\x00C"
    text = f"email,first_name,other\nb1@x.com,A,o\nb2@x.com,{cell if where == 'mapped' else 'B'},"
    text += f"{cell if where == 'unmapped' else 'o'}\nb3@x.com,C,o\n"
    result = do_import(engine, files, write(files, "nul.csv", text))
    if where == "mapped":
        assert errors(result) == [(3, "first_name", "contains a NUL character")]
        assert contacts(engine, "email") == [("b1@x.com",), ("b3@x.com",)]
    else:  # a column the import does not use
        assert errors(result) == [] and len(contacts(engine, "email")) == 3


@pytest.mark.parametrize(
    "data",
    [b"\x00\x01email,name\n", b"PK\x03\x04" + b"\x00" * 40, ("email,n\n".encode("utf-16-le"))],
)
def test_binary_or_bomless_utf16_is_still_refused_whole(files: Path, data: bytes) -> None:
    name = write(files, "b.csv", data + b"x@y.z,1\n")
    with pytest.raises(PermanentError, match="not a text file"):
        open_table(files / name, "csv", None)


# --------------------------------------------------------------------------- deep JSON


@pytest.mark.parametrize("shape", ["[", '{"a":'])
@pytest.mark.parametrize("lines", [False, True])
def test_json_nested_too_deep_refuses_its_row(
    engine: Any, files: Path, shape: str, lines: bool
) -> None:
    close = "]" if shape == "[" else "}"
    deep = '{"email":"d@x.com","title":' + shape * 100_000 + "1" + close * 100_000 + "}"
    records = ['{"email":"ok@x.com"}', deep, '{"email":"ok2@x.com","title":"a]}\\"["}']
    text = "\n".join(records) if lines else "[" + ",\n".join(records) + "]"
    result = do_import(engine, files, write(files, "deep.json", text))
    assert [(r, c) for r, c, _ in errors(result)] == [(2, WHOLE_ROW)]
    assert "nested too deeply" in errors(result)[0][2]
    assert contacts(engine, "email", "title") == [("ok@x.com", None), ("ok2@x.com", 'a]}"[')]


# --------------------------------------------------------------------------- sep= hint


@pytest.mark.parametrize("sep", [";", ",", "\t", "|", "\\t"])
@pytest.mark.parametrize("quoted", [False, True])
def test_excel_sep_hint(engine: Any, files: Path, sep: str, quoted: bool) -> None:
    real = "\t" if sep == "\\t" else sep
    hint = f'"sep={sep}"' if quoted else f"sep={sep}"
    text = f"{hint}\r\nemail{real}first_name{real}title\r\nc@x.com{real}C{real}a,b;c\r\n"
    text += f"d@x.com{real}{real}\r\n"  # an empty title: row 4 of the file
    text = text.replace("a,b;c", f'"a,b;c{real}"')
    result = do_import(engine, files, write(files, "sep.csv", text))
    assert errors(result) == []
    assert contacts(engine, "email", "first_name", "title") == [
        ("c@x.com", "C", f"a,b;c{real}".strip()),
        ("d@x.com", None, None),
    ]


def test_sep_hint_keeps_file_line_numbers(engine: Any, files: Path) -> None:
    text = "sep=;\nemail;first_name\nok@x.com;A\nnot-an-email;B\n"
    result = do_import(engine, files, write(files, "sep.csv", text))
    assert [(r, c) for r, c, _ in errors(result)] == [(4, "email")]


# --------------------------------------------------------------------------- quotes, extras


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_quote_never_closed_is_refused_not_merged(engine: Any, files: Path, newline: str) -> None:
    text = newline.join(
        ["email,first_name", "s0@example.com,Zed", 's1@example.com,"Ann', "s2@example.com,Bob"]
        + [f"s{i}@example.com,N{i}" for i in range(3, 10)]
    )
    result = do_import(engine, files, write(files, "quote.csv", text + newline))
    assert errors(result) == [
        (3, WHOLE_ROW, "a quote opened in row 3 is never closed: the rest of the file was"
         " read as this cell")
    ]  # fmt: skip
    assert contacts(engine, "email", "first_name") == [("s0@example.com", "Zed")]


@pytest.mark.parametrize(
    "last",
    ['s9@x.com,5" tall', 's9@x.com,"multi\nline"', 's9@x.com,"closed ""quotes"""'],
)
def test_balanced_or_literal_quotes_at_the_end_still_import(
    engine: Any, files: Path, last: str
) -> None:
    result = do_import(engine, files, write(files, "q.csv", f"email,first_name\n{last}"))
    assert errors(result) == [] and len(contacts(engine, "email")) == 1


def test_extra_fields_beyond_the_header(engine: Any, files: Path) -> None:
    text = (
        "email,first_name\n"
        "e1@x.com,E,extra1,extra2\n"  # two non-empty extras: refused
        "e2@x.com,F,,\n"  # trailing commas: fine
        "e3@x.com,G,,x,\n"  # a non-empty field beyond: refused (2 more, up to it)
        "e4@x.com,H\n"
    )
    result = do_import(engine, files, write(files, "extra.csv", text))
    assert [(r, c) for r, c, _ in errors(result)] == [(2, WHOLE_ROW), (4, WHOLE_ROW)]
    assert errors(result)[0][2].startswith("row has 2 more fields than the header")
    assert errors(result)[1][2].startswith("row has 2 more fields than the header")
    assert contacts(engine, "email") == [("e2@x.com",), ("e4@x.com",)]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.lists(st.integers(0, 3), min_size=1, max_size=8), st.sampled_from(",;\t|"))
def test_extra_fields_property(files: Path, extras: list[int], sep: str) -> None:
    """Every row with non-empty fields beyond the header is a problem row, every other
    row reads whole, whatever the delimiter."""
    lines = [sep.join(["email", "first_name", "title"])]
    for i, extra in enumerate(extras):
        lines.append(sep.join([f"r{i}@x.com", "N", "T"] + ["v"] * extra + [""] * (i % 2)))
    path = files / "p.csv"
    path.write_text("\n".join(lines) + "\n")
    rows = list(open_table(path, "csv", None).rows)
    assert [n for n, _ in rows] == list(range(2, len(extras) + 2))
    for (_, row), extra in zip(rows, extras, strict=True):
        assert isinstance(row, ProblemRow) == (extra > 0)
        if extra:
            assert row.problems[WHOLE_ROW].startswith(f"row has {extra} more field")


# --------------------------------------------------------------------------- encodings

NAMES = {
    "shift_jis": ["太郎", "花子", "山田", "株式会社テスト"],
    "gbk": ["张伟", "王芳", "李娜", "北京科技有限公司"],
    "cp1251": ["Иван", "Мария", "Петров", "ООО Ромашка"],
    "koi8_r": ["Сергей", "Ольга", "Смирнова", "ЗАО Восток"],
    "cp1252": ["José", "Zoë", "Müller", "Société Générale €"],
}


@pytest.mark.parametrize("codec", list(NAMES))
def test_legacy_encodings_are_detected(engine: Any, files: Path, codec: str) -> None:
    names = NAMES[codec]
    rows = [(f"u{i}@x.com", names[i % 2], names[2], names[3]) for i in range(4)]
    text = "email,first_name,last_name,company\n" + "".join(",".join(r) + "\n" for r in rows)
    name = write(files, "legacy.csv", text.encode(codec))
    table = open_table(files / name, "csv", None)
    assert table.encoding is not None
    assert "".encode(table.encoding) == b"" and text.encode(codec).decode(table.encoding) == text
    if codec == "cp1252":
        assert table.encoding == "cp1252"
    else:
        assert table.encoding != "cp1252" and f"decoded as {table.encoding}" in table.notes[0]
    result = do_import(engine, files, name)
    assert errors(result) == []
    assert contacts(engine, "email", "first_name", "last_name", "company") == rows


def test_too_little_text_to_detect_keeps_cp1252_and_says_so(files: Path) -> None:
    name = write(files, "tiny.csv", "email,first_name\nr@x.com,Иван\n".encode("cp1251"))
    table = open_table(files / name, "csv", None)
    assert table.encoding == "cp1252" and "save it as UTF-8" in table.notes[0]


def test_quote_never_closed_over_the_cell_limit_says_so(files: Path) -> None:
    from crmqueue.formats.readers import MAX_CELL_CHARS

    rest = "".join(f"s{i}@example.com,Name{i}\n" for i in range(MAX_CELL_CHARS // 20 + 10))
    name = write(files, "q.csv", 'email,first_name\ns0@example.com,A\ns1@example.com,"Ann\n' + rest)
    rows = list(open_table(files / name, "csv", None).rows)
    assert [n for n, _ in rows] == [2, 3]
    row = rows[1][1]
    assert isinstance(row, ProblemRow)
    assert row.problems == {WHOLE_ROW: "a quote opened in row 3 is never closed: the rest of"
                            " the file was read as this cell"}  # fmt: skip
