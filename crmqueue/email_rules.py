"""What an email job must meet to be sendable, checked when it is enqueued without the
worker's code (no jinja2, no provider modules): the variables a template declares, the
headers a caller may not set, the tag rules every vendor accepts.

Template declarations: the built-ins' are in ``templates/email/variables.json``; a tenant
template's are recorded next to it (``<name>.vars.json``) when it is registered
(providers.email.render.register_tenant_template). Both are cached: the built-ins once,
a tenant's declaration until its file changes.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "DECLARATION_SUFFIX",
    "RESERVED_HEADERS",
    "TAG_LIMITS",
    "Declaration",
    "builtin_declarations",
    "declaration_for",
    "describe",
    "forget_tenant_templates",
    "is_given",
    "is_reserved_header",
    "missing_variables",
    "recipient_limit",
    "spellings",
    "tag_limit",
    "tenant_declaration_at",
    "type_problems",
]

MANIFEST = Path(__file__).resolve().parent / "templates" / "email" / "variables.json"
DECLARATION_SUFFIX = ".vars.json"

# Headers a caller may not set through `headers`: the message builds them itself (and the
# tags header), the transport adds them, or a vendor refuses them (SendGrid's reserved
# list: received, dkim-signature, x-sg-id, x-sg-eid); every content-* and resent-* header.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "sender",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "return-path",
        "received",
        "dkim-signature",
        "x-sg-id",
        "x-sg-eid",
        "x-crmqueue-tags",
    }
)
RESERVED_PREFIXES = ("content-", "resent-")


def is_reserved_header(name: str) -> bool:
    """Whether `headers` may not set header `name` (case-insensitive)."""
    lowered = name.lower()
    return lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_PREFIXES)


# Tags per message each vendor takes: Mailgun `o:tag` at most 3, SendGrid `categories` at
# most 10 (their API references); the others have no lower limit than our own.
TAG_LIMITS: dict[str, int] = {"mailgun": 3, "sendgrid": 10}
MAX_TAGS = 10
FEWEST_TAGS = min(TAG_LIMITS.values())


def tag_limit(provider: str) -> int:
    """How many tags a message may carry with `provider`."""
    return min(MAX_TAGS, TAG_LIMITS.get(provider, MAX_TAGS))


# Recipients (to + cc + bcc) per message each vendor takes: Resend and SES 50 (Resend's
# `to` "max 50"; SES SendEmail "no more than 50 recipients, across To, CC and BCC"),
# SendGrid 1,000 per personalization, Mailgun 1,000 per message (their API references);
# SMTP 100, what RFC 5321 section 4.5.3.1.8 obliges a server to take (beyond it a server
# may refuse some recipients and accept the rest). None takes more than MAX_RECIPIENTS.
RECIPIENT_LIMITS: dict[str, int] = {"resend": 50, "ses": 50, "smtp": 100}
MAX_RECIPIENTS = 1000
FEWEST_RECIPIENTS = min(RECIPIENT_LIMITS.values())


def recipient_limit(provider: str) -> int:
    """How many recipients (to, cc and bcc together) a message may have with `provider`."""
    return min(MAX_RECIPIENTS, RECIPIENT_LIMITS.get(provider, MAX_RECIPIENTS))


# One tag is 1-128 of A-Z a-z 0-9 _ -: the character set of SES and Resend tags, and
# Mailgun's 128-character limit, so a tag goes to every vendor unchanged.
TAG_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True)
class Declaration:
    """A template's variables (snake_case names; a tenant template's nested reads dotted,
    ``user.first_name``): `required` must be in the context, `optional` have a fallback.
    `types` gives the kind of value a variable takes (VALUE_KINDS), for the built-ins."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    types: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Declaration:
        return cls(tuple(data.get("required", ())), tuple(data.get("optional", ())))

    def to_json(self) -> dict[str, list[str]]:
        return {"required": list(self.required), "optional": list(self.optional)}

    @cached_property
    def kinds(self) -> dict[str, tuple[Callable[[Any], bool], str]]:
        """Context key (either spelling) -> (check, description) of its kind (VALUE_KINDS):
        one look-up per key at enqueue."""
        out: dict[str, tuple[Callable[[Any], bool], str]] = {}
        for name, kind in self.types:
            for spelling in spellings(name):
                out[spelling] = VALUE_KINDS[kind]
        return out


@lru_cache(maxsize=1)
def builtin_declarations() -> dict[str, Declaration]:
    """Template name -> Declaration of every built-in template (with `types`: each of its
    variables and the layout's product_name, `text` unless the manifest says)."""
    data = json.loads(MANIFEST.read_text(encoding="utf-8"))
    kinds: dict[str, str] = data.get("_types", {})
    out = {}
    for name, entry in data.items():
        if name.startswith("_"):
            continue
        names = ["product_name", *entry.get("required", ()), *entry.get("optional", ())]
        out[name] = Declaration(
            tuple(entry.get("required", ())),
            tuple(entry.get("optional", ())),
            tuple((var, kinds.get(var, "text")) for var in names),
        )
    return out


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float)  # bool is an int


# A line break or control character (crmqueue.fields' rule for headers). NUL and lone
# surrogates are left to the check of every payload's text, which names the field.
_NOT_LINE_RE = re.compile("[\x01-\x1f\x7f\x85\u2028\u2029]")
# What a link may not hold: spaces, controls, backslashes (NUL: as above).
_URL_UNSAFE_RE = re.compile("[\x01-\x20\x7f\\\\]")
MAX_URL = 2048


def _is_line(value: Any) -> bool:
    if isinstance(value, str):
        # isprintable (C) passes nearly every line at once; the regex decides the rest
        # (a no-break space is not "printable" but is one line).
        return value.isprintable() or not _NOT_LINE_RE.search(value)
    return isinstance(value, int | float)


def _is_url(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > MAX_URL:
        return False
    plain = value.isascii() and value.isprintable() and " " not in value and "\\" not in value
    if not plain and _URL_UNSAFE_RE.search(value):  # the C checks pass nearly every link
        return False
    if value.startswith("/"):
        return not value.startswith("//")
    scheme, _, rest = value.partition("://")
    return scheme.lower() in ("http", "https") and rest[:1] not in ("", "/", "?", "#")


def _is_list(value: Any) -> bool:
    return isinstance(value, list) and all(map(_is_scalar, value))


# Each kind of value: its check, and how an error describes it.
VALUE_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "text": (_is_scalar, "a text or a number"),
    "line": (_is_line, "a text or a number on one line (no line breaks or control characters)"),
    "url": (_is_url, "an http(s) URL or a path starting with '/' (no spaces)"),
    "list": (_is_list, "a list of texts or numbers"),
}


def type_problems(declaration: Declaration, context: Mapping[str, Any]) -> list[str]:
    """For each variable given (not None or blank) in `context` that is not of its kind:
    "'name' must be ..."; [] for a declaration without types."""
    kinds = declaration.kinds
    found: list[str] = []
    if kinds:
        for key, value in context.items():
            kind = kinds.get(key)
            if kind is not None and not kind[0](value) and is_given(value):
                found.append(f"{key!r} must be {kind[1]}, not {_shown(value)}")
    return found


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return "that text" if len(value) > 40 else repr(value)
    return type(value).__name__ if isinstance(value, list | dict) else repr(value)


_tenant_cache: dict[str, tuple[int, Declaration | None]] = {}
_tenant_guard = threading.Lock()


def tenant_declaration_at(directory: str, template: str) -> Declaration | None:
    """The declaration recorded for tenant template `template` in `directory` (None:
    none, or unreadable), cached until its file changes."""
    path = os.path.join(directory, template + DECLARATION_SUFFIX)
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return None
    cached = _tenant_cache.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        declaration: Declaration | None = Declaration.from_json(
            json.loads(Path(path).read_text(encoding="utf-8"))
        )
    except (OSError, ValueError, AttributeError):
        declaration = None  # unreadable: the worker's render is the check
    with _tenant_guard:
        if len(_tenant_cache) > 4096:
            _tenant_cache.clear()
        _tenant_cache[path] = (mtime, declaration)
    return declaration


class UnknownTemplate(LookupError):
    """Neither a built-in nor a template the tenant registered."""


# Whether a tenant has its own template of a name, remembered for a second: an enqueue
# pays no stat for it, and a template registered by another process counts at most a
# second later (this process's registrations count at once: forget_tenant_templates).
_TENANT_SEEN_SECONDS = 1.0
_tenant_files: dict[tuple[str, str, str], tuple[float, str | None]] = {}


def _tenant_directory(files_dir: str, tenant_id: str, template: str) -> str | None:
    """The tenant's template directory if it holds `template`, else None."""
    key = (files_dir, tenant_id, template)
    now = time.monotonic()
    seen = _tenant_files.get(key)
    if seen is not None and now - seen[0] < _TENANT_SEEN_SECONDS:
        return seen[1]
    # os.path on purpose: pathlib costs several times more.
    directory: str | None = os.path.join(files_dir, "templates", tenant_id)
    if not os.path.isfile(os.path.join(directory, template + ".html.j2")):  # type: ignore[arg-type]
        directory = None
    if len(_tenant_files) > 4096:
        _tenant_files.clear()
    _tenant_files[key] = (now, directory)
    return directory


def forget_tenant_templates() -> None:
    """Drop what is remembered about tenant templates (after a registration)."""
    _tenant_files.clear()
    _tenant_cache.clear()


def declaration_for(files_dir: str | None, tenant_id: str, template: str) -> Declaration | None:
    """The declaration that applies to `template` for `tenant_id`: the tenant's own
    template if it has one under `files_dir` (None when it was registered without one),
    else the built-in's. Raises UnknownTemplate."""
    if files_dir is not None:
        directory = _tenant_directory(files_dir, tenant_id, template)
        if directory is not None:
            return tenant_declaration_at(directory, template)
    declaration = builtin_declarations().get(template)
    if declaration is None:
        raise UnknownTemplate(template)
    return declaration


@lru_cache(maxsize=4096)
def spellings(name: str) -> tuple[str, str]:
    """(snake_case, camelCase) of a variable name: ``first_name`` and ``firstName`` are
    one variable (the original system's client code wrote camelCase)."""
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])|(?<=[A-Z])([A-Z])(?=[a-z])", r"_\1\2", name).lower()
    head, *rest = snake.split("_")
    camel = head + "".join(part[:1].upper() + part[1:] for part in rest)
    return snake, camel


def describe(names: list[str]) -> str:
    """Variable names for an error: ``'first_name' (or 'firstName')``, comma-separated."""
    out = []
    for name in names:
        snake, camel = (
            ".".join(parts) for parts in zip(*map(spellings, name.split(".")), strict=True)
        )
        out.append(repr(snake) if snake == camel else f"{snake!r} (or {camel!r})")
    return ", ".join(out)


def is_given(value: Any) -> bool:
    """A value counts as given unless None or blank text (whitespace only): a required
    link or name that is empty would be sent empty."""
    return value is not None and not (isinstance(value, str) and not value.strip())


def _lookup(context: Mapping[str, Any], name: str) -> Any:
    snake, camel = spellings(name)
    value = context.get(snake)
    return value if is_given(value) else context.get(camel)


def missing_variables(declaration: Declaration, context: Mapping[str, Any]) -> list[str]:
    """The required variables not given in `context` under either spelling (None or blank
    text counts as not given). A dotted name (``user.first_name``, a tenant template's
    nested read) needs each step to be a mapping holding the next."""
    missing = []
    for name in declaration.required:
        if "." not in name:
            if not is_given(_lookup(context, name)):
                missing.append(name)
            continue
        value: Any = context
        for step in name.split("."):
            value = _lookup(value, step) if isinstance(value, Mapping) else None
        if not is_given(value):
            missing.append(name)
    return missing
