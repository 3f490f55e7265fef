"""The public face for client code: one typed function per job kind.

Each function validates its payload first (``PayloadError`` lists every bad field and
nothing is enqueued), then stores the job and returns a :class:`~crmqueue.jobs.Job`.
Bodies live in ``crmqueue.workers``; this module never imports them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from crmqueue.engine.queues import BODIES, Enqueue, get_broker
from crmqueue.errors import PayloadError
from crmqueue.jobs import Job
from crmqueue.payloads import (
    EmailPayload,
    EventPayload,
    ExportPayload,
    ImportPayload,
    NotificationPayload,
    Payload,
    ReportPayload,
    WebhookDeliveryPayload,
    validate_payload,
)

__all__ = [
    "KINDS",
    "Job",
    "deliver_webhook",
    "enqueue",
    "export_records",
    "generate_report",
    "import_records",
    "publish_event",
    "send_email",
    "send_notification",
]


@dataclass(frozen=True)
class Kind:
    queue: str
    name: str  # the body's Huey task name: crmqueue.workers.<module>.<function>
    payload: type[Payload]


# queue -> kind -> what runs it; the first kind of a queue is its default.
KINDS: dict[str, dict[str, Kind]] = {
    "email": {"send": Kind("email", "crmqueue.workers.email.send_email", EmailPayload)},
    "import-export": {
        "import": Kind(
            "import-export", "crmqueue.workers.import_export.import_records", ImportPayload
        ),
        "export": Kind(
            "import-export", "crmqueue.workers.import_export.export_records", ExportPayload
        ),
    },
    "report": {
        "generate": Kind("report", "crmqueue.workers.report.generate_report", ReportPayload)
    },
    "webhook": {
        "deliver": Kind(
            "webhook", "crmqueue.workers.webhook.deliver_webhook", WebhookDeliveryPayload
        ),
        "publish": Kind("webhook", "crmqueue.workers.webhook.publish_event", EventPayload),
    },
    "notification": {
        "send": Kind(
            "notification", "crmqueue.workers.notification.send_notification", NotificationPayload
        )
    },
}


def _resolve(queue: str, kind: str | None) -> tuple[str, type[BaseModel] | None]:
    """A built-in kind of the queue, or the Huey name of a registered custom body."""
    kinds = KINDS.get(queue)
    if kinds is None:
        get_broker().queue(queue)  # raises the unknown-queue error
        raise AssertionError
    if kind is None:
        first = next(iter(kinds.values()))
        return first.name, first.payload
    if kind in kinds:
        return kinds[kind].name, kinds[kind].payload
    body = BODIES.get(kind)
    if body is not None and body.queue == queue:
        return body.name, body.payload
    choices = ", ".join(kinds)
    raise PayloadError([("kind", f"unknown for queue {queue}: {kind!r} (built-in: {choices})")])


def enqueue(
    queue: str,
    payload: Mapping[str, Any],
    *,
    kind: str | None = None,
    priority: int | None = None,
    delay: float | None = None,
    eta: dt.datetime | None = None,
) -> Job:
    """Validate and enqueue one job from a plain mapping (JSON from the command line or
    the original system). `kind` picks one of the queue's built-in kinds or a registered
    custom body by its task name."""
    name, model = _resolve(queue, kind)
    if model is not None:
        data = validate_payload(model, payload).model_dump(mode="json")
    else:
        data = dict(payload)
        if not isinstance(data.get("tenant_id"), str) or not data["tenant_id"]:
            raise PayloadError([("tenant_id", "field required")])
    job_id = get_broker().queue(queue).enqueue(name, data, priority=priority, delay=delay, eta=eta)
    return Job(job_id, queue)


def enqueue_many(
    queue: str, payloads: Sequence[Mapping[str, Any]], *, kind: str | None = None
) -> list[Job]:
    """Validate every payload first, then enqueue them all in one round trip per batch.
    One bad payload rejects the whole call (its index is in the field path)."""
    name, model = _resolve(queue, kind)
    items, errors = [], []
    for index, payload in enumerate(payloads):
        try:
            data = (
                validate_payload(model, payload).model_dump(mode="json")
                if model is not None
                else dict(payload)
            )
        except PayloadError as exc:
            errors += [(f"{index}.{field}", reason) for field, reason in exc.errors]
            continue
        items.append(Enqueue(name, data))
    if errors:
        raise PayloadError(errors)
    ids = get_broker().queue(queue).enqueue_many(items)
    return [Job(job_id, queue) for job_id in ids]


def _submit(
    kind: Kind,
    fields: dict[str, Any],
    priority: int | None,
    delay: float | None,
    eta: dt.datetime | None,
) -> Job:
    data = {key: value for key, value in fields.items() if value is not None}
    model = validate_payload(kind.payload, data)
    job_id = (
        get_broker()
        .queue(kind.queue)
        .enqueue(kind.name, model.model_dump(mode="json"), priority=priority, delay=delay, eta=eta)
    )
    return Job(job_id, kind.queue)


def send_email(
    *,
    tenant_id: str,
    to: str | list[str],
    template: str,
    subject: str | None = None,
    context: Mapping[str, Any] | None = None,
    cc: list[str] | None = None,
    bcc: list[str] | None = None,
    reply_to: str | None = None,
    from_: str | None = None,
    headers: Mapping[str, str] | None = None,
    tags: list[str] | None = None,
    idempotency_key: str | None = None,
    priority: int | None = None,
    delay: float | None = None,
    eta: dt.datetime | None = None,
) -> Job:
    fields = {
        "tenant_id": tenant_id, "to": to, "template": template, "subject": subject,
        "context": context, "cc": cc, "bcc": bcc, "reply_to": reply_to, "from_": from_,
        "headers": headers, "tags": tags, "idempotency_key": idempotency_key,
    }  # fmt: skip
    return _submit(KINDS["email"]["send"], fields, priority, delay, eta)


def import_records(
    *,
    tenant_id: str,
    user_id: str,
    file_url: str,
    file_type: str,
    entity_type: str,
    mapping_config: Mapping[str, str] | None = None,
    dry_run: bool = False,
    on_duplicate: str = "skip",
    duplicate_key: list[str] | None = None,
    batch_size: int = 100,
    priority: int | None = None,
    delay: float | None = None,
    eta: dt.datetime | None = None,
) -> Job:
    fields = {
        "tenant_id": tenant_id, "user_id": user_id, "file_url": file_url,
        "file_type": file_type, "entity_type": entity_type, "mapping_config": mapping_config,
        "dry_run": dry_run, "on_duplicate": on_duplicate, "duplicate_key": duplicate_key,
        "batch_size": batch_size,
    }  # fmt: skip
    return _submit(KINDS["import-export"]["import"], fields, priority, delay, eta)


def export_records(
    *,
    tenant_id: str,
    user_id: str,
    entity_type: str,
    format: str,
    fields: list[str] | None = None,
    filters: Mapping[str, Any] | None = None,
    priority: int | None = None,
    delay: float | None = None,
    eta: dt.datetime | None = None,
) -> Job:
    values = {
        "tenant_id": tenant_id, "user_id": user_id, "entity_type": entity_type,
        "format": format, "fields": fields, "filters": filters,
    }  # fmt: skip
    return _submit(KINDS["import-export"]["export"], values, priority, delay, eta)


def generate_report(
    *,
    tenant_id: str,
    user_id: str,
    report_type: str,
    format: str,
    date_range: Mapping[str, Any],
    filters: Mapping[str, Any] | None = None,
    dimensions: list[str] | None = None,
    priority: int | None = None,
    delay: float | None = None,
    eta: dt.datetime | None = None,
) -> Job:
    fields = {
        "tenant_id": tenant_id, "user_id": user_id, "report_type": report_type,
        "format": format, "date_range": date_range, "filters": filters,
        "dimensions": dimensions,
    }  # fmt: skip
    return _submit(KINDS["report"]["generate"], fields, priority, delay, eta)


def deliver_webhook(
    *,
    tenant_id: str,
    webhook_id: str,
    event_type: str,
    payload: Mapping[str, Any],
    priority: int | None = None,
    delay: float | None = None,
    eta: dt.datetime | None = None,
) -> Job:
    fields = {
        "tenant_id": tenant_id, "webhook_id": webhook_id, "event_type": event_type,
        "payload": payload,
    }  # fmt: skip
    return _submit(KINDS["webhook"]["deliver"], fields, priority, delay, eta)


def publish_event(
    *,
    tenant_id: str,
    event_type: str,
    payload: Mapping[str, Any],
    priority: int | None = None,
    delay: float | None = None,
    eta: dt.datetime | None = None,
) -> Job:
    fields = {"tenant_id": tenant_id, "event_type": event_type, "payload": payload}
    return _submit(KINDS["webhook"]["publish"], fields, priority, delay, eta)


def send_notification(
    *,
    tenant_id: str,
    user_id: str,
    type: str,
    title: str,
    message: str,
    action_url: str | None = None,
    priority: int | None = None,
    delay: float | None = None,
    eta: dt.datetime | None = None,
) -> Job:
    fields = {
        "tenant_id": tenant_id, "user_id": user_id, "type": type, "title": title,
        "message": message, "action_url": action_url,
    }  # fmt: skip
    return _submit(KINDS["notification"]["send"], fields, priority, delay, eta)
