"""A loopback web push service for tests: the browser vendor's side of a push.

One threaded HTTP server on 127.0.0.1 (a free port). `browser()` makes a subscription the
way a browser does: a fresh P-256 key pair and a 16-byte auth secret, an endpoint path of
its own, and an answer plan. Every POST is checked as the RFCs say a push service and a
user agent check it, with code written here from the RFCs (not crmqueue's, not the
libraries crmqueue uses):

- RFC 8292 (VAPID): ``Authorization: vapid t=<JWT>,k=<key>``; the JWT's header says
  ES256, its signature verifies with `k`, `k` is the application server key the
  subscription was made with, ``aud`` is this service's origin, ``exp`` is in the future
  and at most 24 hours ahead, ``sub`` is a mailto: or https: URI;
- RFC 8030: a ``TTL`` header (a non-negative integer), ``Urgency`` one of four values,
  ``Topic`` at most 32 base64url characters;
- RFC 8291/8188: ``Content-Encoding: aes128gcm``, at most 4096 bytes of body (else 413),
  decrypted with the subscription's private key and auth secret.

Each request is recorded with its headers, the decrypted payload (JSON) and the list of
`failures`; a request that fails a check is answered 400 (so a test also sees it in the
job). Plans answer in order, one per request; the last one repeats.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAX_BODY = 4096
URGENCIES = ("very-low", "low", "normal", "high")
B64URL = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Plan:
    status: int = 201
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    payload: dict[str, Any] | None = None
    claims: dict[str, Any] | None = None
    failures: list[str] = field(default_factory=list)
    status: int = 0


class Browser:
    """One subscription, as a browser holds it: the private key and auth secret stay
    here; `subscription` is what the browser hands the application."""

    def __init__(self, service: PushService, path: str, plans: list[Plan]) -> None:
        self.service = service
        self.path = path
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        self.plans = plans or [Plan()]
        self.used = 0

    @property
    def endpoint(self) -> str:
        return f"{self.service.origin}{self.path}"

    @property
    def public(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    @property
    def subscription(self) -> dict[str, Any]:
        """PushSubscription.toJSON()."""
        return {"endpoint": self.endpoint, "expirationTime": None,
                "keys": {"p256dh": b64url(self.public), "auth": b64url(self.auth)}}  # fmt: skip

    def next_plan(self) -> Plan:
        plan = self.plans[min(self.used, len(self.plans) - 1)]
        self.used += 1
        return plan

    def received(self) -> list[Received]:
        return [r for r in self.service.requests if r.path == self.path]

    def decrypt(self, body: bytes) -> bytes:
        """RFC 8291 section 3.4 and RFC 8188 section 2, one or more records."""
        salt, rs, idlen = body[:16], struct.unpack("!L", body[16:20])[0], body[20]
        sender = body[21 : 21 + idlen]
        if idlen != 65:
            raise ValueError(f"keyid is {idlen} bytes, not the 65 of the sender's public key")
        sender_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sender)
        shared = self.key.exchange(ec.ECDH(), sender_key)

        def hmac256(key: bytes, data: bytes) -> bytes:
            return hmac.new(key, data, hashlib.sha256).digest()

        prk_key = hmac256(self.auth, shared)
        ikm = hmac256(prk_key, b"WebPush: info\x00" + self.public + sender + b"\x01")
        prk = hmac256(salt, ikm)
        cek = hmac256(prk, b"Content-Encoding: aes128gcm\x00\x01")[:16]
        nonce = hmac256(prk, b"Content-Encoding: nonce\x00\x01")[:12]
        records = body[21 + idlen :]
        plain = b""
        for seq, start in enumerate(range(0, len(records), rs)):
            record = records[start : start + rs]
            iv = (int.from_bytes(nonce, "big") ^ seq).to_bytes(12, "big")
            data = AESGCM(cek).decrypt(iv, record, None).rstrip(b"\x00")
            last = start + rs >= len(records)
            if not data or data[-1] != (2 if last else 1):
                raise ValueError("bad padding delimiter")
            plain += data[:-1]
        return plain


class PushService:
    def __init__(self, application_server_key: str | None = None) -> None:
        self.application_server_key = application_server_key
        self.requests: list[Received] = []
        self.browsers: dict[str, Browser] = {}
        self._lock = threading.Lock()
        self._count = 0
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                status, headers = service.handle(self.path, dict(self.headers.items()), body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> PushService:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.shutdown()
        self.server.server_close()

    def browser(self, *plans: Plan) -> Browser:
        with self._lock:
            self._count += 1
            path = f"/wpush/v2/sub{self._count}-{b64url(os.urandom(9))}"
        made = Browser(self, path, list(plans))
        self.browsers[path] = made
        return made

    # ------------------------------------------------------------------ checks

    def _check_vapid(self, value: str, got: Received) -> None:
        scheme, _, params = value.partition(" ")
        if scheme.lower() != "vapid":
            got.failures.append(f"Authorization scheme {scheme!r}, not vapid")
            return
        parts = dict(p.strip().split("=", 1) for p in params.split(",") if "=" in p)
        token, key = parts.get("t", ""), parts.get("k", "")
        if self.application_server_key is not None and key != self.application_server_key:
            got.failures.append("k is not the application server key of the subscription")
        try:
            header_b64, claims_b64, sig_b64 = token.split(".")
            header = json.loads(unb64url(header_b64))
            claims = json.loads(unb64url(claims_b64))
            signature = unb64url(sig_b64)
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
        except (ValueError, TypeError) as exc:
            got.failures.append(f"malformed VAPID token ({exc})")
            return
        got.claims = claims
        if header.get("alg") != "ES256":
            got.failures.append(f"alg {header.get('alg')!r}, not ES256")
        if len(signature) != 64:
            got.failures.append("ES256 signature is not 64 bytes (r || s)")
        else:
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            try:
                public.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                got.failures.append("VAPID signature does not verify")
        if claims.get("aud") != self.origin:
            got.failures.append(f"aud {claims.get('aud')!r} is not {self.origin!r}")
        exp = claims.get("exp")
        now = time.time()
        if not isinstance(exp, int) or not now < exp <= now + 86_400:
            got.failures.append(f"exp {exp!r} not within 24 hours ahead")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.startswith(("mailto:", "https:")):
            got.failures.append(f"sub {sub!r} is not a mailto: or https: URI")

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str]]:
        got = Received(path, headers, body, time.monotonic())
        with self._lock:
            self.requests.append(got)
        browser = self.browsers.get(path)
        if browser is None:
            got.status = 404
            return 404, {}
        lowered = {k.lower(): v for k, v in headers.items()}
        ttl = lowered.get("ttl", "")
        if not ttl.isdigit():
            got.failures.append(f"TTL {ttl!r} is not a non-negative integer")
        if lowered.get("urgency", "normal") not in URGENCIES:
            got.failures.append(f"Urgency {lowered.get('urgency')!r}")
        topic = lowered.get("topic")
        if topic is not None and not (0 < len(topic) <= 32 and set(topic) <= B64URL):
            got.failures.append(f"Topic {topic!r} is not 1-32 base64url characters")
        if lowered.get("content-encoding") != "aes128gcm":
            got.failures.append(f"Content-Encoding {lowered.get('content-encoding')!r}")
        self._check_vapid(lowered.get("authorization", ""), got)
        if len(body) > MAX_BODY:
            got.status = 413
            return 413, {}
        try:
            got.payload = json.loads(browser.decrypt(body))
        except (ValueError, InvalidTag, IndexError, struct.error) as exc:
            got.failures.append(f"cannot decrypt ({type(exc).__name__}: {exc})")
        if got.failures:
            got.status = 400
            return 400, {}
        plan = browser.next_plan()
        got.status = plan.status
        answer = dict(plan.headers)
        if plan.status == 201:
            answer.setdefault("Location", f"{self.origin}/m/{len(self.requests)}")
        return plan.status, answer
