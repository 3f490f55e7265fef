"""Webhook endpoints of each tenant, Standard Webhooks signing, the delivery log and the
per-endpoint circuit breaker (issue #12; REFERENCE "Standard Webhooks").

Signing (Standard Webhooks v1): a secret is ``whsec_`` + base64 of 24-64 random bytes;
the signature of one attempt is ``v1,`` + base64 HMAC-SHA256, keyed with the secret's
decoded bytes, of ``{webhook-id}.{webhook-timestamp}.{body}``. During a rotation's grace
period the header carries one signature per secret, space-separated, new first.

The store is the CRM database (crmqueue.crm.schema: webhook_endpoints,
webhook_deliveries, webhook_messages); every query is scoped by tenant_id, so another
tenant's ids are simply not found.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import secrets as random_secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from crmqueue.config import Settings, mask_url
from crmqueue.crm import schema
from crmqueue.crm.store import get_engine
from crmqueue.errors import PayloadError, PermanentError, RetryableError
from crmqueue.group_commit import GroupCommit
from crmqueue.providers.http import check_url

log = logging.getLogger(__name__)

__all__ = [
    "SECRET_PREFIX",
    "Attempt",
    "BreakerState",
    "Delivery",
    "DeliveryNotFound",
    "Endpoint",
    "EndpointDisabled",
    "EndpointNotFound",
    "Message",
    "MessageNotFound",
    "WebhookService",
    "event_body",
    "filter_problem",
    "iso_timestamp",
    "new_secret",
    "secret_key",
    "service",
    "sign",
    "signature_header",
    "storable",
    "subscribed",
]

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
# A tenant's own ids ("webhook-789") and the generated ones share one shape.
WEBHOOK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
# Event types: lower-case dotted names (as crmqueue.payloads.EventType); a filter may end
# in ".*" after one or more segments, or be "*" alone.
_SEGMENTS = r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*"
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+$")
_WILDCARD = re.compile(rf"^{_SEGMENTS}\.\*$")
MAX_EVENT_TYPE = 100  # webhook_deliveries.event_type
MAX_URL = 2048
MAX_DESCRIPTION = 1000
MAX_FILTERS = 100
EXCERPT_CHARS = 1024  # the log keeps the first 1 KB of a response body
MAX_ERROR_CHARS = 2000
MAX_LIMIT = 1000
TRIM_INTERVAL = 3600.0
# How long a delivery may use an endpoint read by this process (WebhookService.recent):
# a change made by another process (CLI, API, another worker) applies within this time.
ENDPOINT_CACHE_SECONDS = 1.0
ENDPOINT_CACHE_SIZE = 10_000

_endpoints = schema.webhook_endpoints
_log = schema.webhook_deliveries
_messages = schema.webhook_messages

# The statements of a delivery's hot path, built once with bound parameters: building a
# Core statement per call (and generating its cache key) cost more CPU than running it.
# A statement object is reused, so SQLAlchemy's compiled cache finds it without work.
_LOGGED = (
    "tenant_id", "webhook_id", "message_id", "event_type", "job_id", "attempt", "at",
    "succeeded", "status_code", "latency_ms", "response_excerpt", "error",
)  # fmt: skip
_ONE_ENDPOINT = sa.and_(
    _endpoints.c.tenant_id == sa.bindparam("p_tenant_id"),
    _endpoints.c.webhook_id == sa.bindparam("p_webhook_id"),
)
_GET_ENDPOINT = sa.select(_endpoints).where(_ONE_ENDPOINT)
# A success: the log row with its endpoint id read in the same statement (none: removed).
_LOG_SUCCESS = (
    _log.insert()
    .from_select(
        ["endpoint_id", *_LOGGED],
        sa.select(
            _endpoints.c.id,
            *(sa.bindparam(f"p_{name}", type_=_log.c[name].type) for name in _LOGGED),
        ).where(_ONE_ENDPOINT),
    )
    .returning(_log.c.id)
)
# The same for a batch of successes (executemany; no RETURNING: the row count tells).
_LOG_SUCCESSES = _log.insert().from_select(
    ["endpoint_id", *_LOGGED],
    sa.select(
        _endpoints.c.id,
        *(sa.bindparam(f"p_{name}", type_=_log.c[name].type) for name in _LOGGED),
    ).where(_ONE_ENDPOINT),
)
# ... then the breaker reset, touching the row only when there is something to reset, so
# healthy deliveries to one endpoint never queue on its row lock.
_RESET_BREAKER = (
    _endpoints.update()
    .where(
        _ONE_ENDPOINT,
        sa.or_(
            _endpoints.c.consecutive_failures != 0,
            _endpoints.c.failing_since.is_not(None),
            _endpoints.c.probe_at.is_not(None),
        ),
    )
    .values(consecutive_failures=0, failing_since=None, probe_at=None)
)
# A failure: an atomic increment (the right-hand sides read the old row).
_COUNT_FAILURE = (
    _endpoints.update()
    .where(_ONE_ENDPOINT)
    .values(
        consecutive_failures=_endpoints.c.consecutive_failures + 1,
        failing_since=sa.func.coalesce(
            _endpoints.c.failing_since, sa.bindparam("p_at", type_=schema.UtcDateTime())
        ),
        probe_at=sa.case(
            (
                _endpoints.c.consecutive_failures + 1 >= sa.bindparam("p_breaker_failures"),
                sa.bindparam("p_probe_at", type_=schema.UtcDateTime()),
            ),
            else_=_endpoints.c.probe_at,
        ),
    )
    .returning(
        _endpoints.c.id,
        _endpoints.c.consecutive_failures,
        _endpoints.c.failing_since,
        _endpoints.c.probe_at,
    )
)
_LOG_ROW = _log.insert()
_MESSAGE_COLUMNS = ("tenant_id", "message_id", "event_type", "occurred_at", "data", "created_at")


def _save_message_statement(dialect: str) -> Any:
    """INSERT of a message that leaves a stored one as it is (ON CONFLICT DO NOTHING)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(_messages)
        .values({name: sa.bindparam(f"p_{name}", type_=_messages.c[name].type)
                 for name in _MESSAGE_COLUMNS})
        .on_conflict_do_nothing(index_elements=["tenant_id", "message_id"])
    )  # fmt: skip


_SAVE_MESSAGE = {name: _save_message_statement(name) for name in ("postgresql", "sqlite")}


# --------------------------------------------------------------------------- signing


def new_secret(size: int = 32) -> str:
    """A new endpoint secret: ``whsec_`` + base64 of `size` random bytes (24-64, the
    Standard Webhooks range); ValueError outside it."""
    if not MIN_SECRET_BYTES <= size <= MAX_SECRET_BYTES:
        raise ValueError(f"secret size must be {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes")
    return SECRET_PREFIX + base64.b64encode(random_secrets.token_bytes(size)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of `secret`: its base64 part decoded (the ``whsec_`` prefix is optional,
    as in the reference library). ValueError naming the problem, never the secret."""
    text = secret.removeprefix(SECRET_PREFIX)
    if not text:
        raise ValueError("secret is empty")
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"secret is not {SECRET_PREFIX} followed by base64") from None
    if not key:
        raise ValueError("secret is empty")
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{message_id}.{timestamp}.{body}">`` (Standard Webhooks;
    `timestamp` in integer Unix seconds)."""
    signed = f"{message_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets: Sequence[str], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one v1 entry per secret, space-separated, in the
    given order (Endpoint.signing_secrets: new first, then the rotated-out one)."""
    if not secrets:
        raise ValueError("no secret to sign with")
    return " ".join(sign(secret, message_id, timestamp, body) for secret in secrets)


def _utc(stamp: dt.datetime) -> dt.datetime:
    return stamp.replace(tzinfo=dt.UTC) if stamp.tzinfo is None else stamp.astimezone(dt.UTC)


def iso_timestamp(stamp: dt.datetime) -> str:
    """ISO 8601 in UTC with milliseconds and "Z" (a naive `stamp` is taken as UTC)."""
    utc = _utc(stamp)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def event_body(event_type: str, timestamp: dt.datetime, data: Mapping[str, Any]) -> bytes:
    """The request body: compact UTF-8 JSON ``{"type", "timestamp", "data"}`` (Standard
    Webhooks convention). Deterministic: `data`'s keys are sorted, so the bytes of a
    retry or a replay (data read back from the database) are those of the first attempt.
    ValueError/TypeError for data JSON cannot hold (NaN, non-JSON values)."""
    head = json.dumps({"type": event_type, "timestamp": iso_timestamp(timestamp)},
                      separators=(",", ":"), ensure_ascii=False)  # fmt: skip
    payload = json.dumps(
        dict(data), separators=(",", ":"), ensure_ascii=False, sort_keys=True, allow_nan=False
    )
    return (head[:-1] + ',"data":' + payload + "}").encode("utf-8")


# --------------------------------------------------------------------------- filters


def filter_problem(value: str) -> str | None:
    """Why `value` is not an event-type filter, or None. Filters: ``*`` (every event), an
    exact lower-case dotted name (``contact.created``) or a prefix wildcard
    (``contact.*``: every type starting with ``contact.``)."""
    if not isinstance(value, str):
        return "must be text"
    if value == "*":
        return None
    if not value:
        return "must not be empty"
    if len(value) > MAX_EVENT_TYPE:
        return f"at most {MAX_EVENT_TYPE} characters"
    if value.endswith("*"):
        if _WILDCARD.match(value):
            return None
        return f"{value!r}: a wildcard is '*' alone or a dotted prefix ending in '.*'"
    if _EVENT_TYPE.match(value):
        return None
    return f"{value!r} is not a lower-case dotted event type such as contact.created"


def subscribed(event_type: str, filters: Sequence[str]) -> bool:
    """Whether an endpoint with `filters` receives `event_type`: ``*``, an exact match, or
    ``prefix.*`` matching every type that starts with ``prefix.``."""
    for item in filters:
        if item == "*" or item == event_type:
            return True
        if item.endswith(".*") and event_type.startswith(item[:-1]):
            return True
    return False


# --------------------------------------------------------------------------- records


class EndpointNotFound(PermanentError):
    """No such endpoint for that tenant (another tenant's ids are never found)."""

    def __init__(self, tenant_id: str, webhook_id: str) -> None:
        super().__init__(f"webhook endpoint {webhook_id!r} not found for tenant {tenant_id!r}")
        self.tenant_id = tenant_id
        self.webhook_id = webhook_id


class EndpointDisabled(PermanentError):
    """The endpoint exists but is disabled; the message gives the recorded reason."""

    def __init__(self, tenant_id: str, webhook_id: str, reason: str | None) -> None:
        super().__init__(
            f"webhook endpoint {webhook_id!r} of tenant {tenant_id!r} is disabled"
            f" ({reason or 'no reason recorded'})"
        )
        self.tenant_id = tenant_id
        self.webhook_id = webhook_id
        self.reason = reason


class MessageNotFound(PermanentError):
    """No stored message with that id for that tenant (trimmed after keep_days)."""


class DeliveryNotFound(PermanentError):
    """No logged delivery attempt with that id for that tenant."""


# A query parameter whose name looks like a credential, and its value (up to & or #).
_SECRET_QUERY = re.compile(
    r"([?&])([^=&#]*(?:key|secret|token|passw|auth|sig|credential)[^=&#]*)=[^&#]*",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of one tenant. `secret` and `previous_secret` never appear in repr,
    nor the password of a URL with one (``https://user:pw@host/``): `shown_url` is the
    URL to show (CLI, repr, logs), `url` the one to send to."""

    tenant_id: str
    webhook_id: str
    url: str
    event_types: tuple[str, ...]
    enabled: bool
    description: str
    disabled_reason: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    secret: str = field(repr=False)
    previous_secret: str | None = field(repr=False)
    previous_secret_until: dt.datetime | None
    consecutive_failures: int
    failing_since: dt.datetime | None
    probe_at: dt.datetime | None

    @property
    def shown_url(self) -> str:
        """`url` with its password, if any, replaced by asterisks (crmqueue.config.mask_url),
        and so the values of query parameters named like a credential (``?token=``,
        ``?api_key=``, ``?sig=``: receivers that authenticate by URL)."""
        return _SECRET_QUERY.sub(r"\1\2=********", mask_url(self.url))

    def __repr__(self) -> str:  # dataclass keeps a __repr__ the class defines
        shown = [
            f"{item.name}={self.shown_url if item.name == 'url' else getattr(self, item.name)!r}"
            for item in dataclasses.fields(self)
            if item.repr
        ]
        return f"Endpoint({', '.join(shown)})"

    def signing_secrets(self, now: dt.datetime) -> list[str]:
        """[secret], or [secret, previous_secret] while the rotation's grace lasts."""
        if (
            self.previous_secret
            and self.previous_secret_until is not None
            and _utc(now) < self.previous_secret_until
        ):
            return [self.secret, self.previous_secret]
        return [self.secret]

    def breaker_open(self, now: dt.datetime) -> bool:
        """Deliveries wait: the breaker tripped and its next probe is not due yet."""
        return self.probe_at is not None and _utc(now) < self.probe_at


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt reports to the log. `error` never holds the secret or
    the signature header; `response_excerpt` is cut to 1 KB again when stored."""

    message_id: str
    event_type: str
    job_id: str | None
    attempt: int
    succeeded: bool
    status_code: int | None
    latency_ms: int
    response_excerpt: str
    error: str | None


@dataclass(frozen=True)
class Delivery:
    """One logged attempt (webhook_deliveries row)."""

    id: int
    tenant_id: str
    webhook_id: str
    message_id: str
    event_type: str
    job_id: str | None
    attempt: int
    at: dt.datetime
    succeeded: bool
    status_code: int | None
    latency_ms: int
    response_excerpt: str
    error: str | None


@dataclass(frozen=True)
class Message:
    """An event message as first sent; a replay re-sends the same id, type, time and data."""

    tenant_id: str
    message_id: str
    event_type: str
    timestamp: dt.datetime
    data: dict[str, Any]


@dataclass(frozen=True)
class BreakerState:
    """The endpoint's breaker after record_attempt. `tripped`: this failure opened the
    breaker; `disabled`: this failure disabled the endpoint (disable_after_days)."""

    consecutive_failures: int
    failing_since: dt.datetime | None
    probe_at: dt.datetime | None
    tripped: bool
    disabled: bool


# --------------------------------------------------------------------------- the service


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        tenant_id=row.tenant_id,
        webhook_id=row.webhook_id,
        url=row.url,
        event_types=tuple(row.event_types),
        enabled=bool(row.active),
        description=row.description or "",
        disabled_reason=row.disabled_reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
        secret=row.secret,
        previous_secret=row.previous_secret,
        previous_secret_until=row.previous_secret_until,
        consecutive_failures=int(row.consecutive_failures or 0),
        failing_since=row.failing_since,
        probe_at=row.probe_at,
    )


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=int(row.id),
        tenant_id=row.tenant_id,
        webhook_id=row.webhook_id,
        message_id=row.message_id,
        event_type=row.event_type,
        job_id=row.job_id,
        attempt=int(row.attempt),
        at=row.at,
        succeeded=bool(row.succeeded),
        status_code=row.status_code,
        latency_ms=int(row.latency_ms),
        response_excerpt=row.response_excerpt,
        error=row.error,
    )


def _tenant_problem(tenant_id: Any) -> str | None:
    if not isinstance(tenant_id, str) or not tenant_id.strip():
        return "must not be empty"
    if len(tenant_id) > schema.TENANT:
        return f"at most {schema.TENANT} characters"
    return None


def _event_types(value: Any) -> tuple[str, ...]:
    """The filters, de-duplicated in order; PayloadError on event_types."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not items:
        raise PayloadError([("event_types", "must list at least one event type, or '*'")])
    if len(items) > MAX_FILTERS:
        raise PayloadError([("event_types", f"at most {MAX_FILTERS} filters")])
    errors = [(f"event_types[{i}]", why) for i, item in enumerate(items)
              if (why := filter_problem(item)) is not None]  # fmt: skip
    if errors:
        raise PayloadError(errors)
    return tuple(dict.fromkeys(items))


# What neither CRM database can store in text: NUL (PostgreSQL refuses it) and lone
# UTF-16 surrogates (no UTF-8 form). Receivers control much of what the log keeps.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` with NUL and lone surrogates replaced by U+FFFD, so that every database
    (PostgreSQL text refuses NUL) and every encoding can take it."""
    return _UNSTORABLE.sub("\ufffd", text)


def _scrub(text: str, secrets: Sequence[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***").replace(secret.removeprefix(SECRET_PREFIX), "***")
    return text


class WebhookService:
    """Endpoints, messages and the delivery log in the CRM store of `settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: Engine = get_engine(settings.database.url)
        # record_attempt trims the log every TRIM_INTERVAL seconds of a process's life,
        # so keep_days holds with no scheduler; the first trim waits one interval.
        self._trim_lock = threading.Lock()
        self._next_trim = time.monotonic() + TRIM_INTERVAL
        # Group commit of successful attempts: the worker threads of a process hand their
        # log rows to one writer thread, which writes every row waiting in one transaction
        # (_log_successes) and then wakes their threads. A caller returns only once its
        # row is committed, so a job's outcome is never recorded before its attempt's log
        # row (a crash loses no logged attempt of a completed job).
        self._log_writer: GroupCommit[_Success] = GroupCommit(
            self._log_successes, name="webhook-log", batch=256, idle_seconds=5.0,
            finish=_log_finished,
        )  # fmt: skip

    # ------------------------------------------------------------------ endpoints

    def _check_url(self, given: Any) -> str:
        if not isinstance(given, str) or not given.strip():
            raise PayloadError([("url", "must not be empty")])
        url = given.strip()
        if len(url) > MAX_URL:
            raise PayloadError([("url", f"at most {MAX_URL} characters")])
        try:
            check_url(url, allowed_networks=self.settings.outbound.networks(), what="url")
        except (PermanentError, RetryableError) as exc:
            raise PayloadError([("url", str(exc).removeprefix("url: "))]) from None
        return url

    @staticmethod
    def _check_tenant(tenant_id: Any) -> None:
        if (why := _tenant_problem(tenant_id)) is not None:
            raise PayloadError([("tenant_id", why)])

    @staticmethod
    def _check_description(description: Any) -> str:
        if not isinstance(description, str):
            raise PayloadError([("description", "must be text")])
        if len(description) > MAX_DESCRIPTION:
            raise PayloadError([("description", f"at most {MAX_DESCRIPTION} characters")])
        return description

    def _row(self, conn: Connection, tenant_id: str, webhook_id: str) -> Any:
        row = conn.execute(
            _GET_ENDPOINT, {"p_tenant_id": tenant_id, "p_webhook_id": webhook_id}
        ).first()
        if row is None:
            raise EndpointNotFound(tenant_id, webhook_id)
        return row

    def add(
        self,
        tenant_id: str,
        url: str,
        event_types: Sequence[str] = ("*",),
        *,
        webhook_id: str | None = None,
        description: str = "",
        secret: str | None = None,
    ) -> tuple[Endpoint, str]:
        """Add an enabled endpoint; returns it and its secret (shown once: the Endpoint's
        repr never shows it). `webhook_id` is the tenant's own (``webhook-789``), else
        generated. PayloadError naming the field: tenant_id, url (the SSRF guard's reason;
        ``[outbound] allowed_networks`` lets a network in), event_types, webhook_id
        (pattern, or already exists for this tenant), description, secret (24-64 bytes)."""
        self._check_tenant(tenant_id)
        clean_url = self._check_url(url)
        filters = _event_types(event_types)
        description = self._check_description(description)
        if webhook_id is None:
            webhook_id = "webhook-" + random_secrets.token_hex(8)
        elif not isinstance(webhook_id, str) or not WEBHOOK_ID.match(webhook_id):
            raise PayloadError([("webhook_id", "1-64 letters, digits, '-', '_', '.' or ':',"
                                 " starting with a letter or digit")])  # fmt: skip
        if secret is None:
            secret = new_secret(self.settings.webhooks.secret_bytes)
        else:
            try:
                size = len(secret_key(secret))
            except ValueError as exc:
                raise PayloadError([("secret", str(exc))]) from None
            if not MIN_SECRET_BYTES <= size <= MAX_SECRET_BYTES:
                raise PayloadError([("secret", f"must decode to {MIN_SECRET_BYTES}-"
                                     f"{MAX_SECRET_BYTES} bytes, not {size}")])  # fmt: skip
            if not secret.startswith(SECRET_PREFIX):
                secret = SECRET_PREFIX + secret
        now = _now()
        values = {
            "tenant_id": tenant_id, "webhook_id": webhook_id, "url": clean_url,
            "secret": secret, "event_types": list(filters), "active": True,
            "description": description, "consecutive_failures": 0,
            "created_at": now, "updated_at": now,
        }  # fmt: skip
        exists = PayloadError([("webhook_id", f"{webhook_id!r} already exists for this tenant")])
        try:
            with self.engine.begin() as conn:
                taken = conn.execute(
                    sa.select(_endpoints.c.id).where(
                        _endpoints.c.tenant_id == tenant_id,
                        _endpoints.c.webhook_id == webhook_id,
                    )
                ).first()
                if taken is not None:
                    raise exists
                conn.execute(_endpoints.insert().values(**values))
                endpoint = _endpoint(self._row(conn, tenant_id, webhook_id))
        except sa.exc.IntegrityError:  # a concurrent add of the same id won
            raise exists from None
        return endpoint, secret

    def list(self, tenant_id: str) -> list[Endpoint]:
        """The tenant's endpoints, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(_endpoints)
                .where(_endpoints.c.tenant_id == tenant_id)
                .order_by(_endpoints.c.id)
            ).all()
        return [_endpoint(row) for row in rows]

    def get(self, tenant_id: str, webhook_id: str) -> Endpoint:
        """The endpoint; EndpointNotFound (also for another tenant's id)."""
        with self.engine.connect() as conn:
            return _endpoint(self._row(conn, tenant_id, webhook_id))

    def recent(
        self, tenant_id: str, webhook_id: str, max_age: float = ENDPOINT_CACHE_SECONDS
    ) -> Endpoint:
        """`get`, answered from this process's read of the endpoint when that is at most
        `max_age` seconds old (the delivery path: one read per endpoint and second, not
        per delivery). Only an enabled endpoint with a closed, clean breaker is kept, and
        any change this process makes to the endpoint (update, enable, disable, rotate,
        remove, a failed attempt, a probe) drops it at once; a change by another process
        applies within `max_age`. EndpointNotFound."""
        return _RECENT.get(self, tenant_id, webhook_id, max_age)

    def _change(self, tenant_id: str, webhook_id: str, **values: Any) -> Endpoint:
        # Dropped before and after: a read between the two may predate the commit.
        _RECENT.forget(self, tenant_id, webhook_id)
        try:
            return self._write(tenant_id, webhook_id, values)
        finally:
            _RECENT.forget(self, tenant_id, webhook_id)

    def _write(self, tenant_id: str, webhook_id: str, values: dict[str, Any]) -> Endpoint:
        with self.engine.begin() as conn:
            result = conn.execute(
                _endpoints.update()
                .where(_endpoints.c.tenant_id == tenant_id, _endpoints.c.webhook_id == webhook_id)
                .values(updated_at=_now(), **values)
            )
            if result.rowcount == 0:
                raise EndpointNotFound(tenant_id, webhook_id)
            return _endpoint(self._row(conn, tenant_id, webhook_id))

    def update(
        self,
        tenant_id: str,
        webhook_id: str,
        *,
        url: str | None = None,
        event_types: Sequence[str] | None = None,
        description: str | None = None,
    ) -> Endpoint:
        """Change the URL (checked again by the SSRF guard), filters or description; None
        keeps a value. PayloadError as for add; EndpointNotFound."""
        values: dict[str, Any] = {}
        if url is not None:
            values["url"] = self._check_url(url)
        if event_types is not None:
            values["event_types"] = list(_event_types(event_types))
        if description is not None:
            values["description"] = self._check_description(description)
        if not values:
            return self.get(tenant_id, webhook_id)
        return self._change(tenant_id, webhook_id, **values)

    def enable(self, tenant_id: str, webhook_id: str) -> Endpoint:
        """Enable the endpoint, clearing the disabled reason and resetting its breaker."""
        return self._change(
            tenant_id, webhook_id, active=True, disabled_reason=None,
            consecutive_failures=0, failing_since=None, probe_at=None,
        )  # fmt: skip

    def disable(
        self, tenant_id: str, webhook_id: str, reason: str = "disabled by an operator"
    ) -> Endpoint:
        """Disable the endpoint with `reason` (shown by show/list and in EndpointDisabled)."""
        reason = (reason or "disabled by an operator")[:MAX_DESCRIPTION]
        return self._change(tenant_id, webhook_id, active=False, disabled_reason=reason)

    def rotate(self, tenant_id: str, webhook_id: str, *, grace_seconds: float | None = None) -> str:
        """A new secret, returned once. The current one keeps signing beside it for
        `grace_seconds` (default webhooks.rotation_grace_hours; 0 = stop at once); a still
        older one stops now."""
        grace = (
            self.settings.webhooks.rotation_grace_hours * 3600.0
            if grace_seconds is None
            else grace_seconds
        )
        if grace < 0:
            raise PayloadError([("grace_seconds", "must not be negative")])
        fresh = new_secret(self.settings.webhooks.secret_bytes)
        now = _now()
        # One statement: the right-hand sides read the row as it was, so two concurrent
        # rotations cannot both keep the same old secret and lose the first new one.
        self._change(
            tenant_id,
            webhook_id,
            secret=fresh,
            previous_secret=_endpoints.c.secret if grace > 0 else None,
            previous_secret_until=now + dt.timedelta(seconds=grace) if grace > 0 else None,
        )
        return fresh

    def remove(self, tenant_id: str, webhook_id: str) -> None:
        """Delete the endpoint and its delivery log; EndpointNotFound."""
        _RECENT.forget(self, tenant_id, webhook_id)
        with self.engine.begin() as conn:
            row = self._row(conn, tenant_id, webhook_id)
            conn.execute(
                _log.delete().where(_log.c.tenant_id == tenant_id, _log.c.endpoint_id == row.id)
            )
            conn.execute(
                _endpoints.delete().where(
                    _endpoints.c.tenant_id == tenant_id, _endpoints.c.id == row.id
                )
            )
        _RECENT.forget(self, tenant_id, webhook_id)

    def subscribers(self, tenant_id: str, event_type: str) -> builtins.list[Endpoint]:
        """The tenant's enabled endpoints whose filters match `event_type`, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(_endpoints)
                .where(_endpoints.c.tenant_id == tenant_id, _endpoints.c.active == sa.true())
                .order_by(_endpoints.c.id)
            ).all()
        return [_endpoint(row) for row in rows if subscribed(event_type, row.event_types)]

    # ------------------------------------------------------------------ messages

    def save_message(self, message: Message) -> None:
        """Store `message` for replay; a second save of the same (tenant, message_id)
        changes nothing (the first one is what was signed and sent)."""
        values = self._message_values(message)
        with self.engine.begin() as conn:
            conn.execute(_SAVE_MESSAGE[self.engine.dialect.name], values)

    def _message_values(self, message: Message) -> dict[str, Any]:
        """The bound parameters of _SAVE_MESSAGE; PayloadError on tenant_id, message_id."""
        self._check_tenant(message.tenant_id)
        if not message.message_id or len(message.message_id) > 64:
            raise PayloadError([("message_id", "1-64 characters")])
        if not message.event_type or len(message.event_type) > MAX_EVENT_TYPE:
            raise PayloadError([("event_type", f"1-{MAX_EVENT_TYPE} characters")])
        return {
            "p_tenant_id": message.tenant_id, "p_message_id": message.message_id,
            "p_event_type": message.event_type, "p_occurred_at": _utc(message.timestamp),
            "p_data": dict(message.data), "p_created_at": _now(),
        }  # fmt: skip

    def message(self, tenant_id: str, message_id: str) -> Message:
        """The stored message; MessageNotFound (also once trimmed after keep_days)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(_messages).where(
                    _messages.c.tenant_id == tenant_id, _messages.c.message_id == message_id
                )
            ).first()
        if row is None:
            raise MessageNotFound(
                f"webhook message {message_id!r} not found for tenant {tenant_id!r}"
                f" (messages are kept {self.settings.webhooks.keep_days:g} days)"
            )
        return Message(
            tenant_id=row.tenant_id,
            message_id=row.message_id,
            event_type=row.event_type,
            timestamp=row.occurred_at,
            data=dict(row.data),
        )

    # ------------------------------------------------------------------ log and breaker

    def record_attempt(
        self,
        endpoint: Endpoint,
        attempt: Attempt,
        now: dt.datetime | None = None,
        *,
        message: Message | None = None,
    ) -> BreakerState:
        """Log `attempt` and update the endpoint's breaker in ONE transaction.

        Success resets the breaker. A failure counts (an atomic increment, so concurrent
        workers never lose one); from webhooks.breaker_failures consecutive failures on,
        probe_at = now + webhooks.breaker_probe_seconds (`tripped` on the failure that
        reaches the count); once failing_since is webhooks.disable_after_days old the
        endpoint is disabled with a reason (`disabled` for the one caller that did it).
        The excerpt is cut to 1 KB and the error to 2,000 characters, and the endpoint's
        secrets are masked in both. EndpointNotFound when the endpoint was removed.
        About once an hour it also trims the log (see trim).

        `message`, when given, is stored for replay (as save_message) in the same
        transaction: a delivery's first attempt stores its message and its log row with
        one commit."""
        saved = self._message_values(message) if message is not None else None
        try:
            state = self._record(endpoint, attempt, _utc(now) if now is not None else _now(), saved)
        finally:
            if not attempt.succeeded:  # and after the commit (see _change)
                _RECENT.forget(self, endpoint.tenant_id, endpoint.webhook_id)
        self._trim_now_and_then()
        return state

    def record_success(
        self,
        endpoint: Endpoint,
        attempt: Attempt,
        *,
        message: Message | None = None,
        result: dict[str, Any] | None = None,
    ) -> PendingLog:
        """record_attempt for a successful attempt, without waiting for the commit: the
        row (and `message`) go to this process's log writer, and the returned PendingLog's
        `done` is set once they are committed, or the commit failed (logged as an error
        naming the endpoint and message, never the database's text, which may quote the
        row; an endpoint removed meanwhile took its log with it) and noted as a "warning"
        in `result` (the job's result, not yet recorded). The caller keeps its job from
        completing before `done` (crmqueue.engine.complete_after)."""
        if not attempt.succeeded:
            raise ValueError("record_success() takes a successful attempt")
        saved = self._message_values(message) if message is not None else None
        row = self._log_row(endpoint, attempt, _now())
        pending = PendingLog(row, saved, waited=False, result=result)
        self._log_writer.submit_nowait(pending)
        self._trim_now_and_then()
        return pending

    def _trim_now_and_then(self) -> None:
        if time.monotonic() >= self._next_trim and self._trim_lock.acquire(blocking=False):
            try:
                self._next_trim = time.monotonic() + TRIM_INTERVAL
                self.trim()
            finally:
                self._trim_lock.release()

    def _log_row(self, endpoint: Endpoint, attempt: Attempt, at: dt.datetime) -> dict[str, Any]:
        hidden = (endpoint.secret, endpoint.previous_secret)
        error = attempt.error
        return {
            "tenant_id": endpoint.tenant_id,
            "webhook_id": endpoint.webhook_id,
            "message_id": attempt.message_id[:64],
            "event_type": attempt.event_type[:MAX_EVENT_TYPE],
            "job_id": attempt.job_id[:64] if attempt.job_id else None,
            "attempt": attempt.attempt,
            "at": at,
            "succeeded": attempt.succeeded,
            "status_code": attempt.status_code,
            "latency_ms": max(0, int(attempt.latency_ms)),
            # Text from a receiver (or an error quoting it) made storable on both databases.
            "response_excerpt": storable(_scrub(attempt.response_excerpt[:EXCERPT_CHARS], hidden)),
            "error": None if error is None else storable(_scrub(error[:MAX_ERROR_CHARS], hidden)),
        }

    def _record(
        self,
        endpoint: Endpoint,
        attempt: Attempt,
        at: dt.datetime,
        message: dict[str, Any] | None,
    ) -> BreakerState:
        rules = self.settings.webhooks
        logged = self._log_row(endpoint, attempt, at)
        if attempt.succeeded:
            self._log_writer.submit(PendingLog(logged, message))
            return BreakerState(0, None, None, tripped=False, disabled=False)
        mine = {"p_tenant_id": endpoint.tenant_id, "p_webhook_id": endpoint.webhook_id}
        # The breaker changes: deliveries read the endpoint afresh.
        _RECENT.forget(self, endpoint.tenant_id, endpoint.webhook_id)
        with self.engine.begin() as conn:
            if message is not None:
                conn.execute(_SAVE_MESSAGE[self.engine.dialect.name], message)
            row = conn.execute(
                _COUNT_FAILURE,
                {
                    **mine,
                    "p_at": at,
                    "p_breaker_failures": rules.breaker_failures,
                    "p_probe_at": at + dt.timedelta(seconds=rules.breaker_probe_seconds),
                },
            ).first()
            if row is None:
                raise EndpointNotFound(endpoint.tenant_id, endpoint.webhook_id)
            conn.execute(_LOG_ROW, {"endpoint_id": row.id, **logged})
            count = int(row.consecutive_failures)
            since = row.failing_since
            disabled = False
            if since is not None and at - since >= dt.timedelta(days=rules.disable_after_days):
                reason = (
                    f"every delivery failed since {iso_timestamp(since)}"
                    f" ({count} attempts in a row; webhooks.disable_after_days ="
                    f" {rules.disable_after_days:g})"
                )
                disabled = (
                    conn.execute(
                        _endpoints.update()
                        .where(
                            _endpoints.c.tenant_id == endpoint.tenant_id,
                            _endpoints.c.webhook_id == endpoint.webhook_id,
                            _endpoints.c.id == row.id,
                            _endpoints.c.active == sa.true(),
                        )
                        .values(active=False, disabled_reason=reason, updated_at=at)
                    ).rowcount
                    == 1
                )
        return BreakerState(
            consecutive_failures=count,
            failing_since=since,
            probe_at=row.probe_at,
            tripped=count == rules.breaker_failures,
            disabled=disabled,
        )

    def _log_successes(self, batch: builtins.list[_Success]) -> None:
        """One transaction for a batch of successful attempts (the log writer): their
        messages, their log rows (each with its endpoint id read in the INSERT) and the
        breaker resets. When an endpoint is gone (fewer rows than attempts) it is rolled
        back and every attempt is written alone, so that only the ones of the removed
        endpoint fail (EndpointNotFound)."""
        messages = [item.message for item in batch if item.message is not None]
        rows = [{f"p_{name}": value for name, value in item.logged.items()} for item in batch]
        endpoints = {(row["p_tenant_id"], row["p_webhook_id"]) for row in rows}
        try:
            with self.engine.begin() as conn:
                if messages:
                    conn.execute(_SAVE_MESSAGE[self.engine.dialect.name], messages)
                count = conn.execute(_LOG_SUCCESSES, rows).rowcount
                if count < 0:  # psycopg's executemany does not count: look the ids up
                    found = conn.execute(
                        sa.select(_endpoints.c.tenant_id, _endpoints.c.webhook_id).where(
                            sa.tuple_(_endpoints.c.tenant_id, _endpoints.c.webhook_id).in_(
                                sorted(endpoints)
                            )
                        )
                    ).all()
                    # An endpoint removed since the INSERT took its log with it.
                    count = len(rows) if len(found) == len(endpoints) else -1
                if count != len(rows):
                    raise _EndpointGone
                conn.execute(
                    _RESET_BREAKER,
                    [{"p_tenant_id": tenant, "p_webhook_id": webhook}
                     for tenant, webhook in sorted(endpoints)],
                )  # fmt: skip
            return
        except _EndpointGone:
            pass
        for item in batch:
            try:
                self._log_success(item)
            except Exception as exc:
                item.error = exc

    def _log_success(self, item: _Success) -> None:
        logged = item.logged
        mine = {"p_tenant_id": logged["tenant_id"], "p_webhook_id": logged["webhook_id"]}
        with self.engine.begin() as conn:
            if item.message is not None:
                conn.execute(_SAVE_MESSAGE[self.engine.dialect.name], item.message)
            inserted = conn.execute(
                _LOG_SUCCESS, {f"p_{name}": value for name, value in logged.items()}
            ).first()
            if inserted is None:
                raise EndpointNotFound(logged["tenant_id"], logged["webhook_id"])
            conn.execute(_RESET_BREAKER, mine)

    def claim_probe(
        self, endpoint: Endpoint, hold_seconds: float, now: dt.datetime | None = None
    ) -> bool:
        """Compare-and-set in SQL: True for exactly one caller once the endpoint's probe_at
        has passed; it moves probe_at to now + `hold_seconds`, so the others keep waiting
        while the probe runs (its record_attempt then resets or re-arms the breaker). A
        single UPDATE: PostgreSQL re-checks the condition on the row a concurrent winner
        changed, SQLite runs writers one at a time. False when the breaker is closed."""
        at = _utc(now) if now is not None else _now()
        _RECENT.forget(self, endpoint.tenant_id, endpoint.webhook_id)
        with self.engine.begin() as conn:
            result = conn.execute(
                _endpoints.update()
                .where(
                    _endpoints.c.tenant_id == endpoint.tenant_id,
                    _endpoints.c.webhook_id == endpoint.webhook_id,
                    _endpoints.c.probe_at.is_not(None),
                    _endpoints.c.probe_at <= at,
                )
                .values(probe_at=at + dt.timedelta(seconds=max(0.0, hold_seconds)))
            )
        _RECENT.forget(self, endpoint.tenant_id, endpoint.webhook_id)
        return result.rowcount == 1

    def deliveries(
        self, tenant_id: str, webhook_id: str, *, limit: int = 50
    ) -> builtins.list[Delivery]:
        """The endpoint's logged attempts, newest first, at most `limit` (1-1000);
        EndpointNotFound."""
        if not 1 <= limit <= MAX_LIMIT:
            raise PayloadError([("limit", f"must be 1-{MAX_LIMIT}")])
        with self.engine.connect() as conn:
            endpoint = self._row(conn, tenant_id, webhook_id)
            rows = conn.execute(
                sa.select(_log)
                .where(_log.c.tenant_id == tenant_id, _log.c.endpoint_id == endpoint.id)
                .order_by(_log.c.id.desc())
                .limit(limit)
            ).all()
        return [_delivery(row) for row in rows]

    def delivery(self, tenant_id: str, delivery_id: int) -> Delivery:
        """One logged attempt by its id; DeliveryNotFound (also for another tenant's)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(_log).where(_log.c.tenant_id == tenant_id, _log.c.id == delivery_id)
            ).first()
        if row is None:
            raise DeliveryNotFound(
                f"webhook delivery {delivery_id} not found for tenant {tenant_id!r}"
            )
        return _delivery(row)

    def trim(self, now: dt.datetime | None = None) -> int:
        """Delete log rows and stored messages older than webhooks.keep_days (every
        tenant: a retention sweep); returns how many rows went."""
        cutoff = (_utc(now) if now is not None else _now()) - dt.timedelta(
            days=self.settings.webhooks.keep_days
        )
        with self.engine.begin() as conn:
            logged = conn.execute(_log.delete().where(_log.c.at < cutoff)).rowcount
            kept = conn.execute(_messages.delete().where(_messages.c.created_at < cutoff)).rowcount
        return int(logged) + int(kept)


class _EndpointGone(Exception):
    """A batch of successes named an endpoint that no longer exists."""


@dataclass
class PendingLog:
    """A successful attempt waiting for the log writer: its row, its message (or None).
    `done` is set once written (or failed: `error`); `waited`: a caller waits for it and
    learns the error, else the writer logs it."""

    logged: dict[str, Any]
    message: dict[str, Any] | None
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    waited: bool = True
    # A job result not yet recorded (record_success): a failed write adds a "warning".
    result: dict[str, Any] | None = None


_Success = PendingLog


def _log_finished(item: _Success) -> None:
    """After the log writer's commit: a failed write nobody waits for is logged as an
    error and noted in the job's result."""
    # An endpoint removed meanwhile took its log with it: nothing to say.
    gone = isinstance(item.error, EndpointNotFound)
    if item.error is not None and not item.waited and not gone:
        warning = f"the delivery log could not be written ({type(item.error).__name__})"
        if item.result is not None:
            item.result["warning"] = warning
        row = item.logged
        log.error(
            "webhook %s of tenant %s, message %s, attempt %d (ok): %s",
            row["webhook_id"], row["tenant_id"], row["message_id"], row["attempt"],
            warning,
        )  # fmt: skip


class _RecentEndpoints:
    """Endpoints read lately by this process, per CRM database, for WebhookService.recent.
    A generation counter, moved on by every change, keeps a read that raced with a change
    from being kept (it may predate the change)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._kept: dict[tuple[str, str, str], tuple[float, Endpoint]] = {}

    def get(
        self, service: WebhookService, tenant_id: str, webhook_id: str, max_age: float
    ) -> Endpoint:
        key = (service.settings.database.url, tenant_id, webhook_id)
        with self._lock:
            kept = self._kept.get(key)
            generation = self._generation
        now = time.monotonic()
        if kept is not None and now - kept[0] <= max_age:
            return kept[1]
        endpoint = service.get(tenant_id, webhook_id)
        clean = (
            endpoint.enabled
            and endpoint.probe_at is None
            and endpoint.failing_since is None
            and endpoint.consecutive_failures == 0
        )
        with self._lock:
            if clean and generation == self._generation:
                if len(self._kept) >= ENDPOINT_CACHE_SIZE:
                    self._kept.clear()
                self._kept[key] = (now, endpoint)
            else:
                self._kept.pop(key, None)
        return endpoint

    def forget(self, service: WebhookService, tenant_id: str, webhook_id: str) -> None:
        with self._lock:
            self._generation += 1
            self._kept.pop((service.settings.database.url, tenant_id, webhook_id), None)


_RECENT = _RecentEndpoints()

_services: dict[str, WebhookService] = {}
_services_lock = threading.Lock()


def service(settings: Settings | None = None) -> WebhookService:
    """The WebhookService of `settings` (default: the process broker's settings), cached
    per database URL; a service built from different settings replaces it."""
    if settings is None:
        from crmqueue.engine.queues import get_broker  # the engine imports job bodies

        settings = get_broker().settings
    url = settings.database.url
    with _services_lock:
        cached = _services.get(url)
        if cached is None or not (cached.settings is settings or cached.settings == settings):
            cached = _services[url] = WebhookService(settings)
        return cached
