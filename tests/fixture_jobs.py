"""Job bodies for the engine tests, registered on the email queue.

Their Huey names are ``tests.fixture_jobs.<function>``. Bodies record what they did in
module state keyed by the payload's ``key``, so a test can assert on real values;
``reset()`` clears it between tests. Bodies that must stay active wait on a gate the
test opens (never on a fixed sleep), and ``release_all()`` opens every gate.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from pydantic import BaseModel, ConfigDict

from crmqueue.engine import complete_after, current_job_id, job, report_progress
from crmqueue.errors import PermanentError, RetryableError

GATE_TIMEOUT = 30.0

_lock = threading.Lock()
CALLS: defaultdict[str, int] = defaultdict(int)  # key -> times the body started
STARTED: defaultdict[str, list[float]] = defaultdict(list)  # key -> time.time() of each start
ORDER: list[Any] = []  # payload["n"] of record_order runs, in execution order
DONE: list[Any] = []  # payload["n"] of count runs (concurrency tests)
_gates: dict[str, threading.Event] = {}
_steps: dict[str, threading.Semaphore] = {}


def reset() -> None:
    release_all()
    with _lock:
        CALLS.clear()
        STARTED.clear()
        ORDER.clear()
        DONE.clear()
        _gates.clear()
        _steps.clear()


def gate(key: str) -> threading.Event:
    """The event a gated body with this key waits on."""
    with _lock:
        return _gates.setdefault(key, threading.Event())


def step(key: str) -> threading.Semaphore:
    """Each release lets the progress body with this key advance one step."""
    with _lock:
        return _steps.setdefault(key, threading.Semaphore(0))


def release_all() -> None:
    with _lock:
        gates, steps = list(_gates.values()), list(_steps.values())
    for event in gates:
        event.set()
    for semaphore in steps:
        semaphore.release(10)


def _start(payload: dict[str, Any]) -> int:
    key = str(payload.get("key", ""))
    with _lock:
        CALLS[key] += 1
        STARTED[key].append(time.time())
        return CALLS[key]


@job("email")
def noop(payload: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "n": payload.get("n"), "job": current_job_id()}


@job("email")
def count(payload: dict[str, Any]) -> int:
    DONE.append(payload["n"])
    return int(payload["n"])


@job("email")
def record(payload: dict[str, Any]) -> dict[str, Any]:
    """Records that it ran (and when) under payload["key"]."""
    calls = _start(payload)
    return {"calls": calls}


@job("email")
def always_fail(payload: dict[str, Any]) -> None:
    calls = _start(payload)
    raise RuntimeError(f"boom {calls}")


@job("email")
def flaky(payload: dict[str, Any]) -> dict[str, Any]:
    """Fails payload["fail_times"] times (counted per payload["key"]), then succeeds."""
    calls = _start(payload)
    if calls <= int(payload["fail_times"]):
        raise RuntimeError(f"flaky failure {calls}")
    return {"succeeded_on_call": calls}


@job("email")
def permanent(payload: dict[str, Any]) -> None:
    _start(payload)
    raise PermanentError("bad recipient")


@job("email")
def retry_later(payload: dict[str, Any]) -> str:
    """Asks for a retry after payload["delay"] seconds on its first call, then succeeds."""
    calls = _start(payload)
    if calls == 1:
        raise RetryableError("rate limited", delay=float(payload["delay"]))
    return "sent"


@job("email")
def progress(payload: dict[str, Any]) -> str:
    """Reports 10, 50 and 90, waiting for the test's go-ahead after each."""
    _start(payload)
    go = step(str(payload["key"]))
    for percent in (10, 50, 90):
        report_progress(percent)
        if not go.acquire(timeout=GATE_TIMEOUT):
            raise RuntimeError("test never released the progress step")
    return "done"


@job("email")
def record_order(payload: dict[str, Any]) -> Any:
    ORDER.append(payload["n"])
    return payload["n"]


@job("email")
def slow(payload: dict[str, Any]) -> str:
    """Stays active until the test opens gate(payload["key"])."""
    _start(payload)
    if not gate(str(payload["key"])).wait(GATE_TIMEOUT):
        raise RuntimeError("test never opened the gate")
    return "finished"


@job("email")
def after_gate(payload: dict[str, Any]) -> str:
    """Returns at once; its completion is written only once gate(payload["key"]) opens
    (crmqueue.engine.complete_after)."""
    _start(payload)
    complete_after(gate(str(payload["key"])))
    return "recorded after the gate"


class Greeting(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str
    name: str


@job("email", payload=Greeting)
def typed(payload: Greeting) -> str:
    """A body with a payload model: it gets the validated model, not the dict."""
    assert isinstance(payload, Greeting)
    return f"hello {payload.name}"
