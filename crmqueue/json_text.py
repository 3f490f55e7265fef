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

- objects and lists nested more than `MAX_DEPTH` (64) levels deep (the payload object is
  level 1): no CRM payload needs more, and deeper JSON exhausts the recursion of the JSON
  coders behind a job (Python's, pydantic's, a vendor's), so it would fail late.

A key is checked like a value. Both checks take one C-level JSON encode of the whole
payload and look at its bytes (more than `MAX_DEPTH` brackets is the only way to be too
deep); only a payload that fails is walked to name each field.
A low module (it imports only crmqueue.errors): the engine and the payload models use it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from crmqueue.errors import PayloadError

__all__ = [
    "MAX_DEPTH",
    "MAX_SAFE_INTEGER",
    "depth_problems",
    "encode",
    "encode_value",
    "loads",
    "may_be_too_deep",
    "problems",
    "suspect_dump",
    "text_problems",
]

# Levels of objects and lists inside each other in one payload, the payload object being
# the first. Well below the recursion limits of Python's json (about 1,000) and of
# pydantic-core's serializer (a few hundred).
MAX_DEPTH = 64

# ensure_ascii (the default): every character outside ASCII is escaped, so a lone
# surrogate and NUL show as escapes in the bytes. allow_nan=False: NaN is not JSON.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


# RFC 8259 section 6: integers within [-(2**53)+1, 2**53-1] are the ones JSON parsers
# agree on; beyond, JavaScript's rounds (an id of 2**53 + 1 arrives as 2**53) or becomes
# Infinity, and Python's refuses one of more than 4,300 digits. A larger number is
# refused naming its field: send it as text.
MAX_SAFE_INTEGER = 2**53 - 1
# A run of 16 digits in JSON may be such an integer (2**53 has 16 digits); a false hit
# (digits inside a text) only costs the exact walk.
_LONG_DIGITS = re.compile(rb"[0-9]{16}")
_DIGITS = b"0123456789"


def _long_digits(data: bytes) -> bool:
    """Whether `data` holds a run of 16 digits. The search steps through every byte in
    Python's regular expression engine (several µs for a 300-byte payload); it runs only
    when the data has 16 digits at all, counted in C (a fraction of a µs)."""
    return (
        len(data) - len(data.translate(None, _DIGITS)) >= 16
        and _LONG_DIGITS.search(data) is not None
    )


_BYTES = (bytes, bytearray, memoryview)


def _opaque(value: object) -> None:
    if isinstance(value, _BYTES):
        raise TypeError("bytes")  # not text: walk the payload to name it
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
        _long_digits(data)
        or (data.find(b"\\") >= 0 and b"\\u0000" in data)
        or (not data.isascii() and b"\xef\xbf\xbd" in data)
        or (data.find(b"N") >= 0 and b"NaN" in data)
        or (data.find(b"I") >= 0 and b"Infinity" in data)
    )


def may_be_too_deep(data: bytes) -> bool:
    """Whether JSON `data` may nest deeper than MAX_DEPTH: it has more brackets (two
    C-level counts, well under a microsecond for a typical payload)."""
    return data.count(b"{") + data.count(b"[") > MAX_DEPTH


def depth_problems(value: Any, max_depth: int = MAX_DEPTH) -> list[tuple[str, str]]:
    """(field, reason) for each top-level field of `value` (a payload mapping) holding
    objects or lists nested deeper than `max_depth` levels in all (the payload is level
    1); [] if none. Walks at most `max_depth` levels, so any depth is safe to check."""
    reason = (
        f"nested more than {max_depth} levels deep (objects and lists inside each other;"
        f" a job payload allows {max_depth})"
    )
    if not isinstance(value, dict):
        return [("payload", reason)] if _deeper(value, max_depth) else []
    return [(_path("", key), reason) for key, item in value.items() if _deeper(item, max_depth - 1)]


def _deeper(value: Any, levels: int) -> bool:
    """Whether `value` is a container nested more than `levels` deep."""
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, list | tuple):
        items = value
    else:
        return False
    if levels <= 0:
        return True
    return any(_deeper(item, levels - 1) for item in items)


def loads(text: str | bytes) -> Any:
    """json.loads, but JSON nested too deeply for Python's parser is a PayloadError
    naming the top-level field that holds it (the parser gives up near 1,000 levels)."""
    try:
        return json.loads(text)
    except RecursionError:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        raise PayloadError(depth_problems_in_text(text)) from None


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:]')


def depth_problems_in_text(text: str) -> list[tuple[str, str]]:
    """depth_problems for JSON text too deep to parse: its top-level fields are found by
    scanning its strings and brackets."""
    depth, key, last = 0, "payload", ""
    found: list[str] = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in "{[":
            depth += 1
            if depth == MAX_DEPTH + 1 and (not found or found[-1] != key):
                found.append(key)
        elif token in "}]":
            depth -= 1
        elif token == ":":
            if depth == 1:
                key = _string(last)
        else:
            last = token
    reason = (
        f"nested more than {MAX_DEPTH} levels deep (objects and lists inside each other;"
        f" a job payload allows {MAX_DEPTH})"
    )
    return [(_path("", name), reason) for name in found or ["payload"]]


def _string(token: str) -> str:
    try:
        text: str = json.loads(token)
    except ValueError:
        return token
    return text


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
        errors = depth_problems(message[field]) or problems(message[field])
        raise PayloadError(errors or [(field, f"not JSON: {exc}")]) from None
    if may_be_too_deep(data):
        errors = depth_problems(message[field])
        if errors:
            raise PayloadError(errors)
    if _suspect(data):
        errors = problems(message[field])
        if errors:
            raise PayloadError(errors)
    return data


def text_problems(value: Any) -> list[tuple[str, str]]:
    """(path, reason) for each lone surrogate or NUL in the text or keys of `value`, a
    payload as given (not validated yet: values JSON has no form for are left to its
    model), each bytes value or key, and each integer beyond MAX_SAFE_INTEGER; or else
    for each top-level field nested too deeply (see depth_problems). [] for nearly every
    payload, after one encode. (The typed payloads of every queue are checked with it;
    a job enqueued by name only for what `encode` refuses.)"""
    try:
        data = _TEXT_SCANNER.encode(value).encode()
    except (TypeError, ValueError, RecursionError):
        # e.g. a tuple key, or nesting too deep: walk it
        return depth_problems(value) or problems(value, text_only=True)
    if may_be_too_deep(data):
        deep = depth_problems(value)
        if deep:
            return deep
    if _suspect(data) or _long_digits(data):
        return problems(value, text_only=True)
    return []


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
    elif isinstance(value, int) and not isinstance(value, bool):
        if text_only and abs(value) > MAX_SAFE_INTEGER:
            digits = len(str(abs(value))) if abs(value).bit_length() < 14_000 else "over 4,300"
            errors.append(
                (
                    where,
                    f"an integer of {digits} digits, beyond what JSON parsers agree on"
                    f" (RFC 8259: at most 2**53 - 1 = {MAX_SAFE_INTEGER:,} either side of 0);"
                    " send it as text",
                )
            )
    elif isinstance(value, _BYTES):
        errors.append(
            (where, f"a {type(value).__name__} is not JSON text: decode it to a str (or base64)")
        )
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
                if isinstance(key, _BYTES):
                    errors.append((child, "a bytes key: JSON keys are text (decode it to a str)"))
                    continue
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
