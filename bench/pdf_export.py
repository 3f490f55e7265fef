"""Time and peak memory of the PDF export writer (crmqueue.formats.pdf.write_pdf).

    .venv/bin/python -m bench.pdf_export                           # 1,000 / 10,000 / 50,000 rows
    .venv/bin/python -m bench.pdf_export --rows 1000,5000 --chunk 0   # one xhtml2pdf call
    .venv/bin/python -m bench.pdf_export --rows 1000 --columns 16 --script cjk

Each size runs in a fresh process (peak RSS is per process), with the first --columns
(default 6) of the 16 contact export fields, values like `crmqueue db seed` makes; --script
cjk gives every name in Chinese, Japanese or Korean (the fallback fonts). --chunk 0 renders
all rows in one xhtml2pdf call, which is what the chunking in write_pdf avoids. The time
that matters for the files.max_pdf_cells limit is cpu_ms_per_cell: wall time follows the
machine's load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

# crmqueue.crm.entities.export_fields("contacts"), widest-used first
COLUMNS = ["id", "email", "first_name", "last_name", "company", "created_at", "name",
           "phone", "title", "city", "country", "source", "status", "external_id",
           "company_id", "updated_at"]  # fmt: skip
LATIN = [("Chloé", "Thomas"), ("Robert", "Miller"), ("Jürgen", "O'Brien")]
CJK = [("太郎", "山田"), ("小明", "王"), ("민준", "김"), ("花子", "佐藤")]


def rows(count: int, columns: int, script: str) -> Iterator[tuple[Any, ...]]:
    created = dt.datetime(2024, 5, 1, 9, 30, tzinfo=dt.UTC)
    names = CJK if script == "cjk" else LATIN
    for n in range(count):
        first, last = names[n % len(names)]
        company = f"Acme Widgets {Decimal(n % 500)} GmbH"
        at = created + dt.timedelta(minutes=n)
        row = (n, f"person.{n}@example.com", first, last, company, at, f"{first} {last}",
               f"+1-555-{n % 10000:04d}", "Head of Marketing", "London", "GB", "web",
               "prospect", f"ext-{n}", n % 250, at)  # fmt: skip
        yield row[:columns]


def one(count: int, chunk: int | None, columns: int, script: str) -> dict[str, Any]:
    from crmqueue.formats.pdf import write_pdf

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "export.pdf"
        started, cpu = time.monotonic(), time.process_time()
        written = write_pdf(path, COLUMNS[:columns], rows(count, columns, script),
                            title="contacts", max_cells=10**12,
                            chunk_rows=10**9 if chunk == 0 else chunk)  # fmt: skip
        seconds = time.monotonic() - started
        cpu = time.process_time() - cpu
        size = path.stat().st_size
        from pypdf import PdfReader

        pages = len(PdfReader(path).pages)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": written, "columns": columns, "script": script, "chunk": chunk,
            "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "cpu_ms_per_row": round(1000 * cpu / max(1, written), 2),
            "cpu_ms_per_cell": round(1000 * cpu / max(1, written * columns), 3),
            "peak_rss_mb": round(peak), "pages": pages, "kib": round(size / 1024)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1000,10000,50000")
    parser.add_argument("--chunk", type=int, default=None, help="rows per xhtml2pdf call")
    parser.add_argument("--columns", type=int, default=6, choices=range(1, len(COLUMNS) + 1))
    parser.add_argument("--script", choices=("latin", "cjk"), default="latin")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.chunk, args.columns, args.script)))
        return
    chunk = [] if args.chunk is None else ["--chunk", str(args.chunk)]
    for count in (int(n) for n in args.rows.split(",")):
        shape = ["--columns", str(args.columns), "--script", args.script]
        result = subprocess.run(
            [sys.executable, "-m", "bench.pdf_export", "--one", str(count), *chunk, *shape],
            capture_output=True,
            text=True,
            check=True,
        )
        print(result.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
