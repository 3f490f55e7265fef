"""The Redis store's job layout: a small hash of a job's fields (Redis's compact listpack
encoding) and its message in a string key of its own (crmqueue:msg:<id>), with every
read and script taking the message from the hash instead for a job stored by an earlier
version (the message in the hash's 'message' field, no message key)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from crmqueue.engine.storage.contract import NewJob
from crmqueue.engine.storage.redis import RedisJobStore

MESSAGE = b'{"id":"x","name":"tests.fixture_jobs.noop","payload":{"tenant_id":"t1","note":"%s"}}'


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisJobStore]:
    job_store = RedisJobStore(f"layout-{uuid.uuid4().hex[:8]}", url=redis_url)
    yield job_store
    job_store.flush_all()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


def message(n: int) -> bytes:
    """A message well over 64 bytes (hash-max-listpack-value), as every real one is."""
    return MESSAGE % (b"m%d-" % n + b"x" * 100)


def enqueue(store: RedisJobStore, job_id: str, n: int = 0, **options: object) -> None:
    job = NewJob(job_id, store.name, "tests.fixture_jobs.noop", "t1", 0, 3, message(n))
    store.enqueue_jobs([job], **options)  # type: ignore[arg-type]


def to_old_layout(client: redis.Redis, job_id: str) -> None:
    """What the previous version stored for this job: the same hash with the message in
    its 'message' field, and no message key."""
    value = client.get(f"crmqueue:msg:{job_id}")
    assert value is not None
    client.hset(f"crmqueue:job:{job_id}", "message", value)
    client.delete(f"crmqueue:msg:{job_id}")


def message_keys(client: redis.Redis, ids: list[str]) -> list[str]:
    return [i for i in ids if client.exists(f"crmqueue:msg:{i}")]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_enqueue_stores_a_listpack_hash_and_a_message_key(
    store: RedisJobStore, client: redis.Redis
) -> None:
    job_id, later = unique("new"), unique("later")
    enqueue(store, job_id, 1)
    store.enqueue_jobs(
        [NewJob(later, store.name, "tests.fixture_jobs.noop", "t1", 0, 3, message(2), 4e9)]
    )
    for one in (job_id, later):
        assert client.object("encoding", f"crmqueue:job:{one}") == b"listpack"
        assert not client.hexists(f"crmqueue:job:{one}", "message")
    assert client.get(f"crmqueue:msg:{job_id}") == message(1)
    record = store.get_job(job_id)
    assert record is not None
    assert (record["message"], record["state"], record["queue"]) == (
        message(1),
        "waiting",
        store.name,
    )
    scheduled = store.get_job(later)
    assert scheduled is not None
    assert (scheduled["state"], scheduled["run_at"], scheduled["message"]) == (
        "scheduled",
        4e9,
        message(2),
    )
    assert [job["message"] for job in store.list_jobs("waiting")] == [message(1)]
    claim = store.claim("c1", 30).jobs[0]
    assert (claim.id, claim.message, claim.attempts) == (job_id, message(1), 1)


def test_skip_existing_keeps_the_stored_message(store: RedisJobStore, client: redis.Redis) -> None:
    job_id = unique("skip")
    enqueue(store, job_id, 1)
    enqueue(store, job_id, 2, skip_existing=True)
    assert client.get(f"crmqueue:msg:{job_id}") == message(1)
    assert store.counts()["waiting"] == 1


def test_old_layout_jobs_are_read_claimed_and_completed(
    store: RedisJobStore, client: redis.Redis
) -> None:
    first, second = unique("old"), unique("old")
    enqueue(store, first, 1)
    enqueue(store, second, 2)
    to_old_layout(client, first)
    to_old_layout(client, second)

    record = store.get_job(first)
    assert record is not None and record["message"] == message(1)
    assert [job["message"] for job in store.list_jobs("waiting")] == [message(1), message(2)]

    claims = store.claim("c1", 30, limit=2).jobs
    assert [(c.id, c.message) for c in claims] == [(first, message(1)), (second, message(2))]
    assert store.complete_many([(claims[0], "ok")], keep_seconds=0) == [True]
    assert not client.exists(f"crmqueue:job:{first}")
    assert store.complete_many([(claims[1], "ok")], keep_seconds=60) == [True]
    done = store.get_job(second)
    assert done is not None and (done["state"], done["message"]) == ("completed", message(2))


def test_old_layout_jobs_are_removed_swept_and_retried(
    store: RedisJobStore, client: redis.Redis
) -> None:
    waiting, dead = unique("old"), unique("old")
    enqueue(store, waiting, 1)
    to_old_layout(client, waiting)
    removed = store.remove_job(waiting)
    assert (removed["id"], removed["message"]) == (waiting, message(1))
    assert not client.exists(f"crmqueue:job:{waiting}")

    enqueue(store, dead, 2)
    to_old_layout(client, dead)
    claim = store.claim("c1", 30).jobs[0]
    assert store.fail(claim, {"type": "E", "message": "no"}, None) == "dead"
    store.retry_job(dead, 3)
    again = store.claim("c1", 30).jobs[0]
    assert (again.id, again.message) == (dead, message(2))
    assert store.fail(again, {"type": "E", "message": "no"}, None) == "dead"
    assert store.sweep(keep_completed=0, keep_failed=-60) == 1
    assert not client.exists(f"crmqueue:job:{dead}")


def test_old_layout_job_enqueued_again_takes_the_new_message(
    store: RedisJobStore, client: redis.Redis
) -> None:
    job_id = unique("again")
    enqueue(store, job_id, 1)
    to_old_layout(client, job_id)
    store.remove_job(job_id)
    enqueue(store, job_id, 2)
    to_old_layout(client, job_id)
    enqueue(store, job_id, 3)  # not skip_existing: the job is written again
    record = store.get_job(job_id)
    assert record is not None and record["message"] == message(3)
    assert store.claim("c1", 30).jobs[0].message == message(3)


def test_no_message_key_outlives_its_job(store: RedisJobStore, client: redis.Redis) -> None:
    """remove, sweep, completion without keeping, and flush_all delete the message too."""
    ids = [unique("gone") for _ in range(5)]
    for n, job_id in enumerate(ids):
        enqueue(store, job_id, n)
    store.remove_job(ids[0])
    claims = store.claim("c1", 30, limit=4).jobs
    assert [c.id for c in claims] == ids[1:]
    store.complete_many([(claims[0], "ok")], keep_seconds=0)
    store.complete_many([(claims[1], "ok")], keep_seconds=60)
    store.fail(claims[2], {"type": "E", "message": "no"}, None)
    assert message_keys(client, ids) == ids[2:]
    assert store.sweep(keep_completed=-60, keep_failed=-60) == 2
    assert message_keys(client, ids) == ids[4:]
    store.flush_all()
    assert message_keys(client, ids) == []
    assert not any(client.exists(f"crmqueue:job:{job_id}") for job_id in ids)


def test_wake_list_stays_short_without_consumers(store: RedisJobStore, client: redis.Redis) -> None:
    for n in range(70):
        enqueue(store, unique("wake"), n)
    store.enqueue_jobs(
        [
            NewJob(unique("b"), store.name, "tests.fixture_jobs.noop", "t1", 0, 3, message(n))
            for n in range(3)
        ]
    )
    assert client.llen(f"crmqueue:q:{store.name}:wake") == 64
    assert store.counts()["waiting"] == 73
