"""The test receiver itself: it accepts a correctly signed request with both reference
verifiers and rejects a wrong secret, a stale timestamp and a changed body (so the delivery
tests' verification can fail), and it answers per its plans. Requests are signed here with
the standardwebhooks library's own `sign`, independent of crmqueue."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import standardwebhooks
import urllib3

from tests.webhook_receiver import LIBRARIES, Plan, WebhookReceiver

BODY = b'{"type":"contact.created","timestamp":"2026-11-30T04:00:00.000Z","data":{"id":"c1"}}'


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signed_headers(
    secret: str, body: bytes = BODY, when: datetime | None = None, msg_id: str = "msg_1"
) -> dict[str, str]:
    when = when or datetime.now(UTC)
    signature = standardwebhooks.Webhook(secret).sign(msg_id, when, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def http() -> Iterator[urllib3.PoolManager]:
    with urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(5, 5)) as pool:
        yield pool


def post(
    http: urllib3.PoolManager, url: str, headers: dict[str, str], body: bytes = BODY
) -> urllib3.BaseHTTPResponse:
    return http.request("POST", url, body=body, headers=headers, redirect=False)


def test_a_correctly_signed_request_verifies_with_both_libraries(
    receiver: WebhookReceiver, http: urllib3.PoolManager
) -> None:
    secret = new_secret()
    hook = receiver.endpoint("/hook", secret)
    response = post(http, hook.url + "?x=1", signed_headers(secret))
    assert response.status == 200
    [seen] = receiver.wait_for(1, "/hook")
    assert (seen.method, seen.path, seen.body) == ("POST", "/hook", BODY)
    assert seen.headers["webhook-id"] == "msg_1"
    assert seen.verification == {"standardwebhooks": None, "svix": None}
    assert seen.verified
    assert seen.json()["data"] == {"id": "c1"}
    assert abs(seen.at - time.time()) < 5


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong secret", "No matching signature"),
        ("stale timestamp", "too old"),
        ("future timestamp", "too new"),
        ("changed body", "No matching signature"),
        ("no signature", "Missing required headers"),
    ],
)
def test_a_bad_signature_fails_with_both_libraries(
    receiver: WebhookReceiver, http: urllib3.PoolManager, case: str, expected: str
) -> None:
    secret = new_secret()
    hook = receiver.endpoint("/hook", secret)
    body = BODY
    if case == "wrong secret":
        headers = signed_headers(new_secret())
    elif case == "stale timestamp":
        headers = signed_headers(secret, when=datetime.now(UTC) - timedelta(minutes=10))
    elif case == "future timestamp":
        headers = signed_headers(secret, when=datetime.now(UTC) + timedelta(minutes=10))
    elif case == "changed body":
        headers = signed_headers(secret)
        body = BODY.replace(b"c1", b"c2")
    else:
        headers = {"content-type": "application/json"}
    post(http, hook.url, headers, body)
    [seen] = receiver.wait_for(1)
    assert not seen.verified
    assert set(seen.failures) == set(LIBRARIES)
    for library in LIBRARIES:
        assert expected in seen.failures[library], (library, seen.failures)


def test_rotation_one_of_several_signatures_is_enough(
    receiver: WebhookReceiver, http: urllib3.PoolManager
) -> None:
    old, new = new_secret(), new_secret()
    both = signed_headers(new)
    both["webhook-signature"] += " " + signed_headers(old)["webhook-signature"]
    only_old = receiver.endpoint("/old", old)
    only_new = receiver.endpoint("/new", new)
    stranger = receiver.endpoint("/other", new_secret())
    for hook in (only_old, only_new, stranger):
        post(http, hook.url, both)
    assert only_old.received()[0].verified
    assert only_new.received()[0].verified
    assert not stranger.received()[0].verified
    # a receiver that learns the new secret later (its secrets are a live list)
    stranger.secrets.append(new)
    post(http, stranger.url, both)
    assert [r.verified for r in stranger.received()] == [False, True]


def test_plans_are_answered_in_order_and_the_last_repeats(
    receiver: WebhookReceiver, http: urllib3.PoolManager
) -> None:
    secret = new_secret()
    hook = receiver.endpoint(
        "/flaky",
        secret,
        Plan(503, headers={"Retry-After": "7"}, body=b"busy"),
        Plan(200, headers={"webhook-delivery": "abort-message"}),
        Plan(301, headers={"Location": "http://example.com/"}),
    )
    gone = receiver.endpoint("/gone", secret, Plan(410, body=b"gone"))
    answers = [post(http, hook.url, signed_headers(secret)) for _ in range(4)]
    assert [a.status for a in answers] == [503, 200, 301, 301]
    assert answers[0].headers["Retry-After"] == "7" and answers[0].data == b"busy"
    assert answers[1].headers["webhook-delivery"] == "abort-message"
    assert answers[2].headers["Location"] == "http://example.com/"
    assert post(http, gone.url, signed_headers(secret)).status == 410
    assert post(http, receiver.url("/nowhere"), signed_headers(secret)).status == 404
    assert [r.path for r in receiver.received()] == ["/flaky"] * 4 + ["/gone", "/nowhere"]
    assert all(r.verified for r in hook.received())


def test_delay_and_hang(receiver: WebhookReceiver, http: urllib3.PoolManager) -> None:
    secret = new_secret()
    slow = receiver.endpoint("/slow", secret, Plan(204, delay=0.2))
    stuck = receiver.endpoint("/stuck", secret, Plan(hang=True))
    started = time.monotonic()
    assert post(http, slow.url, signed_headers(secret)).status == 204
    assert time.monotonic() - started >= 0.2
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        http.request("POST", stuck.url, body=BODY, headers=signed_headers(secret), timeout=0.3)
    assert stuck.received()[0].verified  # recorded on arrival, though never answered
    started = time.monotonic()
    receiver.close()  # releases the hanging handler at once
    assert time.monotonic() - started < 5
