"""Imports and exports against a real CRM database (SQLite and PostgreSQL): awkward input
files generated here, duplicates, dry runs, batches that resume after a crash, formula
injection read back with openpyxl and csv, and one import run by a real consumer."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import crm_db
import openpyxl
import pytest
import sqlalchemy as sa
from openpyxl.utils.escape import unescape
from pydantic import ValidationError

from crmqueue.crm import schema
from crmqueue.crm.store import now, seed
from crmqueue.errors import PayloadError, PermanentError
from crmqueue.payloads import ExportPayload, ImportPayload
from crmqueue.workers.import_export import Importer, run_export

HEADER = "email,first_name,last_name\n"

# the CRM database fixtures, both SQLite and PostgreSQL
crm_url = crm_db.crm_url
crm_engine = crm_db.crm_engine
pg_url = crm_db.pg_url


def noop(_percent: float) -> None:
    pass


class Crash(Exception):
    pass


@pytest.fixture
def files(tmp_path: Path) -> Path:
    path = tmp_path / "files"
    path.mkdir()
    return path


def write(files: Path, name: str, data: str | bytes, encoding: str = "utf-8") -> str:
    (files / name).write_bytes(data if isinstance(data, bytes) else data.encode(encoding))
    return name


def do_import(engine: Any, files: Path, file_url: str, job_id: str | None = None,
              on_batch: Any = None, **fields: Any) -> dict[str, Any]:  # fmt: skip
    file_type = file_url.split("#")[0].rsplit(".", 1)[-1]
    data = {"tenant_id": "t1", "user_id": "u1", "file_url": file_url,
            "file_type": file_type, "entity_type": "contacts", **fields}  # fmt: skip
    seen: list[float] = []
    payload = ImportPayload.model_validate(data, context={"files_dir": files})
    result = Importer(payload, engine, files, job_id, seen.append, on_batch).run()
    assert seen and seen[-1] == 100 and seen == sorted(seen)
    return result


def emails(engine: Any, tenant: str = "t1") -> list[str]:
    c = schema.contacts.c
    with engine.connect() as conn:
        query = sa.select(c.email).where(c.tenant_id == tenant).order_by(c.id)
        return list(conn.execute(query).scalars())


# --------------------------------------------------------------------------- readers


def test_awkward_csv_bom_semicolons_quoted_newlines(crm_engine: Any, files: Path) -> None:
    text = '\ufeffEmail;First Name;notes\r\na@x.com;"Ann\nMarie";"x;y"\r\nb@x.com;Bob;\r\n'
    result = do_import(crm_engine, files, write(files, "c.csv", text),
                       mapping_config={"email": "Email", "first_name": "First Name"})  # fmt: skip
    assert result["counts"] == {"new": 2, "updated": 0, "skipped": 0, "invalid": 0}
    assert result["unmapped_columns"] == ["notes"]
    with crm_engine.connect() as conn:
        names = conn.execute(sa.select(schema.contacts.c.first_name).order_by("id")).scalars()
        assert list(names) == ["Ann\nMarie", "Bob"]


def test_cp1252_fallback_is_reported(crm_engine: Any, files: Path) -> None:
    name = write(files, "w.csv", HEADER + "z@x.com,Zoë,Müller\n", encoding="cp1252")
    result = do_import(crm_engine, files, name)
    assert result["encoding"] == "cp1252" and "cp1252" in result["notes"][0]
    with crm_engine.connect() as conn:
        assert conn.execute(sa.select(schema.contacts.c.last_name)).scalar() == "Müller"


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.csv", b"", "empty"),
        ("blank.csv", b"\xef\xbb\xbf \r\n", "empty"),
        ("header.csv", HEADER.encode(), "no data rows"),
        ("binary.csv", bytes(range(256)) * 4, "NUL bytes"),
        ("bad.xlsx", b"PK\x03\x04 not really a zip", "not a valid XLSX"),
        ("ole.xlsx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512, "password-protected"),
        ("empty.json", b"  \n", "empty"),
        ("bad.json", b'[{"email": "a@x.com"},', "not valid JSON"),
    ],
)
def test_bad_input_is_permanent(tmp_path: Path, files: Path, name: str, data: bytes,
                                message: str) -> None:  # fmt: skip
    from crmqueue.crm.store import create_engine, init_db

    engine = create_engine(f"sqlite:///{tmp_path}/crm.db")
    init_db(engine)
    with pytest.raises(PermanentError, match=message):
        do_import(engine, files, write(files, name, data))
    assert emails(engine) == []
    engine.dispose()


def test_sources_are_confined_and_mapping_checked(crm_engine: Any, files: Path,
                                                  tmp_path: Path) -> None:  # fmt: skip
    (tmp_path / "secret.csv").write_text(HEADER + "s@x.com,S,T\n")
    name = write(files, "ok.csv", HEADER + "a@x.com,A,B\n")
    for url, message in [  # refused when the payload is validated (at enqueue) ...
        ("../secret.csv", "outside the files directory"),
        (f"file://{tmp_path}/secret.csv", "outside the files directory"),
        ("https://127.0.0.1/x.csv", "not allowed"),  # the SSRF guard: see test_outbound
        ("ftp://example.com/x.csv", "unsupported"),
    ]:
        with pytest.raises(ValidationError, match=message):
            do_import(crm_engine, files, url)
    for url, message in [  # ... or by the worker
        ("missing.csv", "no such file"),
    ]:
        with pytest.raises(PermanentError, match=message):
            do_import(crm_engine, files, url)
    with pytest.raises(ValidationError, match=r"mapping_config\n.*unknown field.*'shoe_size'"):
        do_import(crm_engine, files, name, mapping_config={"shoe_size": "email"})
    with pytest.raises(PermanentError, match="'mail' not in the file"):
        do_import(crm_engine, files, name, mapping_config={"email": "mail"})
    with pytest.raises(PermanentError, match=r"required contacts field.*email"):
        do_import(crm_engine, files, name, mapping_config={"first_name": "first_name"})
    result = do_import(crm_engine, files, f"file://{files}/ok.csv")
    assert result["counts"]["new"] == 1


def test_size_limit(crm_engine: Any, files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crmqueue.workers import import_export

    monkeypatch.setattr(import_export, "MAX_IMPORT_BYTES", 10)
    with pytest.raises(PermanentError, match="over the import limit"):
        do_import(crm_engine, files, write(files, "big.csv", HEADER + "a@x.com,A,B\n"))


def test_invalid_rows_are_reported_and_written_to_the_error_file(crm_engine: Any,
                                                                 files: Path) -> None:  # fmt: skip
    text = HEADER + "good@x.com,A,B\nnot-an-email,C,D\n\nlast@x.com,E,F\n"
    result = do_import(crm_engine, files, write(files, "e.csv", text), job_id="job-e")
    assert result["counts"] == {"new": 2, "updated": 0, "skipped": 0, "invalid": 1}
    assert result["errors"] == [
        {"row": 3, "column": "email", "reason": "value is not a valid email address"}
    ]
    with (files / result["error_file"]).open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["row", "email", "first_name", "last_name", "error"]
    assert rows[1][:2] == ["3", "not-an-email"] and "valid email" in rows[1][-1]


def test_xlsx_named_sheet_and_json_forms(crm_engine: Any, files: Path) -> None:
    book = openpyxl.Workbook()
    book.active.append(["ignored"])
    sheet = book.create_sheet("People")
    sheet.append(["email", "first_name", "phone"])
    sheet.append(["x1@x.com", "Xa", 5551234])
    sheet.append([None, None, None])
    sheet.append(["x2@x.com", "Xb", None])
    book.save(files / "p.xlsx")
    result = do_import(crm_engine, files, "p.xlsx#sheet=People")
    assert result["counts"]["new"] == 2
    with pytest.raises(PermanentError, match="no sheet named 'Nope'"):
        do_import(crm_engine, files, "p.xlsx#sheet=Nope")
    array = json.dumps([{"email": "j1@x.com", "first_name": "J"}, {"email": "j2@x.com"}])
    assert do_import(crm_engine, files, write(files, "a.json", array))["counts"]["new"] == 2
    lines = '{"email": "l1@x.com"}\n\n{"email": "l2@x.com", "city": "Oslo"}\n'
    assert do_import(crm_engine, files, write(files, "l.json", lines))["counts"]["new"] == 2
    assert len(emails(crm_engine)) == 6


def test_json_array_is_streamed_past_the_peeked_records(crm_engine: Any, files: Path) -> None:
    items = [{"email": f"s{n}@x.com", "city": "Oslo", "phone": n} for n in range(2500)]
    text = "\ufeff" + json.dumps(items)
    result = do_import(crm_engine, files, write(files, "big.json", text), batch_size=500)
    assert result["counts"]["new"] == 2500 and result["rows"] == 2500
    with crm_engine.connect() as conn:
        phone = conn.execute(sa.select(schema.contacts.c.phone).where(
            schema.contacts.c.email == "s2499@x.com")).scalar_one()  # fmt: skip
    assert phone == "2499"
    broken = json.dumps(items[:1500])[:-1] + ', {"email": "late@x.com",]'
    with pytest.raises(PermanentError, match="not valid JSON at item 1501"):
        do_import(crm_engine, files, write(files, "broken.json", broken), dry_run=True)


# --------------------------------------------------------------------------- duplicates


def test_duplicates_in_file_and_database_by_mode(crm_engine: Any, files: Path) -> None:
    do_import(crm_engine, files, write(files, "base.csv", HEADER + "Old@X.com,Old,One\n"))
    text = HEADER + "old@x.com,New,One\nfresh@x.com,F,G\nFRESH@x.com,F2,G2\n"
    name = write(files, "dup.csv", text)
    skip = do_import(crm_engine, files, name, batch_size=1)
    assert skip["counts"] == {"new": 1, "updated": 0, "skipped": 2, "invalid": 0}
    update = do_import(crm_engine, files, name, on_duplicate="update")
    assert update["counts"] == {"new": 0, "updated": 3, "skipped": 0, "invalid": 0}
    with crm_engine.connect() as conn:
        c = schema.contacts.c
        rows = dict(conn.execute(sa.select(sa.func.lower(c.email), c.first_name)).all())
    assert rows == {"old@x.com": "New", "fresh@x.com": "F2"}
    create = do_import(crm_engine, files, name, on_duplicate="create")
    assert create["counts"]["new"] == 3 and len(emails(crm_engine)) == 5
    # another tenant's rows are never duplicates
    other = do_import(crm_engine, files, name, tenant_id="t2")
    assert other["counts"] == {"new": 2, "updated": 0, "skipped": 1, "invalid": 0}


def test_duplicate_key_is_configurable(crm_engine: Any, files: Path) -> None:
    header = "email,first_name,external_id\n"
    do_import(crm_engine, files, write(files, "a.csv", header + "a@x.com,A,CRM-1\n"))
    # same person under a new address: the external id finds it, the email would not
    moved = write(files, "b.csv", header + "a.new@x.com,A2,crm-1\nb@x.com,B,\n")
    result = do_import(crm_engine, files, moved, on_duplicate="update",
                       duplicate_key=["external_id", "email"])  # fmt: skip
    assert result["duplicate_key"] == ["external_id", "email"]
    assert result["counts"] == {"new": 1, "updated": 1, "skipped": 0, "invalid": 0}
    assert sorted(emails(crm_engine)) == ["a.new@x.com", "b@x.com"]
    by_email = do_import(crm_engine, files, moved)  # the default key: email
    assert by_email["counts"] == {"new": 0, "updated": 0, "skipped": 2, "invalid": 0}
    for key, message in [(["shoe_size"], "'shoe_size'"), (["employees"], "'employees'")]:
        with pytest.raises(ValidationError, match=rf"duplicate_key\n.*unknown field.*{message}"):
            ImportPayload.model_validate({
                "tenant_id": "t1", "user_id": "u1", "file_url": "x.csv", "file_type": "csv",
                "entity_type": "companies", "duplicate_key": key})  # fmt: skip


def test_dry_run_writes_nothing(crm_engine: Any, files: Path) -> None:
    text = HEADER + "a@x.com,A,B\nbad,C,D\na@x.com,E,F\nb@x.com,G,H\n"
    result = do_import(crm_engine, files, write(files, "d.csv", text), dry_run=True,
                       batch_size=2, job_id="dry")  # fmt: skip
    assert result["counts"] == {"new": 2, "updated": 0, "skipped": 1, "invalid": 1}
    assert emails(crm_engine) == []
    with crm_engine.connect() as conn:
        assert conn.execute(sa.select(schema.import_checkpoints.c.job_id)).first() is None
    # a dry run counts what the real run would do, duplicates across batches included
    dry = do_import(crm_engine, files, "d.csv", dry_run=True, batch_size=2,
                    on_duplicate="update")  # fmt: skip
    assert emails(crm_engine) == []
    real = do_import(crm_engine, files, "d.csv", batch_size=2, on_duplicate="update")
    assert dry["counts"] == real["counts"] == {"new": 2, "updated": 1, "skipped": 0, "invalid": 1}


def test_round_trip_export_then_dry_run_import_finds_all_duplicates(
    crm_engine: Any, files: Path
) -> None:
    seed(crm_engine, "t1", 120)
    for fmt in ("csv", "xlsx"):
        exported = run_export(
            ExportPayload(tenant_id="t1", user_id="u1", entity_type="contacts", format=fmt),
            crm_engine, files, None, lambda _: None,
        )  # fmt: skip
        assert exported["rows"] == 120 and (files / exported["path"]).is_file()
        result = do_import(crm_engine, files, exported["path"], dry_run=True)
        assert result["counts"] == {"new": 0, "updated": 0, "skipped": 120, "invalid": 0}
        assert "id" in result["unmapped_columns"]
    before = emails(crm_engine)
    with crm_engine.connect() as conn:
        snapshot = conn.execute(sa.select(schema.contacts).order_by("id")).all()
    update = do_import(crm_engine, files, exported["path"], on_duplicate="update")
    assert update["counts"]["updated"] == 120 and emails(crm_engine) == before
    with crm_engine.connect() as conn:
        after = conn.execute(sa.select(schema.contacts).order_by("id")).all()
    ignore = {"updated_at"}
    keys = [k for k in schema.contacts.c.keys() if k not in ignore]  # noqa: SIM118
    assert [[getattr(r, k) for k in keys] for r in after] == [
        [getattr(r, k) for k in keys] for r in snapshot
    ]


# --------------------------------------------------------------------------- export


def test_export_escapes_formula_injection(crm_engine: Any, files: Path) -> None:
    nasty = ["=1+2", "+SUM(A1)", "-3", "@cmd", "\tTAB", "\rCR", "plain"]
    stamp = now()
    with crm_engine.begin() as conn:
        conn.execute(schema.contacts.insert(), [
            {"tenant_id": "t1", "email": f"f{n}@x.com", "first_name": value,
             "created_at": stamp, "updated_at": stamp}
            for n, value in enumerate(nasty)
        ] + [{"tenant_id": "t2", "email": "other@x.com", "first_name": "t2",
              "created_at": stamp, "updated_at": stamp}])  # fmt: skip
    expected = ["'" + v if v != "plain" else v for v in nasty]
    payload = {"tenant_id": "t1", "user_id": "u1", "entity_type": "contacts",
               "fields": ["email", "first_name"]}  # fmt: skip
    out = run_export(ExportPayload(format="csv", **payload), crm_engine, files, "j", noop)
    with (files / out["path"]).open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["email", "first_name"] and [r[1] for r in rows[1:]] == expected
    out = run_export(ExportPayload(format="xlsx", **payload), crm_engine, files, "k", noop)
    sheet = openpyxl.load_workbook(files / out["path"]).active
    cells = [row[1] for row in sheet.iter_rows(min_row=2, values_only=True)]
    # XLSX: string cells, never formulas; the apostrophe only before a leading tab or CR
    # (an import would strip them). CR is stored as _x000D_.
    in_xlsx = [v if v[:1] not in ("\t", "\r") else "'" + v for v in nasty]
    assert [unescape(cell) for cell in cells] == in_xlsx
    assert all(cell.data_type == "s" for cell in sheet["B"][1:])
    filtered = run_export(
        ExportPayload(format="csv", filters={"first_name": ["plain", "t2"]}, **payload),
        crm_engine, files, "f", noop,
    )  # fmt: skip
    assert filtered["rows"] == 1
    out = run_export(ExportPayload(format="pdf", **payload), crm_engine, files, "p", noop)
    assert out["rows"] == len(nasty) and (files / out["path"]).read_bytes()[:5] == b"%PDF-"
    bad = {**payload, "fields": ["email", "password"]}
    with pytest.raises(ValidationError, match="unknown contacts field"):
        ExportPayload(format="csv", **bad)
    # a payload queued before the check existed still fails in the worker, permanently
    with pytest.raises(PermanentError, match="unknown contacts field"):
        run_export(ExportPayload.model_construct(format="csv", filters={}, **bad),
                   crm_engine, files, "p", noop)  # fmt: skip


# --------------------------------------------------------------------------- resuming


def test_import_resumes_after_a_crash_without_duplicates(crm_engine: Any, files: Path) -> None:
    rows = "".join(f"r{n}@x.com,N{n},L\n" for n in range(250))
    name = write(files, "big.csv", HEADER + "bad-email,X,Y\n" + rows)
    crashed: list[int] = []

    def crash_on_third(index: int) -> None:
        if index == 2 and not crashed:
            crashed.append(index)
            raise Crash("worker died after committing batch 2")

    with pytest.raises(Crash):
        do_import(crm_engine, files, name, job_id="resume-1", batch_size=40,
                  on_batch=crash_on_third)  # fmt: skip
    assert len(emails(crm_engine)) == 3 * 40 - 1
    result = do_import(crm_engine, files, name, job_id="resume-1", batch_size=40,
                       on_batch=crash_on_third)  # fmt: skip
    assert result["resumed_after_batch"] == 2
    assert result["counts"] == {"new": 250, "updated": 0, "skipped": 0, "invalid": 1}
    assert result["errors"] == [
        {"row": 2, "column": "email", "reason": "value is not a valid email address"}
    ]
    got = emails(crm_engine)
    assert len(got) == 250 and len(set(got)) == 250


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_consumer_runs_an_enqueued_import_and_export(make_broker: Any, start_consumer: Any,
                                                     tmp_path: Path) -> None:  # fmt: skip
    from email import message_from_bytes, policy

    import crmqueue.workers.email  # noqa: F401  (registers the bodies before the broker)
    from crmqueue import tasks
    from crmqueue.crm import schema
    from crmqueue.crm.store import get_engine, now

    broker = make_broker({"files.download_base_url": "https://crm.example.com/files/"})
    files_dir = broker.settings.files.dir
    files_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"e{n}@x.com,E{n},L\n" for n in range(300))
    (files_dir / "in.csv").write_text(HEADER + "bad-email,X,Y\n" + lines)
    engine = get_engine(broker.settings.database.url)
    with engine.begin() as conn:
        conn.execute(schema.users.insert().values(
            tenant_id="t1", user_id="u1", name="Ann Lee", email="ann@example.com",
            created_at=now(), updated_at=now()))  # fmt: skip

    start_consumer(broker, ["import-export", "email"])
    job = tasks.import_records(tenant_id="t1", user_id="u1", file_url="in.csv",
                               file_type="csv", entity_type="contacts", batch_size=50)  # fmt: skip
    info = job.wait(30)
    assert info.state == "completed", info.errors
    assert info.progress == 100
    assert info.result["counts"] == {"new": 300, "updated": 0, "skipped": 0, "invalid": 1}
    assert len(emails(engine)) == 300

    mail = tasks.Job(info.result["notified"]["email"]["job_id"], "email").wait(30)
    assert mail.state == "completed", mail.errors
    outbox = broker.settings.email.outbox_dir
    (sent,) = list(outbox.glob("*.eml"))
    message = message_from_bytes(sent.read_bytes(), policy=policy.default)
    assert message["To"] == "ann@example.com"
    assert message["Subject"] == "Your contacts import has finished"
    text = message.get_body(preferencelist=("plain",)).get_content()
    assert "Hi Ann," in text and "Created: 300" in text and "Failed:  1" in text

    export = tasks.export_records(tenant_id="t1", user_id="u1", entity_type="contacts",
                                  format="xlsx", fields=["email"]).wait(30)  # fmt: skip
    assert export.state == "completed", export.errors
    assert (files_dir / export.result["path"]).is_file()
    url = export.result["download_url"]
    assert url == "https://crm.example.com/files/" + export.result["path"]
    ready = tasks.Job(export.result["notified"]["email"]["job_id"], "email").wait(30)
    assert ready.state == "completed", ready.errors
    (sent,) = [p for p in outbox.glob("*.eml") if "export is ready" in p.read_text()]
    text = message_from_bytes(sent.read_bytes(), policy=policy.default).get_body(
        preferencelist=("plain",)).get_content()  # fmt: skip
    assert url in text and "300 rows, XLSX" in text

    nobody = tasks.export_records(tenant_id="t1", user_id="u9", entity_type="contacts",
                                  format="csv", fields=["email"]).wait(30)  # fmt: skip
    assert nobody.state == "completed", nobody.errors
    assert nobody.result["notified"] == {"email": None, "reason": "no user 'u9' in tenant 't1'"}

    bad = tasks.import_records(tenant_id="t1", user_id="u1", file_url="missing.csv",
                               file_type="csv", entity_type="contacts").wait(30)  # fmt: skip
    assert bad.state == "dead" and bad.attempts == 1
    assert "no such file under the files directory" in bad.errors[-1]["message"]
    with pytest.raises(PayloadError, match="outside the files directory"):  # at enqueue
        tasks.import_records(tenant_id="t1", user_id="u1", file_url="../x.csv",
                             file_type="csv", entity_type="contacts")  # fmt: skip
