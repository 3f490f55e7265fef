"""The report queue end to end (issue #13 item 4 and 6): a real consumer of the report and
email queues on SQLite and Redis queue storage, the CRM store on SQLite, reports in all
three formats written under the files directory with their stable names, progress at 100,
headline figures in the result, and the report-ready email in the outbox; the
``crmqueue report --wait`` command against the same consumer."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from openpyxl import load_workbook
from pypdf import PdfReader

EVIL = '<img src="file:///etc/passwd">'


def _crm(broker: Any) -> Any:
    from crmqueue.crm import schema
    from crmqueue.crm.store import get_engine, init_db, now

    engine = get_engine(broker.settings.database.url)
    init_db(engine)
    stamp = now()
    with engine.begin() as conn:
        conn.execute(schema.users.insert().values(
            tenant_id="t1", user_id="u1", name="Ann Lee", email="ann@example.com",
            created_at=stamp, updated_at=stamp))  # fmt: skip
        rows = [
            # (amount, status, owner, close date)
            ("60000.00", "won", "Bob", dt.date(2025, 3, 10)),
            ("75000.50", "won", EVIL, dt.date(2025, 7, 1)),
            ("1000.00", "won", "Bob", dt.date(2025, 7, 2)),
            ("90000.00", "lost", "Bob", dt.date(2025, 8, 1)),
            ("99999.00", "won", "Bob", dt.date(2024, 12, 31)),  # before the range
        ]
        conn.execute(
            schema.leads.insert(),
            [
                {"tenant_id": "t1", "title": f"Deal {i}", "amount": Decimal(amount),
                 "currency": "USD", "status": status, "stage": "closed", "owner": owner,
                 "close_date": closed, "created_at": stamp, "updated_at": stamp}
                for i, (amount, status, owner, closed) in enumerate(rows)
            ],
        )  # fmt: skip
    return engine


def _report(fmt: str, **extra: Any) -> Any:
    from crmqueue import tasks

    fields: dict[str, Any] = {
        "tenant_id": "t1",
        "user_id": "u1",
        "report_type": "sales",
        "format": fmt,
        "date_range": {"start_date": "2025-01-01", "end_date": "2025-12-31"},
        "filters": {"status": "closed-won", "minAmount": 50000},
        "dimensions": ["month", "owner"],
    }
    fields.update(extra)
    return tasks.generate_report(**fields)


def test_reports_in_every_format_land_and_are_emailed(
    make_broker: Any, start_consumer: Any, tmp_path: Path
) -> None:
    from crmqueue import tasks
    from crmqueue.workers import BODY_MODULES

    assert "crmqueue.workers.report" in BODY_MODULES
    # registers the bodies before the broker
    import crmqueue.workers.email
    import crmqueue.workers.report  # noqa: F401

    broker = make_broker({"files.download_base_url": "https://crm.example.com/files/"})
    _crm(broker)
    files_dir = broker.settings.files.dir
    start_consumer(broker, ["report", "email", "notification"])
    jobs = {fmt: _report(fmt) for fmt in ("pdf", "xlsx", "html")}
    results = {}
    jobs_result_paths: dict[str, str] = {}
    for fmt, job in jobs.items():
        info = job.wait(60)
        assert info.state == "completed", info.errors
        assert info.progress == 100
        result = info.result
        assert result["path"] == f"reports/t1/sales-2025-01-01-2025-12-31-{job.id}.{fmt}"
        path = files_dir / result["path"]
        assert path.is_file() and result["size"] == path.stat().st_size > 0
        assert result["download_url"] == "https://crm.example.com/files/" + result["path"]
        assert result["empty"] is False
        assert result["figures"], result
        results[fmt] = (path, result["figures"])
        jobs_result_paths[fmt] = result["path"]
        mail = tasks.Job(result["notified"]["email"]["job_id"], "email").wait(30)
        assert mail.state == "completed", mail.errors
        # finding 8: an in-app notification too, as imports and exports make
        note = result["notification"]
        assert note["category"] == "report.ready", note
        done = tasks.Job(note["job_id"], "notification").wait(30)
        assert done.state == "completed", done.errors

    # the two won deals of at least 50,000 in 2025: 60,000.00 + 75,000.50
    money = [f for f in results["pdf"][1] if f.get("currency") == "USD" and f["value"]]
    assert any(Decimal(f["value"]) == Decimal("135000.50") for f in money), money
    assert not list(files_dir.glob("reports/t1/.*.partial"))

    pdf = "\n".join(page.extract_text() for page in PdfReader(results["pdf"][0]).pages)
    assert "Sales report" in pdf and "Page 1 of" in pdf
    assert "135,000.50" in pdf
    book = load_workbook(results["xlsx"][0])
    assert book.sheetnames[0] == "Summary" and book["Summary"]._charts
    page = results["html"][0].read_text(encoding="utf-8")
    assert "&lt;img src=" in page and "<img" not in page

    from crmqueue import notifications
    from crmqueue.crm.store import get_engine

    inbox = notifications.list("t1", "u1", engine=get_engine(broker.settings.database.url))
    assert sorted((n.category, n.title, n.message, n.action_url) for n in inbox.items) == sorted(
        ("report.ready", "Report ready",
         f"Your Sales report 2025-01-01 – 2025-12-31 ({fmt.upper()}) is ready to download.",
         "https://crm.example.com/files/" + jobs_result_paths[fmt])
        for fmt in ("pdf", "xlsx", "html")
    )  # fmt: skip

    outbox = broker.settings.email.outbox_dir
    sent = [message_from_bytes(p.read_bytes(), policy=policy.default) for p in outbox.glob("*.eml")]
    assert len(sent) == 3
    for message in sent:
        assert message["To"] == "ann@example.com"
        assert message["Subject"].startswith("Your report is ready: Sales report")
        text = message.get_body(preferencelist=("plain",)).get_content()
        assert "Hi Ann," in text and "https://crm.example.com/files/reports/t1/sales-" in text


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_empty_period_and_the_command_line(
    make_broker: Any, start_consumer: Any, tmp_path: Path
) -> None:
    import crmqueue.workers.email
    import crmqueue.workers.report  # noqa: F401
    from crmqueue import tasks
    from crmqueue.cli import main

    broker = make_broker()
    _crm(broker)
    settings = broker.settings
    start_consumer(broker, ["report", "email"])
    info = _report("html", date_range={"start_date": "2019-01-01", "end_date": "2019-03-31"}).wait(
        60
    )
    assert info.state == "completed", info.errors
    assert info.result["empty"] is True
    page = (settings.files.dir / info.result["path"]).read_text(encoding="utf-8")
    # the filters could be why: the report says so rather than blaming the period
    assert "Nothing in this period matches the filters." in page
    assert "No data in this period." not in page
    assert info.result["note"] == "Nothing in this period matches the filters."
    # without files.download_base_url the email links the file by its absolute path
    assert info.result["download_url"] == info.result["file"]
    mail = tasks.Job(info.result["notified"]["email"]["job_id"], "email").wait(30)
    assert mail.state == "completed", mail.errors

    config = tmp_path / "cli.toml"
    config.write_text(
        "\n".join(
            [
                "[storage]",
                f'url = "{settings.storage.url}"',
                "[database]",
                f'url = "{settings.database.url}"',
                "[files]",
                f'dir = "{settings.files.dir}"',
                "[email]",
                f'outbox_dir = "{settings.email.outbox_dir}"',
            ]
        )
        + "\n"
    )
    run = CliRunner().invoke(
        main,
        ["report", "--config", str(config), "--type", "sales", "--format", "xlsx",
         "--from", "2025-01-01", "--to", "2025-12-31", "--filter", "status=closed-won",
         "--dimension", "month", "--tenant", "t1", "--user", "u1", "--wait",
         "--timeout", "60"],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    lines = run.stdout.splitlines()
    job_id = lines[0]
    produced = settings.files.dir / "reports" / "t1" / f"sales-2025-01-01-2025-12-31-{job_id}.xlsx"
    assert produced.is_file()
    assert f"Sales report ({produced.stat().st_size:,} bytes): {produced}" in run.stdout
    # the three won deals of 2025 (any amount): 60,000.00 + 75,000.50 + 1,000.00
    assert "136,000.50 USD" in run.stdout

    # finding 7: `enqueue report --wait` prints the file and the figures too
    payload = {"tenantId": "t1", "userId": "u1", "reportType": "sales", "format": "html",
               "dateRange": {"startDate": "2025-01-01", "endDate": "2025-12-31"},
               "filters": {"status": "closed-won"}}  # fmt: skip
    run = CliRunner().invoke(
        main,
        ["enqueue", "report", "--config", str(config), "--json", json.dumps(payload),
         "--wait", "--timeout", "60"],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    job_id = run.stdout.splitlines()[0]
    produced = settings.files.dir / "reports" / "t1" / f"sales-2025-01-01-2025-12-31-{job_id}.html"
    assert f"Sales report ({produced.stat().st_size:,} bytes): {produced}" in run.stdout
    assert "Won revenue (USD): 136,000.50 USD" in run.stdout

    bad = CliRunner().invoke(
        main,
        ["report", "--config", str(config), "--type", "sales", "--format", "pdf",
         "--from", "2025-02-01", "--to", "2025-01-01"],
    )  # fmt: skip
    assert bad.exit_code != 0
    assert "end_date" in bad.output
