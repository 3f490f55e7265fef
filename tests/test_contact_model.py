"""The original system's contact model: `name` (full name) and `status` beside first/last
names, on SQLite and PostgreSQL: the schema upgrade from version 2 keeping data, imports
that give either model (create, in-file merge and update paths), the configured status
list, seeding, and the original's own import and export examples run by a consumer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import crm_db
import openpyxl
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from crmqueue.config import DEFAULT_CONTACT_STATUSES, load_settings
from crmqueue.crm import schema
from crmqueue.crm.entities import complete_names, join_names, split_name
from crmqueue.crm.store import create_engine, current_version, init_db, now, seed
from crmqueue.errors import ConfigError
from crmqueue.payloads import ImportPayload
from crmqueue.workers.import_export import Importer

crm_url = crm_db.crm_url
crm_engine = crm_db.crm_engine
pg_url = crm_db.pg_url

STATUSES = list(DEFAULT_CONTACT_STATUSES)


def contacts(engine: Any, tenant: str = "t1") -> list[dict[str, Any]]:
    c = schema.contacts.c
    with engine.connect() as conn:
        query = (
            sa.select(c.email, c.name, c.first_name, c.last_name, c.status)
            .where(c.tenant_id == tenant)
            .order_by(c.id)
        )
        return [dict(row._mapping) for row in conn.execute(query)]


def run_import(engine: Any, files: Path, text: str, statuses: list[str] | None = STATUSES,
               **fields: Any) -> dict[str, Any]:  # fmt: skip
    (files / "in.csv").write_text(text, encoding="utf-8")
    data = {"tenant_id": "t1", "user_id": "u1", "file_url": "in.csv", "file_type": "csv",
            "entity_type": "contacts", **fields}  # fmt: skip
    payload = ImportPayload.model_validate(data)
    return Importer(payload, engine, files, None, lambda _: None, contact_statuses=statuses).run()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    path = tmp_path / "files"
    path.mkdir()
    return path


# --------------------------------------------------------------------------- schema


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
def test_upgrade_from_version_2_adds_name_and_status_keeping_data(crm_url: str) -> None:
    engine = create_engine(crm_url)
    try:
        init_db(engine, target=2)
        # A version 2 database has no contacts.name or contacts.status: take them away
        # again (version 1 creates tables in their current shape).
        with engine.begin() as conn:
            conn.execute(sa.text("DROP INDEX ix_contacts_tenant_status"))
            conn.execute(sa.text("ALTER TABLE contacts DROP COLUMN name"))
            conn.execute(sa.text("ALTER TABLE contacts DROP COLUMN status"))
        stamp = now()
        rows = [("a@x.com", "Jane", "Roe"), ("b@x.com", " Li ", None), ("c@x.com", None, None),
                ("d@x.com", None, "Müller")]  # fmt: skip
        with engine.begin() as conn:
            for email, first, last in rows:
                conn.execute(
                    sa.text(
                        "INSERT INTO contacts (tenant_id, email, first_name, last_name,"
                        " created_at, updated_at) VALUES ('t1', :e, :f, :l, :s, :s)"
                    ),
                    {"e": email, "f": first, "l": last, "s": stamp},
                )
        assert init_db(engine) == (2, schema.SCHEMA_VERSION)
        with engine.connect() as conn:
            assert current_version(conn) == schema.SCHEMA_VERSION
        got = contacts(engine)
        assert [(r["email"], r["name"], r["status"]) for r in got] == [
            ("a@x.com", "Jane Roe", None),
            ("b@x.com", "Li", None),
            ("c@x.com", None, None),
            ("d@x.com", "Müller", None),
        ]
        assert [r["first_name"] for r in got] == ["Jane", " Li ", None, None]  # untouched
        indexes = {ix["name"] for ix in sa.inspect(engine).get_indexes("contacts")}
        assert "ix_contacts_tenant_status" in indexes
        # nothing left to do
        assert init_db(engine) == (schema.SCHEMA_VERSION, schema.SCHEMA_VERSION)
    finally:
        engine.dispose()


def test_a_new_database_has_the_columns_once(crm_url: str) -> None:
    engine = create_engine(crm_url)
    try:
        init_db(engine)
        columns = [c["name"] for c in sa.inspect(engine).get_columns("contacts")]
        assert columns.count("name") == 1 and columns.count("status") == 1
    finally:
        engine.dispose()


def test_seed_fills_name_and_status(crm_engine: Any) -> None:
    seed(crm_engine, "t1", 200, contact_statuses=("Lead", "Won"))
    got = contacts(crm_engine)
    assert all(r["name"] == f"{r['first_name']} {r['last_name']}" for r in got)
    assert {r["status"] for r in got} == {"Lead", "Won"}


# --------------------------------------------------------------------------- names


WORDS = st.text(
    st.characters(categories=["L", "M", "N", "P"], exclude_characters="\u0085"),
    min_size=1,
    max_size=12,
)


@given(st.lists(WORDS, min_size=1, max_size=5))
@settings(max_examples=300, deadline=None)
def test_split_then_join_gives_the_name_back(words: list[str]) -> None:
    name = " ".join(words)
    first, last = split_name(name)
    assert first == words[0]
    assert join_names(first, last) == name


@given(st.one_of(st.none(), WORDS), st.one_of(st.none(), WORDS), st.one_of(st.none(), WORDS))
@settings(max_examples=300, deadline=None)
def test_complete_names_keeps_the_models_in_step(
    name: str | None, first: str | None, last: str | None
) -> None:
    record = complete_names({"name": name, "first_name": first, "last_name": last})
    if name is not None and first is None and last is None:
        assert join_names(record["first_name"], record["last_name"]) == name
    elif name is None and (first or last):
        assert record["name"] == join_names(first, last)
    else:  # what was given is kept as given
        assert record == {"name": name, "first_name": first, "last_name": last}


def test_import_with_either_model_fills_the_other(crm_engine: Any, files: Path) -> None:
    result = run_import(
        crm_engine, files,
        "email,full,first,last\n"
        "a@x.com,Jane Roe,,\n"
        "b@x.com,,Li,Wei\n"
        "c@x.com,Ludwig van Beethoven,,\n"
        "d@x.com,Madonna,,\n"
        "e@x.com,Given Name,Other,Parts\n"
        "f@x.com,,,Solo\n",
        mapping_config={"email": "email", "name": "full", "first_name": "first",
                        "last_name": "last"},
    )  # fmt: skip
    assert result["counts"]["new"] == 6
    assert [(r["name"], r["first_name"], r["last_name"]) for r in contacts(crm_engine)] == [
        ("Jane Roe", "Jane", "Roe"),
        ("Li Wei", "Li", "Wei"),
        ("Ludwig van Beethoven", "Ludwig", "van Beethoven"),
        ("Madonna", "Madonna", None),
        ("Given Name", "Other", "Parts"),  # both given: kept as given
        ("Solo", None, "Solo"),
    ]


def test_updates_keep_names_in_step(crm_engine: Any, files: Path) -> None:
    run_import(crm_engine, files, "email,first_name,last_name\na@x.com,Jane,Roe\nb@x.com,Li,Wei\n")
    # first name only: name from the new first name and the stored last name
    run_import(crm_engine, files, "email,first_name\nA@x.com,Janet\n", on_duplicate="update")
    # name only: first and last name follow it
    run_import(crm_engine, files, "email,name\nb@x.com,Wei Li Ming\n", on_duplicate="update")
    got = contacts(crm_engine)
    assert [(r["name"], r["first_name"], r["last_name"]) for r in got] == [
        ("Janet Roe", "Janet", "Roe"),
        ("Wei Li Ming", "Wei", "Li Ming"),
    ]
    # the same key twice in one file: the later row merges into the pending insert
    run_import(crm_engine, files, "email,name,last_name\nc@x.com,Ann Lee,\nc@x.com,,Smith\n",
               on_duplicate="update")  # fmt: skip
    assert contacts(crm_engine)[-1] | {"status": None} == {
        "email": "c@x.com", "name": "Ann Smith", "first_name": "Ann", "last_name": "Smith",
        "status": None,
    }  # fmt: skip
    # a dry run of an update changes nothing
    run_import(crm_engine, files, "email,name\na@x.com,Someone Else\n", on_duplicate="update",
               dry_run=True)  # fmt: skip
    assert contacts(crm_engine)[0]["name"] == "Janet Roe"


# --------------------------------------------------------------------------- status


def test_status_is_matched_case_insensitively_and_stored_canonical(
    crm_engine: Any, files: Path
) -> None:
    result = run_import(
        crm_engine, files,
        "email,status\na@x.com,Customer\nb@x.com, LEAD \nc@x.com,vip\nd@x.com,\n",
    )  # fmt: skip
    assert result["counts"] == {"new": 3, "updated": 0, "skipped": 0, "invalid": 1}
    (error,) = result["errors"]
    assert error["row"] == 4 and error["column"] == "status"
    assert "'vip' is not a contact status" in error["reason"]
    assert "lead, prospect, customer, churned" in error["reason"]
    assert [r["status"] for r in contacts(crm_engine)] == ["customer", "lead", None]


def test_status_list_is_configurable(crm_engine: Any, files: Path) -> None:
    result = run_import(crm_engine, files, "email,status\na@x.com,vip\nb@x.com,lead\n",
                        statuses=["VIP", "Former"])  # fmt: skip
    assert result["counts"]["invalid"] == 1
    assert [r["status"] for r in contacts(crm_engine)] == ["VIP"]


def test_contact_statuses_config(tmp_path: Path) -> None:
    assert load_settings(environ={}).crm.contact_statuses == STATUSES
    path = tmp_path / "c.toml"
    path.write_text('[crm]\ncontact_statuses = ["Lead", "Customer", "Partner"]\n')
    assert load_settings(path, environ={}).crm.contact_statuses == ["Lead", "Customer", "Partner"]
    env = {"CRMQUEUE_CRM__CONTACT_STATUSES": "a, b ,c"}
    assert load_settings(environ=env).crm.contact_statuses == ["a", "b", "c"]
    for bad, message in [
        ("[]", "at least one"),
        ('["lead", "Lead"]', "listed twice"),
        ('["' + "x" * 21 + '"]', "1-20 characters"),
        ('[" lead"]', "surrounding spaces"),
    ]:
        path.write_text(f"[crm]\ncontact_statuses = {bad}\n")
        with pytest.raises(ConfigError, match=f"crm.contact_statuses: .*{message}"):
            load_settings(path, environ={})
    path.write_text("[crm]\nstatuses = []\n")
    with pytest.raises(ConfigError, match=r"crm\.statuses: unknown key"):
        load_settings(path, environ={})


# ------------------------------------------------------------------ the original's examples

CONTACTS_CSV = (
    "full_name,email_address,company_name\n"
    "Jane Roe,jane.roe@example.com,Acme Corp\n"
    "Li Wei,li.wei@example.com,Globex\n"
)
IMPORT = {"tenantId": "tenant-123", "userId": "user-456", "fileUrl": "contacts.csv",
          "fileType": "csv", "entityType": "contacts",
          "mappingConfig": {"name": "full_name", "email": "email_address",
                            "company": "company_name"}, "dryRun": False}  # fmt: skip
EXPORT = {"tenantId": "tenant-123", "userId": "user-456", "entityType": "contacts",
          "format": "xlsx", "fields": ["id", "name", "email", "company", "status"]}  # fmt: skip


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_the_originals_import_and_export_examples_complete(
    make_broker: Any, start_consumer: Any
) -> None:
    from crmqueue import tasks
    from crmqueue.crm.store import get_engine

    broker = make_broker()
    files_dir = broker.settings.files.dir
    files_dir.mkdir(parents=True, exist_ok=True)
    (files_dir / "contacts.csv").write_text(CONTACTS_CSV)
    start_consumer(broker, ["import-export"])

    imported = tasks.enqueue("import-export", json.loads(json.dumps(IMPORT)), kind="import")
    info = imported.wait(30)
    assert info.state == "completed", info.errors
    engine = get_engine(broker.settings.database.url)
    got = contacts(engine, "tenant-123")
    assert [(r["name"], r["first_name"], r["last_name"]) for r in got] == [
        ("Jane Roe", "Jane", "Roe"),
        ("Li Wei", "Li", "Wei"),
    ]

    exported = tasks.enqueue("import-export", json.loads(json.dumps(EXPORT)), kind="export")
    info = exported.wait(30)
    assert info.state == "completed", info.errors
    assert info.result["path"].endswith(".xlsx")
    sheet = openpyxl.load_workbook(files_dir / info.result["path"]).active
    values = list(sheet.iter_rows(values_only=True))
    assert values[0] == ("id", "name", "email", "company", "status")
    assert [row[1:4] for row in values[1:]] == [
        ("Jane Roe", "jane.roe@example.com", "Acme Corp"),
        ("Li Wei", "li.wei@example.com", "Globex"),
    ]
