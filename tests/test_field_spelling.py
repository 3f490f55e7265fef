"""Field names in either spelling: payloads name an entity's fields in snake_case or in the
original system's camelCase (export `fields` and `filters`, `mapping_config` targets,
`duplicate_key`), stored in snake_case; an import's header row is matched ignoring case,
white space, '.', '-' and '_' ("First Name", "E-Mail", "firstName"), two columns naming one
field are refused naming both, and every "no column maps" error lists the columns found.
End to end with a real consumer on CSV, JSON and JSON Lines imports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import crm_db
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from pydantic.alias_generators import to_camel

from crmqueue.crm import schema
from crmqueue.crm.entities import (
    ROW_MODELS,
    canonical_field,
    entity_fields,
    export_fields,
    header_field,
    key_fields,
)
from crmqueue.crm.store import create_engine, init_db
from crmqueue.errors import PayloadError, PermanentError
from crmqueue.payloads import ExportPayload, ImportPayload, validate_payload
from crmqueue.workers.import_export import Importer, build_mapping

# the CRM database fixtures, both SQLite and PostgreSQL
crm_url = crm_db.crm_url
crm_engine = crm_db.crm_engine
pg_url = crm_db.pg_url

ENTITIES = list(ROW_MODELS)
# fields whose two spellings differ, so a test of "camelCase" really tests something
TWO_WORDS = {entity: [f for f in export_fields(entity) if "_" in f] for entity in ENTITIES}


def export(entity: str, **fields: Any) -> dict[str, Any]:
    return {"tenantId": "t1", "userId": "u1", "entityType": entity, "format": "csv", **fields}


def import_(entity: str, **fields: Any) -> dict[str, Any]:
    return {"tenantId": "t1", "userId": "u1", "fileUrl": "x.csv", "fileType": "csv",
            "entityType": entity, **fields}  # fmt: skip


def refused(model: Any, data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(PayloadError) as info:
        validate_payload(model, data)
    return dict(info.value.errors)


# --------------------------------------------------------------------------- the look-up


@pytest.mark.parametrize("entity", ENTITIES)
def test_canonical_field_takes_both_spellings_and_nothing_looser(entity: str) -> None:
    assert TWO_WORDS[entity], "every entity has a field of two words"
    for field in export_fields(entity):
        assert canonical_field(entity, field) == field
        assert canonical_field(entity, to_camel(field)) == field
        if "_" in field:
            for loose in (field.upper(), field.replace("_", "-"), field.title().replace("_", "")):
                assert canonical_field(entity, loose) is None, loose
    for name in ("", "tenant_id", "tenantId", "password", "first name"):
        assert canonical_field(entity, name) is None


@given(st.text(max_size=20))
def test_canonical_field_is_a_field_or_none(name: str) -> None:
    for entity in ENTITIES:
        field = canonical_field(entity, name)
        assert field is None or (
            field in export_fields(entity) and name in (field, to_camel(field))
        )


# --------------------------------------------------------------------------- payloads at enqueue


def spelt(names: list[str], which: list[bool]) -> list[str]:
    return [to_camel(n) if camel else n for n, camel in zip(names, which, strict=True)]


@pytest.mark.parametrize("entity", ENTITIES)
@pytest.mark.parametrize("style", ["snake", "camel", "mixed"])
def test_every_field_name_in_a_payload_takes_both_spellings(entity: str, style: str) -> None:
    def spell(names: list[str] | tuple[str, ...]) -> list[str]:
        which = [style == "camel" or (style == "mixed" and i % 2 == 1) for i in range(len(names))]
        return spelt(list(names), which)

    everything = list(export_fields(entity))
    payload = validate_payload(
        ExportPayload,
        export(entity, fields=spell(everything), filters=dict.fromkeys(spell(everything))),
    )
    assert payload.fields == everything
    assert payload.filters == dict.fromkeys(everything)
    importable, keys = list(entity_fields(entity)), list(key_fields(entity))
    columns = [f"Column {n}" for n in range(len(importable))]
    imported = validate_payload(
        ImportPayload,
        import_(entity, mappingConfig=dict(zip(spell(importable), columns, strict=True)),
                duplicateKey=spell(keys)),
    )  # fmt: skip
    assert imported.mapping_config == dict(zip(importable, columns, strict=True))
    assert imported.duplicate_key == keys
    # what is stored for the worker: one spelling
    stored = json.loads(imported.model_dump_json())
    assert list(stored["mapping_config"]) == importable and stored["duplicate_key"] == keys


@given(st.data())
def test_any_choice_of_fields_in_any_spelling_is_stored_in_snake_case(data: st.DataObject) -> None:
    entity = data.draw(st.sampled_from(ENTITIES))
    names = data.draw(st.permutations(export_fields(entity)))
    chosen = names[: data.draw(st.integers(1, len(names)))]
    which = data.draw(st.lists(st.booleans(), min_size=len(chosen), max_size=len(chosen)))
    payload = validate_payload(
        ExportPayload,
        export(entity, fields=spelt(chosen, which), filters=dict.fromkeys(spelt(chosen, which))),
    )
    assert payload.fields == chosen and list(payload.filters) == chosen


@pytest.mark.parametrize("entity", ENTITIES)
def test_an_unknown_name_is_refused_listing_the_valid_ones(entity: str) -> None:
    field = TWO_WORDS[entity][0]
    for wrong in (field.upper(), field.replace("_", "-"), to_camel(field).capitalize()):
        errors = refused(ExportPayload, export(entity, fields=["id", wrong], filters={wrong: 1}))
        valid = "(fields: " + ", ".join(export_fields(entity)) + ")"
        assert f"unknown {entity} field(s) {wrong!r} {valid}" in errors["fields"]
        assert f"{wrong!r}" in errors["filters"] and valid in errors["filters"]
        errors = refused(ImportPayload, import_(entity, mapping_config={wrong: "x"},
                                                duplicate_key=[wrong]))  # fmt: skip
        assert errors["mapping_config"] == (
            f"unknown field(s) {wrong!r} for {entity} (fields: {', '.join(entity_fields(entity))})"
        )
        assert errors["duplicate_key"] == (
            f"unknown field(s) {wrong!r} for {entity} (fields: {', '.join(key_fields(entity))})"
        )
    # a field an export reads but an import cannot write, in camelCase
    errors = refused(ImportPayload, import_(entity, mapping_config={"createdAt": "Created"}))
    assert "unknown field(s) 'createdAt'" in errors["mapping_config"]


@pytest.mark.parametrize("entity", ENTITIES)
def test_one_field_in_both_spellings_is_refused_naming_both(entity: str) -> None:
    importable = [f for f in TWO_WORDS[entity] if f in key_fields(entity)]
    field = importable[0]
    both = [field, to_camel(field)]
    expected = f"field {field!r} listed twice (as {both[0]!r}, {both[1]!r})"
    errors = refused(ExportPayload, export(entity, fields=both, filters=dict.fromkeys(both)))
    assert errors == {"fields": expected, "filters": expected}
    errors = refused(ImportPayload, import_(entity, mapping_config=dict.fromkeys(both, "c"),
                                            duplicate_key=both))  # fmt: skip
    assert errors == {"mapping_config": expected, "duplicate_key": expected}


def test_a_filter_value_error_names_the_filter_as_written() -> None:
    errors = refused(ExportPayload, export("leads", filters={"closeDate": "next week"}))
    assert errors["filters"].startswith("closeDate: ")
    payload = validate_payload(ExportPayload, export("leads", filters={"closeDate": "2025-01-21"}))
    assert payload.filters == {"close_date": "2025-01-21"}


# --------------------------------------------------------------------------- header matching


def header_variants(field: str) -> list[str]:
    words = field.split("_")
    return [
        " ".join(w.capitalize() for w in words),  # First Name
        "-".join(words),  # first-name
        "".join(w.capitalize() for w in words),  # FirstName
        to_camel(field),  # firstName
        field.upper(),  # FIRST_NAME
        ".".join(words),  # first.name
        f"  {field} ",
    ]


@pytest.mark.parametrize("entity", ENTITIES)
def test_every_importable_field_is_found_under_every_header_spelling(entity: str) -> None:
    for field in entity_fields(entity):
        for header in header_variants(field):
            assert header_field(entity, header) == field, header
    assert header_field("contacts", "E-Mail") == "email"
    assert header_field("contacts", "EMAIL") == "email"
    for nothing in ("E-Mail Address", "Email1", "mail", "firstname2", "Vorname"):
        assert header_field("contacts", nothing) is None


@given(st.data())
def test_a_header_is_a_field_whatever_its_case_and_separators(data: st.DataObject) -> None:
    entity = data.draw(st.sampled_from(ENTITIES))
    field = data.draw(st.sampled_from(entity_fields(entity)))
    words = [
        "".join(c.upper() if up else c for c, up in zip(w, data.draw(
            st.lists(st.booleans(), min_size=len(w), max_size=len(w))), strict=True))
        for w in field.split("_")
    ]  # fmt: skip
    separators = data.draw(st.lists(st.sampled_from(["", " ", "-", "_", ".", " - ", "\t"]),
                                    min_size=len(words) - 1, max_size=len(words) - 1))  # fmt: skip
    header = words[0] + "".join(s + w for s, w in zip(separators, words[1:], strict=True))
    assert header_field(entity, header) == field
    required = [n for n, f in ROW_MODELS[entity].model_fields.items() if f.is_required()]
    columns = ["other", header, *(n for n in required if n != field)]
    assert build_mapping(entity, columns, {})[0][field] == header


def test_two_columns_naming_one_field_are_refused_naming_both() -> None:
    with pytest.raises(PermanentError) as info:
        build_mapping("contacts", ["email", "First Name", "E-Mail", "first_name"], {})
    assert str(info.value) == (
        "columns 'email' and 'E-Mail' both name the contacts field email; columns 'First Name'"
        " and 'first_name' both name the contacts field first_name: rename or remove one,"
        " or pass mapping_config"
    )
    # with a mapping the caller has chosen: no ambiguity
    mapping, unused = build_mapping("contacts", ["email", "E-Mail"], {"email": "E-Mail"})
    assert mapping == {"email": "E-Mail"} and unused == ["email"]


@pytest.mark.parametrize(
    ("entity", "columns", "mapping", "message"),
    [
        ("contacts", ["E-Mail Address", "First Name"], {},
         "no column maps to the required contacts field(s) email"
         " (columns: 'E-Mail Address', 'First Name'); pass mapping_config"),
        ("contacts", ["Mail", "Vorname"], {},
         "no column maps to a contacts field (columns: 'Mail', 'Vorname'; fields: "),
        ("contacts", ["Mail", "First"], {"first_name": "First"},
         "no column maps to the required contacts field(s) email"
         " (columns: 'Mail', 'First'); add it to mapping_config"),
        ("companies", ["Company Name", "Domain"], {},
         "no column maps to the required companies field(s) name"
         " (columns: 'Company Name', 'Domain')"),
        ("leads", ["Amount", "Close Date"], {},
         "no column maps to the required leads field(s) title (columns: 'Amount', 'Close Date')"),
        ("activities", ["Type", "Title", "Due At"], {},
         "no column maps to the required activities field(s) subject"
         " (columns: 'Type', 'Title', 'Due At')"),
    ],
)  # fmt: skip
def test_every_no_column_maps_error_lists_the_columns(
    entity: str, columns: list[str], mapping: dict[str, str], message: str
) -> None:
    with pytest.raises(PermanentError) as info:
        build_mapping(entity, columns, mapping)
    assert message in str(info.value)


def test_a_long_header_row_is_listed_in_part() -> None:
    columns = [f"c{n}" for n in range(80)]
    with pytest.raises(PermanentError) as info:
        build_mapping("contacts", columns, {})
    assert "'c49', ... (30 more); fields: " in str(info.value)


# --------------------------------------------------------------------------- imports


def stored(engine: Any, entity: str, *columns: str) -> list[tuple[Any, ...]]:
    table = schema.ENTITY_TABLES[entity]
    with engine.connect() as conn:
        query = sa.select(*(table.c[c] for c in columns)).order_by(table.c.id)
        return [tuple(row) for row in conn.execute(query)]


def test_headers_in_every_spelling_import(crm_engine: Any, tmp_path: Path) -> None:
    """On SQLite and PostgreSQL."""
    (tmp_path / "c.csv").write_text(
        "FirstName,last-name,E-Mail,External ID,COMPANY,Phone.Number\n"
        "Ann,Lee,ann@x.com,X-1,Acme,555\n"
    )
    payload = ImportPayload.model_validate(import_("contacts", fileUrl="c.csv"))
    result = Importer(payload, crm_engine, tmp_path, None, lambda _: None).run()
    assert result["mapping"] == {"first_name": "FirstName", "last_name": "last-name",
                                 "email": "E-Mail", "company": "COMPANY",
                                 "external_id": "External ID"}  # fmt: skip
    assert result["unmapped_columns"] == ["Phone.Number"]
    assert stored(crm_engine, "contacts", "name", "email", "external_id", "company") == [
        ("Ann Lee", "ann@x.com", "X-1", "Acme")
    ]


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_a_consumer_imports_and_exports_with_fields_in_either_spelling(
    make_broker: Any, start_consumer: Any
) -> None:
    from crmqueue import jobs, tasks
    from crmqueue.crm.store import get_engine

    broker = make_broker()
    files = broker.settings.files.dir
    files.mkdir(parents=True, exist_ok=True)
    engine = get_engine(broker.settings.database.url)
    (files / "contacts.csv").write_text(
        "First Name,Last-Name,E-Mail,externalId,Notes\n"
        "Ann,Lee,ann@x.com,C-1,hello\n"
        "Bob,Roe,bob@x.com,C-2,\n"
    )
    (files / "contacts.json").write_text(json.dumps([
        {"firstName": "Cy", "lastName": "Poe", "EMAIL": "cy@x.com", "externalId": "C-3"},
        {"firstName": "Di", "lastName": "Ng", "EMAIL": "di@x.com", "externalId": "C-4"},
    ]))  # fmt: skip
    (files / "activities.json").write_text(
        '{"TYPE": "call", "Subject": "Intro", "dueAt": "2025-01-21 12:00", "External-Id": "A-1"}\n'
        '{"TYPE": "task", "Subject": "Quote", "Due At": "2025-01-22 09:30", "External-Id": "A-2"}\n'
    )
    (files / "leads.csv").write_text(
        "Title;Amount;Close Date;EXTERNAL_ID\nBig deal;1250.50;2025-03-31;L-1\n"
    )
    (files / "both.csv").write_text("email,E-Mail,first_name\na@x.com,b@x.com,A\n")
    (files / "none.csv").write_text("E-Mail Address,First Name\na@x.com,A\n")

    start_consumer(broker, ["import-export"])

    def run(file_url: str, entity: str, **more: Any) -> Any:
        return tasks.import_records(tenant_id="t1", user_id="u1", file_url=file_url,
                                   file_type=file_url.rsplit(".", 1)[-1], entity_type=entity,
                                   **more).wait(30)  # fmt: skip

    csv_import = run("contacts.csv", "contacts")
    assert csv_import.state == "completed", csv_import.errors
    assert csv_import.result["counts"]["new"] == 2
    assert csv_import.result["unmapped_columns"] == ["Notes"]
    json_import = run("contacts.json", "contacts")
    assert json_import.state == "completed", json_import.errors
    assert json_import.result["mapping"] == {
        "first_name": "firstName", "last_name": "lastName", "email": "EMAIL",
        "external_id": "externalId",
    }  # fmt: skip
    assert stored(engine, "contacts", "first_name", "last_name", "email", "external_id") == [
        ("Ann", "Lee", "ann@x.com", "C-1"), ("Bob", "Roe", "bob@x.com", "C-2"),
        ("Cy", "Poe", "cy@x.com", "C-3"), ("Di", "Ng", "di@x.com", "C-4"),
    ]  # fmt: skip
    # JSON Lines whose records spell one field two ways: each record is read under its own
    # key, but the header set names due_at twice
    activities = run("activities.json", "activities")
    assert activities.state == "dead" and activities.attempts == 1
    assert (
        "columns 'dueAt' and 'Due At' both name the activities field due_at"
        in (activities.errors[-1]["message"])
    )
    (files / "activities.json").write_text(
        '{"TYPE": "call", "Subject": "Intro", "dueAt": "2025-01-21 12:00", "External-Id": "A-1"}\n'
    )
    activities = run("activities.json", "activities", duplicate_key=["externalId"])
    assert activities.state == "completed", activities.errors
    assert activities.result["duplicate_key"] == ["external_id"]
    assert stored(engine, "activities", "type", "subject", "external_id") == [
        ("call", "Intro", "A-1")
    ]
    leads = run("leads.csv", "leads", mapping_config={"title": "Title", "closeDate": "Close Date",
                                                      "externalId": "EXTERNAL_ID"})  # fmt: skip
    assert leads.state == "completed", leads.errors
    assert leads.result["mapping"] == {"title": "Title", "close_date": "Close Date",
                                       "external_id": "EXTERNAL_ID"}  # fmt: skip
    assert leads.result["unmapped_columns"] == ["Amount"]
    assert jobs.get(leads.id).payload["mapping_config"] == leads.result["mapping"]

    both = run("both.csv", "contacts")
    assert both.state == "dead" and both.attempts == 1
    assert both.errors[-1]["message"].endswith(
        "columns 'email' and 'E-Mail' both name the contacts field email: rename or remove one,"
        " or pass mapping_config"
    )
    none = run("none.csv", "contacts")
    assert none.state == "dead" and none.attempts == 1
    assert "(columns: 'E-Mail Address', 'First Name')" in none.errors[-1]["message"]

    export = tasks.export_records(
        tenant_id="t1", user_id="u1", entity_type="contacts", format="csv",
        fields=["id", "firstName", "last_name", "email", "externalId", "createdAt"],
        filters={"externalId": ["C-1", "C-3"]},
    ).wait(30)  # fmt: skip
    assert export.state == "completed", export.errors
    assert jobs.get(export.id).payload["fields"] == export.result["fields"] == [
        "id", "first_name", "last_name", "email", "external_id", "created_at"
    ]  # fmt: skip
    lines = (files / export.result["path"]).read_text(encoding="utf-8-sig").splitlines()
    assert lines[0] == "id,first_name,last_name,email,external_id,created_at"
    assert [line.split(",")[1] for line in lines[1:]] == ["Ann", "Cy"]
    # the original's own field list: its header exactly as asked
    original = tasks.export_records(
        tenant_id="t1", user_id="u1", entity_type="contacts", format="csv",
        fields=["id", "name", "email", "company", "status"],
    ).wait(30)  # fmt: skip
    assert original.state == "completed", original.errors
    header = (files / original.result["path"]).read_text(encoding="utf-8-sig").splitlines()[0]
    assert header == "id,name,email,company,status"


def test_sqlite_import_with_camel_case_duplicate_key(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/crm.db")
    init_db(engine)
    (tmp_path / "a.csv").write_text("Email,First Name,External Id\na@x.com,A,K-1\n")
    (tmp_path / "b.csv").write_text("Email,First Name,External Id\nnew@x.com,A2,k-1\n")
    for name in ("a.csv", "b.csv"):
        payload = ImportPayload.model_validate(
            import_("contacts", fileUrl=name, duplicateKey=["externalId"], onDuplicate="update")
        )
        Importer(payload, engine, tmp_path, None, lambda _: None).run()
    assert stored(engine, "contacts", "email", "first_name") == [("new@x.com", "A2")]
    engine.dispose()
