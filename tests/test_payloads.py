from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmqueue.errors import PayloadError
from crmqueue.payloads import (
    EmailPayload,
    EventPayload,
    ExportPayload,
    ImportPayload,
    NotificationPayload,
    Payload,
    ReportPayload,
    WebhookDeliveryPayload,
    payload_json,
    validate_payload,
)


def _errors(model: type[Payload], data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(PayloadError) as info:
        validate_payload(model, data)
    return dict(info.value.errors)


def _email(**overrides: object) -> dict[str, Any]:
    return {"tenantId": "t1", "to": "a@example.com", "template": "welcome", **overrides}


def _report(date_range: dict[str, Any]) -> dict[str, Any]:
    return {
        "tenantId": "t1",
        "userId": "u1",
        "reportType": "contact-growth",
        "format": "pdf",
        "dateRange": date_range,
    }


def test_import_camel_case_from_original_system() -> None:
    raw = json.loads(
        '{"tenantId": "t1", "userId": "u1", "fileUrl": "imports/x.csv", "fileType": "csv",'
        ' "entityType": "contacts", "mappingConfig": {"email": "E-mail"}, "dryRun": true}'
    )
    job = validate_payload(ImportPayload, raw)
    assert job.tenant_id == "t1"
    assert job.file_url == "imports/x.csv"
    assert job.mapping_config == {"email": "E-mail"}
    assert job.dry_run is True
    assert job.on_duplicate == "skip"
    assert job.batch_size == 100


def test_snake_case_names_accepted_and_tenant_stripped() -> None:
    job = validate_payload(
        ExportPayload,
        {"tenant_id": " acme-1 ", "user_id": "u1", "entity_type": "leads", "format": "xlsx"},
    )
    assert job.tenant_id == "acme-1"
    assert job.fields == []
    assert job.filters == {}


def test_dump_is_snake_case_json() -> None:
    job = validate_payload(
        ReportPayload, _report({"startDate": "2024-01-01", "endDate": "2024-01-31"})
    )
    assert job.date_range.start_date == date(2024, 1, 1)
    assert job.model_dump(mode="json") == {
        "tenant_id": "t1",
        "user_id": "u1",
        "report_type": "contact-growth",
        "format": "pdf",
        "date_range": {"start_date": "2024-01-01", "end_date": "2024-01-31"},
        "filters": {},
        "dimensions": [],
    }
    assert validate_payload(ReportPayload, job.model_dump(mode="json")) == job


def test_email_normalises_addresses_and_from_aliases() -> None:
    job = validate_payload(
        EmailPayload,
        _email(from_="Acme <no-reply@acme.io>", replyTo="help@acme.io", cc="c@acme.io"),
    )
    assert job.to == ["a@example.com"]
    assert job.cc == ["c@acme.io"]
    assert job.from_ == "Acme <no-reply@acme.io>"
    assert job.reply_to == "help@acme.io"
    assert validate_payload(EmailPayload, _email(**{"from": "x@acme.io"})).from_ == "x@acme.io"
    dumped = job.model_dump(mode="json")
    assert dumped["from_"] == "Acme <no-reply@acme.io>"
    assert dumped["reply_to"] == "help@acme.io"
    assert "replyTo" not in dumped


def test_unknown_field_rejected_with_its_name() -> None:
    errors = _errors(
        EventPayload, {"tenantId": "t1", "eventType": "a.b", "payload": {}, "bogusKey": 1}
    )
    assert list(errors) == ["bogusKey"]
    nested = _errors(
        ReportPayload, _report({"startDate": "2024-01-01", "endDate": "2024-01-02", "tz": "UTC"})
    )
    assert list(nested) == ["date_range.tz"]


def test_every_bad_field_listed() -> None:
    errors = _errors(
        EmailPayload,
        {
            "tenantId": "bad tenant!",
            "to": ["ok@example.com", "not-an-email", "x@y"],
            "template": "Welcome",
            "idempotencyKey": "k" * 257,
        },
    )
    assert set(errors) == {"tenant_id", "to.1", "to.2", "template", "idempotency_key"}
    assert errors["to.1"] == "value is not a valid email address"
    assert set(_errors(EmailPayload, {"subject": "hi"})) == {"tenant_id", "to", "template"}


def test_payload_error_message_lists_fields() -> None:
    with pytest.raises(PayloadError) as info:
        validate_payload(EmailPayload, _email(to="nope", template=None))
    assert str(info.value).startswith("payload invalid: ")
    assert "to: value is not a valid email address" in str(info.value)
    assert "template: " in str(info.value)


def test_single_and_empty_recipient_lists() -> None:
    assert set(_errors(EmailPayload, _email(to=[]))) == {"to"}
    assert _errors(EmailPayload, _email(to="nope")) == {"to": "value is not a valid email address"}


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Tag\r\nBcc": "victim@example.com"},
        {"X-Tag": "a\r\nBcc: victim@example.com"},
        {"X-Tag": "a\nb"},
        {"X:Tag": "a"},
        {"": "a"},
    ],
)
def test_header_injection_rejected(headers: dict[str, str]) -> None:
    errors = _errors(EmailPayload, _email(headers=headers))
    assert list(errors) == ["headers"]
    assert "\r" not in errors["headers"]
    assert "\n" not in errors["headers"]


def test_crlf_rejected_in_subject_and_from() -> None:
    errors = _errors(EmailPayload, _email(subject="hi\r\nBcc: x@y.io", **{"from": "a\nb"}))
    assert set(errors) == {"subject", "from_"}


def test_valid_headers_accepted() -> None:
    job = validate_payload(EmailPayload, _email(headers={"X-Campaign": "spring: 2024"}))
    assert job.headers == {"X-Campaign": "spring: 2024"}


def test_date_range_order() -> None:
    errors = _errors(ReportPayload, _report({"startDate": "2024-02-01", "endDate": "2024-01-31"}))
    assert list(errors) == ["date_range.end_date"]
    same_day = validate_payload(
        ReportPayload, _report({"start_date": "2024-02-01", "end_date": "2024-02-01"})
    )
    assert same_day.date_range.end_date == date(2024, 2, 1)


def test_import_limits_and_literals() -> None:
    base = {"tenantId": "t1", "userId": "u1", "fileUrl": "k.csv", "entityType": "contacts"}
    errors = _errors(
        ImportPayload, {**base, "fileType": "docx", "batchSize": 0, "onDuplicate": "merge"}
    )
    assert set(errors) == {"file_type", "batch_size", "on_duplicate"}
    assert "batch_size" in _errors(ImportPayload, {**base, "fileType": "csv", "batchSize": 10_001})


def test_event_type_pattern() -> None:
    ok = validate_payload(
        WebhookDeliveryPayload,
        {"tenantId": "t1", "webhookId": "w1", "eventType": "contact.created", "payload": {"id": 1}},
    )
    assert ok.event_type == "contact.created"
    for bad in ["contact", "Contact.created", "contact.", "contact..created"]:
        assert list(_errors(EventPayload, {"tenantId": "t1", "eventType": bad, "payload": {}})) == [
            "event_type"
        ]


@pytest.mark.parametrize("url", ["/deals/1", "https://crm.example.com/x", "http://localhost:3000"])
def test_notification_action_url_accepted(url: str) -> None:
    data = {"tenantId": "t1", "userId": "u1", "type": "in-app", "title": "Hi", "message": "m"}
    assert validate_payload(NotificationPayload, {**data, "actionUrl": url}).action_url == url


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "//evil.com", "deals/1", "ftp://x.io/", "/\\evil.com"]
)
def test_notification_action_url_rejected(url: str) -> None:
    data = {"tenantId": "t1", "userId": "u1", "type": "in-app", "title": "Hi", "message": "m"}
    assert list(_errors(NotificationPayload, {**data, "actionUrl": url})) == ["action_url"]


def test_notification_lengths() -> None:
    data = {"tenantId": "t1", "userId": "u1", "type": "push", "title": "", "message": "m" * 2001}
    assert set(_errors(NotificationPayload, data)) == {"title", "message"}


def test_non_mapping_payload_rejected() -> None:
    with pytest.raises(PayloadError):
        validate_payload(EventPayload, [1, 2])  # type: ignore[arg-type]


# Any JSON-like tree, with every kind of text (lone surrogates, pairs given as two code
# points, NUL, U+FFFD) and every float (NaN, Infinity) in values and keys.
_ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=6)
_TREES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _ANY_TEXT
    | st.sampled_from(["\ud83d", "\ud83d\ude00", "\ufffd", "NaN", "\x00", "Infinity"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_ANY_TEXT, inner, max_size=3),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(tree=_TREES, key=_ANY_TEXT)
def test_payload_json_refuses_and_encodes_as_validate_payload_and_the_engine_do(
    tree: Any, key: str
) -> None:
    """payload_json (one validation and one dump in Rust, the input walked only when its
    JSON looks suspect) refuses exactly what validate_payload and the engine's encode
    refuse, with the same paths, and otherwise stores what they would."""
    from crmqueue.json_text import encode_value

    data = {"tenantId": "t1", "eventType": "contact.created", "payload": {key: tree}}
    try:
        reference = encode_value(validate_payload(EventPayload, data).model_dump(mode="json"))
    except PayloadError as exc:
        with pytest.raises(PayloadError) as info:
            payload_json(EventPayload, data)
        assert info.value.errors == exc.errors
        return
    valid, encoded = payload_json(EventPayload, data)
    assert valid.tenant_id == "t1"
    assert json.loads(encoded) == json.loads(reference)


@pytest.mark.parametrize(
    ("value", "path", "reason"),
    [
        ({"k\ud83d": 1}, "payload.k\\ud83d", "the key itself: lone surrogate U+D83D"),
        ({"k": "\ud83d"}, "payload.k", "lone surrogate U+D83D"),
        ({"k": ["a", "\x00"]}, "payload.k.1", "NUL (U+0000) at character 0"),
        ({"k": float("nan")}, "payload.k", "nan is not a JSON number"),
        ({"k": float("-inf")}, "payload.k", "-inf is not a JSON number"),
    ],
)
def test_payload_json_names_the_field(value: Any, path: str, reason: str) -> None:
    data = {"tenant_id": "t1", "event_type": "contact.created", "payload": value}
    with pytest.raises(PayloadError) as info:
        payload_json(EventPayload, data)
    ((field, text),) = info.value.errors
    assert field == path and text.startswith(reason)
    # U+FFFD and the words NaN or Infinity are text like any other: only the walk sees them.
    ok = {"k\ufffd": "\ufffd NaN Infinity", "n": "NaN"}
    _, encoded = payload_json(EventPayload, {**data, "payload": ok})
    assert json.loads(encoded)["payload"] == ok
