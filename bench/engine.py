"""Engine overhead: no-op jobs through crmqueue (leases, registry, retries on) against plain
Huey (PriorityRedisHuey / SqliteHuey) with the same 10 worker threads, in one process each.

One measurement per process run:
    python -m bench.engine --system crmqueue --storage redis --url redis://... --jobs 20000
prints one JSON line: enqueue_per_s (one call per job), bulk_enqueue_per_s (crmqueue's
enqueue_many; plain Huey has none) and drain_per_s (all jobs enqueued first, then the
consumer starts; the clock stops when the last body has run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import threading
import time
from typing import Any

done = threading.Event()
count = 0
count_lock = threading.Lock()
target = 0


def record_run() -> None:
    global count
    with count_lock:
        count += 1
        if count >= target:
            done.set()


def bench_crmqueue(url: str, jobs: int, workers: int) -> dict[str, float]:
    from crmqueue.config import load_settings
    from crmqueue.engine import Consumer, configure, job
    from crmqueue.engine.queues import Enqueue

    @job("email")
    def noop(payload: dict[str, Any]) -> None:
        record_run()

    settings = load_settings(
        overrides={"storage.url": url, "queues.email.workers": workers}, environ={}
    )
    broker = configure(settings)
    queue = broker.queue("email")
    queue.store.flush_all()
    name = f"{noop.__module__}.noop"

    started = time.perf_counter()
    for i in range(jobs):
        queue.enqueue(name, {"tenant_id": "t1", "i": i})
    enqueue_rate = jobs / (time.perf_counter() - started)

    queue.store.flush_all()
    items = [Enqueue(name, {"tenant_id": "t1", "i": i}) for i in range(jobs)]
    started = time.perf_counter()
    for start in range(0, jobs, 1000):
        queue.enqueue_many(items[start : start + 1000])
    bulk_rate = jobs / (time.perf_counter() - started)

    consumer = Consumer(broker, ["email"])
    started = time.perf_counter()
    consumer.start()
    if not done.wait(600):
        raise RuntimeError(f"only {count} of {jobs} jobs ran")
    drain_rate = jobs / (time.perf_counter() - started)
    consumer.stop(5)
    counts = queue.store.counts()
    if counts["completed"] != jobs:
        raise RuntimeError(f"registry counts disagree: {counts}")
    return {"enqueue_per_s": enqueue_rate, "bulk_enqueue_per_s": bulk_rate,
            "drain_per_s": drain_rate}  # fmt: skip


def bench_huey(url: str, jobs: int, workers: int) -> dict[str, float]:
    from huey import PriorityRedisHuey, SqliteHuey
    from huey.consumer import Consumer

    if url.startswith("sqlite"):
        huey: Any = SqliteHuey("bench", filename=url.removeprefix("sqlite:///"), results=False)
    else:
        huey = PriorityRedisHuey("bench", url=url, results=False)
    huey.flush()

    @huey.task()
    def noop(i: int) -> None:
        record_run()

    started = time.perf_counter()
    for i in range(jobs):
        noop(i)
    enqueue_rate = jobs / (time.perf_counter() - started)

    consumer = Consumer(huey, workers=workers, worker_type="thread", periodic=False)
    started = time.perf_counter()
    consumer.start()
    if not done.wait(600):
        raise RuntimeError(f"only {count} of {jobs} jobs ran")
    drain_rate = jobs / (time.perf_counter() - started)
    consumer.stop(graceful=True)
    return {"enqueue_per_s": enqueue_rate, "drain_per_s": drain_rate}


def main() -> None:
    global target
    parser = argparse.ArgumentParser()
    parser.add_argument("--system", choices=["crmqueue", "huey"], required=True)
    parser.add_argument("--storage", choices=["redis", "sqlite"], required=True)
    parser.add_argument("--url", default=None, help="Redis URL (for --storage redis)")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    target = args.jobs
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url if args.storage == "redis" else f"sqlite:///{tmp}/bench.db"
        run = bench_crmqueue if args.system == "crmqueue" else bench_huey
        figures = run(url, args.jobs, args.workers)
    print(json.dumps({"system": args.system, "storage": args.storage, **figures}))
    os._exit(0)  # daemon worker threads of either system need no orderly teardown here


if __name__ == "__main__":
    main()
