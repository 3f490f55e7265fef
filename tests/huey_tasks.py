"""A Huey task module as Huey's documentation writes them, on crmqueue's report queue
(tests/test_huey_api.py runs it under crmqueue's consumer)."""

from __future__ import annotations

import threading
from typing import Any

from crmqueue.engine import huey
from crmqueue.errors import PermanentError, RetryableError

h = huey("report")
calls: list[Any] = []
hooks: list[Any] = []
gate = threading.Event()


@h.task()
def add(a: int, b: int) -> int:
    return a + b


@h.task(retries=2, retry_delay=0.05)
def always_fails(n: int) -> None:
    calls.append(("always_fails", n))
    raise ValueError(f"failure {n}")


@h.task(retries=5)
def permanent(n: int) -> None:
    calls.append(("permanent", n))
    raise PermanentError(f"no use retrying {n}")


@h.task(retries=3)
def retry_once(n: int) -> int:
    calls.append(("retry_once", n))
    if sum(1 for c in calls if c[0] == "retry_once") == 1:
        raise RetryableError("come back soon", delay=0.05)
    return n * 10


@h.task()
def double(n: int) -> int:
    return n * 2


@h.task()
@h.lock_task("one-at-a-time")
def locked(n: int) -> int:
    calls.append(("locked", n))
    gate.wait(5)
    return n


@h.task(context=True)
def with_context(n: int, task: Any = None) -> str:
    return f"{n}:{task.id}"


@h.pre_execute()
def pre(task: Any) -> None:
    hooks.append(("pre", task.name))


@h.post_execute()
def post(task: Any, value: Any, exc: Any) -> None:
    hooks.append(("post", task.name, value, type(exc).__name__ if exc else None))


def reset() -> None:
    calls.clear()
    hooks.clear()
    gate.clear()


@h.task()
def echo(value: Any) -> Any:
    return value
