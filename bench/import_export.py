"""Import and export at a million rows (issue #5's targets), with peak memory.

    .venv/bin/python -m bench.import_export --task import --db sqlite --rows 1000000 --dir D

Each task runs in its own process and prints one JSON line: seconds, rows/s and the
process's peak RSS (interpreter and libraries included). `collect` runs them all against
one generated CSV of contacts:

- import: the real `Importer` (validation, duplicate lookup, batches of 100 with
  checkpoints) from CSV into SQLite and into PostgreSQL; the floor beside it is the same
  rows bulk-inserted with the stdlib csv and sqlite3 modules and nothing else.
- import-xlsx: the same rows from one XLSX sheet (XlsxWriter, inline strings) into SQLite,
  once through each XLSX reader (`--reader`): openpyxl's streaming reader (the only one
  before; still used for sheets over CALAMINE_MAX_SHEET_BYTES of XML) and python-calamine.
- export: the real `run_export` to CSV and XLSX from the imported SQLite database; floors:
  the stdlib csv writer over a raw cursor, and openpyxl's write-only mode (the library the
  XLSX writer replaced) on a tenth of the rows.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
COLUMNS = ["email", "first_name", "last_name", "phone", "company", "title", "city", "country"]
CITIES = [("Berlin", "Germany"), ("Lyon", "France"), ("Austin", "USA"), ("Osaka", "Japan")]


def generate(path: Path, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for n in range(rows):
            city, country = CITIES[n % len(CITIES)]
            writer.writerow([
                f"person{n}@example{n % 97}.com", f"First{n}", f"Last{n}", f"+1 555 {n:07d}",
                f"Company {n % 5000}", "Account Manager", city, country,
            ])  # fmt: skip


def generate_xlsx(path: Path, rows: int) -> None:
    import xlsxwriter  # type: ignore[import-untyped]

    book = xlsxwriter.Workbook(str(path), {"constant_memory": True})
    sheet = book.add_worksheet("contacts")
    sheet.write_row(0, 0, COLUMNS)
    for n in range(rows):
        city, country = CITIES[n % len(CITIES)]
        sheet.write_row(n + 1, 0, [
            f"person{n}@example{n % 97}.com", f"First{n}", f"Last{n}", f"+1 555 {n:07d}",
            f"Company {n % 5000}", "Account Manager", city, country,
        ])  # fmt: skip
    book.close()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- tasks


def task_import(db_url: str, files: Path, file_type: str = "csv", reader: str = "") -> int:
    from crmqueue.crm.store import get_engine
    from crmqueue.formats.readers import spreadsheet
    from crmqueue.payloads import ImportPayload
    from crmqueue.workers.import_export import Importer

    if reader:  # force one XLSX reader, whatever the sheet's size
        spreadsheet.CALAMINE_MAX_SHEET_BYTES = 0 if reader == "openpyxl" else 1 << 62
    payload = ImportPayload(
        tenant_id="t1", user_id="u1", file_url=f"contacts.{file_type}", file_type=file_type,
        entity_type="contacts",
    )  # fmt: skip
    result = Importer(payload, get_engine(db_url), files, uuid.uuid4().hex, lambda _: None).run()
    assert result["counts"]["invalid"] == 0, result["errors"][:3]
    rows: int = result["counts"]["new"]
    return rows


def task_import_floor(db_path: Path, files: Path) -> int:
    """The same rows into the same table by csv + executemany: the database's own cost."""
    from crmqueue.crm.store import create_engine, init_db

    init_db(create_engine(f"sqlite:///{db_path}"))
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    stamp = dt.datetime.now(dt.UTC).isoformat()
    sql = (
        f"insert into contacts (tenant_id, {', '.join(COLUMNS)}, created_at, updated_at)"
        f" values ('t1', {', '.join('?' * len(COLUMNS))}, ?, ?)"
    )
    count = 0
    with (files / "contacts.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)
        batch: list[list[str]] = []
        for record in reader:
            batch.append([*record, stamp, stamp])
            if len(batch) == 1000:
                with conn:
                    conn.executemany(sql, batch)
                count += len(batch)
                batch = []
        with conn:
            conn.executemany(sql, batch)
        count += len(batch)
    conn.close()
    return count


def task_export(db_url: str, files: Path, fmt: str) -> int:
    from crmqueue.crm.store import get_engine
    from crmqueue.payloads import ExportPayload
    from crmqueue.workers.import_export import run_export

    payload = ExportPayload(tenant_id="t1", user_id="u1", entity_type="contacts", format=fmt)
    rows: int = run_export(payload, get_engine(db_url), files, uuid.uuid4().hex, lambda _: None)[
        "rows"
    ]
    return rows


def _raw_rows(db_path: Path, limit: int | None) -> tuple[list[str], Any]:
    conn = sqlite3.connect(db_path)
    cursor = conn.execute(
        "select * from contacts where tenant_id = 't1' order by id"
        + (f" limit {int(limit)}" if limit else "")
    )
    return [d[0] for d in cursor.description], cursor


def task_export_csv_floor(db_path: Path, files: Path) -> int:
    columns, cursor = _raw_rows(db_path, None)
    count = 0
    with (files / "floor.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for record in cursor:
            writer.writerow(record)
            count += 1
    return count


def task_export_xlsx_openpyxl(db_path: Path, files: Path, limit: int) -> int:
    from openpyxl import Workbook  # type: ignore[import-untyped]

    columns, cursor = _raw_rows(db_path, limit)
    book = Workbook(write_only=True)
    sheet = book.create_sheet("contacts")
    sheet.append(columns)
    count = 0
    for record in cursor:
        sheet.append(list(record))
        count += 1
    book.save(files / "floor.xlsx")
    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--task",
        required=True,
        choices=["import", "import-floor", "import-xlsx", "export-csv", "export-csv-floor",
                 "export-xlsx", "export-xlsx-openpyxl"],
    )  # fmt: skip
    parser.add_argument("--reader", choices=["calamine", "openpyxl"], default="calamine")
    parser.add_argument("--db", default="sqlite", help="sqlite, or a PostgreSQL URL")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    files = args.dir / "files"
    db_path = args.dir / "crm.db"
    db_url = f"sqlite:///{db_path}" if args.db == "sqlite" else args.db
    # Loaded before the clock starts, as in a worker that is already running.
    import openpyxl  # noqa: F401
    import xlsxwriter  # type: ignore[import-untyped]  # noqa: F401

    import crmqueue.workers.import_export  # noqa: F401

    start, cpu_start = time.perf_counter(), cpu_seconds()
    if args.task == "import":
        rows = task_import(db_url, files)
    elif args.task == "import-xlsx":
        rows = task_import(db_url, files, "xlsx", args.reader)
    elif args.task == "import-floor":
        rows = task_import_floor(args.dir / "floor.db", files)
    elif args.task == "export-csv":
        rows = task_export(db_url, files, "csv")
    elif args.task == "export-xlsx":
        rows = task_export(db_url, files, "xlsx")
    elif args.task == "export-csv-floor":
        rows = task_export_csv_floor(db_path, files)
    else:
        rows = task_export_xlsx_openpyxl(db_path, files, args.limit)
    seconds = time.perf_counter() - start
    figures = {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        # CPU seconds of the task (user + system, the clock's start included): on a shared
        # host the wall time also counts the time other processes held the cores.
        "cpu_s": round(cpu_seconds() - cpu_start, 2),
    }
    print(json.dumps(figures))


# --------------------------------------------------------------------------- orchestration


def _run(task: str, workdir: Path, *extra: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.import_export", "--task", task, "--dir", str(workdir),
         *extra],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"{task} failed:\n{result.stderr[-2000:]}")
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def _pg_database() -> str:
    import psycopg

    name = f"crmqueue_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name


def _drop_pg(name: str) -> None:
    import psycopg

    from crmqueue.crm.store import dispose_engines

    dispose_engines()
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def collect(
    runs: int, rows: int, workdir: Path, postgres: bool = True
) -> dict[str, dict[str, float]]:
    """Median figures per task over `runs` runs, each on a fresh database."""
    from bench.common import median

    samples: dict[str, list[dict[str, float]]] = {}
    source = workdir / "source.csv"
    generate(source, rows)
    xlsx_source = workdir / "source.xlsx"
    generate_xlsx(xlsx_source, rows)
    for run in range(runs):
        run_dir = workdir / f"run{run}"
        shutil.rmtree(run_dir, ignore_errors=True)
        (run_dir / "files").mkdir(parents=True)
        shutil.copy(source, run_dir / "files" / "contacts.csv")
        shutil.copy(xlsx_source, run_dir / "files" / "contacts.xlsx")
        plan: list[tuple[str, str, list[str]]] = [
            ("import", "import", []),
            ("import-floor", "import-floor", []),
            ("export-csv", "export-csv", []),
            ("export-csv-floor", "export-csv-floor", []),
            ("export-xlsx", "export-xlsx", []),
            ("export-xlsx-openpyxl", "export-xlsx-openpyxl", ["--limit", str(max(1, rows // 10))]),
        ]
        for reader in ("openpyxl", "calamine"):  # each into a database of its own
            db = f"sqlite:///{run_dir / f'xlsx-{reader}.db'}"
            plan.append((f"import-xlsx-{reader}", "import-xlsx", ["--reader", reader, "--db", db]))
        for key, task, extra in plan:
            figures = _run(task, run_dir, *extra)
            samples.setdefault(key, []).append(figures)
            print(f"run {run + 1}/{runs} import-export {key}: {figures}", flush=True)
        if postgres:
            name = _pg_database()
            try:
                figures = _run(
                    "import", run_dir, "--db", f"postgresql://postgres@127.0.0.1:5432/{name}"
                )
            finally:
                _drop_pg(name)
            samples.setdefault("import-postgresql", []).append(figures)
            print(f"run {run + 1}/{runs} import-export import-postgresql: {figures}", flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    return {
        task: {key: median([s[key] for s in values]) for key in values[0]}
        for task, values in samples.items()
    }


def section(results: dict[str, dict[str, float]], runs: int) -> list[str]:
    rows = int(results["import"]["rows"])

    def line(label: str, task: str, floor: str, target: str) -> str:
        r = results[task]
        base = results.get(floor)
        ratio = f"{r['rows_per_s'] / base['rows_per_s']:.2f}×" if base else "–"
        floor_cell = f"{base['rows_per_s']:,.0f}/s" if base else "–"
        return (
            f"| {label} | {r['seconds']:.1f} s | {r['rows_per_s']:,.0f}/s |"
            f" {r['peak_rss_mb']:.0f} MB | {floor_cell} | {ratio} | {target} |"
        )

    imp, csv_out, xlsx_out = results["import"], results["export-csv"], results["export-xlsx"]
    met = lambda ok: "met" if ok else "**missed**"  # noqa: E731
    lines = [
        "## Import and export",
        "",
        f"{rows:,} contacts (8 columns, unique emails) from one CSV file; medians of {runs}"
        " runs, each on a fresh database. Import: the real importer (per-row validation,"
        " duplicate lookup against the database, batches of 100 rows each committed with its"
        " checkpoint). Floors: the same work with nothing of ours in it (stdlib csv + sqlite3"
        " `executemany` for the import and the CSV export; openpyxl's write-only mode, on"
        f" {max(1, rows // 10):,} rows, for XLSX). Peak RSS is the whole process's.",
        "",
        "| task | time | rows/s | peak RSS | floor | ratio to floor | target |",
        "|---|---:|---:|---:|---:|---:|---|",
        line("import CSV → SQLite", "import", "import-floor",
             f"< 60 s, < 200 MB: {met(imp['seconds'] < 60 and imp['peak_rss_mb'] < 200)}"),
    ]  # fmt: skip
    if "import-postgresql" in results:
        lines.append(line("import CSV → PostgreSQL", "import-postgresql", "", "reported"))
    if "import-xlsx-calamine" in results:
        lines += [
            line("import XLSX → SQLite, openpyxl streaming reader (before)",
                 "import-xlsx-openpyxl", "", "reported"),
            line("import XLSX → SQLite, python-calamine (floor: openpyxl)",
                 "import-xlsx-calamine", "import-xlsx-openpyxl", "reported"),
        ]  # fmt: skip
    lines += [
        line("export SQLite → CSV", "export-csv", "export-csv-floor",
             f"< 30 s: {met(csv_out['seconds'] < 30)}"),
        line("export SQLite → XLSX", "export-xlsx", "export-xlsx-openpyxl",
             f"< 120 s, flat memory: {met(xlsx_out['seconds'] < 120)}"),
        "",
    ]  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
