"""Pickup latency: from enqueue into an idle queue until the body starts, one job at a time.

    python -m bench.latency --system crmqueue --storage sqlite --jobs 200 [--idle 6 --idle-jobs 10]

The consumer runs in this process; the jobs come from a producer process (as a CRM's web
process would send them), which reports the CLOCK_MONOTONIC time of each enqueue.

prints one JSON line with p50/p99 in milliseconds over --jobs jobs enqueued one after
another (each after the previous one ran), and, with --idle, the same for --idle-jobs jobs
each enqueued after the queue sat idle for --idle seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

started_at: list[float] = []
ran = threading.Event()


def body_started() -> None:
    started_at.append(time.monotonic())
    ran.set()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def measure(producer: subprocess.Popen[str], jobs: int, idle: float) -> list[float]:
    assert producer.stdin is not None and producer.stdout is not None
    latencies = []
    for _ in range(jobs):
        if idle:
            time.sleep(idle)  # the idle period is what is measured, not a wait for work
        ran.clear()
        producer.stdin.write("go\n")
        producer.stdin.flush()
        sent = float(producer.stdout.readline())
        if not ran.wait(30):
            raise RuntimeError("job never started")
        latencies.append((started_at[-1] - sent) * 1000)
    return latencies


def produce(system: str, url: str) -> None:
    """The producer process: one enqueue per line read, answering with its start time."""
    if system == "crmqueue":
        from crmqueue.config import load_settings
        from crmqueue.engine import configure

        queue = configure(load_settings(overrides={"storage.url": url}, environ={})).queue("email")

        def enqueue() -> None:
            queue.enqueue("__main__.mark", {"tenant_id": "t1"})
    else:
        mark = huey_task(url)

        def enqueue() -> None:
            mark()

    for _ in sys.stdin:
        sent = time.monotonic()
        enqueue()
        print(sent, flush=True)


def huey_task(url: str) -> Any:
    from huey import PriorityRedisHuey, SqliteHuey

    if url.startswith("sqlite"):
        huey: Any = SqliteHuey("bench", filename=url.removeprefix("sqlite:///"), results=False)
    else:
        huey = PriorityRedisHuey("bench", url=url, results=False)

    @huey.task(name="mark")
    def mark() -> None:
        body_started()

    return mark


def setup_crmqueue(url: str) -> Callable[[], None]:
    from crmqueue.config import load_settings
    from crmqueue.engine import Consumer, configure, job

    @job("email")
    def mark(payload: dict[str, Any]) -> None:
        body_started()

    broker = configure(load_settings(overrides={"storage.url": url}, environ={}))
    queue = broker.queue("email")
    queue.store.flush_all()
    consumer = Consumer(broker, ["email"])
    consumer.start()
    return lambda: consumer.stop(2)


def setup_huey(url: str) -> Callable[[], None]:
    from huey.consumer import Consumer

    mark = huey_task(url)
    mark.huey.flush()
    consumer = Consumer(mark.huey, workers=10, worker_type="thread", periodic=False)
    consumer.start()
    return lambda: consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--system", choices=["crmqueue", "huey"], required=True)
    parser.add_argument("--storage", choices=["redis", "sqlite"], required=True)
    parser.add_argument("--url", default=None)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--idle", type=float, default=0.0)
    parser.add_argument("--idle-jobs", type=int, default=10)
    parser.add_argument("--produce", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.produce:
        produce(args.system, args.url)
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url if args.storage == "redis" else f"sqlite:///{tmp}/bench.db"
        stop = (setup_crmqueue if args.system == "crmqueue" else setup_huey)(url)
        producer = subprocess.Popen(
            [sys.executable, "-m", "bench.latency", "--produce", "--system", args.system,
             "--storage", args.storage, "--url", url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(1.0)  # let the consumer settle into its idle wait
        steady = measure(producer, args.jobs, 0.0)
        figures = {
            "system": args.system,
            "storage": args.storage,
            "p50_ms": statistics.median(steady),
            "p99_ms": percentile(steady, 99),
        }
        if args.idle:
            after_idle = measure(producer, args.idle_jobs, args.idle)
            figures["idle_p50_ms"] = statistics.median(after_idle)
            figures["idle_max_ms"] = max(after_idle)
        producer.kill()
        stop()
    print(json.dumps(figures))
    os._exit(0)


if __name__ == "__main__":
    main()
