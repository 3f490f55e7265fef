"""Field types shared by job payloads and CRM rows: email addresses (with
internationalised domains), mailboxes (an address with an optional display name) and
single-line text that can go into an email header.

A low module on purpose: payloads and CRM rows both import it, it imports neither (and
no jinja2 or provider code), so the client face stays light.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError

__all__ = [
    "Address",
    "AddressError",
    "ConfiguredMailbox",
    "EmailAddress",
    "Mailbox",
    "MailboxList",
    "SingleLine",
    "check_single_line",
    "display_name",
    "format_mailbox",
    "parse_address",
    "parse_mailbox",
]

# RFC 5322 dot-atom (ASCII only: a non-ASCII local part needs SMTPUTF8, see parse_address).
_LOCAL_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
# RFC 1035 host names: letters, digits and hyphens, at most 63 a label.
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_TLD_RE = re.compile(r"[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59}")
# What may not stand in a value that ends up in a header: every character str.splitlines()
# breaks at (CR, LF, VT, FF, FS, GS, RS, NEL, LS, PS), the other C0 controls but TAB, DEL,
# and lone surrogates (a truncated emoji: no encoding can write it).
_NOT_SINGLE_LINE_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]")
# A display name written as it is, without quotes or encoded-words: words of letters and
# digits separated by single spaces.
_PLAIN_NAME_RE = re.compile(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*")
_FWS_RUN_RE = re.compile(r"[ \t]\s*")


_NOT_AN_ADDRESS = "not of the form local@domain"
# A display name's non-ASCII text goes into one encoded-word (providers.email.message):
# 150 characters keep that within a 998-character header line (RFC 5322 §2.1.1).
MAX_DISPLAY_NAME = 150


@dataclass(frozen=True)
class Address:
    """An email address split for use: `local`@`domain` as given (an IDN domain in its
    IDNA 2008 Unicode form), and `ascii` with the domain as IDNA A-labels (punycode), the
    form that goes on the wire."""

    local: str
    domain: str
    ascii_domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def ascii(self) -> str:
        return f"{self.local}@{self.ascii_domain}"


class AddressError(ValueError):
    """Why a text is not an email address we can send to (a sentence, no field name)."""


@lru_cache(maxsize=4096)
def parse_address(value: str, *, require_tld: bool = True) -> Address:
    """Parse a bare address (``local@domain``, no display name).

    - local part: ASCII dot-atom (RFC 5322), at most 64 characters. A non-ASCII local part
      would need SMTPUTF8 (RFC 6531) end to end, which most vendors' APIs refuse: it is
      refused here, for every provider alike.
    - domain: host name labels (RFC 1035); a non-ASCII (or ``xn--``) domain goes through
      IDNA 2008 with UTS #46 mapping (the ``idna`` package) and is kept in its Unicode
      form, its A-labels in ``ascii_domain``. The last label must look like a top-level
      domain unless `require_tld` is false (``noreply@localhost`` in a configuration).
    - at most 254 characters in the ASCII form (RFC 5321 path limit).

    Raises AddressError with the reason."""
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        raise AddressError(_NOT_AN_ADDRESS)
    if not local.isascii():
        raise AddressError(
            f"local part {local!r} is not ASCII: crmqueue does not send SMTPUTF8 mail "
            "(most vendors refuse it); use an ASCII address (the domain may be "
            "internationalised)"
        )
    if len(local) > 64 or not _LOCAL_RE.fullmatch(local):
        raise AddressError(f"local part {local!r} is not valid")
    if domain.isascii() and "xn--" not in domain.lower():
        ascii_domain = unicode_domain = domain
    else:
        import idna  # only for internationalised domains: keeps the common path light

        try:
            ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
            unicode_domain = idna.decode(ascii_domain)
        except (idna.IDNAError, UnicodeError) as exc:
            raise AddressError(
                f"domain {domain!r} is not a valid internationalised domain name (IDNA 2008): {exc}"
            ) from None
    labels = ascii_domain.split(".")
    if not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise AddressError(f"domain {domain!r} is not a valid host name")
    if require_tld and (len(labels) < 2 or not _TLD_RE.fullmatch(labels[-1])):
        raise AddressError(f"domain {domain!r} has no top-level domain")
    if len(local) + 1 + len(ascii_domain) > 254:
        raise AddressError("longer than 254 characters")
    return Address(local, unicode_domain, ascii_domain)


def check_single_line(value: str) -> str:
    """`value` if it can stand in a header, else PydanticCustomError naming the bad
    character (CR/LF and every other line break, control characters, lone surrogates)."""
    bad = _NOT_SINGLE_LINE_RE.search(value)
    if bad is None:
        return value
    char = bad.group()
    if "\ud800" <= char <= "\udfff":
        raise PydanticCustomError(
            "lone_surrogate",
            "contains a lone surrogate (U+{code}, e.g. a truncated emoji) at position {pos}",
            {"code": f"{ord(char):04X}", "pos": bad.start()},
        )
    raise PydanticCustomError(
        "header_injection",
        "must be a single line: no CR, LF or other control character (U+{code} at position {pos})",
        {"code": f"{ord(char):04X}", "pos": bad.start()},
    )


def parse_mailbox(value: str, *, require_tld: bool = True) -> tuple[str, Address]:
    """(display name, address) from ``address``, ``Name <address>`` or
    ``"Quoted, Name" <address>``. Raises AddressError."""
    text = value.strip()
    name = ""
    if text.endswith(">"):
        start = text.rfind("<")
        if start < 0:
            raise AddressError(_NOT_AN_ADDRESS)
        name, text = text[:start].strip(), text[start + 1 : -1].strip()
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = re.sub(r"\\(.)", r"\1", name[1:-1])
        elif '"' in name:
            raise AddressError('a display name with quotes must be quoted as a whole ("...")')
    elif "<" in text:
        raise AddressError(_NOT_AN_ADDRESS)
    return name, parse_address(text, require_tld=require_tld)


def display_name(name: str) -> str:
    """A display name as every reader shows it: stripped, and a run of whitespace that
    starts with a space or a tab made one space (RFC 5322 folding white space; CPython's
    parser reads such a run as one space even inside an encoded-word)."""
    return _FWS_RUN_RE.sub(" ", name.strip())


def format_mailbox(name: str, address: str) -> str:
    """``address``, or ``Name <address>`` with the name quoted when RFC 5322 needs it."""
    if not name:
        return address
    if not _PLAIN_NAME_RE.fullmatch(name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def _invalid(exc: AddressError) -> PydanticCustomError:
    reason = str(exc)
    if reason == _NOT_AN_ADDRESS:
        return PydanticCustomError("email", "value is not a valid email address")
    return PydanticCustomError(
        "email", "value is not a valid email address: {reason}", {"reason": reason}
    )


def _address_field(value: str) -> str:
    try:
        return str(parse_address(value.strip()))
    except AddressError as exc:
        raise _invalid(exc) from None


@lru_cache(maxsize=4096)
def _mailbox_text(value: str, require_tld: bool = True) -> str:
    check_single_line(value)
    try:
        name, address = parse_mailbox(value, require_tld=require_tld)
    except AddressError as exc:
        raise _invalid(exc) from None
    name = display_name(name)
    if len(name) > MAX_DISPLAY_NAME:
        raise PydanticCustomError(
            "email", "display name is longer than {limit} characters", {"limit": MAX_DISPLAY_NAME}
        )
    return format_mailbox(name, str(address))


def _mailbox_field(value: str) -> str:
    return _mailbox_text(value)


def _configured_mailbox_field(value: str) -> str:
    return _mailbox_text(value, False)


def _one_or_many(value: object) -> object:
    # A single string is checked here, so its error names the field, not item 0.
    return [_mailbox_text(value)] if isinstance(value, str) else value


EmailAddress = Annotated[str, AfterValidator(_address_field)]
"""A bare address (no display name), see parse_address; the value kept is
``local@domain`` with an IDN domain in its Unicode form."""

Mailbox = Annotated[str, AfterValidator(_mailbox_field)]
"""An address with an optional display name (``Name <local@domain>``); kept in a
canonical form: the name as display_name() makes it, quoted when needed, the domain as in
EmailAddress. The name may hold any single-line Unicode text."""

ConfiguredMailbox = Annotated[str, AfterValidator(_configured_mailbox_field)]
"""A Mailbox in the configuration (``email.from_address``): the same rules, but the
domain may be a single label (``noreply@localhost`` for a local relay)."""

MailboxList = Annotated[list[Mailbox], BeforeValidator(_one_or_many)]
"""One mailbox or a list of them."""

SingleLine = Annotated[str, AfterValidator(check_single_line)]
"""Text that can go into an email header: see check_single_line."""
