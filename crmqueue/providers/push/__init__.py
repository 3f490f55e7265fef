"""Push providers behind base.PushProvider; web push (webpush.WebPushProvider) is the one
protocol browsers speak. Listed explicitly (a frozen executable cannot discover modules).

`get_provider(settings)` builds it from ``[push]`` and ``[outbound]``, keeping one VAPID
signer per process (its JWTs are reused per push service); `not_configured` says why
push cannot be sent (no subject or no private key), or None."""

from __future__ import annotations

import threading

from crmqueue.config import PushSettings, Settings
from crmqueue.providers.push.base import (
    MAX_PLAINTEXT,
    PayloadTooLarge,
    PushMessage,
    PushProvider,
    PushResult,
    PushTarget,
    SubscriptionGone,
    fit_payload,
)
from crmqueue.providers.push.webpush import VapidKey, VapidSigner, WebPushProvider, load_vapid_key

__all__ = [
    "MAX_PLAINTEXT",
    "PayloadTooLarge",
    "PushMessage",
    "PushProvider",
    "PushResult",
    "PushTarget",
    "SubscriptionGone",
    "VapidKey",
    "fit_payload",
    "get_provider",
    "not_configured",
]

_signers: dict[tuple[object, ...], VapidSigner] = {}
_lock = threading.Lock()


def not_configured(settings: PushSettings) -> str | None:
    """Why push cannot be sent with `settings`, or None."""
    missing = []
    if not settings.vapid_subject:
        missing.append("push.vapid_subject")
    if settings.vapid_private_key is None and settings.vapid_private_key_file is None:
        missing.append("a VAPID private key (CRMQUEUE_PUSH__VAPID_PRIVATE_KEY or"
                       " push.vapid_private_key_file)")  # fmt: skip
    if not missing:
        return None
    return f"web push is not configured: set {' and '.join(missing)} (crmqueue push keys)"


def _signer(settings: PushSettings) -> VapidSigner:
    secret = settings.vapid_private_key
    path = settings.vapid_private_key_file
    stamp: object = None
    if secret is None and path is not None:
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            stamp = None  # load_vapid_key says what is wrong
    key = (
        secret.get_secret_value() if secret else None, path, stamp,
        settings.vapid_public_key, settings.vapid_subject, settings.jwt_expiry_seconds,
    )  # fmt: skip
    with _lock:
        found = _signers.get(key)
    if found is not None:
        return found
    vapid = load_vapid_key(settings)
    assert vapid is not None and settings.vapid_subject  # checked by not_configured
    signer = VapidSigner(vapid, settings.vapid_subject, settings.jwt_expiry_seconds)
    with _lock:
        if len(_signers) > 16:
            _signers.clear()
        _signers[key] = signer
    return signer


def get_provider(settings: Settings, *, ca_certs: str | None = None) -> PushProvider | None:
    """The web push provider of `settings`, or None when push is not configured
    (not_configured says why). ConfigError when the private key is unreadable or does not
    match push.vapid_public_key."""
    if not_configured(settings.push) is not None:
        return None
    return WebPushProvider(
        settings.push,
        _signer(settings.push),
        allowed_networks=settings.outbound.networks(),
        ca_certs=ca_certs,
    )
