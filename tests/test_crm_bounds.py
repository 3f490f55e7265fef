"""What the CRM stores is what was given, on SQLite and PostgreSQL alike: time stamps as
UTC instants (an offset is never dropped), values the row models accept always fit their
columns (a test walks every importable field), values out of range refused in their own
row naming the column, JSON values of the wrong kind refused, and export filters that
match what duplicate detection matches (emails in any case, a day for a time stamp)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import types
import typing
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import crm_db
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import AfterValidator, BeforeValidator
from pydantic.fields import FieldInfo

from crmqueue.config import MAX_STATUS_CHARS
from crmqueue.crm import schema
from crmqueue.crm.entities import ROW_MODELS, _contact_status, as_utc
from crmqueue.fields import _address_field
from crmqueue.payloads import ExportPayload, ImportPayload
from crmqueue.workers.import_export import Importer, run_export

crm_url = crm_db.crm_url
crm_engine = crm_db.crm_engine
pg_url = crm_db.pg_url

UTC = dt.UTC


def noop(_percent: float) -> None:
    pass


@pytest.fixture
def files(tmp_path: Path) -> Path:
    path = tmp_path / "files"
    path.mkdir()
    return path


def do_import(
    engine: Any,
    files: Path,
    name: str,
    text: str | bytes,
    entity: str,
    contact_statuses: list[str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    data = text.encode() if isinstance(text, str) else text
    (files / name).write_bytes(data)
    payload = ImportPayload.model_validate(
        {"tenant_id": "t1", "user_id": "u1", "file_url": name,
         "file_type": name.rsplit(".", 1)[-1], "entity_type": entity, **fields}
    )  # fmt: skip
    return Importer(payload, engine, files, None, noop, contact_statuses=contact_statuses).run()


def export_csv(engine: Any, files: Path, entity: str, fields: list[str],
               filters: dict[str, Any] | None = None) -> list[list[str]]:  # fmt: skip
    payload = ExportPayload(tenant_id="t1", user_id="u1", entity_type=entity, format="csv",
                            fields=fields, filters=filters or {})  # fmt: skip
    out = run_export(payload, engine, files, None, noop)
    with (files / out["path"]).open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.reader(handle))[1:]


# --------------------------------------------------------------------------- time zones


def test_offsets_are_kept_as_utc_on_both_stores(crm_engine: Any, files: Path) -> None:
    rows = [
        ("a1", "2025-01-01T10:00:00+02:00", "2025-01-01 08:00:00+00:00"),
        ("a2", "2025-01-01T10:00:00-05:30", "2025-01-01 15:30:00+00:00"),
        ("a3", "2025-06-30T23:30:00-01:00", "2025-07-01 00:30:00+00:00"),  # next day in UTC
        ("a4", "2025-01-01T10:00:00Z", "2025-01-01 10:00:00+00:00"),
        ("a5", "2025-01-01 10:00", "2025-01-01 10:00:00+00:00"),  # naive: UTC
        ("a6", "45678.5", "2025-01-21 12:00:00+00:00"),  # a spreadsheet serial: UTC
        ("a7", "9999-12-31T23:59:59+00:00", "9999-12-31 23:59:59+00:00"),
        ("a8", "0001-01-01T00:00:00-00:30", "0001-01-01 00:30:00+00:00"),
    ]
    text = "external_id,type,subject,due_at,completed_at\n" + "".join(
        f"{ext},call,S,{given},{given}\n" for ext, given, _ in rows
    )
    result = do_import(crm_engine, files, "a.csv", text, "activities")
    assert result["counts"]["new"] == len(rows), result["errors"]
    c = schema.activities.c
    with crm_engine.connect() as conn:
        stored = conn.execute(sa.select(c.external_id, c.due_at, c.completed_at)).all()
    for (ext, _, expected), (stored_ext, due, completed) in zip(rows, stored, strict=True):
        assert stored_ext == ext and str(due) == expected and str(completed) == expected
    exported = export_csv(crm_engine, files, "activities", ["external_id", "due_at"])
    assert exported == [
        [ext, dt.datetime.fromisoformat(expected).isoformat()] for ext, _, expected in rows
    ]
    # the export reads back as the same instants
    again = "external_id,type,subject,due_at\n" + "".join(
        f"{ext}-again,call,S,{due}\n" for ext, due in exported
    )
    assert do_import(crm_engine, files, "b.csv", again, "activities")["counts"]["new"] == 8
    with crm_engine.connect() as conn:
        query = sa.select(c.due_at).where(c.external_id.like("%-again")).order_by(c.id)
        assert [str(v) for v in conn.execute(query).scalars()] == [e for _, _, e in rows]
    # XLSX and PDF exports of the extremes work on both stores
    for fmt in ("xlsx", "pdf"):
        payload = ExportPayload(tenant_id="t1", user_id="u1", entity_type="activities",
                                format=fmt)  # fmt: skip
        assert run_export(payload, crm_engine, files, None, noop)["rows"] == 16


@pytest.mark.parametrize(
    "value",
    [
        "9999-12-31T23:59:59-05:00",  # year 10000 in UTC
        "9999-12-31T20:00:00-04:00",
        "0001-01-01T00:30:00+01:00",  # year 0 in UTC
        "0001-01-01T00:00:00+00:01",
    ],
)
def test_instants_outside_years_1_to_9999_in_utc_are_refused_in_their_row(
    crm_engine: Any, files: Path, value: str
) -> None:
    text = f"external_id,type,subject,due_at\ngood1,call,S,\nbad,call,S,{value}\ngood2,note,N,\n"
    result = do_import(crm_engine, files, "a.csv", text, "activities")
    assert result["counts"] == {"new": 2, "updated": 0, "skipped": 0, "invalid": 1}
    [error] = result["errors"]
    assert error["row"] == 3 and error["column"] == "due_at" and "years 1-9999" in error["reason"]
    # every export of the entity still works
    assert export_csv(crm_engine, files, "activities", ["external_id"]) == [["good1"], ["good2"]]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stamp=st.datetimes(
        min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, dt.timezone(dt.timedelta(hours=14)), dt.timezone(-dt.timedelta(hours=12)),
             dt.timezone(dt.timedelta(hours=5, minutes=45)), None]
        ),
    )
)  # fmt: skip
def test_any_time_stamp_reads_back_as_the_same_instant(crm_engine: Any, stamp: dt.datetime) -> None:
    expected = stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
    t = schema.activities
    with crm_engine.begin() as conn:
        row_id = conn.execute(
            t.insert().values(
                tenant_id="p",
                type="call",
                subject="S",
                due_at=stamp,
                created_at=stamp,
                updated_at=expected,
            )
        ).inserted_primary_key[0]
        back = conn.execute(sa.select(t.c.due_at, t.c.created_at).where(t.c.id == row_id)).one()
        # the same instant compares equal in SQL, whatever offset it is given with
        found = conn.execute(
            sa.select(sa.func.count()).where(t.c.id == row_id, t.c.due_at == expected)
        ).scalar_one()
    assert back == (expected, expected) and back[0].utcoffset() == dt.timedelta(0)
    assert found == 1


# --------------------------------------------------------------------------- bounds


def _bounds(entity: str, field: str) -> dict[str, Any]:
    """What the row model declares about one field: its types, literals, string length,
    integer range, Decimal digits and the validators it runs."""
    found: dict[str, Any] = {"types": set(), "literals": [], "validators": set()}
    info = ROW_MODELS[entity].model_fields[field]

    def meta(item: Any) -> None:
        if isinstance(item, FieldInfo):
            for inner in item.metadata:
                meta(inner)
            return
        if isinstance(item, AfterValidator | BeforeValidator):
            found["validators"].add(item.func)
        for attr in ("max_length", "ge", "gt", "le", "lt", "max_digits", "decimal_places"):
            value = getattr(item, attr, None)
            if value is not None:
                found[attr] = value

    def visit(annotation: Any) -> None:
        origin = typing.get_origin(annotation)
        if origin is Literal:
            found["literals"].extend(typing.get_args(annotation))
        elif origin is Annotated:
            first, *rest = typing.get_args(annotation)
            visit(first)
            for item in rest:
                meta(item)
        elif origin in (typing.Union, types.UnionType):
            for arg in typing.get_args(annotation):
                visit(arg)
        elif isinstance(annotation, type):
            found["types"].add(annotation)

    visit(info.annotation)
    for item in info.metadata:
        meta(item)
    found["types"].discard(type(None))
    return found


def _string_limit(bounds: dict[str, Any]) -> int | None:
    """The longest text the model accepts (None: unbounded)."""
    if bounds["literals"]:
        return max(len(value) for value in bounds["literals"])
    if _contact_status in bounds["validators"]:
        return MAX_STATUS_CHARS  # crm.contact_statuses refuses a longer status
    if _address_field in bounds["validators"]:
        return 254  # RFC 5321's path limit, checked by crmqueue.fields.parse_address
    limit: int | None = bounds.get("max_length")
    return limit


IMPORTABLE = [(entity, field) for entity in ROW_MODELS for field in ROW_MODELS[entity].model_fields]


@pytest.mark.parametrize(("entity", "field"), IMPORTABLE)
def test_every_importable_field_accepts_only_what_its_column_holds(entity: str, field: str) -> None:
    column = schema.ENTITY_TABLES[entity].c[field]
    bounds = _bounds(entity, field)
    kind = column.type
    if isinstance(kind, sa.Text):
        assert bounds["types"] == {str}
    elif isinstance(kind, sa.String):
        assert bounds["types"] <= {str} and kind.length is not None
        limit = _string_limit(bounds)
        assert limit is not None and limit <= kind.length, (limit, kind.length)
    elif isinstance(kind, sa.Integer):
        bits = 64 if isinstance(kind, sa.BigInteger) else 32
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        assert bounds["types"] == {int}
        assert bounds.get("ge", bounds.get("gt", low - 1) + 1) >= low
        assert bounds.get("le", bounds.get("lt", high + 2) - 1) <= high
    elif isinstance(kind, sa.Numeric):
        assert bounds["types"] == {Decimal}
        digits, places = bounds["max_digits"], bounds["decimal_places"]
        assert kind.precision is not None and kind.scale is not None
        assert places <= kind.scale and digits - places <= kind.precision - kind.scale
    elif isinstance(kind, schema.UtcDateTime):
        assert bounds["types"] == {dt.datetime} and as_utc in bounds["validators"]
    elif isinstance(kind, sa.Date):
        assert bounds["types"] == {dt.date}
    else:
        pytest.fail(f"{entity}.{field}: no check for a {kind!r} column: add one here")


STATUS = "s" * MAX_STATUS_CHARS


def _extreme(entity: str, field: str, largest: bool) -> str | None:
    """The largest (or smallest) value the model accepts for a field, as a CSV cell."""
    bounds = _bounds(entity, field)
    column = schema.ENTITY_TABLES[entity].c[field]
    if bounds["literals"]:
        return max(bounds["literals"], key=len) if largest else min(bounds["literals"], key=len)
    if _contact_status in bounds["validators"]:
        return STATUS
    if _address_field in bounds["validators"]:
        # 254 characters: 64 @ 63.63.57.com
        return "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com" if largest \
            else "m@x.io"  # fmt: skip
    if field == "currency":
        return "EUR"
    if isinstance(column.type, sa.Numeric):
        whole = bounds["max_digits"] - bounds["decimal_places"]
        return "9" * whole + "." + "9" * bounds["decimal_places"] if largest else "0"
    if isinstance(column.type, sa.Integer):
        return str(bounds["le"] if largest else bounds.get("ge", 0))
    if isinstance(column.type, schema.UtcDateTime):
        return "9999-12-31T23:59:59.999999+00:00" if largest else "0001-01-01T00:00:00+00:00"
    if isinstance(column.type, sa.Date):
        return "9999-12-31" if largest else "0001-01-01"
    limit = _string_limit(bounds)
    # non-ASCII: a column's length is in characters, not bytes
    return ("ü" * (limit or 5000) if largest else "m").replace("ü", "x", 1) \
        if field != "domain" else ("ü" * 253 if largest else "m.example")  # fmt: skip


def _beyond(entity: str, field: str) -> list[str]:
    """Values just past what the column holds."""
    bounds = _bounds(entity, field)
    column = schema.ENTITY_TABLES[entity].c[field]
    if isinstance(column.type, sa.Numeric):
        whole = bounds["max_digits"] - bounds["decimal_places"]
        return ["1" + "0" * whole, "0." + "0" * bounds["decimal_places"] + "1"]
    if isinstance(column.type, sa.Integer):
        return [str(bounds["le"] + 1), "99999999999999999999", "3000000000"]
    if isinstance(column.type, sa.String) and not isinstance(column.type, sa.Text):
        if bounds["literals"] or _contact_status in bounds["validators"]:
            return [STATUS + "s"]
        assert column.type.length is not None
        if _address_field in bounds["validators"]:
            return ["a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 58 + ".com"]
        return ["y" * (column.type.length + 1)]
    return []


def _csv(fields: list[str], rows: list[dict[str, str | None]]) -> str:
    def cell(value: str | None) -> str:
        return "" if value is None else '"' + value.replace('"', '""') + '"'

    return (
        ",".join(fields)
        + "\n"
        + "".join(",".join(cell(row.get(f)) for f in fields) + "\n" for row in rows)
    )


@pytest.mark.parametrize("entity", list(ROW_MODELS))
def test_the_largest_values_the_models_accept_are_stored_and_read_back(
    crm_engine: Any, files: Path, entity: str
) -> None:
    fields = list(ROW_MODELS[entity].model_fields)
    largest = {f: _extreme(entity, f, True) for f in fields}
    smallest = {f: _extreme(entity, f, False) for f in fields}
    mapping = {f: f for f in fields}
    result = do_import(crm_engine, files, "x.csv", _csv(fields, [largest, smallest]), entity,
                       mapping_config=mapping, contact_statuses=[STATUS])  # fmt: skip
    assert result["counts"]["new"] == 2, result["errors"]
    context = {"contact_statuses": [STATUS]}
    table = schema.ENTITY_TABLES[entity]
    with crm_engine.connect() as conn:
        stored = conn.execute(sa.select(*(table.c[f] for f in fields)).order_by(table.c.id)).all()
    for given_row, row in zip((largest, smallest), stored, strict=True):
        expected = ROW_MODELS[entity].model_validate(given_row, context=context).model_dump()
        assert dict(zip(fields, row, strict=True)) == expected
    for fmt in ("csv", "xlsx"):
        payload = ExportPayload(tenant_id="t1", user_id="u1", entity_type=entity, format=fmt)
        assert run_export(payload, crm_engine, files, None, noop)["rows"] == 2


@pytest.mark.parametrize("entity", list(ROW_MODELS))
def test_values_past_a_column_are_refused_each_in_its_row(
    crm_engine: Any, files: Path, entity: str
) -> None:
    fields = list(ROW_MODELS[entity].model_fields)
    base = {f: _extreme(entity, f, False) for f in fields}
    key = schema.ENTITY_TABLES[entity].c
    rows: list[dict[str, str | None]] = []
    wanted: list[str] = []
    for field in fields:
        for value in _beyond(entity, field):
            rows.append({**base, field: value})
            wanted.append(field)
    assert wanted, entity
    good = [dict(base), {**base, **({"email": "n@x.io"} if entity == "contacts" else {})}]
    if entity == "companies":
        good[1].update(name="other", domain="other.example")
    elif entity in ("leads", "activities"):
        good[1]["external_id"] = "other"
    rows = [good[0], *rows, good[1]]
    mapping = {f: f for f in fields}
    result = do_import(crm_engine, files, "x.csv", _csv(fields, rows), entity,
                       mapping_config=mapping, contact_statuses=[STATUS])  # fmt: skip
    assert result["counts"]["new"] == 2 and result["counts"]["invalid"] == len(wanted)
    assert [(e["row"], e["column"]) for e in result["errors"]] == [
        (n, field) for n, field in enumerate(wanted, start=3)
    ]
    with crm_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(key.id.table)).scalar() == 2


# --------------------------------------------------------------------------- JSON values


def _json_file(rows: list[dict[str, Any]], lines: bool) -> str:
    if lines:
        return "".join(json.dumps(row) + "\n" for row in rows)
    return json.dumps(rows)


@pytest.mark.parametrize("lines", [False, True], ids=["array", "lines"])
def test_json_objects_and_arrays_are_refused_in_their_row_naming_the_column(
    crm_engine: Any, files: Path, lines: bool
) -> None:
    rows: list[dict[str, Any]] = [
        {"email": "good@x.io", "first_name": "Good"},
        {"email": "a@x.io", "company": {"name": "Acme"}},
        {"email": "b@x.io", "first_name": ["A", "B"]},
        {"email": "c@x.io", "title": [], "city": {}},
        {"email": "d@x.io", "external_id": 1e20, "phone": 12345678901234567890123},
    ]
    text = _json_file(rows, lines).replace("1e+20", "1e20")  # as a person would write it
    result = do_import(crm_engine, files, "c.json", text, "contacts")
    assert result["counts"] == {"new": 2, "updated": 0, "skipped": 0, "invalid": 3}
    assert [(e["row"], e["column"]) for e in result["errors"]] == [
        (2, "company"), (3, "first_name"), (4, "title"), (4, "city")
    ]  # fmt: skip
    assert "an object is not a value" in result["errors"][0]["reason"]
    assert "an array is not a value" in result["errors"][1]["reason"]
    c = schema.contacts.c
    with crm_engine.connect() as conn:
        stored = conn.execute(sa.select(c.email, c.external_id, c.phone).order_by(c.id)).all()
    # numbers in text fields keep the form they were written in
    assert [tuple(row) for row in stored] == [
        ("good@x.io", None, None), ("d@x.io", "1e20", "12345678901234567890123")
    ]  # fmt: skip


@pytest.mark.parametrize("entity", list(ROW_MODELS))
def test_no_field_of_any_entity_takes_a_json_object_or_array(
    crm_engine: Any, files: Path, entity: str
) -> None:
    fields = list(ROW_MODELS[entity].model_fields)
    base = {f: _extreme(entity, f, False) for f in fields}
    rows: list[dict[str, Any]] = [base]
    wanted = []
    for field in fields:
        for bad in ({"v": 1}, [1, 2], [base[field]]):
            rows.append({**base, field: bad})
            wanted.append(field)
    mapping = {f: f for f in fields}
    text = _json_file(rows, False)
    result = do_import(crm_engine, files, "x.json", text, entity,
                       mapping_config=mapping, contact_statuses=[STATUS])  # fmt: skip
    assert result["counts"]["new"] == 1 and result["counts"]["invalid"] == len(wanted)
    assert [(e["row"], e["column"]) for e in result["errors"][: len(wanted)]] == [
        (n, field) for n, field in enumerate(wanted, start=2)
    ]


@pytest.mark.parametrize(
    ("written", "stored"),
    [("1e20", "1e20"), ("1.50", "1.50"), ("-0", "-0"), ("1E-7", "1E-7"), ("10", "10")],
)
def test_json_numbers_in_text_fields_keep_their_written_form(
    crm_engine: Any, files: Path, written: str, stored: str
) -> None:
    text = f'[{{"type": "call", "subject": {written}, "external_id": {written}}}]'
    result = do_import(crm_engine, files, "a.json", text, "activities")
    assert result["counts"]["new"] == 1, result["errors"]
    c = schema.activities.c
    with crm_engine.connect() as conn:
        assert tuple(conn.execute(sa.select(c.subject, c.external_id)).one()) == (stored, stored)


# --------------------------------------------------------------------------- export filters


def _contacts(engine: Any, rows: list[tuple[str, str]]) -> None:
    with engine.begin() as conn:
        conn.execute(
            schema.contacts.insert(),
            [
                {"tenant_id": "t1", "email": email, "created_at": stamp, "updated_at": stamp}
                for email, stamp in rows
            ],
        )


def test_email_filters_ignore_case_as_duplicate_detection_does(
    crm_engine: Any, files: Path
) -> None:
    stamp = dt.datetime(2026, 11, 30, 12, tzinfo=UTC)
    _contacts(crm_engine, [("john.doe@example.com", stamp), ("Mixed.Case@Example.com", stamp),
                           ("other@example.com", stamp)])  # fmt: skip
    for value, expected in [
        ("JOHN.DOE@example.com", ["john.doe@example.com"]),
        ("john.doe@EXAMPLE.COM", ["john.doe@example.com"]),
        ("mixed.case@example.com", ["Mixed.Case@Example.com"]),
        (["OTHER@example.com", "John.Doe@Example.com"], ["john.doe@example.com",
                                                         "other@example.com"]),
    ]:  # fmt: skip
        rows = export_csv(crm_engine, files, "contacts", ["email"], {"email": value})
        assert sorted(r[0] for r in rows) == sorted(expected), value


@pytest.mark.parametrize(
    ("entity", "field", "stored", "given"),
    [
        ("companies", "name", "Acme GmbH", "ACME gmbh"),
        ("companies", "domain", "acme.example", "ACME.Example"),
        ("leads", "external_id", "L-ab1", "l-AB1"),
        ("activities", "external_id", "A-ab1", "a-AB1"),
    ],
)
def test_every_default_duplicate_key_filters_ignoring_case(
    crm_engine: Any, files: Path, entity: str, field: str, stored: str, given: str
) -> None:
    fields = list(ROW_MODELS[entity].model_fields)
    base = {f: _extreme(entity, f, False) for f in fields}
    other = {**base, field: "zzz-" + stored}
    if entity == "companies":
        other.update(name="Other", domain="other.example")
    text = _csv(fields, [{**base, field: stored}, other])
    result = do_import(crm_engine, files, "x.csv", text, entity,
                       mapping_config={f: f for f in fields})  # fmt: skip
    assert result["counts"]["new"] == 2, result["errors"]
    rows = export_csv(crm_engine, files, entity, [field], {field: given})
    assert rows == [[stored]]
    rows = export_csv(crm_engine, files, entity, [field], {field: [given, "nothing"]})
    assert rows == [[stored]]


def test_a_day_given_for_a_time_stamp_matches_that_whole_day_in_utc(
    crm_engine: Any, files: Path
) -> None:
    day = dt.datetime(2026, 11, 30, tzinfo=UTC)
    _contacts(crm_engine, [
        ("before@x.io", day - dt.timedelta(microseconds=1)),
        ("first@x.io", day),
        ("noon@x.io", day + dt.timedelta(hours=12)),
        ("last@x.io", day + dt.timedelta(days=1, microseconds=-1)),
        ("after@x.io", day + dt.timedelta(days=1)),
        ("later@x.io", day + dt.timedelta(days=3)),
    ])  # fmt: skip

    def emails(filters: dict[str, Any]) -> list[str]:
        return [r[0] for r in export_csv(crm_engine, files, "contacts", ["email"], filters)]

    assert emails({"created_at": "2026-11-30"}) == ["first@x.io", "noon@x.io", "last@x.io"]
    assert emails({"createdAt": ["2026-12-03", "2026-11-29"]}) == ["before@x.io", "later@x.io"]
    # an instant still matches that instant only, whatever offset it is written with
    assert emails({"created_at": "2026-11-30T14:00:00+02:00"}) == ["noon@x.io"]
    assert emails({"created_at": ["2026-12-01", "2026-11-30T12:00:00Z"]}) == [
        "noon@x.io", "after@x.io"
    ]  # fmt: skip
    assert emails({"updated_at": "9999-12-31"}) == []
    # a whole spreadsheet date serial is a day too (46356 is 2026-11-30)
    assert emails({"created_at": 46356}) == ["first@x.io", "noon@x.io", "last@x.io"]
    assert emails({"created_at": "46356.5"}) == ["noon@x.io"]
    # the payload keeps the day as a day
    payload = ExportPayload(tenant_id="t1", user_id="u1", entity_type="contacts", format="csv",
                            filters={"created_at": "2026-11-30"})  # fmt: skip
    assert payload.filters == {"created_at": "2026-11-30"}
    with pytest.raises(ValueError, match="created_at"):
        ExportPayload(tenant_id="t1", user_id="u1", entity_type="contacts", format="csv",
                      filters={"created_at": "2026-02-30"})  # fmt: skip
