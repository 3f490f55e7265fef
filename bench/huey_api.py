"""Huey's API on crmqueue's queues against crmqueue's own enqueue path (issue #18): no-op
jobs enqueued one call each, then drained by crmqueue's consumer (10 worker threads).

    python -m bench.huey_api [--jobs 5000] [--runs 3] [--storage sqlite,redis]

runs each system in a fresh process per measurement, alternating (crmqueue's
``Queue.enqueue`` of a named body; a ``@huey("email").task()`` called as in Huey, its
result kept as Huey keeps it), and prints per-job wall and CPU times and the ratios of
their medians. One measurement: ``python -m bench.huey_api --one crmqueue --url URL``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from bench.common import machine, median, redis_server

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


def measure(system: str, url: str, jobs: int, workers: int) -> dict[str, float]:
    from crmqueue.config import load_settings
    from crmqueue.engine import Consumer, configure, huey, job

    @job("email")
    def noop(payload: dict[str, Any]) -> None:
        record_run()

    h = huey("email")

    @h.task()
    def huey_noop(tenant_id: str, i: int) -> None:
        record_run()

    settings = load_settings(
        overrides={"storage.url": url, "queues.email.workers": workers}, environ={}
    )
    broker = configure(settings)
    queue = broker.queue("email")
    queue.store.flush_all()
    name = f"{noop.__module__}.noop"

    wall, cpu = time.perf_counter(), time.process_time()
    if system == "crmqueue":
        for i in range(jobs):
            queue.enqueue(name, {"tenant_id": "t1", "i": i})
    else:
        for i in range(jobs):
            huey_noop(tenant_id="t1", i=i)
    enqueue = (time.perf_counter() - wall, time.process_time() - cpu)

    consumer = Consumer(broker, ["email"])
    wall, cpu = time.perf_counter(), time.process_time()
    consumer.start()
    if not done.wait(600):
        raise RuntimeError(f"only {count} of {jobs} jobs ran")
    drain = (time.perf_counter() - wall, time.process_time() - cpu)
    consumer.stop(5)
    counts = queue.store.counts()
    if counts["completed"] != jobs:
        raise RuntimeError(f"registry counts disagree: {counts}")
    us = 1e6 / jobs
    return {
        "enqueue_wall_us": enqueue[0] * us,
        "enqueue_cpu_us": enqueue[1] * us,
        "drain_wall_us": drain[0] * us,
        "drain_cpu_us": drain[1] * us,
    }


def one(system: str, url: str, jobs: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.huey_api", "--one", system, "--url", url, "--jobs",
         str(jobs)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def compare(url: str, jobs: int, runs: int) -> dict[str, dict[str, float]]:
    figures: dict[str, list[dict[str, float]]] = {"crmqueue": [], "huey-api": []}
    for _ in range(runs):
        for system in figures:
            if url.startswith("sqlite"):
                with tempfile.TemporaryDirectory() as tmp:
                    figures[system].append(one(system, f"sqlite:///{tmp}/bench.db", jobs))
            else:
                figures[system].append(one(system, url, jobs))
    return {
        system: {key: median([f[key] for f in runs_]) for key in runs_[0]}
        for system, runs_ in figures.items()
    }


def main() -> None:
    global target
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", choices=["crmqueue", "huey-api"])
    parser.add_argument("--url")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--storage", default="sqlite,redis")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.one:
        target = args.jobs
        print(json.dumps(measure(args.one, args.url, args.jobs, 10)))
        os._exit(0)
    print(f"{machine()}; {args.jobs} no-op jobs, median of {args.runs} runs per figure")
    print("| storage | figure (µs per job) | crmqueue enqueue | Huey API | ratio |")
    print("|---|---|---:|---:|---:|")
    for storage in args.storage.split(","):
        if storage == "redis":
            with redis_server() as url:
                result = compare(url, args.jobs, args.runs)
        else:
            result = compare("sqlite:///", args.jobs, args.runs)
        for key in result["crmqueue"]:
            a, b = result["crmqueue"][key], result["huey-api"][key]
            print(f"| {storage} | {key} | {a:.1f} | {b:.1f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
