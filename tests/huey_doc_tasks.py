"""A Huey task module as Huey's documentation writes them (a task, a task with retries,
a periodic task every minute, a locked task, a pipeline step), on crmqueue's webhook queue.
tests/test_huey_run.py runs it under ``crmqueue run`` (listed in ``[runner] imports``).

Each task appends a line to the file named by $HUEY_DOC_SIDE, so the test sees what ran.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from huey import crontab

from crmqueue.engine import huey

h = huey("webhook")


def note(*parts: object) -> None:
    line = " ".join(str(p) for p in parts) + "\n"
    with open(os.environ["HUEY_DOC_SIDE"], "a", encoding="utf-8") as side:
        side.write(line)


def notes() -> list[str]:
    path = Path(os.environ["HUEY_DOC_SIDE"])
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


@h.task()
def add_numbers(a: int, b: int) -> int:
    note("add_numbers", a, b)
    return a + b


@h.task(retries=2, retry_delay=0.2)
def flaky_task(name: str) -> str:
    tries = sum(1 for line in notes() if line.startswith(f"flaky_task {name}"))
    note("flaky_task", name)
    if tries < 2:
        raise ValueError(f"flaky {name}, try {tries + 1}")
    return f"{name} ok after {tries + 1}"


@h.periodic_task(crontab(minute="*"))
def every_minute() -> None:
    note("every_minute")


@h.task()
@h.lock_task("reports-lock")
def generate_report(name: str) -> str:
    note("generate_report", name)
    return name


@h.task()
def slow_task(name: str, release: str) -> str:
    """Notes its start, then runs until the file `release` exists (or 60 s)."""
    note("slow_task start", name)
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    note("slow_task end", name)
    return f"{name} done"
