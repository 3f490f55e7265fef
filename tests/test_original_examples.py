"""The original system's own example calls (tests/data/original-examples.json, a copy of
the acceptance list ../shared/original-examples.json): each validates as written
(camelCase) through ``crmqueue.tasks.enqueue`` and, with a real consumer running every
queue and the CRM database initialised, ends in the state the file gives.

- ``files`` of the JSON are written into the files directory (``[files] dir``): a relative
  ``fileUrl`` such as ``contacts.csv`` names a file there (the import worker resolves it
  under that directory and refuses anything outside it).
- A queue without job bodies would keep its examples: they
  validate and then stay ``waiting`` (a consumer runs no worker for a queue without
  bodies). Once a queue's body module is in ``crmqueue.workers.BODY_MODULES`` the test
  expects the file's own end state for it instead (and its "then" clause still needs a
  check here: a notification inbox, a webhook endpoint). No body is faked.
"""

from __future__ import annotations

import importlib
import json
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import QUEUES

EXAMPLES_FILE = Path(__file__).resolve().parent / "data" / "original-examples.json"
ORIGINAL = json.loads(EXAMPLES_FILE.read_text(encoding="utf-8"))
EXAMPLES = {example["name"]: example for example in ORIGINAL["examples"]}


def _load_bodies() -> None:
    """Import the built-in body modules (as `crmqueue run` does) before a broker is built:
    a queue registers the bodies known when it is created."""
    from crmqueue.workers import BODY_MODULES

    for module in BODY_MODULES:
        importlib.import_module(module)


def _expected_state(example: dict[str, Any], has_bodies: bool) -> str:
    if not has_bodies:
        return "waiting"  # its queue has no bodies yet
    return str(example["expect"].split()[0])  # "completed", or "dead when ..." (webhook)


def _sent_email(outbox: Path, job_id: str) -> Any:
    """The .eml the outbox provider wrote for this job (its Message-ID or file name holds
    the job id), else the only one."""
    files = sorted(outbox.glob("*.eml"))
    mine = [f for f in files if job_id in f.name or job_id in f.read_text(errors="replace")]
    (found,) = mine or files
    return message_from_bytes(found.read_bytes(), policy=policy.default)


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_original_example(name: str, make_broker: Any, start_consumer: Any, tmp_path: Path) -> None:
    example = EXAMPLES[name]
    _load_bodies()
    from crmqueue import jobs, tasks
    from crmqueue.crm import schema
    from crmqueue.crm.store import get_engine, init_db

    # The webhook example ends at a loopback receiver: allowed only through [outbound].
    loopback = {"outbound.allowed_networks": ["127.0.0.0/8"]}
    broker = make_broker(loopback if example["queue"] == "webhook" else None)
    settings = broker.settings
    files_dir = Path(settings.files.dir)
    files_dir.mkdir(parents=True, exist_ok=True)
    for file_name, content in ORIGINAL["files"].items():
        (files_dir / file_name).write_text(content, encoding="utf-8")
    crm = get_engine(settings.database.url)
    init_db(crm)
    consumer = start_consumer(broker, QUEUES)

    job = tasks.enqueue(
        example["queue"],
        example["payload"],
        kind=example.get("kind"),
        priority=example.get("options", {}).get("priority"),
    )
    queue = broker.queue(example["queue"])
    expected = _expected_state(example, queue.has_bodies)
    if expected == "waiting":
        # No worker runs for a queue without bodies: the job can only wait. It completes
        # once that queue's bodies exist (crmqueue.workers.BODY_MODULES).
        (runner,) = [r for r in consumer.runners if r.queue.name == example["queue"]]
        assert runner.workers == 0
        info = jobs.get(job.id)
        assert (info.state, info.attempts) == ("waiting", 0)
        assert info.payload["tenant_id"] == example["payload"]["tenantId"]
        return

    info = job.wait(60)
    assert info.state == expected, info.errors
    payload = example["payload"]
    if example["queue"] == "email":
        message = _sent_email(Path(settings.email.outbox_dir), job.id)
        assert message["To"] == payload["to"]
        assert message["Subject"] == payload["subject"]
        text = message.get_body(preferencelist=("plain",)).get_content()
        for value in payload["context"].values():
            assert value in text, f"{value!r} not in the email's text:\n{text}"
    elif example.get("kind") == "import":
        # then: two contacts exist in tenant-123, named 'Jane Roe' and 'Li Wei'
        contacts = schema.contacts
        with crm.connect() as conn:
            rows = conn.execute(
                contacts.select().where(contacts.c.tenant_id == payload["tenantId"])
            ).mappings()
            found = sorted((r["name"], r["email"], r["company"]) for r in rows)
        assert found == [
            ("Jane Roe", "jane.roe@example.com", "Acme Corp"),
            ("Li Wei", "li.wei@example.com", "Globex"),
        ]
        assert info.result["counts"]["new"] == 2
    elif example.get("kind") == "export":
        # then: an .xlsx file with the header id, name, email, company, status
        from openpyxl import load_workbook

        path = files_dir / info.result["path"]
        assert path.suffix == ".xlsx"
        workbook = load_workbook(path, read_only=True)
        header = next(workbook.active.iter_rows(max_row=1, values_only=True))
        workbook.close()
        assert list(header) == payload["fields"] == ["id", "name", "email", "company", "status"]
    elif example["queue"] == "notification":
        # then: user-456 of tenant-123 has one unread notification titled 'New Lead'
        from crmqueue import notifications

        tenant, user = payload["tenantId"], payload["userId"]
        assert notifications.unread_count(tenant, user, engine=crm) == 1
        (stored,) = notifications.list(tenant, user, engine=crm).items
        expected = ("New Lead", payload["message"], payload["actionUrl"], False)
        assert (stored.title, stored.message, stored.action_url, stored.read) == expected
        assert info.result["channels"] == {"in-app": {"status": "stored", "id": stored.id}}
    elif example["queue"] == "report":
        # a PDF under the files directory, named by type, range and job id
        from pypdf import PdfReader

        path = files_dir / info.result["path"]
        start, end = payload["dateRange"]["startDate"], payload["dateRange"]["endDate"]
        assert info.result["path"] == (
            f"reports/{payload['tenantId']}/{payload['reportType']}-{start}-{end}-{job.id}.pdf"
        )
        text = "".join(page.extract_text() for page in PdfReader(path).pages)
        assert "Sales report" in text and "closed-won" in text and "Page 1 of" in text
    elif example["queue"] == "webhook":
        # dead while tenant-123 has no endpoint webhook-789, naming it; then completed once
        # that endpoint exists and a (loopback) receiver answers 2xx
        assert info.attempts == 1
        assert "'webhook-789' not found for tenant 'tenant-123'" in info.errors[-1]["message"]
        _deliver_once_the_endpoint_exists(example)


def _deliver_once_the_endpoint_exists(example: dict[str, Any]) -> None:
    from crmqueue import tasks, webhooks
    from tests.webhook_receiver import WebhookReceiver

    payload = example["payload"]
    with WebhookReceiver() as receiver:
        _, secret = webhooks.service().add(
            payload["tenantId"], receiver.url("/hook"), webhook_id=payload["webhookId"]
        )
        receiver.endpoint("/hook", secret)
        job = tasks.enqueue(example["queue"], payload, kind=example.get("kind"))
        info = job.wait(60)
        assert info.state == "completed", info.errors
        (request,) = receiver.received("/hook")
        assert request.verified, request.failures
        body = request.json()
        assert (body["type"], body["data"]) == (payload["eventType"], payload["payload"])
