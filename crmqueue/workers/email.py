"""The email queue's body: render the template, build the message, send it through the
configured provider.

No double sends: the idempotency key is the payload's, else derived from the job id; it
fixes the Message-ID and is sent to vendors that deduplicate (Resend's Idempotency-Key).
Once the vendor returns a message id it is stored under ``email-sent:<job id>`` in the same
write that records the job's completion (no extra round trip; it waits out a storage
outage like the completion, and is kept even if the lease was lost), so a job re-run after
a lost lease or a crash after that write returns the stored result instead of sending
again.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from pathlib import Path
from typing import Any

from huey.constants import EmptyData

from crmqueue.config import Settings
from crmqueue.engine import (
    current_job_id,
    get_broker,
    job,
    job_ran_before,
    record_with_completion,
)
from crmqueue.engine.storage import JobStore
from crmqueue.errors import PermanentError, RetryableError
from crmqueue.payloads import EmailPayload
from crmqueue.providers.email import OutgoingEmail, get_provider
from crmqueue.providers.email.render import Budget, Rendered, render, tenant_template_dir

log = logging.getLogger(__name__)

SENT_KEEP_SECONDS = 14 * 24 * 3600
RATE_WAIT_SECONDS = 30.0


def rate_per_second(settings: Settings) -> float:
    section = getattr(settings.email, settings.email.provider, None)
    return float(getattr(section, "rate_per_second", 0.0) or 0.0)


def acquire_send_slot(
    store: JobStore, provider: str, rate: float, max_wait: float = RATE_WAIT_SECONDS
) -> None:
    """Wait for one of `rate` per-second send slots of `provider`, shared by every worker
    and process on `store`: time is cut into slots of 1/rate seconds and each slot is
    claimed once (put_if_empty with a TTL). After `max_wait` the job is retried later
    instead of holding its worker."""
    if rate <= 0:
        return
    interval = 1.0 / rate
    deadline = time.monotonic() + max_wait
    while True:
        now = time.time()
        slot = math.floor(now / interval)
        key = f"email-rate:{provider}:{slot}"
        if store.put_if_empty(key, b"1", ttl=interval + 1.0):
            return
        wait = (slot + 1) * interval - now
        if time.monotonic() + wait > deadline:
            raise RetryableError(f"{provider}: send rate limit reached", delay=max(wait, 1.0))
        time.sleep(max(wait, 0.001))


def sent_key(job_id: str) -> str:
    return f"email-sent:{job_id}"


def render_payload(payload: EmailPayload, settings: Settings) -> Rendered:
    return render(
        payload.template,
        payload.context,
        payload.subject,
        tenant_dir=tenant_template_dir(Path(settings.files.dir), payload.tenant_id),
        budget=render_budget(settings),
    )


def render_budget(settings: Settings) -> Budget:
    """A tenant template's render budget from the settings (email.template_*)."""
    return Budget(settings.email.template_max_chars, settings.email.template_cpu_seconds)


def build_email(
    payload: EmailPayload, settings: Settings, idempotency_key: str, job_id: str | None = None
) -> OutgoingEmail:
    rendered = render_payload(payload, settings)
    metadata = {"tenant_id": payload.tenant_id}
    if job_id:
        metadata["job_id"] = job_id
    return OutgoingEmail(
        from_=payload.from_ or settings.email.from_address,
        to=list(payload.to),
        cc=list(payload.cc),
        bcc=list(payload.bcc),
        reply_to=payload.reply_to,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        headers=dict(payload.headers),
        tags=list(payload.tags),
        metadata=metadata,
        idempotency_key=idempotency_key,
    )


@job("email", payload=EmailPayload)
def send_email(payload: EmailPayload) -> dict[str, Any]:
    broker = get_broker()
    settings = broker.settings
    store: JobStore = broker.queue("email").store
    job_id = current_job_id() or uuid.uuid4().hex
    key = sent_key(job_id)
    previous = store.peek_data(key) if job_ran_before() else EmptyData
    if previous is not EmptyData:
        result: dict[str, Any] = json.loads(previous)
        log.info("email job %s was already sent (%s); not sending again", job_id, result)
        return result
    idempotency_key = payload.idempotency_key or f"crmqueue-email-{job_id}"
    try:
        email = build_email(payload, settings, idempotency_key, job_id)
    except (ValueError, TypeError) as exc:  # building is deterministic: a retry fails alike
        raise PermanentError(f"email cannot be built: {type(exc).__name__}: {exc}") from exc
    provider = get_provider(settings.email)
    acquire_send_slot(store, provider.name, rate_per_second(settings))
    try:
        sent = provider.send(email)
    except UnicodeError as exc:  # a value the vendor's encoding cannot carry: the same next time
        raise PermanentError(f"{provider.name}: {type(exc).__name__}: {exc}") from exc
    result = {"provider": sent.provider, "message_id": sent.message_id}
    record = json.dumps(result).encode()
    if current_job_id() is None:  # called directly, not by a consumer
        store.put_if_empty(key, record, ttl=SENT_KEEP_SECONDS)
    else:
        record_with_completion(key, record, ttl=SENT_KEEP_SECONDS)
    return result
