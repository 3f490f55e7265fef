"""Edge cases of the admin HTTP API found by attacking it: secrets in job errors and
results, bodies the JSON parser refuses, SSE clients that go away, the failed-token limit
behind X-Forwarded-For. Over real HTTP on loopback (test_api's fixtures)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import crm_db
import httpx
import uvicorn
from conftest import free_port, wait_until
from test_api import Api, api, enqueue, make_api  # noqa: F401  (fixtures)

from crmqueue.engine import job

pg_url = crm_db.pg_url

SECRET_PAYLOAD = {
    "apiKey": "SEKRET-1",
    "nested": [{"client_secret": "SEKRET-2"}],
    "headers": {"Authorization": "Bearer SEKRET-3"},
    "credentials": "SEKRET-4",
    "private": {"Cookie": "SEKRET-5"},
}


@job("email")
def leaks_in_error(payload: dict[str, Any]) -> None:
    raise RuntimeError(f"provider refused {payload!r}")


@job("email")
def leaks_in_result(payload: dict[str, Any]) -> dict[str, Any]:
    return {"echo": payload, "message": f"sent with key {payload['apiKey']}"}


def test_secrets_never_in_job_views(api: Api, start_consumer: Any) -> None:  # noqa: F811
    failing = enqueue(api, "t1", "test_api_edges.leaks_in_error", payload=SECRET_PAYLOAD)
    echoing = enqueue(api, "t1", "test_api_edges.leaks_in_result", payload=SECRET_PAYLOAD)
    consumer = start_consumer(api.broker, ["email"])
    store = api.broker.queue("email").store
    wait_until(
        lambda: (
            store.get_job(failing)["state"] == "dead"
            and store.get_job(echoing)["state"] == "completed"
        ),
        message="both jobs to finish",
    )
    consumer.stop(2.0)
    for job_id in (failing, echoing):
        response = api.call("GET", f"/api/v1/admin/jobs/email/{job_id}", "tenant:t1")
        assert response.status_code == 200
        assert "SEKRET" not in response.text, response.text
    listed = api.call("GET", "/api/v1/admin/jobs/email?state=dead", "tenant:t1")
    assert listed.json()["items"] and "SEKRET" not in listed.text
    body = api.call("GET", f"/api/v1/admin/jobs/email/{failing}", "admin").json()
    # The error stays useful: its type, the masked text and the traceback's frames.
    assert body["errors"][0]["type"] == "RuntimeError"
    assert "provider refused" in body["errors"][0]["message"]
    assert "leaks_in_error" in body["errors"][0]["traceback"]
    assert body["payload"]["headers"]["Authorization"] == "********"
    assert body["payload"]["private"]["Cookie"] == "********"


def test_huge_body_is_413_before_it_is_read(make_api: Any) -> None:  # noqa: F811
    small_api = make_api({"api.max_body_bytes": 10_000})
    token = {"Authorization": f"Bearer {small_api.tokens['tenant:t1']}"}
    payload = {"tenant_id": "t1", "to": "a@example.com", "template": "welcome"}
    big = {**payload, "subject": "x" * 20_000}
    response = httpx.post(small_api.url + "/api/v1/jobs/email", json=big, headers=token)
    assert response.status_code == 413, response.text
    assert "max_body_bytes" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes are counted
        yield b'{"tenant_id": "t1", "subject": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"}'

    response = httpx.post(
        small_api.url + "/api/v1/jobs/email",
        content=chunks(),
        headers={**token, "content-type": "application/json"},
    )
    assert response.status_code == 413, response.text
    assert small_api.broker.queue("email").store.counts()["waiting"] == 0
    small = httpx.post(small_api.url + "/api/v1/jobs/email", json=payload, headers=token)
    assert small.status_code == 201, small.text


def test_bodies_the_json_parser_refuses_are_422(api: Api) -> None:  # noqa: F811
    token = {
        "Authorization": f"Bearer {api.tokens['tenant:t1']}",
        "content-type": "application/json",
    }
    for body in (
        '{"tenant_id": "t1", "context": {"n": ' + "9" * 5000 + "}}",  # over int digits limit
        '{"tenant_id": "t1", "context": ' + "[" * 100_000 + "]" * 100_000 + "}",  # too deep
        b'{"tenant_id": "t1", "subject": "\xff\xfe"}',  # not UTF-8
    ):
        response = httpx.post(api.url + "/api/v1/jobs/email", content=body, headers=token)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "body"


def test_secret_query_parameters_of_endpoint_urls_are_masked(api: Api) -> None:  # noqa: F811
    """Receivers that authenticate by URL (?token=, ?api_key=, ?sig=) get it sent as is;
    the API's add answer, listing and show mask those values."""
    url = "https://127.0.0.1:9/hook?team=ops&token=QSEKRET-1&api_key=QSEKRET-2&sig=QSEKRET-3#x"
    added = api.call("POST", "/api/v1/webhooks", "tenant:t1", json={"url": url})
    assert added.status_code == 201, added.text
    webhook_id = added.json()["endpoint"]["webhook_id"]
    shown = added.json()["endpoint"]["url"]
    assert shown == (
        "https://127.0.0.1:9/hook?team=ops&token=********&api_key=********&sig=********#x"
    )
    for response in (
        added,
        api.call("GET", "/api/v1/webhooks", "tenant:t1"),
        api.call("GET", f"/api/v1/webhooks/{webhook_id}", "tenant:t1"),
        api.call("GET", "/api/v1/webhooks?tenant_id=t1", "admin"),
    ):
        assert response.status_code == 200 or response.status_code == 201
        assert "QSEKRET" not in response.text, response.text
    from crmqueue.webhooks import service

    assert service(api.broker.settings).get("t1", webhook_id).url == url  # sent as given


def _served(settings: Any) -> tuple[str, Any, threading.Thread]:
    """The app served with the uvicorn settings `crmqueue api` uses (crmqueue.api.server)."""
    from crmqueue.api.app import create_app
    from crmqueue.api.server import uvicorn_config

    port = free_port()
    server = uvicorn.Server(uvicorn_config(create_app(), settings, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, message="uvicorn to start")
    return f"http://127.0.0.1:{port}", server, thread


def _stats_codes(url: str, spoof: bool) -> list[int]:
    return [
        httpx.get(
            url + "/api/v1/admin/jobs/stats",
            headers={"Authorization": "Bearer cq_wrong"}
            | ({"X-Forwarded-For": f"203.0.113.{i}"} if spoof else {}),
        ).status_code
        for i in range(5)
    ]


def test_forwarded_for_cannot_dodge_the_failed_token_limit(make_broker: Any) -> None:
    """A client that sends its own X-Forwarded-For (through a TCP-level TLS proxy on this
    host, say) is not another address unless [api] trusted_proxies says so."""
    broker = make_broker({"api.auth_failures_per_minute": 3})
    url, server, thread = _served(broker.settings)
    try:
        assert _stats_codes(url, spoof=True) == [401, 401, 401, 429, 429]
    finally:
        server.should_exit = True
        thread.join(5)
    broker = make_broker({"api.auth_failures_per_minute": 3, "api.trusted_proxies": ["127.0.0.1"]})
    url, server, thread = _served(broker.settings)
    try:  # behind a trusted proxy each forwarded address has its own budget
        assert _stats_codes(url, spoof=True) == [401] * 5
    finally:
        server.should_exit = True
        thread.join(5)


def test_no_token_for_the_no_tenant_marker() -> None:
    """Jobs without a (valid) tenant, such as Huey tasks and periodic tasks, are stored
    with tenant "-"; "-" is a valid tenant id, so a tenant:- token would have seen,
    retried and removed all of them. No such role can be configured."""
    import pytest

    from crmqueue.api.auth import TokenTable, parse_role
    from crmqueue.errors import ConfigError

    for text in ("tenant:-", "tenant:-:user:u1"):
        with pytest.raises(ValueError, match="jobs without a tenant"):
            parse_role(text)
    with pytest.raises(ConfigError, match=r"api\.tokens\[0\]"):
        TokenTable(["tenant:-=sha256:" + "0" * 64])
    assert parse_role("tenant:a-b").tenant == "a-b"


def test_stream_delivers_a_notification_committed_after_a_newer_one(
    pg_url: str,  # first: the database outlives the server
    make_api: Any,  # noqa: F811
) -> None:
    """PostgreSQL hands out ids at insert, so two workers' notifications can commit out
    of id order: the stream must not skip the lower id that commits second."""
    import datetime as dt
    import json

    from crmqueue import notifications
    from crmqueue.crm import schema
    from crmqueue.crm.store import get_engine, init_db

    api = make_api({"database.url": pg_url, "api.stream_poll_seconds": 0.05})  # noqa: F811
    engine = get_engine(pg_url)
    init_db(engine)
    events: list[dict[str, Any]] = []
    opened = threading.Event()

    def listen() -> None:
        headers = {"Authorization": f"Bearer {api.tokens['tenant:t1:user:u1']}"}
        url = api.url + "/api/v1/notifications/stream"
        with httpx.stream("GET", url, headers=headers, timeout=20) as response:
            for line in response.iter_lines():
                opened.set()  # "retry: 1000": the stream's starting point is taken
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if len(events) == 2:
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    wait_until(opened.is_set, message="the stream to open")
    slow = engine.connect()
    slow_tx = slow.begin()
    row = {"tenant_id": "t1", "user_id": "u1", "type": "in-app", "title": "first",
           "message": "committed last", "created_at": dt.datetime.now(dt.UTC)}  # fmt: skip
    first_id = slow.execute(schema.notifications.insert().values(**row)).inserted_primary_key[0]
    second_id = notifications.store("t1", "u1", title="second", message="m", engine=engine)
    assert second_id > first_id
    wait_until(lambda: len(events) == 1, message="the second notification on the stream")
    slow_tx.commit()
    slow.close()
    wait_until(lambda: len(events) == 2, timeout=5, message="the first, committed later")
    listener.join(5)
    assert [e["id"] for e in events] == [second_id, first_id]
