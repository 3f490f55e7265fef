"""What job events cost: the no-op drain of bench.engine with the event stream written
(``[events] max_len`` default) and not written (``max_len = 0``, every write skipped),
alternating in fresh processes, with nobody listening.

    python -m bench.events --storage sqlite --runs 5
    python -m bench.events --storage redis --url redis://127.0.0.1:6379/15 --runs 5

    python -m bench.events --storage sqlite --store-drain 10 --runs 5

Per run and setting, one child process: 2,000 single enqueues, then N jobs enqueued in
batches of 1,000 and drained by one consumer with 10 worker threads. Prints one JSON line
a child (CPU microseconds per job of this process, and of the Redis server from INFO
cpu; kilobytes per job this process wrote during the drain, /proc/self/io wchar: on SQLite
the WAL frames and checkpoints, a steady figure; drain jobs/s), then the medians and the
ratio of the medians (events on / off). CPU per job is the steadier figure on a shared
machine; wall-clock rates swing with the load.

``--store-drain K`` measures the SQLite store alone, in this process (no consumer, no
threads): N jobs enqueued in batches of 1,000, then claimed K at a time, each claim's
jobs completed in one complete_many, with automatic checkpoints off so that the WAL holds
every frame the drain wrote. Prints CPU microseconds and WAL frames (pages written) per
job for events on and off; frames are exact and do not depend on the machine's load.
(Under ``valgrind --tool=callgrind`` at two values of --jobs the same mode gives
instructions per job.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

FIGURES = (
    "enqueue_cpu_us", "bulk_cpu_us", "drain_cpu_us", "drain_server_us", "drain_write_kb",
    "drain_per_s",
)  # fmt: skip


def written_bytes() -> int:
    """Bytes this process has passed to write calls (Linux /proc/self/io wchar: the WAL
    frames and checkpoints of SQLite, the socket of Redis); 0 elsewhere."""
    try:
        with open("/proc/self/io") as io:
            return next(int(line.split()[1]) for line in io if line.startswith("wchar:"))
    except (OSError, StopIteration):
        return 0


def child(url: str, jobs: int, max_len: int) -> dict[str, Any]:
    import redis

    from crmqueue.config import load_settings
    from crmqueue.engine import Consumer, configure, job
    from crmqueue.engine.queues import Enqueue

    done = threading.Event()
    count = [0]
    lock = threading.Lock()

    @job("email")
    def noop(payload: dict[str, Any]) -> None:
        with lock:
            count[0] += 1
            if count[0] >= jobs:
                done.set()

    overrides = {"storage.url": url, "queues.email.workers": 10, "events.max_len": max_len}
    broker = configure(load_settings(overrides=overrides, environ={}))
    queue = broker.queue("email")
    queue.store.flush_all()
    client = redis.Redis.from_url(url) if url.startswith("redis") else None

    def server_cpu() -> float:
        if client is None:
            return 0.0
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    name = f"{noop.__module__}.noop"
    single = 2000
    cpu = time.process_time()
    for i in range(single):
        queue.enqueue(name, {"tenant_id": "t1", "i": i})
    enqueue_cpu = (time.process_time() - cpu) / single * 1e6
    queue.store.flush_all()
    items = [Enqueue(name, {"tenant_id": "t1", "i": i}) for i in range(jobs)]
    cpu = time.process_time()
    for start in range(0, jobs, 1000):
        queue.enqueue_many(items[start : start + 1000])
    bulk_cpu = (time.process_time() - cpu) / jobs * 1e6
    consumer = Consumer(broker, ["email"])
    cpu, wall, server, written = (
        time.process_time(), time.perf_counter(), server_cpu(), written_bytes()
    )  # fmt: skip
    consumer.start()
    if not done.wait(600):
        raise RuntimeError(f"only {count[0]} of {jobs} jobs ran")
    figures = {
        "enqueue_cpu_us": enqueue_cpu,
        "bulk_cpu_us": bulk_cpu,
        "drain_cpu_us": (time.process_time() - cpu) / jobs * 1e6,
        "drain_server_us": (server_cpu() - server) / jobs * 1e6,
        "drain_write_kb": (written_bytes() - written) / jobs / 1024,
        "drain_per_s": jobs / (time.perf_counter() - wall),
    }
    consumer.stop(5)
    return {k: round(v, 1) for k, v in figures.items()}


def store_drain(jobs: int, batch: int, max_len: int) -> dict[str, float]:
    """The SQLite store's own drain cost (see the module docstring)."""
    from crmqueue.engine.storage import NewJob, SqliteJobStore

    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteJobStore("email", f"{tmp}/queues.db", events_max_len=max_len)
        new = [
            NewJob(os.urandom(16).hex(), "email", "bench.events.noop", "t1", 0, 3, b"x" * 250)
            for _ in range(jobs)
        ]
        for start in range(0, jobs, 1000):
            store.enqueue_jobs(new[start : start + 1000])
        conn = store._connection()
        conn.execute("pragma wal_autocheckpoint = 0")
        conn.execute("pragma wal_checkpoint(truncate)")
        cpu, done = time.process_time(), 0
        while claimed := store.claim("bench-host:1:abcdef", 60, batch).jobs:
            store.complete_many([(claim, None) for claim in claimed], 3600)
            done += len(claimed)
        cpu = time.process_time() - cpu
        frames = os.path.getsize(f"{tmp}/queues.db-wal") / (24 + 4096)
        conn.close()
    assert done == jobs, done
    return {"drain_cpu_us": round(cpu / jobs * 1e6, 1), "wal_frames": round(frames / jobs, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", choices=["redis", "sqlite"], required=True)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--jobs", type=int, default=6000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--store-drain", type=int, default=0, metavar="K")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.store_drain:
        figures: dict[int, list[dict[str, float]]] = {10_000: [], 0: []}
        for _ in range(args.runs):
            for max_len, rows in figures.items():
                rows.append(store_drain(args.jobs, args.store_drain, max_len))
                print(json.dumps({"max_len": max_len, **rows[-1]}), flush=True)
        med = {
            m: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            for m, rows in figures.items()
        }
        ratios = {k: round(med[10_000][k] / med[0][k], 3) for k in med[0]}
        print(
            json.dumps(
                {
                    "store_drain": args.store_drain,
                    "on": med[10_000],
                    "off": med[0],
                    "ratios": ratios,
                }
            )
        )
        return
    if args.child is not None:
        print(json.dumps(child(args.url, args.jobs, args.child)))
        os._exit(0)
    results: dict[int, list[dict[str, Any]]] = {10_000: [], 0: []}
    for _ in range(args.runs):
        for max_len in results:
            with tempfile.TemporaryDirectory() as tmp:
                url = args.url if args.storage == "redis" else f"sqlite:///{tmp}/bench.db"
                out = subprocess.run(
                    [sys.executable, "-m", "bench.events", "--storage", args.storage, "--url",
                     url, "--jobs", str(args.jobs), "--child", str(max_len)],
                    check=True, capture_output=True, text=True,
                ).stdout  # fmt: skip
            row = json.loads(out.strip().splitlines()[-1])
            print(json.dumps({"storage": args.storage, "max_len": max_len, **row}), flush=True)
            results[max_len].append(row)
    medians = {
        f"events_{'on' if max_len else 'off'}": {
            k: statistics.median(r[k] for r in rows) for k in FIGURES
        }
        for max_len, rows in results.items()
    }
    on, off = medians["events_on"], medians["events_off"]
    ratios = {k: round(on[k] / off[k], 3) for k in FIGURES if off[k]}
    print(json.dumps({"storage": args.storage, "medians": medians, "ratios": ratios}))


if __name__ == "__main__":
    main()
