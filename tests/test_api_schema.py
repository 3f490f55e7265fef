"""The admin API's OpenAPI document fuzzed with schemathesis against a running server:
no 5xx, and every response matches its documented schema. Bounded (a few examples an
operation) so that it runs in well under a minute."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
import uvicorn
from conftest import free_port, wait_until
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from crmqueue.api.app import create_app
from crmqueue.api.auth import config_line, new_token, parse_role

EXAMPLES = 8


@pytest.fixture
def server(make_broker: Callable[..., Any]) -> Iterator[tuple[str, str]]:
    token = new_token()
    broker = make_broker(
        {
            "api.tokens": [config_line(parse_role("admin"), token)],
            "api.auth_failures_per_minute": 10_000,
        }
    )
    for queue in broker.queues.values():  # health answers 200 with live consumers
        queue.store.heartbeat("fuzz", 1, 600)
    queue = broker.queue("email")
    queue.enqueue("tests.fixture_jobs.noop", {"tenant_id": "t1", "api_key": "x"}, delay=3600)
    port = free_port()
    config = uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off")  # fmt: skip
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    wait_until(lambda: uv.started)
    yield f"http://127.0.0.1:{port}", token
    uv.should_exit = True
    thread.join(5)


# The routes are the same on Redis (tested by role in test_api): fuzzed once, on SQLite.
@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_openapi_fuzzed_no_server_errors_and_responses_match(server: tuple[str, str]) -> None:
    url, token = server
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    # The stream never ends by design (tested in test_api_process); the email test sends
    # mail (to the outbox here, but not 8 random ones).
    schema = schema.exclude(path="/api/v1/notifications/stream").exclude(
        path="/api/v1/admin/jobs/email-test"
    )
    checks = [
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
        content_type_conformance,
    ]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 25  # with the dashboard's GET /api/v1/admin/queues/history
    failures: list[str] = []
    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=checks)

        try:
            run()
        except Exception as exc:  # collect all operations' failures, then report
            failures.append(f"{operation.label}: {exc}"[:2000])
    assert not failures, "\n\n".join(failures)
