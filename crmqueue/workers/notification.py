"""The notification queue's body: deliver one notification to one user on its channels.

- in-app: stored in the CRM store at once (crmqueue.notifications.store), once per job
  (a retried job finds its row by job id);
- email: an email job on the email queue (template ``notification``) to the user's
  address from ``users``, never sent here; its idempotency key comes from this job's id;
- push: a follow-up job on this queue (crmqueue.workers.push.queue_push, id from this
  job's), so retries of a push service's 429/5xx repeat neither in-app nor email;
  skipped with the reason when web push is not configured or the user has no
  subscription;
- sms: an sms job on this queue (send_sms, id follow_up_id(job_id, "sms")) that sends the
  text through the configured provider (crmqueue.providers.sms), so a retried SMS (429)
  neither stores in-app again nor resends other channels; skipped with the reason when
  sms.provider is "none" or the user has no phone.

Quiet hours (crmqueue.notifications.quiet_until) hold email, push and SMS unless the job's
priority is URGENT_PRIORITY (200) or more: the held channels go into a new notification
job scheduled for the end of the window (its payload names only those channels, so
in-app is not stored twice), and the preferences are read again when it runs.

Follow-up jobs (the email, the held notification) get ids derived from this job's id: a
re-run (lease lost, crash after enqueueing) finds the job it made instead of making a
second one. The result names every channel's outcome and a status: ``delivered`` (stored
or queued on a channel), ``held`` (only held for quiet hours) or ``skipped`` (with the
reasons: no channel was on or available), never a failure for those. A user who is not
in the tenant's ``users`` table still gets in-app (the CRM may add them later), and the
result says so (``warning``); email needs the user's address and is skipped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
import uuid
from typing import Any

from crmqueue import notifications
from crmqueue.config import Settings
from crmqueue.crm.store import get_engine
from crmqueue.crm.users import User, get_user
from crmqueue.engine import current_job_id, current_job_priority, get_broker, job, job_ran_before
from crmqueue.engine.queues import EncodedPayload
from crmqueue.errors import CrmQueueError
from crmqueue.payloads import EmailPayload, NotificationPayload, payload_json
from crmqueue.workers import push

log = logging.getLogger(__name__)

EMAIL_TEMPLATE = "notification"
# Expired rows of a tenant are deleted at most this often per process (they are hidden
# from the moment they expire; this only reclaims space).
PURGE_INTERVAL_SECONDS = 3600.0
_purged: dict[str, float] = {}
_purge_lock = threading.Lock()


def follow_up_id(job_id: str, what: str) -> str:
    """The id of the `what` job a notification job makes: the same on every run."""
    return hashlib.sha256(f"{job_id}:{what}".encode()).hexdigest()[:32]


def enqueue_once(
    queue: str, kind: str, payload: EncodedPayload, job_id: str, **options: Any
) -> str:
    """Enqueue a follow-up job with the id `job_id` (follow_up_id) unless an earlier run
    of the running job already did; returns the id."""
    from crmqueue.tasks import KINDS

    broker = get_broker()
    if job_ran_before() and broker.find_job(job_id) is not None:
        return job_id
    name = KINDS[queue][kind].name
    return broker.queue(queue).enqueue(name, payload, job_id=job_id, **options)


def notify_in_app(
    tenant_id: str,
    user_id: str,
    *,
    title: str,
    message: str,
    category: str,
    action_url: str | None = None,
) -> dict[str, Any]:
    """Queue an in-app notification for the user who started the running job (an import,
    an export, a report), once per job. The job's own work has succeeded by now, so a
    failure here is reported in the result, not raised."""
    job_id = current_job_id() or uuid.uuid4().hex
    fields = {
        "tenant_id": tenant_id, "user_id": user_id, "channels": ["in-app"],
        "category": category, "title": title, "message": message, "action_url": action_url,
    }  # fmt: skip
    try:
        valid, encoded = payload_json(
            NotificationPayload, {k: v for k, v in fields.items() if v is not None}
        )
        queued = enqueue_once(
            "notification", "send", EncodedPayload(valid.tenant_id, encoded),
            follow_up_id(job_id, "notification"),
        )  # fmt: skip
    except CrmQueueError as exc:
        log.warning("%s notification for user %s not queued: %s", category, user_id, exc)
        return {"job_id": None, "reason": str(exc)}
    return {"job_id": queued, "category": category}


def email_action_url(action_url: str, settings: Settings) -> str | None:
    """The link an email shows for `action_url`: an absolute URL as it is, a path
    ("/leads/7") joined to ``notifications.app_base_url``, else None (a path alone is a
    dead link in a mail client)."""
    if not action_url.startswith("/"):
        return action_url
    base = settings.notifications.app_base_url
    return None if base is None else base + action_url


def _job_priority(settings: Settings) -> int:
    """The running job's priority (as claimed, else its record), else the queue's
    default."""
    claimed = current_job_priority()
    if claimed is not None:
        return claimed
    job_id = current_job_id()
    if job_id is not None:
        record = get_broker().queue("notification").store.get_job(job_id)
        if record is not None and record.get("priority") is not None:
            return int(record["priority"])
    return settings.queues.notification.priority


def _queue_email(payload: NotificationPayload, user: User | None, job_id: str) -> dict[str, Any]:
    if user is None:
        return {"status": "skipped", "reason": f"no user {payload.user_id!r} in the tenant"}
    context: dict[str, Any] = {"title": payload.title, "message": payload.message}
    first_name = (user.name.split() or [""])[0]
    if first_name:
        context["first_name"] = first_name
    note = None
    if payload.action_url:
        link = email_action_url(payload.action_url, get_broker().settings)
        if link is None:
            note = "action URL is a path and notifications.app_base_url is not set: no button"
        else:
            context["action_url"] = link
    fields = {
        "tenant_id": payload.tenant_id, "to": user.email, "template": EMAIL_TEMPLATE,
        "context": context, "idempotency_key": f"notification-{job_id}",
    }  # fmt: skip
    email, encoded = payload_json(EmailPayload, fields)
    email_id = enqueue_once(
        "email", "send", EncodedPayload(email.tenant_id, encoded), follow_up_id(job_id, "email")
    )
    queued = {"status": "queued", "job_id": email_id, "to": user.email, "template": EMAIL_TEMPLATE}
    return queued if note is None else {**queued, "note": note}


def _hold(
    payload: NotificationPayload,
    channels: list[str],
    until: dt.datetime,
    job_id: str,
    priority: int,
) -> str:
    """A notification job for the held `channels`, due when the quiet hours end."""
    data = payload.model_dump(mode="json", exclude_none=True)
    data.pop("type", None)
    data["channels"] = channels
    held, encoded = payload_json(NotificationPayload, data)
    return enqueue_once(
        "notification", "send", EncodedPayload(held.tenant_id, encoded),
        follow_up_id(job_id, "held"), eta=until, priority=priority,
    )  # fmt: skip


def _purge(engine: Any, tenant_id: str) -> None:
    now = time.monotonic()
    with _purge_lock:
        if now - _purged.get(tenant_id, -PURGE_INTERVAL_SECONDS) < PURGE_INTERVAL_SECONDS:
            return
        _purged[tenant_id] = now
    removed = notifications.purge_expired(tenant_id, engine=engine)
    if removed:
        log.info("removed %d expired notification(s) of tenant %s", removed, tenant_id)


@job("notification", payload=NotificationPayload)
def send_notification(payload: NotificationPayload) -> dict[str, Any]:
    settings = get_broker().settings
    engine = get_engine(settings.database.url)
    job_id = current_job_id() or uuid.uuid4().hex
    tenant, category = payload.tenant_id, payload.category
    preferences = notifications.recent_preferences(
        tenant, payload.user_id, engine=engine,
        max_age=settings.notifications.preferences_cache_seconds,
    )  # fmt: skip
    send, skipped = notifications.plan_channels(
        payload.requested(), preferences, category, settings
    )
    priority = _job_priority(settings)
    outcome: dict[str, dict[str, Any]] = {
        channel: {"status": "skipped", "reason": reason} for channel, reason in skipped.items()
    }
    user = get_user(engine, tenant, payload.user_id) if "email" in send else None
    if user is None and "sms" in send:
        user = get_user(engine, tenant, payload.user_id)
    quiet_end = None
    held = [c for c in send if c in notifications.HELD_CHANNELS]
    if held and priority < notifications.URGENT_PRIORITY and preferences.quiet_hours:
        start, end = preferences.quiet_hours
        zone = preferences.time_zone or "UTC"
        quiet_end = notifications.quiet_until(dt.datetime.now(dt.UTC), zone, start, end)
    notification_id = None
    for channel in send:
        if channel == "in-app":
            notification_id = notifications.store(
                tenant, payload.user_id, title=payload.title, message=payload.message,
                action_url=payload.action_url, category=category, priority=priority,
                job_id=job_id, engine=engine, settings=settings,
                first_run=not job_ran_before(),
            )  # fmt: skip
            outcome[channel] = {"status": "stored", "id": notification_id}
        elif channel == "email" and quiet_end is None:
            outcome[channel] = _queue_email(payload, user, job_id)
        elif channel == "sms" and quiet_end is None:
            outcome[channel] = _queue_sms(payload, user, job_id, priority)
    if "push" in send and quiet_end is None:
        outcome["push"] = push.queue_push(
            payload, follow_up_id(job_id, "push"), notification_job_id=job_id,
            notification_id=notification_id, priority=priority, settings=settings, engine=engine,
        )  # fmt: skip
    if quiet_end is not None:
        held_id = _hold(payload, held, quiet_end, job_id, priority)
        for channel in held:
            outcome[channel] = {"status": "held", "until": quiet_end.isoformat(),
                                "job_id": held_id}  # fmt: skip
    if notification_id is not None:
        _purge(engine, tenant)
    done = [c for c, o in outcome.items() if o["status"] in ("stored", "queued", "held")]
    delivered = any(o["status"] in ("stored", "queued") for o in outcome.values())
    result: dict[str, Any] = {
        "status": "delivered" if delivered else "held" if done else "skipped",
        "category": category,
        "channels": {channel: outcome[channel] for channel in _order(payload, outcome)},
    }
    if not done:
        reasons = "; ".join(f"{c}: {o['reason']}" for c, o in result["channels"].items())
        result["reason"] = f"no enabled channel ({reasons or 'none is on for ' + category})"
    if not preferences.known:
        # Stored all the same (the CRM may add the user later), but said: a typo in a
        # producer's user id would otherwise pass as delivered.
        result["warning"] = (
            f"user {payload.user_id!r} is not in the users table of tenant {tenant!r}"
            " (crmqueue users add): only the tenant defaults applied"
        )
    if "email" in outcome and outcome["email"].get("status") == "queued":
        result["email_job_id"] = outcome["email"]["job_id"]
    return result


def _order(payload: NotificationPayload, outcome: dict[str, Any]) -> list[str]:
    """The channels in the order the payload named them (else the planner's)."""
    named = payload.requested() or []
    return [*(c for c in named if c in outcome), *(c for c in outcome if c not in named)]


# --------------------------------------------------------------------------- sms

SMS_TASK = "crmqueue.workers.notification.send_sms"
SMS_OFF = 'SMS is not configured (sms.provider is "none")'


def _no_phone(payload: NotificationPayload, user: User | None) -> str | None:
    """Why the user cannot get an SMS, or None."""
    if user is None:
        return f"no user {payload.user_id!r} in the tenant"
    if not user.phone:
        return f"user {payload.user_id!r} has no phone (crmqueue users add --phone)"
    return None


def _queue_sms(
    payload: NotificationPayload, user: User | None, job_id: str, priority: int
) -> dict[str, Any]:
    """The sms job (send_sms) for this notification, once per job; skipped with the
    reason when SMS is off or the user has no phone."""
    reason = SMS_OFF if get_broker().settings.sms.provider == "none" else _no_phone(payload, user)
    if reason is not None:
        return {"status": "skipped", "reason": reason}
    assert user is not None
    data = payload.model_dump(mode="json", exclude_none=True)
    data.pop("type", None)
    data["channels"] = ["sms"]
    sms, encoded = payload_json(NotificationPayload, data)
    sms_id = follow_up_id(job_id, "sms")
    broker = get_broker()
    if not (job_ran_before() and broker.find_job(sms_id) is not None):
        broker.queue("notification").enqueue(
            SMS_TASK, EncodedPayload(sms.tenant_id, encoded), job_id=sms_id, priority=priority
        )
    return {"status": "queued", "job_id": sms_id, "to": user.phone}


@job("notification", payload=NotificationPayload)
def send_sms(payload: NotificationPayload) -> dict[str, Any]:
    """Send a notification as one text message to the user's phone (``users.phone``,
    read when the job runs) through sms.provider: title, message and the action URL
    (a path joined to notifications.app_base_url, else left out), trimmed to
    sms.max_chars (crmqueue.providers.sms.sms_text). Returns {"status": "sent",
    "provider", "message_id", "vendor_status", "to"}, or "skipped" with a reason (SMS
    turned off or the phone removed since). Raises RetryableError (429, 5xx, network:
    retried by the queue) or PermanentError (a number the vendor refuses, bad
    credentials: dead at once)."""
    from crmqueue.providers.sms import OutgoingSms, get_provider, sms_text

    settings = get_broker().settings
    user = get_user(get_engine(settings.database.url), payload.tenant_id, payload.user_id)
    reason = SMS_OFF if settings.sms.provider == "none" else _no_phone(payload, user)
    if reason is not None:
        return {"status": "skipped", "reason": reason}
    assert user is not None and user.phone is not None
    link = email_action_url(payload.action_url, settings) if payload.action_url else None
    body = sms_text(payload.title, payload.message, link, settings.sms.max_chars)
    sent = get_provider(settings.sms, settings.outbound).send(OutgoingSms(user.phone, body))
    return {"status": "sent", "provider": sent.provider, "message_id": sent.message_id,
            "vendor_status": sent.status, "to": user.phone}  # fmt: skip
