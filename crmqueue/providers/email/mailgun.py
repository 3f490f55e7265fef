"""Mailgun: POST /v3/<domain>/messages as form fields with HTTP Basic api:<key>;
200 {"id": "<...>"}. The EU region is base_url https://api.eu.mailgun.net. A 200 with
"Mailgun Magnificent API" means the URL is wrong: an error, not a send."""

from __future__ import annotations

import base64
from urllib.parse import quote, urlencode

from crmqueue.email_rules import tag_limit
from crmqueue.errors import PermanentError
from crmqueue.providers import http
from crmqueue.providers.email.base import HttpProvider, HttpRequest, UnsupportedFeature, json_body
from crmqueue.providers.email.message import OutgoingEmail, encode_text, wire_mailbox_text


class MailgunProvider(HttpProvider):
    name = "mailgun"

    @property
    def secrets(self) -> tuple[str, ...]:
        key = self.settings.mailgun.api_key
        if not key:
            return ()
        secret = key.get_secret_value()
        return (secret, base64.b64encode(f"api:{secret}".encode()).decode())

    def check(self, email: OutgoingEmail) -> None:
        if len(email.tags) > tag_limit(self.name):
            raise UnsupportedFeature(f"mailgun: at most {tag_limit(self.name)} tags per message")

    def build_request(self, email: OutgoingEmail) -> HttpRequest:
        cfg = self.settings.mailgun
        self.require(cfg.domain, "domain")
        self.require(cfg.api_key, "api_key")
        assert cfg.api_key is not None and cfg.domain is not None
        fields: list[tuple[str, str]] = [("from", wire_mailbox_text(email.from_))]
        fields += [("to", wire_mailbox_text(a)) for a in email.to]
        fields += [("cc", wire_mailbox_text(a)) for a in email.cc]
        fields += [("bcc", wire_mailbox_text(a)) for a in email.bcc]
        fields += [("subject", email.subject), ("text", email.text)]
        if email.html is not None:
            fields.append(("html", email.html))
        if email.reply_to:
            fields.append(("h:Reply-To", wire_mailbox_text(email.reply_to)))
        fields.append(("h:Message-Id", email.message_id))
        fields += [(f"h:{name}", encode_text(value)) for name, value in email.headers.items()]
        fields += [("o:tag", tag) for tag in email.tags]
        fields += [(f"v:{name}", value) for name, value in email.metadata.items()]
        token = base64.b64encode(f"api:{cfg.api_key.get_secret_value()}".encode()).decode()
        headers = {
            "Authorization": f"Basic {token}",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        url = f"{cfg.base_url.rstrip('/')}/v3/{quote(cfg.domain, safe='')}/messages"
        return HttpRequest("POST", url, headers, urlencode(fields).encode())

    def parse_response(self, response: http.Response) -> str:
        if b"Mailgun Magnificent API" in response.data:
            raise PermanentError(
                "mailgun: the API answered 'Mailgun Magnificent API': base_url or domain is wrong"
            )
        body = json_body(response)
        return str(body.get("id", "")) if isinstance(body, dict) else ""
