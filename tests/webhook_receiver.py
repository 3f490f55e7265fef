"""A loopback webhook receiver for tests: the customer's side of a delivery.

One threaded HTTP server on 127.0.0.1 (a free port) serves several endpoints (paths), each
with its own signing secrets and its own answer plan. Every request is recorded (method,
path, headers, body, receive time) together with the result of verifying its signature
with BOTH reference verifiers from PyPI: `standardwebhooks.Webhook(secret).verify` and
`svix.webhooks.Webhook(secret).verify` (the latter reads `svix-id`, `svix-timestamp` and
`svix-signature`, so the headers are renamed for it). Neither verifier is crmqueue code,
so a passing check means the delivery follows the Standard Webhooks specification.

    with WebhookReceiver() as receiver:
        hook = receiver.endpoint("/hook", secret, Plan(503, headers={"Retry-After": "1"}),
                                 Plan(200))
        ... deliver to hook.url ...
        [first, second] = receiver.wait_for(2, "/hook")
        assert second.verified, second.failures

Plans are used in order, one per request; the last one repeats. A plan answers with a
status, extra headers (Retry-After, `webhook-delivery: abort-message|disable`, Location),
a body, optionally after a delay, or hangs (never answers) until the receiver closes, or
drips its answer a byte at a time.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import standardwebhooks
import svix.webhooks

LIBRARIES = ("standardwebhooks", "svix")


@dataclass(frozen=True)
class Plan:
    """How an endpoint answers one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0  # seconds before answering
    hang: bool = False  # never answer; the connection closes with the receiver
    # Send the answer a byte at a time, this many seconds apart (each byte well inside
    # any read timeout): the body only, or with drip_headers the status line and headers
    # too. The body's Content-Length is announced in full.
    drip: float = 0.0
    drip_headers: bool = False


OK = Plan()


@dataclass(frozen=True)
class Received:
    """One request as it arrived, and what each reference verifier said of it."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float  # time.time() when the request was read
    monotonic: float  # time.monotonic() at the same moment
    verification: dict[str, str | None]  # library -> None when verified, else its error

    @property
    def verified(self) -> bool:
        """True when every reference library accepted the signature."""
        return all(error is None for error in self.verification.values())

    @property
    def failures(self) -> dict[str, str]:
        return {lib: err for lib, err in self.verification.items() if err is not None}

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Endpoint:
    """A path on the receiver. `secrets` may be changed while serving (after a rotation):
    a signature is accepted when it verifies with any of them."""

    receiver: WebhookReceiver
    path: str
    secrets: list[str]
    plans: list[Plan]
    served: int = 0

    @property
    def url(self) -> str:
        return self.receiver.url(self.path)

    def received(self) -> list[Received]:
        return self.receiver.received(self.path)

    def next_plan(self) -> Plan:
        plan = self.plans[min(self.served, len(self.plans) - 1)]
        self.served += 1
        return plan


def verify(secrets: Sequence[str], body: bytes, headers: dict[str, str]) -> dict[str, str | None]:
    """Each library's verdict: None if some secret verifies, else the last error text."""
    svix_headers = {
        name.replace("webhook-", "svix-", 1) if name.startswith("webhook-") else name: value
        for name, value in headers.items()
    }
    verifiers: dict[str, tuple[Any, dict[str, str]]] = {
        "standardwebhooks": (standardwebhooks.Webhook, headers),
        "svix": (svix.webhooks.Webhook, svix_headers),
    }
    results: dict[str, str | None] = {}
    for library, (webhook_class, library_headers) in verifiers.items():
        error: str | None = "no secret to verify with"
        for secret in secrets:
            try:
                webhook_class(secret).verify(body, dict(library_headers))
            except Exception as exc:  # each library's own error types, and bad secrets
                error = f"{type(exc).__name__}: {exc}"
            else:
                error = None
                break
        results[library] = error
    return results


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver behind a proxy would
    server: _Server

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        receiver = self.server.receiver
        path = self.path.split("?", 1)[0]
        endpoint = receiver.endpoints.get(path)
        secrets = list(endpoint.secrets) if endpoint else []
        record = Received(
            method=self.command,
            path=path,
            headers=headers,
            body=body,
            at=time.time(),
            monotonic=time.monotonic(),
            verification=verify(secrets, body, headers) if receiver.verify else {},
        )
        with receiver.lock:
            receiver.requests.append(record)
            plan = endpoint.next_plan() if endpoint else Plan(404, body=b"no such endpoint")
        if plan.hang:
            receiver.closed.wait()
            self.close_connection = True
            return
        if plan.delay and receiver.closed.wait(plan.delay):
            self.close_connection = True
            return
        buffer, sent = io.BytesIO(), self.wfile
        if plan.drip_headers:  # everything buffered here, then written slowly below
            self.wfile = buffer
        self.send_response(plan.status)
        for name, value in plan.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(plan.body)))
        self.end_headers()
        if plan.drip_headers:
            slow = buffer.getvalue() + plan.body
            self.wfile = sent
        elif plan.drip:
            slow = plan.body
        else:
            self.wfile.write(plan.body)
            return
        for byte in slow:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            if receiver.closed.wait(plan.drip):
                break
        self.close_connection = True

    do_POST = do_GET = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # hanging handlers must not hold up close()
    receiver: WebhookReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out and hang up are part of the tests


class WebhookReceiver:
    """A loopback webhook receiver; a context manager (or call start() and close()).

    verify=False skips the signature checks (benchmarks, where they would cost the
    receiver more than the sender)."""

    def __init__(self, verify: bool = True) -> None:
        self.verify = verify
        self.endpoints: dict[str, Endpoint] = {}
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="webhook-receiver", daemon=True
        )

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def close(self) -> None:
        self.closed.set()  # releases hanging and delayed answers
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def endpoint(self, path: str, secret: str | Sequence[str] = (), *plans: Plan) -> Endpoint:
        """Serve `path`, verifying with `secret` (one or several), answering per `plans`
        (default: 200 with an empty body)."""
        secrets = [secret] if isinstance(secret, str) else list(secret)
        endpoint = Endpoint(self, path, secrets, list(plans) or [OK])
        with self.lock:
            self.endpoints[path] = endpoint
        return endpoint

    def received(self, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_for(
        self, count: int, path: str | None = None, timeout: float = 10.0
    ) -> list[Received]:
        """The first `count` requests (to `path`), failing the test if they do not come."""
        from tests.conftest import wait_until

        wait_until(
            lambda: len(self.received(path)) >= count,
            timeout=timeout,
            message=lambda: (
                f"{count} requests to {path or 'the receiver'} (got {len(self.received(path))})"
            ),
        )
        return self.received(path)[:count]
