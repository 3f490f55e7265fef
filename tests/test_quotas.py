"""Daily quotas per tenant and queue (issue #17, item 3) on SQLite and Redis: the cap is
reached exactly, bulk enqueue is all or nothing, jobs skipped as already stored do not
count, the day resets at the tenant's local midnight (an injected clock), two producer
processes racing never pass the cap, the API answers 429 with Retry-After and the CLI one
line with a non-zero exit."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crmqueue.config import load_settings
from crmqueue.engine.queues import Enqueue
from crmqueue.engine.quotas import local_day
from crmqueue.errors import ConfigError, PayloadError, QuotaExceeded

NOOP = "tests.fixture_jobs.noop"
ROOT = Path(__file__).resolve().parent.parent


def quota_broker(make_broker: Callable[..., Any], cap: int = 3, **more: Any) -> Any:
    return make_broker({"tenants.daily_quota": {"email": cap}, **more})


def waiting(broker: Any, tenant: str | None = None) -> int:
    store = broker.queue("email").store
    if tenant is None:
        return int(store.counts()["waiting"])
    return store.tenant_counts(("waiting",), tenant)["waiting"].get(tenant, 0)


def test_no_quota_configured_passes_none(broker: Any) -> None:
    assert all(queue.quotas is None for queue in broker.queues.values())
    broker.queue("email").enqueue(NOOP, {"tenant_id": "t1"})
    assert waiting(broker) == 1


def test_the_cap_is_reached_exactly(make_broker: Callable[..., Any]) -> None:
    broker = quota_broker(
        make_broker,
        3,
        **{"tenants.daily_quota_overrides": {"big": {"email": 5}, "free": {"email": 0}}},
    )
    queue = broker.queue("email")
    assert broker.queue("report").quotas is None
    for _ in range(3):
        queue.enqueue(NOOP, {"tenant_id": "t1"})
    with pytest.raises(QuotaExceeded) as caught:
        queue.enqueue(NOOP, {"tenant_id": "t1"})
    error = caught.value
    assert isinstance(error, PayloadError)  # nothing enqueued, as for a bad payload
    assert (error.tenant, error.queue, error.limit, error.used, error.requested) == (
        "t1", "email", 3, 3, 1,
    )  # fmt: skip
    assert error.reset_at.tzinfo is not None and error.reset_at.utcoffset() == dt.timedelta(0)
    assert (error.reset_at.hour, error.reset_at.minute) == (0, 0)
    assert 1 <= error.retry_after <= 86_400
    assert "daily quota of 3 email jobs for tenant t1" in str(error)
    assert waiting(broker, "t1") == 3
    # Another tenant has its own count; overrides raise or lift the cap.
    queue.enqueue(NOOP, {"tenant_id": "t2"})
    for _ in range(5):
        queue.enqueue(NOOP, {"tenant_id": "big"})
    with pytest.raises(QuotaExceeded):
        queue.enqueue(NOOP, {"tenant_id": "big"})
    for _ in range(10):
        queue.enqueue(NOOP, {"tenant_id": "free"})
    assert waiting(broker) == 3 + 1 + 5 + 10
    day, _ = local_day("UTC", queue.quotas.clock())
    assert queue.store.quota_used("t1", day) == 3 and queue.store.quota_used("free", day) == 0


def test_bulk_enqueue_is_all_or_nothing(make_broker: Callable[..., Any]) -> None:
    broker = quota_broker(make_broker, 5)
    queue = broker.queue("email")
    queue.enqueue_many([Enqueue(NOOP, {"tenant_id": "t1"}) for _ in range(3)])
    with pytest.raises(QuotaExceeded) as caught:
        queue.enqueue_many([Enqueue(NOOP, {"tenant_id": "t1"}) for _ in range(3)])
    assert (caught.value.used, caught.value.requested) == (3, 3)
    assert waiting(broker) == 3
    # A batch of two tenants, one over: neither tenant's jobs are stored.
    mixed = [Enqueue(NOOP, {"tenant_id": "t2"})] * 2 + [Enqueue(NOOP, {"tenant_id": "t1"})] * 3
    with pytest.raises(QuotaExceeded):
        queue.enqueue_many(mixed)
    assert waiting(broker) == 3 and waiting(broker, "t2") == 0
    queue.enqueue_many([Enqueue(NOOP, {"tenant_id": "t1"}) for _ in range(2)])
    assert waiting(broker, "t1") == 5


def test_a_big_bulk_goes_in_one_step(make_broker: Callable[..., Any]) -> None:
    broker = quota_broker(make_broker, 1500)
    queue = broker.queue("email")
    queue.enqueue_many([Enqueue(NOOP, {"tenant_id": "t1"}) for _ in range(1200)])
    with pytest.raises(QuotaExceeded):
        queue.enqueue_many([Enqueue(NOOP, {"tenant_id": "t1"}) for _ in range(301)])
    assert waiting(broker) == 1200
    queue.enqueue_many([Enqueue(NOOP, {"tenant_id": "t1"}) for _ in range(300)])
    assert waiting(broker) == 1500
    claimed = queue.store.claim("c", 30, limit=2000).jobs
    assert len(claimed) == 1500 and len({c.id for c in claimed}) == 1500


def test_jobs_already_stored_do_not_count(make_broker: Callable[..., Any]) -> None:
    broker = quota_broker(make_broker, 3)
    queue = broker.queue("email")
    items = [Enqueue(NOOP, {"tenant_id": "t1"}, job_id=f"fixed-{n}") for n in range(2)]
    queue.enqueue_many(items, skip_existing=True)
    queue.enqueue_many(items, skip_existing=True)  # both present: nothing counted
    queue.enqueue_many(items, skip_existing=True)
    queue.enqueue(NOOP, {"tenant_id": "t1"})
    assert waiting(broker) == 3
    with pytest.raises(QuotaExceeded):
        queue.enqueue(NOOP, {"tenant_id": "t1"})


def test_the_day_resets_at_the_tenants_local_midnight(make_broker: Callable[..., Any]) -> None:
    # New York's clocks skip 02:00-03:00 on 2027-03-14: that day lasts 23 hours. (Days
    # ahead of the real clock: a counter of a day already past expires at once.)
    zone = zoneinfo.ZoneInfo("America/New_York")
    broker = quota_broker(make_broker, 2, **{"tenants.time_zones": ["ny=America/New_York"]})
    queue = broker.queue("email")
    now = [dt.datetime(2027, 3, 13, 23, 59, 0, tzinfo=zone).timestamp()]
    queue.quotas.clock = lambda: now[0]
    queue.enqueue_many([Enqueue(NOOP, {"tenant_id": "ny"})] * 2)
    with pytest.raises(QuotaExceeded) as caught:
        queue.enqueue(NOOP, {"tenant_id": "ny"})
    assert caught.value.reset_at == dt.datetime(2027, 3, 14, tzinfo=zone)
    assert str(caught.value.reset_at.tzinfo) == "America/New_York"
    assert caught.value.retry_after == 60
    now[0] = dt.datetime(2027, 3, 14, 0, 0, 1, tzinfo=zone).timestamp()
    queue.enqueue_many([Enqueue(NOOP, {"tenant_id": "ny"})] * 2)
    with pytest.raises(QuotaExceeded) as caught:
        queue.enqueue(NOOP, {"tenant_id": "ny"})
    assert caught.value.reset_at == dt.datetime(2027, 3, 15, tzinfo=zone)
    assert caught.value.retry_after == 23 * 3600 - 1
    # UTC tenants' day turned at 19:00 New York time: their own count.
    assert waiting(broker) == 4


def test_reports_time_zones_serve_tenants_not_listed_in_tenants(tmp_path: Path) -> None:
    settings = load_settings(
        config_file=None,
        overrides={
            "tenants.time_zones": ["a=Asia/Tokyo"],
            "reports.tenant_time_zones": ["a=Europe/Berlin", "b=Europe/Berlin"],
        },
        environ={"CRMQUEUE_TENANTS__DAILY_QUOTA": "email=10,report=2"},
    )
    tenants = settings.tenants
    assert tenants.quota_for("email", "x") == 10 and tenants.quota_for("report", "x") == 2
    assert tenants.zone_for("a", settings.reports) == "Asia/Tokyo"
    assert tenants.zone_for("b", settings.reports) == "Europe/Berlin"
    assert tenants.zone_for("c", settings.reports) == "UTC"
    for bad, field in (
        ({"tenants.daily_quota": {"emails": 1}}, "daily_quota.emails"),
        ({"tenants.daily_quota": {"email": -1}}, "daily_quota.email"),
        ({"tenants.daily_quota_overrides": {"a b": {"email": 1}}}, "a b:email=1"),
        ({"tenants.daily_quota_overrides": ["a:emails=1"]}, "daily_quota_overrides.a.emails"),
        ({"tenants.time_zones": ["a=Mars/Base"]}, "Mars/Base"),
    ):
        with pytest.raises(ConfigError, match=field):
            load_settings(config_file=None, overrides=bad, environ={})


RACER = textwrap.dedent(
    """
    import sys
    import crmqueue.engine
    from crmqueue.config import load_settings
    from crmqueue.errors import QuotaExceeded

    url, tries = sys.argv[1], int(sys.argv[2])
    settings = load_settings(
        config_file=None,
        overrides={"storage.url": url, "tenants.daily_quota": {"email": 50}},
        environ={},
    )
    queue = crmqueue.engine.configure(settings).queue("email")
    print("ready", flush=True)
    sys.stdin.readline()
    refused = 0
    for n in range(tries):
        try:
            queue.enqueue("tests.fixture_jobs.noop", {"tenant_id": "t1", "n": n})
        except QuotaExceeded:
            refused += 1
    print(refused, flush=True)
    """
)


def test_two_producer_processes_never_pass_the_cap(broker: Any, storage_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, storage_url, "40"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    for racer in racers:
        assert racer.stdout is not None and racer.stdout.readline().strip() == "ready"
    for racer in racers:  # both start together
        assert racer.stdin is not None
        racer.stdin.write("go\n")
        racer.stdin.flush()
    refused = [int(racer.communicate(timeout=60)[0].strip()) for racer in racers]
    assert sum(refused) == 80 - 50
    assert waiting(broker, "t1") == 50


def test_api_answers_429_with_retry_after(make_broker: Callable[..., Any]) -> None:
    import httpx
    from test_api import serve_app

    from crmqueue.api.app import create_app
    from crmqueue.api.auth import config_line, new_token, parse_role

    token = new_token()
    quota_broker(make_broker, 2, **{"api.tokens": [config_line(parse_role("tenant:t1"), token)]})
    url, server, thread = serve_app(create_app())
    try:
        good = {"tenant_id": "t1", "to": "a@example.com", "subject": "Hi", "template": "welcome"}
        headers = {"Authorization": f"Bearer {token}"}
        codes = [
            httpx.post(f"{url}/api/v1/jobs/email", json=good, headers=headers).status_code
            for _ in range(2)
        ]
        assert codes == [201, 201]
        over = httpx.post(f"{url}/api/v1/jobs/email", json=good, headers=headers)
        assert over.status_code == 429, over.text
        assert 1 <= int(over.headers["Retry-After"]) <= 86_400
        assert "daily quota of 2 email jobs for tenant t1" in over.json()["detail"]
    finally:
        server.should_exit = True
        thread.join(5)


def test_cli_prints_one_line_and_fails(broker: Any, storage_url: str, tmp_path: Path) -> None:
    (tmp_path / "crmqueue.toml").write_text(
        f'[storage]\nurl = "{storage_url}"\n[tenants]\ndaily_quota = {{email = 1}}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMQUEUE_", "REDIS_"))}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-m", "crmqueue", "enqueue", "email", "--kind", NOOP]
    payload = ["--json", '{"tenant_id": "t1"}']
    first = subprocess.run(
        [*command, *payload], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    second = subprocess.run(
        [*command, *payload], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert second.returncode != 0 and second.stdout == ""
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crmqueue: error: quota exceeded:"), lines
    assert "resets at" in lines[0]
