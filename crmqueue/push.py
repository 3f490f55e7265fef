"""Web push subscriptions, the domain service the notification queue's push body, the
command line and client code share (issue #14).

A browser subscribes with the application server key (`vapid_public_key`) and hands
the CRM a PushSubscription: an endpoint URL at its push service and two keys. Give it
to `subscribe` (or `subscribe_json` with the browser's ``subscription.toJSON()``); the
notification queue then sends each notification that has the push channel to every
subscription of the user (crmqueue.workers.push). A subscription the push service says
is gone (404/410) is deleted there.

Every call names a tenant AND a user: nothing here reads or changes another user's
subscriptions. Checks at subscribe (PayloadError naming the field):

- endpoint: an https URL (http only to hosts inside ``[outbound] allowed_networks``, a
  loopback test service), at most MAX_ENDPOINT characters, no user info or fragment,
  its host among ``[push] allowed_hosts`` (the browser push services), and every address
  it resolves to public unless inside ``[outbound] allowed_networks`` (the SSRF guard of
  crmqueue.providers.http; sending goes through the same guard again);
- p256dh: base64url of an uncompressed P-256 point (65 bytes, RFC 8291 section 3.1);
- auth: base64url of 16 bytes (RFC 8291 section 3.2);
- user_agent: optional, printable, at most 500 characters.
"""

from __future__ import annotations

import binascii
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from crmqueue.config import Settings
from crmqueue.crm import push_subscriptions as store
from crmqueue.crm.users import check_user_id
from crmqueue.errors import PayloadError, PermanentError, RetryableError
from crmqueue.providers.http import check_url
from crmqueue.providers.push.webpush import VapidKey, load_vapid_key, public_key_from_b64
from crmqueue.providers.push.webpush import b64url_decode as _b64url_decode
from crmqueue.tenancy import tenant_problem
from crmqueue.url_rules import is_allowed

__all__ = [
    "MAX_ENDPOINT",
    "Subscription",
    "VapidKey",
    "application_server_key",
    "check_endpoint",
    "generate_vapid_keys",
    "subscribe",
    "subscribe_json",
    "subscriptions",
    "unsubscribe",
]

MAX_ENDPOINT = 2000
MAX_USER_AGENT = 500


@dataclass(frozen=True)
class Subscription:
    """One browser's (or device's) subscription of a user."""

    id: int
    endpoint: str
    user_agent: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    last_sent_at: dt.datetime | None
    last_status: int | None

    @property
    def host(self) -> str:
        from urllib.parse import urlsplit

        return urlsplit(self.endpoint).hostname or ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 UTC. The keys are not shown."""
        return {
            "id": self.id, "endpoint": self.endpoint, "host": self.host,
            "user_agent": self.user_agent, "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "last_sent_at": self.last_sent_at.isoformat() if self.last_sent_at else None,
            "last_status": self.last_status,
        }  # fmt: skip


def _public(row: store.StoredSubscription) -> Subscription:
    return Subscription(
        row.id, row.endpoint, row.user_agent, row.created_at, row.updated_at,
        row.last_sent_at, row.last_status,
    )  # fmt: skip


def _settings(settings: Settings | None) -> Settings:
    if settings is not None:
        return settings
    from crmqueue.engine.queues import get_broker

    return get_broker().settings


def _engine(engine: Engine | None, settings: Settings) -> Engine:
    if engine is not None:
        return engine
    from crmqueue.crm.store import get_engine

    return get_engine(settings.database.url)


def _check_owner(tenant_id: str, user_id: str) -> str:
    problem = tenant_problem(tenant_id)
    if problem is not None:
        raise PayloadError([("tenant_id", problem)])
    return check_user_id(user_id)


def check_endpoint(endpoint: Any, settings: Settings) -> str:
    """`endpoint` stripped, if a push subscription may name it (module docstring);
    PayloadError naming ``endpoint`` otherwise. Resolves the host (the SSRF guard)."""
    from urllib.parse import urlsplit

    if not isinstance(endpoint, str) or not endpoint.strip():
        raise PayloadError([("endpoint", "must be a non-empty URL")])
    url = endpoint.strip()
    if len(url) > MAX_ENDPOINT:
        raise PayloadError([("endpoint", f"at most {MAX_ENDPOINT} characters")])
    if not url.isascii() or not url.isprintable() or " " in url:
        raise PayloadError([("endpoint", "must be an ASCII URL without spaces")])
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise PayloadError([("endpoint", "not a valid URL")]) from None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise PayloadError([("endpoint", "must not hold user info")])
    if parts.fragment:
        raise PayloadError([("endpoint", "must not have a #fragment")])
    if parts.scheme.lower() not in ("https", "http"):
        raise PayloadError([("endpoint", "must be an https URL")])
    host = (parts.hostname or "").lower()
    if not settings.push.host_allowed(host):
        raise PayloadError(
            [("endpoint", f"host {host} is not a push service of push.allowed_hosts")]
        )
    networks = settings.outbound.networks()
    try:
        target = check_url(url, allowed_networks=networks, what="endpoint")
    except (PermanentError, RetryableError) as exc:
        raise PayloadError([("endpoint", str(exc).removeprefix("endpoint: "))]) from None
    if target.scheme == "http" and not all(is_allowed(a, networks) for a in target.addresses):
        raise PayloadError(
            [("endpoint", "must be an https URL (http only inside outbound.allowed_networks)")]
        )
    return url


def _check_key(value: Any, name: str, size: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PayloadError([(name, "must be base64url text")])
    text = value.strip()
    try:
        raw = _b64url_decode(text)
    except (ValueError, binascii.Error):
        raise PayloadError([(name, "must be base64url text")]) from None
    if len(raw) != size:
        raise PayloadError([(name, f"must decode to {size} bytes, not {len(raw)}")])
    if name == "p256dh":
        try:
            public_key_from_b64(text)
        except ValueError:
            raise PayloadError([(name, "not a point on the P-256 curve")]) from None
    return text.rstrip("=")


def subscribe(
    tenant_id: str,
    user_id: str,
    endpoint: str,
    p256dh: str,
    auth: str,
    *,
    user_agent: str | None = None,
    engine: Engine | None = None,
    settings: Settings | None = None,
    now: dt.datetime | None = None,
) -> Subscription:
    """Add the user's subscription, or refresh the one with the same endpoint (new keys,
    user agent). Raises PayloadError naming the bad field (see the module docstring), or
    when the user already has push.max_subscriptions_per_user others."""
    user_id = _check_owner(tenant_id, user_id)
    config = _settings(settings)
    url = check_endpoint(endpoint, config)
    p256dh = _check_key(p256dh, "p256dh", 65)
    auth = _check_key(auth, "auth", 16)
    if user_agent is not None and not isinstance(user_agent, str):
        raise PayloadError([("user_agent", f"must be text, not {type(user_agent).__name__}")])
    if user_agent is not None:
        user_agent = user_agent.strip() or None
    if user_agent is not None and (
        len(user_agent) > MAX_USER_AGENT or not user_agent.isprintable()
    ):
        raise PayloadError(
            [("user_agent", f"printable text of at most {MAX_USER_AGENT} characters")]
        )
    engine = _engine(engine, config)
    limit = config.push.max_subscriptions_per_user
    known = {row.endpoint for row in store.list_for_user(engine, tenant_id, user_id)}
    if url not in known and len(known) >= limit:
        raise PayloadError(
            [("endpoint", f"the user has {len(known)} subscriptions, the most"
              " push.max_subscriptions_per_user allows: unsubscribe one first")]
        )  # fmt: skip
    stamp = dt.datetime.now(dt.UTC) if now is None else now
    row, _created = store.upsert(engine, tenant_id, user_id, url, p256dh, auth, user_agent, stamp)
    return _public(row)


def subscribe_json(
    tenant_id: str,
    user_id: str,
    subscription: Mapping[str, Any],
    *,
    user_agent: str | None = None,
    engine: Engine | None = None,
    settings: Settings | None = None,
) -> Subscription:
    """`subscribe` with a browser's PushSubscription JSON:
    ``{"endpoint": ..., "expirationTime": null, "keys": {"p256dh": ..., "auth": ...}}``."""
    if not isinstance(subscription, Mapping):
        raise PayloadError([("subscription", "must be a JSON object")])
    keys = subscription.get("keys")
    if not isinstance(keys, Mapping):
        raise PayloadError([("keys", "must be an object with p256dh and auth")])
    unknown = set(subscription) - {"endpoint", "expirationTime", "keys"}
    if unknown:
        raise PayloadError([(str(name), "unknown field") for name in sorted(map(str, unknown))])
    expires = subscription.get("expirationTime")
    if expires is not None and (type(expires) not in (int, float) or not expires >= 0):
        # W3C Push API: a DOMHighResTimeStamp (milliseconds since the epoch) or null
        raise PayloadError([("expirationTime", "must be null or milliseconds since 1970")])
    return subscribe(
        tenant_id, user_id, subscription.get("endpoint"), keys.get("p256dh"),  # type: ignore[arg-type]
        keys.get("auth"), user_agent=user_agent, engine=engine, settings=settings,  # type: ignore[arg-type]
    )  # fmt: skip


def unsubscribe(
    tenant_id: str,
    user_id: str,
    endpoint: str,
    *,
    engine: Engine | None = None,
    settings: Settings | None = None,
) -> bool:
    """Remove the user's subscription with `endpoint`; False when the user has none
    (another user's subscription is never touched)."""
    user_id = _check_owner(tenant_id, user_id)
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise PayloadError([("endpoint", "must be a non-empty URL")])
    if not endpoint.isascii() or not endpoint.strip().isprintable():
        # every stored endpoint is (check_endpoint); and hashing a lone surrogate raised
        raise PayloadError([("endpoint", "must be an ASCII URL without spaces")])
    config = _settings(settings)
    return store.delete(_engine(engine, config), tenant_id, user_id, endpoint.strip())


def subscriptions(
    tenant_id: str,
    user_id: str,
    *,
    engine: Engine | None = None,
    settings: Settings | None = None,
) -> list[Subscription]:
    """The user's subscriptions, oldest first."""
    user_id = _check_owner(tenant_id, user_id)
    config = _settings(settings)
    return [
        _public(row) for row in store.list_for_user(_engine(engine, config), tenant_id, user_id)
    ]


def generate_vapid_keys() -> VapidKey:
    """A new VAPID key pair (P-256): `.public_key` (base64url, the browser's
    applicationServerKey), `.private_b64()` and `.private_pem()` for the server."""
    return VapidKey.generate()


def application_server_key(settings: Settings | None = None) -> str | None:
    """The public key browsers subscribe with: push.vapid_public_key, else derived from
    the configured private key; None when neither is set."""
    config = _settings(settings)
    if config.push.vapid_public_key:
        return config.push.vapid_public_key
    key = load_vapid_key(config.push)
    return key.public_key if key is not None else None
