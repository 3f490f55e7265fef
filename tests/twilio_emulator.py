"""A loopback Twilio Programmable Messaging emulator for tests: the vendor's side of an SMS.

It answers ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` as Twilio documents
it (REFERENCE "SMS"; twilio.com/docs/messaging/api/message-resource#create-a-message-
resource and twilio.com/docs/api/errors), checking each request exactly:

- the path names the account, and ``Authorization`` is HTTP Basic with that account SID
  and the auth token (else 401, error 20003 "Authenticate");
- the body is ``application/x-www-form-urlencoded`` with ``To``, ``Body`` and one of
  ``From`` / ``MessagingServiceSid``, each once (21604 no To, 21602 no Body, 21603 no
  From, 21617 a Body over 1600 characters);
- ``To`` in E.164, and not Twilio's magic invalid test number +15005550001 (else 400,
  error 21211 "The 'To' number ... is not a valid phone number.");

and then answers 201 with a message resource like Twilio's (``sid`` SM + 32 hex,
``status`` "queued", ``num_segments``...). Forced answers (``fail_next``) come first,
one per request: a 429 (error 20429) or a 5xx, with optional headers.

    with TwilioEmulator(ACCOUNT_SID, AUTH_TOKEN) as twilio:
        ... sms.base_url = twilio.url; outbound.allowed_networks = ["127.0.0.0/8"] ...
        [request] = twilio.wait_for(1)
        assert request.form == {"To": ["+14155550123"], "From": [...], "Body": [...]}
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from conftest import wait_until

INVALID_TO = "+15005550001"  # Twilio's test number that is "invalid" (error 21211)
_PATH = re.compile(r"/2010-04-01/Accounts/(AC[0-9a-fA-F]{32})/Messages\.json")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    form: dict[str, list[str]]
    status: int  # what the emulator answered


@dataclass
class Forced:
    status: int
    code: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


class TwilioEmulator:
    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.received: list[Received] = []
        self.sent: list[dict[str, Any]] = []  # the message resources answered with 201
        self._forced: list[Forced] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> TwilioEmulator:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(
        self, status: int = 429, code: int = 20429, message: str = "Too Many Requests",
        headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        """Answer the next request (one more per call) with `status` and Twilio error `code`."""
        with self._lock:
            self._forced.append(Forced(status, code, message, headers or {}))

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        def enough() -> list[Received] | None:
            with self._lock:
                return list(self.received) if len(self.received) >= count else None

        received: list[Received] = wait_until(
            enough, timeout, message=lambda: f"{count} request(s), got {len(self.received)}"
        )
        return received

    # ----------------------------------------------------------------------- the answer

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[
        int, dict[str, str], dict[str, Any]
    ]:  # fmt: skip
        match = _PATH.fullmatch(path)
        if method != "POST" or match is None:
            return 404, {}, _error(404, 20404, f"The requested resource {path} was not found")
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if (
            match.group(1) != self.account_sid
            or headers.get("authorization") != f"Basic {expected}"
        ):
            return 401, {}, _error(401, 20003, "Authenticate")
        with self._lock:
            forced = self._forced.pop(0) if self._forced else None
        if forced is not None:
            return forced.status, forced.headers, _error(forced.status, forced.code, forced.message)
        if headers.get("content-type", "").split(";")[0].strip() != (
            "application/x-www-form-urlencoded"
        ):
            return 400, {}, _error(400, 21602, "Message body is required.")
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        if any(len(values) != 1 for values in form.values()):
            return 400, {}, _error(400, 21600, "A parameter was given more than once.")
        one = {key: values[0] for key, values in form.items()}
        to = one.get("To", "")
        if not to:
            return 400, {}, _error(400, 21604, "A 'To' phone number is required.")
        if not _E164.fullmatch(to) or to == INVALID_TO:
            return 400, {}, _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not one.get("From") and not one.get("MessagingServiceSid"):
            return (
                400,
                {},
                _error(
                    400,
                    21603,
                    "A 'From' or 'MessagingServiceSid' parameter is required to send a message.",
                ),
            )
        text = one.get("Body", "")
        if not text:
            return 400, {}, _error(400, 21602, "Message body is required.")
        if len(text) > 1600:
            return (
                400,
                {},
                _error(
                    400, 21617, "The concatenated message body exceeds the 1600 character limit."
                ),
            )
        sid = "SM" + secrets.token_hex(16)
        now = formatdate(usegmt=True).replace("GMT", "+0000")
        gsm = all(ord(ch) < 128 for ch in text)
        per = 153 if gsm else 67
        segments = 1 if len(text) <= (160 if gsm else 70) else -(-len(text) // per)
        base = f"/2010-04-01/Accounts/{self.account_sid}"
        resource = {
            "account_sid": self.account_sid, "api_version": "2010-04-01", "body": text,
            "date_created": now, "date_sent": None, "date_updated": now,
            "direction": "outbound-api", "error_code": None, "error_message": None,
            "from": one.get("From"), "messaging_service_sid": one.get("MessagingServiceSid"),
            "num_media": "0", "num_segments": str(segments), "price": None, "price_unit": None,
            "sid": sid, "status": "accepted" if one.get("MessagingServiceSid") else "queued",
            "subresource_uris": {"media": f"{base}/Messages/{sid}/Media.json"},
            "to": to, "uri": f"{base}/Messages/{sid}.json",
        }  # fmt: skip
        with self._lock:
            self.sent.append(resource)
        return 201, {}, resource

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self._serve("POST")

            def do_GET(self) -> None:
                self._serve("GET")

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra, answer = emulator._answer(method, self.path, headers, body)
                try:
                    form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
                except UnicodeDecodeError:
                    form = {}
                with emulator._lock:
                    emulator.received.append(
                        Received(method, self.path, headers, body, form, status)
                    )
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _error(status: int, code: int, message: str) -> dict[str, Any]:
    """Twilio's error body (twilio.com/docs/usage/twilios-response#response-formats-exceptions)."""
    return {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}  # fmt: skip
