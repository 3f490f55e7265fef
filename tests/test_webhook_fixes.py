"""The webhook queue against what a hostile or broken receiver (or caller) can do (breaker
findings on branch webhook): the same real consumer, SQLite and Redis queue storage, and
SQLite and PostgreSQL CRM stores where the database matters; a loopback receiver.

Covered: text no database can store in an answer (NUL, lone surrogates) and a log that
cannot be written never turn into resends; event types longer than the log's columns
are refused at enqueue; a receiver dripping its body is cut off at the attempt's
deadline and counted; receiver headers the classifier reads never crash it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import crm_db
import pytest
import sqlalchemy as sa
from test_webhook_delivery import TENANT, add, finished, log_rows, service
from test_webhook_delivery import receiver as receiver  # the loopback receiver fixture

from crmqueue import jobs, tasks, webhooks
from crmqueue.engine import Broker
from crmqueue.errors import PayloadError
from crmqueue.workers import webhook as worker
from tests.webhook_receiver import Plan, WebhookReceiver

crm_url = crm_db.crm_url
pg_url = crm_db.pg_url

DATA = {"id": "contact-123", "name": "John Doe"}
FAST = {
    "outbound.allowed_networks": ["127.0.0.0/8"],
    "queues.webhook.attempts": 3,
    "queues.webhook.timeout_seconds": 10,
    "webhooks.schedule": [0.05],
    "webhooks.connect_timeout_seconds": 1.0,
    "webhooks.read_timeout_seconds": 1.0,
}


@pytest.fixture
def setup(
    make_broker: Callable[..., Broker], start_consumer: Callable[..., Any], crm_url: str
) -> Callable[..., Broker]:
    """setup({...overrides}): a broker on this test's queue storage and CRM database,
    allowing loopback receivers, with short timeouts and three attempts, consuming the
    webhook queue."""

    def make(overrides: dict[str, Any] | None = None, consumer: bool = True) -> Broker:
        broker = make_broker({**FAST, "database.url": crm_url, **(overrides or {})})
        if consumer:
            start_consumer(broker, ["webhook"])
        return broker

    return make


def deliver(webhook_id: str, event_type: str = "contact.created") -> jobs.Job:
    return tasks.deliver_webhook(
        tenant_id=TENANT, webhook_id=webhook_id, event_type=event_type, payload=DATA
    )


# --------------------------------------------------------------------------- finding 1


def test_an_answer_with_nul_or_a_lone_surrogate_is_logged_once_not_resent(
    setup: Callable[..., Broker], receiver: WebhookReceiver
) -> None:
    setup()
    secret = add(receiver.url("/ok"), "ok")
    hook = receiver.endpoint("/ok", secret, Plan(200, body=b"ok\x00done \xed\xa0\xbd"))
    info = finished(deliver("ok"))
    assert info.state == "completed" and info.attempts == 1, info.errors
    assert len(hook.received()) == 1
    (row,) = log_rows("ok")
    assert row.succeeded and row.response_excerpt.startswith("ok\ufffddone ")
    assert "\x00" not in row.response_excerpt

    # A failing answer quoting NUL: logged and counted by the breaker at every attempt.
    secret = add(receiver.url("/bad"), "bad")
    bad = receiver.endpoint("/bad", secret, Plan(500, body=b"\x00\x00oops\x00"))
    info = finished(deliver("bad"))
    assert info.state == "dead" and info.attempts == 3
    assert len(bad.received()) == 3
    rows = log_rows("bad")
    assert [(r.succeeded, r.status_code) for r in rows] == [(False, 500)] * 3
    assert all("\x00" not in (r.error or "") + r.response_excerpt for r in rows)
    assert "oops" in (rows[0].error or "")
    assert service().get(TENANT, "bad").consecutive_failures == 3


def test_record_attempt_stores_unstorable_text_of_any_field(crm_url: str) -> None:
    settings = crm_db_settings(crm_url)
    svc = webhooks.WebhookService(settings)
    endpoint, _ = svc.add(TENANT, "http://127.0.0.1:9/x", webhook_id="w")
    attempt = webhooks.Attempt(
        message_id="msg_1", event_type="contact.created", job_id="j1", attempt=1,
        succeeded=False, status_code=None, latency_ms=1,
        response_excerpt="a\x00b\udc80c", error="timed out \x00 \ud83d",
    )  # fmt: skip
    svc.record_attempt(endpoint, attempt)
    (row,) = svc.deliveries(TENANT, "w")
    assert (row.response_excerpt, row.error) == ("a\ufffdb\ufffdc", "timed out \ufffd \ufffd")


def crm_db_settings(url: str) -> Any:
    from crmqueue.config import Settings

    return Settings.model_validate(
        {"database": {"url": url}, "outbound": {"allowed_networks": ["127.0.0.0/8"]}}
    )


def test_a_delivered_message_whose_log_cannot_be_written_is_not_resent(
    setup: Callable[..., Broker], receiver: WebhookReceiver
) -> None:
    setup()
    secret = add(receiver.url("/ok"), "ok")
    hook = receiver.endpoint("/ok", secret)
    engine = service().engine
    with engine.begin() as conn:  # the log table gone: every write of a row fails
        conn.execute(sa.text("ALTER TABLE webhook_deliveries RENAME TO moved_deliveries"))
    info = finished(deliver("ok"))
    assert info.state == "completed" and info.attempts == 1, info.errors
    assert len(hook.received()) == 1
    assert "delivery log could not be written" in info.result["warning"]


# --------------------------------------------------------------------------- finding 2


def test_event_types_and_ids_wider_than_the_log_columns_are_refused_at_enqueue(
    setup: Callable[..., Broker], receiver: WebhookReceiver
) -> None:
    broker = setup()
    too_long = "a." + "b" * 150
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("event_type", lambda: deliver("w", event_type=too_long)),
        ("event_type", lambda: tasks.publish_event(
            tenant_id=TENANT, event_type=too_long, payload=DATA)),
        ("event_type", lambda: tasks.enqueue(
            "webhook", {"tenantId": TENANT, "eventType": too_long, "payload": {}},
            kind="publish")),
        ("webhook_id", lambda: tasks.deliver_webhook(
            tenant_id=TENANT, webhook_id="w" * 65, event_type="a.b", payload=DATA)),
    ]  # fmt: skip
    for field, call in calls:
        with pytest.raises(PayloadError) as caught:
            call()
        assert [f for f, _ in caught.value.errors] == [field], caught.value.errors
    assert broker.queue("webhook").store.counts()["waiting"] == 0
    # The widest accepted type (the columns' 100 characters) is delivered, logged, stored.
    widest = "a." + "b" * 98
    secret = add(receiver.url("/ok"), "ok")
    hook = receiver.endpoint("/ok", secret)
    info = finished(tasks.publish_event(tenant_id=TENANT, event_type=widest, payload=DATA))
    assert info.state == "completed" and info.result["deliveries"] == 1, info.errors
    assert finished(jobs.Job(info.result["jobs"][0], "webhook")).state == "completed"
    assert [r.json()["type"] for r in hook.received()] == [widest]
    (row,) = log_rows("ok")
    assert row.event_type == widest
    assert service().message(TENANT, info.result["message_id"]).event_type == widest


# --------------------------------------------------------------------------- finding 3


@pytest.fixture
def setup_lite(
    make_broker: Callable[..., Broker], start_consumer: Callable[..., Any]
) -> Callable[..., Broker]:
    """As setup, on the default SQLite CRM store (for rules the CRM database does not
    touch): both queue storages."""

    def make(overrides: dict[str, Any] | None = None) -> Broker:
        broker = make_broker({**FAST, **(overrides or {})})
        start_consumer(broker, ["webhook"])
        return broker

    return make


@pytest.mark.parametrize("drip_headers", [False, True], ids=["body", "headers"])
def test_an_answer_dripping_in_is_cut_off_at_the_attempts_deadline_and_counted(
    setup_lite: Callable[..., Broker], receiver: WebhookReceiver, drip_headers: bool
) -> None:
    """A byte every 0.2 s never trips the 0.5 s read timeout; the attempt's deadline
    (connect + read timeouts: 1 s) ends it, logged and counted as a failure."""
    setup_lite(
        {
            "queues.webhook.attempts": 2,
            "webhooks.connect_timeout_seconds": 0.5,
            "webhooks.read_timeout_seconds": 0.5,
        }
    )
    secret = add(receiver.url("/slow"), "slow")
    plan = Plan(200, body=b"x" * 1000, drip=0.2, drip_headers=drip_headers)
    hook = receiver.endpoint("/slow", secret, plan)
    began = time.monotonic()
    info = finished(deliver("slow"))
    assert info.state == "dead" and info.attempts == 2, info.errors
    assert time.monotonic() - began < 8  # not 2 x 200 s, nor the queue's time limit
    assert len(hook.received()) == 2
    rows = log_rows("slow")
    assert [(r.succeeded, r.status_code) for r in rows] == [(False, None)] * 2
    for row in rows:
        assert "did not finish answering within 1 s" in (row.error or ""), row.error
        assert 900 <= row.latency_ms < 3000
    assert "did not finish answering" in info.errors[-1]["message"]
    assert service().get(TENANT, "slow").consecutive_failures == 2


def test_a_deadline_leaves_quick_answers_and_other_callers_alone(
    receiver: WebhookReceiver,
) -> None:
    """guarded_request(deadline=) with a quick answer: the answer, and the kept-alive
    connection reused untouched afterwards (the watchdog never fires on it)."""
    import ipaddress

    from crmqueue.providers import http

    receiver.endpoint("/quick", (), Plan(200, body=b"fine"))
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    url = receiver.url("/quick")
    for _ in range(3):
        answer = http.guarded_request(
            "POST", url, allowed_networks=loopback, body=b"{}", deadline=0.3
        )
        assert (answer.status, answer.data) == (200, b"fine")
    time.sleep(0.4)  # past every deadline above: a late watchdog would break the next
    answer = http.guarded_request("POST", url, allowed_networks=loopback, body=b"{}")
    assert (answer.status, answer.data) == (200, b"fine")


# --------------------------------------------------------------------------- finding 4

MALFORMED_HEADERS = [
    {"Location": "http://[zz"},
    {"Location": "http://[::1"},
    {"Location": "https://a b/\x7f"},
    {"Location": "//" + "x" * 5000},
    {"Retry-After": "Mon, 01 Jan 99999 00:00:00 GMT"},
    {"Retry-After": "Mon, 32 Jan 2020 00:00:00 GMT"},
    {"Retry-After": "Mon, 01 Jan 2020 99:00:00 +9999"},
    {"Retry-After": "Mon, 01 Jan 0001 00:00:00 +2359"},
    {"webhook-delivery": "\x00disable\x7f"},
]


def test_the_classifier_never_raises_on_receiver_headers() -> None:
    from crmqueue.providers.http import Response

    for headers in MALFORMED_HEADERS:
        for status in (200, 301, 302, 308, 400, 429, 503):
            outcome = worker.classify(Response(status, headers, b"x"), "w", frozenset({429}), [])
            assert outcome.action in ("ok", "retry", "permanent"), (status, headers)
            if 300 <= status < 400:
                assert outcome.action == "permanent"
                assert "redirects are not followed" in (outcome.error or "")
            assert outcome.delay is None or 0 <= outcome.delay <= 3600


def test_a_malformed_redirect_fails_once_logged_and_counted(
    setup_lite: Callable[..., Broker], receiver: WebhookReceiver
) -> None:
    setup_lite()
    secret = add(receiver.url("/moved"), "moved")
    hook = receiver.endpoint("/moved", secret, Plan(302, headers={"Location": "http://[zz"}))
    info = finished(deliver("moved"))
    assert info.state == "dead" and info.attempts == 1, info.errors
    assert "redirects are not followed" in info.errors[-1]["message"]
    assert len(hook.received()) == 1
    (row,) = log_rows("moved")
    assert (row.succeeded, row.status_code) == (False, 302)
    assert "redirects are not followed" in (row.error or "")
    assert service().get(TENANT, "moved").consecutive_failures == 1
    # A garbled Retry-After date on a retryable answer: the schedule, not a crash.
    secret = add(receiver.url("/busy"), "busy")
    odd = {"Retry-After": "Mon, 01 Jan 99999 00:00:00 GMT"}
    busy = receiver.endpoint("/busy", secret, Plan(503, headers=odd), Plan(200))
    info = finished(deliver("busy"))
    assert info.state == "completed" and info.attempts == 2, info.errors
    assert len(busy.received()) == 2
    assert [r.status_code for r in log_rows("busy")] == [503, 200]


def test_an_import_download_with_a_malformed_redirect_fails_permanently(
    receiver: WebhookReceiver, tmp_path: Any
) -> None:
    import ipaddress

    from crmqueue.errors import PermanentError
    from crmqueue.providers import http

    receiver.endpoint("/file.csv", (), Plan(302, headers={"Location": "http://[zz"}))
    with pytest.raises(PermanentError, match="redirects are not followed"):
        http.download(
            receiver.url("/file.csv"),
            tmp_path / "file.csv",
            max_bytes=1000,
            allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        )
    assert not (tmp_path / "file.csv").exists()


# --------------------------------------------------------------------------- finding 5


def test_a_publish_retried_with_its_message_id_delivers_once(
    setup_lite: Callable[..., Broker], receiver: WebhookReceiver
) -> None:
    """A caller whose publish_event call failed after the job was enqueued (a storage
    timeout) publishes again with the same message_id: no endpoint gets it twice."""
    setup_lite()
    hooks = [receiver.endpoint(f"/{n}", add(receiver.url(f"/{n}"), n)) for n in ("a", "b")]
    first, again = (
        tasks.publish_event(
            tenant_id=TENANT, event_type="contact.created", payload=DATA, message_id="evt_42"
        )
        for _ in range(2)
    )
    assert first.id != again.id
    one, two = finished(first), finished(again)
    assert one.state == two.state == "completed"
    assert sorted(one.result["jobs"]) == sorted(two.result["jobs"])
    for delivery_id in one.result["jobs"]:
        assert finished(jobs.Job(delivery_id, "webhook")).state == "completed"
    assert [len(hook.received()) for hook in hooks] == [1, 1]
    assert {hook.received()[0].headers["webhook-id"] for hook in hooks} == {"evt_42"}
    # Without a message id of the caller's, two publishes are two messages.
    for _ in range(2):
        info = finished(
            tasks.publish_event(tenant_id=TENANT, event_type="contact.created", payload=DATA)
        )
        for delivery_id in info.result["jobs"]:
            assert finished(jobs.Job(delivery_id, "webhook")).state == "completed"
    assert [len(hook.received()) for hook in hooks] == [3, 3]


# --------------------------------------------------------------------------- finding 6


def test_retry_after_ignores_invalid_values_and_past_dates() -> None:
    """For every caller of providers.http.retry_after (webhooks, email vendors)."""
    import datetime as dt

    from crmqueue.providers import http

    now = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    for value in ("nan", "NaN", "inf", "-inf", "Infinity", "-0", "-5", "+5", "1e3", "²",
                  "5 s", "", " ", "0x10", "Thu, 01 Jan 2026 11:59:00 GMT",
                  "Thu, 01 Jan 2026 12:00:00 GMT", "Mon, 01 Jan 99999 00:00:00 GMT"):  # fmt: skip
        assert http.retry_after({"Retry-After": value}, now) is None, value
    assert http.retry_after({"Retry-After": "0"}, now) == 0.0
    assert http.retry_after({"Retry-After": " 7 "}, now) == 7.0
    assert http.retry_after({"Retry-After": "1.5"}, now) == 1.5
    assert http.retry_after({"Retry-After": "9" * 400}, now) == http.MAX_RETRY_AFTER
    assert http.retry_after({"Retry-After": "Thu, 01 Jan 2026 12:00:30 GMT"}, now) == 30.0


def test_an_invalid_retry_after_waits_for_the_schedule(
    setup_lite: Callable[..., Broker], receiver: WebhookReceiver
) -> None:
    setup_lite({"webhooks.schedule": [0.6]})
    secret = add(receiver.url("/busy"), "busy")
    plans = [Plan(503, headers={"Retry-After": v}) for v in ("nan", "-5")] + [Plan(200)]
    hook = receiver.endpoint("/busy", secret, *plans)
    info = finished(deliver("busy"))
    assert info.state == "completed" and info.attempts == 3, info.errors
    arrived = [r.monotonic for r in hook.received()]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrived)]
    assert len(gaps) == 2 and min(gaps) >= 0.55, gaps  # the schedule's 0.6 s, not 0 s


# --------------------------------------------------------------------------- finding 7


def test_a_url_password_is_masked_when_shown_and_sent_as_is(
    setup_lite: Callable[..., Broker], receiver: WebhookReceiver, caplog: Any
) -> None:
    import base64

    setup_lite()
    url = receiver.url("/hook").replace("http://", "http://alice:s3cr3tpw@")
    secret = add(url, "private")
    hook = receiver.endpoint("/hook", secret, Plan(500), Plan(200))
    info = finished(deliver("private"))
    assert info.state == "completed", info.errors
    sent = hook.received()[-1].headers["authorization"]
    assert base64.b64decode(sent.removeprefix("Basic ")) == b"alice:s3cr3tpw"
    endpoint = service().get(TENANT, "private")
    assert "s3cr3tpw" not in repr(endpoint) and "alice:********@" in repr(endpoint)
    assert "s3cr3tpw" not in str(info.errors) + str(info.result) + caplog.text
    assert all("s3cr3tpw" not in (r.error or "") for r in log_rows("private"))


# --------------------------------------------------------------------------- finding 9

BAD_VALUES: list[tuple[Any, str]] = [
    (b"\xff", "is not JSON text"),
    ([1, b"\xfe\x00"], "is not JSON text"),
    (10**400, "beyond what JSON parsers agree on"),
    (-(2**53), "beyond what JSON parsers agree on"),
    (10**5000, "beyond what JSON parsers agree on"),
]


@pytest.mark.parametrize(
    ("value", "reason"), BAD_VALUES, ids=["bytes", "nested-bytes", "1e400", "-2^53", "1e5000"]
)
def test_bytes_and_integers_json_parsers_disagree_on_are_refused_in_every_queue(
    broker: Broker, value: Any, reason: str
) -> None:
    """Every queue's typed payloads (and bytes by name too): a PayloadError naming the
    field, never a raw UnicodeDecodeError, and no number a receiver would round or
    refuse."""
    calls: list[tuple[str, Callable[[Any], Any]]] = [
        ("payload.x", lambda v: deliver_with({"x": v})),
        ("payload.x", lambda v: tasks.publish_event(
            tenant_id=TENANT, event_type="a.b", payload={"x": v})),
        ("context.x", lambda v: tasks.enqueue(
            "email", {"tenantId": TENANT, "to": ["a@b.io"], "template": "welcome",
                      "context": {"x": v}})),
    ]  # fmt: skip
    if isinstance(value, bytes | list):  # by name (the engine's own check): bytes only
        calls.append(("blob.x", lambda v: tasks.enqueue(
            "report", {"tenant_id": TENANT, "blob": {"x": v}}, kind="myjobs.ping")))  # fmt: skip
    for field, call in calls:
        with pytest.raises(PayloadError) as caught:
            call(value)
        paths = [path for path, _ in caught.value.errors]
        assert paths and all(path.startswith(field) for path in paths), caught.value.errors
        assert reason in caught.value.errors[0][1]
    assert sum(broker.queue(q).store.counts()["waiting"] for q in ("webhook", "email")) == 0


def deliver_with(payload: dict[str, Any]) -> jobs.Job:
    return tasks.deliver_webhook(
        tenant_id=TENANT, webhook_id="w", event_type="a.b", payload=payload
    )


def test_integers_json_parsers_agree_on_are_kept_exactly(broker: Broker) -> None:
    edge = {"max": 2**53 - 1, "min": -(2**53 - 1), "digits": "12345678901234567890123"}
    job = tasks.publish_event(tenant_id=TENANT, event_type="a.b", payload=edge)
    assert jobs.get(job.id).payload["payload"] == edge
    email = tasks.enqueue(
        "email", {"tenantId": TENANT, "to": ["a@b.io"], "template": "welcome",
                  "context": {"first_name": "A", "login_url": "https://x.example/l", **edge}},
    )  # fmt: skip
    assert {k: jobs.get(email.id).payload["context"][k] for k in edge} == edge
