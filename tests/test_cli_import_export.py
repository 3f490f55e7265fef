"""Issue 5 from the command line: ``crmqueue import`` and ``crmqueue export`` run as a user
runs them (the real entry point, in subprocesses, in a fresh directory) against a real
``crmqueue worker import-export`` consumer, with ``--wait`` so the result summary is
printed. Files written by exports are read back with the csv module and openpyxl.

Queues on SQLite; the CRM database on SQLite, and the round trip also on PostgreSQL.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import crm_db
import openpyxl
import pytest
import sqlalchemy as sa
from openpyxl.utils.escape import unescape
from test_cli import CRMQUEUE
from test_cli import Cli as BaseCli

from crmqueue.crm import schema
from crmqueue.crm.entities import complete_names
from crmqueue.crm.store import create_engine, now

TENANT = "t1"
WAIT = ("--wait", "--timeout", "60")
SUMMARY = re.compile(
    r"^(\d+) rows: (\d+) new, (\d+) updated, (\d+) skipped, (\d+) invalid( \(dry run\))?$", re.M
)
EXPORTED = re.compile(r"^(\d+) rows? exported to (.+)$", re.M)
# What a spreadsheet would run as a formula, and how an export must write it: as text.
FORMULAS = ["=1+1", "+x", "-x", "@x", "\tx", "\rx", '=HYPERLINK("http://evil","click")']

# the CRM database fixtures: a fresh SQLite file, and a fresh PostgreSQL database
crm_url = crm_db.crm_url
pg_url = crm_db.pg_url


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMQUEUE_", "REDIS_"))}
    env.pop("EMAIL_PROVIDER", None)
    return env


class Cli(BaseCli):
    """``crmqueue`` in `workdir` (whose crmqueue.toml it reads), one consumer of the
    import-export queue running, and the CRM database open for checks."""

    def __init__(self, workdir: Path, crm_url: str) -> None:
        super().__init__(workdir, _clean_env())
        self.files = workdir / "files"
        (workdir / "crmqueue.toml").write_text(
            "\n".join(
                [
                    "[storage]",
                    f'url = "sqlite:///{workdir}/queues.db"',
                    "[database]",
                    f'url = "{crm_url}"',
                    "[files]",
                    f'dir = "{self.files}"',
                    "[email]",
                    f'outbox_dir = "{workdir}/outbox"',
                    "[runner]",
                    "heartbeat_seconds = 0.5",
                    "shutdown_grace_seconds = 1",
                    "[queues.import-export]",
                    "backoff_seconds = 0.05",
                    "backoff_max_seconds = 0.1",
                ]
            )
            + "\n",
            encoding="utf-8",
        )
        self.engine = create_engine(crm_url)
        self.consumer: subprocess.Popen[bytes] | None = None

    def start_consumer(self) -> None:
        with (self.workdir / "consumer.log").open("ab") as log:
            self.consumer = subprocess.Popen(
                [CRMQUEUE, "worker", "import-export"],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.consumer is not None and self.consumer.poll() is None:
            self.consumer.send_signal(signal.SIGTERM)
            try:
                self.consumer.wait(15)
            except subprocess.TimeoutExpired:
                self.consumer.kill()
                self.consumer.wait(5)
        self.engine.dispose()

    def consumer_log(self) -> str:
        path = self.workdir / "consumer.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    # -- commands

    def import_(self, file: str | Path, *args: str) -> subprocess.CompletedProcess[str]:
        return self("import", str(file), "--entity", "contacts", "--tenant", TENANT, *args, *WAIT)

    def export(self, fmt: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self("export", "--entity", "contacts", "--format", fmt, "--tenant", TENANT,
                    *args, *WAIT)  # fmt: skip

    def ok(self, result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
        assert result.returncode == 0, (
            f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            f"\nconsumer:\n{self.consumer_log()}"
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result

    # -- the CRM database

    def rows(self, tenant: str = TENANT) -> list[dict[str, Any]]:
        """Every contact of the tenant, all columns, in id order."""
        c = schema.contacts.c
        with self.engine.connect() as conn:
            query = sa.select(schema.contacts).where(c.tenant_id == tenant).order_by(c.id)
            return [dict(row._mapping) for row in conn.execute(query)]

    def checkpoints(self) -> list[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.select(schema.import_checkpoints))]

    def insert(self, rows: list[dict[str, Any]], tenant: str = TENANT) -> None:
        stamp = now()
        columns = ("first_name", "last_name", "email", "phone", "city")
        with self.engine.begin() as conn:
            conn.execute(
                schema.contacts.insert(),
                [
                    # name and first/last names in step, as every write through crmqueue
                    complete_names({**dict.fromkeys(columns), **row, "tenant_id": tenant,
                                    "created_at": stamp, "updated_at": stamp})
                    for row in rows
                ],
            )  # fmt: skip


def make_cli(workdir: Path, crm_url: str) -> Iterator[Cli]:
    cli = Cli(workdir, crm_url)
    try:
        init = cli("db", "init")
        assert init.returncode == 0, init.stderr
        cli.start_consumer()
        yield cli
    finally:
        cli.stop()


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    """The CLI with a consumer, on a SQLite CRM database."""
    yield from make_cli(tmp_path, f"sqlite:///{tmp_path}/crm.db")


@pytest.fixture
def cli_any_crm(tmp_path: Path, crm_url: str) -> Iterator[Cli]:
    """The CLI with a consumer, on a SQLite and on a PostgreSQL CRM database."""
    yield from make_cli(tmp_path, crm_url)


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def job_id(result: subprocess.CompletedProcess[str]) -> str:
    first = result.stdout.splitlines()[0]
    assert re.fullmatch(r"[0-9a-f]{32}", first), result.stdout
    return first


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    found = SUMMARY.findall(result.stdout)
    assert len(found) == 1, result.stdout
    rows, new, updated, skipped, invalid, dry = found[0]
    return {"rows": int(rows), "new": int(new), "updated": int(updated),
            "skipped": int(skipped), "invalid": int(invalid), "dry_run": bool(dry)}  # fmt: skip


def exported(cli: Cli, result: subprocess.CompletedProcess[str]) -> tuple[int, Path]:
    found = EXPORTED.findall(result.stdout)
    assert len(found) == 1, result.stdout
    rows, printed = found[0]
    path = Path(printed)
    assert path.is_absolute() and path.is_file(), printed
    assert path.is_relative_to((cli.files / "exports" / TENANT).resolve()), printed
    return int(rows), path


def read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.reader(handle))


def xlsx_text(value: str) -> str:
    return unescape(value).replace("\r", "\n")


def read_xlsx(path: Path) -> tuple[Any, list[list[Any]]]:
    sheet = openpyxl.load_workbook(path).active
    return sheet, [list(row) for row in sheet.iter_rows(values_only=True)]


def changes(
    before: list[dict[str, Any]], after: list[dict[str, Any]], keep_updated_at: bool = False
) -> list[tuple[Any, ...]]:
    """(id, column, before, after) of every value that differs; rows matched by id."""
    assert [r["id"] for r in after] == [r["id"] for r in before]
    return [
        (old["id"], key, old[key], new[key])
        for old, new in zip(before, after, strict=True)
        for key in old
        if old[key] != new[key] and (keep_updated_at or key != "updated_at")
    ]


# --------------------------------------------------------------------------- import


def test_import_wait_prints_the_summary_and_exits_0(cli: Cli) -> None:
    source = write_csv(
        cli.workdir / "people.csv",
        "email,first_name,last_name,notes\n"
        "ann@example.com,Ann,Archer,vip\n"
        "not-an-email,Bob,Baker,\n"
        "ANN@Example.com,Annie,Archer,again\n"
        "cy@example.com,Cy,Cole,\n",
    )
    result = cli.ok(cli.import_(source))
    job = job_id(result)
    assert f"job {job} completed (attempts 1/2)" in result.stderr
    assert summary(result) == {"rows": 4, "new": 2, "updated": 0, "skipped": 1, "invalid": 1,
                               "dry_run": False}  # fmt: skip
    lines = result.stdout.splitlines()
    assert "  row 3, email: value is not a valid email address" in lines
    assert f"failed rows: imports/errors/{job}.csv (under the files directory)" in lines
    assert "columns not imported: notes" in lines
    assert re.search(rf"job {job} completed .*100%", result.stdout)  # the progress bar's end

    failed = read_csv(cli.files / "imports" / "errors" / f"{job}.csv")
    assert failed[0] == ["row", "email", "first_name", "last_name", "notes", "error"]
    assert [row[:3] for row in failed[1:]] == [["3", "not-an-email", "Bob"]]
    assert [(r["email"], r["first_name"]) for r in cli.rows()] == [
        ("ann@example.com", "Ann"), ("cy@example.com", "Cy"),
    ]  # fmt: skip
    # the file was copied under the files directory, the original left alone
    copies = list((cli.files / "imports").glob("*/people.csv"))
    assert len(copies) == 1 and copies[0].read_bytes() == source.read_bytes()


def test_map_options_map_renamed_columns(cli: Cli) -> None:
    source = write_csv(
        cli.workdir / "kontakte.csv",
        "\ufeffE-Mail;Vorname;Nachname\r\neva@example.de;Eva;Engel\r\njoerg@example.de;Jörg;Jahn\r\n",
    )
    result = cli.ok(cli.import_(source, "--map", "email=E-Mail", "--map", "first_name=Vorname"))
    assert summary(result)["new"] == 2
    assert "columns not imported: Nachname" in result.stdout.splitlines()
    got = [(r["email"], r["first_name"], r["last_name"]) for r in cli.rows()]
    assert got == [("eva@example.de", "Eva", None), ("joerg@example.de", "Jörg", None)]

    missing = cli.import_(source, "--map", "email=Mail")
    assert missing.returncode == 1
    assert "PermanentError: mapping_config: column(s) 'Mail' not in the file" in missing.stderr

    malformed = cli.import_(source, "--map", "email")
    assert malformed.returncode == 2
    assert "'email' is not FIELD=COLUMN" in malformed.stderr
    assert malformed.stdout == ""
    assert len(cli.rows()) == 2


def test_dry_run_writes_nothing(cli: Cli) -> None:
    cli.ok(cli.import_(write_csv(cli.workdir / "base.csv", "email,first_name\nold@x.com,Old\n")))
    before, checkpoints = cli.rows(), cli.checkpoints()
    source = write_csv(
        cli.workdir / "trial.csv",
        "email,first_name\nnew1@x.com,N1\nOLD@x.com,Changed\nbroken,X\nnew2@x.com,N2\n"
        "new1@x.com,again\n",
    )
    for mode in ("skip", "update", "create"):
        result = cli.ok(cli.import_(source, "--dry-run", "--on-duplicate", mode, "--batch-size",
                                    "2"))  # fmt: skip
        counts = summary(result)
        assert counts["dry_run"] is True, result.stdout
        assert "(dry run)" in result.stdout
        assert counts["rows"] == 5 and counts["invalid"] == 1
        expected = {
            "skip": {"new": 2, "updated": 0, "skipped": 2},
            "update": {"new": 2, "updated": 2, "skipped": 0},
            "create": {"new": 4, "updated": 0, "skipped": 0},
        }[mode]
        assert {k: counts[k] for k in expected} == expected, (mode, counts)
        assert cli.rows() == before  # not a row added or changed, not even updated_at
        assert cli.checkpoints() == checkpoints  # no import checkpoint either
    # the same file for real writes what the dry run announced
    real = cli.ok(cli.import_(source, "--on-duplicate", "update", "--batch-size", "2"))
    assert {k: v for k, v in summary(real).items() if k != "dry_run"} == {
        "rows": 5, "new": 2, "updated": 2, "skipped": 0, "invalid": 1,
    }  # fmt: skip
    assert len(cli.rows()) == 3


def test_on_duplicate_skip_then_update(cli: Cli) -> None:
    cli.ok(cli.import_(write_csv(
        cli.workdir / "base.csv",
        "email,first_name,last_name,city\nann@x.com,Ann,Old,Oslo\nbob@x.com,Bob,B,Bergen\n",
    )))  # fmt: skip
    base = cli.rows()
    source = write_csv(
        cli.workdir / "changes.csv",
        "email,first_name,last_name,city\nANN@X.com,Annie,,Lyon\ncarl@x.com,Carl,C,Graz\n",
    )
    skipped = cli.ok(cli.import_(source))  # the default: skip
    assert {k: v for k, v in summary(skipped).items() if k != "rows"} == {
        "new": 1, "updated": 0, "skipped": 1, "invalid": 0, "dry_run": False,
    }  # fmt: skip
    assert cli.rows()[:2] == base  # Ann untouched
    assert cli.rows()[2]["email"] == "carl@x.com"

    updated = cli.ok(cli.import_(source, "--on-duplicate", "update"))
    assert {k: v for k, v in summary(updated).items() if k != "rows"} == {
        "new": 0, "updated": 2, "skipped": 0, "invalid": 0, "dry_run": False,
    }  # fmt: skip
    rows = {r["id"]: r for r in cli.rows()}
    assert len(rows) == 3  # no row added
    ann = rows[base[0]["id"]]
    assert (ann["first_name"], ann["last_name"], ann["city"]) == ("Annie", "Old", "Lyon")
    assert ann["email"].lower() == "ann@x.com"  # a blank cell does not erase a value
    assert rows[base[1]["id"]] == base[1]  # Bob is not in the file
    assert ann["updated_at"] != base[0]["updated_at"]


def test_key_option_picks_the_duplicate_key(cli: Cli) -> None:
    cli.insert([{"email": "ann@x.com", "first_name": "Ann"}])
    source = write_csv(cli.workdir / "k.csv", "email,first_name\nANN@x.com,Annie\n")
    by_phone = summary(cli.ok(cli.import_(source, "--key", "phone", "--dry-run")))
    assert (by_phone["new"], by_phone["skipped"]) == (1, 0)  # no phone: nothing matches
    by_email = summary(cli.ok(cli.import_(source, "--key", "email", "--on-duplicate", "update")))
    assert (by_email["new"], by_email["updated"]) == (0, 1)
    assert [r["first_name"] for r in cli.rows()] == ["Annie"]
    bad = cli.import_(source, "--key", "employees")
    assert bad.returncode != 0 and "duplicate_key" in bad.stderr, bad.stderr


def test_unknown_field_in_mapping_is_refused_before_anything_is_enqueued(cli: Cli) -> None:
    source = write_csv(cli.workdir / "p.csv", "email,first_name\na@x.com,A\n")
    result = cli.import_(source, "--map", "email=email", "--map", "shoe_size=first_name")
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "mapping_config: unknown field(s) 'shoe_size' for contacts (fields: " in result.stderr
    listed = result.stderr.split("(fields: ", 1)[1].split(")", 1)[0].split(", ")
    assert {"email", "first_name", "last_name"} <= set(listed), result.stderr
    (stats,) = [
        q for q in json.loads(cli("stats", "--json").stdout) if q["queue"] == "import-export"
    ]
    assert stats["waiting"] == stats["active"] == stats["completed"] == stats["dead"] == 0
    assert cli.rows() == []


def test_file_type_from_the_suffix_or_type(cli: Cli) -> None:
    tsv = write_csv(cli.workdir / "a.tsv", "email\tfirst_name\ntab@x.com\tTab\n")
    assert summary(cli.ok(cli.import_(tsv)))["new"] == 1
    jsonl = write_csv(cli.workdir / "b.jsonl", '{"email": "line@x.com", "first_name": "L"}\n')
    assert summary(cli.ok(cli.import_(jsonl)))["new"] == 1
    dat = write_csv(cli.workdir / "c.dat", "email,first_name\ndat@x.com,Dat\n")
    unknown = cli.import_(dat)
    assert unknown.returncode == 2, unknown.stderr
    assert "Invalid value for --type: cannot tell the type of" in unknown.stderr
    assert "(types: csv, tsv, txt, xlsx, xls, ods, json)" in unknown.stderr
    wrong = cli.import_(dat, "--type", "pdf")
    assert wrong.returncode == 2 and "'pdf' is not a file type (types: csv," in wrong.stderr
    assert summary(cli.ok(cli.import_(dat, "--type", "CSV")))["new"] == 1
    assert sorted(r["email"] for r in cli.rows()) == ["dat@x.com", "line@x.com", "tab@x.com"]


def test_unknown_entity_is_a_clear_error_and_nothing_is_enqueued(cli: Cli) -> None:
    source = write_csv(cli.workdir / "p.csv", "email\na@x.com\n")
    result = cli("import", str(source), "--entity", "deals", "--wait")
    assert result.returncode == 2
    assert (
        "Invalid value for '--entity': 'deals' is not one of 'contacts', 'companies',"
        " 'leads', 'activities'." in result.stderr
    )
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert not (cli.files / "imports").exists()  # not even copied

    exported_ = cli("export", "--entity", "deals", "--format", "csv")
    assert exported_.returncode == 2
    assert "'deals' is not one of" in exported_.stderr

    payload = {"tenant_id": TENANT, "user_id": "u1", "file_url": "p.csv", "file_type": "csv",
               "entity_type": "deals"}  # fmt: skip
    raw = cli("enqueue", "import-export", "--kind", "import", "--json", json.dumps(payload))
    assert raw.returncode == 1
    lines = [line for line in raw.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("crmqueue: error: "), raw.stderr
    choices = "'contacts', 'companies', 'leads' or 'activities'"
    assert f"entity_type: Input should be {choices}" in lines[0]
    stats = json.loads(cli("stats", "import-export", "--json").stdout)
    assert stats["waiting"] + stats["scheduled"] + stats["completed"] + stats["dead"] == 0


def test_decimal_comma_option(cli: Cli) -> None:
    def leads(*args: str, name: str, text: str) -> subprocess.CompletedProcess[str]:
        source = write_csv(cli.workdir / name, text)
        return cli("import", str(source), "--entity", "leads", "--tenant", TENANT, *args, *WAIT)

    def amounts() -> dict[str, Any]:
        c = schema.leads.c
        with cli.engine.connect() as conn:
            return {title: amount for title, amount in conn.execute(sa.select(c.title, c.amount))}

    semicolon = "title;amount\n{0} A;1250,50\n{0} B;1.250,75\n"
    # Neither option: detected (a semicolon file whose amounts only read with a comma).
    detected = cli.ok(leads(name="s1.csv", text=semicolon.format("detected")))
    assert summary(detected)["new"] == 2, detected.stdout
    assert "note: numbers read with a decimal comma" in detected.stdout
    refused = cli.ok(leads("--no-decimal-comma", name="s2.csv", text=semicolon.format("no")))
    assert summary(refused)["invalid"] == 2, refused.stdout
    assert "row 2, amount:" in refused.stdout
    given = cli.ok(leads("--decimal-comma", name="s3.csv", text=semicolon.format("yes")))
    assert summary(given)["new"] == 2, given.stdout

    comma = 'title,amount\n{0} A,"1250,50"\n'
    # A comma file is not detected; --decimal-comma reads it.
    plain = cli.ok(leads(name="c1.csv", text=comma.format("comma-default")))
    assert summary(plain)["invalid"] == 1, plain.stdout
    forced = cli.ok(leads("--decimal-comma", name="c2.csv", text=comma.format("comma-yes")))
    assert summary(forced)["new"] == 1, forced.stdout

    assert amounts() == {
        "detected A": Decimal("1250.50"), "detected B": Decimal("1250.75"),
        "yes A": Decimal("1250.50"), "yes B": Decimal("1250.75"),
        "comma-yes A": Decimal("1250.50"),
    }  # fmt: skip
    both = leads("--decimal-comma", "--no-decimal-comma", name="s4.csv", text=semicolon)
    assert both.returncode == 0  # the last one given wins, as click flags do
    assert summary(both)["invalid"] == 2, both.stdout


# --------------------------------------------------------------------------- export


def test_export_csv_and_xlsx_with_fields_and_formula_injection(cli: Cli) -> None:
    names = [*FORMULAS, "plain", "O'Brien", 'a,b "c"\nd']
    cli.insert([{"email": f"f{n}@x.com", "first_name": v, "last_name": "L"}
                for n, v in enumerate(names)])  # fmt: skip
    cli.insert([{"email": "other@x.com", "first_name": "other tenant"}], tenant="t2")
    escaped = [v if v[:1] not in ("=", "+", "-", "@", "\t", "\r") else "'" + v for v in names]

    result = cli.ok(cli.export("csv", "--fields", "email,first_name"))
    assert f"job {job_id(result)} completed" in result.stderr
    count, path = exported(cli, result)
    assert count == len(names) and path.suffix == ".csv"
    rows = read_csv(path)
    assert rows[0] == ["email", "first_name"]
    assert rows[1:] == [[f"f{n}@x.com", v] for n, v in enumerate(escaped)]

    result = cli.ok(cli.export("xlsx", "--fields", "email,first_name"))
    count, path = exported(cli, result)
    assert count == len(names) and path.suffix == ".xlsx"
    sheet, cells = read_xlsx(path)
    assert cells[0] == ["email", "first_name"]
    # XLSX text is a string cell, never run as a formula: no apostrophe but before a
    # leading tab or CR (which an import would strip). A CR is stored as _x000D_ (or as a
    # raw CR that XML parsers read as LF): the same text either way.
    in_xlsx = [v if v[:1] not in ("\t", "\r") else "'" + v for v in names]
    assert [[xlsx_text(cell) for cell in row] for row in cells[1:]] == [
        [f"f{n}@x.com", xlsx_text(v)] for n, v in enumerate(in_xlsx)
    ]
    for row in sheet.iter_rows(min_row=2):
        for cell in row:
            assert cell.data_type == "s", (cell.coordinate, cell.value)  # text, no formula
    assert sheet.title == "contacts"

    everything = cli.ok(cli.export("csv"))
    _, path = exported(cli, everything)
    header = read_csv(path)[0]
    assert header[0] == "id"
    assert {"name", "first_name", "last_name", "email"} <= set(header)
    assert "tenant_id" not in header

    # An unknown field is refused when the export is enqueued: no job, one line.
    bad = cli.export("csv", "--fields", "email,password")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith(
        "crmqueue: error: payload invalid: fields: unknown contacts field(s) 'password' (fields: "
    ), bad.stderr
    assert len(bad.stderr.splitlines()) == 1


def test_export_filter_exports_only_the_matching_rows(cli: Cli) -> None:
    def stats() -> dict[str, Any]:
        queues = json.loads(cli("stats", "--json").stdout)
        return next(q for q in queues if q["queue"] == "import-export")

    # A bad --filter is a usage error naming the option; nothing is enqueued.
    for item in ("city", "=Berlin", " =Berlin"):
        bad = cli.export("csv", "--filter", item)
        assert bad.returncode == 2, (item, bad.stderr)
        assert "--filter" in bad.stderr and f"{item!r} is not FIELD=VALUE" in bad.stderr
    mixed = cli.export("csv", "--filter", "city=Berlin", "--filter", "city=")
    assert mixed.returncode == 2 and "--filter" in mixed.stderr, mixed.stderr
    unknown = cli.export("csv", "--filter", "shoe_size=42")
    assert unknown.returncode == 1, unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert "filters" in unknown.stderr and "shoe_size" in unknown.stderr, unknown.stderr
    assert stats()["waiting"] + stats()["completed"] + stats()["dead"] == 0

    cli.insert([
        {"email": "b1@x.com", "first_name": "Bea", "city": "Berlin"},
        {"email": "p1@x.com", "first_name": "Pia", "city": "Paris"},
        {"email": "b2@x.com", "first_name": "Ben", "city": "Berlin", "phone": "+49 30 1"},
        {"email": "n1@x.com", "first_name": "Noa", "city": None},
    ])  # fmt: skip
    cli.insert([{"email": "b9@x.com", "first_name": "Other", "city": "Berlin"}], tenant="t2")
    ids = {row["email"]: row["id"] for row in cli.rows()}

    def emails(fmt: str, *filters: str) -> list[str]:
        args = [arg for item in filters for arg in ("--filter", item)]
        result = cli.ok(cli.export(fmt, "--fields", "email,city", *args))
        count, path = exported(cli, result)
        cells = read_xlsx(path)[1][1:] if fmt == "xlsx" else read_csv(path)[1:]
        assert count == len(cells), result.stdout
        return [row[0] for row in cells]

    assert emails("csv", "city=Berlin") == ["b1@x.com", "b2@x.com"]
    assert emails("xlsx", "city=Berlin") == ["b1@x.com", "b2@x.com"]
    assert emails("csv", "city=Berlin", "city=Paris") == ["b1@x.com", "p1@x.com", "b2@x.com"]
    assert emails("csv", "city=Berlin", "email=b2@x.com") == ["b2@x.com"]  # all filters
    assert emails("csv", " city = Paris ") == ["p1@x.com"]
    assert emails("csv", "city=") == ["n1@x.com"]  # empty
    assert emails("csv", "phone=", "city=Berlin") == ["b1@x.com"]
    assert emails("csv", f"id={ids['p1@x.com']}") == ["p1@x.com"]  # read as the field's type
    assert emails("csv", "city=Nowhere") == []
    assert emails("csv", "city=berlin") == []  # equal, as stored
    pdf = cli.ok(cli.export("pdf", "--filter", "city=Paris"))
    assert exported(cli, pdf)[0] == 1
    bad_id = cli.export("csv", "--filter", "id=seven")
    assert bad_id.returncode == 1 and "filters" in bad_id.stderr, bad_id.stderr


# --------------------------------------------------------------------------- round trip


def test_round_trip_export_then_import_changes_nothing(cli_any_crm: Cli) -> None:
    """Issue 5: export -> import of the same entity with a dry run reports every row as a
    duplicate; with --on-duplicate update nothing changes."""
    cli = cli_any_crm
    seeded = cli.ok(cli("db", "seed", "--tenant", TENANT, "--contacts", "150"))
    assert "150 contacts" in seeded.stdout
    awkward = ["=1+1", "+47 22 33 44 55", "-x", "@handle", "O'Brien", "Zoë Ångström",
               "a,b \"c\"\nd", "ünïcødé 😀"]  # fmt: skip
    cli.insert([{"email": f"Mixed.Case{n}@Example.COM", "first_name": v, "last_name": v,
                 "city": v, "phone": "+1 555 0100"} for n, v in enumerate(awkward)])  # fmt: skip
    total = 150 + len(awkward)
    original = cli.rows()
    assert len(original) == total

    for fmt in ("csv", "xlsx"):
        before = cli.rows()  # the update of the previous round set updated_at
        count, path = exported(cli, cli.ok(cli.export(fmt)))
        assert count == total
        dry = cli.ok(cli.import_(path, "--dry-run"))
        assert summary(dry) == {"rows": total, "new": 0, "updated": 0, "skipped": total,
                                "invalid": 0, "dry_run": True}, fmt  # fmt: skip
        assert changes(before, cli.rows(), keep_updated_at=True) == [], fmt

        update = cli.ok(cli.import_(path, "--on-duplicate", "update"))
        assert summary(update) == {"rows": total, "new": 0, "updated": total, "skipped": 0,
                                   "invalid": 0, "dry_run": False}, fmt  # fmt: skip
        assert changes(before, cli.rows()) == [], fmt
    assert changes(original, cli.rows()) == []


@pytest.mark.parametrize(
    "value",
    [
        "'=not a formula",
        "''=two apostrophes",
        "\tindented",
        "\rcarriage return",
        "'just an apostrophe",
    ],
)
def test_round_trip_keeps_values_that_look_escaped(cli: Cli, value: str) -> None:
    cli.insert([{"email": "edge@x.com", "first_name": value}])
    before = cli.rows()
    _, path = exported(cli, cli.ok(cli.export("csv", "--fields", "email,first_name")))
    cli.ok(cli.import_(path, "--on-duplicate", "update"))
    assert [r["first_name"] for r in cli.rows()] == [r["first_name"] for r in before] == [value]
