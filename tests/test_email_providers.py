"""Email providers against real servers on loopback: an aiosmtpd SMTP server (plain,
STARTTLS + auth, implicit TLS) and one http.server per HTTP vendor that checks each
request as the vendor documents it and answers with the vendor's success and errors."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from hypothesis import given, settings
from hypothesis import strategies as st

from crmqueue.config import load_settings
from crmqueue.errors import PermanentError, RetryableError
from crmqueue.providers import http
from crmqueue.providers.email import PROVIDERS, sigv4
from crmqueue.providers.email.base import HttpProvider
from crmqueue.providers.email.smtp import SmtpProvider
from tests.conftest import free_port
from tests.test_email import sample_email

SECRETS = {
    "sendgrid": "SG.super-secret-key",
    "resend": "re_super_secret_key",
    "mailgun": "key-super-secret",
    "ses": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
}


def settings_for(provider: str, **overrides: Any) -> Any:
    base: dict[str, Any] = {"email.provider": provider}
    base.update(overrides)
    return load_settings(config_file=None, overrides=base, environ={})


# --------------------------------------------------------------------------- SigV4


def test_sigv4_matches_the_aws_get_vanilla_vector() -> None:
    headers = {"Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z"}
    creq, signed = sigv4.canonical_request("GET", "https://example.amazonaws.com/", headers, b"")
    assert creq == (
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
        "host;x-amz-date\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert signed == "host;x-amz-date"
    value = sigv4.authorization(
        "GET",
        "https://example.amazonaws.com/",
        headers,
        b"",
        access_key="AKIDEXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        region="us-east-1",
        service="service",
        amz_date="20150830T123600Z",
    )
    assert value == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    import datetime as dt

    now = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert http.retry_after({"Retry-After": "7"}) == 7.0
    assert http.retry_after({"retry-after": "Thu, 01 Jan 2026 12:00:30 GMT"}, now) == 30.0
    assert http.retry_after({}) is None
    assert http.retry_after({"Retry-After": "soon"}) is None


# --------------------------------------------------------------------------- HTTP vendors


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


class Vendor:
    """A loopback HTTP server: records every request, answers from a queue (default 200)."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.answers: list[Answer] = []
        self.release = threading.Event()
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                vendor.requests.append(
                    Recorded(
                        "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body
                    )
                )
                answer = vendor.answers.pop(0) if vendor.answers else Answer(200, b"{}")
                if answer.hang:
                    vendor.release.wait(10)
                    return
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def reply(self, status: int, body: Any = b"", headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        base = {"Content-Type": "application/json"} if isinstance(body, dict) else {}
        self.answers.append(Answer(status, data, {**base, **(headers or {})}))

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def vendor() -> Iterator[Vendor]:
    server = Vendor()
    yield server
    server.close()


def http_provider(name: str, base_url: str, timeout: float = 5.0) -> HttpProvider:
    overrides: dict[str, Any] = {f"email.{name}.base_url": base_url}
    if name == "ses":
        overrides |= {
            "email.ses.access_key_id": "AKIDEXAMPLE",
            "email.ses.secret_access_key": SECRETS["ses"],
            "email.ses.session_token": "session-token-value",
            "email.ses.region": "eu-west-1",
        }
    else:
        overrides[f"email.{name}.api_key"] = SECRETS[name]
    if name == "mailgun":
        overrides["email.mailgun.domain"] = "mg.example.com"
    provider = PROVIDERS[name](settings_for(name, **overrides).email, timeout=timeout)  # type: ignore[call-arg]
    assert isinstance(provider, HttpProvider)
    return provider


def test_sendgrid_request_and_success(vendor: Vendor) -> None:
    vendor.reply(202, b"", {"X-Message-Id": "sg-message-1"})
    result = http_provider("sendgrid", vendor.url).send(sample_email())
    assert (result.provider, result.message_id) == ("sendgrid", "sg-message-1")
    [req] = vendor.requests
    assert (req.method, req.path) == ("POST", "/v3/mail/send")
    assert req.headers["authorization"] == f"Bearer {SECRETS['sendgrid']}"
    assert req.headers["content-type"] == "application/json"
    body = req.json()
    assert body["personalizations"] == [
        {
            "to": [{"email": "zoe@example.com", "name": "Zoë Ångström"}],
            "cc": [{"email": "cc@example.com"}],
            "bcc": [{"email": "hidden@example.com"}],
        }
    ]
    assert body["from"] == {"email": "jurgen@example.com", "name": "Jürgen Müller"}
    assert body["reply_to_list"] == [{"email": "replies@example.com"}]
    assert body["subject"] == "Grüße aus Köln – über 10 €"
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["content"][0]["value"] == "Hallo Zoë, 10 €"
    assert body["categories"] == ["onboarding", "welcome"]
    assert body["headers"]["X-Campaign"] == "spring"
    assert body["custom_args"] == {"tenant_id": "t1"}


def test_resend_request_success_and_idempotency_key(vendor: Vendor) -> None:
    vendor.reply(200, {"id": "re-message-1"})
    vendor.reply(200, {"id": "re-message-1"})
    provider = http_provider("resend", vendor.url)
    assert provider.send(sample_email()).message_id == "re-message-1"
    provider.send(sample_email())  # a retry of the same job: same key, Resend dedupes
    first, second = vendor.requests
    assert (first.method, first.path) == ("POST", "/emails")
    assert first.headers["authorization"] == f"Bearer {SECRETS['resend']}"
    assert first.headers["content-type"] == "application/json"
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"] == "key-1"
    body = first.json()
    assert body["from"] == '"Jürgen Müller" <jurgen@example.com>'
    assert body["to"] == ['"Zoë Ångström" <zoe@example.com>']
    assert (body["cc"], body["bcc"]) == (["cc@example.com"], ["hidden@example.com"])
    assert body["reply_to"] == "replies@example.com"
    assert body["subject"] == "Grüße aus Köln – über 10 €"
    assert (body["text"], body["html"]) == ("Hallo Zoë, 10 €", "<p>Hallo Zoë, 10 &euro;</p>")
    assert body["headers"]["X-Campaign"] == "spring"
    assert {"name": "onboarding", "value": "true"} in body["tags"]
    assert {"name": "tenant_id", "value": "t1"} in body["tags"]


def test_resend_quota_429_is_permanent_but_rate_limit_is_retried(vendor: Vendor) -> None:
    provider = http_provider("resend", vendor.url)
    vendor.reply(429, {"statusCode": 429, "name": "daily_quota_exceeded",
                       "message": "You have reached your daily email sending quota."})  # fmt: skip
    with pytest.raises(PermanentError, match="daily email sending quota"):
        provider.send(sample_email())
    vendor.reply(
        429,
        {"statusCode": 429, "name": "rate_limit_exceeded", "message": "Too many requests."},
        {"Retry-After": "2"},
    )
    with pytest.raises(RetryableError, match="Too many requests") as caught:
        provider.send(sample_email())
    assert caught.value.delay == 2.0


def test_mailgun_form_request_and_success(vendor: Vendor) -> None:
    vendor.reply(200, {"id": "<20260101.1@mg.example.com>", "message": "Queued. Thank you."})
    result = http_provider("mailgun", vendor.url).send(sample_email())
    assert result.message_id == "<20260101.1@mg.example.com>"
    [req] = vendor.requests
    assert (req.method, req.path) == ("POST", "/v3/mg.example.com/messages")
    token = base64.b64encode(f"api:{SECRETS['mailgun']}".encode()).decode()
    assert req.headers["authorization"] == f"Basic {token}"
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    form = parse_qs(req.body.decode(), strict_parsing=True)
    assert form["from"] == ['"Jürgen Müller" <jurgen@example.com>']
    assert form["to"] == ['"Zoë Ångström" <zoe@example.com>']
    assert (form["cc"], form["bcc"]) == (["cc@example.com"], ["hidden@example.com"])
    assert form["subject"] == ["Grüße aus Köln – über 10 €"]
    assert (form["text"], form["html"]) == (["Hallo Zoë, 10 €"], ["<p>Hallo Zoë, 10 &euro;</p>"])
    assert form["h:Reply-To"] == ["replies@example.com"]
    assert form["h:X-Campaign"] == ["spring"]
    assert form["o:tag"] == ["onboarding", "welcome"]
    assert form["v:tenant_id"] == ["t1"]


def test_mailgun_magnificent_api_is_an_error(vendor: Vendor) -> None:
    vendor.reply(200, b"Mailgun Magnificent API", {"Content-Type": "text/plain"})
    with pytest.raises(PermanentError, match="base_url or domain is wrong"):
        http_provider("mailgun", vendor.url).send(sample_email())


def test_ses_signed_request_and_success(vendor: Vendor) -> None:
    vendor.reply(200, {"MessageId": "ses-message-1"})
    result = http_provider("ses", vendor.url).send(sample_email())
    assert result.message_id == "ses-message-1"
    [req] = vendor.requests
    assert (req.method, req.path) == ("POST", "/v2/email/outbound-emails")
    assert req.headers["content-type"] == "application/json"
    assert req.headers["x-amz-security-token"] == "session-token-value"
    amz_date = req.headers["x-amz-date"]
    auth = req.headers["authorization"]
    assert auth.startswith(
        f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{amz_date[:8]}/eu-west-1/ses/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="
    )
    # The signature verifies over the headers that actually arrived on the wire.
    signed = {k: req.headers[k] for k in ("content-type", "host", "x-amz-date",
                                          "x-amz-security-token")}  # fmt: skip
    assert auth == sigv4.authorization(
        "POST",
        vendor.url + req.path,
        signed,
        req.body,
        access_key="AKIDEXAMPLE",
        secret_key=SECRETS["ses"],
        region="eu-west-1",
        service="ses",
        amz_date=amz_date,
    )
    body = req.json()
    # Bare ASCII addresses: the display names travel in the raw MIME.
    assert body["FromEmailAddress"] == "jurgen@example.com"
    assert body["Destination"] == {
        "ToAddresses": ["zoe@example.com"],
        "CcAddresses": ["cc@example.com"],
        "BccAddresses": ["hidden@example.com"],
    }
    assert body["ReplyToAddresses"] == ["replies@example.com"]
    assert {"Name": "tenant_id", "Value": "t1"} in body["EmailTags"]
    mime = BytesParser(policy=policy.default).parsebytes(
        base64.b64decode(body["Content"]["Raw"]["Data"])
    )
    assert str(mime["Subject"]) == "Grüße aus Köln – über 10 €"
    assert mime["Bcc"] is None


ERROR_BODIES = {
    "sendgrid": {"errors": [{"message": "bad sender for SG.super-secret-key", "field": "from"}]},
    "resend": {
        "statusCode": 400,
        "name": "validation_error",
        "message": "bad sender for re_super_secret_key",
    },
    "mailgun": {"message": "bad sender for key-super-secret"},
    "ses": {"message": "bad sender for wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"},
}
HTTP_VENDORS = sorted(ERROR_BODIES)


@pytest.mark.parametrize("name", HTTP_VENDORS)
@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_client_errors_are_permanent_with_the_vendor_message_and_no_secret(
    vendor: Vendor, name: str, status: int
) -> None:
    vendor.reply(status, ERROR_BODIES[name])
    with pytest.raises(PermanentError) as caught:
        http_provider(name, vendor.url).send(sample_email())
    text = str(caught.value)
    assert f"HTTP {status}" in text and "bad sender for ***" in text
    assert SECRETS[name] not in text


@pytest.mark.parametrize("name", HTTP_VENDORS)
def test_429_honours_retry_after(vendor: Vendor, name: str) -> None:
    vendor.reply(429, {"message": "slow down"}, {"Retry-After": "7"})
    with pytest.raises(RetryableError) as caught:
        http_provider(name, vendor.url).send(sample_email())
    assert caught.value.delay == 7.0


@pytest.mark.parametrize("name", HTTP_VENDORS)
@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_server_errors_are_retryable(vendor: Vendor, name: str, status: int) -> None:
    vendor.reply(status, b"upstream trouble", {"Content-Type": "text/plain"})
    with pytest.raises(RetryableError, match=f"HTTP {status}: upstream trouble"):
        http_provider(name, vendor.url).send(sample_email())


@pytest.mark.parametrize("name", HTTP_VENDORS)
def test_read_timeout_is_retryable(vendor: Vendor, name: str) -> None:
    vendor.answers.append(Answer(200, hang=True))
    with pytest.raises(RetryableError, match="timed out"):
        http_provider(name, vendor.url, timeout=0.3).send(sample_email())


@pytest.mark.parametrize("name", HTTP_VENDORS)
def test_connection_refused_is_retryable(name: str) -> None:
    with pytest.raises(RetryableError, match=r"connection to 127\.0\.0\.1 failed"):
        http_provider(name, f"http://127.0.0.1:{free_port()}").send(sample_email())


def test_only_http_schemes_are_allowed() -> None:
    with pytest.raises(PermanentError, match="only http"):
        http_provider("resend", "file:///etc/passwd").send(sample_email())


# --------------------------------------------------------------------------- SMTP


class Sink:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.startswith("bounce"):
            return "550 5.1.1 no such user"
        if address.startswith("later"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK queued"


class Authenticator:
    def __init__(self) -> None:
        self.logins: list[str] = []

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"crm", b"pw")
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def server_context(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    return context


@pytest.fixture
def smtp_server(request: pytest.FixtureRequest) -> Iterator[Any]:
    started: list[Controller] = []

    def start(**kwargs: Any) -> tuple[Sink, int]:
        sink = Sink()
        port = free_port()
        controller = Controller(sink, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        started.append(controller)
        return sink, port

    yield start
    for controller in started:
        controller.stop()


def smtp_provider(port: int, ssl_context: ssl.SSLContext | None = None, **overrides: Any) -> Any:
    settings = settings_for(
        "smtp", **{"email.smtp.host": "127.0.0.1", "email.smtp.port": port}, **overrides
    )
    return SmtpProvider(settings.email, ssl_context=ssl_context)


def test_smtp_plain_sends_mime_with_bcc_in_the_envelope_only(smtp_server: Any) -> None:
    sink, port = smtp_server()
    email = sample_email()
    result = smtp_provider(port).send(email)
    assert (result.provider, result.message_id) == ("smtp", email.message_id)
    [envelope] = sink.envelopes
    assert envelope.mail_from == "jurgen@example.com"
    assert envelope.rcpt_tos == ["zoe@example.com", "cc@example.com", "hidden@example.com"]
    message = BytesParser(policy=policy.default).parsebytes(envelope.original_content)
    assert message["Bcc"] is None and b"hidden@example.com" not in envelope.original_content
    assert str(message["Subject"]) == "Grüße aus Köln – über 10 €"
    assert message["From"].addresses[0].display_name == "Jürgen Müller"
    assert message["Message-ID"] == email.message_id
    plain, html = message.iter_parts()
    assert plain.get_content().strip() == "Hallo Zoë, 10 €"
    assert html.get_content_type() == "text/html"


def test_smtp_starttls_with_auth(smtp_server: Any, tls_files: tuple[Path, Path]) -> None:
    auth = Authenticator()
    sink, port = smtp_server(
        tls_context=server_context(tls_files),
        require_starttls=True,
        authenticator=auth,
        auth_require_tls=True,
    )
    client = ssl.create_default_context(cafile=str(tls_files[0]))
    overrides = {"email.smtp.security": "starttls", "email.smtp.username": "crm",
                 "email.smtp.password": "pw"}  # fmt: skip
    smtp_provider(port, client, **overrides).send(sample_email())
    assert auth.logins == ["crm"]
    assert len(sink.envelopes) == 1
    # A wrong password is permanent, and the password never shows.
    overrides["email.smtp.password"] = "wrong-secret"
    with pytest.raises(PermanentError, match="authentication failed") as caught:
        smtp_provider(port, client, **overrides).send(sample_email())
    assert "wrong-secret" not in str(caught.value)
    # An untrusted certificate is permanent too.
    with pytest.raises(PermanentError, match="certificate"):
        smtp_provider(port, ssl.create_default_context(), **overrides).send(sample_email())


def test_smtp_implicit_tls(smtp_server: Any, tls_files: tuple[Path, Path]) -> None:
    sink, port = smtp_server(ssl_context=server_context(tls_files))
    client = ssl.create_default_context(cafile=str(tls_files[0]))
    smtp_provider(port, client, **{"email.smtp.security": "ssl"}).send(sample_email())
    assert len(sink.envelopes) == 1


def test_smtp_refusals_are_classified(smtp_server: Any) -> None:
    _sink, port = smtp_server()
    provider = smtp_provider(port)
    with pytest.raises(PermanentError, match="550"):
        provider.send(sample_email(to=["bounce@example.com"], cc=[], bcc=[]))
    with pytest.raises(RetryableError, match="451"):
        provider.send(sample_email(to=["later@example.com"], cc=[], bcc=[]))


def test_smtp_connection_refused_is_retryable() -> None:
    with pytest.raises(RetryableError, match="ConnectionRefusedError"):
        smtp_provider(free_port()).send(sample_email())


# --------------------------------------------------------------------------- IDN, headers, tags

IDN_FIELDS: dict[str, Any] = {
    "from_": "Bücher Team <info@bücher.example>",
    "to": ["Zoë Ångström <zoe@bücher.example>", "ann@пример.рф"],
    "cc": ["cc@例え.テスト"],
    "bcc": ["Hidden <hidden@straße.de>"],
    "reply_to": "replies@bücher.example",
}
IDN_RECIPIENTS = [
    "zoe@xn--bcher-kva.example",
    "ann@xn--e1afmkfd.xn--p1ai",
    "cc@xn--r8jz45g.xn--zckzah",
    "hidden@xn--strae-oqa.de",
]
UNICODE_HEADER = {"X-Note": "Grüße aus Köln — « réunion » 東京"}


def idn_email(**overrides: Any) -> Any:
    """The email a payload with IDN domains in every address field gives (payloads keep
    the Unicode form; the message sends A-labels)."""
    from crmqueue.payloads import EmailPayload, validate_payload

    job = validate_payload(
        EmailPayload,
        {"tenantId": "t1", "template": "welcome", "from": IDN_FIELDS["from_"],
         "to": IDN_FIELDS["to"], "cc": IDN_FIELDS["cc"], "bcc": IDN_FIELDS["bcc"],
         "replyTo": IDN_FIELDS["reply_to"], "headers": UNICODE_HEADER,
         "tags": ["onboarding", "spring-2026"], "idempotencyKey": "rechnung-€-42"},
    )  # fmt: skip
    fields = {"from_": job.from_, "to": job.to, "cc": job.cc, "bcc": job.bcc,
              "reply_to": job.reply_to, "headers": job.headers, "tags": job.tags,
              "idempotency_key": job.idempotency_key}  # fmt: skip
    fields.update(overrides)
    return sample_email(**fields)


def test_payload_takes_idn_domains_in_every_address_field() -> None:
    email = idn_email()
    assert email.from_ == '"Bücher Team" <info@bücher.example>'
    assert email.from_address == "info@xn--bcher-kva.example"
    assert email.recipients == IDN_RECIPIENTS
    # IDNA 2008 (not 2003): ß stays, upper case maps to lower case (UTS 46).
    from crmqueue.payloads import EmailPayload, validate_payload

    data = {"tenantId": "t1", "template": "welcome",
            "to": ["x@BÜCHER.example", "y@xn--bcher-kva.example"]}  # fmt: skip
    job = validate_payload(EmailPayload, data)
    assert job.to == ["x@bücher.example", "y@bücher.example"]


@pytest.mark.parametrize("field", ["to", "cc", "bcc", "replyTo", "from"])
@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("jürgen@example.com", "is not ASCII: crmqueue does not send SMTPUTF8 mail"),
        ("Jürgen <jürgen@bücher.example>", "is not ASCII"),
        ("a@xn--zz.example", "not a valid internationalised domain name (IDNA 2008)"),
        ("a@bü cher.example", "not a valid internationalised domain name"),
        ("a@-bücher.example", "not a valid internationalised domain name"),
        ("a@bücher", "has no top-level domain"),
        ("not an address", "value is not a valid email address"),
    ],
)
def test_every_address_field_refuses_what_cannot_be_sent_the_same_way(
    field: str, address: str, reason: str
) -> None:
    from crmqueue.errors import PayloadError
    from crmqueue.payloads import EmailPayload, validate_payload

    data: dict[str, Any] = {"tenantId": "t1", "template": "welcome", "to": "ok@example.com"}
    data[field] = [address] if field in ("cc", "bcc") else address
    with pytest.raises(PayloadError) as caught:
        validate_payload(EmailPayload, data)
    errors = dict(caught.value.errors)
    name = {"replyTo": "reply_to", "from": "from_"}.get(field, field)
    assert any(key.split(".")[0] in (name, field) and reason in text
               for key, text in errors.items()), errors  # fmt: skip


def _ascii_only(values: list[str]) -> None:
    for value in values:
        assert value.isascii(), value


def test_idn_and_unicode_headers_reach_every_http_vendor_as_they_must(vendor: Vendor) -> None:
    vendor.reply(202, b"", {"X-Message-Id": "sg-1"})  # sendgrid
    vendor.reply(200, {"id": "re-1"})  # resend
    vendor.reply(200, {"id": "<mg-1@x>"})  # mailgun
    vendor.reply(200, {"MessageId": "ses-1"})  # ses
    for name in ("sendgrid", "resend", "mailgun", "ses"):
        http_provider(name, vendor.url).send(idn_email())
    sendgrid, resend, mailgun, ses = vendor.requests

    body = sendgrid.json()
    people = body["personalizations"][0]
    assert people["to"] == [{"email": "zoe@xn--bcher-kva.example", "name": "Zoë Ångström"},
                            {"email": "ann@xn--e1afmkfd.xn--p1ai"}]  # fmt: skip
    assert people["cc"] == [{"email": "cc@xn--r8jz45g.xn--zckzah"}]
    assert people["bcc"] == [{"email": "hidden@xn--strae-oqa.de", "name": "Hidden"}]
    assert body["from"] == {"email": "info@xn--bcher-kva.example", "name": "Bücher Team"}
    assert body["reply_to_list"] == [{"email": "replies@xn--bcher-kva.example"}]
    assert body["categories"] == ["onboarding", "spring-2026"]
    assert_header_decodes("X-Note", body["headers"]["X-Note"], UNICODE_HEADER["X-Note"])

    body = resend.json()
    assert body["from"] == '"Bücher Team" <info@xn--bcher-kva.example>'
    assert body["to"] == ['"Zoë Ångström" <zoe@xn--bcher-kva.example>',
                          "ann@xn--e1afmkfd.xn--p1ai"]  # fmt: skip
    assert body["cc"] == ["cc@xn--r8jz45g.xn--zckzah"]
    assert body["bcc"] == ["Hidden <hidden@xn--strae-oqa.de>"]
    assert body["reply_to"] == "replies@xn--bcher-kva.example"
    assert [t["name"] for t in body["tags"][:2]] == ["onboarding", "spring-2026"]
    assert_header_decodes("X-Note", body["headers"]["X-Note"], UNICODE_HEADER["X-Note"])
    # A non-ASCII idempotency key goes hashed (a header value must be ASCII), stably.
    key = resend.headers["idempotency-key"]
    assert key.startswith("sha256:") and key.isascii()
    assert (key == PROVIDERS["resend"].__module__ and False) or key == (
        "sha256:" + __import__("hashlib").sha256("rechnung-€-42".encode()).hexdigest()
    )

    form = parse_qs(mailgun.body.decode(), strict_parsing=True)
    assert form["from"] == ['"Bücher Team" <info@xn--bcher-kva.example>']
    assert form["to"] == ['"Zoë Ångström" <zoe@xn--bcher-kva.example>',
                          "ann@xn--e1afmkfd.xn--p1ai"]  # fmt: skip
    assert form["cc"] == ["cc@xn--r8jz45g.xn--zckzah"]
    assert form["bcc"] == ["Hidden <hidden@xn--strae-oqa.de>"]
    assert form["h:Reply-To"] == ["replies@xn--bcher-kva.example"]
    assert form["o:tag"] == ["onboarding", "spring-2026"]
    assert_header_decodes("X-Note", form["h:X-Note"][0], UNICODE_HEADER["X-Note"])

    body = ses.json()
    assert body["FromEmailAddress"] == "info@xn--bcher-kva.example"
    assert body["Destination"] == {
        "ToAddresses": ["zoe@xn--bcher-kva.example", "ann@xn--e1afmkfd.xn--p1ai"],
        "CcAddresses": ["cc@xn--r8jz45g.xn--zckzah"],
        "BccAddresses": ["hidden@xn--strae-oqa.de"],
    }
    assert body["ReplyToAddresses"] == ["replies@xn--bcher-kva.example"]
    assert_idn_mime(base64.b64decode(body["Content"]["Raw"]["Data"]))


def assert_header_decodes(name: str, value: str, expected: str) -> None:
    from email.parser import HeaderParser

    assert value.isascii()
    parsed = HeaderParser(policy=policy.default).parsestr(f"{name}: {value}\n\n")
    assert str(parsed[name]) == expected


def assert_idn_mime(raw: bytes) -> None:
    """The MIME of idn_email(): ASCII, addresses as A-labels, names and headers exact."""
    assert raw.split(b"\r\n\r\n", 1)[0].isascii()
    message = BytesParser(policy=policy.default).parsebytes(raw)
    sender = message["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == ("Bücher Team", "info@xn--bcher-kva.example")
    assert [(a.display_name, a.addr_spec) for a in message["To"].addresses] == [
        ("Zoë Ångström", "zoe@xn--bcher-kva.example"), ("", "ann@xn--e1afmkfd.xn--p1ai")
    ]  # fmt: skip
    assert message["Cc"].addresses[0].addr_spec == "cc@xn--r8jz45g.xn--zckzah"
    assert message["Reply-To"].addresses[0].addr_spec == "replies@xn--bcher-kva.example"
    assert message["Bcc"] is None and b"hidden@" not in raw
    assert str(message["X-Note"]) == UNICODE_HEADER["X-Note"]
    assert str(message["X-Crmqueue-Tags"]) == "onboarding, spring-2026"
    assert message["Message-ID"].endswith("@xn--bcher-kva.example>")


def test_idn_through_smtp_envelope_and_mime(smtp_server: Any) -> None:
    sink, port = smtp_server()
    smtp_provider(port).send(idn_email())
    [envelope] = sink.envelopes
    assert envelope.mail_from == "info@xn--bcher-kva.example"
    assert envelope.rcpt_tos == IDN_RECIPIENTS
    assert_idn_mime(envelope.original_content)


def test_idn_through_the_outbox(tmp_path: Path) -> None:
    from crmqueue.providers.email import get_provider

    settings = settings_for("outbox", **{"email.outbox_dir": str(tmp_path)})
    get_provider(settings.email).send(idn_email())
    [path] = tmp_path.glob("*.eml")
    assert_idn_mime(path.read_bytes())


def test_the_outbox_writes_one_message_per_idempotency_key(tmp_path: Path) -> None:
    """A job re-run after a crash between the send and its recorded completion (a kill)
    sends again with the same key: the outbox, like Resend, writes it once."""
    from crmqueue.providers.email import get_provider

    provider = get_provider(settings_for("outbox", **{"email.outbox_dir": str(tmp_path)}).email)
    first = provider.send(idn_email(idempotency_key="job-1"))
    again = provider.send(idn_email(idempotency_key="job-1"))
    assert again.message_id == first.message_id
    assert len(list(tmp_path.glob("*.eml"))) == 1
    provider.send(idn_email(idempotency_key="job-2"))
    assert len(list(tmp_path.glob("*.eml"))) == 2


def test_an_idn_sender_email_completes_end_to_end(
    broker: Any, start_consumer: Any, tmp_path: Path
) -> None:
    """The issue's case: from info@bücher.example was accepted, then dead after 5 tries."""
    from crmqueue import tasks

    start_consumer(broker, ["email"])
    job = tasks.send_email(tenant_id="t1", to="Zoë <zoe@bücher.example>", template="welcome",
                           from_="Bücher <info@bücher.example>", cc=["cc@пример.рф"],
                           tags=["onboarding"], idempotency_key="rechnung-€-42",
                           context={"firstName": "Zoë"})  # fmt: skip
    info = job.wait(timeout=20)
    assert info.state == "completed", info.errors
    assert info.attempts == 1
    [path] = (tmp_path / "outbox").glob("*.eml")
    message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert message["From"].addresses[0].addr_spec == "info@xn--bcher-kva.example"
    assert message["To"].addresses[0].display_name == "Zoë"
    assert str(message["Subject"]) == "Welcome to CRM, Zoë!"


LABEL_CHARS = st.one_of(
    st.sampled_from("abcxyz019-"),
    st.characters(min_codepoint=0xE0, max_codepoint=0x17F, categories=("Ll",)),
    st.characters(min_codepoint=0x430, max_codepoint=0x44F),
    st.characters(min_codepoint=0x3B1, max_codepoint=0x3C9),
    st.characters(min_codepoint=0x4E00, max_codepoint=0x4FFF),
    st.characters(min_codepoint=0x3041, max_codepoint=0x3096),
    st.sampled_from(["ß", "ς", "\u200d", "\u0301", "ـ", "א", "١"]),
)
DOMAINS = st.lists(
    st.lists(LABEL_CHARS, min_size=1, max_size=12).map("".join), min_size=1, max_size=3
).map(lambda labels: ".".join([*labels, "example"]))


@settings(max_examples=200, deadline=None)
@given(domain=DOMAINS)
def test_every_address_field_takes_or_refuses_a_domain_alike(domain: str) -> None:
    """Whatever the domain, IDNA 2008 decides, and all five fields agree: accepted ones go
    out as A-labels that decode back to the domain; refused ones name IDNA."""
    import idna

    from crmqueue.errors import PayloadError
    from crmqueue.payloads import EmailPayload, validate_payload
    from crmqueue.providers.email.message import wire_mailbox

    try:
        ascii_domain = idna.encode(domain, uts46=True).decode()
        valid = all(1 <= len(label) <= 63 for label in ascii_domain.split("."))
    except idna.IDNAError:
        valid = False
    address = f"someone@{domain}"
    outcomes = []
    for name in ("to", "cc", "bcc", "replyTo", "from"):
        data: dict[str, Any] = {"tenantId": "t1", "template": "welcome", "to": "ok@example.com"}
        data[name] = f"Name <{address}>"
        try:
            job = validate_payload(EmailPayload, data)
        except PayloadError as exc:
            outcomes.append(False)
            assert "valid" in str(exc) and ("IDNA" in str(exc) or "host name" in str(exc))
            continue
        outcomes.append(True)
        email = sample_email(from_=job.from_ or "a@example.com", to=job.to,
                             cc=job.cc, bcc=job.bcc, reply_to=job.reply_to)  # fmt: skip
        reply = [wire_mailbox(email.reply_to)[1]] if email.reply_to else []
        sent = (email.from_address, *email.recipients, *reply)
        wire = [a for a in sent if a.startswith("someone@")]
        assert wire and all(a == f"someone@{ascii_domain}" for a in wire)
        assert idna.decode(wire[0].partition("@")[2]) == idna.decode(ascii_domain)
    assert outcomes == [valid] * 5
