"""``crmqueue schedules ...`` through click's CliRunner against a real SQLite CRM store and
queue storage (add, list, show, pause, resume, run-now, remove; refusals as one line
naming the field), the documented [[schedules]] example, and ``crmqueue run`` as a real
process enqueueing and running a configured schedule's jobs, then stopping cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from crmqueue.cli import main
from crmqueue.config import load_settings
from tests.conftest import ROOT, wait_until

EMAIL = '{"to": "ann@example.com", "template": "welcome", "context": {"firstName": "Ann"}}'


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config file of the test's own, and none of the developer's environment."""
    from crmqueue.engine import queues as engine_queues

    for name in list(os.environ):
        if name.startswith(("CRMQUEUE_", "REDIS_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(engine_queues, "_broker", None)
    path = tmp_path / "crmqueue.toml"
    path.write_text(
        f'[storage]\nurl = "sqlite:///{tmp_path}/queues.db"\n'
        f'[database]\nurl = "sqlite:///{tmp_path}/crm.db"\n'
        f'[files]\ndir = "{tmp_path}/files"\n'
        f'[email]\noutbox_dir = "{tmp_path}/outbox"\n'
    )
    return path


@pytest.fixture
def cli(config: Path) -> Callable[..., Result]:
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(main, ["schedules", *args, "--config", str(config)])

    return run


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    return result.stdout


def one_line_error(result: Result, *expected: str) -> str:
    assert result.exit_code == 1, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_round_trip(cli: Callable[..., Result], config: Path) -> None:
    report = (
        '{"user_id": "u1", "report_type": "sales", "format": "pdf", "date_range": "last_7_days"}'
    )
    args = [
        "add", "--tenant", "t1", "--name", "weekly sales", "--cron", "0 8 * * MON",
        "--tz", "Europe/Berlin", "--queue", "report", "--catch-up", "run-once",
        "--payload", report, "--json",
    ]  # fmt: skip
    added = json.loads(ok(cli(*args)))
    sid = str(added["id"])
    assert added["cron"] == "0 8 * * MON" and added["time_zone"] == "Europe/Berlin"
    assert added["payload"]["tenant_id"] == "t1" and added["catch_up"] == "run-once"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT0[67]:00:00\+00:00", added["next_due_at"])
    line = ok(
        cli("add", "--tenant", "t1", "--name", "ping", "--every", "3600", "--queue", "email",
            "--payload", EMAIL)
    )  # fmt: skip
    assert re.match(r"schedule \d+ \(ping\) added: every 3600 s, next ", line)

    listed = json.loads(ok(cli("list", "--tenant", "t1", "--json")))
    assert [s["name"] for s in listed] == ["weekly sales", "ping"]
    assert "weekly sales" in ok(cli("list", "--tenant", "t1"))
    assert json.loads(ok(cli("list", "--tenant", "t2", "--json"))) == []
    assert "0 8 * * MON" in ok(cli("show", sid, "--tenant", "t1"))

    paused = json.loads(ok(cli("pause", sid, "--tenant", "t1", "--json")))
    assert paused["paused"] is True
    assert "resumed" in ok(cli("resume", sid, "--tenant", "t1"))

    job_id = ok(cli("run-now", sid, "--tenant", "t1")).strip()
    assert job_id.startswith(f"sched-{sid}-now-")
    settings = load_settings(str(config), environ={})
    from crmqueue.engine.storage import open_store

    store = open_store(settings.storage.url, "report", 2.0)
    job = store.get_job(job_id)
    assert job is not None and job["state"] == "waiting"
    dates = json.loads(job["message"])["payload"]["date_range"]
    assert set(dates) == {"start_date", "end_date"}  # resolved, never the name
    shown = json.loads(ok(cli("show", sid, "--tenant", "t1", "--json")))
    assert shown["last_job_id"] == job_id

    assert "removed" in ok(cli("remove", sid, "--tenant", "t1"))
    one_line_error(cli("show", sid, "--tenant", "t1"), "no schedule")
    assert [s["name"] for s in json.loads(ok(cli("list", "--tenant", "t1", "--json")))] == ["ping"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--cron", "0 25 * * *"], "cron:"),
        (["--cron", "0 8 * * *", "--tz", "Berlin"], "time_zone:"),
        (["--every", "0"], "interval_seconds:"),
        (["--cron", "0 8 * * *", "--kind", "fax"], "kind:"),
    ],
)
def test_bad_definitions_are_one_line_naming_the_field(
    cli: Callable[..., Result], args: list[str], field: str
) -> None:
    result = cli(
        "add", "--tenant", "t1", "--name", "x", "--queue", "email", "--payload", EMAIL, *args
    )
    one_line_error(result, field)
    assert json.loads(ok(cli("list", "--tenant", "t1", "--json"))) == []


def test_bad_payload_is_named(cli: Callable[..., Result]) -> None:
    result = cli(
        "add", "--tenant", "t1", "--name", "x", "--queue", "email", "--cron", "0 8 * * *",
        "--payload", '{"to": "ann@example.com"}',
    )  # fmt: skip
    one_line_error(result, "payload.template")
    result = cli("add", "--tenant", "t1", "--name", "x", "--queue", "email", "--cron", "0 8 * * *")
    assert result.exit_code == 2 and "--payload" in result.stderr


def test_the_documented_example_is_a_valid_schedule() -> None:
    text = (ROOT / "config" / "crmqueue.toml").read_text()
    lines = text[text.index("#   [[schedules]]") :].splitlines()
    example = "\n".join(line.removeprefix("#   ") for line in lines if line.startswith("#   "))
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"example-{os.getpid()}.toml"
    path.write_text(example)
    try:
        (entry,) = load_settings(str(path), environ={}).schedules
    finally:
        path.unlink()
    assert entry.name == "nightly export" and entry.catch_up == "run-once"


def test_crmqueue_run_enqueues_and_runs_a_configured_schedule(config: Path, tmp_path: Path) -> None:
    with config.open("a") as file:
        file.write(
            "[runner]\nheartbeat_seconds = 0.5\nschedules_refresh_seconds = 1.0\n"
            '[[schedules]]\nname = "tick"\ntenant_id = "t1"\ninterval_seconds = 1\n'
            'queue = "email"\npayload = { to = "ann@example.com", template = "welcome",'
            ' context = { firstName = "Ann" } }\n'
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMQUEUE_", "REDIS_"))}
    env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "crmqueue", "run", "--config", str(config)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        outbox = tmp_path / "outbox"
        wait_until(
            lambda: outbox.exists() and len(list(outbox.glob("*.eml"))) >= 2,
            timeout=60,
            message="two scheduled emails in the outbox",
        )
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr.decode()
    settings = load_settings(str(config), environ={})
    from crmqueue.engine.storage import open_store

    store = open_store(settings.storage.url, "email", 2.0)
    done = [job["id"] for job in store.list_jobs("completed", 1000)]
    assert len(done) >= 2 and all(job_id.startswith("sched-") for job_id in done)
    assert len(done) == len(set(done))


def test_a_schedule_is_named_by_id_or_name(cli: Callable[..., Result]) -> None:
    """A new user tries the name `schedules list` shows: every command takes it as well as
    the id; an unknown one is one line naming it, and `show` prints the payload as JSON."""
    args = ["--every", "60", "--queue", "email", "--payload", EMAIL, "--json"]
    sid = json.loads(ok(cli("add", "--tenant", "t1", "--name", "every min", *args)))["id"]
    ok(cli("add", "--tenant", "t2", "--name", "other", *args))
    shown = ok(cli("show", "every min", "--tenant", "t1"))
    assert f"schedule {sid}" in shown and '"to": "ann@example.com"' in shown
    assert json.loads(ok(cli("pause", "every min", "--tenant", "t1", "--json")))["paused"]
    row = next(line for line in ok(cli("list", "--tenant", "t1")).splitlines() if "every" in line)
    assert "paused" in row and "+00:00" not in row  # no stale "next" while paused
    assert "resumed" in ok(cli("resume", "every min", "--tenant", "t1"))
    run = json.loads(ok(cli("run-now", "every min", "--tenant", "t1", "--json")))
    assert run["schedule_id"] == sid and run["job_id"].startswith(f"sched-{sid}-now-")
    for timing in ([], ["--cron", "0 8 * * *", "--every", "60"]):  # flags, not field names
        both = cli("add", "--tenant", "t1", "--name", "x", *timing, *args[2:])
        assert both.exit_code == 2 and "one of --cron or --every" in both.stderr
    one_line_error(cli("show", "other", "--tenant", "t1"), "no schedule 'other'")
    one_line_error(cli("show", "0", "--tenant", "t1"), "no schedule '0'")
    one_line_error(cli("show", "9" * 30, "--tenant", "t1"), "no schedule")
    assert "removed" in ok(cli("remove", "every min", "--tenant", "t1"))
    one_line_error(cli("show", str(sid), "--tenant", "t1"), f"no schedule {sid}")
