"""The push provider base (the shape of the email providers): a fixed send pipeline in
the base class, one subclass per protocol that turns a PushMessage into the request and
the push service's answer into a PushResult or a classified error.

Answers (RFC 8030 section 5, REFERENCE "Web push"): 201 (any 2xx) delivered to the push
service; 404 and 410 the subscription is gone (SubscriptionGone: delete it); 413 the
message is too large (PermanentError; the payload is trimmed to fit first, fit_payload);
408, 429 and 5xx RetryableError after Retry-After; anything else PermanentError (400 a
malformed request, 401/403 a VAPID key the push service does not accept)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from crmqueue.errors import PermanentError, RetryableError
from crmqueue.providers import http

# RFC 8291 section 4: a push service must accept 4096 bytes of body; the aes128gcm header
# (86 bytes with the sender's key as key id), the tag (16) and the padding delimiter (1)
# leave 3993 bytes of plaintext in one record.
MAX_PLAINTEXT = 3993
RECORD_SIZE = 4096
Urgency = Literal["very-low", "low", "normal", "high"]
TRIM_MARK = "…"


@dataclass(frozen=True)
class PushTarget:
    """Where a message goes: a subscription's endpoint and the browser's keys (base64url:
    `p256dh` the P-256 public key, 65 bytes; `auth` the secret, 16 bytes)."""

    endpoint: str
    p256dh: str
    auth: str


@dataclass(frozen=True)
class PushMessage:
    """The plaintext (at most MAX_PLAINTEXT bytes) and the RFC 8030 headers: `ttl` in
    seconds, `urgency`, `topic` (at most 32 base64url characters, or None)."""

    data: bytes
    ttl: int
    urgency: Urgency = "normal"
    topic: str | None = None


@dataclass(frozen=True)
class PushResult:
    status: int
    location: str | None  # the push message's URL at the push service (RFC 8030 5.1)


class SubscriptionGone(PermanentError):
    """404 or 410: the push service no longer knows the subscription; delete it."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class PayloadTooLarge(PermanentError):
    """413: the push service refused the message's size."""

    status = 413


class Refused(PermanentError):
    """Another 4xx (400 malformed, 401/403 VAPID not accepted): not worth retrying."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Throttled(RetryableError):
    """408, 429 or 5xx: try again, after `delay` seconds (Retry-After) if given."""

    def __init__(self, message: str, status: int, delay: float | None = None) -> None:
        super().__init__(message, delay)
        self.status = status


class PushProvider(ABC):
    name: ClassVar[str]

    def send(self, target: PushTarget, message: PushMessage) -> PushResult:
        """The fixed pipeline: check the message, deliver it, classify the answer."""
        if len(message.data) > MAX_PLAINTEXT:
            raise PayloadTooLarge(
                f"{self.name}: {len(message.data)} bytes of payload, over the"
                f" {MAX_PLAINTEXT} bytes one RFC 8291 record holds (use fit_payload)"
            )
        if message.topic is not None and not _is_topic(message.topic):
            raise PermanentError(f"{self.name}: topic must be 1-32 base64url characters")
        response = self.deliver(target, message)
        host = urlsplit(target.endpoint).hostname or "?"
        return classify(response, f"{self.name} to {host}")

    @abstractmethod
    def deliver(self, target: PushTarget, message: PushMessage) -> http.Response:
        """Send `message` to `target`; the push service's answer, unclassified."""


def _is_topic(topic: str) -> bool:
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    return 0 < len(topic) <= 32 and set(topic) <= alphabet


def classify(response: http.Response, what: str) -> PushResult:
    """The answer's PushResult, or the error it means (see the module docstring)."""
    status = response.status
    text = " ".join(response.text(300).split())
    if 200 <= status < 300:
        headers = {k.lower(): v for k, v in response.headers.items()}
        return PushResult(status, headers.get("location"))
    if status in (404, 410):
        raise SubscriptionGone(f"{what}: HTTP {status}: subscription gone {text}".rstrip(), status)
    if status == 413:
        raise PayloadTooLarge(f"{what}: HTTP 413: payload too large {text}".rstrip())
    message = f"{what}: HTTP {status}: {text}".rstrip(": ")
    if status in http.RETRYABLE_STATUS or status >= 500:
        raise Throttled(message, status, http.retry_after(response.headers))
    raise Refused(message, status)  # 4xx, or a 1xx/3xx: not an answer to a push


def fit_payload(fields: Mapping[str, Any], limit: int = MAX_PLAINTEXT) -> tuple[bytes, str | None]:
    """`fields` as compact UTF-8 JSON of at most `limit` bytes, and a note when it had to
    be trimmed: the `message` is shortened (ending in "…") first, then `action_url`
    dropped. PermanentError if even that does not fit."""
    data = dict(fields)

    def encoded(values: Mapping[str, Any]) -> bytes:
        return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode()

    body = encoded(data)
    if len(body) <= limit:
        return body, None
    message = str(data.get("message", ""))
    original = len(message)
    # JSON escapes can make a character take up to 12 bytes: measure, don't guess.
    low, high = 0, original
    while low < high:
        middle = (low + high + 1) // 2
        if len(encoded({**data, "message": message[:middle] + TRIM_MARK})) <= limit:
            low = middle
        else:
            high = middle - 1
    trimmed = {**data, "message": message[:low] + TRIM_MARK}
    note = f"message trimmed from {original} to {low} characters to fit {limit} bytes (RFC 8291)"
    if len(encoded(trimmed)) <= limit:
        return encoded(trimmed), note
    if "action_url" in data:  # too long even with no message: the link goes
        body, inner = fit_payload({k: v for k, v in data.items() if k != "action_url"}, limit)
        return body, f"{inner}; action_url dropped" if inner else "action_url dropped"
    raise PermanentError(f"push payload does not fit {limit} bytes even without its message")
