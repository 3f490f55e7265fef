"""The provider base (the django-anymail shape): a fixed send pipeline in the base class,
one small subclass per vendor that turns an OutgoingEmail into the vendor's request and
the vendor's answer into a SendResult. Unlike anymail, every failure is classified:
RetryableError (timeouts, connection errors, 408/429/5xx, with Retry-After) or
PermanentError (bad request, bad credentials, ...), carrying the vendor's message and
never a secret."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import urllib3

from crmqueue.config import EmailSettings
from crmqueue.email_rules import recipient_limit
from crmqueue.errors import PermanentError
from crmqueue.providers import http
from crmqueue.providers.email.message import OutgoingEmail
from crmqueue.providers.http import HttpRequest as HttpRequest
from crmqueue.providers.http import json_body as json_body


@dataclass(frozen=True)
class SendResult:
    """What the vendor answered: its id for the message (our Message-ID when the vendor
    has none, e.g. SMTP and the outbox)."""

    message_id: str
    provider: str


class UnsupportedFeature(PermanentError):
    """The message uses something this vendor cannot send."""


class EmailProvider(ABC):
    name: ClassVar[str]

    def __init__(self, settings: EmailSettings) -> None:
        self.settings = settings

    def send(self, email: OutgoingEmail) -> SendResult:
        """The fixed pipeline: check the message against the vendor's limits, deliver it,
        insist on a message id."""
        limit = recipient_limit(self.name)
        if len(email.to) + len(email.cc) + len(email.bcc) > limit:
            raise UnsupportedFeature(f"{self.name}: at most {limit} recipients (to, cc and bcc)")
        self.check(email)
        message_id = self.deliver(email)
        if not message_id:
            raise PermanentError(f"{self.name}: the vendor answered without a message id")
        return SendResult(message_id=message_id, provider=self.name)

    def check(self, email: OutgoingEmail) -> None:
        """Raise UnsupportedFeature for what the vendor cannot carry (default: nothing)."""
        return None

    @abstractmethod
    def deliver(self, email: OutgoingEmail) -> str:
        """Send `email`; return the vendor's message id."""


class HttpProvider(EmailProvider):
    """A vendor reached over HTTPS through the shared pool."""

    def __init__(
        self, settings: EmailSettings, *, timeout: urllib3.Timeout | float | None = None
    ) -> None:
        super().__init__(settings)
        self.timeout = timeout

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values to mask from any error text (API keys)."""
        return ()

    def require(self, value: Any, key: str) -> None:
        if not value:
            raise PermanentError(f"{self.name}: email.{self.name}.{key} is not configured")

    @abstractmethod
    def build_request(self, email: OutgoingEmail) -> HttpRequest: ...

    @abstractmethod
    def parse_response(self, response: http.Response) -> str:
        """The message id from a 2xx answer."""

    def error_message(self, response: http.Response) -> str:
        return vendor_message(response)

    def retry_delay(self, response: http.Response) -> float | None:
        return http.retry_after(response.headers)

    def classify(self, response: http.Response) -> None:
        http.raise_for_status(
            response,
            self.name,
            self.error_message(response),
            delay=self.retry_delay(response),
            secrets=self.secrets,
        )

    def deliver(self, email: OutgoingEmail) -> str:
        req = self.build_request(email)
        response = http.request(
            req.method,
            req.url,
            headers=req.headers,
            body=req.body,
            timeout=self.timeout,
            what=self.name,
        )
        self.classify(response)
        return self.parse_response(response)


def vendor_message(response: http.Response) -> str:
    """The vendor's error text: JSON `message`, `error`, or `errors[].message`; else the
    start of the body."""
    body = json_body(response)
    if isinstance(body, Mapping):
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            parts = [
                str(item.get("message", item)) if isinstance(item, Mapping) else str(item)
                for item in errors
            ]
            return "; ".join(parts)[:500]
        for key in ("message", "Message", "error", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value[:500]
            if isinstance(value, Mapping) and isinstance(value.get("message"), str):
                return str(value["message"])[:500]
    return response.text(300).strip()
