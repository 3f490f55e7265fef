"""The report queue: sales, pipeline, contact-growth and activity reports as PDF, XLSX or
HTML (issue #13).

A job runs four steps, each reported as progress: the query (SQL aggregates,
crmqueue.reports.queries.build_report: 5 -> 40), the charts (-> 60), the rendering
(-> 90) and the write (-> 100). The file lands under the files directory as
``reports/<tenant>/<type>-<start>-<end>-<job id>.<ext>``, written beside its final name
and renamed into place, so a reader never sees half a report and a retried job
overwrites its own file; a partial file left by an attempt that was killed is removed by
its retry or, once older than the queue's timeout plus lease, by the next report's start.
Then the user who asked gets the ``report-ready`` email through
the email queue, as imports and exports tell theirs.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from crmqueue.config import Settings
from crmqueue.crm.store import get_engine
from crmqueue.engine.queues import get_broker, job
from crmqueue.engine.runner import current_job_id, report_progress
from crmqueue.errors import PermanentError
from crmqueue.payloads import REPORT_DATES, ReportPayload
from crmqueue.reports.model import ReportData, empty_message
from crmqueue.workers.import_export import download_url, notify_user
from crmqueue.workers.notification import notify_in_app

Progress = Callable[[float], None]


def _job_progress(percent: float) -> None:
    if current_job_id() is not None:
        report_progress(percent)


def report_path(files_dir: Path, payload: ReportPayload, job_id: str) -> Path:
    """Where a report lands (see the module docstring). The tenant id is one path segment
    by its payload pattern (letters, digits, '_', '.', '-'); '.' and '..' are refused."""
    if payload.tenant_id in (".", ".."):
        raise PermanentError(f"tenant_id {payload.tenant_id!r} cannot name a directory")
    rng = payload.date_range
    name = (
        f"{payload.report_type}-{rng.start_date.isoformat()}-{rng.end_date.isoformat()}"
        f"-{job_id}.{payload.format}"
    )
    return files_dir.resolve() / "reports" / payload.tenant_id / name


def sweep_partials(files_dir: Path, older_than: float) -> int:
    """Remove the partial report files (``reports/<tenant>/.<name>.partial``) last written
    more than `older_than` seconds ago: no attempt runs longer than the report queue's
    timeout, nor outlives its lease unnoticed, so such a file belongs to an attempt that
    died. Returns how many were removed; one vanishing meanwhile is not an error."""
    cutoff = time.time() - older_than
    removed = 0
    for path in (files_dir / "reports").glob("*/.*.partial"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def _json_value(value: Decimal | int | None) -> str | int | None:
    """A figure in the job's result: Decimal as its exact text (JSON numbers are floats)."""
    return str(value) if isinstance(value, Decimal) else value


def headline(data: ReportData) -> list[dict[str, Any]]:
    return [
        {
            "key": figure.key,
            "label": figure.label,
            "value": _json_value(figure.value),
            "kind": figure.kind,
            **({"currency": figure.currency} if figure.currency else {}),
        }
        for figure in data.figures
    ]


def run_report(
    payload: ReportPayload,
    settings: Settings,
    job_id: str | None,
    progress: Progress = _job_progress,
) -> dict[str, Any]:
    """Query, chart, render and write one report; returns the job's result (path under the
    files directory, absolute file, size in bytes, headline figures, whether the period
    had no data)."""
    from crmqueue.reports.queries import build_report
    from crmqueue.reports.render import render_html, render_pdf, render_xlsx

    final = report_path(settings.files.dir, payload, job_id or uuid.uuid4().hex)
    partial = final.with_name(f".{final.name}.partial")
    # An attempt killed mid-write (SIGKILL, a stalled lease) skips the finally below: the
    # retry removes its own leftover, and every report start sweeps those of jobs that died.
    partial.unlink(missing_ok=True)
    spec = settings.queues.report
    sweep_partials(settings.files.dir, spec.timeout_seconds + spec.lease_seconds)
    first, last = REPORT_DATES
    rng = payload.date_range
    if rng.start_date < first or rng.end_date > last:  # a job stored before the bound
        raise PermanentError(f"date_range: report dates run from {first} to {last}")
    progress(5)
    try:
        data = build_report(settings, payload)
    except (ValueError, OverflowError) as exc:
        # What validation refuses today (a filter, a dimension, a date beyond the years a
        # report accepts) in a job enqueued before it did: a retry would fail alike.
        raise PermanentError(str(exc)) from None
    progress(40)
    final.parent.mkdir(parents=True, exist_ok=True)

    def charted() -> None:
        progress(60)

    try:
        if payload.format == "html":
            partial.write_bytes(render_html(data, charted))
        elif payload.format == "pdf":
            render_pdf(data, partial, charted)
        else:
            render_xlsx(data, partial, charted)
        progress(90)
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    progress(100)
    files_dir = settings.files.dir.resolve()
    return {
        "report_type": payload.report_type,
        "format": payload.format,
        "title": data.title,
        "start_date": data.start.isoformat(),
        "end_date": data.end.isoformat(),
        "time_zone": data.time_zone,
        "path": final.relative_to(files_dir).as_posix(),
        "file": str(final),
        "size": final.stat().st_size,
        "empty": data.empty,
        **({"note": empty_message(data)} if data.empty else {}),
        "figures": headline(data),
    }


@job("report", payload=ReportPayload)
def generate_report(payload: ReportPayload) -> dict[str, Any]:
    """Generate a report file under the files directory (see the module docstring), then
    email the user who asked for it a link."""
    settings = get_broker().settings
    job_id = current_job_id()
    result = run_report(payload, settings, job_id)
    result["download_url"] = download_url(settings, result["path"])
    name = f"{result['title']} {result['start_date']} – {result['end_date']}"
    context = {"report_name": name, "download_url": result["download_url"]}
    engine = get_engine(settings.database.url)
    result["notified"] = notify_user(
        engine, payload.tenant_id, payload.user_id, "report-ready", context, job_id
    )
    result["notification"] = notify_in_app(
        payload.tenant_id, payload.user_id, category="report.ready", title="Report ready",
        message=f"Your {name} ({payload.format.upper()}) is ready to download.",
        # A link only where the CRM serves the files (else the URL is a path on disk).
        action_url=result["download_url"] if settings.files.download_base_url else None,
    )  # fmt: skip
    return result
