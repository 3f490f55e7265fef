"""Scale-out and memory: real `crmqueue` consumer processes on one storage.

    python -m bench.consumers scaleout --url redis://... [--jobs 10000]
    python -m bench.consumers memory --url redis://... [--jobs 20000]
    python -m bench.consumers iobound --url redis://... [--jobs 10000]

scaleout: I/O-bound jobs (5 ms waits) drained by one `crmqueue worker email` process,
then by two; prints both drain rates and their ratio.
iobound: the same I/O-bound jobs drained by one `crmqueue worker email` process (10
threads), then by one Dramatiq worker process (10 threads, Redis broker), alternately;
prints both rates and their share of the ideal (10 workers / 5 ms = 2,000 jobs/s).
memory: `crmqueue run` with all five queues: peak RSS idle, then after draining no-op jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crmqueue.config import load_settings
from crmqueue.engine import configure
from crmqueue.engine.queues import Enqueue

ROOT = Path(__file__).resolve().parent.parent
CRMQUEUE = str(Path(sys.executable).parent / "crmqueue")


def write_config(directory: Path, url: str) -> Path:
    config = directory / "crmqueue.toml"
    config.write_text(
        f'[storage]\nurl = "{url}"\n[runner]\nimports = ["bench.jobs"]\n'
        '[logging]\nlevel = "WARNING"\n'
    )
    return config


def start(args: list[str], config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [CRMQUEUE, *args, "--config", str(config)], cwd=config.parent, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wait_for_consumers(queue: object, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(queue.store.live_consumers()) < count:  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise RuntimeError("consumers did not start")
        time.sleep(0.05)


def drain(url: str, config: Path, processes: int, jobs: int, first_done: bool = False) -> float:
    """Drain rate from the first job seen active (or, with `first_done`, completed: the
    point Dramatiq's count can show) until the last completes."""
    queue = configure(load_settings(overrides={"storage.url": url}, environ={})).queue("email")
    queue.store.flush_all()
    items = [Enqueue("bench.jobs.io_wait", {"tenant_id": "t1"}) for _ in range(jobs)]
    for begin in range(0, jobs, 1000):
        queue.enqueue_many(items[begin : begin + 1000])
    procs = [start(["worker", "email"], config) for _ in range(processes)]
    try:
        started = None
        while True:
            counts = queue.store.counts()
            begun = counts["completed"] if first_done else counts["active"] or counts["completed"]
            if started is None and begun:
                started = time.perf_counter()
            if counts["completed"] >= jobs:
                break
            time.sleep(0.02)
        return jobs / (time.perf_counter() - (started or time.perf_counter()))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)


def drain_dramatiq(url: str, jobs: int) -> float:
    """Dramatiq's rate on the same jobs: from its first acknowledgement until its queue's
    message hash (a message leaves it when acknowledged) is empty."""
    import redis

    os.environ["BENCH_REDIS_URL"] = url
    from bench.dramatiq_jobs import io_wait

    client = redis.Redis.from_url(url)
    broker = io_wait.broker
    broker.flush_all()
    pipe_size = 1000
    for begin in range(0, jobs, pipe_size):
        for _ in range(min(pipe_size, jobs - begin)):
            io_wait.send()
    key = f"dramatiq:{io_wait.queue_name}.msgs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dramatiq"), "bench.dramatiq_jobs",
         "--processes", "1", "--threads", "10"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        started = None
        deadline = time.monotonic() + 300
        while True:
            left = int(client.hlen(key))
            if started is None and left < jobs:
                started = time.perf_counter()
            if left == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"dramatiq left {left} jobs")
            time.sleep(0.02)
        return jobs / (time.perf_counter() - (started or time.perf_counter()))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def iobound(url: str, config: Path, jobs: int, rounds: int) -> dict[str, float]:
    """crmqueue and Dramatiq alternately, `rounds` times each; medians."""
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(rounds):
        ours.append(drain(url, config, 1, jobs, first_done=True))
        theirs.append(drain_dramatiq(url, jobs))
    ideal = 10 / 0.005
    one, other = statistics.median(ours), statistics.median(theirs)
    return {
        "crmqueue_per_s": one,
        "dramatiq_per_s": other,
        "crmqueue_of_ideal": one / ideal,
        "dramatiq_of_ideal": other / ideal,
        "ratio": one / other,
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def memory(url: str, config: Path, jobs: int) -> dict[str, float]:
    queue = configure(load_settings(overrides={"storage.url": url}, environ={})).queue("email")
    queue.store.flush_all()
    proc = start(["run"], config)
    try:
        wait_for_consumers(queue, 1)
        time.sleep(5)  # idle: the figure is the process sitting still
        idle = peak_rss_mb(proc.pid)
        items = [Enqueue("bench.jobs.noop", {"tenant_id": "t1"}) for _ in range(jobs)]
        for begin in range(0, jobs, 1000):
            queue.enqueue_many(items[begin : begin + 1000])
        while queue.store.counts()["completed"] < jobs:
            time.sleep(0.05)
        loaded = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return {"idle_peak_rss_mb": idle, "loaded_peak_rss_mb": loaded}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["scaleout", "memory", "iobound"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), args.url)
        if args.part == "scaleout":
            one = drain(args.url, config, 1, args.jobs)
            two = drain(args.url, config, 2, args.jobs)
            figures = {"one_per_s": one, "two_per_s": two, "ratio": two / one}
        elif args.part == "iobound":
            figures = iobound(args.url, config, args.jobs, args.rounds)
        else:
            figures = memory(args.url, config, args.jobs)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
