"""The SMS provider base, shaped like the email providers (crmqueue.providers.email.base,
after django-anymail): a fixed send pipeline in the base class, one small subclass per
vendor that turns an OutgoingSms into the vendor's request and the vendor's answer into
an SmsResult. Every failure is classified: RetryableError (timeouts, connection errors,
408/429/5xx, with Retry-After) or PermanentError (a bad number, bad credentials, ...),
carrying the vendor's message and never a secret."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from crmqueue.config import OutboundSettings, SmsSettings
from crmqueue.errors import PermanentError
from crmqueue.providers import http
from crmqueue.providers.http import HttpRequest as HttpRequest
from crmqueue.providers.http import json_body as json_body

# E.164 (ITU-T E.164, as Twilio takes it): a plus, a country code not starting with 0,
# at most 15 digits in all. The number's existence is the vendor's to judge (Twilio
# answers 400 with code 21211, which is permanent).
E164 = re.compile(r"\+[1-9][0-9]{1,14}")
ELLIPSIS = "…"


@dataclass(frozen=True)
class OutgoingSms:
    """One text message: `to` in E.164, `body` the text (at most the provider's limit)."""

    to: str
    body: str


@dataclass(frozen=True)
class SmsResult:
    """What the vendor answered: its id for the message and the message's status
    (Twilio: ``queued``, ``accepted``, ...)."""

    message_id: str
    provider: str
    status: str


def sms_text(title: str, message: str, action_url: str | None, max_chars: int) -> str:
    """The body of a notification's SMS: the title, the message and the link, one line
    each, at most `max_chars` characters. The link is kept whole (a cut link is a dead
    one) when it leaves room for some text, else dropped; the message, then the title,
    are cut with an ellipsis to fit."""
    link = action_url or ""
    if link and len(link) > max_chars // 2:
        link = ""
    room = max_chars - (len(link) + 1 if link else 0)
    text = f"{title}\n{message}" if message else title
    if len(text) > room:
        text = text[: room - 1].rstrip() + ELLIPSIS
    return f"{text}\n{link}" if link else text


class SmsProvider(ABC):
    name: ClassVar[str]

    def __init__(self, settings: SmsSettings, outbound: OutboundSettings | None = None) -> None:
        self.settings = settings
        self.outbound = outbound or OutboundSettings()

    def send(self, sms: OutgoingSms) -> SmsResult:
        """The fixed pipeline: check the number and the body, deliver, insist on a
        message id. Raises PermanentError (bad number, empty or too long body, a vendor
        refusal) or RetryableError (rate limit, vendor or network trouble)."""
        if not E164.fullmatch(sms.to):
            raise PermanentError(f"{self.name}: {sms.to!r} is not an E.164 number")
        if not sms.body.strip():
            raise PermanentError(f"{self.name}: the message body is empty")
        if len(sms.body) > self.settings.max_chars:
            raise PermanentError(
                f"{self.name}: the body has {len(sms.body)} characters, over sms.max_chars"
                f" ({self.settings.max_chars})"
            )
        result = self.deliver(sms)
        if not result.message_id:
            raise PermanentError(f"{self.name}: the vendor answered without a message id")
        return result

    @abstractmethod
    def deliver(self, sms: OutgoingSms) -> SmsResult:
        """Send `sms`; return the vendor's answer."""


class HttpSmsProvider(SmsProvider):
    """A vendor reached over HTTP(S). Requests take the SSRF-guarded path
    (crmqueue.providers.http.guarded_request): the vendor's base URL is configuration,
    but a loopback or private address (an emulator, a proxy) must be allowed by
    ``outbound.allowed_networks`` all the same."""

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values to mask from any error text (tokens)."""
        return ()

    @abstractmethod
    def build_request(self, sms: OutgoingSms) -> HttpRequest: ...

    @abstractmethod
    def parse_response(self, response: http.Response) -> SmsResult:
        """The result from a 2xx answer."""

    def error_message(self, response: http.Response) -> str:
        body = json_body(response)
        if isinstance(body, Mapping) and isinstance(body.get("message"), str):
            return str(body["message"])[:500]
        return response.text(300).strip()

    def classify(self, response: http.Response) -> None:
        http.raise_for_status(
            response, self.name, self.error_message(response), secrets=self.secrets
        )

    def deliver(self, sms: OutgoingSms) -> SmsResult:
        req = self.build_request(sms)
        response = http.guarded_request(
            req.method,
            req.url,
            allowed_networks=self.outbound.networks(),
            headers=req.headers,
            body=req.body,
            timeout=self.settings.timeout_seconds,
            what=self.name,
            max_response_bytes=64 * 1024,
            check_max_age=30.0,
            deadline=self.settings.timeout_seconds * 2,
        )
        self.classify(response)
        return self.parse_response(response)
