"""The Dramatiq side of `bench.consumers iobound`: the same I/O-bound job (a 5 ms wait)
as bench.jobs.io_wait, on a Redis broker given by BENCH_REDIS_URL."""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")))


@dramatiq.actor(max_retries=0)
def io_wait(seconds: float = 0.005) -> None:
    time.sleep(seconds)
