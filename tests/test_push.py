"""Web push (issue #14): VAPID keys and config, subscriptions (Python and CLI, checked,
isolated per tenant and user, schema step on SQLite and PostgreSQL), and the push channel
of the notification queue with a real consumer on SQLite and Redis storage against a
loopback push service (tests/push_service.py) that verifies the VAPID JWT and decrypts
each message with the browser's private key: 201 delivered, 410 removes the
subscription, 429 retried after Retry-After (without sending twice to a subscription
already reached), 413 permanent after the payload is trimmed to fit, Urgency, Topic, TTL,
quiet hours holding push, and skips with reasons."""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from pathlib import Path
from typing import Any

import crm_db
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import wait_until
from push_service import Plan, PushService

import crmqueue.workers.notification  # registers the bodies before any broker is built
import crmqueue.workers.push
from crmqueue import jobs, notifications, push, tasks
from crmqueue.cli import main
from crmqueue.config import load_settings
from crmqueue.crm import schema
from crmqueue.crm.push_subscriptions import endpoint_hash
from crmqueue.crm.store import get_engine, init_db
from crmqueue.crm.users import add_user
from crmqueue.errors import ConfigError, PayloadError
from crmqueue.providers.push import MAX_PLAINTEXT, fit_payload, get_provider, not_configured
from crmqueue.providers.push.webpush import VapidKey

assert crmqueue.workers.notification and crmqueue.workers.push

crm_url = crm_db.crm_url
pg_url = crm_db.pg_url

KEY = VapidKey.generate()
LOOPBACK = {
    "outbound.allowed_networks": "127.0.0.1/32",
    "push.allowed_hosts": "127.0.0.1",
    "push.vapid_subject": "mailto:ops@example.com",
    "push.vapid_private_key": KEY.private_b64(),
}


def _settings(tmp_path: Path, **more: Any) -> Any:
    return load_settings(
        environ={}, overrides={"database.url": f"sqlite:///{tmp_path}/crm.db", **LOOPBACK, **more}
    )


@pytest.fixture
def service() -> Any:
    with PushService(application_server_key=KEY.public_key) as running:
        yield running


# --------------------------------------------------------------------------- keys, config


def test_keys_command_prints_a_pair_that_loads_and_matches(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["push", "keys"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split("=", 1) for line in result.output.splitlines())
    public, private = (lines["CRMQUEUE_PUSH__VAPID_PUBLIC_KEY"],
                       lines["CRMQUEUE_PUSH__VAPID_PRIVATE_KEY"])  # fmt: skip
    assert VapidKey.from_text(private).public_key == public and len(public) == 87
    pem = json.loads(CliRunner().invoke(main, ["push", "keys", "--pem", "--json"]).output)
    assert pem["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert VapidKey.from_text(pem["private_key"]).public_key == pem["public_key"]

    # The private key from the environment (and the public key it derives) ...
    env = {"CRMQUEUE_PUSH__VAPID_PRIVATE_KEY": private,
           "CRMQUEUE_PUSH__VAPID_SUBJECT": "mailto:ops@example.com"}  # fmt: skip
    settings = load_settings(environ=env)
    assert not_configured(settings.push) is None
    assert push.application_server_key(settings) == public
    assert private not in json.dumps(settings.public_dict())  # masked
    # ... or from a file (PEM), but never from the config file itself.
    key_file = tmp_path / "vapid.pem"
    key_file.write_text(pem["private_key"])
    config = tmp_path / "crmqueue.toml"
    config.write_text(f'[push]\nvapid_subject = "https://crm.example.com"\n'
                      f'vapid_private_key_file = "{key_file}"\n')  # fmt: skip
    assert push.application_server_key(load_settings(config, environ={})) == pem["public_key"]
    config.write_text(f'[push]\nvapid_private_key = "{private}"\n')
    with pytest.raises(ConfigError, match=r"push\.vapid_private_key: a secret") as caught:
        load_settings(config, environ={})
    assert private not in str(caught.value)
    config.write_text('[push]\nvapid_subject = "mailto:ops@example.com"\n')
    bad_key = {"CRMQUEUE_PUSH__VAPID_PRIVATE_KEY": "AAAA"}
    checked = CliRunner().invoke(main, ["config", "check", "--config", str(config)], env=bad_key)
    assert checked.exit_code == 1 and "push.vapid_private_key: not a P-256" in checked.output
    out = CliRunner().invoke(main, ["push", "public-key", "--config", str(config)])
    assert out.exit_code == 1 and private not in out.output


def test_vapid_settings_are_checked(tmp_path: Path) -> None:
    assert "push.vapid_subject" in (not_configured(load_settings(environ={}).push) or "")
    unset = {"CRMQUEUE_PUSH__VAPID_PRIVATE_KEY": "", "CRMQUEUE_PUSH__VAPID_SUBJECT": "mailto:a@b.c"}
    empty = load_settings(environ=unset)
    assert empty.push.vapid_private_key is None  # set but empty: no key, not a bad one
    assert "a VAPID private key" in (not_configured(empty.push) or "")
    for key, value, message in (
        ("push.vapid_subject", "ops@example.com", "mailto: or https:"),
        ("push.vapid_public_key", "abc", "uncompressed P-256 point"),
        ("push.allowed_hosts", "fcm.googleapis.com,bad host", "not a host name"),
        ("push.jwt_expiry_seconds", 90_000, "less than or equal to 86400"),
        ("push.ttl_seconds", -1, "greater than or equal to 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_settings(environ={}, overrides={key: value})
    other = VapidKey.generate().public_key
    mismatched = _settings(tmp_path, **{"push.vapid_public_key": other})
    with pytest.raises(ConfigError, match="does not belong to the private key"):
        get_provider(mismatched)
    broken = _settings(tmp_path, **{"push.vapid_private_key": "not-a-key"})
    with pytest.raises(ConfigError, match=r"push\.vapid_private_key: not a P-256") as caught:
        get_provider(broken)
    assert "not-a-key" not in str(caught.value)


def test_payload_is_trimmed_to_one_record_saying_so() -> None:
    fields = {"id": "j1", "title": "Lead", "message": "😀" * 2000, "category": "general",
              "action_url": "https://crm.example.com/leads/1"}  # fmt: skip
    body, note = fit_payload(fields)
    assert len(body) <= MAX_PLAINTEXT and note is not None and "trimmed from 2000" in note
    data = json.loads(body)
    assert data["message"].endswith("…") and data["action_url"] == fields["action_url"]
    assert len(fit_payload({**fields, "message": "short"})[0]) < 200
    assert fit_payload({**fields, "message": "short"})[1] is None
    # control characters take 6 bytes each in JSON: still inside the limit
    escaped, _ = fit_payload({**fields, "message": "\x01" * 2000})
    assert len(escaped) <= MAX_PLAINTEXT


# --------------------------------------------------------------------------- subscriptions


def test_subscribe_checks_every_field(tmp_path: Path, service: PushService) -> None:
    settings = _settings(tmp_path)
    good = service.browser().subscription
    endpoint, keys = good["endpoint"], good["keys"]

    def refused(field: str, **changes: Any) -> str:
        args = {"endpoint": endpoint, "p256dh": keys["p256dh"], "auth": keys["auth"], **changes}
        with pytest.raises(PayloadError) as caught:
            push.subscribe("t1", "u1", settings=settings, **args)
        assert [name for name, _ in caught.value.errors] == [field], caught.value
        return str(caught.value)

    assert "allowed_hosts" in refused("endpoint", endpoint="https://push.example.net/x")
    assert "user info" in refused("endpoint", endpoint=endpoint.replace("//", "//a:b@"))
    refused("endpoint", endpoint=endpoint + "#frag")
    refused("endpoint", endpoint="ftp://127.0.0.1/x")
    refused("endpoint", endpoint="https://127.0.0.1/" + "x" * 2000)
    refused("p256dh", p256dh="not base64!")
    refused("p256dh", p256dh=keys["auth"])  # 16 bytes, not a point
    refused("p256dh", p256dh="BA" + "A" * 85)  # 65 bytes, not on the curve
    refused("auth", auth=keys["p256dh"])
    refused("user_agent", user_agent="x" * 501)
    with pytest.raises(PayloadError, match="user_id"):
        push.subscribe("t1", " ", endpoint, keys["p256dh"], keys["auth"], settings=settings)
    # loopback only through [outbound] allowed_networks; http only to such hosts
    closed = _settings(tmp_path, **{"outbound.allowed_networks": ""})
    with pytest.raises(PayloadError, match="loopback"):
        push.subscribe("t1", "u1", endpoint, keys["p256dh"], keys["auth"], settings=closed)
    public = _settings(tmp_path, **{"push.allowed_hosts": ""})
    with pytest.raises(PayloadError, match="must be an https URL"):
        push.subscribe("t1", "u1", "http://93.184.215.14/x", keys["p256dh"], keys["auth"],
                       settings=public)  # fmt: skip
    assert push.subscriptions("t1", "u1", settings=settings) == []


def test_subscriptions_are_per_user_refreshed_limited_and_removed(
    tmp_path: Path, service: PushService
) -> None:
    settings = _settings(tmp_path, **{"push.max_subscriptions_per_user": 2})
    one, two, three = (service.browser().subscription for _ in range(3))
    first = push.subscribe_json("t1", "u1", one, user_agent="Firefox 140", settings=settings)
    again = push.subscribe_json("t1", "u1", {**one, "keys": two["keys"]}, settings=settings)
    assert again.id == first.id and again.user_agent is None  # the same endpoint: refreshed
    push.subscribe_json("t1", "u1", two, settings=settings)
    with pytest.raises(PayloadError, match="max_subscriptions_per_user"):
        push.subscribe_json("t1", "u1", three, settings=settings)
    # another user and another tenant may subscribe the same endpoint: their own rows
    push.subscribe_json("t1", "u2", one, settings=settings)
    push.subscribe_json("t2", "u1", one, settings=settings)
    mine = push.subscriptions("t1", "u1", settings=settings)
    assert [s.endpoint for s in mine] == [one["endpoint"], two["endpoint"]]
    assert "p256dh" not in json.dumps([s.to_dict() for s in mine])
    # no call reaches another user's or tenant's subscription
    assert push.unsubscribe("t1", "u3", one["endpoint"], settings=settings) is False
    assert push.unsubscribe("t3", "u1", one["endpoint"], settings=settings) is False
    assert push.unsubscribe("t1", "u1", one["endpoint"], settings=settings) is True
    assert push.unsubscribe("t1", "u1", one["endpoint"], settings=settings) is False
    assert [s.endpoint for s in push.subscriptions("t1", "u1", settings=settings)] == [
        two["endpoint"]
    ]
    assert len(push.subscriptions("t1", "u2", settings=settings)) == 1
    assert len(push.subscriptions("t2", "u1", settings=settings)) == 1
    with pytest.raises(PayloadError, match="keys"):
        push.subscribe_json("t1", "u1", {"endpoint": one["endpoint"]}, settings=settings)


def test_cli_subscribe_list_unsubscribe(tmp_path: Path, service: PushService) -> None:
    config = tmp_path / "crmqueue.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path}/crm.db"\n'
        '[outbound]\nallowed_networks = ["127.0.0.1/32"]\n[push]\nallowed_hosts = ["127.0.0.1"]\n'
    )
    browser = service.browser()
    runner = CliRunner()
    base = ["--config", str(config), "push"]
    who = ["--tenant", "t1", "--user", "u1"]
    subscription = json.dumps(browser.subscription)
    added = runner.invoke(
        main, [*base, "subscribe", *who, "--subscription", subscription, "--user-agent", "Chrome"]
    )
    assert added.exit_code == 0, added.output
    assert "at 127.0.0.1" in added.output
    keys = browser.subscription["keys"]
    other = service.browser()
    by_flags = ["--endpoint", other.endpoint, "--p256dh", keys["p256dh"], "--auth", keys["auth"]]
    flags = runner.invoke(main, [*base, "subscribe", *who, *by_flags, "--json"])
    assert json.loads(flags.output)["endpoint"] == other.endpoint
    listed = json.loads(runner.invoke(main, [*base, "subscriptions", *who, "--json"]).output)
    assert [(s["endpoint"], s["user_agent"]) for s in listed] == [
        (browser.endpoint, "Chrome"),
        (other.endpoint, None),
    ]
    table = runner.invoke(main, [*base, "subscriptions", *who])
    assert "127.0.0.1" in table.output and "Chrome" in table.output
    bad = runner.invoke(main, [*base, "subscribe", *who, "--endpoint", "https://x.example/",
                               "--p256dh", keys["p256dh"], "--auth", keys["auth"]])  # fmt: skip
    assert bad.exit_code == 1 and "endpoint" in bad.output
    piped = runner.invoke(main, [*base, "subscribe", "--tenant", "t2", "--user", "u1",
                                 "--subscription", "-"], input=subscription)  # fmt: skip
    assert piped.exit_code == 0, piped.output
    assert runner.invoke(main, [*base, "unsubscribe", *who, browser.endpoint]).exit_code == 0
    gone = runner.invoke(main, [*base, "unsubscribe", "--tenant", "t1", "--user", "u2",
                                other.endpoint])  # fmt: skip
    assert gone.exit_code == 1 and "no such subscription" in gone.output
    listed = json.loads(runner.invoke(main, [*base, "subscriptions", *who, "--json"]).output)
    assert [s["endpoint"] for s in listed] == [other.endpoint]
    # By the id the listing shows (what a user tries first); only the user's own ids.
    other_id = str(listed[0]["id"])
    not_mine = runner.invoke(main, [*base, "unsubscribe", "--tenant", "t2", "--user", "u1",
                                    other_id])  # fmt: skip
    assert not_mine.exit_code == 1 and "no such subscription" in not_mine.output
    by_id = runner.invoke(main, [*base, "unsubscribe", *who, other_id])
    assert by_id.exit_code == 0, by_id.output
    assert json.loads(runner.invoke(main, [*base, "subscriptions", *who, "--json"]).output) == []


def test_schema_step_adds_the_table_to_an_older_database(crm_url: str) -> None:
    from crmqueue.crm.store import create_engine, current_version

    engine = create_engine(crm_url)
    before = schema.MIGRATIONS.index(schema._push_subscriptions)
    init_db(engine, target=before)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS push_subscriptions"))
    assert init_db(engine) == (before, schema.SCHEMA_VERSION)
    with engine.connect() as conn:
        assert current_version(conn) == schema.SCHEMA_VERSION
    settings = load_settings(environ={}, overrides={**LOOPBACK, "database.url": crm_url})
    with PushService() as service:
        sub = service.browser().subscription
        first = push.subscribe_json("t1", "u1", sub, engine=engine, settings=settings)
        assert push.subscribe_json("t1", "u1", sub, engine=engine, settings=settings).id == first.id
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # unique per user
        conn.execute(
            schema.push_subscriptions.insert().values(
                tenant_id="t1", user_id="u1", endpoint=first.endpoint,
                endpoint_hash=endpoint_hash(first.endpoint), p256dh="x", auth="y",
                created_at=now, updated_at=now,
            )
        )  # fmt: skip
    engine.dispose()


# --------------------------------------------------------------------------- the channel


@pytest.fixture
def running(make_broker: Any, start_consumer: Any) -> Any:
    broker = make_broker(LOOPBACK)
    init_db(get_engine(broker.settings.database.url))
    start_consumer(broker, ["notification"])
    return broker


def _subscribe(broker: Any, browser: Any, tenant: str = "t1", user: str = "u1") -> Any:
    return push.subscribe_json(tenant, user, browser.subscription, settings=broker.settings)


def _push_job(info: Any) -> Any:
    queued = info.result["channels"]["push"]
    assert queued["status"] == "queued", info.result
    return tasks.Job(queued["job_id"], "notification")


def test_push_is_encrypted_signed_and_delivered(running: Any, service: PushService) -> None:
    engine = get_engine(running.settings.database.url)
    phone, laptop = service.browser(), service.browser()
    _subscribe(running, phone)
    _subscribe(running, laptop)
    other = service.browser()
    _subscribe(running, other, user="u2")  # another user's device: not told
    info = tasks.send_notification(
        tenant_id="t1", user_id="u1", channels=["in-app", "push"], category="lead.assigned",
        title="New lead", message="Acme wants a demo", action_url="/leads/7", priority=100,
    ).wait(15)  # fmt: skip
    assert info.state == "completed", info.errors
    (stored,) = notifications.list("t1", "u1", engine=engine).items
    sent = _push_job(info).wait(15)
    assert sent.state == "completed", sent.errors
    assert sent.result["status"] == "delivered" and sent.result["sent"] == 2
    assert info.result["channels"]["push"]["subscriptions"] == 2
    for browser in (phone, laptop):
        (got,) = browser.received()
        assert got.failures == [] and got.status == 201
        assert got.payload == {"id": info.id, "title": "New lead", "message": "Acme wants a demo",
                               "action_url": "/leads/7", "category": "lead.assigned",
                               "notification_id": stored.id}  # fmt: skip
        assert got.headers["TTL"] == "86400" and got.headers["Urgency"] == "normal"
        assert len(got.headers["Topic"]) == 32
        assert got.claims is not None and got.claims["sub"] == "mailto:ops@example.com"
    assert phone.received()[0].headers["Topic"] == laptop.received()[0].headers["Topic"]
    assert other.received() == []
    listed = push.subscriptions("t1", "u1", engine=engine)
    assert [s.last_status for s in listed] == [201, 201]

    urgent = tasks.send_notification(tenant_id="t1", user_id="u1", type="push", title="Now",
                                     message="m", priority=150).wait(15)  # fmt: skip
    assert _push_job(urgent).wait(15).state == "completed"
    wait_until(lambda: len(phone.received()) == 2, 5)
    assert phone.received()[1].headers["Urgency"] == "high"
    assert phone.received()[1].headers["Topic"] != phone.received()[0].headers["Topic"]


def test_gone_subscriptions_are_removed_and_429_is_retried(
    running: Any, service: PushService
) -> None:
    engine = get_engine(running.settings.database.url)
    gone = service.browser(Plan(410))
    busy = service.browser(Plan(429, {"Retry-After": "1"}), Plan(201))
    fine = service.browser()
    for browser in (gone, busy, fine):
        _subscribe(running, browser)
    info = tasks.send_notification(tenant_id="t1", user_id="u1", type="push", title="T",
                                   message="m").wait(15)  # fmt: skip
    sent = _push_job(info).wait(20)
    assert sent.state == "completed", sent.errors
    assert sent.attempts == 2 and "HTTP 429" in sent.errors[0]["message"]
    assert sent.result["sent"] == 2  # the 410 was removed by the first run
    (first, second) = busy.received()
    assert second.at - first.at >= 0.9  # Retry-After honoured
    assert len(fine.received()) == 1  # reached on the first run: not sent again
    assert len(gone.received()) == 1
    assert [s.endpoint for s in push.subscriptions("t1", "u1", engine=engine)] == [
        busy.endpoint,
        fine.endpoint,
    ]
    # Only gone subscriptions: the job completes, nothing left to send to
    push.unsubscribe("t1", "u1", busy.endpoint, engine=engine)
    push.unsubscribe("t1", "u1", fine.endpoint, engine=engine)
    _subscribe(running, service.browser(Plan(404)))
    last = _push_job(tasks.send_notification(tenant_id="t1", user_id="u1", type="push",
                                             title="T", message="m").wait(15)).wait(15)  # fmt: skip
    assert last.state == "completed" and last.result["status"] == "gone"
    assert push.subscriptions("t1", "u1", engine=engine) == []


def test_long_messages_are_trimmed_and_413_is_permanent(running: Any, service: PushService) -> None:
    browser = service.browser()
    _subscribe(running, browser)
    info = tasks.send_notification(tenant_id="t1", user_id="u1", type="push", title="Long",
                                   message="😀" * 2000).wait(15)  # fmt: skip
    sent = _push_job(info).wait(15)
    assert sent.state == "completed", sent.errors
    assert "trimmed from 2000" in sent.result["note"]
    (got,) = browser.received()
    assert got.status == 201 and len(got.body) <= 4096 and got.failures == []
    assert got.payload is not None and got.payload["message"].endswith("…")

    refusing = service.browser(Plan(413))
    push.unsubscribe("t1", "u1", browser.endpoint, settings=running.settings)
    _subscribe(running, refusing)
    info = tasks.send_notification(tenant_id="t1", user_id="u1", type="push", title="T",
                                   message="m").wait(15)  # fmt: skip
    dead = _push_job(info).wait(15)
    assert dead.state == "dead" and dead.attempts == 1
    assert "413" in dead.errors[-1]["message"]
    assert len(refusing.received()) == 1


def test_push_is_skipped_with_a_reason_and_held_by_quiet_hours(
    running: Any, service: PushService
) -> None:
    engine = get_engine(running.settings.database.url)
    nobody = tasks.send_notification(tenant_id="t1", user_id="u1", channels=["in-app", "push"],
                                     title="T", message="m").wait(15)  # fmt: skip
    assert nobody.result["status"] == "delivered"
    assert nobody.result["channels"]["push"] == {
        "status": "skipped",
        "reason": "the user has no push subscription",
    }
    browser = service.browser()
    _subscribe(running, browser)
    add_user(engine, "t1", "u1", name="Ann", email="ann@example.com", time_zone="Europe/Berlin")
    zone = zoneinfo.ZoneInfo("Europe/Berlin")
    local = dt.datetime.now(zone)
    start = (local - dt.timedelta(hours=1)).strftime("%H:%M")
    end = (local + dt.timedelta(hours=2)).strftime("%H:%M")
    notifications.set_quiet_hours("t1", "u1", start, end, engine=engine)
    held = tasks.send_notification(tenant_id="t1", user_id="u1", type="push", title="T",
                                   message="m").wait(15)  # fmt: skip
    assert held.result["status"] == "held", held.result
    later = jobs.get(held.result["channels"]["push"]["job_id"])
    assert later.state == "scheduled" and later.payload["channels"] == ["push"]
    urgent = tasks.send_notification(tenant_id="t1", user_id="u1", type="push", title="T",
                                     message="m", priority=200).wait(15)  # fmt: skip
    assert _push_job(urgent).wait(15).state == "completed"
    assert len(browser.received()) == 1


def test_push_is_skipped_when_vapid_is_not_configured(
    make_broker: Any, start_consumer: Any, service: PushService
) -> None:
    broker = make_broker({**LOOPBACK, "push.vapid_private_key": None})
    init_db(get_engine(broker.settings.database.url))
    start_consumer(broker, ["notification"])
    _subscribe(broker, service.browser())
    skipped = tasks.send_notification(tenant_id="t1", user_id="u1", type="push", title="T",
                                      message="m").wait(15)  # fmt: skip
    assert skipped.state == "completed", skipped.errors
    assert skipped.result["status"] == "skipped"
    reason = skipped.result["channels"]["push"]["reason"]
    assert reason.startswith("web push is not configured: set a VAPID private key"), reason


def test_provider_classifies_answers_and_guards_every_send(
    tmp_path: Path, service: PushService
) -> None:
    from crmqueue.errors import PermanentError, RetryableError
    from crmqueue.providers.push import PushMessage, PushTarget, SubscriptionGone
    from crmqueue.providers.push.base import Refused, Throttled

    settings = _settings(tmp_path)
    provider = get_provider(settings)
    assert provider is not None
    message = PushMessage(b'{"title": "T"}', ttl=60, urgency="low", topic="abc")

    def target(browser: Any) -> PushTarget:
        keys = browser.subscription["keys"]
        return PushTarget(browser.endpoint, keys["p256dh"], keys["auth"])

    browser = service.browser(Plan(503), Plan(400), Plan(404), Plan(201))
    with pytest.raises(Throttled) as busy:
        provider.send(target(browser), message)
    assert isinstance(busy.value, RetryableError) and busy.value.delay is None
    assert busy.value.status == 503 and "127.0.0.1" in str(busy.value)
    with pytest.raises(Refused):
        provider.send(target(browser), message)
    with pytest.raises(SubscriptionGone):
        provider.send(target(browser), message)
    answer = provider.send(target(browser), message)
    assert answer.status == 201 and answer.location is not None
    last = browser.received()[-1]
    assert (last.headers["TTL"], last.headers["Urgency"], last.headers["Topic"]) == (
        "60",
        "low",
        "abc",
    )
    assert last.payload == {"title": "T"} and last.failures == []
    # The same JWT for the same push service (signing is the costly part) ...
    assert len({r.headers["Authorization"] for r in browser.received()}) == 1
    # ... and a bad topic or an oversized payload never leaves.
    with pytest.raises(PermanentError, match="topic"):
        provider.send(target(browser), PushMessage(b"{}", ttl=0, topic="x" * 33))
    with pytest.raises(PermanentError, match="3993"):
        provider.send(target(browser), PushMessage(b"x" * (MAX_PLAINTEXT + 1), ttl=0))
    sent = len(service.requests)
    # Every send is checked again: the host list and the SSRF guard of today's config.
    moved = get_provider(_settings(tmp_path, **{"push.allowed_hosts": "fcm.googleapis.com"}))
    assert moved is not None
    with pytest.raises(PermanentError, match="allowed_hosts"):
        moved.send(target(browser), message)
    closed = get_provider(_settings(tmp_path, **{"outbound.allowed_networks": ""}))
    assert closed is not None
    with pytest.raises(PermanentError, match="loopback"):
        closed.send(target(browser), message)
    assert len(service.requests) == sent
