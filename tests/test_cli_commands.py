"""The command line's plain commands end to end, in subprocesses, as a user runs them:
input errors, config files and their precedence, doctor, health without a consumer,
--version, table output. None of them measures a process's timing (test_cli.py keeps
those: run/stop, signals), so they run in the parallel part of the suite."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import wait_until
from test_cli import CRMQUEUE, JOBS_MODULE, Cli, _clean_env, _make_cli


@pytest.fixture
def cli(tmp_path: Path, storage_url: str) -> Cli:
    return _make_cli(tmp_path, storage_url)


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


def test_dlq_list_marks_a_shortened_error_and_names_the_whole(cli: Cli) -> None:
    enqueued = cli("enqueue", "webhook", "--kind", "nosuch.fn", "--json", '{"tenant_id": "t1"}')
    assert enqueued.returncode == 0, enqueued.stderr
    worker = subprocess.Popen([CRMQUEUE, "worker", "webhook"], cwd=cli.workdir, env=cli.env)
    try:
        wait_until(
            lambda: json.loads(cli("dlq", "list", "--json").stdout),
            timeout=30,
            message="the job with no body to go dead",
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    env = {**cli.env, "COLUMNS": "250"}
    shown = subprocess.run(
        [CRMQUEUE, "dlq", "list"], cwd=cli.workdir, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert "not found on queue 'webhook'" in text  # the message is long: 120 characters shown
    assert "\u2026" in text and "crmqueue jobs show ID" in text
