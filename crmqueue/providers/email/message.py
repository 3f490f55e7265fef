"""The message every provider sends: one OutgoingEmail, rendered to MIME when needed.

Headers are written here, not by the standard library's folder: CPython's folding of
non-ASCII text can drop the space that falls between two encoded-words (RFC 2047 §6.2
makes decoders ignore whitespace between adjacent encoded-words; python/cpython#92081 and
relatives). So a non-ASCII (or otherwise unsafe) unstructured value becomes a run of
UTF-8 B encoded-words that carry every character, spaces included, and the folds between
them decode to nothing. A display name's non-ASCII words go into a single encoded-word:
CPython's address parser keeps the whitespace between encoded-words in a phrase, RFC 2047
decoders drop it, so a name split over two could not decode the same in both.

Addresses go on the wire as ASCII: an internationalised domain as IDNA A-labels
(punycode); a non-ASCII local part is refused (no SMTPUTF8; see crmqueue.fields).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from functools import lru_cache

from crmqueue.email_rules import is_reserved_header
from crmqueue.errors import PermanentError
from crmqueue.fields import AddressError, format_mailbox, parse_mailbox

TAGS_HEADER = "X-Crmqueue-Tags"
# Lines are folded to at most 78 characters (RFC 5322 §2.1.1).
MAX_LINE = 78
# A B encoded-word "=?utf-8?b?...?=" is at most 75 characters (RFC 2047 §2): 12 of frame
# and 60 of base64, that is 45 bytes of UTF-8.
_EW_BYTES = 45
# The policy that writes our pre-folded headers as they are.
WIRE_POLICY = policy.SMTP.clone(refold_source="none")

# Unstructured text that can be written as it is: printable ASCII words, single spaces, no
# "=?" (a decoder would take it for an encoded-word), words short enough to fold between.
_PLAIN_TEXT_RE = re.compile(r"(?!.*=\?)[!-~]{1,70}(?: [!-~]{1,70})*")
# A display name written as atoms (RFC 5322 atext words, single spaces).
_ATOM_NAME_RE = re.compile(
    r"(?!.*=\?)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
)
# An ASCII display name that can go in a quoted-string.
_QUOTABLE_NAME_RE = re.compile(r"(?!.*=\?)[!-~]+(?: [!-~]+)*")
_ASCII_KEY_RE = re.compile(r"[!-~](?:[ -~]{0,254}[!-~])?")


@dataclass
class OutgoingEmail:
    """A rendered email with its envelope. `bcc` never appears in the MIME headers.

    Address fields hold ``address`` or ``Name <address>`` (the payload's canonical form,
    or the configured sender); `__post_init__` checks them (PermanentError)."""

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
        bad = [name for name in self.headers if is_reserved_header(name)]
        if bad:
            raise PermanentError(f"headers may not override {', '.join(bad)}")
        for value in (self.from_, *self.to, *self.cc, *self.bcc, self.reply_to):
            if value is not None:
                wire_mailbox(value)  # raises PermanentError for a bad address
        if not self.message_id:
            self.message_id = make_message_id(self.from_address, self.idempotency_key)

    @property
    def from_address(self) -> str:
        """The bare address of the sender (ASCII: an IDN domain as A-labels)."""
        return wire_mailbox(self.from_)[1]

    @property
    def from_name(self) -> str:
        return wire_mailbox(self.from_)[0]

    @property
    def recipients(self) -> list[str]:
        """Every envelope recipient: to, cc and bcc (bare ASCII addresses)."""
        return [wire_mailbox(value)[1] for value in (*self.to, *self.cc, *self.bcc)]

    def mime(self) -> EmailMessage:
        """multipart/alternative (text, then HTML) with RFC 2047 headers; no Bcc header."""
        msg = EmailMessage(policy=WIRE_POLICY)
        msg.set_raw("From", fold_addresses("From", [self.from_]))
        msg.set_raw("To", fold_addresses("To", self.to))
        if self.cc:
            msg.set_raw("Cc", fold_addresses("Cc", self.cc))
        if self.reply_to:
            msg.set_raw("Reply-To", fold_addresses("Reply-To", [self.reply_to]))
        msg.set_raw("Subject", fold_text("Subject", self.subject))
        msg["Date"] = format_datetime(self.date.astimezone(dt.UTC))
        msg["Message-ID"] = self.message_id
        for name, value in self.headers.items():
            msg.set_raw(name, fold_text(name, value))
        if self.tags:
            msg.set_raw(TAGS_HEADER, fold_text(TAGS_HEADER, ", ".join(self.tags)))
        msg.set_content(self.text, subtype="plain", charset="utf-8", cte="quoted-printable")
        if self.html is not None:
            msg.add_alternative(self.html, subtype="html", charset="utf-8", cte="quoted-printable")
        return msg

    def as_bytes(self) -> bytes:
        return self.mime().as_bytes(policy=WIRE_POLICY)


@lru_cache(maxsize=1024)
def wire_mailbox(value: str) -> tuple[str, str]:
    """(display name, ASCII address) of ``address`` or ``Name <address>``; PermanentError
    if it is not an address we can send to. A single-label domain is accepted here (a
    configured ``noreply@localhost``); payloads require a top-level domain."""
    try:
        name, address = parse_mailbox(value, require_tld=False)
    except AddressError as exc:
        raise PermanentError(f"invalid address {value!r}: {exc}") from None
    return name, address.ascii


def wire_mailbox_text(value: str) -> str:
    """``Name <ascii address>`` (quoted as needed) for vendors that take a mailbox string
    and encode the name themselves."""
    return format_mailbox(*wire_mailbox(value))


def wire_idempotency_key(key: str) -> str:
    """`key` if it is printable ASCII (at most 256 characters, Resend's limit), else
    ``sha256:<hex>`` of its UTF-8: a header value must be ASCII (RFC 7230 field-vchar)."""
    if _ASCII_KEY_RE.fullmatch(key):
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def encoded_words(text: str, first: int = _EW_BYTES) -> list[str]:
    """`text` as UTF-8 B encoded-words of at most 75 characters each (the first of at
    most `first` bytes), split between characters; joined by any whitespace they decode
    to `text` exactly (RFC 2047)."""
    words: list[str] = []
    chunk: list[bytes] = []
    size = 0
    budget = max(first, 4)  # one character of UTF-8 at least
    for char in text:
        try:
            data = char.encode("utf-8")
        except UnicodeEncodeError:
            raise PermanentError(
                f"header text has a lone surrogate U+{ord(char):04X}: it cannot be encoded"
            ) from None
        if size + len(data) > budget and chunk:
            words.append(_b_word(b"".join(chunk)))
            chunk, size, budget = [], 0, _EW_BYTES
        chunk.append(data)
        size += len(data)
    if chunk or not words:
        words.append(_b_word(b"".join(chunk)))
    return words


def _b_word(data: bytes) -> str:
    return "=?utf-8?b?" + base64.b64encode(data).decode("ascii") + "?="


def encode_text(text: str) -> str:
    """An unstructured header value that decodes to `text`: as it is when it is plain
    printable ASCII, else encoded-words separated by spaces (unfolded, for vendors' JSON
    header fields)."""
    if _PLAIN_TEXT_RE.fullmatch(text):
        return text
    return " ".join(encoded_words(text))


def fold_text(name: str, text: str) -> str:
    """The value of header `name` for `text` (unstructured), folded to 78-character lines."""
    if _PLAIN_TEXT_RE.fullmatch(text):
        return _fold(name, text.split(" "))
    # The first word sized to fit after "Name: ": a value that starts with a fold would
    # decode with a leading space.
    room = MAX_LINE - len(name) - 2 - 12  # the encoded-word's frame
    return _fold(name, encoded_words(text, first=room // 4 * 3))


def _display_name(name: str) -> list[str]:
    """Tokens of a display name that decode to `name` exactly (RFC 5322 phrase)."""
    if _ATOM_NAME_RE.fullmatch(name):
        return name.split(" ")
    if _QUOTABLE_NAME_RE.fullmatch(name) and len(name) <= 70:
        return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
    # One encoded-word for the whole name, longer than 75 characters if it must be: see
    # the module docstring (payloads cap display names so a line stays under 998).
    return [_b_word(name.encode("utf-8"))]


def fold_addresses(name: str, values: list[str]) -> str:
    """The value of address header `name` (From, To, Cc, Reply-To) for `values`
    (``address`` or ``Name <address>``), ASCII addresses, folded between tokens."""
    tokens: list[str] = []
    for index, value in enumerate(values):
        display, address = wire_mailbox(value)
        last = index == len(values) - 1
        if display:
            tokens += _display_name(display)
            tokens.append(f"<{address}>" + ("" if last else ","))
        else:
            tokens.append(address + ("" if last else ","))
    return _fold(name, tokens)


def _fold(name: str, tokens: list[str]) -> str:
    """Join `tokens` with single spaces, breaking lines (at those spaces) before a line
    would pass 78 characters; a token longer than a line stands on its own (the first
    always on the first line: a value that starts with a fold decodes with a leading
    space)."""
    lines: list[str] = []
    line = ""
    for token in tokens:
        # The first line holds "Name: " too; a continuation line starts with a space.
        limit = MAX_LINE - len(name) - 2 if not lines else MAX_LINE - 1
        if not line:
            line = token
        elif len(line) + 1 + len(token) > limit:
            lines.append(line)
            line = token
        else:
            line += " " + token
    lines.append(line)
    return "\n ".join(lines)


def make_message_id(from_address: str, key: str | None = None) -> str:
    """<hash@domain> from the sender's domain; stable for a given idempotency key, so a
    re-sent job carries the same Message-ID."""
    if key is None:
        import uuid

        token = uuid.uuid4().hex
    else:
        token = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"<{token}@{_message_id_domain(from_address)}>"


@lru_cache(maxsize=256)
def _message_id_domain(from_address: str) -> str:
    """The sender's (ASCII) domain if it is a valid one, else "localhost"."""
    domain = from_address.rpartition("@")[2] or "localhost"
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", domain):
        domain = "localhost"
    return domain
