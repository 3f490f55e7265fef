"""Outbound HTTP: one shared urllib3 pool with connect/read timeouts, and the
classification of answers and transport failures into retryable and permanent errors.

Vendor base URLs are fixed by configuration, so no SSRF guard applies here; only the
http and https schemes are allowed.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3

from crmqueue.errors import PermanentError, RetryableError

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 3600.0

_pool: urllib3.PoolManager | None = None
_pool_guard = threading.Lock()


def pool() -> urllib3.PoolManager:
    """The process-wide pool (created on first use). urllib3 never retries on its own:
    retrying is the queue's job."""
    global _pool
    with _pool_guard:
        if _pool is None:
            _pool = urllib3.PoolManager(
                num_pools=16,
                maxsize=10,
                retries=False,
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
            )
        return _pool


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    data: bytes

    def text(self, limit: int = 500) -> str:
        return self.data[:limit].decode("utf-8", "replace")


def request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: urllib3.Timeout | float | None = None,
    what: str = "request",
) -> Response:
    """Send one request through the shared pool. Transport failures (timeouts, refused or
    reset connections) raise RetryableError naming `what` and the host, never headers."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PermanentError(f"{what}: only http(s) URLs are allowed")
    try:
        answer = pool().request(
            method,
            url,
            headers=dict(headers or {}),
            body=body,
            timeout=timeout if timeout is not None else urllib3.util.Timeout.DEFAULT_TIMEOUT,
            redirect=False,
            preload_content=True,
        )
    except urllib3.exceptions.NewConnectionError as exc:  # a ConnectTimeoutError subclass
        raise RetryableError(f"{what}: connection to {parts.hostname} failed") from exc
    except urllib3.exceptions.TimeoutError as exc:
        raise RetryableError(f"{what}: timed out talking to {parts.hostname}") from exc
    except urllib3.exceptions.HTTPError as exc:
        reason = type(getattr(exc, "reason", None) or exc).__name__
        raise RetryableError(f"{what}: connection to {parts.hostname} failed ({reason})") from exc
    return Response(status=answer.status, headers=dict(answer.headers), data=answer.data)


def retry_after(headers: Mapping[str, str], now: dt.datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), capped."""
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def raise_for_status(
    response: Response,
    what: str,
    message: str,
    *,
    delay: float | None = None,
    secrets: tuple[str, ...] = (),
) -> None:
    """Classify a non-2xx answer: 408/429/5xx retryable (after `delay` or Retry-After),
    everything else permanent. `message` is the vendor's own error text; any secret in it
    is masked."""
    if 200 <= response.status < 300:
        return
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    text = f"{what}: HTTP {response.status}: {message}".rstrip(": ")
    if response.status in RETRYABLE_STATUS or response.status >= 500:
        raise RetryableError(
            text, delay=delay if delay is not None else retry_after(response.headers)
        )
    raise PermanentError(text)
