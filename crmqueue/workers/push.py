"""The push channel of the notification queue (issue #14): a follow-up job per
notification, so that retrying a push service's 429 or 5xx never stores the in-app
notification again or queues a second email.

- `queue_push` (called by crmqueue.workers.notification.send_notification): skipped with
  the reason when web push is not configured or the user has no subscription; else one
  `send_push` job on the notification queue, its id derived from the notification job's
  (a re-run finds it), at the notification's priority.
- `send_push`: the payload ``{"id", "title", "message", "action_url", "category",
  "notification_id"}`` as JSON, trimmed to fit one RFC 8291 record (the message first;
  the result says so), sent to every subscription of the user with ``TTL``, ``Urgency``
  (high from push.high_urgency_priority) and ``Topic``. 201: delivered; 404/410: the
  subscription is deleted; 413 and other 4xx: that subscription failed for good;
  429/5xx/timeouts: the job is retried after Retry-After, skipping the subscriptions a
  run of this job already reached (``last_job_id``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from crmqueue.config import Settings
from crmqueue.crm import push_subscriptions as store
from crmqueue.crm.store import get_engine
from crmqueue.engine import current_job_id, get_broker, job, job_ran_before
from crmqueue.engine.queues import EncodedPayload
from crmqueue.errors import ConfigError, PermanentError, RetryableError
from crmqueue.payloads import NotificationPayload, Payload, UserId, payload_json
from crmqueue.providers import push as providers

log = logging.getLogger(__name__)

SEND_PUSH = "crmqueue.workers.push.send_push"


class PushPayload(Payload):
    """A push job: what the notification says and how to send it."""

    user_id: UserId
    title: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    message: Annotated[str, StringConstraints(max_length=2000)]
    action_url: str | None = None
    category: Annotated[str, StringConstraints(max_length=100)] = "general"
    notification: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    notification_id: Annotated[int, Field(ge=1)] | None = None
    urgency: Literal["very-low", "low", "normal", "high"] = "normal"
    topic: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,32}$")] | None = None


def topic_for(payload: NotificationPayload, job_id: str, settings: Settings) -> str:
    """RFC 8030 section 5.4's Topic (at most 32 base64url characters): the notification's
    own (the same on every retry), or per user and category (push.topic = "category": a
    newer one replaces an older one the device has not fetched)."""
    if settings.push.topic == "category":
        seed = f"{payload.tenant_id}\0{payload.user_id}\0{payload.category}"
    else:
        seed = f"notification\0{job_id}"
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


def queue_push(
    payload: NotificationPayload,
    push_job_id: str,
    *,
    notification_job_id: str,
    notification_id: int | None,
    priority: int,
    settings: Settings,
    engine: Any,
) -> dict[str, Any]:
    """The push channel's outcome for a notification: a queued `send_push` job with the
    id `push_job_id`, or skipped with the reason."""
    reason = providers.not_configured(settings.push)
    if reason is not None:
        return {"status": "skipped", "reason": reason}
    count = store.count(engine, payload.tenant_id, payload.user_id)
    if not count:
        return {"status": "skipped", "reason": "the user has no push subscription"}
    fields: dict[str, Any] = {
        "tenant_id": payload.tenant_id, "user_id": payload.user_id, "title": payload.title,
        "message": payload.message, "action_url": payload.action_url,
        "category": payload.category, "notification": notification_job_id,
        "notification_id": notification_id,
        "urgency": "high" if priority >= settings.push.high_urgency_priority else "normal",
        "topic": topic_for(payload, notification_job_id, settings),
    }  # fmt: skip
    valid, encoded = payload_json(PushPayload, {k: v for k, v in fields.items() if v is not None})
    broker = get_broker()
    if not (job_ran_before() and broker.find_job(push_job_id) is not None):
        broker.queue("notification").enqueue(
            SEND_PUSH, EncodedPayload(valid.tenant_id, encoded), job_id=push_job_id,
            priority=priority,
        )  # fmt: skip
    return {"status": "queued", "job_id": push_job_id, "subscriptions": count}


def _body(payload: PushPayload) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": payload.notification, "title": payload.title, "message": payload.message,
        "action_url": payload.action_url, "category": payload.category,
    }  # fmt: skip
    if payload.notification_id is not None:
        data["notification_id"] = payload.notification_id
    return data


@job("notification", payload=PushPayload)
def send_push(payload: PushPayload) -> dict[str, Any]:
    settings = get_broker().settings
    try:
        provider = providers.get_provider(settings)
    except ConfigError as exc:  # an unreadable or mismatched key: dead, replayable once fixed
        raise PermanentError(str(exc)) from None
    if provider is None:
        reason = providers.not_configured(settings.push)
        return {"status": "skipped", "reason": reason}
    engine = get_engine(settings.database.url)
    job_id = current_job_id() or uuid.uuid4().hex
    tenant, user = payload.tenant_id, payload.user_id
    targets = store.list_for_user(engine, tenant, user)
    if not targets:
        return {"status": "skipped", "reason": "the user has no push subscription"}
    data, note = providers.fit_payload(_body(payload))
    message = providers.PushMessage(
        data, ttl=settings.push.ttl_seconds, urgency=payload.urgency, topic=payload.topic
    )
    again = job_ran_before()
    sent: list[int] = []
    removed: list[int] = []
    failed: dict[int, str] = {}
    retry: dict[int, RetryableError] = {}
    for target in targets:
        if again and target.last_job_id == job_id:
            sent.append(target.id)  # an earlier run of this job reached it
            continue
        status: int | None = None
        try:
            answer = provider.send(
                providers.PushTarget(target.endpoint, target.p256dh, target.auth), message
            )
            status = answer.status
            sent.append(target.id)
        except providers.SubscriptionGone as exc:
            store.delete_id(engine, tenant, user, target.id)
            removed.append(target.id)
            log.info("push subscription %d of %s/%s removed: %s", target.id, tenant, user, exc)
            continue
        except RetryableError as exc:
            retry[target.id] = exc
            status = _status_of(exc)
        except PermanentError as exc:
            failed[target.id] = str(exc)
            status = _status_of(exc)
        if status is not None:
            store.mark_sent(engine, tenant, target.id, job_id=job_id, status=status,
                            now=dt.datetime.now(dt.UTC))  # fmt: skip
    if retry:
        delays = [exc.delay for exc in retry.values() if exc.delay is not None]
        done = f" ({len(sent)} delivered, kept on retry)" if sent else ""
        raise RetryableError(
            "; ".join(f"subscription {sid}: {exc}" for sid, exc in retry.items()) + done,
            delay=max(delays) if delays else None,
        )
    if failed and not sent:
        raise PermanentError("; ".join(f"subscription {sid}: {why}" for sid, why in failed.items()))
    result: dict[str, Any] = {
        "status": "delivered" if sent else "gone",
        "sent": len(sent),
        "removed": removed,
        "urgency": payload.urgency,
        "bytes": len(data),
    }
    if failed:
        result["failed"] = {str(sid): why for sid, why in failed.items()}
    if note:
        result["note"] = note
    return result


def _status_of(exc: Exception) -> int | None:
    """The push service's HTTP status an error carries (None: no answer came)."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None
