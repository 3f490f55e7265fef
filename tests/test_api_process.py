"""The admin API with real processes: `crmqueue run` serves it in a child process (and
`--no-api` does not), the child ends with its parent, /metrics counts the work of two
consumer processes, the notification stream delivers a notification a worker process
stored within 1 s, and a paused queue is not claimed from."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families

from crmqueue.api.auth import config_line, new_token, parse_role

ROOT = Path(__file__).resolve().parent.parent


class Deployment:
    """A config file, tokens and helpers to start crmqueue commands as subprocesses."""

    def __init__(self, tmp_path: Path, storage_url: str) -> None:
        self.dir = tmp_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tokens = {role: new_token() for role in ("admin", "tenant:t1:user:u1")}
        lines = ", ".join(json.dumps(config_line(parse_role(r), t)) for r, t in self.tokens.items())
        self.config = tmp_path / "crmqueue.toml"
        self.config.write_text(
            textwrap.dedent(
                f"""
                [storage]
                url = "{storage_url}"
                [database]
                url = "sqlite:///{tmp_path}/crm.db"
                [files]
                dir = "{tmp_path}/files"
                [runner]
                imports = ["tests.fixture_jobs"]
                heartbeat_seconds = 0.5
                shutdown_grace_seconds = 1
                [queues.email]
                attempts = 2
                backoff_seconds = 0.01
                backoff_max_seconds = 0.02
                [api]
                port = {self.port}
                tokens = [{lines}]
                """
            )
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CRMQUEUE_", "REDIS_"))},
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crmqueue", *args, "--config", str(self.config)],
            cwd=self.dir,
            env=self.env,
        )
        self.procs.append(proc)
        return proc

    def get(self, path: str, role: str | None = "admin", **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.get(self.url + path, headers=headers, timeout=5, **kwargs)

    def answers(self) -> bool:
        try:
            return self.get("/healthz", None).status_code == 200
        except httpx.TransportError:
            return False

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def deployment(
    tmp_path: Path, storage_url: str, make_broker: Callable[..., Any]
) -> Iterator[Deployment]:
    deployed = Deployment(tmp_path, storage_url)
    make_broker({"queues.email.attempts": 2, "database.url": f"sqlite:///{tmp_path}/crm.db"})
    yield deployed
    deployed.stop_all()


def test_run_serves_the_api_in_a_child_that_ends_with_it(deployment: Deployment) -> None:
    run = deployment.start("run", "--queues", "email")
    wait_until(deployment.answers, timeout=30, message="the API of crmqueue run")
    stats = deployment.get("/api/v1/admin/jobs/stats")
    assert stats.status_code == 200 and len(stats.json()) == 5
    # A separate process: the API answers from a pid that is not the consumer's.
    children = Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split()
    assert len(children) == 1
    run.kill()  # even a kill -9 of the parent ends the API (its pipe closes)
    run.wait(10)
    wait_until(lambda: not deployment.answers(), timeout=10, message="the API to stop")
    wait_until(lambda: not Path(f"/proc/{children[0]}").exists() or _zombie(children[0]))


def _zombie(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_run_no_api_serves_no_api(deployment: Deployment) -> None:
    run = deployment.start("run", "--queues", "email", "--no-api")
    from crmqueue import jobs

    wait_until(lambda: jobs.stats("email")["consumers"] == 1, timeout=30, message="consumer")
    assert not deployment.answers()
    assert Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split() == []


RUN_EMAIL = [sys.executable, "-m", "crmqueue", "run", "--queues", "email"]


def _hold_port(port: int) -> socket.socket:
    """Someone else's listener on the API's port."""
    return socket.create_server(("127.0.0.1", port))


def test_api_on_a_taken_port_says_so_and_how_to_choose_another(deployment: Deployment) -> None:
    with _hold_port(deployment.port):
        done = subprocess.run(
            [sys.executable, "-m", "crmqueue", "api", "--config", str(deployment.config)],
            cwd=deployment.dir,
            env=deployment.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert f"cannot listen on 127.0.0.1:{deployment.port}: Address already in use" in last
    assert "[api] port" in last and "CRMQUEUE_API__PORT" in last and "--no-api" in last


def test_run_on_a_taken_api_port_keeps_consuming_and_says_the_api_is_gone(
    deployment: Deployment,
) -> None:
    from crmqueue import jobs

    log = deployment.dir / "run.log"
    with _hold_port(deployment.port), log.open("wb") as sink:
        run = subprocess.Popen(
            [*RUN_EMAIL, "--config", str(deployment.config)],
            cwd=deployment.dir,
            env=deployment.env,
            stderr=sink,
        )
        deployment.procs.append(run)
        wait_until(
            lambda: "the consumers keep running without the API" in log.read_text(),
            timeout=40,
            message="the parent to report the API child's exit",
        )
        text = log.read_text()
        assert f"cannot listen on 127.0.0.1:{deployment.port}" in text
        assert run.poll() is None
        assert jobs.stats("email")["consumers"] == 1


def metric_value(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels}")


def test_metrics_count_the_work_of_two_consumer_processes(deployment: Deployment) -> None:
    from crmqueue.engine.queues import get_broker

    queue = get_broker().queue("email")
    for n in range(20):
        queue.enqueue("tests.fixture_jobs.noop", {"tenant_id": "t1", "n": n})
    for n in range(4):
        queue.enqueue("tests.fixture_jobs.always_fail", {"tenant_id": "t1", "key": f"f{n}"})
    deployment.start("api")
    workers = [deployment.start("worker", "email", "--workers", "2") for _ in range(2)]
    wait_until(
        lambda: queue.store.counts()["completed"] == 20 and queue.store.counts()["dead"] == 4,
        timeout=60,
        message=lambda: f"the run to finish: {queue.store.counts()}",
    )
    wait_until(deployment.answers, timeout=30, message="crmqueue api")
    text = deployment.get("/metrics").text
    totals = queue.store.totals()
    assert totals == {"completed": 20, "failed": 8, "retried": 4, "dead": 4, "stalled": 0}
    for name, value in totals.items():
        assert metric_value(text, f"crmqueue_jobs_{name}_total", queue="email") == value
    assert metric_value(text, "crmqueue_queue_consumers", queue="email") == len(workers)
    assert metric_value(text, "crmqueue_queue_workers", queue="email") == 4
    assert metric_value(text, "crmqueue_jobs", queue="email", state="completed") == 20
    assert metric_value(text, "crmqueue_job_run_seconds_count", queue="email") == 20
    assert metric_value(text, "crmqueue_job_run_seconds_bucket", queue="email", le="+Inf") == 20


def test_the_stream_pushes_a_notification_stored_by_a_worker_process(
    deployment: Deployment,
) -> None:
    from crmqueue import tasks

    deployment.start("api")
    deployment.start("worker", "notification")
    wait_until(deployment.answers, timeout=30, message="crmqueue api")
    from crmqueue import jobs

    wait_until(lambda: jobs.stats("notification")["consumers"] == 1, timeout=30)
    events: list[tuple[float, dict[str, Any]]] = []
    connected = threading.Event()

    def listen() -> None:
        headers = {"Authorization": f"Bearer {deployment.tokens['tenant:t1:user:u1']}"}
        url = deployment.url + "/api/v1/notifications/stream"
        with httpx.stream("GET", url, headers=headers, timeout=20) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith(": connected"):
                    connected.set()
                if line.startswith("data: "):
                    events.append((time.time(), json.loads(line[6:])))
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(10)
    other = tasks.send_notification(
        tenant_id="t1", user_id="u2", title="not yours", message="x", channels=["in-app"]
    )
    other.wait(20)
    job = tasks.send_notification(
        tenant_id="t1", user_id="u1", title="Export ready", message="contacts.csv",
        channels=["in-app"],
    )  # fmt: skip
    info = job.wait(20)
    assert info.state == "completed", info
    listener.join(10)
    assert events, "no notification came through the stream"
    received, item = events[0]
    assert item["title"] == "Export ready"
    created = dt.datetime.fromisoformat(item["created_at"]).timestamp()
    print(f"\nnotification stream: pushed {received - created:.3f}s after it was stored")
    assert received - created < 1.0, f"pushed {received - created:.3f}s after it was stored"


def test_a_paused_queue_is_not_claimed_from(
    make_broker: Callable[..., Any], start_consumer: Callable[..., Any]
) -> None:
    from crmqueue.engine import pause

    broker = make_broker()
    queue = broker.queue("email")
    start_consumer(broker, ["email"])
    first = queue.enqueue("tests.fixture_jobs.noop", {"tenant_id": "t1"})
    wait_until(lambda: queue.store.get_job(first)["state"] == "completed")
    pause.pause(queue.store)
    time.sleep(pause.CHECK_SECONDS + 0.3)  # the consumers' cached reading expires
    held = queue.enqueue("tests.fixture_jobs.noop", {"tenant_id": "t1"})
    time.sleep(1.0)  # a negative check: long enough for a claim to have happened
    assert queue.store.get_job(held)["state"] == "waiting"
    pause.resume(queue.store)
    wait_until(lambda: queue.store.get_job(held)["state"] == "completed", timeout=5)


def test_api_stops_on_sigterm_with_a_stream_open(deployment: Deployment) -> None:
    api = deployment.start("api")
    wait_until(deployment.answers, timeout=30, message="crmqueue api")
    connected = threading.Event()

    def listen() -> None:
        headers = {"Authorization": f"Bearer {deployment.tokens['tenant:t1:user:u1']}"}
        url = deployment.url + "/api/v1/notifications/stream"
        try:
            with httpx.stream("GET", url, headers=headers, timeout=30) as response:
                for line in response.iter_lines():
                    if line.startswith(": connected"):
                        connected.set()
        except httpx.HTTPError:
            pass

    threading.Thread(target=listen, daemon=True).start()
    assert connected.wait(10)
    stopping = time.monotonic()
    api.send_signal(signal.SIGTERM)
    # uvicorn shuts down, then re-raises the signal it caught (exit status -SIGTERM).
    assert api.wait(10) in (0, -signal.SIGTERM)
    assert time.monotonic() - stopping < 5
