"""Email: the real email queue against a loopback server emulating Resend.

    python -m bench.email round --url redis://... [--emails 5000]

One round (run.py repeats it and takes medians) prints one JSON line:

- the emulator's own ceiling: many keep-alive connections hammer it for 2 s (the client
  runs in this process, on the other core), and its CPU per request;
- `crmqueue worker email` (one process, 10 worker threads, provider `resend` with
  `base_url` on the emulator, `rate_per_second = 0`) draining N pre-enqueued
  `send_email` jobs for the built-in `welcome` template, rendered for real;
- the baseline: plain Huey (`PriorityRedisHuey`, thread consumer, 10 workers) whose task
  renders the same template with the same Jinja2 environment and POSTs the same JSON
  with urllib3, i.e. the same work minus crmqueue's engine and email layer;
- two `crmqueue worker email` processes draining N jobs;
- peak RSS (VmHWM) of `crmqueue run` with all five queues, idle, then after draining N
  emails.

Rates are read off the emulator's clock: the arrivals of the 5th to the 95th percentile
email, so process start-up and the last few stragglers do not count; `*_full_per_s`
(first arrival to last answer) are in the JSON too. CPU per email is the consumer
processes' user+system time over the drain divided by N.

Internal parts, started as subprocesses by a round:
    python -m bench.email emulator --port P --key K [--delay 0.005]
    python -m bench.email huey --url redis://... --base-url http://127.0.0.1:P --key K
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
import urllib3

from bench.common import ServerProcess, median, server_process

ROOT = Path(__file__).resolve().parent.parent
CRMQUEUE = str(Path(sys.executable).parent / "crmqueue")
API_KEY = "re_bench_0123456789abcdef"
FROM = "CRM <noreply@example.com>"
TENANT = "t1"
LOGIN_URL = "https://crm.example.com/login"
HUEY_NAME = "bench-email"
IDLE_SECONDS = 5.0
WINDOW = (0.05, 0.95)
TIMEOUT = 120.0

# ---------------------------------------------------------------- the Resend emulator

_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 422: "Unprocessable Entity"}


class Emulator:
    """Resend's POST /emails: checks the Bearer key and the JSON, answers `{"id": ...}`
    after `delay` seconds without holding anything but a timer. GET /stats and POST
    /reset are the benchmark's own."""

    def __init__(self, key: str, delay: float) -> None:
        self.auth = f"Bearer {key}"
        self.delay = delay
        self.reset()

    def reset(self) -> None:
        self.arrivals: list[float] = []
        self.answered = 0
        self.last = 0.0
        self.rejected = 0
        self.duplicates = 0
        self.keys: set[str] = set()
        self.cpu_start = time.process_time()

    def accept(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if headers.get("authorization") != self.auth:
            self.rejected += 1
            return 401, b'{"statusCode":401,"name":"validation_error","message":"bad API key"}'
        try:
            email = json.loads(body)
        except ValueError:
            email = None
        if not (
            isinstance(email, dict)
            and email.get("from")
            and email.get("to")
            and email.get("subject")
            and (email.get("html") or email.get("text"))
        ):
            self.rejected += 1
            return 422, b'{"statusCode":422,"name":"validation_error","message":"invalid email"}'
        key = headers.get("idempotency-key")
        if key is not None:
            if key in self.keys:
                self.duplicates += 1
            self.keys.add(key)
        self.arrivals.append(time.monotonic())
        return 200, b'{"id":"%s"}' % str(uuid.uuid4()).encode()

    def stats(self, times: bool) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "accepted": len(self.arrivals),
            "answered": self.answered,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "last": self.last,
            "cpu_seconds": time.process_time() - self.cpu_start,
        }
        if times:
            figures["arrivals"] = self.arrivals
        return figures


class _Connection(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, just enough for urllib3 and the ceiling client."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            total = end + 4 + int(headers.get("content-length") or 0)
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            method, target = lines[0].split(" ")[:2]
            self.handle(method, target, headers, body)

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        emulator = self.emulator
        if method == "POST" and target == "/emails":
            status, answer = emulator.accept(headers, body)
            self.loop.call_later(emulator.delay, self.answer, status, answer, True)
        elif method == "GET" and target.startswith("/stats"):
            self.answer(200, json.dumps(emulator.stats("times" in target)).encode())
        elif method == "POST" and target == "/reset":
            emulator.reset()
            self.answer(200, b"{}")
        else:
            self.answer(404, b'{"statusCode":404,"name":"not_found","message":"not found"}')

    def answer(self, status: int, body: bytes, counted: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        if counted and status == 200:
            self.emulator.answered += 1
            self.emulator.last = time.monotonic()


def serve_emulator(port: int, key: str, delay: float) -> None:
    async def serve() -> None:
        emulator = Emulator(key, delay)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Connection(emulator), "127.0.0.1", port, backlog=1024
        )
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


EmulatorProcess = ServerProcess


def emulator_process() -> contextlib.AbstractContextManager[ServerProcess]:
    """The emulator in its own process (so its CPU is its own)."""
    return server_process("bench.email", "emulator", "--key", API_KEY, what="Resend emulator")


def sample_body() -> bytes:
    """A request body as big as a rendered welcome email (for the ceiling client)."""
    from crmqueue.providers.email.render import render

    rendered = render("welcome", {"first_name": "Ann", "login_url": LOGIN_URL})
    return json.dumps(
        {"from": FROM, "to": ["ann@example.com"], "subject": rendered.subject,
         "text": rendered.text, "html": rendered.html}
    ).encode()  # fmt: skip


def emulator_ceiling(
    emulator: EmulatorProcess, seconds: float = 2.0, connections: int = 200
) -> dict[str, float]:
    """Requests/s the emulator answers with `connections` keep-alive clients, and its CPU
    per request. The client is asyncio on raw streams in this process; on 2 cores the
    figure is a lower bound for the emulator alone."""
    body = sample_body()
    request = (
        f"POST /emails HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def client(deadline: float) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
        done = 0
        while time.monotonic() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            done += 1
        writer.close()
        return done

    async def hammer() -> int:
        deadline = time.monotonic() + seconds
        return sum(await asyncio.gather(*(client(deadline) for _ in range(connections))))

    emulator.reset()
    started = time.monotonic()
    done = asyncio.run(hammer())
    elapsed = time.monotonic() - started
    stats = emulator.stats()
    emulator.reset()
    return {
        "emulator_ceiling_per_s": done / elapsed,
        "emulator_cpu_us": stats["cpu_seconds"] / max(done, 1) * 1e6,
    }


# ---------------------------------------------------------------- the plain-Huey baseline


def make_huey(url: str, base_url: str = "", key: str = "") -> tuple[Any, Any]:
    """Plain Huey and its email task: render with crmqueue's built-in Jinja2 environment,
    POST the JSON crmqueue's Resend provider sends, with the same headers."""
    from huey import PriorityRedisHuey

    from crmqueue.providers.email.render import builtin_environment

    huey = PriorityRedisHuey(HUEY_NAME, url=url, results=False)
    env = builtin_environment()
    pool = urllib3.PoolManager(
        maxsize=10, retries=False, timeout=urllib3.Timeout(connect=5.0, read=30.0)
    )

    def send_welcome(to: str, first_name: str, idempotency_key: str) -> str:
        values: dict[str, Any] = {
            "product_name": "CRM", "now": dt.datetime.now(dt.UTC),
            "first_name": first_name, "login_url": LOGIN_URL,
        }  # fmt: skip
        html_t = env.get_template("welcome.html.j2")
        text_t = env.get_template("welcome.txt.j2")
        subject = "".join(text_t.blocks["subject"](text_t.new_context(values))).strip()
        values["subject"] = subject
        token = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
        body = {
            "from": FROM, "to": [to], "subject": subject,
            "text": text_t.render(values).strip() + "\n", "html": html_t.render(values),
            "headers": {"Message-ID": f"<{token}@example.com>"},
            "tags": [{"name": "tenant_id", "value": TENANT}],
        }  # fmt: skip
        answer = pool.request(
            "POST", base_url + "/emails", body=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                     "Accept": "application/json", "Idempotency-Key": idempotency_key},
        )  # fmt: skip
        if answer.status != 200:
            raise RuntimeError(f"HTTP {answer.status}")
        message_id: str = json.loads(answer.data)["id"]
        return message_id

    send_welcome.__module__ = "bench.email"  # one task name whichever way this is run
    return huey, huey.task()(send_welcome)


def serve_huey(url: str, base_url: str, key: str, workers: int) -> None:
    from huey.consumer import Consumer

    huey, _ = make_huey(url, base_url, key)
    consumer = Consumer(huey, workers=workers, worker_type="thread", periodic=False)
    consumer.run()


# ---------------------------------------------------------------- crmqueue processes


def write_config(directory: Path, url: str, base_url: str) -> Path:
    config = directory / "crmqueue.toml"
    config.write_text(
        f'[storage]\nurl = "{url}"\n'
        f'[files]\ndir = "{directory / "files"}"\n'
        '[logging]\nlevel = "WARNING"\n'
        f'[email]\nprovider = "resend"\nfrom_address = "{FROM}"\n'
        f'[email.resend]\nbase_url = "{base_url}"\nrate_per_second = 0.0\n'
    )
    return config


def start(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RESEND_API_KEY": API_KEY}
    return subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idling, since boot."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def email_payloads(count: int) -> list[dict[str, Any]]:
    return [
        {"tenant_id": TENANT, "to": f"user{i}@example.com", "template": "welcome",
         "context": {"first_name": f"User{i}", "login_url": LOGIN_URL}}
        for i in range(count)
    ]  # fmt: skip


class Round:
    """One round of measurements: the emulator, Redis and a crmqueue config that share
    them."""

    def __init__(self, url: str, emulator: EmulatorProcess, workdir: Path, emails: int) -> None:
        from crmqueue.config import load_settings
        from crmqueue.engine import configure

        self.url = url
        self.emulator = emulator
        self.emails = emails
        self.redis = redis.Redis.from_url(url)
        self.config = write_config(workdir, url, emulator.base_url)
        self.store = configure(load_settings(self.config, environ={})).queue("email").store

    def enqueue_crmqueue(self) -> None:
        from crmqueue.tasks import enqueue_many

        self.store.flush_all()
        enqueue_many("email", email_payloads(self.emails))

    def crmqueue(self, args: list[str]) -> subprocess.Popen[bytes]:
        return start([CRMQUEUE, *args, "--config", str(self.config)], self.config.parent)

    def wait_answered(self, procs: list[subprocess.Popen[bytes]]) -> dict[str, float]:
        """Wait until the emulator answered every email. Returns the CPU seconds the
        consumer processes, Redis, the emulator and the whole machine used from the first
        arrival until then, and that time."""

        def sample() -> dict[str, float]:
            return {
                "cpu": sum(cpu_seconds(p.pid) for p in procs),
                "redis": redis_cpu_seconds(self.redis),
                "emulator": float(self.emulator.stats()["cpu_seconds"]),
                "machine": machine_busy_seconds(),
                "wall": time.monotonic(),
            }

        deadline = time.monotonic() + TIMEOUT
        start: dict[str, float] | None = None
        while True:
            stats = self.emulator.stats()
            if start is None and stats["accepted"]:
                start = sample()
            if stats["answered"] >= self.emails:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a consumer process exited during the drain")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {stats['answered']} of {self.emails} emails arrived")
            time.sleep(0.05)
        assert start is not None
        end = sample()
        return {name: end[name] - start[name] for name in end}

    def figures(self, used: dict[str, float]) -> dict[str, float]:
        stats = self.emulator.stats(times=True)
        if stats["rejected"] or stats["duplicates"]:
            raise RuntimeError(f"the emulator saw bad or repeated requests: {stats}")
        arrivals = sorted(stats["arrivals"])
        low, high = (int(self.emails * share) for share in WINDOW)
        ours = used["cpu"] + used["redis"] + used["emulator"]
        return {
            "per_s": (high - 1 - low) / (arrivals[high - 1] - arrivals[low]),
            "full_per_s": self.emails / (stats["last"] - arrivals[0]),
            "cpu_ms": used["cpu"] / self.emails * 1000,
            "redis_cpu_ms": used["redis"] / self.emails * 1000,
            "emulator_cpu_ms": used["emulator"] / self.emails * 1000,
            # Cores busy with anything else (this script, other sessions): noise.
            "other_cores": max(used["machine"] - ours, 0.0) / used["wall"],
        }

    def drain_crmqueue(self, processes: int) -> dict[str, float]:
        """N pre-enqueued emails drained by `processes` `crmqueue worker email` processes."""
        self.enqueue_crmqueue()
        self.emulator.reset()
        procs = [self.crmqueue(["worker", "email"]) for _ in range(processes)]
        try:
            used = self.wait_answered(procs)
            deadline = time.monotonic() + 30
            while (counts := self.store.counts())["completed"] < self.emails:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        finally:
            stop(procs)
        if counts["completed"] != self.emails or counts["dead"]:
            raise RuntimeError(f"registry counts disagree: {counts}")
        return self.figures(used)

    def drain_huey(self) -> dict[str, float]:
        """N pre-enqueued emails drained by plain Huey's thread consumer, 10 workers."""
        huey, send = make_huey(self.url)
        huey.flush()
        prefix = f"huey-{uuid.uuid4().hex[:8]}"
        for i in range(self.emails):
            send(f"user{i}@example.com", f"User{i}", f"{prefix}-{i}")
        self.emulator.reset()
        args = [sys.executable, "-m", "bench.email", "huey", "--url", self.url,
                "--base-url", self.emulator.base_url, "--key", API_KEY]  # fmt: skip
        procs = [start(args, ROOT)]
        try:
            used = self.wait_answered(procs)
        finally:
            stop(procs)
        return self.figures(used)

    def memory(self) -> dict[str, float]:
        """Peak RSS of `crmqueue run` (all five queues) idle, then after N emails."""
        self.store.flush_all()
        self.emulator.reset()
        proc = self.crmqueue(["run"])
        try:
            deadline = time.monotonic() + 30
            while not self.store.live_consumers():
                if time.monotonic() > deadline:
                    raise RuntimeError("crmqueue run did not start")
                time.sleep(0.05)
            time.sleep(IDLE_SECONDS)
            idle = peak_rss_mb(proc.pid)
            self.enqueue_crmqueue()
            self.wait_answered([proc])
            loaded = peak_rss_mb(proc.pid)
        finally:
            stop([proc])
        return {"idle_peak_rss_mb": idle, "loaded_peak_rss_mb": loaded}


def one_round(url: str, emails: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, emulator_process() as emulator:
        bench = Round(url, emulator, Path(tmp), emails)
        figures.update(emulator_ceiling(emulator))
        for name, drain in (
            ("crmqueue", lambda: bench.drain_crmqueue(1)),
            ("huey", bench.drain_huey),
            ("two", lambda: bench.drain_crmqueue(2)),
        ):
            figures.update({f"{name}_{key}": value for key, value in drain().items()})
        figures["ratio"] = figures["crmqueue_per_s"] / figures["huey_per_s"]
        figures.update(bench.memory())
    return figures


# ---------------------------------------------------------------- docs/benchmarks.md


def medians(samples: list[dict[str, float]]) -> dict[str, float]:
    return {name: median([s[name] for s in samples]) for name in samples[0]}


def email_section(r: dict[str, float], emails: int) -> list[str]:
    """The markdown section of docs/benchmarks.md from the medians of the rounds."""
    ratio_met = "met" if r["ratio"] >= 0.8 else "**missed**"
    two_met = "met" if r["two_per_s"] >= 1000 else "**missed**"
    worst = max(r["idle_peak_rss_mb"], r["loaded_peak_rss_mb"])
    return [
        "## Email",
        "",
        f"{emails:,} `send_email` jobs (built-in `welcome` template, HTML and text rendered"
        " for real) pre-enqueued on Redis, then drained through the `resend` provider"
        " against a loopback Resend emulator (its own asyncio process: checks the Bearer"
        ' key and the JSON, answers `{"id": …}` after 5 ms), `rate_per_second = 0`. The'
        " baseline is plain Huey (`PriorityRedisHuey`, thread consumer, 10 workers) whose"
        " task renders the same template with the same Jinja2 environment and POSTs the same"
        " JSON with urllib3: the same work without crmqueue's engine and email layer. Rates"
        " are the emulator's arrivals from the 5th to the 95th percentile email (start-up"
        " and the last stragglers excluded); CPU is the consumer processes' user+system"
        " time per email.",
        "",
        "| consumers | emails/s | CPU per email | Redis CPU per email | target |",
        "|---|---:|---:|---:|---|",
        f"| crmqueue, 1 process × 10 threads | {r['crmqueue_per_s']:,.0f} |"
        f" {r['crmqueue_cpu_ms']:.2f} ms | {r['crmqueue_redis_cpu_ms']:.3f} ms |"
        f" ≥ 0.8× plain Huey: {r['ratio']:.2f}× {ratio_met} |",
        f"| plain Huey, 1 process × 10 threads | {r['huey_per_s']:,.0f} |"
        f" {r['huey_cpu_ms']:.2f} ms | {r['huey_redis_cpu_ms']:.3f} ms | – |",
        f"| crmqueue, 2 processes × 10 threads | {r['two_per_s']:,.0f} |"
        f" {r['two_cpu_ms']:.2f} ms | {r['two_redis_cpu_ms']:.3f} ms | ≥ 1,000/s {two_met} |",
        "",
        f"One process ran at {r['crmqueue_per_s'] * r['crmqueue_cpu_ms'] / 1000:.0%} of a"
        f" core and plain Huey at {r['huey_per_s'] * r['huey_cpu_ms'] / 1000:.0%}: with the"
        " GIL, a process's CPU per email sets its ceiling, so the ratio follows the CPU"
        f" figures. Other work on the machine during the drains (this script, other"
        f" sessions): {r['crmqueue_other_cores']:.2f}, {r['huey_other_cores']:.2f} and"
        f" {r['two_other_cores']:.2f} cores of 2.",
        "",
        f"The emulator answered at least {r['emulator_ceiling_per_s']:,.0f} requests/s"
        f" (200 keep-alive connections, client on the other core) at"
        f" {r['emulator_cpu_us']:.0f} µs of its own CPU per request, so it is not the limit;"
        f" during the drains it used {r['two_emulator_cpu_ms'] * 1000:.0f} µs per email.",
        "",
        f"Memory, peak RSS (VmHWM) of `crmqueue run` with all five queues: idle for"
        f" {IDLE_SECONDS:g} s {r['idle_peak_rss_mb']:.0f} MB; after draining {emails:,} emails"
        f" {r['loaded_peak_rss_mb']:.0f} MB (target < 150 MB:"
        f" {'met' if worst < 150 else '**missed**'}).",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["round", "emulator", "huey"])
    parser.add_argument("--url", help="Redis URL")
    parser.add_argument("--emails", type=int, default=5000)
    parser.add_argument("--port", type=int)
    parser.add_argument("--key", default=API_KEY)
    parser.add_argument("--delay", type=float, default=0.005)
    parser.add_argument("--base-url")
    parser.add_argument("--workers", type=int, default=10)
    args = parser.parse_args()
    if args.part == "emulator":
        serve_emulator(args.port, args.key, args.delay)
    elif args.part == "huey":
        serve_huey(args.url, args.base_url, args.key, args.workers)
    else:
        print(json.dumps(one_round(args.url, args.emails)))


if __name__ == "__main__":
    main()
