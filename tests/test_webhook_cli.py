"""``crmqueue webhooks ...`` through click's CliRunner, against a real SQLite CRM store:
a secret is printed by add and rotate only, once, and never by show, list or the log;
every error is one line naming the problem and exit status 1; another tenant's ids are
never found; and end to end, an event published from Python arrives at a loopback
receiver signed (both reference verifiers), shows in `deliveries`, and `replay` sends the
same message again with the same webhook-id."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from crmqueue.cli import main
from crmqueue.config import load_settings
from crmqueue.webhooks import Attempt, Message, WebhookService, service
from tests.conftest import wait_until
from tests.webhook_receiver import Plan, WebhookReceiver

SECRET = re.compile(r"whsec_[A-Za-z0-9+/]+=*")
URL = "http://127.0.0.1:9/hook"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config file of the test's own, and none of the developer's environment."""
    from crmqueue.engine import queues as engine_queues

    for name in list(os.environ):
        if name.startswith(("CRMQUEUE_", "REDIS_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(engine_queues, "_broker", None)  # replay configures one
    path = tmp_path / "crmqueue.toml"
    path.write_text(
        f'[storage]\nurl = "sqlite:///{tmp_path}/queues.db"\n'
        f'[database]\nurl = "sqlite:///{tmp_path}/crm.db"\n'
        f'[files]\ndir = "{tmp_path}/files"\n'
        '[outbound]\nallowed_networks = ["127.0.0.0/8"]\n'
    )
    return path


@pytest.fixture
def cli(config: Path) -> Callable[..., Result]:
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(main, ["webhooks", *args, "--config", str(config)])

    return run


def webhooks_service(config: Path) -> WebhookService:
    return service(load_settings(str(config), environ={}))


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    return result.stdout


def one_line_error(result: Result, *expected: str) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    err = result.stderr
    assert "Traceback" not in err
    assert err.startswith("crmqueue: error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    return err


def add(cli: Callable[..., Result], *args: str) -> str:
    """Add an endpoint; returns its secret (from --json)."""
    data = json.loads(ok(cli("add", *args, "--json")))
    secret: str = data["secret"]
    return secret


def test_add_prints_the_secret_once_and_nothing_else_shows_it(
    cli: Callable[..., Result], config: Path
) -> None:
    result = cli("add", URL, "--tenant", "t1", "--id", "webhook-789", "--event",
                 "contact.*", "--event", "lead.updated", "--description", "Sales sync")  # fmt: skip
    out = ok(result)
    [secret] = SECRET.findall(out)
    assert f"secret: {secret}" in out
    assert "shown only this once" in result.stderr
    assert "webhook webhook-789 added for tenant t1: " + URL in out
    assert "events: contact.*, lead.updated" in out
    endpoint = webhooks_service(config).get("t1", "webhook-789")
    assert endpoint.secret == secret and endpoint.event_types == ("contact.*", "lead.updated")
    assert endpoint.description == "Sales sync" and endpoint.enabled

    shown = [
        cli("list", "--tenant", "t1"), cli("list", "--tenant", "t1", "--json"),
        cli("show", "webhook-789", "--tenant", "t1"),
        cli("show", "webhook-789", "--tenant", "t1", "--json"),
        cli("deliveries", "webhook-789", "--tenant", "t1"),
    ]  # fmt: skip
    for result in shown:
        ok(result)
        assert secret not in result.output and "whsec_" not in result.output
        assert secret.removeprefix("whsec_") not in result.output
    listed = json.loads(shown[1].stdout)
    assert [(e["webhook_id"], e["url"], e["enabled"]) for e in listed] == [
        ("webhook-789", URL, True)
    ]
    assert "webhook-789" in shown[0].stdout and "Sales sync" in shown[0].stdout
    one = json.loads(shown[3].stdout)
    assert one["event_types"] == ["contact.*", "lead.updated"]
    assert one["tenant_id"] == "t1" and one["consecutive_failures"] == 0
    assert "secret" not in one and "previous_secret" not in one


def test_add_generates_an_id_and_subscribes_to_everything_by_default(
    cli: Callable[..., Result],
) -> None:
    data = json.loads(ok(cli("add", URL, "--tenant", "t1", "--json")))
    assert data["endpoint"]["event_types"] == ["*"]
    assert re.fullmatch(r"[A-Za-z0-9][\w.:-]*", data["endpoint"]["webhook_id"])
    assert SECRET.fullmatch(data["secret"])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["http://10.0.0.1/hook"], "url"),  # RFC 1918: refused by the SSRF guard
        (["http://169.254.169.254/latest/meta-data"], "url"),
        (["ftp://127.0.0.1/hook"], "url"),
        ([URL, "--event", "Contact.Created"], "event_types"),
        ([URL, "--id", "bad id!"], "webhook_id"),
        ([URL, "--id", "dup"], "already exists"),
        (["http://127.0.0.1/\udce9"], "URL: byte 0xE9"),
    ],
)
def test_add_refuses_bad_input_in_one_line(
    cli: Callable[..., Result], args: list[str], expected: str
) -> None:
    ok(cli("add", URL, "--tenant", "t1", "--id", "dup"))
    one_line_error(cli("add", *args, "--tenant", "t1"), expected)
    assert len(json.loads(ok(cli("list", "--tenant", "t1", "--json")))) == 1


def test_another_tenants_endpoint_is_never_found(cli: Callable[..., Result]) -> None:
    add(cli, URL, "--tenant", "t1", "--id", "webhook-1")
    assert json.loads(ok(cli("list", "--tenant", "t2", "--json"))) == []
    for command in ("show", "enable", "disable", "rotate", "remove", "deliveries"):
        one_line_error(cli(command, "webhook-1", "--tenant", "t2"), "'webhook-1' not found",
                       "'t2'")  # fmt: skip
    # still there, untouched, for its own tenant
    shown = json.loads(ok(cli("show", "webhook-1", "--tenant", "t1", "--json")))
    assert shown["enabled"] and shown["previous_secret_until"] is None


def test_disable_enable_rotate_remove(cli: Callable[..., Result], config: Path) -> None:
    first = add(cli, URL, "--tenant", "t1", "--id", "w1")
    out = ok(cli("disable", "w1", "--tenant", "t1", "--reason", "receiver moved"))
    assert out == "webhook w1 disabled: receiver moved\n"
    shown = json.loads(ok(cli("show", "w1", "--tenant", "t1", "--json")))
    assert (shown["enabled"], shown["disabled_reason"]) == (False, "receiver moved")
    assert "disabled" in ok(cli("list", "--tenant", "t1"))
    assert ok(cli("enable", "w1", "--tenant", "t1")) == "webhook w1 enabled\n"
    assert json.loads(ok(cli("show", "w1", "--tenant", "t1", "--json")))["enabled"]

    result = cli("rotate", "w1", "--tenant", "t1")
    [second] = SECRET.findall(ok(result))
    assert second != first and "shown only this once" in result.stderr
    assert "old secret stays valid" in result.stderr
    endpoint = webhooks_service(config).get("t1", "w1")
    assert endpoint.secret == second and endpoint.previous_secret == first
    assert endpoint.previous_secret_until is not None
    grace = endpoint.previous_secret_until - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=23) < grace <= dt.timedelta(hours=24)  # rotation_grace_hours
    assert endpoint.signing_secrets(dt.datetime.now(dt.UTC)) == [second, first]
    assert _time_in(result.stderr) == endpoint.previous_secret_until.replace(microsecond=0)

    third = json.loads(ok(cli("rotate", "w1", "--tenant", "t1", "--grace-hours", "0", "--json")))
    endpoint = webhooks_service(config).get("t1", "w1")
    assert endpoint.signing_secrets(dt.datetime.now(dt.UTC)) == [third["secret"]]

    assert (
        ok(cli("remove", "w1", "--tenant", "t1")) == "webhook w1 removed, with its delivery log\n"
    )
    one_line_error(cli("show", "w1", "--tenant", "t1"), "'w1' not found")
    one_line_error(cli("remove", "w1", "--tenant", "t1"), "'w1' not found")


def _time_in(text: str) -> dt.datetime:
    found = re.search(r"until (\S+?)\.?$", text.strip())
    assert found, text
    return dt.datetime.fromisoformat(found.group(1))


def test_deliveries_lists_the_log_newest_first(cli: Callable[..., Result], config: Path) -> None:
    add(cli, URL, "--tenant", "t1", "--id", "w1")
    webhooks = webhooks_service(config)
    endpoint = webhooks.get("t1", "w1")
    for attempt, (status, error) in enumerate([(503, "HTTP 503"), (None, "timed out"),
                                               (200, None)], start=1):  # fmt: skip
        webhooks.record_attempt(
            endpoint,
            Attempt("msg_1", "contact.created", "job-1", attempt, error is None, status,
                    12 * attempt, "busy [red]not markup[/red]" if status == 503 else "", error),
        )  # fmt: skip
    log = json.loads(ok(cli("deliveries", "w1", "--tenant", "t1", "--json")))
    assert [(d["attempt"], d["status_code"], d["succeeded"], d["error"]) for d in log] == [
        (3, 200, True, None), (2, None, False, "timed out"), (1, 503, False, "HTTP 503"),
    ]  # fmt: skip
    assert log[2]["latency_ms"] == 12 and log[0]["message_id"] == "msg_1"
    assert log[0]["id"] > log[1]["id"] > log[2]["id"]
    assert len(json.loads(ok(cli("deliveries", "w1", "--tenant", "t1", "--limit", "1",
                                 "--json")))) == 1  # fmt: skip
    table = ok(cli("deliveries", "w1", "--tenant", "t1"))
    assert "timed out" in table and "503" in table and "msg_1" in table
    one_line_error(cli("deliveries", "w1", "--tenant", "t2"), "not found")
    result = cli("deliveries", "w1", "--tenant", "t1", "--limit", "0")
    assert result.exit_code == 2 and "--limit" in result.stderr


def test_replay_errors_are_one_line(cli: Callable[..., Result], config: Path) -> None:
    add(cli, URL, "--tenant", "t1", "--id", "w1")
    webhooks = webhooks_service(config)
    one_line_error(cli("replay", "12345", "--tenant", "t1"), "delivery 12345 not found")
    for wrong in ("msg_2f1c", "0", "1.5", "٣"):  # a webhook-id, not a log row's id
        refused = cli("replay", wrong, "--tenant", "t1")
        assert refused.exit_code == 2 and "is not a delivery id" in refused.stderr
        assert "the id column of 'crmqueue webhooks deliveries ENDPOINT'" in refused.stderr
    endpoint = webhooks.get("t1", "w1")
    webhooks.save_message(
        Message("t1", "msg_a", "contact.created", dt.datetime.now(dt.UTC), {"id": "c1"})
    )
    webhooks.record_attempt(
        endpoint, Attempt("msg_a", "contact.created", None, 1, False, 500, 5, "", "HTTP 500")
    )
    [logged] = webhooks.deliveries("t1", "w1")
    one_line_error(cli("replay", str(logged.id), "--tenant", "t2"), "not found")
    ok(cli("disable", "w1", "--tenant", "t1", "--reason", "paused"))
    one_line_error(cli("replay", str(logged.id), "--tenant", "t1"), "w1 is disabled (paused)",
                   "enable it first")  # fmt: skip


def test_a_broken_config_is_one_line(cli: Callable[..., Result], config: Path) -> None:
    config.write_text(config.read_text() + "[webhooks]\nsecret_bytes = 8\n")
    one_line_error(cli("list", "--tenant", "t1"), "secret_bytes")


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


def test_publish_arrives_signed_is_logged_and_replays_with_the_same_id(
    cli: Callable[..., Result],
    config: Path,
    receiver: WebhookReceiver,
    start_consumer: Callable[..., Any],
    storage_url: str,
) -> None:
    """The README's walk-through: add with the CLI, publish from Python, the receiver
    verifies, the log shows it, replay sends the same message again. Queues on both
    storages."""
    text = config.read_text()
    config.write_text(
        re.sub(r'(?m)^url = "sqlite:///.*/queues.db"$', f'url = "{storage_url}"', text)
    )
    from crmqueue.engine import configure
    from crmqueue.tasks import publish_event
    from crmqueue.workers.loading import load_bodies

    hook = receiver.endpoint("/hook", [], Plan(200, body=b"thanks"))
    secret = add(cli, hook.url, "--tenant", "t1", "--id", "crm-sync", "--event", "contact.*")
    hook.secrets.append(secret)
    settings = load_settings(str(config), environ={})
    load_bodies(settings)
    broker = configure(settings)
    start_consumer(broker, ["webhook"], workers={"webhook": 2})

    publish_event(tenant_id="t1", event_type="contact.created", payload={"id": "c1"})
    [first] = receiver.wait_for(1, "/hook")
    assert first.verified, first.failures
    assert first.json()["type"] == "contact.created" and first.json()["data"] == {"id": "c1"}

    log = wait_until(
        lambda: json.loads(ok(cli("deliveries", "crm-sync", "--tenant", "t1", "--json")))
    )
    [entry] = log
    assert entry["succeeded"] and entry["status_code"] == 200
    assert entry["message_id"] == first.headers["webhook-id"]
    assert entry["response_excerpt"] == "thanks"
    assert "thanks" in ok(cli("deliveries", "crm-sync", "--tenant", "t1"))

    out = ok(cli("replay", str(entry["id"]), "--tenant", "t1"))
    assert f"delivery {entry['id']} replayed as job" in out
    [_, again] = receiver.wait_for(2, "/hook")
    assert again.verified, again.failures
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    assert again.body == first.body  # same type, event time and data
    wait_until(
        lambda: len(json.loads(ok(cli("deliveries", "crm-sync", "--tenant", "t1", "--json")))) == 2
    )


def test_a_password_in_an_endpoint_url_is_masked_wherever_it_is_shown(
    cli: Callable[..., Result], config: Path
) -> None:
    """Breaker finding 7: list/show (and --json), the add message and the Endpoint repr
    mask the URL's password; what is stored and sent keeps it."""
    url = "http://alice:s3cr3tpw@127.0.0.1:9/hook"
    masked = "http://alice:********@127.0.0.1:9/hook"
    added = cli("add", url, "--tenant", "t1", "--id", "private")
    assert masked in ok(added)
    shown = [
        added, cli("list", "--tenant", "t1"), cli("list", "--tenant", "t1", "--json"),
        cli("show", "private", "--tenant", "t1"),
        cli("show", "private", "--tenant", "t1", "--json"),
        cli("add", url, "--tenant", "t1", "--id", "other", "--json"),
    ]  # fmt: skip
    for result in shown:
        assert "s3cr3tpw" not in ok(result) + result.stderr
    assert json.loads(shown[2].stdout)[0]["url"] == masked
    assert json.loads(shown[4].stdout)["url"] == masked
    assert json.loads(shown[5].stdout)["endpoint"]["url"] == masked
    endpoint = webhooks_service(config).get("t1", "private")
    assert endpoint.url == url and endpoint.shown_url == masked
    assert "s3cr3tpw" not in repr(endpoint) and masked in repr(endpoint)
    assert "s3cr3tpw" not in str(webhooks_service(config).list("t1"))
