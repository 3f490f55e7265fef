"""crmqueue.webhooks: Standard Webhooks signing (checked against the reference libraries
standardwebhooks and svix), event bodies and filters, and the endpoint service on real
SQLite and PostgreSQL: tenant isolation, ids, the SSRF guard at add and update, secrets
shown once, rotation grace, the circuit breaker, the probe claim, the delivery log,
messages for replay, trimming, and the schema step from the previous version."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crm_db
import pytest
import sqlalchemy as sa
import standardwebhooks
import svix.webhooks

from crmqueue import webhooks
from crmqueue.config import Settings, load_settings
from crmqueue.crm import schema
from crmqueue.crm.store import create_engine, current_version, init_db
from crmqueue.errors import PayloadError
from crmqueue.webhooks import (
    Attempt,
    DeliveryNotFound,
    Endpoint,
    EndpointNotFound,
    Message,
    MessageNotFound,
    WebhookService,
)

crm_url = crm_db.crm_url
pg_url = crm_db.pg_url

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIME = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
HOOK = "http://127.0.0.1:9/hook"  # never contacted: the service only checks it


def settings_for(url: str, **webhook_keys: Any) -> Settings:
    return Settings.model_validate(
        {
            "database": {"url": url},
            "outbound": {"allowed_networks": ["127.0.0.0/8"]},
            "webhooks": webhook_keys,
        }
    )


@pytest.fixture
def svc(crm_url: str) -> WebhookService:
    return WebhookService(settings_for(crm_url, breaker_failures=3, breaker_probe_seconds=30))


@pytest.fixture
def lite(tmp_path: Path) -> WebhookService:
    """SQLite only: for rules that do not depend on the database."""
    return WebhookService(settings_for(f"sqlite:///{tmp_path}/crm.db"))


def verify_with_both(
    secret: str, message_id: str, timestamp: int, body: bytes, header: str
) -> None:
    """Both reference verifiers accept the signature header (they raise otherwise)."""
    standardwebhooks.Webhook(secret).verify(
        body,
        {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": header,
        },
    )
    svix.webhooks.Webhook(secret).verify(
        body, {"svix-id": message_id, "svix-timestamp": str(timestamp), "svix-signature": header}
    )


def failed(message_id: str = "msg_1", status: int | None = 500, excerpt: str = "") -> Attempt:
    return Attempt(message_id, "contact.created", "job-1", 1, False, status, 25, excerpt,
                   f"HTTP {status}")  # fmt: skip


def ok(message_id: str = "msg_1") -> Attempt:
    return Attempt(message_id, "contact.created", "job-1", 1, True, 200, 7, "thanks", None)


# --------------------------------------------------------------------------- signing


def test_sign_matches_the_reference_test_vector() -> None:
    assert webhooks.sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIME, VECTOR_BODY) == VECTOR_SIGNATURE
    # without the prefix the key is the same
    bare = VECTOR_SECRET.removeprefix("whsec_")
    assert webhooks.sign(bare, VECTOR_ID, VECTOR_TIME, VECTOR_BODY) == VECTOR_SIGNATURE


def test_signatures_verify_with_standardwebhooks_and_svix() -> None:
    secret = webhooks.new_secret()
    now = int(time.time())  # the reference verifiers refuse times 5 minutes away
    body = webhooks.event_body("contact.created", T0, {"id": 7, "name": "Zoë"})
    header = webhooks.signature_header([secret], "msg_abc", now, body)
    verify_with_both(secret, "msg_abc", now, body, header)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(webhooks.new_secret()).verify(
            body, {"webhook-id": "msg_abc", "webhook-timestamp": str(now),
                   "webhook-signature": header},
        )  # fmt: skip
    with pytest.raises(svix.webhooks.WebhookVerificationError):  # another body
        svix.webhooks.Webhook(secret).verify(
            body + b" ", {"svix-id": "msg_abc", "svix-timestamp": str(now),
                          "svix-signature": header},
        )  # fmt: skip


def test_signature_header_has_one_entry_per_secret_and_each_verifies() -> None:
    new, old = webhooks.new_secret(), webhooks.new_secret(48)
    now = int(time.time())
    header = webhooks.signature_header([new, old], "msg_rot", now, b"{}")
    entries = header.split(" ")
    assert entries == [webhooks.sign(new, "msg_rot", now, b"{}"),
                       webhooks.sign(old, "msg_rot", now, b"{}")]  # fmt: skip
    for secret in (new, old):
        verify_with_both(secret, "msg_rot", now, b"{}", header)
    with pytest.raises(ValueError):
        webhooks.signature_header([], "msg_rot", now, b"{}")


@pytest.mark.parametrize("size", [24, 32, 64])
def test_new_secret_is_whsec_base64_of_size_bytes(size: int) -> None:
    secret = webhooks.new_secret(size)
    assert secret.startswith("whsec_")
    assert len(webhooks.secret_key(secret)) == size
    assert webhooks.new_secret(size) != secret


@pytest.mark.parametrize("size", [0, 23, 65])
def test_new_secret_refuses_sizes_outside_24_to_64(size: int) -> None:
    with pytest.raises(ValueError, match="24-64"):
        webhooks.new_secret(size)


@pytest.mark.parametrize(
    ("secret", "problem"),
    [("whsec_", "empty"), ("", "empty"), ("whsec_not base64!", "base64"), ("whsec_abc", "base64")],
)
def test_secret_key_names_the_problem_without_the_secret(secret: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        webhooks.secret_key(secret)
    if secret.removeprefix("whsec_"):
        assert secret.removeprefix("whsec_") not in str(caught.value)


def test_event_body_is_compact_deterministic_json() -> None:
    stamp = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    body = webhooks.event_body("contact.created", stamp, {"b": [1, 2], "a": "é"})
    assert (
        body
        == (
            '{"type":"contact.created","timestamp":"2026-01-02T01:04:05.678Z",'
            '"data":{"a":"é","b":[1,2]}}'
        ).encode()
    )
    assert webhooks.event_body("contact.created", stamp, {"a": "é", "b": [1, 2]}) == body
    assert json.loads(body)["type"] == "contact.created"
    naive = dt.datetime(2026, 1, 2, 1, 4, 5, 678000)  # taken as UTC
    assert webhooks.event_body("contact.created", naive, {"a": "é", "b": [1, 2]}) == body
    with pytest.raises(ValueError):
        webhooks.event_body("contact.created", stamp, {"x": float("nan")})


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("event_type", "filters", "expected"),
    [
        ("contact.created", ["*"], True),
        ("contact.created", ["contact.*"], True),
        ("contact.note.added", ["contact.*"], True),
        ("contact.created", ["contact.created"], True),
        ("contact.updated", ["contact.created"], False),
        ("lead.updated", ["contact.*"], False),
        ("contacts.created", ["contact.*"], False),
        ("pipeline.stage_changed", ["lead.updated", "pipeline.*"], True),
        ("contact.created", [], False),
    ],
)
def test_subscribed(event_type: str, filters: list[str], expected: bool) -> None:
    assert webhooks.subscribed(event_type, filters) is expected


@pytest.mark.parametrize(
    "good", ["*", "contact.*", "contact.created", "a.b.*", "pipeline.stage_changed"]
)
def test_filter_problem_accepts(good: str) -> None:
    assert webhooks.filter_problem(good) is None


@pytest.mark.parametrize(
    "bad", ["", "contact", "Contact.created", "contact.*.x", "contact*", "*.created", "**",
            "contact.", ".created", "contact created", "x." + "a" * 100],
)  # fmt: skip
def test_filter_problem_refuses(bad: str) -> None:
    assert webhooks.filter_problem(bad)


# --------------------------------------------------------------------------- endpoints


def test_add_with_the_tenants_own_id_and_generated_ids(svc: WebhookService) -> None:
    endpoint, secret = svc.add("t1", HOOK, ["contact.*"], webhook_id="webhook-789",
                               description="CRM sync")  # fmt: skip
    assert (endpoint.tenant_id, endpoint.webhook_id, endpoint.url) == ("t1", "webhook-789", HOOK)
    assert endpoint.event_types == ("contact.*",)
    assert endpoint.enabled and endpoint.disabled_reason is None
    assert endpoint.description == "CRM sync" and endpoint.consecutive_failures == 0
    assert endpoint.secret == secret and len(webhooks.secret_key(secret)) == 32
    generated, other = svc.add("t1", HOOK)
    assert generated.webhook_id.startswith("webhook-") and generated.webhook_id != "webhook-789"
    assert generated.event_types == ("*",) and other != secret
    assert [e.webhook_id for e in svc.list("t1")] == ["webhook-789", generated.webhook_id]
    assert svc.get("t1", "webhook-789") == endpoint


def test_duplicate_and_malformed_ids_are_refused_naming_webhook_id(svc: WebhookService) -> None:
    svc.add("t1", HOOK, webhook_id="webhook-789")
    with pytest.raises(PayloadError) as caught:
        svc.add("t1", HOOK, webhook_id="webhook-789")
    assert caught.value.errors[0][0] == "webhook_id" and "already exists" in str(caught.value)
    svc.add("t2", HOOK, webhook_id="webhook-789")  # another tenant's ids are its own
    for bad in ("", "-x", "has space", "x" * 65, "a/b"):
        with pytest.raises(PayloadError) as caught:
            svc.add("t1", HOOK, webhook_id=bad)
        assert caught.value.errors[0][0] == "webhook_id"
    assert len(svc.list("t1")) == 1


def test_concurrent_adds_of_one_id_leave_one_endpoint(svc: WebhookService) -> None:
    outcomes: list[str] = []
    gate = threading.Barrier(4)

    def add() -> None:
        gate.wait()
        try:
            svc.add("t1", HOOK, webhook_id="webhook-race")
            outcomes.append("added")
        except PayloadError as exc:
            outcomes.append(exc.errors[0][0])

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["added", "webhook_id", "webhook_id", "webhook_id"]


def test_the_secret_is_never_in_a_repr(svc: WebhookService) -> None:
    endpoint, secret = svc.add("t1", HOOK, webhook_id="webhook-1")
    svc.rotate("t1", "webhook-1")
    rotated = svc.get("t1", "webhook-1")
    assert rotated.previous_secret == secret
    for text in (repr(endpoint), str(endpoint), repr(svc.list("t1")), repr(rotated)):
        assert secret not in text and secret.removeprefix("whsec_") not in text
        assert rotated.secret not in text and "whsec_" not in text


def test_a_given_secret_is_kept_and_checked(lite: WebhookService) -> None:
    endpoint, secret = lite.add("t1", HOOK, secret=VECTOR_SECRET)
    assert secret == endpoint.secret == VECTOR_SECRET
    bare = webhooks.new_secret(24).removeprefix("whsec_")
    assert lite.add("t1", HOOK, secret=bare)[1] == "whsec_" + bare
    for bad, why in ((webhooks.new_secret(24)[:-1], "base64"), ("whsec_" + "QUJD" * 4, "24-64")):
        with pytest.raises(PayloadError, match=why) as caught:
            lite.add("t1", HOOK, secret=bad)
        assert caught.value.errors[0][0] == "secret"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://2130706433/hook",  # 127.0.0.1 as a decimal number
        "http://0x7f000001/hook",  # and in hex
        "http://0251.0376.0251.0376/hook",  # 169.254.169.254 in octal
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::1]/hook",
        "http://100.64.0.1/hook",
    ],
)
def test_private_urls_are_refused_at_add_and_update(tmp_path: Path, url: str) -> None:
    strict = WebhookService(
        Settings.model_validate({"database": {"url": f"sqlite:///{tmp_path}/crm.db"}})
    )
    with pytest.raises(PayloadError) as caught:
        strict.add("t1", url)
    [(field, reason)] = caught.value.errors
    assert field == "url" and "not allowed" in reason, reason
    assert strict.list("t1") == []
    strict.add("t1", "https://93.184.215.14/hook", webhook_id="webhook-public")
    with pytest.raises(PayloadError) as caught:
        strict.update("t1", "webhook-public", url=url)
    assert caught.value.errors[0][0] == "url"
    assert strict.get("t1", "webhook-public").url == "https://93.184.215.14/hook"


@pytest.mark.parametrize("url", ["ftp://93.184.215.14/x", "not a url", "", "http:///path"])
def test_malformed_urls_are_refused(lite: WebhookService, url: str) -> None:
    with pytest.raises(PayloadError) as caught:
        lite.add("t1", url)
    assert caught.value.errors[0][0] == "url"


def test_allowed_networks_let_loopback_in(tmp_path: Path) -> None:
    allowed = WebhookService(settings_for(f"sqlite:///{tmp_path}/crm.db"))
    assert allowed.add("t1", "http://127.0.0.1:8080/hook")[0].url == "http://127.0.0.1:8080/hook"
    with pytest.raises(PayloadError):  # only the listed network
        allowed.add("t1", "http://10.0.0.1/hook")


def test_update_changes_url_filters_and_description(svc: WebhookService) -> None:
    created, _ = svc.add("t1", HOOK, ["contact.created"], webhook_id="webhook-1")
    changed = svc.update("t1", "webhook-1", url="http://127.0.0.2/new",
                         event_types=["lead.*", "lead.*"], description="new")  # fmt: skip
    assert (changed.url, changed.event_types, changed.description) == (
        "http://127.0.0.2/new",
        ("lead.*",),
        "new",
    )
    assert changed.secret == created.secret and changed.updated_at >= created.updated_at
    assert svc.update("t1", "webhook-1") == changed
    with pytest.raises(PayloadError) as caught:
        svc.update("t1", "webhook-1", event_types=["lead.*", "Bad"])
    assert caught.value.errors == [("event_types[1]", "'Bad' is not a lower-case dotted event"
                                    " type such as contact.created")]  # fmt: skip


@pytest.mark.parametrize("bad", [[], ["contact"], ["contact.*", "*.x"], [""]])
def test_bad_filters_are_refused_at_add(lite: WebhookService, bad: list[str]) -> None:
    with pytest.raises(PayloadError) as caught:
        lite.add("t1", HOOK, bad)
    assert caught.value.errors[0][0].startswith("event_types")


def test_subscribers_match_filters_and_skip_disabled_endpoints(svc: WebhookService) -> None:
    svc.add("t1", HOOK, ["*"], webhook_id="all")
    svc.add("t1", HOOK, ["contact.*"], webhook_id="contacts")
    svc.add("t1", HOOK, ["contact.deleted"], webhook_id="deletes")
    svc.add("t1", HOOK, ["lead.updated"], webhook_id="leads")
    svc.add("t2", HOOK, ["*"], webhook_id="all")

    def ids(event_type: str) -> list[str]:
        return [e.webhook_id for e in svc.subscribers("t1", event_type)]

    assert ids("contact.created") == ["all", "contacts"]
    assert ids("contact.deleted") == ["all", "contacts", "deletes"]
    assert ids("lead.updated") == ["all", "leads"]
    assert ids("activity.completed") == ["all"]
    assert all(e.tenant_id == "t1" for e in svc.subscribers("t1", "contact.created"))
    disabled = svc.disable("t1", "contacts", reason="customer asked")
    assert not disabled.enabled and disabled.disabled_reason == "customer asked"
    assert ids("contact.created") == ["all"]
    assert svc.enable("t1", "contacts").disabled_reason is None
    assert ids("contact.created") == ["all", "contacts"]


def test_remove_takes_the_log_with_it(svc: WebhookService) -> None:
    endpoint, _ = svc.add("t1", HOOK, webhook_id="webhook-1")
    svc.record_attempt(endpoint, ok())
    [logged] = svc.deliveries("t1", "webhook-1")
    svc.remove("t1", "webhook-1")
    with pytest.raises(EndpointNotFound):
        svc.get("t1", "webhook-1")
    with pytest.raises(DeliveryNotFound):
        svc.delivery("t1", logged.id)
    again, _ = svc.add("t1", HOOK, webhook_id="webhook-1")  # the id is free again
    assert svc.deliveries("t1", "webhook-1") == [] and again.enabled


def test_another_tenants_ids_are_not_found_by_any_method(svc: WebhookService) -> None:
    endpoint, _ = svc.add("t1", HOOK, webhook_id="webhook-1")
    svc.record_attempt(endpoint, failed())
    svc.save_message(Message("t1", "msg_1", "contact.created", T0, {"id": 1}))
    [logged] = svc.deliveries("t1", "webhook-1")
    calls: list[Callable[[], object]] = [
        lambda: svc.get("t2", "webhook-1"),
        lambda: svc.update("t2", "webhook-1", description="x"),
        lambda: svc.enable("t2", "webhook-1"),
        lambda: svc.disable("t2", "webhook-1"),
        lambda: svc.rotate("t2", "webhook-1"),
        lambda: svc.remove("t2", "webhook-1"),
        lambda: svc.deliveries("t2", "webhook-1"),
    ]
    for call in calls:
        with pytest.raises(EndpointNotFound, match="'webhook-1' not found for tenant 't2'"):
            call()
    forged = Endpoint(**{**endpoint.__dict__, "tenant_id": "t2"})
    with pytest.raises(EndpointNotFound):
        svc.record_attempt(forged, failed())
    assert svc.claim_probe(forged, 10, now=T0 + dt.timedelta(days=999)) is False
    with pytest.raises(DeliveryNotFound):
        svc.delivery("t2", logged.id)
    with pytest.raises(MessageNotFound):
        svc.message("t2", "msg_1")
    assert svc.list("t2") == [] and svc.subscribers("t2", "contact.created") == []
    # and t1's endpoint is untouched by all of it
    kept = svc.get("t1", "webhook-1")
    assert kept.enabled and kept.secret == endpoint.secret and kept.consecutive_failures == 1
    assert svc.message("t1", "msg_1").data == {"id": 1}


def test_tenant_id_is_checked(lite: WebhookService) -> None:
    for bad in ("", "   ", "t" * 65):
        with pytest.raises(PayloadError) as caught:
            lite.add(bad, HOOK)
        assert caught.value.errors[0][0] == "tenant_id"


# --------------------------------------------------------------------------- rotation


def test_rotation_grace_both_secrets_sign_then_only_the_new_one(svc: WebhookService) -> None:
    _, old = svc.add("t1", HOOK, webhook_id="webhook-1")
    before = dt.datetime.now(dt.UTC)
    new = svc.rotate("t1", "webhook-1", grace_seconds=3600)
    assert new != old and new.startswith("whsec_")
    rotated = svc.get("t1", "webhook-1")
    assert rotated.secret == new and rotated.previous_secret == old
    assert rotated.previous_secret_until is not None
    assert before + dt.timedelta(seconds=3599) < rotated.previous_secret_until
    during = rotated.previous_secret_until - dt.timedelta(seconds=1)
    assert rotated.signing_secrets(during) == [new, old]
    now = int(time.time())
    header = webhooks.signature_header(rotated.signing_secrets(during), "msg_r", now, b"{}")
    for secret in (old, new):  # receivers with either secret accept it
        verify_with_both(secret, "msg_r", now, b"{}", header)
    after = rotated.previous_secret_until + dt.timedelta(seconds=1)
    assert rotated.signing_secrets(after) == [new]
    header = webhooks.signature_header(rotated.signing_secrets(after), "msg_r", now, b"{}")
    verify_with_both(new, "msg_r", now, b"{}", header)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        verify_with_both(old, "msg_r", now, b"{}", header)


def test_rotation_grace_defaults_to_the_setting_and_zero_stops_the_old_secret(
    lite: WebhookService,
) -> None:
    lite.add("t1", HOOK, webhook_id="webhook-1")
    start = dt.datetime.now(dt.UTC)
    lite.rotate("t1", "webhook-1")
    until = lite.get("t1", "webhook-1").previous_secret_until
    assert until is not None and abs((until - start).total_seconds() - 24 * 3600) < 60
    newest = lite.rotate("t1", "webhook-1", grace_seconds=0)
    now_rotated = lite.get("t1", "webhook-1")
    assert now_rotated.previous_secret is None and now_rotated.previous_secret_until is None
    assert now_rotated.signing_secrets(dt.datetime.now(dt.UTC)) == [newest]


def test_concurrent_rotations_keep_both_new_secrets_valid(svc: WebhookService) -> None:
    svc.add("t1", HOOK, webhook_id="webhook-1")
    fresh: list[str] = []
    gate = threading.Barrier(2)

    def rotate() -> None:
        gate.wait()
        fresh.append(svc.rotate("t1", "webhook-1"))

    threads = [threading.Thread(target=rotate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rotated = svc.get("t1", "webhook-1")
    # the later one signs, the earlier one is its rotated-out secret: neither was lost
    assert sorted(rotated.signing_secrets(dt.datetime.now(dt.UTC))) == sorted(fresh)


# --------------------------------------------------------------------------- breaker


def test_breaker_opens_probes_and_resets(svc: WebhookService) -> None:
    endpoint, _ = svc.add("t1", HOOK, webhook_id="webhook-1")  # breaker_failures = 3
    first = svc.record_attempt(endpoint, failed(), now=T0)
    assert (first.consecutive_failures, first.failing_since, first.probe_at) == (1, T0, None)
    assert not first.tripped and not first.disabled
    second = svc.record_attempt(endpoint, failed(), now=T0 + dt.timedelta(seconds=1))
    assert second.consecutive_failures == 2 and second.probe_at is None and not second.tripped
    third = svc.record_attempt(endpoint, failed(), now=T0 + dt.timedelta(seconds=2))
    probe_at = T0 + dt.timedelta(seconds=32)
    assert third.tripped and third.probe_at == probe_at and third.failing_since == T0
    stored = svc.get("t1", "webhook-1")
    assert stored.probe_at == probe_at and stored.consecutive_failures == 3
    assert stored.breaker_open(T0 + dt.timedelta(seconds=31))
    assert not stored.breaker_open(probe_at)
    # before probe_at nobody may probe; at it exactly one caller
    assert not svc.claim_probe(stored, 10, now=T0 + dt.timedelta(seconds=31))
    assert svc.claim_probe(stored, 10, now=probe_at)
    assert svc.get("t1", "webhook-1").probe_at == probe_at + dt.timedelta(seconds=10)
    assert not svc.claim_probe(stored, 10, now=probe_at + dt.timedelta(seconds=5))
    # the probe fails: the breaker re-arms from then, without tripping again
    fourth = svc.record_attempt(endpoint, failed(), now=probe_at + dt.timedelta(seconds=6))
    assert fourth.consecutive_failures == 4 and not fourth.tripped
    assert fourth.probe_at == probe_at + dt.timedelta(seconds=36)
    # the next probe succeeds: closed
    assert svc.claim_probe(endpoint, 10, now=probe_at + dt.timedelta(seconds=40))
    closed = svc.record_attempt(endpoint, ok(), now=probe_at + dt.timedelta(seconds=41))
    assert (closed.consecutive_failures, closed.failing_since, closed.probe_at) == (0, None, None)
    assert not closed.tripped and not closed.disabled
    reset = svc.get("t1", "webhook-1")
    assert (reset.consecutive_failures, reset.failing_since, reset.probe_at) == (0, None, None)
    assert not svc.claim_probe(reset, 10, now=probe_at + dt.timedelta(days=1))  # closed
    assert [d.succeeded for d in svc.deliveries("t1", "webhook-1")] == [True] + [False] * 4


def test_an_endpoint_failing_for_disable_after_days_is_disabled_once(
    svc: WebhookService,
) -> None:
    endpoint, _ = svc.add("t1", HOOK, webhook_id="webhook-1")
    svc.add("t1", HOOK, webhook_id="webhook-2")
    assert not svc.record_attempt(endpoint, failed(), now=T0).disabled
    almost = svc.record_attempt(endpoint, failed(), now=T0 + dt.timedelta(days=4.9))
    assert not almost.disabled
    state = svc.record_attempt(endpoint, failed(), now=T0 + dt.timedelta(days=5))
    assert state.disabled and state.failing_since == T0
    disabled = svc.get("t1", "webhook-1")
    assert not disabled.enabled
    assert disabled.disabled_reason is not None and "2026-03-01T12:00:00.000Z" in (
        disabled.disabled_reason
    )
    # a late in-flight failure does not report a second disabling
    assert not svc.record_attempt(endpoint, failed(), now=T0 + dt.timedelta(days=5.1)).disabled
    assert svc.get("t1", "webhook-2").enabled
    assert [e.webhook_id for e in svc.subscribers("t1", "contact.created")] == ["webhook-2"]
    enabled = svc.enable("t1", "webhook-1")
    assert enabled.enabled and enabled.disabled_reason is None
    assert (enabled.consecutive_failures, enabled.failing_since, enabled.probe_at) == (
        0, None, None
    )  # fmt: skip


def test_claim_probe_has_exactly_one_winner_among_threads(svc: WebhookService) -> None:
    endpoint, _ = svc.add("t1", HOOK, webhook_id="webhook-1")
    for second in range(3):
        svc.record_attempt(endpoint, failed(), now=T0 + dt.timedelta(seconds=second))
    due = svc.get("t1", "webhook-1").probe_at
    assert due is not None
    for round_ in range(3):
        now = due + dt.timedelta(seconds=100 * round_)
        wins: list[bool] = []
        gate = threading.Barrier(8)

        def claim(
            at: dt.datetime = now, gate: threading.Barrier = gate, wins: list[bool] = wins
        ) -> None:
            gate.wait()
            wins.append(svc.claim_probe(endpoint, 60, now=at))

        threads = [threading.Thread(target=claim) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(wins) == [False] * 7 + [True], round_
        assert svc.get("t1", "webhook-1").probe_at == now + dt.timedelta(seconds=60)


def test_concurrent_failures_are_all_counted(svc: WebhookService) -> None:
    endpoint, _ = svc.add("t1", HOOK, webhook_id="webhook-1")
    gate = threading.Barrier(6)
    states: list[webhooks.BreakerState] = []

    def fail() -> None:
        gate.wait()
        states.append(svc.record_attempt(endpoint, failed(), now=T0))

    threads = [threading.Thread(target=fail) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(s.consecutive_failures for s in states) == [1, 2, 3, 4, 5, 6]
    assert sum(s.tripped for s in states) == 1
    assert svc.get("t1", "webhook-1").consecutive_failures == 6


# --------------------------------------------------------------------------- log, messages


def test_the_log_keeps_each_attempt_newest_first_without_secrets(svc: WebhookService) -> None:
    endpoint, secret = svc.add("t1", HOOK, webhook_id="webhook-1")
    svc.rotate("t1", "webhook-1")
    endpoint = svc.get("t1", "webhook-1")
    long_body = "<" + secret + ">" + "x" * 3000
    svc.record_attempt(endpoint, failed("msg_1", 503, long_body), now=T0)
    svc.record_attempt(endpoint, Attempt("msg_1", "contact.created", "job-1", 2, False, None, 5000,
                                         "", f"timed out ({endpoint.secret})"),
                       now=T0 + dt.timedelta(seconds=5))  # fmt: skip
    svc.record_attempt(endpoint, ok("msg_1"), now=T0 + dt.timedelta(seconds=9))
    newest, timeout, first = svc.deliveries("t1", "webhook-1")
    assert (newest.succeeded, newest.status_code, newest.response_excerpt) == (True, 200, "thanks")
    assert newest.at == T0 + dt.timedelta(seconds=9) and newest.error is None
    assert timeout.status_code is None and timeout.latency_ms == 5000 and timeout.attempt == 2
    assert timeout.error == "timed out (***)"
    assert first.status_code == 503 and len(first.response_excerpt) <= 1024
    assert secret not in first.response_excerpt and first.response_excerpt.startswith("<***>x")
    assert (first.tenant_id, first.webhook_id, first.message_id, first.event_type,
            first.job_id) == ("t1", "webhook-1", "msg_1", "contact.created", "job-1")  # fmt: skip
    assert svc.delivery("t1", first.id) == first
    assert svc.deliveries("t1", "webhook-1", limit=1) == [newest]
    with pytest.raises(PayloadError):
        svc.deliveries("t1", "webhook-1", limit=0)


def test_messages_are_saved_once_and_replay_the_same_body(svc: WebhookService) -> None:
    stamp = dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    data = {"contact": {"id": 42, "name": "Zoë", "tags": ["a", "b"]}, "n": 1.5}
    message = Message("t1", "msg_p5jXN8AQM9LWM0D4loKWxJek", "contact.created", stamp, data)
    svc.save_message(message)
    svc.save_message(Message("t1", message.message_id, "contact.deleted", T0, {"other": 1}))
    stored = svc.message("t1", message.message_id)
    assert stored == message
    assert webhooks.event_body(stored.event_type, stored.timestamp, stored.data) == (
        webhooks.event_body(message.event_type, message.timestamp, message.data)
    )
    with pytest.raises(MessageNotFound, match="msg_unknown"):
        svc.message("t1", "msg_unknown")


def test_trim_drops_log_rows_and_messages_older_than_keep_days(crm_url: str) -> None:
    svc = WebhookService(settings_for(crm_url, keep_days=30))
    endpoint, _ = svc.add("t1", HOOK, webhook_id="webhook-1")
    real_now = dt.datetime.now(dt.UTC)
    svc.record_attempt(endpoint, failed("msg_old"), now=real_now - dt.timedelta(days=31))
    svc.record_attempt(endpoint, ok("msg_new"), now=real_now - dt.timedelta(days=29))
    svc.save_message(Message("t1", "msg_new", "contact.created", real_now, {}))
    assert svc.trim(now=real_now) == 1
    assert [d.message_id for d in svc.deliveries("t1", "webhook-1")] == ["msg_new"]
    assert svc.message("t1", "msg_new").message_id == "msg_new"
    # 31 days on, the newer row and the message (saved now) go too
    assert svc.trim(now=real_now + dt.timedelta(days=31)) == 2
    assert svc.deliveries("t1", "webhook-1") == []
    with pytest.raises(MessageNotFound):
        svc.message("t1", "msg_new")
    assert svc.get("t1", "webhook-1").enabled  # endpoints are never trimmed


def test_record_attempt_trims_the_log_once_an_interval(lite: WebhookService) -> None:
    endpoint, _ = lite.add("t1", HOOK, webhook_id="webhook-1")
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    lite.record_attempt(endpoint, failed("msg_old"), now=old)
    lite.record_attempt(endpoint, failed("msg_old2"), now=old)
    assert len(lite.deliveries("t1", "webhook-1")) == 2  # not due in a new service's first hour
    lite._next_trim = time.monotonic()  # an hour on
    lite.record_attempt(endpoint, ok("msg_new"))
    assert [d.message_id for d in lite.deliveries("t1", "webhook-1")] == ["msg_new"]
    assert lite._next_trim > time.monotonic() + webhooks.TRIM_INTERVAL - 60


# --------------------------------------------------------------------------- schema, settings


OLD = sa.MetaData()
OLD_ENDPOINTS = sa.Table(  # webhook_endpoints as versions 1-3 created it
    "webhook_endpoints", OLD,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("webhook_id", sa.String(64), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("secret", sa.String(200), nullable=False),
    sa.Column("event_types", sa.JSON, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("created_at", schema.UtcDateTime(), nullable=False),
    sa.Column("updated_at", schema.UtcDateTime(), nullable=False),
    sa.UniqueConstraint("tenant_id", "webhook_id", name="uq_webhook_endpoints_tenant_id"),
)  # fmt: skip
OLD_DELIVERIES = sa.Table(
    "webhook_deliveries", OLD,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("endpoint_id", sa.Integer, sa.ForeignKey("webhook_endpoints.id"), nullable=False),
    sa.Column("event_type", sa.String(100), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("response_status", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("created_at", schema.UtcDateTime(), nullable=False),
    sa.Column("delivered_at", schema.UtcDateTime()),
)  # fmt: skip


def test_the_schema_step_upgrades_the_previous_version_keeping_endpoints(crm_url: str) -> None:
    step = schema.MIGRATIONS.index(schema._webhook_endpoints) + 1  # the version it makes
    engine = create_engine(crm_url)
    try:
        init_db(engine, target=step - 1)
        # Version 1 creates tables in their current shape: put back the old ones.
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE webhook_deliveries"))
            conn.execute(sa.text("DROP TABLE webhook_endpoints"))
            OLD.create_all(conn)
            conn.execute(OLD_ENDPOINTS.insert().values(
                tenant_id="t1", webhook_id="webhook-789", url=HOOK, secret=VECTOR_SECRET,
                event_types=["contact.*"], active=True, created_at=T0, updated_at=T0,
            ))  # fmt: skip
            conn.execute(OLD_DELIVERIES.insert().values(
                tenant_id="t1", endpoint_id=1, event_type="contact.created", payload={"id": 1},
                status="failed", attempts=3, response_status=502, error="HTTP 502",
                created_at=T0,
            ))  # fmt: skip
        assert not sa.inspect(engine).has_table("webhook_messages")
        assert init_db(engine) == (step - 1, schema.SCHEMA_VERSION)
        with engine.connect() as conn:
            assert current_version(conn) == schema.SCHEMA_VERSION
        inspector = sa.inspect(engine)
        assert {c.name for c in schema.webhook_endpoints.columns} == {
            c["name"] for c in inspector.get_columns("webhook_endpoints")
        }
        assert {c.name for c in schema.webhook_deliveries.columns} == {
            c["name"] for c in inspector.get_columns("webhook_deliveries")
        }
        assert inspector.has_table("webhook_messages")
        assert init_db(engine) == (schema.SCHEMA_VERSION, schema.SCHEMA_VERSION)
    finally:
        engine.dispose()
    svc = WebhookService(settings_for(crm_url))
    kept = svc.get("t1", "webhook-789")
    assert (kept.url, kept.secret, kept.event_types, kept.enabled) == (
        HOOK, VECTOR_SECRET, ("contact.*",), True
    )  # fmt: skip
    assert (kept.description, kept.disabled_reason, kept.consecutive_failures) == ("", None, 0)
    assert kept.created_at == T0 and kept.previous_secret is None and kept.probe_at is None
    [carried] = svc.deliveries("t1", "webhook-789")
    assert (carried.message_id, carried.attempt, carried.at, carried.succeeded) == (
        "legacy_1", 3, T0, False
    )  # fmt: skip
    assert (carried.status_code, carried.error, carried.webhook_id) == (
        502,
        "HTTP 502",
        kept.webhook_id,
    )
    svc.record_attempt(kept, failed())
    assert svc.deliveries("t1", "webhook-789")[0].status_code == 500
    assert [e.webhook_id for e in svc.subscribers("t1", "contact.updated")] == ["webhook-789"]


def test_webhook_settings_defaults_and_environment() -> None:
    rules = Settings().webhooks
    assert (rules.max_payload_bytes, rules.schedule, rules.retry_statuses) == (
        262144, "exponential", [408, 429]
    )  # fmt: skip
    assert (rules.breaker_failures, rules.disable_after_days, rules.keep_days) == (5, 5.0, 30.0)
    env = {"CRMQUEUE_WEBHOOKS__SCHEDULE": "0, 5,300", "CRMQUEUE_WEBHOOKS__RETRY_STATUSES": "429",
           "CRMQUEUE_WEBHOOKS__SECRET_BYTES": "64"}  # fmt: skip
    loaded = load_settings(environ=env).webhooks
    assert (loaded.schedule, loaded.retry_statuses, loaded.secret_bytes) == ([0, 5, 300], [429], 64)
    assert (
        load_settings(environ={"CRMQUEUE_WEBHOOKS__SCHEDULE": "SVIX"}).webhooks.schedule == "svix"
    )
    for key, value in (("SCHEDULE", "fast"), ("SECRET_BYTES", "16"), ("SCHEDULE", "-1")):
        with pytest.raises(Exception, match=f"webhooks.{key.lower()}"):
            load_settings(environ={f"CRMQUEUE_WEBHOOKS__{key}": value})


def test_service_is_cached_per_database_url(tmp_path: Path) -> None:
    settings = settings_for(f"sqlite:///{tmp_path}/crm.db")
    first = webhooks.service(settings)
    assert webhooks.service(settings) is first
    assert webhooks.service(settings.model_copy(deep=True)) is first  # equal settings
    changed = settings_for(f"sqlite:///{tmp_path}/crm.db", keep_days=1)
    assert webhooks.service(changed) is not first
    assert webhooks.service(changed).settings.webhooks.keep_days == 1


# --------------------------------------------------------------------------- delivery path


def test_concurrent_successes_are_all_logged_with_their_messages(svc: WebhookService) -> None:
    """Successes from many threads share commits (the log writer): every attempt is logged
    with its message once record_attempt returns, and one to a removed endpoint fails
    alone (EndpointNotFound) while the others in its batch are logged."""
    endpoint, _ = svc.add("t1", HOOK, webhook_id="busy")
    doomed, _ = svc.add("t1", HOOK, webhook_id="doomed")
    svc.record_attempt(doomed, failed("msg_before"), now=T0)
    svc.remove("t1", "doomed")
    errors: list[Exception] = []
    start = threading.Barrier(8)

    def deliver(worker: int) -> None:
        start.wait()
        for n in range(10):
            message = Message("t1", f"msg_{worker}_{n}", "contact.created", T0, {"n": n})
            target = doomed if (worker, n) == (3, 5) else endpoint
            try:
                svc.record_attempt(target, ok(message.message_id), message=message)
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [type(e) for e in errors] == [EndpointNotFound]
    logged = svc.deliveries("t1", "busy", limit=1000)
    assert sorted(d.message_id for d in logged) == sorted(
        f"msg_{w}_{n}" for w in range(8) for n in range(10) if (w, n) != (3, 5)
    )
    assert all(d.succeeded and d.status_code == 200 for d in logged)
    assert svc.message("t1", "msg_7_9").data == {"n": 9}
    assert svc.get("t1", "busy").consecutive_failures == 0


def test_a_success_resets_a_breaker_set_by_another_process(svc: WebhookService) -> None:
    endpoint, _ = svc.add("t1", HOOK, webhook_id="w")
    for second in range(3):
        svc.record_attempt(endpoint, failed(), now=T0 + dt.timedelta(seconds=second))
    assert svc.get("t1", "w").probe_at is not None
    svc.record_attempt(endpoint, ok("msg_2"))
    state = svc.get("t1", "w")
    assert (state.consecutive_failures, state.failing_since, state.probe_at) == (0, None, None)


def test_recent_endpoint_reads(svc: WebhookService) -> None:
    """recent() answers from this process's read for max_age seconds; a change this
    process makes applies at once, one made elsewhere (here: straight SQL) within max_age;
    an endpoint with a tripped breaker is never kept."""
    svc.add("t1", HOOK, webhook_id="w")
    first = svc.recent("t1", "w", max_age=60)
    assert first.enabled
    svc.disable("t1", "w", "by this process")
    assert svc.recent("t1", "w", max_age=60).disabled_reason == "by this process"
    svc.enable("t1", "w")
    assert svc.recent("t1", "w", max_age=60).enabled
    with svc.engine.begin() as conn:  # another process disables it
        conn.execute(
            sa.update(schema.webhook_endpoints)
            .where(schema.webhook_endpoints.c.tenant_id == "t1")
            .values(active=False, disabled_reason="elsewhere")
        )
    assert svc.recent("t1", "w", max_age=60).enabled  # the process's read, still young
    assert svc.recent("t1", "w", max_age=0.0).disabled_reason == "elsewhere"
    with pytest.raises(EndpointNotFound):
        svc.recent("t2", "w")
    svc.enable("t1", "w")
    endpoint = svc.recent("t1", "w", max_age=60)
    for second in range(3):
        svc.record_attempt(endpoint, failed(), now=T0 + dt.timedelta(seconds=second))
    tripped = svc.recent("t1", "w", max_age=60)
    assert tripped.probe_at is not None
    with svc.engine.begin() as conn:  # another process changes the failing endpoint
        conn.execute(
            sa.update(schema.webhook_endpoints)
            .where(schema.webhook_endpoints.c.tenant_id == "t1")
            .values(disabled_reason="seen at once")
        )
    assert svc.recent("t1", "w", max_age=60).disabled_reason == "seen at once"
