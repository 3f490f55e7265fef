"""A sales report over 100,000 leads (issue #13's targets): HTML under 2 s, XLSX under 3 s,
PDF under 5 s, peak RSS under 200 MB, on SQLite and PostgreSQL.

    .venv/bin/python -m bench.report --task seed --db sqlite --leads 100000 --dir D
    .venv/bin/python -m bench.report --task report --url URL --format pdf

The seed task fills a fresh CRM database (tenant "bench": 100,000 leads over 2025, eight
owners, two currencies, won, lost and open); each report then runs in a process of its
own (peak RSS is per process) and prints one JSON line: the query (build_report, SQL
aggregates), the rendering and the whole, in seconds, and the process's peak RSS with the
interpreter and libraries. The report is the job's: the whole year, month dimension and
by owner (`--dimension month --dimension owner`), all statuses.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import resource
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.common import median

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
TENANT = "bench"
OWNERS = ["Ana Silva", "Ben Okafor", "Chloé Martin", "Dmitri Volkov", "Emma Larsen",
          "Farid Haddad", "Grace Kim", "Hiro Tanaka"]  # fmt: skip
STAGES = ["new", "qualified", "proposal", "negotiation", "closed"]
FORMATS = ("html", "xlsx", "pdf")
TARGETS = {"html": 2.0, "xlsx": 3.0, "pdf": 5.0}
RSS_TARGET_MB = 200


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lead_rows(count: int) -> list[dict[str, Any]]:
    rng = random.Random(13)
    stamp = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    rows = []
    for n in range(count):
        day = dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(365))
        status = rng.choices(("won", "lost", "open"), (3, 2, 5))[0]
        rows.append({
            "tenant_id": TENANT, "title": f"Deal {n}",
            "amount": Decimal(rng.randrange(500_00, 250_000_00)) / 100,
            "currency": "EUR" if rng.random() < 0.25 else "USD", "status": status,
            "stage": "closed" if status != "open" else rng.choice(STAGES[:-1]),
            "owner": OWNERS[n % len(OWNERS)], "close_date": day,
            "created_at": stamp + dt.timedelta(minutes=n), "updated_at": stamp,
        })  # fmt: skip
    return rows


def seed(url: str, count: int) -> dict[str, Any]:
    import sqlalchemy as sa

    from crmqueue.crm import schema
    from crmqueue.crm.store import create_engine, init_db

    engine = create_engine(url)
    init_db(engine)
    started = time.monotonic()
    rows = lead_rows(count)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            names = list(rows[0])
            raw = conn.connection.driver_connection
            assert raw is not None
            columns = ", ".join(f'"{n}"' for n in names)
            with raw.cursor() as cursor, cursor.copy(f"COPY leads ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row([row[n] for n in names])
        else:
            conn.execute(schema.leads.insert(), rows)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(sa.text("ANALYZE leads"))
            conn.commit()
    engine.dispose()
    return {"leads": count, "seconds": round(time.monotonic() - started, 2)}


def report(url: str, fmt: str, workdir: Path) -> dict[str, Any]:
    from crmqueue.config import load_settings
    from crmqueue.payloads import ReportPayload
    from crmqueue.reports.queries import build_report
    from crmqueue.reports.render import render_html, render_pdf, render_xlsx

    settings = load_settings(
        config_file=None,
        overrides={"database.url": url, "files.dir": str(workdir)},
        environ={},
    )
    payload = ReportPayload.model_validate({
        "tenant_id": TENANT, "user_id": "bench", "report_type": "sales", "format": fmt,
        "date_range": {"start_date": "2025-01-01", "end_date": "2025-12-31"},
        "dimensions": ["month", "owner"],
    })  # fmt: skip
    started = time.monotonic()
    data = build_report(settings, payload)
    queried = time.monotonic()
    path = workdir / f"report-{uuid.uuid4().hex}.{fmt}"
    if fmt == "html":
        path.write_bytes(render_html(data))
    elif fmt == "pdf":
        render_pdf(data, path)
    else:
        render_xlsx(data, path)
    done = time.monotonic()
    size = path.stat().st_size
    path.unlink()
    return {
        "format": fmt,
        "query_s": round(queried - started, 3),
        "render_s": round(done - queried, 3),
        "seconds": round(done - started, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "bytes": size,
    }


# --------------------------------------------------------------------------- collect


def _run(args: list[str]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.report", *args], cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"bench.report {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def _postgres_database() -> str | None:
    try:
        import psycopg

        name = f"crmqueue_bench_report_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # no PostgreSQL here: SQLite only
        print(f"PostgreSQL not measured: {exc}", file=sys.stderr)
        return None
    return name


def _drop(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def collect(runs: int, leads: int, workdir: Path) -> dict[tuple[str, str], dict[str, float]]:
    """Median figures per (database, format) over `runs` report processes each."""
    urls = {"sqlite": f"sqlite:///{workdir}/crm.db"}
    pg = _postgres_database()
    if pg is not None:
        urls["postgresql"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg}"
    results: dict[tuple[str, str], dict[str, float]] = {}
    try:
        for db, url in urls.items():
            print(f"seed {db}: {_run(['--task', 'seed', '--url', url, '--leads', str(leads)])}")
            for fmt in FORMATS:
                samples = []
                for _ in range(runs):
                    task = ["--task", "report", "--url", url, "--format", fmt]
                    samples.append(_run([*task, "--dir", str(workdir)]))
                    print(f"{db} {fmt}: {samples[-1]}", flush=True)
                results[(db, fmt)] = {
                    key: median([s[key] for s in samples])
                    for key in ("query_s", "render_s", "seconds", "peak_rss_mb", "bytes")
                }
    finally:
        if pg is not None:
            _drop(pg)
    return results


def section(results: dict[tuple[str, str], dict[str, float]], runs: int, leads: int) -> list[str]:
    lines = [
        "## Reports",
        "",
        f"A sales report over {leads:,} leads (issue #13): the year 2025, month dimension and"
        " by owner, eight owners, two currencies. Each report runs in a fresh process:"
        " `build_report` (SQL aggregates) then the renderer; peak RSS is the process's,"
        f" interpreter and libraries included. Medians of {runs} runs.",
        "",
        "| database | format | query s | render s | total s | target | peak RSS MB | file |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for (db, fmt), r in sorted(results.items()):
        ok = r["seconds"] < TARGETS[fmt] and r["peak_rss_mb"] < RSS_TARGET_MB
        lines.append(
            f"| {db} | {fmt} | {r['query_s']:.2f} | {r['render_s']:.2f} | {r['seconds']:.2f}"
            f" | < {TARGETS[fmt]:g} s, < {RSS_TARGET_MB} MB {'met' if ok else 'MISSED'}"
            f" | {r['peak_rss_mb']:.0f} | {r['bytes'] / 1024:,.0f} KB |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("seed", "report", "all"), default="all")
    parser.add_argument("--url", default="")
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--format", choices=FORMATS, default="pdf")
    parser.add_argument("--dir", default="")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.task == "seed":
        print(json.dumps(seed(args.url, args.leads)))
    elif args.task == "report":
        print(json.dumps(report(args.url, args.format, Path(args.dir))))
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="crmqueue-bench-") as workdir:
            results = collect(args.runs, args.leads, Path(workdir))
        print("\n".join(section(results, args.runs, args.leads)))


if __name__ == "__main__":
    main()
