"""The Redis store's enqueue script: one script call a job (a batch: one for the batch),
created_at on the producer's clock (as the SQLite store's), skip_existing, scheduled
jobs, and the wake list that blocked consumers pop: pushed while shorter than 64, so it
stays bounded when no consumer takes from it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from conftest import wait_until

from crmqueue.engine.storage.contract import NewJob
from crmqueue.engine.storage.redis import RedisJobStore

NAME = "tests.fixture_jobs.noop"


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisJobStore]:
    job_store = RedisJobStore(f"enqueue-{uuid.uuid4().hex[:8]}", url=redis_url)
    yield job_store
    job_store.flush_all()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


def job(store: RedisJobStore, n: int, run_at: float | None = None) -> NewJob:
    message = b'{"id":"%d","name":"%s","payload":{"tenant_id":"t1"}}' % (n, NAME.encode())
    return NewJob(f"{store.name}-{n}", store.name, NAME, "t1", 0, 3, message, run_at)


def test_single_and_batch_enqueue_store_every_field(store: RedisJobStore) -> None:
    before = time.time()
    store.enqueue_jobs([job(store, 1)])
    store.enqueue_jobs([job(store, 2), job(store, 3, time.time() + 3600)])
    after = time.time()
    for n, state in ((1, "waiting"), (2, "waiting"), (3, "scheduled")):
        record = store.get_job(f"{store.name}-{n}")
        assert record is not None
        assert (record["state"], record["name"], record["tenant"], record["queue"]) == (
            state,
            NAME,
            "t1",
            store.name,
        )
        assert record["message"] == job(store, n).message
        assert before <= record["created_at"] <= after
    assert store.counts()["waiting"] == 2 and store.counts()["scheduled"] == 1
    assert [c.id for c in store.claim("c1", 30, limit=5).jobs] == [
        f"{store.name}-1",
        f"{store.name}-2",
    ]


def test_skip_existing_keeps_the_stored_job(store: RedisJobStore) -> None:
    first = job(store, 1)
    store.enqueue_jobs([first])
    other = NewJob(first.id, store.name, NAME, "t2", 5, 9, b"{}")
    store.enqueue_jobs([other], skip_existing=True)
    record = store.get_job(first.id)
    assert record is not None
    assert (record["tenant"], record["message"], record["max_attempts"]) == ("t1", first.message, 3)
    assert store.counts()["waiting"] == 1


def test_wake_list_stays_short_without_consumers(store: RedisJobStore, client: redis.Redis) -> None:
    for n in range(70):
        store.enqueue_jobs([job(store, n)])
    store.enqueue_jobs([job(store, 100 + n) for n in range(3)])
    assert client.llen(f"crmqueue:q:{store.name}:wake") == 64
    assert store.counts()["waiting"] == 73


def test_an_enqueue_wakes_a_waiting_consumer(store: RedisJobStore, client: redis.Redis) -> None:
    woke: list[float] = []
    blocked = int(client.info("clients")["blocked_clients"])

    def wait() -> None:
        started = time.monotonic()
        store.wait_for_jobs(10.0)
        woke.append(time.monotonic() - started)

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_until(lambda: int(client.info("clients")["blocked_clients"]) > blocked, 5.0)
    store.enqueue_jobs([job(store, 1)])
    waiter.join(5)
    assert woke and woke[0] < 5
