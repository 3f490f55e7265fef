"""An export's fields and filters are checked when it is enqueued, against one list of an
entity's exportable fields: a bad field or filter value is a PayloadError naming it and
listing the valid fields, never a job that dies in the worker; and what the check accepts,
the worker runs, on SQLite and on PostgreSQL (property-based)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import crm_db
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from crmqueue.crm import schema
from crmqueue.crm.entities import (
    ROW_MODELS,
    SYSTEM_FIELDS,
    check_export_filters,
    entity_fields,
    export_fields,
)
from crmqueue.crm.store import now, seed
from crmqueue.errors import PayloadError, PermanentError
from crmqueue.payloads import ExportPayload
from crmqueue.workers.import_export import run_export

crm_url = crm_db.crm_url
crm_engine = crm_db.crm_engine
pg_url = crm_db.pg_url

ENTITIES = list(ROW_MODELS)
STATUSES = ("lead", "prospect", "customer", "churned")


def export(entity: str = "contacts", **fields: Any) -> dict[str, Any]:
    return {"tenant_id": "t1", "user_id": "u1", "entity_type": entity, "format": "csv",
            **fields}  # fmt: skip


def refused(data: dict[str, Any]) -> str:
    """The message of the ValidationError `data` gets as an export payload."""
    with pytest.raises(ValidationError) as info:
        ExportPayload.model_validate(data, context={"contact_statuses": STATUSES})
    return str(info.value)


# --------------------------------------------------------------------------- one list


@pytest.mark.parametrize("entity", ENTITIES)
def test_exportable_fields_are_the_schema_columns(entity: str) -> None:
    table = schema.ENTITY_TABLES[entity]
    assert set(export_fields(entity)) == {c.name for c in table.columns} - {"tenant_id"}
    assert export_fields(entity)[0] == "id"
    # every importable field is exportable; ids, links and time stamps only exportable
    assert set(entity_fields(entity)) < set(export_fields(entity))
    assert not set(SYSTEM_FIELDS[entity]) & set(entity_fields(entity))


def test_the_originals_export_fields_validate_as_written() -> None:
    data = {"tenantId": "tenant-123", "userId": "user-456", "entityType": "contacts",
            "format": "xlsx", "fields": ["id", "name", "email", "company", "status"]}  # fmt: skip
    assert ExportPayload.model_validate(data).fields == ["id", "name", "email", "company", "status"]


@pytest.mark.parametrize("entity", ENTITIES)
def test_an_unknown_field_is_refused_listing_the_valid_ones(entity: str) -> None:
    message = refused(export(entity, fields=["id", "password"]))
    assert f"unknown {entity} field(s) 'password'" in message
    assert "(fields: " + ", ".join(export_fields(entity)) + ")" in message
    message = refused(export(entity, filters={"tenantId": "t2"}))
    assert "unknown" in message and "'tenantId'" in message
    assert "listed twice" in refused(export(entity, fields=["id", "id"]))


@pytest.mark.parametrize(
    ("entity", "filters", "reason"),
    [
        ("contacts", {"status": "vip"}, "'vip' is not a contact status"),
        ("contacts", {"status": ["lead", "VIP"]}, "status[1]: 'VIP' is not a contact status"),
        ("contacts", {"email": "not-an-email"}, "email: value is not a valid email address"),
        ("contacts", {"id": "seven"}, "id: Input should be a valid integer"),
        ("contacts", {"created_at": "yesterday"}, "created_at: Input should be a valid datetime"),
        ("contacts", {"name": {"like": "J%"}}, "name: a filter is a value, a list of values"),
        ("contacts", {"company_id": [1, None]}, "company_id[1]: a filter is a value"),
        ("contacts", {"id": 2**31}, "id: out of range for the field (a 32-bit integer)"),
        ("contacts", {"name": ["a", "b\x00"]}, "name[1]: NUL characters and lone surrogates"),
        ("contacts", {"city": "\ud83d"}, "city: NUL characters and lone surrogates"),
        ("companies", {"employees": "many"}, "employees: "),
        ("leads", {"close_date": "next week"}, "close_date: "),
        ("leads", {"amount": "lots"}, "amount: "),
        ("leads", {"status": "closed-won"}, "status: Input should be 'open', 'won' or 'lost'"),
        ("leads", {"currency": "EURO"}, "currency: "),
        ("activities", {"due_at": "2025-02-30"}, "due_at: "),
        ("activities", {"type": "lunch"}, "type: Input should be"),
    ],
)
def test_a_bad_filter_value_is_refused_naming_the_field(
    entity: str, filters: dict[str, Any], reason: str
) -> None:
    assert reason in refused(export(entity, filters=filters))


def test_filter_values_are_stored_as_their_field_holds_them() -> None:
    payload = ExportPayload.model_validate(
        export("leads", filters={"status": "won", "close_date": "2025-01-31", "amount": "1250.5",
                                 "currency": "eur", "owner": None, "id": ["3", 4]}),
    )  # fmt: skip
    assert payload.model_dump(mode="json")["filters"] == {
        "status": "won", "close_date": "2025-01-31", "amount": "1250.5", "currency": "EUR",
        "owner": None, "id": [3, 4],
    }  # fmt: skip
    statuses = ExportPayload.model_validate(
        export(filters={"status": ["CUSTOMER", " Lead "]}), context={"contact_statuses": STATUSES}
    )
    assert statuses.filters == {"status": ["customer", "lead"]}


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_enqueue_refuses_and_stores_nothing(make_broker: Any) -> None:
    from crmqueue import jobs, tasks

    make_broker({"crm.contact_statuses": ["VIP", "Former"]})
    with pytest.raises(PayloadError) as info:
        tasks.export_records(
            tenant_id="t1", user_id="u1", entity_type="contacts", format="xlsx",
            fields=["id", "nme"], filters={"status": "lead"},
        )  # fmt: skip
    errors = dict(info.value.errors)
    assert "unknown contacts field(s) 'nme'" in errors["fields"]
    assert "'lead' is not a contact status (statuses: VIP, Former" in errors["filters"]
    assert jobs.stats("import-export")["waiting"] == 0
    # the configured statuses, in their configured spelling
    job = tasks.export_records(tenant_id="t1", user_id="u1", entity_type="contacts",
                               format="csv", filters={"status": "vip"})  # fmt: skip
    assert jobs.stats("import-export")["waiting"] == 1
    assert job.id


def test_checking_an_export_loads_no_worker_side_library() -> None:
    probe = (
        "import sys, crmqueue.tasks;"
        "from crmqueue.payloads import ExportPayload;"
        "ExportPayload.model_validate({'tenant_id': 't', 'user_id': 'u', 'entity_type': 'leads',"
        " 'format': 'csv', 'fields': ['id', 'amount'], 'filters': {'close_date': '2025-01-01',"
        " 'amount': '5'}});"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'openpyxl',"
        " 'xlsxwriter', 'reportlab', 'xhtml2pdf') or m.startswith('crmqueue.workers')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)  # fmt: skip
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- worker agrees


def test_the_worker_refuses_a_payload_queued_without_the_check(crm_engine: Any,
                                                              tmp_path: Path) -> None:  # fmt: skip
    bad = export("leads", fields=[], filters={"stage": 5, "close": 1})
    stale = ExportPayload.model_construct(**bad)
    with pytest.raises(PermanentError, match="unknown leads field"):
        run_export(stale, crm_engine, tmp_path, "j", lambda _: None)
    stale = ExportPayload.model_construct(**export("leads", fields=[], filters={"amount": "x"}))
    with pytest.raises(PermanentError, match="amount"):
        run_export(stale, crm_engine, tmp_path, "j", lambda _: None)


def test_filters_select_the_right_records(crm_engine: Any, tmp_path: Path) -> None:
    seed(crm_engine, "t1", 100)
    stamp = now()
    with crm_engine.begin() as conn:
        conn.execute(schema.contacts.insert(), [
            {"tenant_id": "t1", "email": "c@x.com", "status": "customer", "name": "C",
             "created_at": stamp, "updated_at": stamp},
            {"tenant_id": "t2", "email": "o@x.com", "status": "customer", "name": "C",
             "created_at": stamp, "updated_at": stamp},
        ])  # fmt: skip
    payload = ExportPayload.model_validate(
        export(fields=["email", "status"], filters={"status": "CUSTOMER", "name": "C"}),
        context={"contact_statuses": STATUSES},
    )
    out = run_export(payload, crm_engine, tmp_path, "j", lambda _: None)
    assert out["rows"] == 1
    text = (tmp_path / out["path"]).read_text(encoding="utf-8-sig")
    assert text.splitlines() == ["email,status", "c@x.com,customer"]
    leads = ExportPayload.model_validate(export("leads", filters={"status": ["won", "lost"]}))
    assert run_export(leads, crm_engine, tmp_path, "k", lambda _: None)["rows"] > 0


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.text(st.characters() | st.sampled_from(["\ud800", "\x00"]), max_size=5),
    st.sampled_from(["customer", "Lead", "won", "call", "EUR", "a@x.com", "1250.50", "0"]),
    st.dates().map(dt.date.isoformat),
    st.datetimes(timezones=st.just(dt.UTC)).map(dt.datetime.isoformat),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
)
FILTERS = st.sampled_from(ENTITIES).flatmap(
    lambda entity: st.tuples(
        st.just(entity),
        st.dictionaries(
            st.sampled_from(export_fields(entity)),
            st.one_of(SCALARS, st.lists(SCALARS, max_size=3)),
            max_size=3,
        ),
    )
)


@given(case=FILTERS)
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
def test_what_the_enqueue_check_accepts_the_worker_runs(
    crm_engine: Any, tmp_path: Path, case: tuple[str, dict[str, Any]]
) -> None:
    entity, filters = case
    data = export(entity, filters=filters)
    try:
        payload = ExportPayload.model_validate(data, context={"contact_statuses": STATUSES})
    except ValidationError:
        # refused at enqueue; the worker, given it anyway, refuses it permanently
        stale = ExportPayload.model_construct(**{**data, "fields": []})
        with pytest.raises(PermanentError):
            run_export(stale, crm_engine, tmp_path, None, lambda _: None,
                       contact_statuses=STATUSES)  # fmt: skip
        return
    # the stored payload (JSON, as a queue holds it) passes the check again unchanged
    stored = payload.model_dump(mode="json")
    again = check_export_filters(entity, stored["filters"], STATUSES)
    assert check_export_filters(entity, payload.filters, STATUSES) == again
    out = run_export(ExportPayload.model_validate(stored, context={"contact_statuses": STATUSES}),
                     crm_engine, tmp_path, None, lambda _: None,
                     contact_statuses=STATUSES)  # fmt: skip
    assert out["rows"] == 0
