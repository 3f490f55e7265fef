"""Producer cost: the typed task functions' enqueue (validation, every enqueue-time check,
the store) against plain Huey enqueuing the same payload dict.

    python -m bench.tasks --storage redis --url redis://... [--jobs 5000] [--rounds 10]

Both systems run in this one process, in alternating rounds of jobs/rounds enqueues per
case (one call per job), so a burst of load from elsewhere on a shared machine hits both
alike; the figures are the median round's rate and the median of the rounds' ratios.
CPU per enqueue is steadier than wall time on a loaded machine: ``<case>_<system>_cpu_us``
is this process's user+system time per call over all rounds, and on Redis
``<case>_<system>_redis_cpu_us`` the server's own (INFO cpu; the benchmark's server serves
nobody else). Prints one JSON line. The cases:

- ``send_email``: ``crmqueue.tasks.send_email(...)`` with the built-in ``welcome``
  template, a context, a subject and a tag;
- ``import_records``: ``crmqueue.tasks.import_records(...)`` of a contacts CSV with a
  three-field mapping;
- ``enqueue``: ``crmqueue.tasks.enqueue("email", ...)`` of the original system's camelCase
  welcome email (JSON as its client code sent it).

The baseline is plain Huey (``PriorityRedisHuey`` / ``SqliteHuey``, its default pickle
serializer) calling a task with the same payload dict. Nothing consumes the jobs.
``--profile FILE`` writes a cProfile of crmqueue's rounds (read it with pstats).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

EMAIL: dict[str, Any] = {
    "tenant_id": "tenant-123",
    "to": "jane.roe@example.com",
    "subject": "Welcome to CRMFlow, Jane",
    "template": "welcome",
    "context": {"first_name": "Jane", "login_url": "https://app.example.com/login"},
    "tags": ["onboarding"],
}
IMPORT: dict[str, Any] = {
    "tenant_id": "tenant-123",
    "user_id": "user-456",
    "file_url": "imports/contacts.csv",
    "file_type": "csv",
    "entity_type": "contacts",
    "mapping_config": {"email": "E-mail", "first_name": "First name", "last_name": "Last name"},
}
ORIGINAL: dict[str, Any] = {
    "tenantId": "tenant-1",
    "to": "user@example.com",
    "subject": "Welcome to CRMFlow",
    "template": "welcome",
    "context": {"firstName": "John", "loginUrl": "https://app.example.com/login"},
}
CASES = ("send_email", "import_records", "enqueue")


def crmqueue_calls(url: str) -> dict[str, Callable[[], Any]]:
    from crmqueue import tasks
    from crmqueue.config import load_settings
    from crmqueue.engine import configure

    broker = configure(load_settings(overrides={"storage.url": url}, environ={}))
    for queue in broker.queues.values():
        queue.store.flush_all()
    return {
        "send_email": lambda: tasks.send_email(**EMAIL),
        "import_records": lambda: tasks.import_records(**IMPORT),
        "enqueue": lambda: tasks.enqueue("email", ORIGINAL, priority=100),
    }


def huey_calls(url: str) -> dict[str, Callable[[], Any]]:
    from huey import PriorityRedisHuey, SqliteHuey

    if url.startswith("sqlite"):
        huey: Any = SqliteHuey("bench", filename=url.removeprefix("sqlite:///"), results=False)
    else:
        huey = PriorityRedisHuey("bench", url=url, results=False)
    huey.flush()

    @huey.task()
    def send_email(payload: dict[str, Any]) -> None:
        pass

    @huey.task()
    def import_records(payload: dict[str, Any]) -> None:
        pass

    return {
        "send_email": lambda: send_email(EMAIL),
        "import_records": lambda: import_records(IMPORT),
        "enqueue": lambda: send_email(ORIGINAL, priority=100),
    }


def timed(count: int, call: Callable[[], Any], profiler: cProfile.Profile | None = None) -> float:
    """Seconds for `count` calls."""
    if profiler:
        profiler.enable()
    started = time.perf_counter()
    for _ in range(count):
        call()
    elapsed = time.perf_counter() - started
    if profiler:
        profiler.disable()
    return elapsed


def process_cpu() -> float:
    """This process's user+system CPU seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_cpu(url: str) -> Callable[[], float]:
    """A reader of the Redis server's user+system CPU seconds (INFO cpu, microsecond
    precision), or of 0.0 for SQLite."""
    if url.startswith("sqlite"):
        return lambda: 0.0
    import redis

    client = redis.Redis.from_url(url)

    def read() -> float:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    return read


def measure(
    crmqueue_url: str, huey_url: str, jobs: int, rounds: int, profile: str | None
) -> dict[str, float]:
    ours, base = crmqueue_calls(crmqueue_url), huey_calls(huey_url)
    server = server_cpu(crmqueue_url)
    profiler = cProfile.Profile() if profile else None
    per_round = max(jobs // rounds, 1)
    figures: dict[str, float] = {}
    for case in CASES:
        ours[case]()  # first calls: caches and connections, not measured
        base[case]()
        rates: dict[str, list[float]] = {"crmqueue": [], "huey": []}
        cpu = {"crmqueue": [0.0, 0.0], "huey": [0.0, 0.0]}  # process, server seconds
        ratios = []
        for index in range(rounds):
            # Alternate which system goes first: neither always gets the warmer cache.
            order = ("crmqueue", "huey") if index % 2 == 0 else ("huey", "crmqueue")
            seconds = {}
            for system in order:
                call = ours[case] if system == "crmqueue" else base[case]
                before = process_cpu(), server()
                seconds[system] = timed(per_round, call, profiler if system == "crmqueue" else None)
                cpu[system][0] += process_cpu() - before[0]
                cpu[system][1] += server() - before[1]
                rates[system].append(per_round / seconds[system])
            ratios.append(seconds["huey"] / seconds["crmqueue"])
        figures[f"{case}_crmqueue_per_s"] = statistics.median(rates["crmqueue"])
        figures[f"{case}_huey_per_s"] = statistics.median(rates["huey"])
        figures[f"{case}_ratio"] = statistics.median(ratios)
        for system, (process, on_server) in cpu.items():
            figures[f"{case}_{system}_cpu_us"] = process / (per_round * rounds) * 1e6
            if not crmqueue_url.startswith("sqlite"):
                figures[f"{case}_{system}_redis_cpu_us"] = on_server / (per_round * rounds) * 1e6
    if profiler and profile:
        profiler.dump_stats(profile)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", choices=["redis", "sqlite"], required=True)
    parser.add_argument("--url", default=None, help="Redis URL (for --storage redis)")
    parser.add_argument("--jobs", type=int, default=5000, help="enqueues per case and system")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--profile", default=None, help="cProfile output (crmqueue only)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        if args.storage == "redis":
            ours = theirs = args.url
        else:
            ours, theirs = f"sqlite:///{tmp}/crmqueue.db", f"sqlite:///{tmp}/huey.db"
        figures = measure(ours, theirs, args.jobs, args.rounds, args.profile)
    print(json.dumps({"storage": args.storage, **figures}))
    os._exit(0)


if __name__ == "__main__":
    main()
