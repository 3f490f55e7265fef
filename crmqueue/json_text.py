"""What a job payload may carry: JSON whose text every store and vendor behind a job can
take. Checked when a job is enqueued, because each of these fails the same way on every
attempt:

- a lone UTF-16 surrogate (half of a pair, e.g. a truncated emoji ``"\\ud83d"``, which JSON
  allows as an escape): not Unicode text, so no encoding (UTF-8 to a database, a vendor's
  API, an email) can write it;
- NUL (U+0000): PostgreSQL refuses it in text and JSONB, and RFC 5322 (section 2.3)
  allows it nowhere in an email;
- a value JSON has no form for: NaN and Infinity (RFC 8259 has no such numbers), sets,
  bytes, other objects, a container holding itself.

A key is checked like a value. Both checks take one C-level JSON encode of the whole
payload and look at its bytes; only a payload that fails is walked to name each field.
A low module (it imports only crmqueue.errors): the engine and the payload models use it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from crmqueue.errors import PayloadError

__all__ = ["encode", "encode_value", "problems", "suspect_dump", "text_problems"]

# ensure_ascii (the default): every character outside ASCII is escaped, so a lone
# surrogate and NUL show as escapes in the bytes. allow_nan=False: NaN is not JSON.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _opaque(value: object) -> None:
    return None  # the payload model validates (and converts) this value: not ours


# For input not yet validated (dates, decimals ...): only its text matters here.
_TEXT_SCANNER = json.JSONEncoder(separators=(",", ":"), default=_opaque)
# A surrogate escape not in a high-low pair. These are bytes of JSON, so an escaped
# backslash before "ud83d" also matches: a false hit only costs the exact walk.
_LONE_ESCAPE = re.compile(
    rb"\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f])|(?<!\\ud[89ab][0-9a-f]{2})\\ud[c-f]"
)
# A high-low pair given as two code points is one character once it is JSON: not lone.
_LONE_SURROGATE = re.compile(
    "[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]"
)
_SCALARS = (str, int, float, bool, type(None))


def _suspect(data: bytes) -> bool:
    if data.find(b"\\") < 0:  # no escape at all: the common case, one memchr
        return False
    return (b"\\ud" in data and _LONE_ESCAPE.search(data) is not None) or b"\\u0000" in data


def suspect_dump(data: bytes) -> bool:
    """Whether a pydantic model's JSON dump (UTF-8; NaN written as a constant) may hold
    what `encode` refuses: NUL, NaN or Infinity, or U+FFFD (what a dict key's lone
    surrogate becomes in the dump). A lone surrogate in a value fails the dump itself."""
    # A one-byte find is a memchr, a longer needle a slower search (about 1 µs for a
    # typical payload here): the long searches run only after their first byte is found.
    return (
        (data.find(b"\\") >= 0 and b"\\u0000" in data)
        or (not data.isascii() and b"\xef\xbf\xbd" in data)
        or (data.find(b"N") >= 0 and b"NaN" in data)
        or (data.find(b"I") >= 0 and b"Infinity" in data)
    )


def encode_value(value: Any) -> bytes:
    """`value` as compact ASCII JSON; PayloadError naming what cannot be (see `encode`)."""
    return encode({"value": value}, "value")[len(b'{"value":') : -1]


def encode(message: dict[str, Any], field: str) -> bytes:
    """`message` as compact ASCII JSON. Raises PayloadError naming every unusable value or
    key of ``message[field]`` by its path (``context.user.name``, ``to.0``; a key by its
    own path, escaped)."""
    try:
        data = _ENCODER.encode(message).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        errors = problems(message[field])
        raise PayloadError(errors or [(field, f"not JSON: {exc}")]) from None
    if _suspect(data):
        errors = problems(message[field])
        if errors:
            raise PayloadError(errors)
    return data


def text_problems(value: Any) -> list[tuple[str, str]]:
    """(path, reason) for each lone surrogate or NUL in the text or keys of `value`, a
    payload as given (not validated yet: values JSON has no form for are left to its
    model). [] for nearly every payload, after one encode."""
    try:
        data = _TEXT_SCANNER.encode(value).encode()
    except (TypeError, ValueError, RecursionError):
        return problems(value, text_only=True)  # e.g. a tuple key: walk it
    return problems(value, text_only=True) if _suspect(data) else []


def problems(value: Any, *, text_only: bool = False) -> list[tuple[str, str]]:
    """(path, reason) for every value or key of `value` that cannot go into a job message
    (with `text_only`, only lone surrogates and NUL). Walks everything: the slow path."""
    errors: list[tuple[str, str]] = []
    try:
        _walk(value, "", errors, set(), text_only)
    except RecursionError:
        errors.append(("payload", "nested too deeply to encode"))
    return errors


def _path(parent: str, part: object) -> str:
    # A path must print anywhere and show what is wrong: a key's lone surrogate, NUL or
    # other unprintable character is written as its escape (\ud83d, \x00).
    text = str(part)
    if not text.isprintable():
        text = "".join(
            c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode()
            for c in text
        )
    return f"{parent}.{text}" if parent else text


def _text_problem(text: str) -> str | None:
    found = _LONE_SURROGATE.search(text)
    if found:
        code = ord(found.group())
        if 0xDC80 <= code <= 0xDCFF:  # how Python keeps a byte it could not decode
            return (
                f"byte 0x{code - 0xDC00:02X} at character {found.start()} is not UTF-8 (text"
                " in another encoding?): no encoding can store or send it as it is"
            )
        return (
            f"lone surrogate U+{code:04X} at character {found.start()}"
            " (a truncated emoji?): not Unicode text, no encoding can store or send it"
        )
    nul = text.find("\x00")
    if nul >= 0:
        return (
            f"NUL (U+0000) at character {nul}: PostgreSQL cannot store it and email may"
            " not carry it"
        )
    return None


def _walk(
    value: Any, path: str, errors: list[tuple[str, str]], seen: set[int], text_only: bool
) -> None:
    where = path or "payload"
    if isinstance(value, str):
        problem = _text_problem(value)
        if problem:
            errors.append((where, problem))
    elif isinstance(value, float):
        if not text_only and (value != value or value in (float("inf"), float("-inf"))):
            errors.append((where, f"{value} is not a JSON number (RFC 8259)"))
    elif isinstance(value, _SCALARS):
        pass
    elif isinstance(value, dict | list | tuple):
        if id(value) in seen:
            errors.append((where, "contains itself (a cycle): not JSON"))
            return
        seen.add(id(value))
        if isinstance(value, dict):
            for key, item in value.items():
                child = _path(path, key)
                if not isinstance(key, _SCALARS):
                    if not text_only:
                        errors.append((child, f"a {type(key).__name__} key: JSON keys are text"))
                    continue
                problem = _text_problem(key) if isinstance(key, str) else None
                if problem:
                    errors.append((child, f"the key itself: {problem}"))
                _walk(item, child, errors, seen, text_only)
        else:
            for index, item in enumerate(value):
                _walk(item, _path(path, index), errors, seen, text_only)
        seen.discard(id(value))
    elif not text_only:
        kind = type(value).__name__
        errors.append((where, f"a {kind} is not JSON (text, number, list, object)"))
