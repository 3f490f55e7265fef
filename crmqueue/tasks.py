"""The public face for client code: one typed function per job kind.

Each function validates its payload first (``PayloadError`` lists every bad field and
nothing is enqueued), then stores the job and returns a :class:`~crmqueue.jobs.Job`.
Bodies live in ``crmqueue.workers``; this module never imports them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic_core
from pydantic import BaseModel

from crmqueue import json_text
from crmqueue.engine.queues import BODIES, EncodedPayload, Enqueue, get_broker
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
    payload_json,
    validate_payload,
)
from crmqueue.webhook_ids import delivery_job_id

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


# A body's Huey task name: its module and function, dotted Python identifiers.
_TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
# Built-in task name -> its kind, for callers that name a built-in body by task name.
_BY_TASK_NAME = {kind.name: kind for kinds in KINDS.values() for kind in kinds.values()}


def _resolve(queue: str, kind: str | None) -> tuple[str, type[BaseModel] | None]:
    """(Huey task name, payload model or None) for a queue's built-in kind, a built-in
    body's task name, a custom body registered in this process, or any other task name
    (``module.function``): a body this producer never imported, like Celery's
    ``send_task``. A job enqueued by name gets the checks every job gets (tenant_id, text,
    JSON) here; its body's payload model validates it in the worker (a payload that fails
    there is dead at once), and a worker without that body marks it dead naming it."""
    kinds = KINDS.get(queue)
    if kinds is None:
        get_broker().queue(queue)  # raises the unknown-queue error
        raise AssertionError
    if kind is None:
        first = next(iter(kinds.values()))
        return first.name, first.payload
    if kind in kinds:
        return kinds[kind].name, kinds[kind].payload
    known = _BY_TASK_NAME.get(kind)
    body = BODIES.get(kind)
    home = known.queue if known else body.queue if body else queue
    if home != queue:
        raise PayloadError([("kind", f"{kind!r} runs on queue {home!r}, not {queue!r}")])
    if known is not None:
        return known.name, known.payload
    if body is not None:
        return body.name, body.payload
    if _TASK_NAME.fullmatch(kind):
        return kind, None
    choices = ", ".join(kinds)
    raise PayloadError(
        [
            (
                "kind",
                f"unknown for queue {queue}: {kind!r} (built-in: {choices}; or a job body's"
                " task name, module.function)",
            )
        ]
    )


# Payloads whose JSON must fit webhooks.max_payload_bytes (the body a receiver gets).
_WEBHOOK_PAYLOADS = (WebhookDeliveryPayload, EventPayload)


def _check_size(model: type[BaseModel], valid: BaseModel, encoded: bytes) -> None:
    """PayloadError on `payload` when a webhook job's event payload (its `payload` field)
    is over ``webhooks.max_payload_bytes`` of JSON. The whole job's JSON, known already,
    is larger: only when that is over the limit is the payload itself measured."""
    if model in _WEBHOOK_PAYLOADS:
        limit = get_broker().settings.webhooks.max_payload_bytes
        if len(encoded) <= limit:
            return
        size = len(pydantic_core.to_json(getattr(valid, "payload", None)))
        if size > limit:
            raise PayloadError(
                [
                    (
                        "payload",
                        f"{size:,} bytes of JSON, over the limit of {limit:,}"
                        " (webhooks.max_payload_bytes)",
                    )
                ]
            )


def _data(
    model: type[BaseModel] | None, payload: Mapping[str, Any]
) -> dict[str, Any] | EncodedPayload:
    """What the engine stores: a payload model's JSON (validated and checked once), or, by
    name, the mapping itself (the engine checks it as it encodes it)."""
    if model is not None and issubclass(model, Payload):
        if (
            model in _WEBHOOK_PAYLOADS
            and isinstance(payload, Mapping)
            and "timestamp" not in payload
        ):
            # The event's time, fixed now: every attempt and replay sends the same body.
            payload = {**payload, "timestamp": dt.datetime.now(dt.UTC)}
        valid, encoded = payload_json(model, payload)
        _check_size(model, valid, encoded)
        return EncodedPayload(valid.tenant_id, encoded)
    if model is not None:  # a custom body's model: its config may write NaN as null
        data: dict[str, Any] = validate_payload(model, payload).model_dump(mode="json")
        return data
    if not isinstance(payload, Mapping):
        raise PayloadError([("payload", "must be a JSON object (a mapping of field names)")])
    return dict(payload)


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
    the original system). `kind` picks one of the queue's built-in kinds, or names a job
    body by its task name (``module.function``) whether or not this process imported it.

    `priority` is a whole number from -1000 to 1000 (higher runs first); `delay` is
    seconds from now, `eta` a datetime (naive: local time), one of them, less than ten
    years away. Raises PayloadError naming every bad field, or the bad option (see
    crmqueue.engine.queues.encode_message for what every payload's text must meet: among
    it, at most 64 levels of nested objects and lists, crmqueue.json_text.MAX_DEPTH), and
    ConfigError for an unknown queue."""
    name, model = _resolve(queue, kind)
    data = _data(model, payload)
    job_id = get_broker().queue(queue).enqueue(name, data, priority=priority, delay=delay, eta=eta)
    return Job(job_id, queue)


def enqueue_many(
    queue: str, payloads: Sequence[Mapping[str, Any]], *, kind: str | None = None
) -> list[Job]:
    """Validate every payload first, then enqueue them all in one round trip per batch.
    Any bad payload rejects the whole call: PayloadError lists every bad field of every
    payload, each path starting with the payload's index."""
    name, model = _resolve(queue, kind)
    items, errors = [], []
    for index, payload in enumerate(payloads):
        try:
            data = _data(model, payload)
        except PayloadError as exc:
            errors += [(f"{index}.{field}", reason) for field, reason in exc.errors]
            continue
        items.append((index, Enqueue(name, data)))
    if errors:
        # The engine's text checks would run only once these are fixed: run them now.
        for index, item in items:
            if not isinstance(item.payload, EncodedPayload):  # a model's JSON is checked
                problems = json_text.problems(item.payload)
                errors += [(f"{index}.{field}", reason) for field, reason in problems]
        raise PayloadError(sorted(errors, key=lambda error: int(error[0].split(".", 1)[0])))
    ids = get_broker().queue(queue).enqueue_many([item for _, item in items])
    return [Job(job_id, queue) for job_id in ids]


def _submit(
    kind: Kind,
    fields: dict[str, Any],
    priority: int | None,
    delay: float | None,
    eta: dt.datetime | None,
) -> Job:
    data = {key: value for key, value in fields.items() if value is not None}
    valid, encoded = payload_json(kind.payload, data)
    _check_size(kind.payload, valid, encoded)
    payload = EncodedPayload(valid.tenant_id, encoded)
    queue = get_broker().queue(kind.queue)
    job_id = queue.enqueue(kind.name, payload, priority=priority, delay=delay, eta=eta)
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
    decimal_comma: bool | None = None,
    priority: int | None = None,
    delay: float | None = None,
    eta: dt.datetime | None = None,
) -> Job:
    """Import a file's records into the CRM store. `file_url` is a path relative to the
    files directory (``[files] dir``: ``contacts.csv`` is ``<files.dir>/contacts.csv``),
    an absolute path or ``file://`` URL inside it, or an http(s) URL (downloaded through
    the outbound guard). What its text shows can never be read (another scheme, a path
    outside the files directory, an address literal the guard refuses: see
    crmqueue.url_rules) is a PayloadError here; the worker checks the rest (the file is
    there, a host name resolves to allowed addresses). A path is taken as it is ('#',
    '?', '%' included) but for a trailing ``#sheet=Name``.
    `decimal_comma`: numbers written 1.250,50 (True) or not (False); None detects it."""
    fields = {
        "tenant_id": tenant_id, "user_id": user_id, "file_url": file_url,
        "file_type": file_type, "entity_type": entity_type, "mapping_config": mapping_config,
        "dry_run": dry_run, "on_duplicate": on_duplicate, "duplicate_key": duplicate_key,
        "batch_size": batch_size, "decimal_comma": decimal_comma,
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
    time_zone: str | None = None,
    priority: int | None = None,
    delay: float | None = None,
    eta: dt.datetime | None = None,
) -> Job:
    fields = {
        "tenant_id": tenant_id, "user_id": user_id, "report_type": report_type,
        "format": format, "date_range": date_range, "filters": filters,
        "dimensions": dimensions, "time_zone": time_zone,
    }  # fmt: skip
    return _submit(KINDS["report"]["generate"], fields, priority, delay, eta)


def deliver_webhook(
    *,
    tenant_id: str,
    webhook_id: str,
    event_type: str,
    payload: Mapping[str, Any],
    message_id: str | None = None,
    timestamp: dt.datetime | None = None,
    priority: int | None = None,
    delay: float | None = None,
    eta: dt.datetime | None = None,
    replay: bool = False,
) -> Job:
    """Deliver one event to one endpoint of the tenant (crmqueue.webhooks). `message_id`
    (the ``webhook-id`` every attempt sends; default ``msg_<job id>``) and `timestamp`
    (the event's time in the body; default now). With the CRM's own `message_id` the
    call is idempotent: a second call for the same tenant, endpoint and message id (or
    a publish_event with that message id, for this endpoint) enqueues nothing and
    returns the job already stored (crmqueue.webhook_ids), whatever state it is in;
    `replay=True` sends it again all the same (``crmqueue webhooks replay``).
    PayloadError also when the payload's JSON is over ``webhooks.max_payload_bytes``;
    an unknown or disabled endpoint is known only in the worker (the job goes dead
    naming it)."""
    fields = {
        "tenant_id": tenant_id, "webhook_id": webhook_id, "event_type": event_type,
        "payload": payload, "message_id": message_id,
        "timestamp": timestamp or dt.datetime.now(dt.UTC),
    }  # fmt: skip
    kind = KINDS["webhook"]["deliver"]
    if message_id is None or replay:
        return _submit(kind, fields, priority, delay, eta)
    data = {key: value for key, value in fields.items() if value is not None}
    valid, encoded = payload_json(kind.payload, data)
    _check_size(kind.payload, valid, encoded)
    assert isinstance(valid, WebhookDeliveryPayload) and valid.message_id is not None
    job_id = delivery_job_id(valid.tenant_id, valid.webhook_id, valid.message_id)
    item = Enqueue(
        kind.name, EncodedPayload(valid.tenant_id, encoded), priority, delay, eta, job_id
    )
    (stored,) = get_broker().queue(kind.queue).enqueue_many([item], skip_existing=True)
    return Job(stored, kind.queue)


def publish_event(
    *,
    tenant_id: str,
    event_type: str,
    payload: Mapping[str, Any],
    message_id: str | None = None,
    timestamp: dt.datetime | None = None,
    priority: int | None = None,
    delay: float | None = None,
    eta: dt.datetime | None = None,
) -> Job:
    """Deliver an event to every enabled endpoint of the tenant subscribed to its type:
    the job enqueues one delivery job per endpoint, all with the same message id (default
    ``msg_<job id>``) and timestamp (the event's time; default now). PayloadError also
    when the payload's JSON is over ``webhooks.max_payload_bytes``."""
    fields = {
        "tenant_id": tenant_id, "event_type": event_type, "payload": payload,
        "message_id": message_id, "timestamp": timestamp or dt.datetime.now(dt.UTC),
    }  # fmt: skip
    return _submit(KINDS["webhook"]["publish"], fields, priority, delay, eta)


def send_notification(
    *,
    tenant_id: str,
    user_id: str,
    title: str,
    message: str,
    type: str | None = None,
    action_url: str | None = None,
    channels: list[str] | None = None,
    category: str | None = None,
    priority: int | None = None,
    delay: float | None = None,
    eta: dt.datetime | None = None,
) -> Job:
    """Notify one user: `channels` (in-app, email, push, sms), else `type` (one of them,
    as the original sent it), else the user's preferences for `category` choose. Priority
    200 and above is urgent: it goes out during the user's quiet hours."""
    fields = {
        "tenant_id": tenant_id, "user_id": user_id, "type": type, "title": title,
        "message": message, "action_url": action_url, "channels": channels,
        "category": category,
    }  # fmt: skip
    return _submit(KINDS["notification"]["send"], fields, priority, delay, eta)
