"""Per-tenant visibility (issue #17, item 4) on SQLite and Redis: a tenant's jobs per
state after a known mix of transitions, the top tenants by waiting jobs, the same through
the CLI and the API, where a tenant token sees only its own tenant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crmqueue import jobs
from crmqueue.errors import PayloadError

NOOP = "tests.fixture_jobs.noop"
ROOT = Path(__file__).resolve().parent.parent
EMPTY = dict.fromkeys(
    ("waiting", "active", "delayed", "scheduled", "completed", "failed", "dead"), 0
)


def counts(row: dict[str, Any]) -> dict[str, int]:
    return {state: row[state] for state in EMPTY}


def known_mix(broker: Any) -> None:
    """t1: waiting 3, active 1, delayed 1 (failed 1), scheduled 1, completed 1;
    t2: waiting 5, dead 1; t3: waiting 1, delayed 1 (postponed: not failed)."""
    queue = broker.queue("email")
    store = queue.store

    def claim_one(tenant: str) -> Any:
        queue.enqueue(NOOP, {"tenant_id": tenant})
        (claim,) = store.claim("c1", 300, limit=1).jobs
        return claim

    store.complete(claim_one("t1"), {"ok": True}, 3600)
    assert store.fail(claim_one("t1"), {"type": "E", "message": "x"}, 3600) == "delayed"
    assert store.fail(claim_one("t2"), {"type": "E", "message": "x"}, None) == "dead"
    assert store.postpone(claim_one("t3"), 3600, "not now")
    claim_one("t1")  # stays active
    queue.enqueue(NOOP, {"tenant_id": "t1"}, delay=3600)
    for tenant, n in (("t1", 3), ("t2", 5), ("t3", 1)):
        for _ in range(n):
            queue.enqueue(NOOP, {"tenant_id": tenant})
    broker.queue("report").enqueue(NOOP, {"tenant_id": "t1"})  # another queue: not counted


def test_tenant_counts_after_a_known_mix(broker: Any) -> None:
    known_mix(broker)
    t1 = jobs.stats("email", tenant="t1")
    assert (t1["queue"], t1["tenant"], t1["quota"]) == ("email", "t1", None)
    assert counts(t1) == {**EMPTY, "waiting": 3, "active": 1, "delayed": 1, "scheduled": 1,
                          "completed": 1, "failed": 1}  # fmt: skip
    assert counts(jobs.stats("email", tenant="t2")) == {**EMPTY, "waiting": 5, "dead": 1}
    assert counts(jobs.stats("email", tenant="t3")) == {**EMPTY, "waiting": 1, "delayed": 1}
    assert counts(jobs.stats("email", tenant="nobody")) == EMPTY
    assert jobs.top_tenants("email") == [
        {"tenant": "t2", "waiting": 5}, {"tenant": "t1", "waiting": 3},
        {"tenant": "t3", "waiting": 1},
    ]  # fmt: skip
    assert jobs.top_tenants("email", limit=1) == [{"tenant": "t2", "waiting": 5}]
    assert jobs.stats("email")["waiting"] == 9  # the queue's own stats unchanged
    with pytest.raises(PayloadError, match="tenant"):
        jobs.stats("email", tenant="a b")


def test_quota_use_is_shown(make_broker: Callable[..., Any]) -> None:
    broker = make_broker({"tenants.daily_quota": {"email": 10}})
    for _ in range(4):
        broker.queue("email").enqueue(NOOP, {"tenant_id": "t1"})
    quota = jobs.stats("email", tenant="t1")["quota"]
    assert (quota["limit"], quota["used"]) == (10, 4)
    assert quota["resets_at"].endswith("+00:00")
    assert jobs.stats("report", tenant="t1")["quota"] is None


def test_cli_stats_tenant_and_top_tenants(broker: Any, storage_url: str, tmp_path: Path) -> None:
    known_mix(broker)
    (tmp_path / "crmqueue.toml").write_text(f'[storage]\nurl = "{storage_url}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMQUEUE_", "REDIS_"))}
    env["PYTHONPATH"] = str(ROOT)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "crmqueue", "stats", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    one = cli("email", "--tenant", "t1", "--json")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["completed"] == 1
    every = json.loads(cli("--tenant", "t2", "--json").stdout)
    assert [row["queue"] for row in every][:2] == ["email", "import-export"]
    assert counts(every[0]) == {**EMPTY, "waiting": 5, "dead": 1}
    top = json.loads(cli("email", "--top-tenants", "--json").stdout)
    assert top["waiting"] == 9 and top["top_tenants"][0] == {"tenant": "t2", "waiting": 5}
    table = cli("--tenant", "t1")
    assert table.returncode == 0 and "tenant t1" in table.stdout
    assert cli("--top-tenants").returncode == 0
    bad = cli("--tenant", "a b")
    assert bad.returncode != 0 and bad.stderr.startswith("crmqueue: error:")


def test_api_tenant_stats_by_role(make_broker: Callable[..., Any]) -> None:
    from test_api import ROLES, Api, serve_app

    from crmqueue.api.app import create_app
    from crmqueue.api.auth import config_line, new_token, parse_role

    tokens = {role: new_token() for role in ROLES}
    broker = make_broker({"api.tokens": [config_line(parse_role(r), t) for r, t in tokens.items()]})
    known_mix(broker)
    url, server, thread = serve_app(create_app())
    api = Api(url, tokens, broker, server)
    path = "/api/v1/admin/jobs/stats"
    try:
        admin_t2 = api.call("GET", path + "?tenant=t2", "admin")
        assert admin_t2.status_code == 200
        assert counts(admin_t2.json()[0]) == {**EMPTY, "waiting": 5, "dead": 1}
        own = api.call("GET", path + "?tenant=t1", "tenant:t1").json()
        assert own[0]["tenant"] == "t1" and own[0]["completed"] == 1
        # Another tenant's stats: not found, as if it did not exist; the whole queue's
        # stats and the top tenants: admin only.
        assert api.call("GET", path + "?tenant=t2", "tenant:t1").status_code == 404
        assert api.call("GET", path, "tenant:t1").status_code == 403
        for query in ("?top_tenants=true", "?tenant=t1&top_tenants=true"):
            assert api.call("GET", path + query, "tenant:t1").status_code == 403
        assert api.call("GET", path + "?tenant=t1", "tenant:t1:user:u1").status_code == 403
        top = api.call("GET", path + "?top_tenants=true", "admin").json()
        assert top[0]["top_tenants"][:2] == [
            {"tenant": "t2", "waiting": 5}, {"tenant": "t1", "waiting": 3},
        ]  # fmt: skip
        plain = api.call("GET", path, "admin").json()
        assert "top_tenants" not in plain[0] and plain[0]["waiting"] == 9
    finally:
        server.should_exit = True
        thread.join(5)
