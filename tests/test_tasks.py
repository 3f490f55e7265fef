"""The client face: every typed task function, and what importing it loads."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from crmqueue import jobs, tasks
from crmqueue.engine.queues import Broker


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_each_typed_function_enqueues_on_its_queue(broker: Broker) -> None:
    calls: list[tuple[Any, dict[str, Any], str, str]] = [
        (tasks.send_email,
         {"tenant_id": "t1", "to": "a@example.com", "template": "welcome"},
         "email", "crmqueue.workers.email.send_email"),
        (tasks.import_records,
         {"tenant_id": "t1", "user_id": "u1", "file_url": "contacts.csv", "file_type": "csv",
          "entity_type": "contacts", "mapping_config": {"email": "E-mail"}},
         "import-export", "crmqueue.workers.import_export.import_records"),
        (tasks.export_records,
         {"tenant_id": "t1", "user_id": "u1", "entity_type": "leads", "format": "xlsx"},
         "import-export", "crmqueue.workers.import_export.export_records"),
        (tasks.generate_report,
         {"tenant_id": "t1", "user_id": "u1", "report_type": "pipeline", "format": "pdf",
          "date_range": {"startDate": "2026-01-01", "endDate": "2026-03-31"}},
         "report", "crmqueue.workers.report.generate_report"),
        (tasks.deliver_webhook,
         {"tenant_id": "t1", "webhook_id": "wh1", "event_type": "lead.won", "payload": {"id": 3}},
         "webhook", "crmqueue.workers.webhook.deliver_webhook"),
        (tasks.publish_event,
         {"tenant_id": "t1", "event_type": "contact.created", "payload": {"id": 1}},
         "webhook", "crmqueue.workers.webhook.publish_event"),
        (tasks.send_notification,
         {"tenant_id": "t1", "user_id": "u1", "type": "in-app", "title": "Hi",
          "message": "Your export is ready", "action_url": "/exports/1"},
         "notification", "crmqueue.workers.notification.send_notification"),
    ]  # fmt: skip
    for function, kwargs, queue, name in calls:
        job = function(**kwargs)
        info = jobs.get(job.id)
        assert (job.queue, info.queue, info.name, info.state, info.tenant) == (
            queue, queue, name, "waiting", "t1",
        )  # fmt: skip
        assert info.max_attempts == broker.queue(queue).spec.attempts
    (report,) = jobs.list_jobs("report", "waiting")
    assert report.payload["date_range"] == {"start_date": "2026-01-01", "end_date": "2026-03-31"}


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_generic_enqueue_accepts_the_original_camel_case_json(broker: Broker) -> None:
    original = {
        "tenantId": "t1", "userId": "u1", "fileUrl": "file:///x.csv", "fileType": "csv",
        "entityType": "contacts", "mappingConfig": {"email": "E-mail"}, "dryRun": True,
    }  # fmt: skip
    job = tasks.enqueue("import-export", original, kind="import")
    payload = jobs.get(job.id).payload
    assert payload["tenant_id"] == "t1" and payload["dry_run"] is True
    assert payload["mapping_config"] == {"email": "E-mail"}
    assert "tenantId" not in json.dumps(payload)


def test_importing_the_client_face_loads_no_worker_side_library() -> None:
    probe = (
        "import sys, crmqueue.tasks, crmqueue.jobs;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('openpyxl', 'xhtml2pdf', 'urllib3', 'jinja2', 'sqlalchemy', 'reportlab')"
        " or m.startswith('crmqueue.workers.') or m.startswith('crmqueue.providers')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
