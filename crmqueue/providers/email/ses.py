"""Amazon SES v2 SendEmail: POST /v2/email/outbound-emails on email.<region>.amazonaws.com,
signed with SigV4 (service "ses"), temporary credentials through X-Amz-Security-Token.
The message goes as Content.Raw (our own MIME, so every header and encoding is ours);
bcc only in Destination. Throttling (429) is retried."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from crmqueue.providers import http
from crmqueue.providers.email import sigv4
from crmqueue.providers.email.base import HttpProvider, HttpRequest, json_body
from crmqueue.providers.email.message import OutgoingEmail, wire_mailbox

_TAG_RE = re.compile(r"[^A-Za-z0-9_-]")


class SesProvider(HttpProvider):
    name = "ses"

    @property
    def secrets(self) -> tuple[str, ...]:
        cfg = self.settings.ses
        return tuple(s.get_secret_value() for s in (cfg.secret_access_key, cfg.session_token) if s)

    def base_url(self) -> str:
        cfg = self.settings.ses
        return (cfg.base_url or f"https://email.{cfg.region}.amazonaws.com").rstrip("/")

    def build_request(self, email: OutgoingEmail) -> HttpRequest:
        cfg = self.settings.ses
        self.require(cfg.access_key_id, "access_key_id")
        self.require(cfg.secret_access_key, "secret_access_key")
        assert cfg.access_key_id is not None and cfg.secret_access_key is not None
        # SES wants ASCII addresses (IDN domains as A-labels); the names are in our MIME.
        destination: dict[str, list[str]] = {"ToAddresses": [wire_mailbox(a)[1] for a in email.to]}
        if email.cc:
            destination["CcAddresses"] = [wire_mailbox(a)[1] for a in email.cc]
        if email.bcc:
            destination["BccAddresses"] = [wire_mailbox(a)[1] for a in email.bcc]
        body: dict[str, Any] = {
            "FromEmailAddress": email.from_address,
            "Destination": destination,
            "Content": {"Raw": {"Data": base64.b64encode(email.as_bytes()).decode()}},
        }
        if email.reply_to:
            body["ReplyToAddresses"] = [wire_mailbox(email.reply_to)[1]]
        tags = [{"Name": _TAG_RE.sub("_", t), "Value": "true"} for t in email.tags]
        tags += [
            {"Name": _TAG_RE.sub("_", k), "Value": _TAG_RE.sub("_", v)}
            for k, v in email.metadata.items()
        ]
        if tags:
            body["EmailTags"] = tags
        data = json.dumps(body).encode()
        url = self.base_url() + "/v2/email/outbound-emails"
        headers = sigv4.sign(
            "POST",
            url,
            {"Content-Type": "application/json"},
            data,
            access_key=cfg.access_key_id,
            secret_key=cfg.secret_access_key.get_secret_value(),
            region=cfg.region,
            service="ses",
            session_token=cfg.session_token.get_secret_value() if cfg.session_token else None,
        )
        return HttpRequest("POST", url, headers, data)

    def parse_response(self, response: http.Response) -> str:
        body = json_body(response)
        return str(body.get("MessageId", "")) if isinstance(body, dict) else ""
