"""Huey's own test suites (they ship in the huey wheel: huey/tests/test_api.py and the
StorageTests of huey/tests/test_storage.py) run against crmqueue's Huey instances, on
SQLite and on a real redis-server.

Every Huey test class is run with Huey's in-memory Huey replaced by a QueueHuey over a
fresh leased store. The tests that must fail because crmqueue differs on purpose are in
EXPECTED_DIFFERENCES, each with its reason (the same list is in the README, "Huey's API on
crmqueue's queues"); they are marked xfail(strict=True), so one that starts passing shows.
"""

from __future__ import annotations

import inspect
import os
import unittest
from typing import Any, ClassVar

import pytest

# Huey's slow storage tests (a TTL that expires, Huey's own consumer on our storage) run
# too; the flag is read when huey.tests.base is first imported.
os.environ.setdefault("HUEY_SLOW_TESTS", "1")

from conftest import _redis_dbs
from huey.tests import base as huey_base
from huey.tests import test_api as huey_api_tests
from huey.tests import test_storage as huey_storage_tests

from crmqueue.config import QueueSettings
from crmqueue.engine.huey_api import QueueHuey
from crmqueue.engine.storage import open_store

SUITE_SPEC = QueueSettings(
    workers=1, attempts=1, timeout_seconds=30, priority=0, keep_completed_seconds=0
)


class SuiteHuey(QueueHuey):
    """Huey's MemoryHuey as the suites build it, on crmqueue's leased storage."""

    url: ClassVar[str] = ""

    def __init__(self, name: str = "huey", **options: Any) -> None:
        options.setdefault("store_intermediate_errors", True)  # Huey's default
        options.pop("blocking", None)
        store = open_store(self.url, f"{name}")
        store.flush_all()
        super().__init__(name, store, SUITE_SPEC, **options)


# The deliberate differences (the README lists the same, with the same letters).
SCHEDULE = (
    "A: a task with a delay or eta is stored as scheduled when it is enqueued and the"
    " storage's clock makes it due (Huey queues it and moves it to the schedule when a"
    " consumer dequeues it early; read_schedule(ts) returns nothing here): no scheduler"
    " process moves messages, so none can lose them"
)
IDS = (
    "B: a task id is a job id: enqueueing an id that is stored already adds nothing"
    " (idempotent enqueue), so the same Task instance, or an on_error handler copied for"
    " each failed attempt, is not queued a second time"
)
RETRY = (
    "C: a retry is the same job, not a new message: its delay is retry_delay *"
    " retry_backoff ** (attempt - 1), and the stored message keeps its first retry_delay"
)
JSON_ONLY = "D: messages are JSON: a datetime argument is refused when the task is called"
INTERNALS = "reads MemoryStorage's internals (its _counters dict)"

EXPECTED_DIFFERENCES: dict[str, str] = {
    "TestChordPrimitive::test_chord_bookkeeping_cleared": INTERNALS,
    "TestChordPrimitive::test_chord_error_cb": IDS,
    "TestChordPrimitive::test_chord_scheduling": SCHEDULE,
    "TestChordPrimitive::test_empty_chord": IDS,
    "TestDecorators::test_task_id": SCHEDULE,
    "TestQueue::test_pending_scheduled_unregistered": SCHEDULE,
    "TestQueue::test_read_schedule": SCHEDULE,
    "TestQueue::test_reschedule": SCHEDULE,
    "TestQueue::test_retry_backoff": RETRY,
    "TestQueue::test_retrytask_eta_delay": JSON_ONLY,
    "TestQueue::test_revoke_task_instance": IDS,
    "TestQueue::test_revoke_task_instance_persistent": IDS,
    "TestQueue::test_schedule_s": SCHEDULE,
    "TestQueue::test_scheduling": SCHEDULE,
    "TestQueue::test_scheduling_expires": SCHEDULE,
    "TestStorageWrappers::test_storage_wrappers": SCHEDULE,
    "TestTaskChaining::test_error_callback_retries": IDS,
    "TestTaskChaining::test_pipeline_error_retries_then_downstream": IDS,
    "_StorageSuite::test_schedule_methods": SCHEDULE,
}


def _suite_classes(module: Any) -> list[type]:
    return [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, unittest.TestCase)
        and cls.__module__ == module.__name__
        and cls.__name__.startswith("Test")
    ]


def _storage_url(storage: str, request: pytest.FixtureRequest) -> str:
    if storage == "sqlite":
        tmp_path = request.getfixturevalue("tmp_path")
        return f"sqlite:///{tmp_path}/queues.db"
    server = request.getfixturevalue("redis_server")
    db = next(_redis_dbs)
    client = server.client(db)
    try:
        client.flushdb()
    finally:
        client.close()
    return str(server.url_for(db))


def _make(cls: type, storage: str) -> type:
    def get_huey(self: Any) -> Any:
        if "get_huey" in cls.__dict__:
            return cls.__dict__["get_huey"](self)
        return SuiteHuey(utc=False)

    @pytest.fixture(autouse=True)
    def _storage(self: Any, request: pytest.FixtureRequest) -> None:
        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setattr(SuiteHuey, "url", _storage_url(storage, request))
        monkeypatch.setattr(huey_api_tests, "MemoryHuey", SuiteHuey)
        monkeypatch.setattr(huey_base, "MemoryHuey", SuiteHuey)

    namespace: dict[str, Any] = {"get_huey": get_huey, "_storage": _storage, "__test__": True}
    for name in dir(cls):
        key = f"{cls.__name__}::{name}"
        if name.startswith("test") and key in EXPECTED_DIFFERENCES:
            test = getattr(cls, name)
            namespace[name] = pytest.mark.xfail(reason=EXPECTED_DIFFERENCES[key], strict=True)(test)
    return type(f"{cls.__name__}", (cls,), namespace)


for _cls in _suite_classes(huey_api_tests):
    for _storage_name in ("sqlite", "redis"):
        _name = f"TestApi{_cls.__name__[4:]}{_storage_name.title()}"
        globals()[_name] = _make(_cls, _storage_name)


class _StorageSuite(huey_storage_tests.StorageTests, huey_base.BaseTestCase):  # type: ignore[misc]
    __test__ = False


for _storage_name in ("sqlite", "redis"):
    globals()[f"TestStorage{_storage_name.title()}"] = _make(_StorageSuite, _storage_name)
