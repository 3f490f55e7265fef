"""SendGrid v3: POST /v3/mail/send with a Bearer key; 202 with an empty body and the id
in X-Message-Id. Plain-text content goes first, as SendGrid requires."""

from __future__ import annotations

import json
from typing import Any

from crmqueue.email_rules import tag_limit
from crmqueue.providers import http
from crmqueue.providers.email.base import HttpProvider, HttpRequest, UnsupportedFeature
from crmqueue.providers.email.message import OutgoingEmail, encode_text, wire_mailbox


def _address(value: str) -> dict[str, str]:
    """SendGrid's {email, name}: the address in ASCII (IDN as A-labels); SendGrid encodes
    the name itself."""
    name, addr = wire_mailbox(value)
    return {"email": addr, "name": name} if name else {"email": addr}


class SendgridProvider(HttpProvider):
    name = "sendgrid"

    @property
    def secrets(self) -> tuple[str, ...]:
        key = self.settings.sendgrid.api_key
        return (key.get_secret_value(),) if key else ()

    def check(self, email: OutgoingEmail) -> None:
        if len(email.tags) > tag_limit(self.name):
            raise UnsupportedFeature(
                f"sendgrid: at most {tag_limit(self.name)} categories (tags) per message"
            )

    def build_request(self, email: OutgoingEmail) -> HttpRequest:
        cfg = self.settings.sendgrid
        self.require(cfg.api_key, "api_key")
        assert cfg.api_key is not None
        personalization: dict[str, Any] = {"to": [_address(a) for a in email.to]}
        if email.cc:
            personalization["cc"] = [_address(a) for a in email.cc]
        if email.bcc:
            personalization["bcc"] = [_address(a) for a in email.bcc]
        content = [{"type": "text/plain", "value": email.text}]
        if email.html is not None:
            content.append({"type": "text/html", "value": email.html})
        body: dict[str, Any] = {
            "personalizations": [personalization],
            "from": _address(email.from_),
            "subject": email.subject,
            "content": content,
            # SendGrid passes header values through: non-ASCII ones go RFC 2047-encoded.
            "headers": {
                **{name: encode_text(value) for name, value in email.headers.items()},
                "Message-ID": email.message_id,
            },
        }
        if email.reply_to:
            body["reply_to_list"] = [_address(email.reply_to)]
        if email.tags:
            body["categories"] = email.tags
        if email.metadata:
            body["custom_args"] = {k: str(v) for k, v in email.metadata.items()}
        headers = {
            "Authorization": f"Bearer {cfg.api_key.get_secret_value()}",
            "Content-Type": "application/json",
        }
        url = cfg.base_url.rstrip("/") + "/v3/mail/send"
        return HttpRequest("POST", url, headers, json.dumps(body).encode())

    def parse_response(self, response: http.Response) -> str:
        lowered = {k.lower(): v for k, v in response.headers.items()}
        return lowered.get("x-message-id", "")
