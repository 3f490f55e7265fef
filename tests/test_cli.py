"""The command line end to end, in subprocesses, in a fresh directory, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until

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


def test_health_exit_codes_without_consumer_and_unreachable_storage(
    cli: Cli, tmp_path: Path
) -> None:
    no_consumer = cli("health", "--json")
    assert no_consumer.returncode == 2
    assert json.loads(no_consumer.stdout)["status"] == "error"

    unreachable = Cli(tmp_path, {**_clean_env(), "REDIS_URL": "redis://127.0.0.1:1/0",
                                 "CRMQUEUE_STORAGE__CONNECT_TIMEOUT_SECONDS": "1"})  # fmt: skip
    (tmp_path / "crmqueue.toml").unlink()
    result = unreachable("health", "--json")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["status"] == "error"
    assert "127.0.0.1:1" in report["error"]


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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enqueue", "email", "--json", "{not json"], "--json: not valid JSON"),
        (["enqueue", "email", "--json", "[1, 2]"], "--json: the payload must be a JSON object"),
        (
            [
                "enqueue",
                "email",
                "--json",
                '{"tenant_id": "t1", "to": "a@example.com", "template": "welcome", "colour": 1}',
            ],
            "colour: Extra inputs are not permitted",
        ),
        (
            [
                "enqueue",
                "email",
                "--json",
                '{"tenant_id": "t1", "to": "a@example.com", "template": "welcome", "context": 5}',
            ],
            "context: Input should be a valid dictionary",
        ),
        (
            ["enqueue", "email", "--json", '{"to": "a@example.com", "template": "welcome"}'],
            "tenant_id: Field required",
        ),
        (
            [
                "enqueue",
                "import-export",
                "--json",
                '{"tenantId": "t1", "userId": "u1", "fileUrl": "x.csv", "fileType": "doc",'
                ' "entityType": "contacts"}',
            ],
            "file_type: Input should be 'csv', ",  # then every other file type
        ),
        (["enqueue", "emial", "--json", "{}"], "'emial' is not one of"),
        (
            ["enqueue", "email", "--json", '{"tenant_id": "t1"}', "--kind", "nope"],
            "kind: unknown for queue email: 'nope'",
        ),
    ],
)
def test_bad_input_is_one_clear_line_and_nothing_is_enqueued(
    cli: Cli, args: list[str], message: str
) -> None:
    result = cli(*args)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    if "is not one of" not in message:
        assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    stats = json.loads(cli("stats", "--json").stdout)
    assert sum(row["waiting"] + row["scheduled"] for row in stats) == 0


def test_config_check_and_show(cli: Cli, tmp_path: Path) -> None:
    assert cli("config", "check").returncode == 0
    broken = tmp_path / "broken.toml"
    broken.write_text("[queues.email]\nworkers = 0\n[storage]\nurll = 'x'\n")
    result = cli("config", "check", "--config", str(broken))
    assert result.returncode == 1
    assert "queues.email.workers: Input should be greater than 0" in result.stderr
    assert "storage.urll: unknown key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    secret = Cli(tmp_path, {**cli.env, "REDIS_URL": "redis://:hunter2@127.0.0.1:6379/0",
                            "SENDGRID_API_KEY": "SG.very-secret"})  # fmt: skip
    shown = secret("config", "show", "--config", str(tmp_path / "crmqueue.toml"))
    assert shown.returncode == 0
    assert "hunter2" not in shown.stdout and "very-secret" not in shown.stdout
    data = json.loads(shown.stdout)
    assert data["storage"]["url"] == "redis://:********@127.0.0.1:6379/0"
    assert data["email"]["sendgrid"]["api_key"] == "**********"


def test_version() -> None:
    result = subprocess.run([CRMQUEUE, "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("crmqueue, version ")
    # In a checkout the commit comes from git (an executable carries it in crmqueue/_build.py).
    assert re.fullmatch(r"crmqueue, version \S+ \(commit [0-9a-f]{7,}(-dirty)?\)\n", result.stdout)


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


def test_doctor(cli: Cli, tmp_path: Path) -> None:
    result = cli("doctor", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    rows = {row["check"]: row for row in report["checks"]}
    assert list(rows) == [
        "config", "job bodies", "queue storage", "clock", "files directory",
        "email outbox directory", "email provider outbox", "CRM database",
    ]  # fmt: skip
    assert {row["status"] for row in rows.values()} == {"ok"}
    assert "email 3" in rows["job bodies"]["detail"]  # send_email + the two cli_jobs bodies
    if "redis" in rows["config"]["detail"]:
        assert "against Redis TIME" in rows["clock"]["detail"]
    assert (tmp_path / "crmqueue-data" / "files").is_dir()
    assert "crmqueue doctor" in cli("doctor").stdout

    (tmp_path / "not-a-dir").write_text("")
    broken = Cli(
        tmp_path,
        {
            **cli.env,
            "REDIS_URL": "redis://:hunter2@127.0.0.1:1/0",
            "CRMQUEUE_STORAGE__CONNECT_TIMEOUT_SECONDS": "1",
            "CRMQUEUE_FILES__DIR": str(tmp_path / "not-a-dir" / "files"),
            "EMAIL_PROVIDER": "sendgrid",
            "CRMQUEUE_DATABASE__URL": "postgresql+psycopg://crm:pg-secret@127.0.0.1:1/crm",
        },
    )
    failed = broken("doctor", "--json")
    assert failed.returncode == 1
    assert "hunter2" not in failed.stdout and "pg-secret" not in failed.stdout
    rows = {row["check"]: row for row in json.loads(failed.stdout)["checks"]}
    assert rows["queue storage"]["status"] == "FAIL"
    assert "127.0.0.1:1" in rows["queue storage"]["detail"]
    assert rows["files directory"]["status"] == "FAIL"
    assert rows["email provider sendgrid"] == {
        "check": "email provider sendgrid", "status": "FAIL",
        "detail": "not set: email.sendgrid.api_key (SENDGRID_API_KEY)",
    }  # fmt: skip
    assert rows["CRM database"]["status"] == "FAIL"
    assert "127.0.0.1:1/crm: cannot connect" in rows["CRM database"]["detail"]
    table = broken("doctor")
    assert table.returncode == 1 and "FAIL" in table.stdout and "hunter2" not in table.stdout

    keyed = Cli(tmp_path, {**cli.env, "EMAIL_PROVIDER": "sendgrid",
                           "SENDGRID_API_KEY": "SG.very-secret"})  # fmt: skip
    row = next(
        row
        for row in json.loads(keyed("doctor", "--json").stdout)["checks"]
        if row["check"] == "email provider sendgrid"
    )
    assert row["status"] == "ok" and "not verified online yet" in row["detail"]

    (tmp_path / "bad.toml").write_text("[storage]\nurl = 'ftp://x'\n")
    invalid = cli("doctor", "--config", str(tmp_path / "bad.toml"))
    assert invalid.returncode == 1
    assert "storage.url" in invalid.stdout


# --------------------------------------------------------------------------- --config


@pytest.fixture
def alt(tmp_path: Path) -> tuple[Cli, str]:
    """A working directory without crmqueue.toml, and a config file elsewhere (its own
    SQLite storage, `queues.email.workers = 7`) that only --config or $CRMQUEUE_CONFIG
    name. Without either, the built-in defaults apply (workers 4, storage under ./)."""
    workdir, confdir = tmp_path / "work", tmp_path / "conf"
    workdir.mkdir()
    confdir.mkdir()
    (workdir / "cli_jobs.py").write_text(JOBS_MODULE)
    config = confdir / "alt.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [storage]
            url = "sqlite:///{confdir}/queues.db"
            [files]
            dir = "{confdir}/files"
            [runner]
            imports = ["cli_jobs"]
            heartbeat_seconds = 0.5
            shutdown_grace_seconds = 1
            [queues.email]
            workers = 7
            """
        )
    )
    return Cli(workdir, _clean_env()), str(config)


def _email_workers(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout)["queues"]["email"]["workers"])


def test_config_before_or_after_the_command(alt: tuple[Cli, str]) -> None:
    cli, config = alt
    assert _email_workers(cli("config", "show")) != 7  # the defaults
    # Every level of a nested command: crmqueue, the group, the command.
    for args in (
        ["--config", config, "config", "show"],
        ["config", "--config", config, "show"],
        ["config", "show", "--config", config],
    ):
        assert _email_workers(cli(*args)) == 7, args

    enqueued = cli("--config", config, "enqueue", "email", "--json", '{"tenant_id": "t1"}',
                   "--kind", "cli_jobs.hello")  # fmt: skip
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = enqueued.stdout.strip()
    # The job is in alt.toml's storage, whichever position names it, and not in the default.
    for args in (
        ["--config", config, "jobs", "show", job_id, "--json"],
        ["jobs", "--config", config, "show", job_id, "--json"],
        ["jobs", "show", job_id, "--json", "--config", config],
    ):
        shown = cli(*args)
        assert shown.returncode == 0, (args, shown.stderr)
        assert json.loads(shown.stdout)["state"] == "waiting"
    assert cli("jobs", "show", job_id).returncode == 1
    for args in (["--config", config, "stats", "email", "--json"],
                 ["stats", "email", "--json", "--config", config]):  # fmt: skip
        assert json.loads(cli(*args).stdout)["waiting"] == 1, args
    assert json.loads(cli("--config", config, "dlq", "list", "--json").stdout) == []
    doctor = cli("--config", config, "doctor", "--json")
    rows = {row["check"]: row for row in json.loads(doctor.stdout)["checks"]}
    assert f"from {config}" in rows["config"]["detail"]
    assert "email 3" in rows["job bodies"]["detail"]  # cli_jobs, named only in alt.toml
    assert cli("--config", config, "config", "check").stdout == "configuration ok\n"
    assert cli("--config", config, "config", "default").stdout.startswith("#")

    # A serving command with --config before it consumes alt.toml's queue.
    worker = cli.start("--config", config, "worker", "email")
    try:

        def completed() -> bool:
            assert worker.poll() is None, worker.stdout.read() if worker.stdout else ""
            shown = cli("jobs", "show", job_id, "--json", "--config", config)
            return bool(json.loads(shown.stdout)["state"] == "completed")

        wait_until(completed, timeout=30, interval=0.1, message="the worker never ran the job")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0

    # python -m crmqueue takes it before the command too.
    module = subprocess.run(
        [sys.executable, "-m", "crmqueue", "--config", config, "config", "show"],
        cwd=cli.workdir, env=cli.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert _email_workers(module) == 7


def test_config_given_twice_and_its_precedence(alt: tuple[Cli, str], tmp_path: Path) -> None:
    cli, config = alt
    other = tmp_path / "other.toml"
    other.write_text("[queues.email]\nworkers = 9\n")
    # The same file twice (spelled differently) is fine.
    relative = os.path.relpath(config, cli.workdir)
    assert _email_workers(cli("--config", config, "config", "show", "--config", relative)) == 7
    for args in (
        ["--config", config, "config", "show", "--config", str(other)],
        ["config", "--config", config, "show", "--config", str(other)],
        ["--config", config, "jobs", "--config", str(other), "show", "x"],
        ["--config", config, "stats", "--config", str(other)],
    ):
        result = cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stdout == ""
        assert result.stderr == (
            f"crmqueue: error: --config given twice with different files ({config} and"
            f" {other}); give it once, before or after the command\n"
        ), args

    # --config (either position) > $CRMQUEUE_CONFIG > ./crmqueue.toml > the defaults.
    env_cli = Cli(cli.workdir, {**cli.env, "CRMQUEUE_CONFIG": str(other)})
    assert _email_workers(env_cli("config", "show")) == 9
    assert _email_workers(env_cli("--config", config, "config", "show")) == 7
    assert _email_workers(env_cli("config", "show", "--config", config)) == 7
    (cli.workdir / "crmqueue.toml").write_text("[queues.email]\nworkers = 5\n")
    assert _email_workers(cli("config", "show")) == 5
    assert _email_workers(env_cli("config", "show")) == 9

    missing = cli("--config", str(tmp_path / "nope.toml"), "stats")
    assert missing.returncode == 1
    assert missing.stderr == f"crmqueue: error: {tmp_path / 'nope.toml'}: config file not found\n"


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_tables_show_job_data_with_square_brackets_as_written(cli: Cli) -> None:
    subject = "Offer [red]50%[/red] off [link=http://x]now[/link] [runner]"
    payload = {"tenant_id": "t1", "to": "a@example.com", "template": "welcome", "subject": subject}
    enqueued = cli("enqueue", "email", "--json", json.dumps(payload))
    assert enqueued.returncode == 0, enqueued.stderr
    shown = cli("jobs", "show", enqueued.stdout.strip())
    assert shown.returncode == 0, shown.stderr
    assert subject in " ".join(shown.stdout.split()), shown.stdout
