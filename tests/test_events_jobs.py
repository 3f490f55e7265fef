"""Job bodies for the event tests (tests/test_events.py), on the email queue; they run
in ``crmqueue worker`` subprocesses (``runner.imports = ["tests.test_events_jobs"]``)
and in-process consumers. No tests here."""

from __future__ import annotations

import time
from typing import Any

from crmqueue.engine import current_attempt, job, report_progress
from crmqueue.errors import RetryableError


@job("email")
def step(payload: dict[str, Any]) -> str:
    """Reports 50 % progress, works payload["ms"] milliseconds, and fails its first
    attempt when payload["fail_first"] (retried at once)."""
    report_progress(50)
    time.sleep(float(payload.get("ms", 0)) / 1000)
    if payload.get("fail_first") and current_attempt()[0] == 1:
        raise RetryableError("first attempt fails", delay=0.0)
    return "done"
