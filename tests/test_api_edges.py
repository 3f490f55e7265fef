"""Edge cases of the admin HTTP API found by attacking it: secrets in job errors and
results, bodies the JSON parser refuses, SSE clients that go away, the failed-token limit
behind X-Forwarded-For. Over real HTTP on loopback (test_api's fixtures)."""

from __future__ import annotations

from typing import Any

from conftest import wait_until
from test_api import Api, api, enqueue, make_api  # noqa: F401  (fixtures)

from crmqueue.engine import job

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
