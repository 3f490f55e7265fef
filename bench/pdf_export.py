"""Time and peak memory of the PDF export writer (crmqueue.formats.pdf.write_pdf).

    .venv/bin/python -m bench.pdf_export                           # 1,000 / 10,000 / 50,000 rows
    .venv/bin/python -m bench.pdf_export --rows 1000,5000 --chunk 0   # one xhtml2pdf call

Each size runs in a fresh process (peak RSS is per process), with six columns of
contact-like data. --chunk 0 renders all rows in one xhtml2pdf call, which is what the
chunking in write_pdf avoids: compare the two to see why it chunks.
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

COLUMNS = ["id", "email", "first_name", "last_name", "company", "created_at"]


def rows(count: int) -> Iterator[tuple[Any, ...]]:
    created = dt.datetime(2024, 5, 1, 9, 30, tzinfo=dt.UTC)
    for n in range(count):
        company = f"Acme Widgets {Decimal(n % 500)} GmbH"
        yield (n, f"person{n}@example.com", "Ann", f"Smith-{n % 97}", company,
               created + dt.timedelta(minutes=n))  # fmt: skip


def one(count: int, chunk: int) -> dict[str, Any]:
    from crmqueue.formats.pdf import write_pdf

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "export.pdf"
        started = time.monotonic()
        written = write_pdf(path, COLUMNS, rows(count), title="contacts",
                            max_rows=10**9, chunk_rows=chunk or 10**9)  # fmt: skip
        seconds = time.monotonic() - started
        size = path.stat().st_size
        from pypdf import PdfReader

        pages = len(PdfReader(path).pages)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": written, "chunk": chunk, "seconds": round(seconds, 1),
            "ms_per_row": round(1000 * seconds / max(1, written), 2),
            "peak_rss_mb": round(peak), "pages": pages, "kib": round(size / 1024)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1000,10000,50000")
    parser.add_argument("--chunk", type=int, default=None, help="rows per xhtml2pdf call")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from crmqueue.formats.pdf import CHUNK_ROWS

    chunk = CHUNK_ROWS if args.chunk is None else args.chunk
    if args.one is not None:
        print(json.dumps(one(args.one, chunk)))
        return
    for count in (int(n) for n in args.rows.split(",")):
        result = subprocess.run(
            [sys.executable, "-m", "bench.pdf_export", "--one", str(count), "--chunk", str(chunk)],
            capture_output=True,
            text=True,
            check=True,
        )
        print(result.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
