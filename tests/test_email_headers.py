"""Email headers decode (email.policy.default) to exactly what was given: subjects, display
names, custom headers and tags, in many languages and scripts (property-based), through
the MIME every MIME provider sends (outbox, SMTP, SES) and the fields the JSON vendors get;
and every value that would reach a header is checked at enqueue."""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser, HeaderParser
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmqueue.errors import PayloadError
from crmqueue.payloads import EmailPayload, validate_payload
from crmqueue.providers.email.message import (
    OutgoingEmail,
    encode_text,
    wire_idempotency_key,
)
from crmqueue.providers.email.render import render

# The issue's samples: the space before "Montréal" and before "présentation" was lost.
FRENCH = (
    "Rappel : réunion avec Björn Åkesson à Montréal — préparez les éléments du dossier et "
    "la proposition tarifaire révisée"
)
ACTIVITY_TITLE = (
    "Déjeuner d’affaires avec Hélène Marchand et l’équipe de Québec pour la présentation révisée"
)

# Scripts and blocks: Latin with accents, Greek, Cyrillic, Arabic, Hebrew, Devanagari,
# Thai, CJK, Hangul, emoji, and the ASCII punctuation that confuses parsers ("=?", quotes,
# parentheses, commas, colons, backslashes).
_BLOCKS = [
    (0x20, 0x7E),
    (0xA0, 0x17F),
    (0x370, 0x3FF),
    (0x400, 0x4FF),
    (0x5D0, 0x5EA),
    (0x620, 0x64A),
    (0x900, 0x97F),
    (0xE01, 0xE5B),
    (0x3040, 0x30FF),
    (0x4E00, 0x4FFF),
    (0xAC00, 0xACFF),
    (0x1F300, 0x1F64F),
]
CHARS = st.one_of(
    *[
        st.characters(min_codepoint=lo, max_codepoint=hi, exclude_categories=("Cs", "Cc"))
        for lo, hi in _BLOCKS
    ],
    st.sampled_from([" ", "  ", "\t", "=?", "?=", '"', "\\", "(", ")", ",", ":", ";", "<", ">"]),
)
TEXT = st.lists(CHARS, min_size=1, max_size=160).map("".join).filter(lambda s: s.strip())
WORDS = st.lists(
    st.sampled_from(
        [
            "Rappel",
            "réunion",
            "à",
            "Montréal",
            "Björn",
            "Åkesson",
            "—",
            "d’affaires",
            "für",
            "Grüße",
            "Москва",
            "встреча",
            "Αθήνα",
            "東京",
            "会議",
            "서울",
            "🎉",
            "مرحبا",
            "שלום",
            "नमस्ते",
            "สวัสดี",
            "la",
            "de",
            "the",
            "=?utf-8?q?x?=",
            "a\tb",
            ":",
            '"q"',
            "(c)",
        ]
    ),
    min_size=1,
    max_size=30,
).map(" ".join)
SUBJECTS = st.one_of(TEXT, WORDS)
NAMES = (
    st.lists(CHARS, min_size=1, max_size=60)
    .map("".join)
    .filter(lambda s: s.strip() == s and s != "")
)


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def email(**overrides: Any) -> OutgoingEmail:
    fields: dict[str, Any] = {
        "from_": "sender@example.com",
        "to": ["to@example.com"],
        "subject": "Hello",
        "text": "body",
    }
    fields.update(overrides)
    return OutgoingEmail(**fields)


def assert_lines_fit(raw: bytes) -> None:
    """ASCII headers on lines of at most 78 characters (998 for a header whose long name
    leaves no room for an encoded-word on its first line)."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    for line in head.split(b"\r\n"):
        long_name = not line.startswith(b" ") and len(line.split(b":", 1)[0]) > 50
        assert len(line) <= (998 if long_name else 78), line


@pytest.mark.parametrize("subject", [FRENCH, f"{FRENCH} {FRENCH}", "Ünïcödé " * 40])
def test_the_issue_subjects_decode_exactly(subject: str) -> None:
    message = parse(email(subject=subject).as_bytes())
    assert str(message["Subject"]) == subject


def test_the_activity_reminder_template_subject_decodes_exactly() -> None:
    rendered = render(
        "activity-reminder", {"first_name": "Ann", "activity_title": ACTIVITY_TITLE, "due_at": "x"}
    )
    assert rendered.subject == f"Reminder: {ACTIVITY_TITLE}"
    message = parse(email(subject=rendered.subject).as_bytes())
    assert str(message["Subject"]) == f"Reminder: {ACTIVITY_TITLE}"
    assert "pour la présentation" in str(message["Subject"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=SUBJECTS)
def test_any_subject_decodes_exactly(subject: str) -> None:
    raw = email(subject=subject).as_bytes()
    assert_lines_fit(raw)
    assert str(parse(raw)["Subject"]) == subject


def _quoted(name: str, address: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + f'" <{address}>'


@settings(max_examples=300, deadline=None)
@given(name=NAMES, other=NAMES)
def test_any_display_name_decodes_exactly_in_every_address_header(name: str, other: str) -> None:
    """Through the payload (which keeps a display name's whitespace runs as one space, the
    way every reader shows them) to the MIME."""
    job = validate_payload(
        EmailPayload,
        {"tenantId": "t1", "template": "welcome", "from": _quoted(name, "a@example.com"),
         "to": [_quoted(name, "a@example.com"), _quoted(other, "b@bücher.example")],
         "cc": [_quoted(other, "b@bücher.example")], "replyTo": _quoted(name, "a@example.com")},
    )  # fmt: skip
    name, other = (re.sub(r"[ \t]\s*", " ", value.strip()) for value in (name, other))
    assert job.from_ is not None
    # The worker validates the stored payload again: the canonical form is a fixed point.
    assert validate_payload(EmailPayload, job.model_dump(mode="json")) == job
    message = parse(email(from_=job.from_, to=job.to, cc=job.cc, reply_to=job.reply_to).as_bytes())
    for header in ("From", "To", "Reply-To"):
        assert message[header].addresses[0].display_name == name
        assert message[header].addresses[0].addr_spec == "a@example.com"
    assert message["To"].addresses[1].display_name == other
    assert message["To"].addresses[1].addr_spec == "b@xn--bcher-kva.example"
    assert message["Cc"].addresses[0].display_name == other


@settings(max_examples=300, deadline=None)
@given(value=SUBJECTS, name=st.from_regex(r"X-[A-Za-z0-9-]{1,60}", fullmatch=True))
def test_any_custom_header_decodes_exactly_in_mime_and_for_json_vendors(
    value: str, name: str
) -> None:
    raw = email(headers={name: value}, tags=["onboarding", "spring-2026"]).as_bytes()
    assert_lines_fit(raw)
    message = parse(raw)
    assert str(message[name]) == value
    assert str(message["X-Crmqueue-Tags"]) == "onboarding, spring-2026"
    # SendGrid, Resend and Mailgun get the value unfolded: it must decode the same.
    encoded = encode_text(value)
    assert encoded.isascii() and "\n" not in encoded
    header = HeaderParser(policy=policy.default).parsestr(f"{name}: {encoded}\n\n")
    assert str(header[name]) == value


def test_plain_ascii_stays_readable() -> None:
    raw = email(subject="Your export is ready", headers={"X-Campaign": "spring: 2024"}).as_bytes()
    assert b"Subject: Your export is ready\r\n" in raw
    assert b"X-Campaign: spring: 2024\r\n" in raw


@pytest.mark.parametrize(
    ("key", "sent"),
    [
        ("invoice-42", "invoice-42"),
        ("a b", "a b"),
        ("rechnung-€-42", None),
        ("x" * 256, "x" * 256),
        (" leading", None),
    ],
)
def test_idempotency_key_sent_as_ascii_or_hashed(key: str, sent: str | None) -> None:
    wire = wire_idempotency_key(key)
    assert wire.isascii() and len(wire) <= 256
    if sent is None:
        assert wire.startswith("sha256:") and wire == wire_idempotency_key(key)
    else:
        assert wire == sent


# --------------------------------------------------------------------------- at enqueue


def _errors(**fields: Any) -> dict[str, str]:
    data = {"tenantId": "t1", "to": "a@example.com", "template": "welcome", **fields}
    with pytest.raises(PayloadError) as caught:
        validate_payload(EmailPayload, data)
    return dict(caught.value.errors)


LINE_BREAKS = ["\r", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "\x00"]


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_every_header_bound_field_refuses_line_breaks_at_enqueue(brk: str) -> None:
    text = f"a{brk}Bcc: victim@example.com"
    # The field named, whatever other check (e.g. one over every string) names it too.
    assert top(_errors(subject=text)) == {"subject"}
    assert top(_errors(headers={"X-Note": text})) == {"headers"}
    assert top(_errors(tags=[text])) == {"tags"}
    assert top(_errors(idempotency_key=text)) == {"idempotency_key"}
    assert top(_errors(from_=f'"A{brk}B" <a@example.com>')) == {"from_"}
    assert top(_errors(to=[f'"A{brk}B" <a@example.com>'])) == {"to"}
    assert top(_errors(reply_to=f'"A{brk}B" <a@example.com>')) == {"reply_to"}


def top(errors: dict[str, str]) -> set[str]:
    return {name.split(".")[0] for name in errors}


def test_lone_surrogates_are_refused_in_header_fields_at_enqueue() -> None:
    errors = _errors(subject="Hi \ud83d", headers={"X-A": "\ud83d"}, idempotency_key="k\ud83d")
    assert top(errors) == {"subject", "headers", "idempotency_key"}
    assert "lone surrogate" in errors["subject"]


@pytest.mark.parametrize("tag", ["a b", "a\r\nb", "été", "a:b", "x" * 129, "", "tag,with,commas"])
def test_tags_must_suit_every_vendor(tag: str) -> None:
    errors = _errors(tags=["ok", tag])
    assert list(errors) == ["tags.1"]
    assert "A-Z a-z 0-9 _ -" in errors["tags.1"]


def test_tag_count_follows_the_configured_provider(make_broker: Any) -> None:
    make_broker({"email.provider": "mailgun"})
    assert list(_errors(tags=["a", "b", "c", "d"])) == ["tags"]
    assert "at most 3 tags (email provider mailgun)" in _errors(tags=list("abcd"))["tags"]
    make_broker({"email.provider": "resend"})
    validate_payload(
        EmailPayload, {"tenantId": "t1", "to": "a@example.com", "template": "welcome",
                       "tags": list("abcd")},
    )  # fmt: skip
    assert "at most 10 tags" in _errors(tags=[f"t{i}" for i in range(11)])["tags"]


@pytest.mark.parametrize(
    "headers",
    [{"Content-Type": "text/plain"}, {"bcc": "x@example.com"}, {"Message-ID": "<x@y>"},
     {"content-disposition": "inline"}, {"Resent-To": "x@example.com"}, {"Received": "x"},
     {"DKIM-Signature": "x"}, {"X-SG-ID": "x"}, {"X-Crmqueue-Tags": "x"}, {"Sender": "x"},
     {"X-" + "a" * 69: "x"}, {"X-Long": "x" * 2001}],
)  # fmt: skip
def test_headers_that_the_message_builds_or_that_cannot_fold_are_refused(
    headers: dict[str, str],
) -> None:
    assert list(_errors(headers=headers)) == ["headers"]


def test_non_ascii_header_values_are_accepted_and_encoded() -> None:
    job = validate_payload(
        EmailPayload,
        {"tenantId": "t1", "to": "a@example.com", "template": "welcome",
         "headers": {"X-Note": "Grüße aus Köln"}, "idempotencyKey": "rechnung-€-42"},
    )  # fmt: skip
    assert job.headers == {"X-Note": "Grüße aus Köln"}
    assert job.idempotency_key == "rechnung-€-42"


def test_blank_subject_is_refused() -> None:
    assert "blank" in _errors(subject="   ")["subject"]
