"""Run the benchmarks and rewrite docs/benchmarks.md.

    .venv/bin/python -m bench.run                    # every part, 3 runs each
    .venv/bin/python -m bench.run --parts latency    # one part
    .venv/bin/python -m bench.run --parts tasks      # the producers' enqueue, about a minute
    .venv/bin/python -m bench.run --parts webhook    # webhook deliveries and fan-out
    .venv/bin/python -m bench.run --parts notification   # in-app notifications stored

A run of some parts rewrites only their sections of docs/benchmarks.md (each section says
when and how it was measured); the others are kept. Each figure is the median of --runs
runs; crmqueue and its baseline (plain Huey with the same storage and worker threads)
alternate within one run of this script, so the ratio is the figure to read: absolute
numbers on a shared 2-core machine are noisy.
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
PARTS = (
    "engine",
    "tasks",
    "latency",
    "email",
    "webhook",
    "notification",
    "scaleout",
    "iobound",
    "memory",
    "import-export",
    "report",
)


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


def collect_tasks(runs: int, url: str, jobs: int) -> dict[str, dict[str, float]]:
    """Per storage, the median over runs of each bench.tasks figure (both systems in one
    process, alternating rounds)."""
    samples: dict[str, list[dict[str, Any]]] = {"redis": [], "sqlite": []}
    for run in range(runs):
        for storage in samples:
            figures = measure(
                "bench.tasks", ["--storage", storage, "--url", url, "--jobs", str(jobs)]
            )
            samples[storage].append(figures)
            print(f"run {run + 1}/{runs} bench.tasks {storage}: {figures}", flush=True)
    return {
        storage: {
            name: median([s[name] for s in runs_of])
            for name in runs_of[0]
            if isinstance(runs_of[0][name], int | float)
        }
        for storage, runs_of in samples.items()
    }


def tasks_section(results: dict[str, dict[str, float]], jobs: int, runs: int) -> list[str]:
    from bench.tasks import CASES

    calls = {
        "send_email": "`tasks.send_email(...)`",
        "import_records": "`tasks.import_records(...)`",
        "enqueue": '`tasks.enqueue("email", {...})`',
    }
    lines = [
        "## Producers: the typed task functions",
        "",
        f"{jobs:,} enqueues per case and system, one call per job, nothing consuming:"
        " crmqueue's public functions with everything they check at enqueue (payload"
        " validation, field and template checks, the message's text) against plain Huey"
        " (`PriorityRedisHuey` / `SqliteHuey`, pickle) calling a task with the same payload"
        " dict. `send_email`: the `welcome` template with a context, a subject and a tag;"
        " `import_records`: a contacts CSV with a three-field mapping; `enqueue`: the"
        " original system's camelCase welcome email as JSON. Both systems run in one process"
        " in ten alternating rounds, so load from elsewhere hits both alike; the ratio is the"
        f" median of the rounds' ratios (then of {runs} runs), the rates the median round's."
        " See `bench/tasks.py`.",
        "",
        "| storage | call | crmqueue/s | plain Huey/s | ratio | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for storage in ("redis", "sqlite"):
        r = results[storage]
        for case in CASES:
            ratio = r[f"{case}_ratio"]
            lines.append(
                f"| {storage} | {calls[case]} | {r[f'{case}_crmqueue_per_s']:,.0f} |"
                f" {r[f'{case}_huey_per_s']:,.0f} | {ratio:.2f}× |"
                f" ≥ 0.8× {'met' if ratio >= 0.8 else '**missed**'} |"
            )
    lines += [
        "",
        "CPU per enqueue, steadier than wall time on a loaded machine (µs; the producer"
        " process's user+system time, and Redis's own from INFO cpu):",
        "",
        "| storage | call | crmqueue producer | plain Huey producer | crmqueue Redis |"
        " plain Huey Redis |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for storage in ("redis", "sqlite"):
        r = results[storage]
        for case in CASES:
            if f"{case}_crmqueue_cpu_us" not in r:
                continue
            server = [r.get(f"{case}_{system}_redis_cpu_us") for system in ("crmqueue", "huey")]
            shown = ["–" if value is None else f"{value:.0f}" for value in server]
            lines.append(
                f"| {storage} | {calls[case]} | {r[f'{case}_crmqueue_cpu_us']:.0f} |"
                f" {r[f'{case}_huey_cpu_us']:.0f} | {shown[0]} | {shown[1]} |"
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


def iobound_section(r: dict[str, float], jobs: int, runs: int) -> list[str]:
    """I/O-bound drain against Dramatiq (issue #17): bench.consumers iobound."""
    met = "met" if r["ratio"] >= 1.0 else "**missed**"
    aim = "met" if r["crmqueue_of_ideal"] >= 0.9 else "not reached"
    return [
        "## I/O-bound drain",
        "",
        f"{jobs:,} I/O-bound jobs (each waits 5 ms) on one Redis, drained by one consumer"
        " process with 10 worker threads: `crmqueue worker email` (leases, registry,"
        " retries on; `prefetch = 10`) and Dramatiq's worker (`--processes 1 --threads 10`,"
        " Redis broker, its default prefetch), alternating within each run; the ideal is"
        f" 10 workers / 5 ms = 2,000 jobs/s. Rates from the first completion to the last;"
        f" medians of {runs} runs (`python -m bench.consumers iobound`).",
        "",
        "| consumer | jobs/s | share of the ideal |",
        "|---|---:|---:|",
        f"| crmqueue | {r['crmqueue_per_s']:,.0f} | {r['crmqueue_of_ideal']:.0%} |",
        f"| Dramatiq | {r['dramatiq_per_s']:,.0f} | {r['dramatiq_of_ideal']:.0%} |",
        "",
        f"Ratio {r['ratio']:.2f}× Dramatiq (target ≥ 1×: {met}; aim 90 % of the ideal: {aim}).",
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
    parser.add_argument("--task-jobs", type=int, default=5_000, help="enqueues per tasks case")
    parser.add_argument("--idle", type=float, default=25.0)
    parser.add_argument("--ie-rows", type=int, default=1_000_000)
    parser.add_argument("--report-leads", type=int, default=100_000)
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
        if "tasks" in parts:
            results_tasks = collect_tasks(args.runs, url, args.task_jobs)
            sections += tasks_section(results_tasks, args.task_jobs, args.runs)
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
        if "webhook" in parts:
            from bench import webhook

            samples = []
            for run in range(args.runs):
                figures = measure("bench.webhook", ["round", "--url", url])
                print(f"run {run + 1}/{args.runs} webhook: {figures}", flush=True)
                samples.append(figures)
            sections += webhook.webhook_section(webhook.medians(samples), 5000, 1000)
        if "notification" in parts:
            from bench import notification

            samples = []
            for run in range(args.runs):
                figures = measure("bench.notification", ["round", "--url", url])
                print(f"run {run + 1}/{args.runs} notification: {figures}", flush=True)
                samples.append(figures)
            sections += notification.notification_section(notification.medians(samples), 10_000)
        if "scaleout" in parts:
            sections += scaleout_section(
                collect_consumers("scaleout", args.runs, url, 10_000), 10_000
            )
        if "iobound" in parts:
            samples = []
            for run in range(args.runs):
                figures = measure(
                    "bench.consumers",
                    ["iobound", "--url", url, "--jobs", "10000", "--rounds", "1"],
                )
                print(f"run {run + 1}/{args.runs} iobound: {figures}", flush=True)
                samples.append(figures)
            medians = {name: median([s[name] for s in samples]) for name in samples[0]}
            sections += iobound_section(medians, 10_000, args.runs)
        if "memory" in parts:
            sections += memory_section(collect_consumers("memory", args.runs, url, 20_000), 20_000)
    if "import-export" in parts:
        from bench import import_export

        with tempfile.TemporaryDirectory(prefix="crmqueue-bench-") as workdir:
            results = import_export.collect(args.ie_runs, args.ie_rows, Path(workdir))
        sections += import_export.section(results, args.ie_runs)
    if "report" in parts:
        from bench import report

        with tempfile.TemporaryDirectory(prefix="crmqueue-bench-") as workdir:
            figures = report.collect(args.runs, args.report_leads, Path(workdir))
        sections += report.section(figures, args.runs, args.report_leads)
    ie = "import-export" in parts
    command = f".venv/bin/python -m bench.run --parts {','.join(parts)} --runs {args.runs}"
    if ie:
        command += f" --ie-runs {args.ie_runs}"
    stamp = (
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by `{command}`: medians of"
        f" {args.runs} runs"
        + (f" (the million-row import-export part: {args.ie_runs})." if ie else ".")
    )
    header = [
        "# Benchmarks",
        "",
        "From the repository root, after `bash scripts/setup.sh dev`:"
        " `.venv/bin/python -m bench.run` runs every part; `--parts a,b` runs some and"
        " rewrites only their sections. crmqueue and its baseline alternate within each run:"
        " read the ratios, absolute figures on a shared machine are noisy.",
        f"Machine: {machine()}; Redis {redis_version()} on loopback, started by the benchmark.",
        "",
    ]
    write_results(header, stamped(sections, stamp))
    print(f"wrote {RESULTS}")


def stamped(lines: list[str], stamp: str) -> list[str]:
    """The sections with `stamp` under each heading: sections of one file may come from
    different runs."""
    out: list[str] = []
    for line in lines:
        out.append(line)
        if line.startswith("## "):
            out += ["", stamp]
    return out


def blocks(text: str) -> list[tuple[str, str]]:
    """(heading, text) of each `## ` section of a results file, in order; the part before
    the first heading is left out."""
    found = []
    for chunk in ("\n" + text).split("\n## ")[1:]:
        title = chunk.split("\n", 1)[0]
        found.append((title, "## " + chunk.rstrip("\n") + "\n"))
    return found


def write_results(header: list[str], sections: list[str]) -> None:
    """Replace the measured sections in docs/benchmarks.md, keep the others in place,
    append new ones, and end with bench/NOTES.md as it is now."""
    new = dict(blocks("\n".join(sections)))
    kept = blocks(RESULTS.read_text()) if RESULTS.exists() else []
    note_titles = {title for title, _ in blocks("\n".join(notes()))}
    order = [title for title, _ in kept if title not in note_titles]
    order += [title for title in new if title not in order]
    previous = dict(kept)
    body = [new.get(title) or previous[title] for title in order]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(header) + "\n" + "\n".join(body + notes()))


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return out.split("v=")[1].split()[0] if "v=" in out else "unknown"


def notes() -> list[str]:
    path = ROOT / "bench" / "NOTES.md"
    return [path.read_text()] if path.exists() else []


if __name__ == "__main__":
    main()
