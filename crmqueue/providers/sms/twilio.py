"""Twilio Programmable Messaging (REFERENCE "SMS"): ``POST
{base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json``, form-encoded ``To``,
``From`` or ``MessagingServiceSid``, ``Body``; HTTP Basic with the account SID and the
auth token, both from the environment only (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, the
names Twilio's own libraries read). 201 answers JSON with ``sid`` and ``status``. Errors
answer JSON ``{"code", "message", "more_info", "status"}``: 400 (e.g. 21211, an invalid
To number) and 401/403 are permanent; 429 (20429) and 5xx are retried."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from urllib.parse import quote, urlencode

from crmqueue.config import OutboundSettings, SmsSettings
from crmqueue.errors import PermanentError
from crmqueue.providers import http
from crmqueue.providers.sms.base import (
    HttpRequest,
    HttpSmsProvider,
    OutgoingSms,
    SmsResult,
    json_body,
)

ACCOUNT_SID_ENV = "TWILIO_ACCOUNT_SID"
AUTH_TOKEN_ENV = "TWILIO_AUTH_TOKEN"
API_VERSION = "2010-04-01"
# An Account SID: AC and 32 hex digits.
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")


def credentials_problem(environ: Mapping[str, str]) -> str | None:
    """What is wrong with the credentials in `environ` (unset, or an account SID that is
    not AC and 32 hex digits), or None. Never names a secret's value."""
    missing = [
        name for name in (ACCOUNT_SID_ENV, AUTH_TOKEN_ENV) if not environ.get(name, "").strip()
    ]
    if missing:
        return f"{' and '.join(missing)} not set in the environment"
    if not _ACCOUNT_SID.fullmatch(environ[ACCOUNT_SID_ENV].strip()):
        return f"{ACCOUNT_SID_ENV} is not an Account SID (AC and 32 hex digits)"
    return None


class TwilioProvider(HttpSmsProvider):
    name = "twilio"

    def __init__(
        self,
        settings: SmsSettings,
        outbound: OutboundSettings | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(settings, outbound)
        env = os.environ if environ is None else environ
        self._problem = credentials_problem(env)
        self._account_sid = env.get(ACCOUNT_SID_ENV, "").strip()
        self._auth_token = env.get(AUTH_TOKEN_ENV, "").strip()

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self._auth_token,) if self._auth_token else ()

    def build_request(self, sms: OutgoingSms) -> HttpRequest:
        if self._problem is not None:
            raise PermanentError(f"twilio: {self._problem}")
        form = {"To": sms.to, "Body": sms.body}
        if self.settings.messaging_service_sid:
            form["MessagingServiceSid"] = self.settings.messaging_service_sid
        elif self.settings.from_number:
            form["From"] = self.settings.from_number
        else:
            raise PermanentError("twilio: sms.from_number or sms.messaging_service_sid is not set")
        credentials = f"{self._account_sid}:{self._auth_token}".encode()
        headers = {
            "Authorization": "Basic " + base64.b64encode(credentials).decode("ascii"),
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "Accept": "application/json",
        }
        url = (
            f"{self.settings.base_url}/{API_VERSION}/Accounts/"
            f"{quote(self._account_sid, safe='')}/Messages.json"
        )
        return HttpRequest("POST", url, headers, urlencode(form).encode("ascii"))

    def error_message(self, response: http.Response) -> str:
        body = json_body(response)
        if isinstance(body, Mapping):
            message = str(body.get("message") or "")[:500]
            code = body.get("code")
            if code is not None:
                return f"Twilio error {code}: {message}".rstrip(": ")
            if message:
                return message
        return response.text(300).strip()

    def parse_response(self, response: http.Response) -> SmsResult:
        body = json_body(response)
        if not isinstance(body, Mapping):
            raise PermanentError(f"twilio: HTTP {response.status} without a JSON answer")
        return SmsResult(
            message_id=str(body.get("sid") or ""),
            provider=self.name,
            status=str(body.get("status") or ""),
        )
