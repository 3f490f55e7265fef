"""Web push (RFC 8030) to a browser's push service: the payload encrypted per RFC 8291
(``aes128gcm``, RFC 8188) with ``http-ece``, the request authorized per RFC 8292 (VAPID:
an ES256 JWT signed with ``py-vapid``, ``aud`` the endpoint's origin, ``exp`` at most 24
hours ahead, ``sub`` a mailto: or https: URI), sent through the SSRF-guarded HTTP path
(crmqueue.providers.http.guarded_request: the endpoint is a URL the tenant's browser
supplied).

Keys (`VapidKey`): the private key comes as PEM or base64url of its 32 raw bytes; the
public key travels as base64url of the uncompressed P-256 point (65 bytes), which is
also the browser's applicationServerKey. Neither key nor JWT is ever logged or put in an
error message.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import http_ece
import urllib3
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid.jwt import sign as vapid_sign

from crmqueue.config import PushSettings
from crmqueue.errors import ConfigError, PermanentError
from crmqueue.providers import http
from crmqueue.providers.push.base import RECORD_SIZE, PushMessage, PushProvider, PushTarget
from crmqueue.url_rules import IPNetwork

USER_AGENT = "crmqueue-webpush/1"
# The longest a push request may take in all (the guarded path's whole-exchange deadline).
DEADLINE_SECONDS = 30.0
# The URL check of an endpoint is reused this long (see guarded_request's check_max_age).
URL_CHECK_SECONDS = 5.0
MAX_RESPONSE_BYTES = 4096


def b64url_decode(text: str) -> bytes:
    """base64url with or without padding (RFC 7515 appendix C); binascii.Error or
    ValueError for anything else."""
    text = text.strip()
    if not text or any(c not in _B64URL for c in text.rstrip("=")):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_key_from_b64(text: str) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from base64url of its uncompressed point; ValueError if not."""
    raw = b64url_decode(text)
    if len(raw) != 65 or raw[0] != 4:
        raise ValueError("not an uncompressed P-256 point (65 bytes, starting 0x04)")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)


@dataclass(frozen=True)
class VapidKey:
    """A VAPID key pair. `public_key`: base64url of the uncompressed point."""

    private: ec.EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> VapidKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_text(cls, text: str) -> VapidKey:
        """From PEM (PKCS#8 or SEC 1) or base64url of the 32 raw bytes (or of DER).
        ValueError saying which form was expected, never quoting the key."""
        text = text.strip()
        try:
            if text.startswith("-----BEGIN"):
                key: Any = serialization.load_pem_private_key(text.encode(), password=None)
            else:
                raw = b64url_decode(text)
                if len(raw) == 32:
                    key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
                else:
                    key = serialization.load_der_private_key(raw, password=None)
        except (ValueError, TypeError, binascii.Error):
            raise ValueError(
                "not a P-256 private key as PEM or base64url (crmqueue push keys prints one)"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("not a P-256 (prime256v1) private key")
        return cls(key)

    @property
    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    @property
    def public_key(self) -> str:
        return b64url_encode(self.public_bytes)

    def private_b64(self) -> str:
        """The 32 raw bytes of the private key, base64url (what web-push libraries use)."""
        return b64url_encode(self.private.private_numbers().private_value.to_bytes(32, "big"))

    def private_pem(self) -> str:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()


def load_vapid_key(settings: PushSettings) -> VapidKey | None:
    """The configured private key (environment first, then the file), checked against
    vapid_public_key when that is set; None when neither is given. ConfigError naming
    the key (never its value) when it cannot be read or does not match."""
    if settings.vapid_private_key is not None:
        text, where = settings.vapid_private_key.get_secret_value(), "push.vapid_private_key"
    elif settings.vapid_private_key_file is not None:
        where = f"push.vapid_private_key_file ({settings.vapid_private_key_file})"
        try:
            text = Path(settings.vapid_private_key_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: cannot read it ({type(exc).__name__})") from None
    else:
        return None
    try:
        key = VapidKey.from_text(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if settings.vapid_public_key and settings.vapid_public_key != key.public_key:
        raise ConfigError(
            f"push.vapid_public_key does not belong to the private key of {where}"
            " (browsers subscribed with the public key would refuse this server)"
        )
    return key


def origin(endpoint: str) -> str:
    """RFC 8292 section 2: the JWT's `aud`, the endpoint's origin (scheme, host and a
    port other than the scheme's default)."""
    parts = urlsplit(endpoint)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


class VapidSigner:
    """The Authorization header for an audience, ``vapid t=<JWT>,k=<public key>``
    (RFC 8292 section 3). A JWT is reused for half its lifetime per audience: signing
    is the costly part, and a push service sees the same token for many messages."""

    def __init__(self, key: VapidKey, subject: str, expiry_seconds: int) -> None:
        if not 0 < expiry_seconds <= 86_400:
            raise ValueError("a VAPID JWT expires within 24 hours (RFC 8292 section 2)")
        self.key = key
        self.subject = subject
        self.expiry_seconds = expiry_seconds
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[float, str]] = {}

    def header(self, audience: str, now: float | None = None) -> str:
        stamp = time.time() if now is None else now
        with self._lock:
            kept = self._tokens.get(audience)
            if kept is not None and stamp < kept[0]:
                return kept[1]
        claims = {"aud": audience, "exp": int(stamp) + self.expiry_seconds, "sub": self.subject}
        token = cast(str, vapid_sign(claims, self.key.private))
        value = f"vapid t={token},k={self.key.public_key}"
        with self._lock:
            if len(self._tokens) > 1024:
                self._tokens.clear()
            self._tokens[audience] = (stamp + self.expiry_seconds / 2, value)
        return value


def encrypt(data: bytes, target: PushTarget) -> bytes:
    """`data` encrypted for the subscription (RFC 8291): a fresh ephemeral P-256 key and
    16-byte salt for every message, one aes128gcm record of RECORD_SIZE."""
    try:
        receiver = b64url_decode(target.p256dh)
        secret = b64url_decode(target.auth)
    except (ValueError, binascii.Error):
        raise PermanentError("push: the subscription's keys are not base64url") from None
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    try:
        body = http_ece.encrypt(
            data,
            salt=os.urandom(16),
            private_key=ephemeral,
            dh=receiver,
            auth_secret=secret,
            rs=RECORD_SIZE,
            version="aes128gcm",
        )
    except (http_ece.ECEException, ValueError) as exc:
        raise PermanentError(f"push: cannot encrypt for the subscription ({exc})") from None
    return cast(bytes, body)


class WebPushProvider(PushProvider):
    name = "webpush"

    def __init__(
        self,
        settings: PushSettings,
        signer: VapidSigner,
        *,
        allowed_networks: tuple[IPNetwork, ...] = (),
        ca_certs: str | None = None,
    ) -> None:
        self.settings = settings
        self.signer = signer
        self.allowed_networks = allowed_networks
        self.ca_certs = ca_certs
        self.timeout = urllib3.Timeout(
            connect=settings.connect_timeout_seconds, read=settings.read_timeout_seconds
        )

    def headers(self, target: PushTarget, message: PushMessage) -> dict[str, str]:
        """RFC 8030 section 5: TTL (required), Urgency, Topic; RFC 8291/8188 encoding;
        RFC 8292 Authorization."""
        headers = {
            "TTL": str(message.ttl),
            "Urgency": message.urgency,
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "Authorization": self.signer.header(origin(target.endpoint)),
            "User-Agent": USER_AGENT,
        }
        if message.topic:
            headers["Topic"] = message.topic
        return headers

    def deliver(self, target: PushTarget, message: PushMessage) -> http.Response:
        host = urlsplit(target.endpoint).hostname or ""
        if not self.settings.host_allowed(host):
            raise PermanentError(f"push: host {host} is not in push.allowed_hosts")
        return http.guarded_request(
            "POST",
            target.endpoint,
            allowed_networks=self.allowed_networks,
            headers=self.headers(target, message),
            body=encrypt(message.data, target),
            timeout=self.timeout,
            what=f"push to {host}",
            max_response_bytes=MAX_RESPONSE_BYTES,
            ca_certs=self.ca_certs,
            check_max_age=URL_CHECK_SECONDS,
            deadline=DEADLINE_SECONDS,
        )
