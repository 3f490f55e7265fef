"""What serving the admin API costs the consumers (issue #15: at most 5 %).

    python -m bench.api --url redis://... [--jobs 20000] [--rounds 3]

Drains no-op jobs with `crmqueue run --queues email` in three modes, in turn: `--no-api`;
the API on and idle; the API on while a poller process asks it what a dashboard and
Prometheus would (stats and a job page every 2 s, /metrics every 10 s). Prints the median
drain rate of each and the consumer process's CPU time per job (its own, not the API
child's), and their ratios to --no-api.
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

import httpx

from bench.common import free_port
from crmqueue.api.auth import config_line, new_token, parse_role
from crmqueue.config import load_settings
from crmqueue.engine import configure
from crmqueue.engine.queues import Enqueue

ROOT = Path(__file__).resolve().parent.parent

POLLER = """
import sys, time, httpx
url, token = sys.argv[1], sys.argv[2]
headers = {"Authorization": "Bearer " + token}
tick = 0
while True:
    try:
        httpx.get(url + "/api/v1/admin/jobs/stats", headers=headers, timeout=5)
        httpx.get(url + "/api/v1/admin/jobs/email?state=completed&limit=50", headers=headers,
                  timeout=5)
        if tick % 5 == 0:
            httpx.get(url + "/metrics", headers=headers, timeout=5)
    except httpx.TransportError:
        pass
    tick += 2
    time.sleep(2)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain(url: str, config: Path, mode: str, jobs: int, token: str, port: int) -> dict[str, float]:
    api = mode != "no_api"
    queue = configure(load_settings(overrides={"storage.url": url}, environ={})).queue("email")
    queue.store.flush_all()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "crmqueue", "run", "--queues", "email", "--config", str(config)]
    proc = subprocess.Popen([*args] + ([] if api else ["--no-api"]), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    poller = None
    try:
        while not queue.store.live_consumers():
            time.sleep(0.05)
        if api:  # the figure is the API serving, not its start-up
            answered = False
            while not answered:
                try:
                    answered = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success
                except httpx.TransportError:
                    time.sleep(0.1)
        if mode == "api_polled":
            poller = subprocess.Popen(
                [sys.executable, "-c", POLLER, f"http://127.0.0.1:{port}", token], env=env
            )
        time.sleep(2)  # the API child's start-up is not part of the figure
        items = [Enqueue("bench.jobs.noop", {"tenant_id": "t1"}) for _ in range(jobs)]
        for begin in range(0, jobs, 1000):
            queue.enqueue_many(items[begin : begin + 1000])
        cpu_before = cpu_seconds(proc.pid)
        started = time.perf_counter()
        while queue.store.counts()["completed"] < jobs:
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(proc.pid) - cpu_before
    finally:
        if poller is not None:
            poller.kill()
            poller.wait()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return {"per_s": jobs / elapsed, "cpu_us_per_job": cpu / jobs * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    token = new_token()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "crmqueue.toml"
        line = config_line(parse_role("admin"), token)
        config.write_text(
            f'[storage]\nurl = "{args.url}"\n[runner]\nimports = ["bench.jobs"]\n'
            f'[logging]\nlevel = "WARNING"\n[api]\nport = {port}\ntokens = ["{line}"]\n'
        )
        modes = ["no_api", "api_idle", "api_polled"]
        results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
        for round_ in range(args.rounds):  # rotate which goes first
            for mode in modes[round_ % 3 :] + modes[: round_ % 3]:
                results[mode].append(drain(args.url, config, mode, args.jobs, token, port))
    figures = {
        f"{name}_{key}": statistics.median(r[key] for r in runs)
        for name, runs in results.items()
        for key in ("per_s", "cpu_us_per_job")
    }
    for mode in ("api_idle", "api_polled"):
        figures[f"rate_ratio_{mode}"] = figures[f"{mode}_per_s"] / figures["no_api_per_s"]
        figures[f"cpu_ratio_{mode}"] = (
            figures[f"{mode}_cpu_us_per_job"] / figures["no_api_cpu_us_per_job"]
        )
    rounds = {name: [round(r["per_s"]) for r in runs] for name, runs in results.items()}
    print(json.dumps({**{k: round(v, 3) for k, v in figures.items()}, "rounds_per_s": rounds}))


if __name__ == "__main__":
    main()
