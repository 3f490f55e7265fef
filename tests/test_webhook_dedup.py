"""deliver_webhook with the CRM's own message_id is idempotent at enqueue, as publish_event
is: a caller that calls again (its first call may have enqueued although it failed) adds
no second delivery, whatever state the first is in, and a publish and a direct delivery of
one message to one endpoint are one job; a replay sends again. Real consumer, both queue
storages, loopback receiver verifying every signature."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from test_webhook_delivery import TENANT, add, finished, log_rows
from test_webhook_delivery import receiver as receiver  # the loopback receiver fixture

from crmqueue import jobs, tasks
from crmqueue.engine import Broker
from crmqueue.webhook_ids import delivery_job_id
from crmqueue.workers import webhook as worker
from tests.webhook_receiver import WebhookReceiver

DATA = {"id": "contact-123", "name": "John Doe"}


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    return make_broker({"outbound.allowed_networks": ["127.0.0.0/8"]})


def deliver(webhook_id: str, message_id: str | None, tenant: str = TENANT, **extra: Any) -> Any:
    return tasks.deliver_webhook(
        tenant_id=tenant, webhook_id=webhook_id, event_type="contact.created", payload=DATA,
        message_id=message_id, **extra,
    )  # fmt: skip


def test_a_delivery_with_the_crms_message_id_is_enqueued_once(
    broker: Broker, start_consumer: Callable[..., Any], receiver: WebhookReceiver
) -> None:
    hook = receiver.endpoint("/a", add(receiver.url("/a"), "a"))
    first = deliver("a", "evt_7")
    again = deliver("a", "evt_7")  # waiting: the same job
    assert again.id == first.id == delivery_job_id(TENANT, "a", "evt_7")
    assert broker.queue("webhook").store.counts()["waiting"] == 1
    start_consumer(broker, ["webhook"])
    assert finished(first).state == "completed"
    late = deliver("a", "evt_7")  # completed: still the same job, nothing sent again
    assert late.id == first.id and jobs.get(late.id).state == "completed"
    assert [r.headers["webhook-id"] for r in hook.received()] == ["evt_7"]
    assert len(log_rows("a")) == 1

    # Another message, endpoint or tenant is another delivery; no message id, a new one.
    other = [deliver("a", "evt_8"), deliver("b", "evt_7"), deliver("a", "evt_7", tenant="t-2")]
    fresh = [deliver("a", None), deliver("a", None)]
    ids = {first.id, *(job.id for job in other + fresh)}
    assert len(ids) == 6


def test_a_publish_and_a_delivery_of_one_message_to_one_endpoint_are_one_job(
    broker: Broker, start_consumer: Callable[..., Any], receiver: WebhookReceiver
) -> None:
    hooks = [receiver.endpoint(f"/{n}", add(receiver.url(f"/{n}"), n)) for n in ("p", "q")]
    start_consumer(broker, ["webhook"])
    published = finished(
        tasks.publish_event(
            tenant_id=TENANT, event_type="contact.created", payload=DATA, message_id="evt_9"
        )
    )
    assert published.state == "completed", published.errors
    direct = deliver("p", "evt_9")
    assert direct.id in published.result["jobs"]
    assert direct.id == worker.fanout_job_id(worker.message_source(TENANT, "evt_9"), "p")
    for job_id in published.result["jobs"]:
        assert finished(jobs.Job(job_id, "webhook")).state == "completed"
    assert [len(hook.received()) for hook in hooks] == [1, 1]


def test_a_replay_sends_the_message_again_with_the_same_webhook_id(
    broker: Broker, start_consumer: Callable[..., Any], receiver: WebhookReceiver
) -> None:
    hook = receiver.endpoint("/r", add(receiver.url("/r"), "r"))
    start_consumer(broker, ["webhook"])
    first = finished(deliver("r", "evt_5"))
    replayed = deliver("r", "evt_5", replay=True)
    assert replayed.id != first.id
    assert finished(replayed).state == "completed"
    received = hook.received()
    assert [r.headers["webhook-id"] for r in received] == ["evt_5", "evt_5"]
    assert all(r.verified for r in received), [r.failures for r in received]
    assert received[0].json()["data"] == received[1].json()["data"] == DATA
