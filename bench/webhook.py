"""Webhooks: the real webhook queue against a loopback receiver that answers after 5 ms.

    python -m bench.webhook round --url redis://... [--deliveries 5000] [--publishes 1000]

One round (run.py repeats it and takes medians) prints one JSON line:

- `crmqueue worker webhook` (one process, 10 worker threads) draining N pre-enqueued
  `deliver_webhook` jobs spread over 10 endpoints of one tenant: endpoint lookup in the
  CRM store (SQLite), SSRF-guarded POST with Standard Webhooks headers, one delivery-log
  row per attempt;
- the baseline: plain Huey (`PriorityRedisHuey`, thread consumer, 10 workers) whose task
  builds the same body, signs it the same way and POSTs it with urllib3 with the same
  headers and timeouts: the same work minus crmqueue's engine and webhook layer (no
  endpoint store, no delivery log, no SSRF check);
- two `crmqueue worker webhook` processes draining N jobs;
- fan-out: P `publish_event` jobs for a tenant with 10 subscribed endpoints, pre-enqueued
  at a higher priority than deliveries (so the consumer runs them first), drained by one
  process: deliveries enqueued per second, read off the publish jobs' finish times.

The receiver (its own asyncio process) verifies every signature with the reference
`standardwebhooks` library and counts rejected and repeated message ids; a round fails if
it saw any. Rates are read off its clock: the arrivals of the 5th to the 95th percentile
delivery, so process start-up and the last stragglers do not count.

Internal parts, started as subprocesses by a round:
    python -m bench.webhook receiver --port P [--delay 0.005]
    python -m bench.webhook huey --url redis://... --base-url http://127.0.0.1:P
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import urllib3

from bench.common import ServerProcess, median, server_process
from bench.email import (
    WINDOW,
    _Connection,
    cpu_seconds,
    machine_busy_seconds,
    redis_cpu_seconds,
    stop,
)

ROOT = Path(__file__).resolve().parent.parent
CRMQUEUE = str(Path(sys.executable).parent / "crmqueue")
# One known secret for every endpoint, so the receiver can verify (never a real one).
SECRET = "whsec_" + base64.b64encode(b"crmqueue-bench-secret-0123456789").decode()
TENANT = "t1"
FANOUT_TENANT = "t2"
ENDPOINTS = 10
EVENT = "contact.updated"
HUEY_NAME = "bench-webhook"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
TIMEOUT = 180.0


def event_data(i: int) -> dict[str, Any]:
    """A contact.updated payload of a realistic size (about 300 bytes of JSON)."""
    return {
        "contactId": f"contact-{i}", "email": f"user{i}@example.com", "firstName": f"User{i}",
        "lastName": "Example", "status": "customer", "owner": "user-42",
        "changes": {"status": {"from": "lead", "to": "customer"}},
        "updatedAt": "2026-11-30T04:00:00Z",
    }  # fmt: skip


# ---------------------------------------------------------------- the receiver


class Receiver:
    """POST /hook/<n>: verifies the Standard Webhooks signature with the reference
    library, records the arrival, answers 200 after `delay` seconds. GET /stats and POST
    /reset are the benchmark's own. Attributes `answered` and `last` are what
    bench.email's connection updates when it answers."""

    def __init__(self, delay: float) -> None:
        import standardwebhooks

        self.verifier = standardwebhooks.Webhook(SECRET)
        self.delay = delay
        self.reset()

    def reset(self) -> None:
        self.arrivals: list[float] = []
        self.answered = 0
        self.last = 0.0
        self.rejected: list[str] = []
        self.duplicates = 0
        self.ids: set[str] = set()
        self.cpu_start = time.process_time()

    def accept(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        try:
            self.verifier.verify(body, headers, json_parse=False)
        except Exception as exc:
            self.rejected.append(f"{type(exc).__name__}: {exc}")
            return 400, b'{"error":"bad signature"}'
        message_id = headers["webhook-id"]
        if message_id in self.ids:
            self.duplicates += 1
        self.ids.add(message_id)
        self.arrivals.append(time.monotonic())
        return 200, b""

    def stats(self, times: bool) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "accepted": len(self.arrivals),
            "answered": self.answered,
            "rejected": len(self.rejected),
            "first_rejection": self.rejected[0] if self.rejected else None,
            "duplicates": self.duplicates,
            "last": self.last,
            "cpu_seconds": time.process_time() - self.cpu_start,
        }
        if times:
            figures["arrivals"] = self.arrivals
        return figures


class _ReceiverConnection(_Connection):
    """bench.email's keep-alive HTTP/1.1 protocol, with the receiver's routes."""

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        receiver: Any = self.emulator
        if method == "POST" and target.startswith("/hook/"):
            status, answer = receiver.accept(headers, body)
            self.loop.call_later(receiver.delay, self.answer, status, answer, True)
        elif method == "GET" and target.startswith("/stats"):
            self.answer(200, json.dumps(receiver.stats("times" in target)).encode())
        elif method == "POST" and target == "/reset":
            receiver.reset()
            self.answer(200, b"{}")
        else:
            self.answer(404, b"{}")


def serve_receiver(port: int, delay: float) -> None:
    async def serve() -> None:
        receiver: Any = Receiver(delay)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _ReceiverConnection(receiver), "127.0.0.1", port, backlog=1024
        )
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


ReceiverProcess = ServerProcess


def receiver_process() -> contextlib.AbstractContextManager[ServerProcess]:
    """The receiver in its own process (so its CPU is its own)."""
    return server_process("bench.webhook", "receiver", what="webhook receiver")


# ---------------------------------------------------------------- the plain-Huey baseline


def make_huey(url: str, base_url: str = "") -> tuple[Any, Any]:
    """Plain Huey and its delivery task: the Standard Webhooks body, headers and signature
    crmqueue sends, POSTed with urllib3 (no redirects, 5 s connect and 30 s read timeouts).
    Endpoint URLs and the secret are known to the process: no store, no log."""
    from huey import PriorityRedisHuey

    huey = PriorityRedisHuey(HUEY_NAME, url=url, results=False)
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    pool = urllib3.PoolManager(
        maxsize=10, retries=False, timeout=urllib3.Timeout(connect=5.0, read=30.0)
    )

    def deliver(webhook_id: str, message_id: str, event_type: str, at: str, data: Any) -> int:
        body = json.dumps(
            {"type": event_type, "timestamp": at, "data": data},
            separators=(",", ":"), ensure_ascii=False,
        ).encode()  # fmt: skip
        timestamp = str(int(time.time()))
        digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
        answer = pool.request(
            "POST", f"{base_url}/hook/{webhook_id}", body=body, redirect=False,
            headers={"webhook-id": message_id, "webhook-timestamp": timestamp,
                     "webhook-signature": "v1," + base64.b64encode(digest.digest()).decode(),
                     "content-type": "application/json", "user-agent": "bench-huey/1"},
        )  # fmt: skip
        if not 200 <= answer.status < 300:
            raise RuntimeError(f"HTTP {answer.status}")
        return int(answer.status)

    deliver.__module__ = "bench.webhook"  # one task name whichever way this is run
    return huey, huey.task()(deliver)


def serve_huey(url: str, base_url: str, workers: int) -> None:
    from huey.consumer import Consumer

    huey, _ = make_huey(url, base_url)
    consumer = Consumer(huey, workers=workers, worker_type="thread", periodic=False)
    consumer.run()


# ---------------------------------------------------------------- crmqueue processes


def write_config(directory: Path, url: str, crm: str, crm_url: str) -> Path:
    config = directory / f"crmqueue-{crm}.toml"
    config.write_text(
        f'[storage]\nurl = "{url}"\n'
        f'[database]\nurl = "{crm_url}"\n'
        f'[files]\ndir = "{directory / "files"}"\n'
        '[logging]\nlevel = "WARNING"\n'
        # the receiver is on loopback, which the SSRF guard refuses unless allowed
        '[outbound]\nallowed_networks = ["127.0.0.0/8"]\n'
        # 10 workers as plain Huey's consumer, and as many jobs claimed ahead of them
        "[queues.webhook]\nworkers = 10\nprefetch = 10\n"
    )
    return config


def start(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


class Round:
    """One round of measurements: the receiver, Redis, and per CRM store ("sqlite", and
    "postgresql" when given) the endpoints and a crmqueue config that share them."""

    def __init__(
        self,
        url: str,
        receiver: ReceiverProcess,
        workdir: Path,
        deliveries: int,
        publishes: int,
        crm_urls: dict[str, str],
    ) -> None:
        from crmqueue.config import load_settings
        from crmqueue.engine import configure
        from crmqueue.webhooks import service

        self.url = url
        self.receiver = receiver
        self.deliveries = deliveries
        self.publishes = publishes
        self.redis = redis.Redis.from_url(url)
        self.configs = {
            crm: write_config(workdir, url, crm, crm_url) for crm, crm_url in crm_urls.items()
        }
        for crm, config in self.configs.items():
            settings = load_settings(config, environ={})
            if crm == "sqlite":
                self.store = configure(settings).queue("webhook").store
            webhooks = service(settings)
            for tenant in (TENANT, FANOUT_TENANT):
                for n in range(ENDPOINTS):
                    webhooks.add(
                        tenant, f"{receiver.base_url}/hook/{n}", (EVENT,), webhook_id=f"{n}",
                        secret=SECRET,
                    )  # fmt: skip

    def crmqueue(self, args: list[str], crm: str = "sqlite") -> subprocess.Popen[bytes]:
        config = self.configs[crm]
        return start([CRMQUEUE, *args, "--config", str(config)], config.parent)

    def wait_answered(self, procs: list[subprocess.Popen[bytes]]) -> dict[str, float]:
        """Wait until the receiver answered every delivery. Returns the CPU seconds the
        consumer processes, Redis, the receiver and the whole machine used from the first
        arrival until then, and that time."""

        def sample() -> dict[str, float]:
            return {
                "cpu": sum(cpu_seconds(p.pid) for p in procs),
                "redis": redis_cpu_seconds(self.redis),
                "receiver": float(self.receiver.stats()["cpu_seconds"]),
                "machine": machine_busy_seconds(),
                "wall": time.monotonic(),
            }

        deadline = time.monotonic() + TIMEOUT
        begin: dict[str, float] | None = None
        while True:
            stats = self.receiver.stats()
            if stats["rejected"]:
                raise RuntimeError(f"the receiver rejected a signature: {stats}")
            if begin is None and stats["accepted"]:
                begin = sample()
            if stats["answered"] >= self.deliveries:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a consumer process exited during the drain")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {stats['answered']} of {self.deliveries} arrived")
            time.sleep(0.05)
        assert begin is not None
        end = sample()
        return {name: end[name] - begin[name] for name in end}

    def figures(self, used: dict[str, float]) -> dict[str, float]:
        stats = self.receiver.stats(times=True)
        if stats["rejected"] or stats["duplicates"]:
            raise RuntimeError(f"the receiver saw bad or repeated deliveries: {stats}")
        arrivals = sorted(stats["arrivals"])
        low, high = (int(self.deliveries * share) for share in WINDOW)
        ours = used["cpu"] + used["redis"] + used["receiver"]
        return {
            "per_s": (high - 1 - low) / (arrivals[high - 1] - arrivals[low]),
            "full_per_s": self.deliveries / (stats["last"] - arrivals[0]),
            "cpu_ms": used["cpu"] / self.deliveries * 1000,
            "redis_cpu_ms": used["redis"] / self.deliveries * 1000,
            # Cores busy with anything else (this script, other sessions): noise.
            "other_cores": max(used["machine"] - ours, 0.0) / used["wall"],
        }

    def drain_crmqueue(self, processes: int, crm: str = "sqlite") -> dict[str, float]:
        """N pre-enqueued deliveries drained by `processes` `crmqueue worker webhook`s
        whose CRM store (endpoints, log) is `crm`."""
        from crmqueue.tasks import enqueue_many

        self.store.flush_all()
        # With an event time, as tasks.deliver_webhook sends (one call per job would time
        # the producer too); the message id defaults to msg_<job id>.
        at = dt.datetime.now(dt.UTC).isoformat()
        enqueue_many(
            "webhook",
            [{"tenant_id": TENANT, "webhook_id": str(i % ENDPOINTS), "event_type": EVENT,
              "payload": event_data(i), "timestamp": at} for i in range(self.deliveries)],
            kind="deliver",
        )  # fmt: skip
        self.receiver.reset()
        procs = [self.crmqueue(["worker", "webhook"], crm) for _ in range(processes)]
        try:
            used = self.wait_answered(procs)
            deadline = time.monotonic() + 30
            while (counts := self.store.counts())["completed"] < self.deliveries:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        finally:
            stop(procs)
        if counts["completed"] != self.deliveries or counts["dead"]:
            raise RuntimeError(f"registry counts disagree: {counts}")
        return self.figures(used)

    def drain_huey(self) -> dict[str, float]:
        """N pre-enqueued deliveries drained by plain Huey's thread consumer, 10 workers."""
        huey, deliver = make_huey(self.url)
        huey.flush()
        at = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for i in range(self.deliveries):
            deliver(str(i % ENDPOINTS), f"msg_{uuid.uuid4().hex}", EVENT, at, event_data(i))
        self.receiver.reset()
        args = [sys.executable, "-m", "bench.webhook", "huey", "--url", self.url,
                "--base-url", self.receiver.base_url]  # fmt: skip
        procs = [start(args, ROOT)]
        try:
            used = self.wait_answered(procs)
        finally:
            stop(procs)
        return self.figures(used)

    def fanout(self) -> dict[str, float]:
        """P publish_event jobs (tenant with 10 subscribed endpoints) at priority 100, so
        the consumer runs them before the deliveries they enqueue (priority 0): deliveries
        enqueued per second between the 5th and the 95th percentile publish's finish."""
        from crmqueue import jobs
        from crmqueue.tasks import publish_event

        self.store.flush_all()
        self.receiver.reset()
        published = [
            publish_event(
                tenant_id=FANOUT_TENANT, event_type=EVENT, payload=event_data(i), priority=100
            )
            for i in range(self.publishes)
        ]
        procs = [self.crmqueue(["worker", "webhook"])]
        try:
            deadline = time.monotonic() + TIMEOUT
            pending = list(published)
            while pending:  # the oldest first: the queue runs them in that order
                info = jobs.get(pending[0].id)
                if info.state == "completed":
                    pending.pop(0)
                    continue
                if info.state == "dead" or procs[0].poll() is not None:
                    raise RuntimeError(f"the fan-out failed: {info}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(pending)} publish jobs did not finish")
                time.sleep(0.05)
        finally:
            stop(procs)
        infos = [jobs.get(job.id) for job in published]
        counts = {int(info.result["deliveries"]) for info in infos}
        if counts != {ENDPOINTS}:
            raise RuntimeError(f"publish jobs fanned out to {counts}, not {ENDPOINTS}")
        finished = sorted(_seconds(info.finished_at) for info in infos)
        started = min(_seconds(info.started_at) for info in infos)
        low, high = (int(self.publishes * share) for share in WINDOW)
        return {
            "fanout_per_s": (high - 1 - low) * ENDPOINTS / (finished[high - 1] - finished[low]),
            "fanout_full_per_s": self.publishes * ENDPOINTS / (finished[-1] - started),
        }


def _seconds(iso: str | None) -> float:
    return dt.datetime.fromisoformat(str(iso)).timestamp()


def service_costs(workdir: Path, calls: int = 500) -> dict[str, float]:
    """CPU µs of each CRM-store call a successful delivery makes, measured alone in this
    process on a fresh SQLite store: the endpoint read, the message save (for replay) and
    the log row with the breaker update."""
    from crmqueue.config import load_settings
    from crmqueue.webhooks import Attempt, Message, WebhookService

    settings = load_settings(
        None,
        overrides={"database.url": f"sqlite:///{workdir / 'costs.db'}",
                   "outbound.allowed_networks": ["127.0.0.0/8"]},
        environ={},
    )  # fmt: skip
    webhooks = WebhookService(settings)
    endpoint, _ = webhooks.add(TENANT, "http://127.0.0.1:9/hook", (EVENT,), webhook_id="w")
    now = dt.datetime.now(dt.UTC)
    steps = {
        "get": lambda i: webhooks.get(TENANT, "w"),
        "save_message": lambda i: webhooks.save_message(
            Message(TENANT, f"msg_{i}", EVENT, now, event_data(i))
        ),
        "record_attempt": lambda i: webhooks.record_attempt(
            endpoint, Attempt(f"msg_{i}", EVENT, f"job{i}", 1, True, 200, 5, "", None)
        ),
    }
    costs = {}
    for name, step in steps.items():
        started = time.process_time()
        for i in range(calls):
            step(i)
        costs[f"service_{name}_us"] = (time.process_time() - started) / calls * 1e6
    return costs


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server (dropped afterwards)."""
    import psycopg

    from crmqueue.crm.store import dispose_engines

    name = f"crmqueue_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG_ADMIN.split('://')[1].split('/')[0]}/{name}"
    finally:
        dispose_engines()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def one_round(url: str, deliveries: int, publishes: int, postgres: bool) -> dict[str, float]:
    figures: dict[str, float] = {}
    loads = [os.getloadavg()[0]]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        receiver = stack.enter_context(receiver_process())
        crm_urls = {"sqlite": f"sqlite:///{tmp / 'crm.db'}"}
        if postgres:
            crm_urls["postgresql"] = stack.enter_context(postgres_database())
        bench = Round(url, receiver, tmp, deliveries, publishes, crm_urls)
        # Plain Huey runs before and after each crmqueue drain it is compared with, so a
        # change of load on the shared machine hits both sides of a ratio alike.
        drains: list[tuple[str, Any]] = [
            ("huey_1", bench.drain_huey),
            ("crmqueue", lambda: bench.drain_crmqueue(1)),
            ("huey_2", bench.drain_huey),
            ("two", lambda: bench.drain_crmqueue(2)),
        ]
        if postgres:
            drains += [
                ("pg", lambda: bench.drain_crmqueue(1, "postgresql")),
                ("huey_3", bench.drain_huey),
                ("pg_two", lambda: bench.drain_crmqueue(2, "postgresql")),
            ]
        for name, drain in drains:
            figures.update({f"{name}_{key}": value for key, value in drain().items()})
            loads.append(os.getloadavg()[0])
        hueys = [name for name, _ in drains if name.startswith("huey_")]
        for key in list(figures):
            if key.startswith("huey_1_"):
                field = key.removeprefix("huey_1_")
                figures[f"huey_{field}"] = median([figures[f"{h}_{field}"] for h in hueys])
        figures["ratio"] = figures["crmqueue_per_s"] / (
            (figures["huey_1_per_s"] + figures["huey_2_per_s"]) / 2
        )
        if postgres:
            figures["pg_ratio"] = figures["pg_per_s"] / (
                (figures["huey_2_per_s"] + figures["huey_3_per_s"]) / 2
            )
        figures.update(bench.fanout())
        loads.append(os.getloadavg()[0])
        figures.update(service_costs(tmp))
    # The 1-minute load average of the machine (2 cores): other sessions' work shows here.
    figures["load_max"] = max(loads)
    figures["load_mean"] = sum(loads) / len(loads)
    return figures


# ---------------------------------------------------------------- docs/benchmarks.md


def medians(samples: list[dict[str, float]]) -> dict[str, float]:
    return {name: median([s[name] for s in samples]) for name in samples[0]}


def webhook_section(r: dict[str, float], deliveries: int, publishes: int) -> list[str]:
    """The markdown section of docs/benchmarks.md from the medians of the rounds."""

    def met(ok: bool) -> str:
        return "met" if ok else "**missed**"

    def row(label: str, key: str, target: str) -> str:
        return (
            f"| {label} | {r[f'{key}_per_s']:,.0f} | {r[f'{key}_cpu_ms']:.2f} ms |"
            f" {r[f'{key}_redis_cpu_ms']:.3f} ms | {target} |"
        )

    rows = [
        row("crmqueue, CRM on SQLite, 1 process × 10 threads", "crmqueue",
            f"≥ 0.8× plain Huey: {r['ratio']:.2f}× {met(r['ratio'] >= 0.8)}"),
        row("crmqueue, CRM on SQLite, 2 processes × 10 threads", "two",
            f"≥ 700/s {met(r['two_per_s'] >= 700)}"),
    ]  # fmt: skip
    others = [("crmqueue", "SQLite 1 process"), ("two", "SQLite 2 processes")]
    if "pg_per_s" in r:
        rows += [
            row("crmqueue, CRM on PostgreSQL, 1 process × 10 threads", "pg",
                f"≥ 0.8× plain Huey: {r['pg_ratio']:.2f}× {met(r['pg_ratio'] >= 0.8)}"),
            row("crmqueue, CRM on PostgreSQL, 2 processes × 10 threads", "pg_two",
                f"≥ 700/s {met(r['pg_two_per_s'] >= 700)}"),
        ]  # fmt: skip
        others += [("pg", "PostgreSQL 1 process"), ("pg_two", "PostgreSQL 2 processes")]
    rows.append(row("plain Huey, 1 process × 10 threads", "huey", "–"))
    others.append(("huey", "plain Huey"))
    busy = ", ".join(f"{label}: {r[f'{key}_other_cores']:.2f}" for key, label in others)
    loaded = r["load_max"] > 3
    return [
        "## Webhooks",
        "",
        f"{deliveries:,} `deliver_webhook` jobs (a ~300-byte `contact.updated` payload) spread"
        f" over {ENDPOINTS} endpoints of one tenant, pre-enqueued on Redis, then drained"
        " against a loopback receiver (its own asyncio process: verifies every signature"
        " with the reference `standardwebhooks` library, answers 200 after 5 ms). crmqueue"
        " reads the endpoint from the CRM store (SQLite, the embedded default, and"
        " PostgreSQL, the production one), checks the URL with the SSRF guard, signs, POSTs,"
        " stores the message for replay and writes a delivery-log row per attempt. The"
        " baseline is plain Huey (`PriorityRedisHuey`, thread consumer, 10 workers) whose"
        " task builds the same body and headers, signs the same way and POSTs with urllib3:"
        " the same work without crmqueue's engine and webhook layer (no endpoint store, log"
        " or SSRF check); it drains before and after each crmqueue drain it is compared with"
        " (ratio: crmqueue's rate over the mean of those two; its row: the median of its"
        " drains). Rates are the receiver's arrivals from the 5th to the 95th percentile"
        " delivery; CPU is the consumer processes' user+system time per delivery.",
        "",
        "| consumers | deliveries/s | CPU per delivery | Redis CPU per delivery | target |",
        "|---|---:|---:|---:|---|",
        *rows,
        "",
        f"Fan-out: {publishes:,} `publish_event` jobs for a tenant with {ENDPOINTS} subscribed"
        " endpoints (CRM on SQLite), pre-enqueued at a higher priority than the deliveries"
        " they create, run by one `crmqueue worker webhook` process (10 threads):"
        f" {r['fanout_per_s']:,.0f} deliveries enqueued/s between the 5th and 95th"
        f" percentile publish (first start to last finish: {r['fanout_full_per_s']:,.0f}/s);"
        f" target ≥ 5,000/s {met(r['fanout_per_s'] >= 5000)}.",
        "",
        "Other work on the machine during the drains (this script, other sessions; in the"
        f" PostgreSQL rows the database server too), in cores of 2: {busy}; 1-minute load"
        f" average {r['load_mean']:.1f} on average, up to"
        f" {r['load_max']:.1f}"
        + (
            " (a loaded machine: the absolute rates are low, read the ratios and the CPU figures)."
            if loaded
            else "."
        ),
        "",
        "CPU per delivery sets a process's ceiling (with the GIL, about 1 s ÷ CPU per"
        f" delivery). Of crmqueue's {r['crmqueue_cpu_ms']:.2f} ms on SQLite, a delivery"
        " reads its endpoint at most once a second per process (`WebhookService.recent`:"
        " a change made by another process applies within a second), checks its URL once"
        " per 5 s per process (connecting to an address that was checked), and hands its"
        " log row (with the message, on a first attempt) to a per-process writer thread"
        " that commits every row waiting in one transaction; the worker goes on to its next"
        " job at once, and the job's completion (group-committed by the consumer's recorder"
        " thread) is written only after its row (`complete_after`). The consumer claims up"
        " to `prefetch` jobs ahead of its free workers; one watchdog thread per process"
        " enforces every attempt's whole-exchange deadline (it was a timer thread per"
        " request), and up to 16 kept-alive connections per receiver address are reused"
        " (4 before: workers over that reconnected). Measured alone in one thread (no"
        " batching): a fresh endpoint read"
        f" {r['service_get_us']:.0f} µs, a message save"
        f" {r['service_save_message_us']:.0f} µs, a logged success with its breaker reset"
        f" {r['service_record_attempt_us']:.0f} µs.",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["round", "receiver", "huey"])
    parser.add_argument("--url", help="Redis URL")
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--publishes", type=int, default=1000)
    parser.add_argument("--port", type=int)
    parser.add_argument("--delay", type=float, default=0.005)
    parser.add_argument("--base-url")
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument(
        "--no-postgres", action="store_true", help="only the SQLite CRM store (no local server)"
    )
    args = parser.parse_args()
    if args.part == "receiver":
        serve_receiver(args.port, args.delay)
    elif args.part == "huey":
        serve_huey(args.url, args.base_url, args.workers)
    else:
        print(
            json.dumps(one_round(args.url, args.deliveries, args.publishes, not args.no_postgres))
        )


if __name__ == "__main__":
    main()
