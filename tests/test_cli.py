"""The command line end to end, in subprocesses, in a fresh directory, as a user runs it:
the serving commands and their signals (run/stop, SIGTERM, SIGHUP), whose timing is
measured apart from the parallel part. The plain commands (input errors, config, doctor,
--version) are in test_cli_commands.py; the helpers here serve both."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CRMQUEUE = str(Path(sys.executable).parent / "crmqueue")

JOBS_MODULE = textwrap.dedent(
    """
    from crmqueue.engine import job, report_progress

    @job("email")
    def hello(payload):
        report_progress(50)
        return {"greeting": "hello " + payload["tenant_id"]}

    @job("email")
    def explode(payload):
        raise RuntimeError("kaboom")

    @job("webhook")
    def slow(payload):
        import time
        time.sleep(payload.get("seconds", 5))
    """
)


class Cli:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CRMQUEUE, *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [CRMQUEUE, *args],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_healthy(self, deadline: float = 20) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self("health").returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError("crmqueue never became healthy:\n" + self("health").stdout)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMQUEUE_", "REDIS_"))}
    env.pop("EMAIL_PROVIDER", None)
    return env


def _make_cli(workdir: Path, storage_url: str) -> Cli:
    (workdir / "cli_jobs.py").write_text(JOBS_MODULE)
    (workdir / "crmqueue.toml").write_text(
        textwrap.dedent(
            f"""
            [storage]
            url = "{storage_url}"
            [runner]
            imports = ["cli_jobs"]
            heartbeat_seconds = 0.5
            health_interval_seconds = 1
            shutdown_grace_seconds = 1
            [queues.email]
            backoff_seconds = 0.05
            backoff_max_seconds = 0.1
            """
        )
    )
    return Cli(workdir, _clean_env())


@pytest.fixture
def cli(tmp_path: Path, storage_url: str) -> Iterator[Cli]:
    yield _make_cli(tmp_path, storage_url)


@pytest.fixture
def running(cli: Cli) -> Iterator[Cli]:
    proc = cli.start("run")
    try:
        cli.wait_healthy()
        yield cli
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def test_enqueue_wait_stats_health_jobs_and_dlq(running: Cli) -> None:
    cli = running
    done = cli("enqueue", "email", "--json", '{"tenant_id": "t1"}', "--kind", "cli_jobs.hello",
               "--wait", "--timeout", "30")  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert "completed" in done.stderr

    shown = cli("jobs", "show", job_id, "--json")
    info = json.loads(shown.stdout)
    assert info["state"] == "completed"
    assert info["progress"] == 100
    assert info["result"] == {"greeting": "hello t1"}
    assert info["tenant"] == "t1"

    dead = cli("enqueue", "email", "--json", '{"tenant_id": "t1"}', "--kind", "cli_jobs.explode",
               "--wait", "--timeout", "30")  # fmt: skip
    assert dead.returncode == 1
    dead_id = dead.stdout.strip()
    assert "RuntimeError: kaboom" in dead.stderr

    listed = json.loads(cli("dlq", "list", "email", "--json").stdout)
    assert [job["id"] for job in listed] == [dead_id]
    assert len(listed[0]["errors"]) == 5

    stats = json.loads(cli("stats", "email", "--json").stdout)
    assert {k: stats[k] for k in ("completed", "dead", "waiting", "active")} == {
        "completed": 1, "dead": 1, "waiting": 0, "active": 0,
    }  # fmt: skip
    assert stats["failed"] == 5
    assert stats["failure_rate"] == pytest.approx(5 / 6, abs=1e-3)
    assert stats["healthy"] is False

    health = cli("health", "--json")
    assert health.returncode == 1, health.stdout
    report = json.loads(health.stdout)
    assert report["status"] == "degraded"
    assert report["last_check"] is not None

    removed = cli("jobs", "remove", dead_id, "--json")
    assert json.loads(removed.stdout)["state"] == "removed"
    gone = cli("jobs", "show", dead_id)
    assert gone.returncode == 1
    assert (
        gone.stderr.strip() == f"crmqueue: error: job {dead_id} not found (never existed,"
        " or removed by retention)"
    )

    # replay: the dead job comes back with a fresh budget (and dies again after 5 attempts)
    again = cli("enqueue", "email", "--json", '{"tenant_id": "t2"}', "--kind", "cli_jobs.explode",
                "--wait", "--timeout", "30")  # fmt: skip
    again_id = again.stdout.strip()
    replay = cli("dlq", "replay", "--all", "email")
    assert replay.returncode == 0
    assert replay.stdout.split() == [again_id]
    deadline = time.monotonic() + 30
    while (
        json.loads(cli("jobs", "show", again_id, "--json").stdout)["attempts"] != 5
        or json.loads(cli("jobs", "show", again_id, "--json").stdout)["state"] != "dead"
    ):
        assert time.monotonic() < deadline, "replayed job never ran its fresh attempts"
        time.sleep(0.1)
    assert len(json.loads(cli("jobs", "show", again_id, "--json").stdout)["errors"]) == 10


def test_graceful_sigterm_hands_back_a_long_job(cli: Cli) -> None:
    proc = cli.start("run", "--queues", "webhook")
    try:
        job_id = cli("enqueue", "webhook", "--json", '{"tenant_id": "t1", "seconds": 30}',
                     "--kind", "cli_jobs.slow").stdout.strip()  # fmt: skip
        deadline = time.monotonic() + 20
        while json.loads(cli("jobs", "show", job_id, "--json").stdout)["state"] != "active":
            assert time.monotonic() < deadline, "job never started"
            time.sleep(0.05)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert time.monotonic() - started < 5  # grace is 1 s
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    info = json.loads(cli("jobs", "show", job_id, "--json").stdout)
    assert info["state"] == "waiting"
    assert info["attempts"] == 0


def test_sighup_restarts_in_place_and_keeps_serving(cli: Cli) -> None:
    proc = cli.start("run")
    try:
        cli.wait_healthy()
        proc.send_signal(signal.SIGHUP)
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        deadline = time.monotonic() + 20
        # The same process (pid) now runs `python -m crmqueue run`.
        while b"\0-m\0crmqueue\0run" not in cmdline.read_bytes():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "crmqueue never re-executed itself"
            time.sleep(0.05)
        done = cli("enqueue", "email", "--json", '{"tenant_id": "t1"}', "--kind", "cli_jobs.hello",
                   "--wait", "--timeout", "30")  # fmt: skip
        assert done.returncode == 0, done.stderr
        cli.wait_healthy()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read() if proc.stdout else ""
    assert "received SIGHUP: restarting gracefully" in log
    assert log.count("consuming email") == 2, log


def test_enqueue_notification_wait_prints_each_channel(running: Cli) -> None:
    """A new user enqueued an sms notification with --wait and saw only "completed": the
    channel had been skipped (SMS not configured). --wait now prints each channel."""
    cli = running
    added = cli("users", "add", "--tenant", "t1", "--user", "ann", "--name", "Ann",
                "--email", "ann@example.com", "--phone", "+14155550123")  # fmt: skip
    assert added.returncode == 0, added.stderr
    payload = {"tenant_id": "t1", "user_id": "ann", "channels": ["in-app", "sms"],
               "title": "New Lead", "message": "Acme wants a demo"}  # fmt: skip
    done = cli("enqueue", "notification", "--json", json.dumps(payload), "--wait",
               "--timeout", "30")  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id, *lines = done.stdout.splitlines()
    result = json.loads(cli("jobs", "show", job_id, "--json").stdout)["result"]
    stored = result["channels"]["in-app"]["id"]
    assert lines == [
        "notification delivered (general)",
        f"  in-app: stored, id {stored}",
        '  sms: skipped: SMS is not configured (sms.provider is "none")',
    ]
