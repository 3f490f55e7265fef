"""``crmqueue users add|list`` and ``crmqueue notifications list|read|prefs`` as a user runs
them: the inbox of one user only, one-line errors, preferences shown with their source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from crmqueue import notifications
from crmqueue.config import load_settings
from crmqueue.crm.store import create_engine, init_db


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMQUEUE_", "REDIS_"))}
    env["CRMQUEUE_DATABASE__URL"] = f"sqlite:///{tmp_path}/crm.db"
    return subprocess.run(
        [sys.executable, "-m", "crmqueue", *args], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


def test_users_and_notifications_commands(tmp_path: Path) -> None:
    added = _cli(tmp_path, "users", "add", "--tenant", "t1", "--user", "ann", "--name", "Ann Lee",
                 "--email", "ann@example.com", "--time-zone", "Europe/Berlin")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert added.stdout == "added user ann of tenant t1\n"
    bad = _cli(tmp_path, "users", "add", "--tenant", "t1", "--user", "bob", "--name", "Bob",
               "--email", "bob@example.com", "--time-zone", "Mars/Base")  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "time_zone: 'Mars/Base' is not an IANA time zone" in bad.stderr
    host = _cli(tmp_path, "users", "add", "--tenant", "t1", "--user", "bob", "--name", "Bob",
                "--email", "bob@example.com", "--time-zone", "localtime")  # fmt: skip
    assert host.returncode == 1 and "time_zone: 'localtime' is not an IANA" in host.stderr
    listed = json.loads(_cli(tmp_path, "users", "list", "--tenant", "t1", "--json").stdout)
    assert [(u["user_id"], u["email"], u["time_zone"]) for u in listed] == [
        ("ann", "ann@example.com", "Europe/Berlin")
    ]

    engine = create_engine(f"sqlite:///{tmp_path}/crm.db")
    init_db(engine)
    settings = load_settings(environ={})
    ids = [notifications.store("t1", "ann", title=f"n{i}", message="m", engine=engine,
                               settings=settings) for i in range(3)]  # fmt: skip
    other = notifications.store("t1", "bob", title="bob's", message="m", engine=engine,
                                settings=settings)  # fmt: skip
    engine.dispose()

    page = json.loads(_cli(tmp_path, "notifications", "list", "--tenant", "t1", "--user", "ann",
                           "--limit", "2", "--json").stdout)  # fmt: skip
    assert [n["title"] for n in page["items"]] == ["n2", "n1"] and page["unread"] == 3
    rest = json.loads(_cli(tmp_path, "notifications", "list", "--tenant", "t1", "--user", "ann",
                           "--cursor", page["next_cursor"], "--json").stdout)  # fmt: skip
    assert [n["title"] for n in rest["items"]] == ["n0"] and rest["next_cursor"] is None

    read = _cli(tmp_path, "notifications", "read", "--tenant", "t1", "--user", "ann",
                str(ids[0]))  # fmt: skip
    assert read.returncode == 0 and read.stdout == "marked 1 notification(s) read\n"
    foreign = _cli(tmp_path, "notifications", "read", "--tenant", "t1", "--user", "ann",
                   str(other))  # fmt: skip
    assert foreign.returncode == 1
    assert (
        foreign.stderr
        == f"crmqueue: error: user 'ann' of tenant 't1' has no notification {other}\n"
    )
    table = _cli(tmp_path, "notifications", "list", "--tenant", "t1", "--user", "ann")
    assert "n2" in table.stdout and "bob's" not in table.stdout
    assert table.stdout.endswith("2 unread\n")
    everything = _cli(tmp_path, "notifications", "read", "--tenant", "t1", "--user", "ann", "--all")
    assert everything.stdout == "marked 2 notification(s) read\n"

    prefs = _cli(tmp_path, "notifications", "prefs", "--tenant", "t1", "--user", "ann", "--set",
                 "lead.assigned=in-app+email", "--quiet", "22:00-07:00", "--json")  # fmt: skip
    assert prefs.returncode == 0, prefs.stderr
    data = json.loads(prefs.stdout)
    assert data["effective"]["lead.assigned"] == {
        "channels": ["in-app", "email"],
        "source": "user's choice for lead.assigned",
    }
    assert data["effective"]["*"]["source"] == "notifications.default_channels"
    assert (data["quiet_hours"], data["time_zone"]) == (["22:00", "07:00"], "Europe/Berlin")
    wrong = _cli(tmp_path, "notifications", "prefs", "--tenant", "t1", "--user", "ann",
                 "--set", "lead.assigned=fax")  # fmt: skip
    assert wrong.returncode == 1 and "channels: unknown 'fax'" in wrong.stderr


def test_bad_numbers_are_one_line_errors_not_tracebacks(tmp_path: Path) -> None:
    """A cursor, id or limit in other digits than ASCII, or past BIGINT, is refused
    on one line (or, for an id, names no notification), never a traceback or a guess."""
    base = ("--tenant", "nt", "--user", "nb")
    for cursor in ("²", "٣٠٠٠", "99999999999999999999999"):
        out = _cli(tmp_path, "notifications", "list", *base, "--cursor", cursor)
        assert out.returncode == 1, out.stderr
        assert out.stderr == (
            f"crmqueue: error: payload invalid: cursor: {cursor!r}"
            " is not a cursor from an earlier page\n"
        )
    huge = _cli(tmp_path, "notifications", "read", *base, "99999999999999999999")
    assert huge.returncode == 1 and "Traceback" not in huge.stderr
    assert huge.stderr == (
        "crmqueue: error: user 'nb' of tenant 'nt' has no notification 99999999999999999999\n"
    )
    arabic = _cli(tmp_path, "notifications", "read", *base, "٣")
    assert arabic.returncode == 1
    assert arabic.stderr == "crmqueue: error: '٣' is not a notification id (a number)\n"
    limit = _cli(tmp_path, "notifications", "list", *base, "--limit", "٢")
    assert limit.returncode == 2 and "is not a whole number in ASCII digits" in limit.stderr


def test_user_ids_are_stripped_and_unknown_users_have_no_preferences(tmp_path: Path) -> None:
    added = _cli(tmp_path, "users", "add", "--tenant", "nt", "--user", " nb ", "--name", "Nb",
                 "--email", "nb@example.com")  # fmt: skip
    assert added.returncode == 0 and added.stdout == "added user nb of tenant nt\n"
    engine = create_engine(f"sqlite:///{tmp_path}/crm.db")
    init_db(engine)
    notifications.store("nt", "nb", title="hi", message="m", engine=engine,
                        settings=load_settings(environ={}))  # fmt: skip
    engine.dispose()
    page = _cli(tmp_path, "notifications", "list", "--tenant", "nt", "--user", " nb", "--json")
    assert [n["title"] for n in json.loads(page.stdout)["items"]] == ["hi"]
    nobody = _cli(tmp_path, "notifications", "prefs", "--tenant", "nt", "--user", "nobody")
    assert nobody.returncode == 1
    assert nobody.stderr == (
        "crmqueue: error: tenant 'nt' has no user 'nobody' (crmqueue users add)\n"
    )
    ghost = _cli(tmp_path, "notifications", "prefs", "--tenant", "nt", "--user", "ghost",
                 "--set", "general=email")  # fmt: skip
    assert ghost.returncode == 1 and "tenant 'nt' has no user 'ghost'" in ghost.stderr
    control = _cli(tmp_path, "notifications", "list", "--tenant", "nt", "--user", "n\x01b")
    assert control.returncode == 1 and control.stderr.count("\n") == 1
    assert "user_id: must be 1-64 characters without spaces" in control.stderr
