"""Job bodies the benchmarks load into `crmqueue worker` / `crmqueue run` processes
(through `[runner] imports = ["bench.jobs"]`)."""

from __future__ import annotations

import time
from typing import Any

from crmqueue.engine import job


@job("email")
def noop(payload: dict[str, Any]) -> None:
    return None


@job("email")
def io_wait(payload: dict[str, Any]) -> None:
    """Stands for an I/O-bound job (an HTTP call): the thread waits, the CPU is free."""
    time.sleep(payload.get("seconds", 0.005))
