"""The message every provider sends: one OutgoingEmail, rendered to MIME when needed."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, parseaddr
from functools import lru_cache

from crmqueue.errors import PermanentError

# Headers a caller may not set through `headers`: the message builds them itself.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)
TAGS_HEADER = "X-Crmqueue-Tags"


@dataclass
class OutgoingEmail:
    """A rendered email with its envelope. `bcc` never appears in the MIME headers."""

    from_: str
    to: list[str]
    subject: str
    text: str
    html: str | None = None
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    reply_to: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    message_id: str = ""
    date: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def __post_init__(self) -> None:
        if not self.to:
            raise PermanentError("email has no recipient")
        bad = [name for name in self.headers if name.lower() in RESERVED_HEADERS]
        if bad:
            raise PermanentError(f"headers may not override {', '.join(bad)}")
        if not self.message_id:
            self.message_id = make_message_id(self.from_address, self.idempotency_key)

    @property
    def from_address(self) -> str:
        """The bare address of the sender (no display name)."""
        address = _parse_address(self.from_)[1]
        if "@" not in address:
            raise PermanentError(f"invalid from address {self.from_!r}")
        return address

    @property
    def from_name(self) -> str:
        return _parse_address(self.from_)[0]

    @property
    def recipients(self) -> list[str]:
        """Every envelope recipient: to, cc and bcc (bare addresses)."""
        return [addr for _, addr in getaddresses([*self.to, *self.cc, *self.bcc])]

    def mime(self) -> EmailMessage:
        """multipart/alternative (text, then HTML) with UTF-8 headers; no Bcc header."""
        msg = EmailMessage(policy=policy.SMTP)
        msg["From"] = self.from_
        msg["To"] = ", ".join(self.to)
        if self.cc:
            msg["Cc"] = ", ".join(self.cc)
        if self.reply_to:
            msg["Reply-To"] = self.reply_to
        msg["Subject"] = self.subject
        msg["Date"] = format_datetime(self.date.astimezone(dt.UTC))
        msg["Message-ID"] = self.message_id
        for name, value in self.headers.items():
            msg[name] = value
        if self.tags:
            msg[TAGS_HEADER] = ", ".join(self.tags)
        msg.set_content(self.text, subtype="plain", charset="utf-8", cte="quoted-printable")
        if self.html is not None:
            msg.add_alternative(self.html, subtype="html", charset="utf-8", cte="quoted-printable")
        return msg

    def as_bytes(self) -> bytes:
        return self.mime().as_bytes(policy=policy.SMTP)


def make_message_id(from_address: str, key: str | None = None) -> str:
    """<hash@domain> from the sender's domain; stable for a given idempotency key, so a
    re-sent job carries the same Message-ID."""
    if key is None:
        import uuid

        token = uuid.uuid4().hex
    else:
        token = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"<{token}@{_message_id_domain(from_address)}>"


# A worker sends from a handful of addresses: parsing and checking them once each, not
# once per message, is a measurable share of an email job's CPU (bench/email.py).
@lru_cache(maxsize=256)
def _parse_address(value: str) -> tuple[str, str]:
    return parseaddr(value)


@lru_cache(maxsize=256)
def _message_id_domain(from_address: str) -> str:
    """The sender's domain if it is a valid one, else "localhost"."""
    domain = from_address.rpartition("@")[2] or "localhost"
    try:
        Address(addr_spec=f"x@{domain}")
    except (ValueError, IndexError):
        domain = "localhost"
    return domain
