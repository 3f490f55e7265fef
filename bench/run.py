"""Run the benchmarks and rewrite docs/benchmarks.md.

    .venv/bin/python -m bench.run                    # every part, 3 runs each
    .venv/bin/python -m bench.run --parts latency    # one part

Each figure is the median of --runs runs; crmqueue and its baseline (plain Huey with the
same storage and worker threads) alternate within one run of this script, so the ratio is
the figure to read: absolute numbers on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import machine, median, redis_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "benchmarks.md"
PARTS = ("engine", "latency", "email", "scaleout", "memory", "import-export")


def measure(module: str, args: list[str]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def collect(
    module: str,
    runs: int,
    url: str,
    extra: list[str],
    storages: tuple[str, ...] = ("redis", "sqlite"),
) -> dict[tuple[str, str], dict[str, float]]:
    """Median of each figure per (system, storage), systems alternating within each run."""
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in range(runs):
        for storage in storages:
            for system in ("crmqueue", "huey"):
                figures = measure(
                    module, ["--system", system, "--storage", storage, "--url", url, *extra]
                )
                samples.setdefault((system, storage), []).append(figures)
                print(f"run {run + 1}/{runs} {module} {system}/{storage}: {figures}", flush=True)
    return {
        key: {
            name: median([s[name] for s in runs_of_key])
            for name in runs_of_key[0]
            if isinstance(runs_of_key[0][name], int | float)
        }
        for key, runs_of_key in samples.items()
    }


def engine_section(results: dict[tuple[str, str], dict[str, float]], jobs: int) -> list[str]:
    lines = [
        "## Engine overhead",
        "",
        f"{jobs:,} no-op jobs, one consumer process with 10 worker threads. crmqueue runs"
        " with leases, the job registry and retries on; the baseline is plain Huey"
        " (`PriorityRedisHuey` / `SqliteHuey`, thread consumer). Enqueue: one call per job"
        " (crmqueue's engine path, without payload validation); bulk: `enqueue_many` in"
        " batches of 1,000; drain: all jobs enqueued first, then the consumer starts.",
        "",
        "| storage | figure | crmqueue | plain Huey | ratio | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for storage in ("redis", "sqlite"):
        ours, base = results[("crmqueue", storage)], results[("huey", storage)]
        for name, label in (("enqueue_per_s", "enqueue/s"), ("drain_per_s", "drain/s")):
            ratio = ours[name] / base[name]
            lines.append(
                f"| {storage} | {label} | {ours[name]:,.0f} | {base[name]:,.0f} |"
                f" {ratio:.2f}× | ≥ 0.8× {'met' if ratio >= 0.8 else '**missed**'} |"
            )
        bulk = ours["bulk_enqueue_per_s"] / ours["enqueue_per_s"]
        lines.append(
            f"| {storage} | bulk enqueue/s | {ours['bulk_enqueue_per_s']:,.0f} | – |"
            f" {bulk:.1f}× single | ≥ 5× single {'met' if bulk >= 5 else '**missed**'} |"
        )
    return [*lines, ""]


def latency_section(
    steady: dict[tuple[str, str], dict[str, float]],
    idle: dict[tuple[str, str], dict[str, float]],
    idle_seconds: float,
) -> list[str]:
    lines = [
        "## Pickup latency",
        "",
        "From enqueue (in a separate producer process) until the body starts, one job at a"
        " time into an idle queue: 200 jobs back to back (median of the runs' p50 and p99),"
        f" then on SQLite 2 jobs each enqueued after the queue sat idle for {idle_seconds:g} s"
        " (one run: idling is slow to measure). Milliseconds.",
        "",
        "| storage | system | p50 | p99 | after idling (max) |",
        "|---|---|---:|---:|---:|",
    ]
    for storage in ("redis", "sqlite"):
        for system in ("crmqueue", "huey"):
            r = steady[(system, storage)]
            after = idle.get((system, storage))
            name = "crmqueue" if system == "crmqueue" else "plain Huey"
            idle_cell = f"{after['idle_max_ms']:.2f}" if after else "– (blocking pop)"
            lines.append(
                f"| {storage} | {name} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {idle_cell} |"
            )
    redis_p50 = steady[("crmqueue", "redis")]["p50_ms"]
    sqlite_worst = max(
        steady[("crmqueue", "sqlite")]["p99_ms"], idle[("crmqueue", "sqlite")]["idle_max_ms"]
    )
    lines += [
        "",
        f"Targets: Redis p50 ≤ 2 ms: {redis_p50:.2f} ms"
        f" ({'met' if redis_p50 <= 2 else '**missed**'});"
        f" SQLite p99 ≤ 50 ms, also after idling: {sqlite_worst:.2f} ms"
        f" ({'met' if sqlite_worst <= 50 else '**missed**'}).",
        "",
    ]
    return lines


def collect_consumers(part: str, runs: int, url: str, jobs: int) -> dict[str, float]:
    samples = []
    for run in range(runs):
        figures = measure("bench.consumers", [part, "--url", url, "--jobs", str(jobs)])
        print(f"run {run + 1}/{runs} {part}: {figures}", flush=True)
        samples.append(figures)
    return {name: median([s[name] for s in samples]) for name in samples[0]}


def scaleout_section(r: dict[str, float], jobs: int) -> list[str]:
    met = "met" if r["ratio"] >= 1.7 else "**missed**"
    return [
        "## Scale-out",
        "",
        f"{jobs:,} I/O-bound jobs (each waits 5 ms, as an HTTP call would) on one Redis, drained"
        " by one `crmqueue worker email` process (10 threads), then by two.",
        "",
        "| consumers | jobs/s |",
        "|---|---:|",
        f"| 1 process | {r['one_per_s']:,.0f} |",
        f"| 2 processes | {r['two_per_s']:,.0f} |",
        "",
        f"Ratio {r['ratio']:.2f}× (target ≥ 1.7×: {met}).",
        "",
    ]


def memory_section(r: dict[str, float], jobs: int) -> list[str]:
    worst = max(r["idle_peak_rss_mb"], r["loaded_peak_rss_mb"])
    return [
        "## Memory",
        "",
        "Peak RSS (VmHWM) of `crmqueue run` with all five queues, the scheduler and the"
        f" maintenance thread: idle for 5 s, then after draining {jobs:,} no-op jobs on the"
        " email queue (the engine's own load; memory under the email load is in the Email"
        " section).",
        "",
        "| state | peak RSS |",
        "|---|---:|",
        f"| idle | {r['idle_peak_rss_mb']:.0f} MB |",
        f"| after the load | {r['loaded_peak_rss_mb']:.0f} MB |",
        "",
        f"Target < 150 MB: {'met' if worst < 150 else '**missed**'}.",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--idle", type=float, default=25.0)
    parser.add_argument("--ie-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--ie-runs", type=int, default=1, help="runs of the million-row part (~3 min each)"
    )
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    sections: list[str] = []
    with redis_server() as url:
        if "engine" in parts:
            results = collect("bench.engine", args.runs, url, ["--jobs", str(args.jobs)])
            sections += engine_section(results, args.jobs)
        if "latency" in parts:
            steady = collect("bench.latency", args.runs, url, ["--jobs", "200"])
            idle_args = ["--jobs", "20", "--idle", str(args.idle), "--idle-jobs", "2"]
            idle = collect("bench.latency", 1, url, idle_args, storages=("sqlite",))
            sections += latency_section(steady, idle, args.idle)
        if "email" in parts:
            from bench.email import email_section, medians

            samples = []
            for run in range(args.runs):
                figures = measure("bench.email", ["round", "--url", url, "--emails", "5000"])
                print(f"run {run + 1}/{args.runs} email: {figures}", flush=True)
                samples.append(figures)
            sections += email_section(medians(samples), 5000)
        if "scaleout" in parts:
            sections += scaleout_section(
                collect_consumers("scaleout", args.runs, url, 10_000), 10_000
            )
        if "memory" in parts:
            sections += memory_section(collect_consumers("memory", args.runs, url, 20_000), 20_000)
    if "import-export" in parts:
        from bench import import_export

        with tempfile.TemporaryDirectory(prefix="crmqueue-bench-") as workdir:
            results = import_export.collect(args.ie_runs, args.ie_rows, Path(workdir))
        sections += import_export.section(results, args.ie_runs)
    header = [
        "# Benchmarks",
        "",
        f"Command: `.venv/bin/python -m bench.run --parts {','.join(parts)} --runs {args.runs}"
        f" --ie-runs {args.ie_runs}`"
        f" (from the repository root, after `bash scripts/setup.sh dev`).",
        f"Machine: {machine()}; Redis {redis_version()} on loopback, started by the benchmark.",
        f"Measured: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Figures are medians of"
        f" {args.runs} runs (the million-row import-export part: {args.ie_runs}); crmqueue and"
        " its baseline alternate within each run.",
        "",
    ]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(header + sections + notes()))
    print(f"wrote {RESULTS}")


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return out.split("v=")[1].split()[0] if "v=" in out else "unknown"


def notes() -> list[str]:
    path = ROOT / "bench" / "NOTES.md"
    return [path.read_text()] if path.exists() else []


if __name__ == "__main__":
    main()
