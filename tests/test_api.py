"""The admin HTTP API (issue #15) over real HTTP on loopback: every route by role (admin,
right tenant, other tenant, user, no token) on SQLite and Redis, masking, the failed-token
limit, pause/resume, and /metrics parsed with prometheus-client's parser."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from conftest import free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families

from crmqueue.api.app import create_app
from crmqueue.api.auth import config_line, new_token, parse_role

ROLES = ("admin", "tenant:t1", "tenant:t2", "tenant:t1:user:u1")


@dataclass
class Api:
    url: str
    tokens: dict[str, str]  # role -> token
    broker: Any
    server: uvicorn.Server

    def call(
        self, method: str, path: str, role: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if role is not None:
            headers["Authorization"] = f"Bearer {self.tokens[role]}"
        return httpx.request(method, self.url + path, headers=headers, timeout=10, **kwargs)


def serve_app(app: Any) -> tuple[str, uvicorn.Server, threading.Thread]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, message="uvicorn to start")
    return f"http://127.0.0.1:{port}", server, thread


@pytest.fixture
def make_api(make_broker: Callable[..., Any]) -> Iterator[Callable[..., Api]]:
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def make(overrides: dict[str, Any] | None = None) -> Api:
        tokens = {role: new_token() for role in ROLES}
        settings_overrides = {
            "api.tokens": [config_line(parse_role(r), t) for r, t in tokens.items()],
            "outbound.allowed_networks": ["127.0.0.0/8"],
            "queues.email.attempts": 1,
            **(overrides or {}),
        }
        broker = make_broker(settings_overrides)
        url, server, thread = serve_app(create_app())
        running.append((server, thread))
        return Api(url, tokens, broker, server)

    yield make
    for server, thread in running:
        server.should_exit = True
        thread.join(5)


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


def statuses(api: Api, method: str, path: str, **kwargs: Any) -> dict[str | None, int]:
    """The status each role (None: no token) gets for one call."""
    return {role: api.call(method, path, role, **kwargs).status_code for role in (*ROLES, None)}


def enqueue(api: Api, tenant: str, name: str = "tests.fixture_jobs.noop", **options: Any) -> str:
    queue = api.broker.queue("email")
    return str(queue.enqueue(name, {"tenant_id": tenant, **options.pop("payload", {})}, **options))


def dead_job(api: Api, start_consumer: Callable[..., Any], tenant: str) -> str:
    job_id = enqueue(api, tenant, "tests.fixture_jobs.always_fail")
    consumer = start_consumer(api.broker, ["email"])
    store = api.broker.queue("email").store
    wait_until(lambda: store.get_job(job_id)["state"] == "dead", message="the job to die")
    consumer.stop(2.0)
    return job_id


def test_admin_only_routes_by_role(api: Api) -> None:
    for method, path in (
        ("GET", "/api/v1/admin/jobs/stats"),
        ("POST", "/api/v1/admin/queues/report/pause"),
        ("POST", "/api/v1/admin/queues/report/resume"),
        ("GET", "/metrics"),
    ):
        got = statuses(api, method, path)
        assert got == {
            "admin": 200, "tenant:t1": 403, "tenant:t2": 403, "tenant:t1:user:u1": 403, None: 401
        }, (method, path)  # fmt: skip
    got = statuses(api, "POST", "/api/v1/admin/jobs/email-test", json={"to": "ops@example.com"})
    assert got == {
        "admin": 200, "tenant:t1": 403, "tenant:t2": 403, "tenant:t1:user:u1": 403, None: 401
    }  # fmt: skip
    # Health: no consumer is running, so the verdict is error: 503 with the CLI's JSON.
    response = api.call("GET", "/api/v1/admin/jobs/health", "admin")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error" and len(body["queues"]) == 5
    assert set(body) == {"status", "timestamp", "queues", "error", "last_check"}
    assert api.call("GET", "/api/v1/admin/jobs/health", "tenant:t1").status_code == 403
    assert api.call("GET", "/healthz").json() == {"status": "ok"}


def test_health_is_200_with_a_live_consumer_for_every_queue(api: Api) -> None:
    for queue in api.broker.queues.values():
        queue.store.heartbeat("test-consumer", 1, 60)
    response = api.call("GET", "/api/v1/admin/jobs/health", "admin")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "healthy"


def test_stats_show_paused_and_the_cli_pauses_too(api: Api, tmp_path: Any) -> None:
    from crmqueue.cli import main

    stats = api.call("GET", "/api/v1/admin/jobs/stats", "admin").json()
    assert [row["queue"] for row in stats] == list(api.broker.queues)
    assert not any(row["paused"] for row in stats)
    assert api.call("POST", "/api/v1/admin/queues/email/pause", "admin").json() == {
        "queue": "email", "paused": True
    }  # fmt: skip
    stats = api.call("GET", "/api/v1/admin/jobs/stats", "admin").json()
    assert [row["paused"] for row in stats] == [True, False, False, False, False]
    config = tmp_path / "cli.toml"
    config.write_text(f'[storage]\nurl = "{api.broker.settings.storage.url}"\n')
    runner = CliRunner()
    result = runner.invoke(main, ["queues", "resume", "email", "--config", str(config)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["queues", "pause", "report", "--config", str(config)])
    assert result.exit_code == 0, result.output
    stats = api.call("GET", "/api/v1/admin/jobs/stats", "admin").json()
    assert [row["paused"] for row in stats] == [False, False, True, False, False]


def test_job_routes_by_role(api: Api, start_consumer: Callable[..., Any]) -> None:
    dead = dead_job(api, start_consumer, "t1")
    path = f"/api/v1/admin/jobs/email/{dead}"
    assert statuses(api, "GET", path) == {
        "admin": 200, "tenant:t1": 200, "tenant:t2": 404, "tenant:t1:user:u1": 403, None: 401
    }  # fmt: skip
    assert api.call("GET", f"/api/v1/admin/jobs/report/{dead}", "admin").status_code == 404
    assert api.call("GET", "/api/v1/admin/jobs/email/nope", "admin").status_code == 404
    view = api.call("GET", path, "tenant:t1").json()
    assert view["state"] == "dead" and view["errors"][-1]["type"] == "RuntimeError"
    # Retry: refused to the others first, then the owner; the admin then finds it waiting.
    for role, status in (("tenant:t2", 404), ("tenant:t1:user:u1", 403), (None, 401)):
        assert api.call("POST", path + "/retry", role).status_code == status
    response = api.call("POST", path + "/retry", "tenant:t1")
    assert response.status_code == 200 and response.json()["state"] == "waiting"
    assert api.call("POST", path + "/retry", "admin").status_code == 409
    # Remove: the same order; a removed job is gone for everyone.
    for role, status in (("tenant:t2", 404), ("tenant:t1:user:u1", 403), (None, 401)):
        assert api.call("DELETE", path, role).status_code == status
    response = api.call("DELETE", path, "tenant:t1")
    assert response.status_code == 200 and response.json()["state"] == "removed"
    assert api.call("DELETE", path, "admin").status_code == 404


def test_job_lists_are_paged_filtered_and_scoped_by_tenant(api: Api) -> None:
    t1 = [enqueue(api, "t1", delay=3600) for _ in range(5)]
    t2 = [enqueue(api, "t2", delay=3600) for _ in range(3)]
    base = "/api/v1/admin/jobs/email?state=scheduled"

    def ids(role: str, query: str = "") -> list[str]:
        found, cursor = [], None
        while True:
            page = api.call("GET", base + query + (f"&cursor={cursor}" if cursor else ""), role)
            assert page.status_code == 200, page.text
            body = page.json()
            found += [item["id"] for item in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                return found

    assert sorted(ids("admin", "&limit=2")) == sorted(t1 + t2)
    assert sorted(ids("admin", "&tenant=t2&limit=2")) == sorted(t2)
    assert sorted(ids("tenant:t1", "&limit=3")) == sorted(t1)
    assert ids("tenant:t2", "&tenant=t1") == []  # another tenant's: nothing, not an error
    assert ids("tenant:t1", f"&id={t2[0]}") == []
    assert ids("admin", f"&id={t2[0]}") == [t2[0]]
    assert ids("tenant:t1", f"&id={t1[1][:12]}") == [t1[1]]  # the start of an id
    assert api.call("GET", base, "tenant:t1:user:u1").status_code == 403
    assert api.call("GET", base).status_code == 401
    assert api.call("GET", base + "&cursor=x", "admin").status_code == 422
    assert api.call("GET", "/api/v1/admin/jobs/email?state=lost", "admin").status_code == 422


def test_dead_replay_is_scoped_by_tenant(api: Api, start_consumer: Callable[..., Any]) -> None:
    first = dead_job(api, start_consumer, "t1")
    second = dead_job(api, start_consumer, "t2")
    path = "/api/v1/admin/jobs/email/dead/replay"
    assert api.call("POST", path, "tenant:t1:user:u1").status_code == 403
    assert api.call("POST", path).status_code == 401
    assert api.call("POST", path, "tenant:t1").json() == {"queue": "email", "replayed": [first]}
    assert api.call("POST", path, "admin").json() == {"queue": "email", "replayed": [second]}


def test_enqueue_validates_as_tasks_and_scopes_the_tenant(api: Api) -> None:
    path = "/api/v1/jobs/email"
    good = {"tenant_id": "t1", "to": "a@example.com", "subject": "Hi", "template": "welcome"}
    for role, status in (
        ("admin", 201), ("tenant:t1", 201), ("tenant:t2", 403), ("tenant:t1:user:u1", 403),
        (None, 401),
    ):  # fmt: skip
        assert api.call("POST", path, role, json=good).status_code == status, role
    created = api.call("POST", path + "?priority=5", "tenant:t1", json=good).json()
    info = api.call("GET", f"/api/v1/admin/jobs/email/{created['id']}", "tenant:t1").json()
    assert info["state"] == "waiting" and info["tenant"] == "t1"
    assert "a@example.com" in str(info["payload"]["to"])
    bad = api.call("POST", path, "admin", json={"tenant_id": "t 1", "to": "nobody", "extra": 1})
    assert bad.status_code == 422
    fields = {error["field"] for error in bad.json()["errors"]}
    assert {"tenant_id", "to", "template", "extra"} <= fields, bad.json()
    not_object = api.call("POST", path, "admin", json=[1, 2])
    assert not_object.status_code == 422 and not_object.json()["errors"]


def test_secret_looking_payload_fields_are_masked(api: Api) -> None:
    payload = {
        "api_key": "k-123", "nested": {"Password": "pw", "clientSecret": "s", "ok": "shown"},
        "items": [{"refresh_token": "t"}], "note": "visible",
    }  # fmt: skip
    job_id = enqueue(api, "t1", payload=payload, delay=3600)
    view = api.call("GET", f"/api/v1/admin/jobs/email/{job_id}", "admin").json()
    assert view["payload"] == {
        "tenant_id": "t1", "api_key": "********", "note": "visible",
        "nested": {"Password": "********", "clientSecret": "********", "ok": "shown"},
        "items": [{"refresh_token": "********"}],
    }  # fmt: skip
    listed = api.call("GET", "/api/v1/admin/jobs/email?state=scheduled", "admin").json()
    assert listed["items"][0]["payload"]["api_key"] == "********"
    assert "k-123" not in api.call("DELETE", f"/api/v1/admin/jobs/email/{job_id}", "admin").text


def test_wrong_tokens_are_401_and_then_rate_limited(make_api: Callable[..., Api]) -> None:
    api = make_api({"api.auth_failures_per_minute": 3})
    path = "/api/v1/admin/jobs/stats"
    wrong = {"Authorization": "Bearer cq_wrong"}
    for _ in range(3):
        response = api.call("GET", path, headers=wrong)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
    limited = api.call("GET", path, headers=wrong)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    # The limit is per address: even the right token waits (no guessing in the meantime).
    assert api.call("GET", path, "admin").status_code == 429


def test_notifications_of_the_calling_user(api: Api) -> None:
    from crmqueue import notifications
    from crmqueue.crm.store import get_engine

    engine = get_engine(api.broker.settings.database.url)
    mine = notifications.store("t1", "u1", title="Hello", message="first", engine=engine)
    notifications.store("t1", "u2", title="Other user", message="x", engine=engine)
    notifications.store("t2", "u1", title="Other tenant", message="x", engine=engine)

    def titles(role: str | None, query: str = "") -> Any:
        response = api.call("GET", "/api/v1/notifications" + query, role)
        if response.status_code != 200:
            return response.status_code
        return [item["title"] for item in response.json()["items"]]

    assert titles("tenant:t1:user:u1") == ["Hello"]
    assert titles("tenant:t1:user:u1", "?user_id=u2") == 404  # another user's inbox
    assert titles("tenant:t1", "?user_id=u1") == ["Hello"]
    assert titles("tenant:t2", "?user_id=u1") == ["Other tenant"]
    assert titles("tenant:t2", "?user_id=u1&tenant_id=t1") == 404
    assert titles("admin", "?tenant_id=t1&user_id=u2") == ["Other user"]
    assert titles("admin", "?user_id=u2") == 422  # which tenant?
    assert titles("tenant:t1") == 422  # which user?
    assert titles(None) == 401
    count = "/api/v1/notifications/unread-count"
    assert api.call("GET", count, "tenant:t1:user:u1").json() == {"unread": 1}
    read = f"/api/v1/notifications/{mine}/read"
    assert api.call("POST", read, "tenant:t2", params={"user_id": "u1"}).status_code == 404
    assert api.call("POST", read).status_code == 401
    assert api.call("POST", read, "tenant:t1:user:u1").status_code == 200
    assert api.call("GET", count, "tenant:t1:user:u1").json() == {"unread": 0}
    all_read = api.call("POST", "/api/v1/notifications/read-all", "admin",
                        params={"tenant_id": "t1", "user_id": "u2"})  # fmt: skip
    assert all_read.json() == {"marked": 1}


def test_webhook_endpoints_by_role(api: Api) -> None:
    body = {"url": "http://127.0.0.1:9/hook", "event_types": ["contact.*"], "webhook_id": "wh-1"}
    assert api.call("POST", "/api/v1/webhooks", "tenant:t1:user:u1", json=body).status_code == 403
    assert api.call("POST", "/api/v1/webhooks", None, json=body).status_code == 401
    assert api.call("POST", "/api/v1/webhooks", "admin", json=body).status_code == 422  # tenant?
    created = api.call("POST", "/api/v1/webhooks", "tenant:t1", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["secret"].startswith("whsec_")
    assert "secret" not in created.json()["endpoint"]
    ssrf = {**body, "url": "http://169.254.169.254/latest", "webhook_id": "wh-2"}
    refused = api.call("POST", "/api/v1/webhooks", "tenant:t1", json=ssrf)
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "url"
    path = "/api/v1/webhooks/wh-1"
    got = statuses(api, "GET", path)
    assert got == {
        "admin": 422, "tenant:t1": 200, "tenant:t2": 404, "tenant:t1:user:u1": 403, None: 401
    }  # fmt: skip
    assert api.call("GET", path + "?tenant_id=t1", "admin").json()["url"] == body["url"]
    assert api.call("GET", "/api/v1/webhooks", "tenant:t2").json() == []
    assert [e["webhook_id"] for e in api.call("GET", "/api/v1/webhooks", "tenant:t1").json()] == [
        "wh-1"
    ]
    for method, suffix, kwargs in (
        ("PATCH", "", {"json": {"enabled": False}}),
        ("POST", "/rotate", {"json": {"grace_seconds": 0}}),
        ("GET", "/deliveries", {}),
    ):
        assert api.call(method, path + suffix, "tenant:t2", **kwargs).status_code == 404
        assert api.call(method, path + suffix, "tenant:t1:user:u1", **kwargs).status_code == 403
        response = api.call(method, path + suffix, "tenant:t1", **kwargs)
        assert response.status_code == 200, (method, suffix, response.text)
    assert api.call("GET", path, "tenant:t1").json()["enabled"] is False
    replay = "/api/v1/webhooks/deliveries/1/replay"
    assert api.call("POST", replay, "tenant:t1").status_code == 404
    assert api.call("DELETE", path, "tenant:t2").status_code == 404
    assert api.call("DELETE", path, "tenant:t1").status_code == 204
    assert api.call("GET", path, "tenant:t1").status_code == 404


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_read_the_storage(api: Api, start_consumer: Callable[..., Any]) -> None:
    dead_job(api, start_consumer, "t1")
    for n in range(3):
        enqueue(api, "t1", payload={"n": n})
    enqueue(api, "t2", delay=3600)
    consumer = start_consumer(api.broker, ["email"])
    store = api.broker.queue("email").store
    wait_until(lambda: store.counts()["completed"] == 3, message="three completions")
    response = api.call("GET", "/metrics", "admin")
    assert response.headers["content-type"].startswith("text/plain")
    samples = metric_samples(response.text)
    email = (("queue", "email"),)
    assert samples[("crmqueue_jobs", (("queue", "email"), ("state", "completed")))] == 3
    assert samples[("crmqueue_jobs", (("queue", "email"), ("state", "scheduled")))] == 1
    assert samples[("crmqueue_jobs", (("queue", "email"), ("state", "dead")))] == 1
    assert samples[("crmqueue_jobs_completed_total", email)] == 3
    assert samples[("crmqueue_jobs_failed_total", email)] == 1
    assert samples[("crmqueue_jobs_dead_total", email)] == 1
    assert samples[("crmqueue_jobs_retried_total", email)] == 0
    assert samples[("crmqueue_queue_workers", email)] == consumer.runners[0].workers
    assert samples[("crmqueue_job_run_seconds_count", email)] == 3
    assert samples[("crmqueue_job_wait_seconds_count", email)] == 3
    assert samples[("crmqueue_storage_up", ())] == 1
    assert samples[("crmqueue_webhook_deliveries_total", (("status_class", "2xx"),))] == 0


def test_token_create_prints_the_token_once_and_its_config_line(tmp_path: Any) -> None:
    from crmqueue.api.auth import TokenTable
    from crmqueue.cli import main

    result = CliRunner().invoke(main, ["api", "token", "create", "--role", "tenant:t1:user:u 1"])
    assert result.exit_code == 2 and "user id" in result.output
    result = CliRunner().invoke(main, ["api", "token", "create", "--role", "tenant:t1"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("cq_") and len(token) > 40
    line = result.stderr.split('tokens = ["', 1)[1].split('"]', 1)[0]
    assert token not in line and line.startswith("tenant:t1=sha256:")
    table = TokenTable([line])
    assert str(table.role_of(token)) == "tenant:t1"
    assert table.role_of(token + "x") is None
    from crmqueue.config import load_settings
    from crmqueue.errors import ConfigError

    env = {"CRMQUEUE_API__TOKENS": f"{line}, admin=sha256:{'0' * 64}"}
    assert len(load_settings(environ=env).api.tokens) == 2
    with pytest.raises(ConfigError, match=r"api.tokens\[0\]"):
        TokenTable(["admin=md5:abc"])


def test_the_stream_refuses_before_it_starts(api: Api) -> None:
    path = "/api/v1/notifications/stream"
    assert api.call("GET", path).status_code == 401
    assert api.call("GET", path, "tenant:t1:user:u1", params={"user_id": "u2"}).status_code == 404
    assert (
        api.call("GET", path, "tenant:t2", params={"tenant_id": "t1", "user_id": "u1"}).status_code
        == 404
    )
    assert api.call("GET", path, "admin", params={"user_id": "u1"}).status_code == 422


def test_storage_totals_count_every_transition(broker: Any) -> None:
    from crmqueue.engine.storage import error_record

    queue = broker.queue("email")
    store = queue.store
    for n in range(4):
        queue.enqueue("tests.fixture_jobs.noop", {"tenant_id": "t1", "n": n})
    claims = store.claim("test-consumer", 0.05, 4).jobs
    assert len(claims) == 4
    assert store.complete_many([(claims[0], None)], 3600) == [True]
    error = error_record("RuntimeError", "boom")
    assert store.fail(claims[1], error, 60.0) == "delayed"
    assert store.fail(claims[2], error, None) == "dead"
    wait_until(lambda: store.reap(0), message="the last lease to expire and be reaped")
    assert store.get_job(claims[3].id)["state"] == "dead"
    assert store.totals() == {"completed": 1, "failed": 3, "retried": 1, "dead": 2, "stalled": 1}
    store.flush_all()
    assert store.totals() == dict.fromkeys(store.totals(), 0)


def test_a_logged_delivery_is_replayed_only_by_its_tenant(api: Api) -> None:
    import datetime as dt

    from crmqueue.webhooks import Attempt, Message, service

    body = {"url": "http://127.0.0.1:9/hook", "webhook_id": "wh-r"}
    assert api.call("POST", "/api/v1/webhooks", "tenant:t1", json=body).status_code == 201
    webhooks = service(api.broker.settings)
    endpoint = webhooks.get("t1", "wh-r")
    message = Message("t1", "msg_1", "contact.created", dt.datetime.now(dt.UTC), {"id": 7})
    attempt = Attempt("msg_1", "contact.created", None, 1, False, 503, 12, "busy", None)
    webhooks.record_attempt(endpoint, attempt, message=message)
    log = api.call("GET", "/api/v1/webhooks/wh-r/deliveries", "tenant:t1").json()
    assert [(d["status_code"], d["succeeded"]) for d in log] == [(503, False)]
    replay = f"/api/v1/webhooks/deliveries/{log[0]['id']}/replay"
    assert api.call("POST", replay, "tenant:t2").status_code == 404
    assert api.call("POST", replay, "tenant:t1:user:u1").status_code == 403
    assert api.call("POST", replay).status_code == 401
    replayed = api.call("POST", replay, "tenant:t1")
    assert replayed.status_code == 202, replayed.text
    job = api.call("GET", f"/api/v1/admin/jobs/webhook/{replayed.json()['job_id']}", "tenant:t1")
    assert job.json()["payload"]["message_id"] == "msg_1"
    metrics = metric_samples(api.call("GET", "/metrics", "admin").text)
    assert metrics[("crmqueue_webhook_deliveries_total", (("status_class", "5xx"),))] == 1
    api.call("PATCH", "/api/v1/webhooks/wh-r", "tenant:t1", json={"enabled": False})
    assert api.call("POST", replay, "tenant:t1").status_code == 409
