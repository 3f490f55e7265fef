"""Resend: POST /emails with a Bearer key and an Idempotency-Key (24 h), answer
200 {"id": ...}. A 429 for the daily or monthly quota is permanent; a rate-limit 429 is
retried after Retry-After."""

from __future__ import annotations

import json
import re

from crmqueue.errors import PermanentError
from crmqueue.providers import http
from crmqueue.providers.email.base import (
    HttpProvider,
    HttpRequest,
    json_body,
)
from crmqueue.providers.email.message import (
    OutgoingEmail,
    encode_text,
    wire_idempotency_key,
    wire_mailbox_text,
)

_TAG_RE = re.compile(r"[^A-Za-z0-9_-]")


class ResendProvider(HttpProvider):
    name = "resend"

    @property
    def secrets(self) -> tuple[str, ...]:
        key = self.settings.resend.api_key
        return (key.get_secret_value(),) if key else ()

    def build_request(self, email: OutgoingEmail) -> HttpRequest:
        cfg = self.settings.resend
        self.require(cfg.api_key, "api_key")
        assert cfg.api_key is not None
        body: dict[str, object] = {
            "from": wire_mailbox_text(email.from_),
            "to": [wire_mailbox_text(a) for a in email.to],
            "subject": email.subject,
            "text": email.text,
        }
        if email.html is not None:
            body["html"] = email.html
        if email.cc:
            body["cc"] = [wire_mailbox_text(a) for a in email.cc]
        if email.bcc:
            body["bcc"] = [wire_mailbox_text(a) for a in email.bcc]
        if email.reply_to:
            body["reply_to"] = wire_mailbox_text(email.reply_to)
        body["headers"] = {
            **{name: encode_text(value) for name, value in email.headers.items()},
            "Message-ID": email.message_id,
        }
        tags = [{"name": _TAG_RE.sub("_", tag)[:256], "value": "true"} for tag in email.tags]
        tags += [
            {"name": _TAG_RE.sub("_", k), "value": _TAG_RE.sub("_", v)[:256]}
            for k, v in email.metadata.items()
        ]
        if tags:
            body["tags"] = tags
        headers = {
            "Authorization": f"Bearer {cfg.api_key.get_secret_value()}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        if email.idempotency_key:
            headers["Idempotency-Key"] = wire_idempotency_key(email.idempotency_key)
        return HttpRequest(
            "POST", cfg.base_url.rstrip("/") + "/emails", headers, json.dumps(body).encode()
        )

    def classify(self, response: http.Response) -> None:
        if response.status == 429:
            body = json_body(response)
            name = str(body.get("name", "")) if isinstance(body, dict) else ""
            if "quota" in name:
                raise PermanentError(f"resend: HTTP 429: {self.error_message(response)}")
        super().classify(response)

    def parse_response(self, response: http.Response) -> str:
        body = json_body(response)
        return str(body.get("id", "")) if isinstance(body, dict) else ""
