"""The webhook queue's bodies: deliver one signed event to one endpoint, and fan an event
out to every subscribed endpoint of its tenant (issue #12; REFERENCE "Standard Webhooks").

A delivery attempt, in order:

1. the endpoint (crmqueue.webhooks; WebhookService.recent: a read at most a second old,
   so a change made elsewhere applies within a second): unknown or disabled is
   permanent, naming it;
2. its circuit breaker: open, the job is postponed (crmqueue.errors.Postpone: no attempt
   spent) until the next probe; once due, one delivery wins the probe (claim_probe) and
   the others wait for its outcome;
3. its share of this process's workers: at most half of them (rounded down, at least
   one) attempt one endpoint at once, so an endpoint that hangs until the read timeout
   holds that share and never the whole queue (two sick endpoints leave a worker free);
   a job over the share waits briefly for a slot while the endpoint answers quickly,
   else it is postponed;
4. the POST through the SSRF guard (``[outbound] allowed_networks``, checked again at
   every attempt; a process reuses its check of a URL for URL_CHECK_SECONDS, always
   connecting to an address that was checked), Standard Webhooks headers signed with
   the endpoint's secrets (both during a rotation's grace), timeouts from ``[webhooks]``
   kept inside the queue's time limit; redirects never followed;
5. the answer: 2xx success; 410 Gone and ``webhook-delivery: disable`` disable the
   endpoint (the latter after a 2xx too, the delivery counting as done);
   ``webhook-delivery: abort-message`` stops this message's retries; 5xx,
   ``webhooks.retry_statuses`` (408, 429), timeouts and connection errors retry after
   Retry-After (capped at an hour) or the schedule (``webhooks.schedule``); anything else
   (3xx, other 4xx, a refused URL) is permanent;
6. one delivery-log row and the breaker's update (WebhookService.record_attempt), with
   the message stored for replay on its first attempt, all in one transaction; an
   endpoint disabled automatically is announced to the tenant's other endpoints as a
   ``webhook.endpoint_disabled`` event. A success's row goes to the process's log
   writer (WebhookService.record_success) while the worker takes its next job; the
   job's completion is written only after the row (crmqueue.engine.complete_after).

Every attempt and replay of one message sends the same ``webhook-id`` and body (the
payload's message_id and timestamp, set at publish or replay; else ``msg_<job id>`` and
the time the job was enqueued); ``webhook-timestamp`` is the attempt's own.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pydantic_core
import urllib3

from crmqueue import __version__, webhooks
from crmqueue.config import QueueSettings, Settings
from crmqueue.engine import complete_after, current_attempt, current_job_id, get_broker, job
from crmqueue.engine.queues import EncodedPayload, Enqueue
from crmqueue.engine.retry import backoff_delay
from crmqueue.errors import CrmQueueError, PermanentError, Postpone, RetryableError
from crmqueue.payloads import EventPayload, WebhookDeliveryPayload
from crmqueue.providers.http import Response, guarded_request, redirect_host, retry_after
from crmqueue.url_rules import IPNetwork
from crmqueue.webhook_ids import fanout_job_id as fanout_job_id
from crmqueue.webhook_ids import message_source as message_source

log = logging.getLogger(__name__)

QUEUE = "webhook"
USER_AGENT = f"crmqueue/{__version__}"
# Svix's delays after each failed attempt (REFERENCE: immediately, 5 s, 5 min, 30 min,
# 2 h, 5 h, 10 h, 10 h); the last one repeats for a queue allowing more attempts.
SVIX_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
DISABLED_EVENT = "webhook.endpoint_disabled"
EXCERPT_BYTES = 1024  # the log keeps the first 1 KB of an answer
READ_BYTES = 64 * 1024  # read this much of an answer (more closes the connection)
ERROR_EXCERPT = 200  # characters of the answer quoted in a job's error
# Waiting for a slot of a busy endpoint is worth it only while it answers quickly.
SLOT_PATIENCE_SECONDS = 0.1
LOG_MARGIN_SECONDS = 2.0  # of the queue's time limit, kept for logging the attempt
# The SSRF check of an endpoint's URL (resolution included) is reused this long by a
# process; the connection still goes to an address that was checked (providers.http).
URL_CHECK_SECONDS = 5.0


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class _Rules:
    """What a delivery reads from the settings, worked out once per settings object."""

    settings: Settings
    spec: QueueSettings
    networks: tuple[IPNetwork, ...]
    timeout: urllib3.Timeout
    longest: float  # seconds: the timeout's total
    retry_statuses: frozenset[int]
    share: int  # attempts one endpoint may have in flight in this process


_rules_seen: list[_Rules] = []


def _rules() -> _Rules:
    settings = get_broker().settings
    seen = _rules_seen
    if seen and seen[0].settings is settings:
        return seen[0]
    spec = settings.queues.get(QUEUE)
    timeout = attempt_timeout(settings, spec)
    rules = _Rules(
        settings=settings,
        spec=spec,
        networks=settings.outbound.networks(),
        timeout=timeout,
        longest=float(timeout.total) if isinstance(timeout.total, int | float) else 0.0,
        retry_statuses=frozenset(settings.webhooks.retry_statuses),
        share=max(1, spec.workers // 2),
    )
    seen[:] = [rules]
    return rules


def attempt_timeout(settings: Settings, spec: QueueSettings) -> urllib3.Timeout:
    """One attempt's timeouts: connect and read from ``[webhooks]``, and a total that
    ends the attempt before the queue's time limit (``[queues.webhook] timeout_seconds``)
    with time left to log it."""
    rules = settings.webhooks
    limit = spec.timeout_seconds
    budget = max(limit - LOG_MARGIN_SECONDS, limit / 2)
    total = min(rules.connect_timeout_seconds + rules.read_timeout_seconds, budget)
    return urllib3.Timeout(
        connect=min(rules.connect_timeout_seconds, total),
        read=min(rules.read_timeout_seconds, total),
        total=total,
    )


def retry_delay(settings: Settings, spec: QueueSettings, attempt: int) -> float:
    """Seconds before the attempt after failed attempt number `attempt` (1-based), by
    ``webhooks.schedule``: "exponential" (the queue's backoff_seconds doubling up to
    backoff_max_seconds, full jitter), "svix" (SVIX_SCHEDULE) or a list of delays (the
    last one repeats)."""
    schedule = settings.webhooks.schedule
    if schedule == "exponential":
        return backoff_delay(attempt, spec.backoff_seconds, spec.backoff_max_seconds)
    delays = SVIX_SCHEDULE if schedule == "svix" else tuple(schedule)
    return float(delays[min(max(attempt, 1), len(delays)) - 1])


def _jitter(seconds: float) -> float:
    """A wait spread over up to 10 % more (at most a second more), so that jobs put off
    to the same moment do not all come back at once."""
    seconds = max(seconds, 0.0)
    return seconds + random.uniform(0, min(1.0, 0.1 * seconds + 0.05))


# --------------------------------------------------------------------------- slots


class EndpointSlots:
    """Attempts in flight per endpoint in this process, at most `share` each. A job over
    the share waits for a slot while the endpoint's attempts are young (it answers fast:
    a slot frees soon), and is postponed otherwise (it hangs: do not hold a worker)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._inflight: dict[tuple[str, str, str], list[float]] = {}

    @contextmanager
    def hold(self, key: tuple[str, str, str], share: int, hang_seconds: float) -> Iterator[None]:
        """Take a slot of endpoint `key` (database URL, tenant, webhook id) for the body of
        the with-block; Postpone when none frees within SLOT_PATIENCE_SECONDS, for about
        as long as the oldest attempt has run, at most until its end (`hang_seconds`, an
        attempt's longest run), at least half a second."""
        start = time.monotonic()
        with self._changed:
            while True:
                started = self._inflight.get(key)
                if started is None or len(started) < share:
                    break
                now = time.monotonic()
                wait = min(start, min(started)) + SLOT_PATIENCE_SECONDS - now
                if wait <= 0:
                    # A slot frees when the oldest attempt ends, at the latest at its
                    # timeout; look again after about as long as it has run so far.
                    age = now - min(started)
                    free_in = hang_seconds - age
                    raise Postpone(
                        f"webhook endpoint {key[2]!r}: {len(started)} attempt(s) to it already"
                        " under way in this worker process (its share of the workers)",
                        _jitter(max(min(age, free_in), 0.5)),
                    )
                self._changed.wait(wait)
            mine = time.monotonic()
            self._inflight.setdefault(key, []).append(mine)
        try:
            yield
        finally:
            with self._changed:
                started = self._inflight[key]
                started.remove(mine)
                if not started:
                    del self._inflight[key]
                self._changed.notify_all()

    def in_flight(self, key: tuple[str, str, str]) -> int:
        with self._changed:
            return len(self._inflight.get(key, ()))


SLOTS = EndpointSlots()


# --------------------------------------------------------------------------- messages


class _SavedMessages:
    """Messages this process stored lately: the deliveries of one fan-out store their
    message once (the publish body does), and a retry does not store it again."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._keys: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(service: webhooks.WebhookService, message: webhooks.Message) -> tuple[str, str, str]:
        return (service.settings.database.url, message.tenant_id, message.message_id)

    def known(self, service: webhooks.WebhookService, message: webhooks.Message) -> bool:
        """Whether this process stored `message` lately."""
        key = self._key(service, message)
        with self._lock:
            if key in self._keys:
                self._keys.move_to_end(key)
                return True
        return False

    def mark(self, service: webhooks.WebhookService, message: webhooks.Message) -> None:
        """Remember that `message` is stored."""
        with self._lock:
            self._keys[self._key(service, message)] = None
            while len(self._keys) > self._size:
                self._keys.popitem(last=False)

    def save(self, service: webhooks.WebhookService, message: webhooks.Message) -> None:
        if not self.known(service, message):
            service.save_message(message)
            self.mark(service, message)


SAVED = _SavedMessages()


def _utc(stamp: dt.datetime) -> dt.datetime:
    return stamp.replace(tzinfo=dt.UTC) if stamp.tzinfo is None else stamp.astimezone(dt.UTC)


def _enqueued_at() -> dt.datetime:
    """When the running job was enqueued (its record's created_at): the event time of a
    payload that gave none, the same on every attempt."""
    job_id = current_job_id()
    if job_id is not None:
        record = get_broker().queue(QUEUE).store.get_job(job_id)
        if record is not None and record.get("created_at"):
            return dt.datetime.fromtimestamp(float(record["created_at"]), dt.UTC)
    return dt.datetime.now(dt.UTC)


def _message_id(given: str | None) -> str:
    if given:
        return given
    return f"msg_{current_job_id() or os.urandom(16).hex()}"


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended. `action`: "ok", "retry", "permanent" or "abort" (the
    receiver stopped this message's retries); `disable`: why the endpoint is to be
    disabled (410 Gone, ``webhook-delivery: disable``), else None."""

    action: str
    status: int | None
    excerpt: str
    error: str | None
    delay: float | None = None  # Retry-After, when the answer gave one
    disable: str | None = None


def _scrub(text: str, hidden: list[str]) -> str:
    for value in hidden:
        text = text.replace(value, "***")
    return text


def classify(
    response: Response, webhook_id: str, retry_statuses: frozenset[int], hidden: list[str]
) -> Outcome:
    """The outcome of an answer (see the module's rules). `hidden` (the signatures sent)
    is masked wherever the answer is quoted."""
    status = response.status
    excerpt = webhooks.storable(
        _scrub(response.data[:EXCERPT_BYTES].decode("utf-8", "replace"), hidden)
    )
    headers = {name.lower(): value for name, value in response.headers.items()}
    control = headers.get("webhook-delivery", "").strip().lower()
    what = f"webhook {webhook_id}: HTTP {status}"
    quoted = " ".join(excerpt[:ERROR_EXCERPT].split())
    said = f"{what}: {quoted}" if quoted else what
    disable = None
    if control == "disable":
        disable = f"the receiver answered HTTP {status} with webhook-delivery: disable"
    if 200 <= status < 300:
        return Outcome("ok", status, excerpt, None, disable=disable)
    if status == 410:
        disable = disable or "the receiver answered HTTP 410 Gone"
        return Outcome(
            "permanent", status, excerpt, f"{what} Gone: endpoint disabled", None, disable
        )
    if disable is not None:
        return Outcome(
            "permanent", status, excerpt, f"{said} (webhook-delivery: disable: endpoint disabled)",
            None, disable,
        )  # fmt: skip
    if control == "abort-message":
        return Outcome(
            "abort", status, excerpt,
            f"{said} (webhook-delivery: abort-message: the receiver stopped this message's"
            " retries)",
        )  # fmt: skip
    if 300 <= status < 400:
        to = redirect_host(headers.get("location"))
        return Outcome(
            "permanent", status, excerpt,
            f"{what} (a redirect{f' to {to}' if to else ''}); redirects are not followed",
        )  # fmt: skip
    if status >= 500 or status in retry_statuses:
        return Outcome("retry", status, excerpt, said, retry_after(response.headers))
    return Outcome("permanent", status, excerpt, said)


# --------------------------------------------------------------------------- delivery


def _breaker_gate(
    service: webhooks.WebhookService, endpoint: webhooks.Endpoint, hold: float
) -> None:
    """Postpone while the endpoint's breaker is open; once its probe is due, let exactly
    one delivery through (claim_probe) and postpone the others until it is over."""
    if endpoint.probe_at is None:
        return
    now = dt.datetime.now(dt.UTC)
    probe_at = _utc(endpoint.probe_at)
    failures = endpoint.consecutive_failures
    # A probe under way holds probe_at up to `hold` ahead; it may end much sooner, so a
    # postponed delivery looks again after breaker_probe_seconds at the latest.
    every = service.settings.webhooks.breaker_probe_seconds
    if now < probe_at:
        raise Postpone(
            f"webhook endpoint {endpoint.webhook_id!r}: circuit breaker open after"
            f" {failures} failed attempt(s) in a row; next probe at"
            f" {webhooks.iso_timestamp(probe_at)}",
            _jitter(min((probe_at - now).total_seconds(), every)),
        )
    if not service.claim_probe(endpoint, hold, now):
        raise Postpone(
            f"webhook endpoint {endpoint.webhook_id!r}: circuit breaker open after"
            f" {failures} failed attempt(s) in a row; a probe delivery is under way",
            _jitter(min(hold, every)),
        )


def _announce_disabled(endpoint: webhooks.Endpoint, reason: str) -> None:
    """Tell the tenant's other endpoints (those subscribed) that this one was disabled.
    The URL stays out: it may hold credentials."""
    from crmqueue.tasks import publish_event

    try:
        publish_event(
            tenant_id=endpoint.tenant_id,
            event_type=DISABLED_EVENT,
            payload={
                "webhookId": endpoint.webhook_id,
                "reason": reason,
                "disabledAt": webhooks.iso_timestamp(dt.datetime.now(dt.UTC)),
                "failingSince": (
                    webhooks.iso_timestamp(endpoint.failing_since)
                    if endpoint.failing_since
                    else None
                ),
            },
        )
    except CrmQueueError as exc:  # the endpoint is disabled all the same; say so
        log.error(
            "webhook %s of tenant %s disabled (%s); announcing it failed: %s",
            endpoint.webhook_id, endpoint.tenant_id, reason, exc,
        )  # fmt: skip


def _post(
    endpoint: webhooks.Endpoint, message: webhooks.Message, rules: _Rules
) -> tuple[Outcome, int]:
    """Sign and POST one attempt; its outcome and latency in ms."""
    body = webhooks.event_body(message.event_type, message.timestamp, message.data)
    sent_at = int(time.time())
    now = dt.datetime.now(dt.UTC)
    signature = webhooks.signature_header(
        endpoint.signing_secrets(now), message.message_id, sent_at, body
    )
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": message.message_id,
        "webhook-timestamp": str(sent_at),
        "webhook-signature": signature,
    }
    # Never quoted from an answer: the signatures sent, the secrets (a receiver knows them).
    hidden = [entry.split(",", 1)[-1] for entry in signature.split()]
    for secret in (endpoint.secret, endpoint.previous_secret):
        if secret:
            hidden += [secret, secret.removeprefix(webhooks.SECRET_PREFIX)]
    started = time.monotonic()
    try:
        response = guarded_request(
            "POST",
            endpoint.url,
            allowed_networks=rules.networks,
            headers=headers,
            body=body,
            timeout=rules.timeout,
            what=f"webhook {endpoint.webhook_id}",
            max_response_bytes=READ_BYTES,
            check_max_age=URL_CHECK_SECONDS,
            # The whole exchange, however slowly the answer trickles in: a read timeout
            # restarts with every byte, and the attempt must end in time to be logged.
            deadline=rules.longest,
        )
    except RetryableError as exc:  # timeouts, refused or reset connections
        outcome = Outcome("retry", None, "", str(exc))
    except PermanentError as exc:  # the URL refused by the guard, a host that is gone
        outcome = Outcome("permanent", None, "", str(exc))
    else:
        try:
            outcome = classify(response, endpoint.webhook_id, rules.retry_statuses, hidden)
        except Exception as exc:  # the receiver's headers are its own: never crash on them
            log.exception("webhook %s: classifying an answer failed", endpoint.webhook_id)
            outcome = _by_status(response.status, endpoint.webhook_id, rules.retry_statuses, exc)
    return outcome, int((time.monotonic() - started) * 1000)


def _by_status(
    status: int, webhook_id: str, retry_statuses: frozenset[int], exc: Exception
) -> Outcome:
    """The outcome of an answer by its status alone (its headers could not be read)."""
    what = f"webhook {webhook_id}: HTTP {status} (its headers could not be read:"
    error = f"{what} {type(exc).__name__})"
    if 200 <= status < 300:
        return Outcome("ok", status, "", None)
    if status >= 500 or status in retry_statuses:
        return Outcome("retry", status, "", error)
    return Outcome("permanent", status, "", error)


@job(QUEUE, payload=WebhookDeliveryPayload)
def deliver_webhook(payload: WebhookDeliveryPayload) -> dict[str, Any]:
    """Deliver one event to one endpoint: one attempt per run (see the module)."""
    rules = _rules()
    service = webhooks.service(rules.settings)
    # Read at most ENDPOINT_CACHE_SECONDS ago (EndpointNotFound).
    endpoint = service.recent(payload.tenant_id, payload.webhook_id)
    if not endpoint.enabled:
        raise webhooks.EndpointDisabled(
            endpoint.tenant_id, endpoint.webhook_id, endpoint.disabled_reason
        )
    hold = rules.longest + LOG_MARGIN_SECONDS
    message = webhooks.Message(
        tenant_id=payload.tenant_id,
        message_id=_message_id(payload.message_id),
        event_type=payload.event_type,
        timestamp=_utc(payload.timestamp) if payload.timestamp else _enqueued_at(),
        data=payload.payload,
    )
    attempt, max_attempts = current_attempt()
    slot = (rules.settings.database.url, endpoint.tenant_id, endpoint.webhook_id)
    with SLOTS.hold(slot, rules.share, hold):
        # Inside the slot: a probe won here is never lost to a full share.
        _breaker_gate(service, endpoint, hold)
        outcome, latency_ms = _post(endpoint, message, rules)
    logged = webhooks.Attempt(
        message_id=message.message_id,
        event_type=message.event_type,
        job_id=current_job_id(),
        attempt=attempt,
        succeeded=outcome.action == "ok",
        status_code=outcome.status,
        latency_ms=latency_ms,
        response_excerpt=outcome.excerpt,
        error=outcome.error,
    )
    # The message (for replay) is stored with the attempt's log row, in one transaction.
    unsaved = None if SAVED.known(service, message) else message
    log_error = None
    if outcome.action == "ok" and outcome.disable is None and logged.job_id is not None:
        # In a running job: the log writer commits the row while this worker goes on;
        # the job's completion is written only after it (complete_after).
        done: dict[str, Any] = {
            "webhook_id": endpoint.webhook_id,
            "message_id": message.message_id,
            "status": outcome.status,
            "attempt": attempt,
            "latency_ms": latency_ms,
        }
        try:
            pending = service.record_success(endpoint, logged, message=unsaved, result=done)
        except Exception as exc:  # delivered all the same: never send it again for this
            done["warning"] = f"the delivery log could not be written ({type(exc).__name__})"
            log.error(
                "webhook %s of tenant %s, message %s, attempt %d (ok): %s",
                endpoint.webhook_id, endpoint.tenant_id, message.message_id, attempt,
                done["warning"],
            )  # fmt: skip
            return done
        complete_after(pending.done)
        if unsaved is not None:
            SAVED.mark(service, message)
        return done
    try:
        breaker = service.record_attempt(endpoint, logged, message=unsaved)
        if unsaved is not None:
            SAVED.mark(service, message)
    except webhooks.EndpointNotFound:
        if outcome.action != "ok":  # removed while this attempt ran: nothing to retry for
            raise
        breaker = None
    except Exception as exc:
        # The receiver's answer decides the job, not the log: a delivered message whose
        # log row cannot be written must not be sent again (nor a permanent failure
        # turned into retries). The database's own text is left out: it may quote the row.
        breaker = None
        log_error = f"the delivery log could not be written ({type(exc).__name__})"
        log.error(
            "webhook %s of tenant %s, message %s, attempt %d (%s): %s",
            endpoint.webhook_id, endpoint.tenant_id, message.message_id, attempt,
            outcome.action, log_error,
        )  # fmt: skip
    disabled_reason = outcome.disable
    if disabled_reason is not None:
        service.disable(endpoint.tenant_id, endpoint.webhook_id, disabled_reason)
    elif breaker is not None and breaker.disabled:
        disabled_reason = service.get(endpoint.tenant_id, endpoint.webhook_id).disabled_reason
    if disabled_reason is not None:
        _announce_disabled(endpoint, disabled_reason)
    if outcome.action == "ok":
        result: dict[str, Any] = {
            "webhook_id": endpoint.webhook_id,
            "message_id": message.message_id,
            "status": outcome.status,
            "attempt": attempt,
            "latency_ms": latency_ms,
        }
        if log_error is not None:
            result["warning"] = log_error
        return result
    error = outcome.error or f"webhook {endpoint.webhook_id}: failed"
    if log_error is not None:
        error += f"; {log_error}"
    if disabled_reason is not None and outcome.disable is None:
        error += f"; endpoint disabled: {disabled_reason}"
    if outcome.action == "retry" and disabled_reason is None:
        delay = outcome.delay
        if delay is None:
            delay = retry_delay(rules.settings, rules.spec, attempt)
        if attempt < max_attempts:
            raise RetryableError(error, delay=delay)
        error += f" (attempt {attempt} of {max_attempts}: no retries left)"
    raise PermanentError(error)


# --------------------------------------------------------------------------- fan-out


@job(QUEUE, payload=EventPayload)
def publish_event(payload: EventPayload) -> dict[str, Any]:
    """One delivery job per enabled endpoint of the tenant subscribed to the event type,
    enqueued in one round trip, all with the same message id and timestamp. Completes
    with "no endpoint subscribed" when none is (naming the disabled ones that match)."""
    rules = _rules()
    service = webhooks.service(rules.settings)
    job_id = current_job_id() or os.urandom(16).hex()
    message = webhooks.Message(
        tenant_id=payload.tenant_id,
        message_id=payload.message_id or f"msg_{job_id}",
        event_type=payload.event_type,
        timestamp=_utc(payload.timestamp) if payload.timestamp else _enqueued_at(),
        data=payload.payload,
    )
    endpoints = service.subscribers(payload.tenant_id, payload.event_type)
    if not endpoints:
        # Rare: worth a second look at the tenant's endpoints, to say why nothing went out.
        disabled = sorted(
            endpoint.webhook_id
            for endpoint in service.list(payload.tenant_id)
            if not endpoint.enabled
            and webhooks.subscribed(payload.event_type, endpoint.event_types)
        )
        note = "no endpoint subscribed"
        if disabled:
            note += f" (subscribed but disabled: {', '.join(disabled[:10])})"
        return {"deliveries": 0, "jobs": [], "message_id": message.message_id, "note": note}
    SAVED.save(service, message)
    # Each delivery's payload JSON spliced from parts encoded once (the data can be large).
    tail = b',"event_type":%s,"payload":%s,"message_id":%s,"timestamp":%s}' % (
        json.dumps(message.event_type).encode(),
        pydantic_core.to_json(message.data),
        json.dumps(message.message_id).encode(),
        json.dumps(message.timestamp.isoformat()).encode(),
    )
    head = b'{"tenant_id":%s,"webhook_id":' % json.dumps(message.tenant_id).encode()
    name = f"{deliver_webhook.__module__}.{deliver_webhook.__name__}"
    source = (
        job_id
        if payload.message_id is None
        else message_source(message.tenant_id, payload.message_id)
    )
    items = [
        Enqueue(
            name,
            EncodedPayload(
                message.tenant_id, head + json.dumps(endpoint.webhook_id).encode() + tail
            ),
            job_id=fanout_job_id(source, endpoint.webhook_id),
        )
        for endpoint in endpoints
    ]
    ids = get_broker().queue(QUEUE).enqueue_many(items, skip_existing=True)
    return {"deliveries": len(ids), "jobs": ids, "message_id": message.message_id}
