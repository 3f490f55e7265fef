"""SMS (issue #14): Twilio's Messages API as a provider (crmqueue.providers.sms), checked
by a loopback emulator that verifies path, Basic auth and form fields as Twilio documents
them (tests/twilio_emulator.py); and the notification queue's sms channel with a real
consumer on SQLite and Redis queue storage: a follow-up sms job, 429 retried without
storing in-app again, 400/21211 dead at once, skipped with the reason without a phone or
provider, held by quiet hours."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import zoneinfo
from typing import Any
from urllib.parse import parse_qs

import pytest
from twilio_emulator import INVALID_TO, TwilioEmulator

import crmqueue.workers.email
import crmqueue.workers.notification
from crmqueue import jobs, notifications, tasks
from crmqueue.config import OutboundSettings, SmsSettings, load_settings
from crmqueue.crm.store import get_engine, init_db
from crmqueue.crm.users import add_user
from crmqueue.errors import ConfigError, PermanentError, RetryableError
from crmqueue.providers.sms import OutgoingSms, get_provider, sms_text
from crmqueue.providers.sms.twilio import TwilioProvider
from crmqueue.workers.notification import follow_up_id

assert crmqueue.workers.notification and crmqueue.workers.email

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "s3cr3t-auth-token-0123456789abcd"
SERVICE = "MG" + "fedcba9876543210" * 2
FROM = "+15017122661"
TO = "+14155550123"
LOOPBACK = OutboundSettings(allowed_networks=["127.0.0.0/8"])
ENV = {"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN}


@pytest.fixture
def twilio() -> Any:
    with TwilioEmulator(SID, TOKEN) as emulator:
        yield emulator


def provider(twilio: TwilioEmulator, env: dict[str, str] = ENV, **sms: Any) -> TwilioProvider:
    settings = SmsSettings(provider="twilio", base_url=twilio.url, **({"from_number": FROM} | sms))
    return TwilioProvider(settings, LOOPBACK, environ=env)


# --------------------------------------------------------------------------- provider


def test_twilio_request_is_the_documented_form_post_with_basic_auth(twilio: Any) -> None:
    result = provider(twilio).send(OutgoingSms(TO, "New lead\nAcme wants a demo ✓"))
    (request,) = twilio.received
    assert request.method == "POST"
    assert request.path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(
        f"{SID}:{TOKEN}".encode()
    ).decode("ascii")
    assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert request.form == {"To": [TO], "From": [FROM], "Body": ["New lead\nAcme wants a demo ✓"]}
    assert request.status == 201
    (sent,) = twilio.sent
    assert (result.provider, result.message_id, result.status) == ("twilio", sent["sid"], "queued")
    assert result.message_id.startswith("SM") and len(result.message_id) == 34


def test_a_messaging_service_is_sent_instead_of_from(twilio: Any) -> None:
    result = provider(twilio, messaging_service_sid=SERVICE).send(OutgoingSms(TO, "Hi"))
    assert twilio.received[0].form == {"To": [TO], "MessagingServiceSid": [SERVICE],
                                       "Body": ["Hi"]}  # fmt: skip
    assert result.status == "accepted"


def test_a_bad_number_is_permanent_and_a_rate_limit_retryable(twilio: Any) -> None:
    sms = provider(twilio)
    with pytest.raises(PermanentError, match=r"HTTP 400: Twilio error 21211: The 'To' number"):
        sms.send(OutgoingSms(INVALID_TO, "Hi"))
    twilio.fail_next(429, 20429, "Too Many Requests", {"Retry-After": "3"})
    with pytest.raises(RetryableError, match="HTTP 429: Twilio error 20429") as info:
        sms.send(OutgoingSms(TO, "Hi"))
    assert info.value.delay == 3.0
    twilio.fail_next(503, 20500, "Service Unavailable")
    with pytest.raises(RetryableError, match="HTTP 503"):
        sms.send(OutgoingSms(TO, "Hi"))
    assert [r.status for r in twilio.received] == [400, 429, 503]
    # Not E.164, empty, too long: refused before any request.
    for to, body in (("0301234", "Hi"), ("+1415", "   "), (TO, "x" * 321)):
        with pytest.raises(PermanentError):
            sms.send(OutgoingSms(to, body))
    assert len(twilio.received) == 3


def test_credentials_come_from_the_environment_and_never_show(twilio: Any, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = provider(twilio, env={"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": "wrong-token"})
    with pytest.raises(PermanentError, match="HTTP 401: Twilio error 20003: Authenticate") as e:
        wrong.send(OutgoingSms(TO, "Hi"))
    assert "wrong-token" not in str(e.value)
    with pytest.raises(PermanentError, match="TWILIO_AUTH_TOKEN not set in the environment"):
        provider(twilio, env={"TWILIO_ACCOUNT_SID": SID}).send(OutgoingSms(TO, "Hi"))
    with pytest.raises(PermanentError, match="TWILIO_ACCOUNT_SID is not an Account SID \\(AC"):
        provider(twilio, env={**ENV, "TWILIO_ACCOUNT_SID": "nope"}).send(OutgoingSms(TO, "Hi"))
    assert len(twilio.received) == 1
    assert TOKEN not in caplog.text and "wrong-token" not in caplog.text
    # Not settable from a file or CRMQUEUE_ variables: an unknown key.
    with pytest.raises(ConfigError, match=r"sms\.auth_token: unknown key"):
        load_settings(environ={"CRMQUEUE_SMS__AUTH_TOKEN": TOKEN})
    settings = load_settings(
        environ={"CRMQUEUE_SMS__PROVIDER": "twilio", "CRMQUEUE_SMS__FROM_NUMBER": FROM, **ENV}
    )
    assert TOKEN not in str(settings.public_dict())


def test_the_loopback_emulator_needs_outbound_allowed_networks(twilio: Any) -> None:
    settings = SmsSettings(provider="twilio", from_number=FROM, base_url=twilio.url)
    with pytest.raises(PermanentError, match=r"outbound\.allowed_networks"):
        TwilioProvider(settings, OutboundSettings(), environ=ENV).send(OutgoingSms(TO, "Hi"))
    assert twilio.received == []


def test_sms_config_is_checked() -> None:
    def load(**keys: str) -> Any:
        return load_settings(environ={f"CRMQUEUE_SMS__{k.upper()}": v for k, v in keys.items()})

    assert load().sms.provider == "none"
    with pytest.raises(ConfigError, match="needs from_number or messaging_service_sid"):
        load(provider="twilio")
    with pytest.raises(ConfigError, match=r"sms\.from_number: .*not an E\.164 number"):
        load(provider="twilio", from_number="555-0100")
    with pytest.raises(ConfigError, match=r"sms\.messaging_service_sid: .*not a Messaging Serv"):
        load(provider="twilio", messaging_service_sid="MG123")
    with pytest.raises(ConfigError, match=r"sms\.base_url"):
        load(base_url="ftp://twilio")
    with pytest.raises(ConfigError, match=r"sms\.provider"):
        load(provider="nexmo")
    with pytest.raises(ConfigError, match=r"sms\.max_chars"):
        load(max_chars="1601")
    with pytest.raises(ConfigError, match="no SMS provider 'none'"):
        get_provider(SmsSettings())


def test_sms_text_keeps_the_link_whole_and_trims_the_text() -> None:
    assert sms_text("New lead", "Acme", "https://crm.example.com/l/7", 320) == (
        "New lead\nAcme\nhttps://crm.example.com/l/7"
    )
    trimmed = sms_text("Title", "m" * 400, "https://crm.example.com/l/7", 100)
    assert len(trimmed) == 100 and trimmed.endswith("…\nhttps://crm.example.com/l/7")
    assert trimmed.startswith("Title\nmmm")
    # A link longer than half the message is dropped rather than cut.
    long_link = "https://crm.example.com/" + "x" * 60
    assert sms_text("T", "m", long_link, 100) == "T\nm"
    assert len(sms_text("T" * 500, "m", None, 50)) == 50


# --------------------------------------------------------------------------- the channel


@pytest.fixture
def running(make_broker: Any, start_consumer: Any, twilio: Any, monkeypatch: Any) -> Any:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    broker = make_broker({
        "sms.provider": "twilio", "sms.from_number": FROM, "sms.base_url": twilio.url,
        "outbound.allowed_networks": ["127.0.0.0/8"],
        "notifications.app_base_url": "https://crm.example.com",
    })  # fmt: skip
    engine = get_engine(broker.settings.database.url)
    init_db(engine)
    add_user(engine, "t1", "u1", name="Ann Lee", email="ann@example.com", phone=TO)
    add_user(engine, "t1", "u2", name="Bob", email="bob@example.com")
    add_user(engine, "t1", "bad", name="Bad", email="bad@example.com", phone=INVALID_TO)
    start_consumer(broker, ["notification", "email"])
    return broker


def _notify(user: str = "u1", **fields: Any) -> Any:
    base = {"tenant_id": "t1", "user_id": user, "channels": ["in-app", "sms"],
            "category": "lead.assigned", "title": "New lead", "message": "Acme wants a demo",
            "action_url": "/leads/7"}  # fmt: skip
    return tasks.send_notification(**{**base, **fields})


def test_sms_channel_queues_an_sms_job_that_twilio_receives(running: Any, twilio: Any) -> None:
    job = _notify()
    info = job.wait(15)
    assert info.state == "completed", info.errors
    sms = info.result["channels"]["sms"]
    assert sms == {"status": "queued", "job_id": follow_up_id(job.id, "sms"), "to": TO}
    assert info.result["status"] == "delivered"
    done = tasks.Job(sms["job_id"], "notification").wait(15)
    assert done.state == "completed", done.errors
    (request,) = twilio.received
    assert request.form == {
        "To": [TO], "From": [FROM],
        "Body": ["New lead\nAcme wants a demo\nhttps://crm.example.com/leads/7"],
    }  # fmt: skip
    assert done.result == {"status": "sent", "provider": "twilio", "vendor_status": "queued",
                           "message_id": twilio.sent[0]["sid"], "to": TO}  # fmt: skip
    assert jobs.get(sms["job_id"]).payload["channels"] == ["sms"]


def test_a_rate_limited_sms_is_retried_alone(running: Any, twilio: Any) -> None:
    engine = get_engine(running.settings.database.url)
    twilio.fail_next(429, 20429, "Too Many Requests")
    twilio.fail_next(429, 20429, "Too Many Requests")
    info = _notify(channels=["in-app", "email", "sms"]).wait(15)
    assert info.state == "completed", info.errors
    done = tasks.Job(info.result["channels"]["sms"]["job_id"], "notification").wait(15)
    assert done.state == "completed", done.errors
    assert done.attempts == 3 and done.result["status"] == "sent"
    assert [r.status for r in twilio.received] == [429, 429, 201]
    assert len({r.form["Body"][0] for r in twilio.received}) == 1
    # in-app stored once, one email job: the retries were the sms job's own
    assert notifications.unread_count("t1", "u1", engine=engine) == 1
    email = jobs.stats("email")
    assert sum(email[state] for state in ("waiting", "active", "completed", "dead")) == 1
    assert tasks.Job(info.result["email_job_id"], "email").wait(15).state == "completed"


def test_a_number_twilio_refuses_is_dead_at_once(running: Any, twilio: Any) -> None:
    info = _notify(user="bad").wait(15)
    assert info.state == "completed", info.errors
    dead = tasks.Job(info.result["channels"]["sms"]["job_id"], "notification").wait(15)
    assert dead.state == "dead" and dead.attempts == 1
    assert "Twilio error 21211" in str(dead.errors)
    assert [r.status for r in twilio.received] == [400]


def test_sms_is_skipped_without_a_phone_or_a_provider(
    running: Any, twilio: Any, make_broker: Any
) -> None:
    info = _notify(user="u2").wait(15)
    assert info.result["channels"]["sms"] == {
        "status": "skipped", "reason": "user 'u2' has no phone (crmqueue users add --phone)"
    }  # fmt: skip
    only_sms = _notify(user="nobody", channels=["sms"]).wait(15)
    assert only_sms.result["status"] == "skipped"
    assert only_sms.result["reason"] == "no enabled channel (sms: no user 'nobody' in the tenant)"
    assert twilio.received == []


def test_sms_off_is_skipped_saying_so(make_broker: Any, start_consumer: Any) -> None:
    broker = make_broker()
    engine = get_engine(broker.settings.database.url)
    init_db(engine)
    add_user(engine, "t1", "u1", name="Ann Lee", email="ann@example.com", phone=TO)
    start_consumer(broker, ["notification"])
    info = _notify(channels=["sms"]).wait(15)
    assert info.state == "completed", info.errors
    assert info.result["status"] == "skipped"
    assert info.result["channels"]["sms"] == {
        "status": "skipped", "reason": 'SMS is not configured (sms.provider is "none")'
    }  # fmt: skip


def test_quiet_hours_hold_sms_and_urgent_bypasses(running: Any, twilio: Any) -> None:
    engine = get_engine(running.settings.database.url)
    tz = zoneinfo.ZoneInfo("Europe/Berlin")
    local = dt.datetime.now(tz).replace(second=0, microsecond=0)
    start, end = (
        (local - dt.timedelta(hours=1)).strftime("%H:%M"),
        (local + dt.timedelta(hours=2)).strftime("%H:%M"),
    )
    notifications.set_quiet_hours("t1", "u1", start, end, time_zone="Europe/Berlin",
                                  engine=engine)  # fmt: skip
    info = _notify().wait(15)
    assert info.state == "completed", info.errors
    held = info.result["channels"]["sms"]
    assert held["status"] == "held" and info.result["channels"]["in-app"]["status"] == "stored"
    later = jobs.get(held["job_id"])
    assert later.state == "scheduled" and later.payload["channels"] == ["sms"]
    urgent = _notify(priority=200).wait(15)
    sms_job = urgent.result["channels"]["sms"]["job_id"]
    assert tasks.Job(sms_job, "notification").wait(15).state == "completed"
    assert len(twilio.received) == 1 and parse_qs(twilio.received[0].body.decode())["To"] == [TO]


def test_doctor_checks_the_twilio_credentials(monkeypatch: Any, tmp_path: Any) -> None:
    from crmqueue.doctor import run_checks

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRMQUEUE_SMS__PROVIDER", "twilio")
    monkeypatch.setenv("CRMQUEUE_SMS__FROM_NUMBER", FROM)
    monkeypatch.setenv("CRMQUEUE_DATABASE__URL", f"sqlite:///{tmp_path}/crm.db")
    monkeypatch.setenv("CRMQUEUE_STORAGE__URL", f"sqlite:///{tmp_path}/queues.db")
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", SID)
    (row,) = [c for c in run_checks(None) if c.name == "sms provider twilio"]
    assert (row.status, row.detail) == ("FAIL", "TWILIO_AUTH_TOKEN not set in the environment")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TOKEN)
    (row,) = [c for c in run_checks(None) if c.name == "sms provider twilio"]
    assert row.status == "ok" and row.detail.startswith(f"sender {FROM}; credentials set")
    assert TOKEN not in str(run_checks(None))
    monkeypatch.setenv("CRMQUEUE_SMS__PROVIDER", "none")
    assert not [c for c in run_checks(None) if c.name.startswith("sms")]
