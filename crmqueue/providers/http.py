"""Outbound HTTP: shared urllib3 pools with connect/read timeouts, and the classification
of answers and transport failures into retryable and permanent errors.

Two paths:

* `request`: vendor base URLs fixed by configuration (email providers), so no SSRF guard
  applies; only the http and https schemes are allowed.
* `guarded_request` and `download`: URLs a tenant supplies (webhooks, web push endpoints,
  import sources). `check_url` resolves the host once and refuses it unless every address
  is public (or inside an allowed network); the connection then goes to a checked address
  while the Host header, TLS server name and certificate check keep the URL's host name,
  so a second DNS answer can never redirect it (no rebinding window). Redirects are never
  followed: a 3xx is the answer.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email.utils
import heapq
import ipaddress
import itertools
import json
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import urllib3
from urllib3.util import parse_url

from crmqueue.errors import PermanentError, RetryableError

# The rules a URL's text decides (scheme, address literals), shared with the producers.
from crmqueue.url_rules import DENIED_NETWORKS as DENIED_NETWORKS
from crmqueue.url_rules import IPAddress, IPNetwork, is_allowed, parse_ipv4_loose
from crmqueue.url_rules import embedded_ipv4 as embedded_ipv4
from crmqueue.url_rules import is_denied as is_denied

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 3600.0

_pool: urllib3.PoolManager | None = None
_pool_guard = threading.Lock()


def _new_pool(num_pools: int, maxsize: int) -> urllib3.PoolManager:
    """urllib3 never retries on its own: retrying is the queue's job."""
    return urllib3.PoolManager(
        num_pools=num_pools,
        maxsize=maxsize,
        retries=False,
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
    )


def pool() -> urllib3.PoolManager:
    """The process-wide pool for vendors' fixed base URLs (created on first use)."""
    global _pool
    with _pool_guard:
        if _pool is None:
            _pool = _new_pool(num_pools=16, maxsize=10)
        return _pool


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    data: bytes

    def text(self, limit: int = 500) -> str:
        return self.data[:limit].decode("utf-8", "replace")


@dataclass
class HttpRequest:
    """A request a vendor adapter built (email and SMS providers): method, URL, headers
    and body (bytes, or None for none)."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None


def json_body(response: Response) -> Any:
    """The answer's body parsed as JSON (an empty body as None); None when it is not
    JSON."""
    try:
        return json.loads(response.data or b"null")
    except ValueError:
        return None


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
    except urllib3.exceptions.HTTPError as exc:
        raise _transport_error(exc, what, parts.hostname) from exc
    return Response(status=answer.status, headers=dict(answer.headers), data=answer.data)


def _transport_error(exc: urllib3.exceptions.HTTPError, what: str, host: str) -> RetryableError:
    if isinstance(exc, urllib3.exceptions.NewConnectionError):  # a ConnectTimeoutError subclass
        return RetryableError(f"{what}: connection to {host} failed")
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return RetryableError(f"{what}: timed out talking to {host}")
    reason = type(getattr(exc, "reason", None) or exc).__name__
    return RetryableError(f"{what}: connection to {host} failed ({reason})")


def redirect_host(location: str | None) -> str | None:
    """The host an answer's Location header names, for messages only; None for a relative,
    malformed (``http://[zz``) or unprintable one. Never raises: a receiver writes it."""
    if not location or "//" not in location:
        return None
    try:
        host = urlsplit(location.strip()).hostname
    except ValueError:
        return None
    if not host or len(host) > 253 or not host.isprintable() or " " in host:
        return None
    return host


# RFC 9110 section 10.2.3: delay-seconds is 1*DIGIT; a fraction is taken too. ASCII
# digits only (str.isdigit also takes '²'), never a sign, "nan" or "inf".
_DELAY_SECONDS = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")


def retry_after(headers: Mapping[str, str], now: dt.datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), capped at
    MAX_RETRY_AFTER. None when absent or invalid (a sign, nan, inf, garbage, a date out
    of range) and for a date not in the future, so the caller's own schedule applies
    instead of an immediate retry."""
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS.match(value):
        seconds = float(value)  # a huge number is inf here: capped below
    else:
        try:  # a receiver's text: out-of-range fields raise more than ValueError
            when = email.utils.parsedate_to_datetime(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
        if not seconds > 0:  # now or past: no advice
            return None
    return min(seconds, MAX_RETRY_AFTER)


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


# --------------------------------------------------------------------------- guarded path

MAX_RESPONSE_BYTES = 1024 * 1024
_CHUNK = 64 * 1024

_guarded: urllib3.PoolManager | None = None
GUARDED_CONNECTIONS_PER_HOST = 16


class _Deadline:
    """A whole-exchange deadline for one guarded request in this thread. urllib3's
    timeouts bound each socket operation (a read timeout restarts with every byte), so a
    receiver sending its headers or body a byte a second would hold a worker for as long
    as it likes; at the deadline this shuts the connection's socket down, which ends any
    read at once. The connection is the one the pool hands this thread (_WatchedPool).
    One watchdog thread per process (_Watchdog) serves every deadline: no thread is
    started per request."""

    __slots__ = ("_connections", "_done", "_lock", "at", "expired", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = 0.0
        self.expired = False
        self._lock = threading.Lock()
        self._done = False
        self._connections: list[object] = []

    def __enter__(self) -> _Deadline:
        _watch.current = self
        self.at = time.monotonic() + self.seconds
        _WATCHDOG.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    @property
    def done(self) -> bool:
        return self._done

    def finish(self) -> None:
        """Stop watching (before the connection goes back to the pool: once done, the
        watchdog never touches a connection another request may be using)."""
        with self._lock:
            self._done = True
        if getattr(_watch, "current", None) is self:
            _watch.current = None

    def attach(self, connection: object) -> None:
        with self._lock:
            self._connections.append(connection)

    def expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            for connection in self._connections:
                sock = getattr(connection, "sock", None)
                if sock is not None:
                    with contextlib.suppress(OSError):  # already closed
                        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """Expires the process's _Deadlines in time order: one daemon thread waiting on a heap
    of deadlines (started on first use, and again in a forked child). A finished deadline
    stays in the heap until it comes up or the heap is compacted."""

    COMPACT_AT = 4096  # entries: past this (and twice the last compaction), drop finished ones

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()
        self._pid = 0
        self._compact_at = self.COMPACT_AT

    def after_fork(self) -> None:
        """In a forked child: no thread, nothing to watch, a lock nobody holds."""
        self._changed = threading.Condition()
        self._heap = []
        self._pid = 0

    def add(self, deadline: _Deadline) -> None:
        with self._changed:
            if self._pid != os.getpid():  # first use (after_fork resets it in a child)
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="http-deadlines", daemon=True).start()
            heap = self._heap
            if len(heap) >= self._compact_at:
                heap[:] = [entry for entry in heap if not entry[2].done]
                heapq.heapify(heap)
                self._compact_at = max(self.COMPACT_AT, 2 * len(heap))
            heapq.heappush(heap, (deadline.at, next(self._order), deadline))
            if heap[0][2] is deadline:  # sooner than what the thread waits for
                self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while True:
                    heap = self._heap
                    while heap and heap[0][2].done:
                        heapq.heappop(heap)
                    now = time.monotonic()
                    if heap and heap[0][0] <= now:
                        due = heapq.heappop(heap)[2]
                        break
                    self._changed.wait(heap[0][0] - now if heap else None)
            due.expire()


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG.after_fork)


_watch = threading.local()


class _WatchedPool(urllib3.HTTPConnectionPool):
    def _get_conn(self, timeout: float | None = None) -> urllib3.connection.HTTPConnection:
        connection = super()._get_conn(timeout)
        deadline = getattr(_watch, "current", None)
        if deadline is not None:
            deadline.attach(connection)
        return connection  # type: ignore[return-value]


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    def _get_conn(self, timeout: float | None = None) -> urllib3.connection.HTTPConnection:
        connection = super()._get_conn(timeout)
        deadline = getattr(_watch, "current", None)
        if deadline is not None:
            deadline.attach(connection)
        return connection  # type: ignore[return-value]


def _guarded_pool() -> urllib3.PoolManager:
    """Separate from the vendor pool so that many tenant hosts cannot evict the vendors'
    kept-alive connections. Pools are keyed by address and TLS name, so reuse is safe."""
    global _guarded
    with _pool_guard:
        if _guarded is None:
            # Kept-alive connections per address: as many as a process's workers may send
            # to one receiver at once, else each one over is closed after its answer and
            # the next request connects anew (urllib3: "Connection pool is full").
            _guarded = _new_pool(num_pools=32, maxsize=GUARDED_CONNECTIONS_PER_HOST)
            _guarded.pool_classes_by_scheme = {"http": _WatchedPool, "https": _WatchedHTTPSPool}
        return _guarded


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (`addresses`) and what to say (`host_header`,
    `server_name`, `request_uri`)."""

    scheme: str
    host: str  # the URL's host: a lower-case ASCII (IDNA) name or an address literal
    port: int
    addresses: tuple[IPAddress, ...]
    request_uri: str
    auth: str | None = None  # "user:password" from the URL, sent as basic auth

    @property
    def is_literal(self) -> bool:
        return not self.host or self.host[0] == "[" or parse_ipv4_loose(self.host) is not None

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"

    @property
    def server_name(self) -> str | None:
        """The TLS server name and certificate name: None for an address literal (SNI
        carries names only; the certificate is matched against the address)."""
        return None if self.is_literal else self.host


def _resolve(host: str, port: int, what: str) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            raise PermanentError(f"{what}: host {host} does not resolve") from None
        raise RetryableError(f"{what}: cannot resolve host {host} ({exc.strerror})") from None
    except (UnicodeError, OSError) as exc:
        raise PermanentError(f"{what}: cannot resolve host {host} ({exc})") from None
    addresses: list[IPAddress] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]))
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise PermanentError(f"{what}: host {host} has no IPv4 or IPv6 address")
    return addresses


def check_url(
    url: str, *, allowed_networks: Iterable[IPNetwork] = (), what: str = "request"
) -> Target:
    """Validate a tenant-supplied URL and resolve its host once; raise PermanentError
    (naming the host, never the URL, which may hold credentials) unless it is http(s) and
    every address is public or inside `allowed_networks`."""
    try:
        parts = parse_url(url.strip())
    except urllib3.exceptions.LocationParseError:
        raise PermanentError(f"{what}: not a valid URL") from None
    scheme = (parts.scheme or "").lower()
    if scheme not in ("http", "https"):
        raise PermanentError(f"{what}: only http and https URLs are allowed, not {scheme!r}")
    host = parts.host or ""
    if not host:
        raise PermanentError(f"{what}: the URL has no host")
    port = parts.port or (443 if scheme == "https" else 80)
    bare = host[1:-1] if host.startswith("[") else host
    if "%" in bare:
        # A zone index only makes sense for link-local addresses, which are refused anyway.
        raise PermanentError(f"{what}: host {host}: IPv6 zone indexes are not allowed")
    literal: IPAddress | None
    exact = True
    try:
        literal = ipaddress.ip_address(bare)
    except ValueError:
        literal = None if host.startswith("[") else parse_ipv4_loose(host)
        exact = False
    if host.startswith("[") and literal is None:
        raise PermanentError(f"{what}: host {host} is not an IPv6 address")
    addresses = [literal] if literal is not None else _resolve(host, port, what)
    allowed = tuple(allowed_networks)
    for address in addresses:
        if is_denied(address) and not is_allowed(address, allowed):
            named = host if literal is not None and exact else f"{host} ({address})"
            raise PermanentError(
                f"{what}: host {named} is a private, loopback, link-local or reserved address,"
                " which is not allowed (outbound.allowed_networks can allow a network)"
            )
    return Target(
        scheme=scheme,
        host=host,
        port=port,
        addresses=tuple(addresses),
        request_uri=parts.request_uri,
        auth=unquote(parts.auth) if parts.auth else None,
    )


class _CheckedTargets:
    """check_url's answers of this process, reused for a few seconds (guarded_request's
    `check_max_age`): a tenant's URL is then resolved and checked once per few seconds
    instead of once per request. This does not weaken the guard: a reused Target holds
    the addresses that were checked, and the connection goes to one of them (never to a
    fresh DNS answer), so a rebinding DNS server gains nothing; on expiry the host is
    resolved and checked again. Only successful checks are kept, keyed by the URL and the
    allowed networks (a change of either checks afresh)."""

    SIZE = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[tuple[str, tuple[IPNetwork, ...]], tuple[float, Target]] = {}

    def check(self, url: str, allowed: tuple[IPNetwork, ...], what: str, max_age: float) -> Target:
        key = (url, allowed)
        now = time.monotonic()
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and now - kept[0] <= max_age:
            return kept[1]
        target = check_url(url, allowed_networks=allowed, what=what)
        with self._lock:
            if len(self._kept) >= self.SIZE:
                self._kept.clear()
            self._kept[key] = (now, target)
        return target


_CHECKED = _CheckedTargets()


def _open(
    target: Target,
    method: str,
    *,
    headers: Mapping[str, str] | None,
    body: bytes | None,
    timeout: urllib3.Timeout | float | None,
    what: str,
    ca_certs: str | None,
) -> urllib3.BaseHTTPResponse:
    """Send the request to the first checked address that accepts a connection; the
    response is not read (preload_content=False)."""
    sent = {k: v for k, v in (headers or {}).items() if k.lower() != "host"}
    sent["Host"] = target.host_header
    if target.auth is not None and not any(k.lower() == "authorization" for k in sent):
        sent["Authorization"] = "Basic " + base64.b64encode(target.auth.encode()).decode()
    pool_kwargs: dict[str, object] = {}
    if target.scheme == "https":
        pool_kwargs = {"server_hostname": target.server_name, "assert_hostname": target.server_name}
        if ca_certs is not None:
            pool_kwargs["ca_certs"] = ca_certs
    error: urllib3.exceptions.HTTPError | None = None
    for address in target.addresses:
        connections = _guarded_pool().connection_from_host(
            str(address), target.port, target.scheme, pool_kwargs=pool_kwargs
        )
        try:
            return connections.urlopen(
                method,
                target.request_uri,
                headers=sent,
                body=body,
                timeout=timeout if timeout is not None else urllib3.util.Timeout.DEFAULT_TIMEOUT,
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
            )
        except urllib3.exceptions.NewConnectionError as exc:
            error = exc  # refused or unreachable: the next address may answer
        except urllib3.exceptions.HTTPError as exc:
            raise _transport_error(exc, what, target.host) from exc
    assert error is not None
    raise _transport_error(error, what, target.host) from error


def _finish(response: urllib3.BaseHTTPResponse, complete: bool) -> None:
    # An unread remainder would poison a kept-alive connection: close it instead.
    if not complete:
        response.close()
    response.release_conn()


def guarded_request(
    method: str,
    url: str,
    *,
    allowed_networks: Iterable[IPNetwork] = (),
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: urllib3.Timeout | float | None = None,
    what: str = "request",
    max_response_bytes: int = MAX_RESPONSE_BYTES,
    ca_certs: str | None = None,
    check_max_age: float = 0.0,
    deadline: float | None = None,
) -> Response:
    """`request` for a tenant-supplied URL (see `check_url`). Only the first
    `max_response_bytes` of the answer are read: a receiver cannot make the worker hold
    an unbounded body. `check_max_age` > 0 reuses this process's check of the same URL
    for that many seconds (see _CheckedTargets: still to a checked address).
    `deadline` (seconds, from the connection's start) bounds the whole exchange, however
    slowly the answer trickles in (see _Deadline): past it, RetryableError saying so."""
    if check_max_age > 0:
        target = _CHECKED.check(url, tuple(allowed_networks), what, check_max_age)
    else:
        target = check_url(url, allowed_networks=allowed_networks, what=what)
    if deadline is None:
        return _exchange(target, method, headers, body, timeout, what, ca_certs,
                         max_response_bytes)  # fmt: skip
    with _Deadline(max(deadline, 0.001)) as watch:
        try:
            response = _exchange(
                target, method, headers, body, timeout, what, ca_certs, max_response_bytes, watch
            )
        except RetryableError:
            if watch.expired:
                raise _past_deadline(what, target.host, deadline) from None
            raise
    if watch.expired:  # cut off while reading: what was read is not the answer
        raise _past_deadline(what, target.host, deadline)
    return response


def _past_deadline(what: str, host: str, deadline: float) -> RetryableError:
    return RetryableError(f"{what}: {host} did not finish answering within {deadline:g} s")


def _exchange(
    target: Target,
    method: str,
    headers: Mapping[str, str] | None,
    body: bytes | None,
    timeout: urllib3.Timeout | float | None,
    what: str,
    ca_certs: str | None,
    max_response_bytes: int,
    watch: _Deadline | None = None,
) -> Response:
    response = _open(
        target, method, headers=headers, body=body, timeout=timeout, what=what, ca_certs=ca_certs
    )
    complete = False
    try:
        data = response.read(max_response_bytes + 1)
        complete = len(data) <= max_response_bytes
        return Response(
            status=response.status, headers=dict(response.headers), data=data[:max_response_bytes]
        )
    except urllib3.exceptions.HTTPError as exc:
        raise _transport_error(exc, what, target.host) from exc
    finally:
        if watch is not None:
            watch.finish()  # before the connection can go back to the pool
            complete = complete and not watch.expired
        _finish(response, complete)


def download(
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    allowed_networks: Iterable[IPNetwork] = (),
    headers: Mapping[str, str] | None = None,
    timeout: urllib3.Timeout | float | None = None,
    what: str = "download",
    ca_certs: str | None = None,
    deadline: float | None = None,
) -> int:
    """GET a tenant-supplied URL (see `check_url`) into `dest`, returning its size.

    The body streams into a temporary file beside `dest`, renamed into place only when
    complete, so `dest` never holds a partial download. Over `max_bytes` (by
    Content-Length, or counted while streaming) or any 3xx/4xx: PermanentError; 408, 429
    and 5xx: RetryableError. `deadline` (seconds, from the connection's start) bounds the
    whole download however slowly the server sends (see _Deadline): past it,
    RetryableError saying so. A failed download leaves no file behind.
    """
    target = check_url(url, allowed_networks=allowed_networks, what=what)
    watch = _Deadline(max(deadline, 0.001)) if deadline is not None else None
    with watch if watch is not None else contextlib.nullcontext():
        try:
            return _download(target, dest, max_bytes, headers, timeout, what, ca_certs, watch)
        except RetryableError:
            if watch is not None and watch.expired:
                raise _past_deadline(what, target.host, watch.seconds) from None
            raise


def _download(
    target: Target,
    dest: Path,
    max_bytes: int,
    headers: Mapping[str, str] | None,
    timeout: urllib3.Timeout | float | None,
    what: str,
    ca_certs: str | None,
    watch: _Deadline | None,
) -> int:
    response = _open(
        target, "GET", headers=headers, body=None, timeout=timeout, what=what, ca_certs=ca_certs
    )
    complete = False
    try:
        _check_download_answer(response, target, what, max_bytes)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        part = Path(name)
        size = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in response.stream(_CHUNK, decode_content=True):
                    size += len(chunk)
                    if size > max_bytes:
                        raise PermanentError(
                            f"{what}: {target.host} sent more than the limit of {max_bytes} bytes"
                        )
                    handle.write(chunk)
            if watch is not None:
                watch.finish()
                if watch.expired:  # cut off: what was read may look complete but is not
                    raise _past_deadline(what, target.host, watch.seconds)
            complete = True
            os.replace(part, dest)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return size
    except urllib3.exceptions.HTTPError as exc:
        raise _transport_error(exc, what, target.host) from exc
    finally:
        if watch is not None:
            watch.finish()  # before the connection can go back to the pool
            complete = complete and not watch.expired
        _finish(response, complete)


def _check_download_answer(
    response: urllib3.BaseHTTPResponse, target: Target, what: str, max_bytes: int
) -> None:
    status = response.status
    if 300 <= status < 400:
        to = redirect_host(response.headers.get("Location"))
        raise PermanentError(
            f"{what}: {target.host} answered HTTP {status} (a redirect"
            f"{f' to {to}' if to else ''}); redirects are not followed"
        )
    if not 200 <= status < 300:
        text = response.read(500).decode("utf-8", "replace")
        answer = Response(status=status, headers=dict(response.headers), data=b"")
        raise_for_status(answer, f"{what} from {target.host}", " ".join(text.split()))
    length = response.headers.get("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > max_bytes:
        raise PermanentError(
            f"{what}: {target.host} announced {int(length)} bytes, over the limit of"
            f" {max_bytes} bytes"
        )
