"""Nothing an export cannot hold is cut silently: XLSX cells over Excel's 32,767
characters (UTF-16 units), dates before 1900 and rows past a sheet's end, PDF cells cut for
reading; each is listed in the job result (row, column, cell) and the export-ready email
says so. Values are read back with openpyxl and csv; the email from the outbox."""

from __future__ import annotations

import csv
import datetime as dt
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import crm_db
import openpyxl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from crmqueue.crm import schema
from crmqueue.crm.store import now
from crmqueue.formats.writers import (
    XLSX_MAX_CELL_CHARS,
    ExportNotes,
    cell_name,
    write_csv,
    write_xlsx,
    xlsx_text,
)
from crmqueue.payloads import ExportPayload
from crmqueue.workers.import_export import run_export

crm_url = crm_db.crm_url
crm_engine = crm_db.crm_engine
pg_url = crm_db.pg_url

LONG = "Agenda: pricing; contract; next steps. " * 1100  # 42,900 characters


def noop(_percent: float) -> None:
    pass


def xlsx_values(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    book = openpyxl.load_workbook(path)
    return {sheet.title: list(sheet.iter_rows(values_only=True)) for sheet in book}


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def test_cell_names() -> None:
    assert [cell_name(0, 0), cell_name(2, 27), cell_name(9, 701), cell_name(0, 702)] == [
        "A1", "AB3", "ZZ10", "AAA1"
    ]  # fmt: skip


@given(
    st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), min_size=1,
            max_size=30),
    st.integers(min_value=XLSX_MAX_CELL_CHARS - 40, max_value=XLSX_MAX_CELL_CHARS + 40),
)  # fmt: skip
@example("=", XLSX_MAX_CELL_CHARS - 1)  # 32,767 "=": a string cell, not escaped, not cut
@example("\t", XLSX_MAX_CELL_CHARS - 1)  # 32,767 tabs escaped: one over the limit
@settings(max_examples=25, deadline=None)
def test_xlsx_lists_exactly_the_cells_it_cuts(piece: str, units: int) -> None:
    """Texts around Excel's limit, counted in UTF-16 units (an emoji is two); a text that
    xlsx_text escapes (leading tab, say) is written one apostrophe longer."""
    import tempfile

    text = piece * (units // utf16_len(piece) + 1)
    written = xlsx_text(text)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.xlsx"
        notes = ExportNotes()
        write_xlsx(path, ["id", "notes"], [(1, text), (2, "short")], title="t", notes=notes)
        (row1, row2) = xlsx_values(path)["t"][1:]
        cut = utf16_len(written) > XLSX_MAX_CELL_CHARS
        assert notes.result().get("cut_cells") == (
            [{"row": 1, "column": "notes", "length": utf16_len(written), "cell": "t!B2"}]
            if cut
            else None
        )
        assert row2 == (2, "short")
        if cut:
            assert utf16_len(row1[1]) <= XLSX_MAX_CELL_CHARS and written.startswith(row1[1])
        else:
            assert row1[1] == written


def test_xlsx_dates_before_1900_are_text_and_listed(tmp_path: Path) -> None:
    notes = ExportNotes()
    rows = [
        (1, dt.date(1899, 12, 31), dt.datetime(1850, 5, 1, 12, 0, tzinfo=dt.UTC)),
        (2, dt.date(1900, 1, 1), dt.datetime(2025, 1, 21, 12, 0, tzinfo=dt.UTC)),
    ]
    write_xlsx(tmp_path / "d.xlsx", ["id", "close_date", "due_at"], rows, title="leads",
               notes=notes)  # fmt: skip
    values = xlsx_values(tmp_path / "d.xlsx")["leads"]
    assert values[1] == (1, "1899-12-31", "1850-05-01 12:00:00")
    assert values[2] == (2, dt.datetime(1900, 1, 1), dt.datetime(2025, 1, 21, 12, 0))
    assert notes.result()["cells_as_text"] == [
        {"row": 1, "column": "close_date", "value": "1899-12-31", "cell": "leads!B2"},
        {"row": 1, "column": "due_at", "value": "1850-05-01 12:00:00", "cell": "leads!C2"},
    ]
    assert "2 date(s) before 1900" in notes.warnings("xlsx")[0]


def test_xlsx_rows_past_a_sheets_end_continue_on_the_next(tmp_path: Path) -> None:
    notes = ExportNotes()
    rows = [(n, f"r{n}") for n in range(1, 11)]
    count = write_xlsx(tmp_path / "r.xlsx", ["id", "v"], rows, title="contacts", notes=notes,
                       max_sheet_rows=4)  # fmt: skip
    assert count == 10
    sheets = xlsx_values(tmp_path / "r.xlsx")
    assert list(sheets) == ["contacts", "contacts (2)", "contacts (3)", "contacts (4)"]
    assert all(values[0] == ("id", "v") for values in sheets.values())
    assert [row for values in sheets.values() for row in values[1:]] == rows
    assert notes.result()["sheets"] == 4 and "over 4 sheets" in notes.warnings("xlsx")[0]


def test_csv_holds_every_value_whole(tmp_path: Path) -> None:
    values = [LONG, "nul\x00 and vt\x0b", "😀" * 20_000]
    write_csv(tmp_path / "x.csv", ["v"], [(v,) for v in values])
    with (tmp_path / "x.csv").open(encoding="utf-8-sig", newline="") as handle:
        assert [row[0] for row in csv.reader(handle)][1:] == values


def test_run_export_lists_cut_cells_per_format(crm_engine: Any, tmp_path: Path) -> None:
    stamp = now()
    with crm_engine.begin() as conn:
        conn.execute(schema.activities.insert(), [
            {"tenant_id": "t1", "type": "note", "subject": f"S{n}", "notes": notes,
             "created_at": stamp, "updated_at": stamp}
            for n, notes in enumerate(["short", LONG, "short", LONG + "x"], start=1)
        ])  # fmt: skip
    base = {"tenant_id": "t1", "user_id": "u1", "entity_type": "activities",
            "fields": ["subject", "notes"]}  # fmt: skip
    out = run_export(ExportPayload(format="xlsx", **base), crm_engine, tmp_path, "x", noop)
    assert out["cut_cells"] == [
        {"row": 2, "column": "notes", "length": len(LONG), "cell": "activities!B3"},
        {"row": 4, "column": "notes", "length": len(LONG) + 1, "cell": "activities!B5"},
    ]
    assert out["cut_cells_total"] == 2 and out["cut_cell_limit"] == XLSX_MAX_CELL_CHARS
    (warning,) = out["warnings"]
    assert warning.startswith("2 cell(s) longer than Excel's limit of 32,767 characters")
    assert "row 2 notes (activities!B3), row 4 notes (activities!B5)" in warning
    cells = [row[1] for row in xlsx_values(tmp_path / out["path"])["activities"][1:]]
    assert [len(c) for c in cells] == [5, XLSX_MAX_CELL_CHARS, 5, XLSX_MAX_CELL_CHARS]

    out = run_export(ExportPayload(format="csv", **base), crm_engine, tmp_path, "c", noop)
    assert "cut_cells" not in out and out["warnings"] == []
    out = run_export(ExportPayload(format="pdf", **base), crm_engine, tmp_path, "p", noop)
    assert [(c["row"], c["length"]) for c in out["cut_cells"]] == [(2, len(LONG)),
                                                                  (4, len(LONG) + 1)]  # fmt: skip
    assert out["cut_cell_limit"] == 300 and "the most a PDF cell shows" in out["warnings"][0]


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_the_export_ready_email_says_what_was_cut(make_broker: Any,
                                                  start_consumer: Any) -> None:  # fmt: skip
    import crmqueue.workers.email  # noqa: F401  (registers the bodies before the broker)
    from crmqueue import tasks
    from crmqueue.crm.store import get_engine

    broker = make_broker()
    engine = get_engine(broker.settings.database.url)
    stamp = now()
    with engine.begin() as conn:
        conn.execute(schema.users.insert().values(
            tenant_id="t1", user_id="u1", name="Ann Lee", email="ann@example.com",
            created_at=stamp, updated_at=stamp))  # fmt: skip
        conn.execute(schema.contacts.insert(), [
            {"tenant_id": "t1", "email": "a@x.com", "title": "T", "created_at": stamp,
             "updated_at": stamp},
        ])  # fmt: skip
        conn.execute(schema.activities.insert(), [
            {"tenant_id": "t1", "type": "note", "subject": "S", "notes": LONG,
             "created_at": stamp, "updated_at": stamp},
        ])  # fmt: skip
    start_consumer(broker, ["import-export", "email"])
    outbox = broker.settings.email.outbox_dir

    def email_of(job: Any) -> tuple[str, str]:
        info = job.wait(30)
        assert info.state == "completed", info.errors
        mail = tasks.Job(info.result["notified"]["email"]["job_id"], "email").wait(30)
        assert mail.state == "completed", mail.errors
        (sent,) = [p for p in outbox.glob("*.eml") if info.result["path"] in p.read_text()]
        message = message_from_bytes(sent.read_bytes(), policy=policy.default)
        text = message.get_body(preferencelist=("plain",)).get_content()
        html = message.get_body(preferencelist=("html",)).get_content()
        return text, html

    job = tasks.export_records(tenant_id="t1", user_id="u1", entity_type="activities",
                               format="xlsx")  # fmt: skip
    text, html = email_of(job)
    assert "Some values could not be exported as they are stored:" in text
    assert "1 cell(s) longer than Excel's limit of 32,767 characters a cell were cut:" in text
    assert "row 1 notes (activities!E2)" in text
    assert "row 1 notes (activities!E2)" in html
    text, _ = email_of(tasks.export_records(tenant_id="t1", user_id="u1",
                                            entity_type="contacts", format="xlsx"))  # fmt: skip
    assert "could not be exported" not in text
