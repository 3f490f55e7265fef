"""Notifications (issue #14): the inbox and preferences service on SQLite and PostgreSQL
(crmqueue.notifications), quiet hours across DST changes, and the notification queue's
body with a real consumer on SQLite and Redis queue storage: in-app stored, email as a
job on the email queue delivered through the outbox, SMS and push skipped when not
configured (SMS: test_sms.py, push: test_push.py), quiet hours holding email, imports and
exports notifying their user."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import crm_db
import pytest
import sqlalchemy as sa

import crmqueue.workers.email
import crmqueue.workers.import_export
import crmqueue.workers.notification  # registers the bodies before any broker is built
from crmqueue import jobs, notifications, tasks
from crmqueue.config import load_settings
from crmqueue.crm import schema
from crmqueue.crm.store import get_engine, init_db
from crmqueue.crm.users import add_user, get_user
from crmqueue.errors import PayloadError

assert crmqueue.workers.email and crmqueue.workers.import_export

# the CRM database fixtures, both SQLite and PostgreSQL
crm_url = crm_db.crm_url
crm_engine = crm_db.crm_engine
pg_url = crm_db.pg_url

UTC = dt.UTC
T0 = dt.datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def _store(engine: Any, tenant: str, user: str, title: str, **kwargs: Any) -> int:
    kwargs.setdefault("settings", load_settings(environ={}))
    return notifications.store(tenant, user, title=title, message=f"{title}!", engine=engine,
                               **kwargs)  # fmt: skip


# --------------------------------------------------------------------------- inbox


def test_inbox_lists_newest_first_pages_counts_and_marks_read(crm_engine: Any) -> None:
    ids = [_store(crm_engine, "t1", "u1", f"n{i}", now=T0 + dt.timedelta(seconds=i))
           for i in range(5)]  # fmt: skip
    kw = {"engine": crm_engine, "now": T0 + dt.timedelta(minutes=1)}
    first = notifications.list("t1", "u1", limit=2, **kw)
    assert [n.title for n in first.items] == ["n4", "n3"]
    assert first.items[0].to_dict()["read"] is False and first.items[0].category == "general"
    second = notifications.list("t1", "u1", limit=2, cursor=first.next_cursor, **kw)
    assert [n.title for n in second.items] == ["n2", "n1"]
    last = notifications.list("t1", "u1", limit=2, cursor=second.next_cursor, **kw)
    assert [n.title for n in last.items] == ["n0"] and last.next_cursor is None
    assert notifications.unread_count("t1", "u1", **kw) == 5

    assert notifications.mark_read("t1", "u1", ids[3], **kw) is True
    read_at = notifications.list("t1", "u1", limit=5, **kw).items[1].read_at
    assert read_at == kw["now"]
    later = {"engine": crm_engine, "now": T0 + dt.timedelta(minutes=2)}
    assert notifications.mark_read("t1", "u1", ids[3], **later) is True  # again: kept
    assert notifications.list("t1", "u1", limit=5, **later).items[1].read_at == read_at
    assert notifications.unread_count("t1", "u1", **kw) == 4
    unread = notifications.list("t1", "u1", unread_only=True, **kw)
    assert [n.title for n in unread.items] == ["n4", "n2", "n1", "n0"]
    assert notifications.mark_all_read("t1", "u1", **kw) == 4
    assert notifications.unread_count("t1", "u1", **kw) == 0
    assert notifications.mark_all_read("t1", "u1", **kw) == 0

    with pytest.raises(PayloadError, match="cursor"):
        notifications.list("t1", "u1", cursor="abc", **kw)
    with pytest.raises(PayloadError, match="limit"):
        notifications.list("t1", "u1", limit=0, **kw)
    for cursor in ("²", "٣٠٠٠"):  # digits to str.isdigit, not ASCII: refused, not guessed
        with pytest.raises(PayloadError, match="cursor"):
            notifications.list("t1", "u1", cursor=cursor, **kw)
    # past BIGINT: no such notification, not an OverflowError from the driver
    assert notifications.mark_read("t1", "u1", 2**70, **kw) is False
    assert notifications.mark_read("t1", "u1", -1, **kw) is False


def test_no_call_reaches_another_users_or_tenants_notifications(crm_engine: Any) -> None:
    mine = _store(crm_engine, "t1", "u1", "mine", now=T0)
    colleague = _store(crm_engine, "t1", "u2", "colleague's", now=T0)
    elsewhere = _store(crm_engine, "t2", "u1", "other tenant's", now=T0)  # same user id
    kw = {"engine": crm_engine, "now": T0}
    for tenant, user, own in (("t1", "u1", mine), ("t1", "u2", colleague), ("t2", "u1", elsewhere)):
        page = notifications.list(tenant, user, **kw)
        assert [n.id for n in page.items] == [own]
        assert notifications.unread_count(tenant, user, **kw) == 1
    # Every id that is not u1-of-t1's: not read, not changed, not counted.
    for other in (colleague, elsewhere):
        assert notifications.mark_read("t1", "u1", other, **kw) is False
    assert notifications.mark_read("t1", "u3", mine, **kw) is False
    assert notifications.mark_read("t2", "u1", mine, **kw) is False
    # A cursor past another user's id shows only one's own.
    assert [n.id for n in notifications.list("t1", "u1", cursor=str(elsewhere + 1), **kw).items] \
        == [mine]  # fmt: skip
    assert notifications.mark_all_read("t1", "u1", **kw) == 1
    assert notifications.unread_count("t1", "u2", **kw) == 1
    assert notifications.unread_count("t2", "u1", **kw) == 1
    assert notifications.purge_expired("t1", engine=crm_engine, now=T0 + dt.timedelta(days=365))\
        == 2  # fmt: skip
    assert notifications.unread_count("t2", "u1", **kw) == 1  # another tenant's stays


def test_notifications_expire_after_keep_days(crm_engine: Any) -> None:
    settings = load_settings(environ={}, overrides={"notifications.keep_days": 3})
    old = _store(crm_engine, "t1", "u1", "old", now=T0, settings=settings)
    new = _store(crm_engine, "t1", "u1", "new", now=T0 + dt.timedelta(days=2), settings=settings)
    at = T0 + dt.timedelta(days=3)  # old expires exactly now
    page = notifications.list("t1", "u1", engine=crm_engine, now=at)
    assert [n.id for n in page.items] == [new]
    assert page.items[0].expires_at == T0 + dt.timedelta(days=5)
    assert notifications.unread_count("t1", "u1", engine=crm_engine, now=at) == 1
    assert notifications.mark_read("t1", "u1", old, engine=crm_engine, now=at) is False
    assert notifications.unread_count("t1", "u1", engine=crm_engine, now=T0) == 2  # then
    assert notifications.purge_expired("t1", engine=crm_engine, now=at) == 1
    with crm_engine.connect() as conn:
        left = conn.execute(sa.select(schema.notifications.c.id)).scalars().all()
    assert left == [new]


def test_storing_again_for_the_same_job_keeps_one_notification(crm_engine: Any) -> None:
    first = _store(crm_engine, "t1", "u1", "once", job_id="job-1", now=T0)
    assert _store(crm_engine, "t1", "u1", "once", job_id="job-1", now=T0) == first
    assert _store(crm_engine, "t2", "u1", "once", job_id="job-1", now=T0) != first
    assert notifications.unread_count("t1", "u1", engine=crm_engine, now=T0) == 1


def test_schema_step_upgrades_a_database_keeping_its_notifications(crm_url: str) -> None:
    from crmqueue.crm.store import create_engine, current_version

    engine = create_engine(crm_url)
    before = schema.MIGRATIONS.index(schema._notifications)
    # A database of the version before the step, made by the steps of that time: drop
    # what this version's _v1 already creates, as the old _v1 never did.
    init_db(engine, target=before)
    with engine.begin() as conn:
        for table, columns in (
            ("notifications", ("category", "priority", "expires_at", "job_id")),
            ("users", ("time_zone", "phone", "quiet_start", "quiet_end")),
        ):
            for index in ("ix_notifications_tenant_user_id", "uq_notifications_tenant_job",
                          "ix_notifications_tenant_expires"):  # fmt: skip
                conn.execute(sa.text(f"DROP INDEX IF EXISTS {index}"))
            for column in columns:
                conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(sa.text(
            "INSERT INTO notifications (tenant_id, user_id, type, title, message, created_at)"
            " VALUES ('t1', 'u1', 'in-app', 'kept', 'm', '2026-05-04 12:00:00')"))  # fmt: skip
    assert init_db(engine) == (before, schema.SCHEMA_VERSION)
    with engine.connect() as conn:
        assert current_version(conn) == schema.SCHEMA_VERSION
    (kept,) = notifications.list("t1", "u1", engine=engine, now=T0).items
    assert (kept.title, kept.category, kept.priority) == ("kept", "general", 0)
    assert kept.expires_at == T0 + dt.timedelta(days=schema.NOTIFICATION_KEEP_DAYS)
    add_user(engine, "t1", "u1", name="Ann", email="ann@example.com", time_zone="Europe/Berlin")
    notifications.set_preferences("t1", "u1", "lead.assigned", ["email"], engine=engine)
    assert _store(engine, "t1", "u1", "new", job_id="j") == _store(engine, "t1", "u1", "x",
                                                                   job_id="j")  # fmt: skip
    engine.dispose()


# --------------------------------------------------------------------------- preferences


def test_preferences_user_choice_over_tenant_defaults(crm_engine: Any) -> None:
    settings = load_settings(environ={}, overrides={"notifications.channels": [
        "lead.assigned=in-app+email", "acme/*=email", "acme/import.completed=in-app"]})  # fmt: skip
    plan = notifications.plan_channels
    add_user(crm_engine, "t1", "u1", name="Ann", email="ann@example.com")

    def prefs(tenant: str = "t1") -> notifications.Preferences:
        return notifications.get_preferences(tenant, "u1", engine=crm_engine)

    assert notifications.channels_for(prefs(), "other", settings) == (
        ("in-app",),
        "notifications.default_channels",
    )
    assert notifications.channels_for(prefs(), "lead.assigned", settings)[0] == ("in-app", "email")
    assert notifications.channels_for(prefs("acme"), "lead.assigned", settings)[0] == ("email",)
    assert notifications.channels_for(prefs("acme"), "import.completed", settings)[0] == ("in-app",)
    # Without channels named, the defaults choose; named channels go out in their order.
    assert plan(None, prefs(), "lead.assigned", settings) == (["in-app", "email"], {})
    assert plan(["sms", "in-app"], prefs(), "x", settings) == (["sms", "in-app"], {})
    assert plan(["push", "in-app"], prefs(), "x", settings) == (["push", "in-app"], {})
    # A tenant default never removes a channel the producer named...
    assert plan(["email"], prefs(), "other", settings) == (["email"], {})
    # ... the user's own choice does, for the category or "*".
    notifications.set_preferences("t1", "u1", "lead.assigned", ["in-app"], engine=crm_engine)
    assert notifications.channels_for(prefs(), "lead.assigned", settings) == (
        ("in-app",),
        "user's choice for lead.assigned",
    )
    assert plan(["in-app", "email"], prefs(), "lead.assigned", settings) == (
        ["in-app"],
        {"email": "off in the user's preferences for lead.assigned"},
    )
    notifications.set_preferences("t1", "u1", "*", [], engine=crm_engine)
    assert plan(None, prefs(), "anything", settings) == ([], {})
    assert plan(None, prefs(), "lead.assigned", settings) == (["in-app"], {})
    notifications.set_preferences("t1", "u1", "lead.assigned", None, engine=crm_engine)
    assert plan(["email"], prefs(), "lead.assigned", settings)[0] == []  # "*" = none
    # Isolation: another user and tenant keep the defaults.
    other = notifications.get_preferences("t1", "u2", engine=crm_engine)
    assert other.own == {} and prefs("t2").own == {}
    assert prefs().to_dict(settings)["own"] == {"*": []}
    with pytest.raises(PayloadError, match="channels"):
        notifications.set_preferences("t1", "u1", "x", ["fax"], engine=crm_engine)
    with pytest.raises(PayloadError, match="category"):
        notifications.set_preferences("t1", "u1", "Bad Category", ["email"], engine=crm_engine)


def test_config_channel_rules_are_checked() -> None:
    from crmqueue.errors import ConfigError

    with pytest.raises(ConfigError, match=r"notifications\.channels"):
        load_settings(environ={}, overrides={"notifications.channels": ["lead=fax"]})
    # keep_days is bounded: 100000000 days past now is no date, and every store() failed
    with pytest.raises(ConfigError, match=r"notifications\.keep_days"):
        load_settings(environ={"CRMQUEUE_NOTIFICATIONS__KEEP_DAYS": "100000000"})
    assert (
        load_settings(
            environ={"CRMQUEUE_NOTIFICATIONS__KEEP_DAYS": "36500"}
        ).notifications.keep_days
        == 36500
    )
    settings = load_settings(environ={"CRMQUEUE_NOTIFICATIONS__CHANNELS": "a=email,t9/*="})
    assert settings.notifications.default_for("t9", "a") == ((), "notifications.channels 't9/*='")


def test_quiet_hours_need_a_user_and_valid_times(crm_engine: Any) -> None:
    with pytest.raises(PayloadError, match="no user 'u1'"):
        notifications.set_quiet_hours("t1", "u1", "22:00", "07:00", engine=crm_engine)
    add_user(crm_engine, "t1", "u1", name="Ann Lee", email="ann@example.com")
    for start, end, field in (
        ("25:00", "07:00", "quiet_start"),
        ("22:00", "7", "quiet_end"),
        ("22:00", "22:00", "quiet_hours"),
        ("22:00", None, "quiet_hours"),
    ):
        with pytest.raises(PayloadError, match=field):
            notifications.set_quiet_hours("t1", "u1", start, end, engine=crm_engine)
    with pytest.raises(PayloadError, match="IANA"):
        notifications.set_quiet_hours("t1", "u1", "22:00", "07:00", time_zone="Mars/Base",
                                      engine=crm_engine)  # fmt: skip
    prefs = notifications.set_quiet_hours("t1", "u1", "22:00", "07:00",
                                          time_zone="Europe/Berlin", engine=crm_engine)  # fmt: skip
    assert (prefs.quiet_hours, prefs.time_zone) == (("22:00", "07:00"), "Europe/Berlin")
    assert notifications.get_preferences("t2", "u1", engine=crm_engine).quiet_hours is None
    cleared = notifications.set_quiet_hours("t1", "u1", None, None, engine=crm_engine)
    assert cleared.quiet_hours is None and cleared.time_zone == "Europe/Berlin"


def _utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "start", "end", "until"),
    [
        # An ordinary night in Berlin (CEST, +2): 23:00 -> 07:00 local = 05:00 UTC.
        (_utc(2026, 6, 1, 21, 0), "22:00", "07:00", _utc(2026, 6, 2, 5, 0)),
        (_utc(2026, 6, 2, 4, 59), "22:00", "07:00", _utc(2026, 6, 2, 5, 0)),
        (_utc(2026, 6, 2, 5, 0), "22:00", "07:00", None),  # the end itself is not quiet
        (_utc(2026, 6, 1, 19, 59), "22:00", "07:00", None),
        # The night clocks go forward (last Sunday of March, 02:00 CET -> 03:00 CEST):
        # the window opened at 22:00 CET (+1) ends at 07:00 CEST (+2), not an hour late.
        (_utc(2026, 3, 28, 22, 0), "22:00", "07:00", _utc(2026, 3, 29, 5, 0)),
        (_utc(2026, 3, 29, 4, 59), "22:00", "07:00", _utc(2026, 3, 29, 5, 0)),
        (_utc(2026, 3, 29, 5, 0), "22:00", "07:00", None),
        # An end in the skipped hour: the moment the clocks jump past it (01:00 UTC).
        (_utc(2026, 3, 29, 0, 30), "01:00", "02:30", _utc(2026, 3, 29, 1, 0)),
        (_utc(2026, 3, 29, 1, 0), "01:00", "02:30", None),
        # The night clocks go back (last Sunday of October, 03:00 CEST -> 02:00 CET):
        # 07:00 CET is 06:00 UTC, the night is an hour longer, not shorter.
        (_utc(2026, 10, 24, 21, 0), "22:00", "07:00", _utc(2026, 10, 25, 6, 0)),
        (_utc(2026, 10, 25, 5, 30), "22:00", "07:00", _utc(2026, 10, 25, 6, 0)),
        # An end in the repeated hour: its first pass; the second pass is not quiet again.
        (_utc(2026, 10, 24, 23, 30), "01:00", "02:30", _utc(2026, 10, 25, 0, 30)),
        (_utc(2026, 10, 25, 1, 10), "01:00", "02:30", None),
        # A daytime window.
        (_utc(2026, 1, 5, 12, 30), "13:00", "14:00", _utc(2026, 1, 5, 13, 0)),
        (_utc(2026, 1, 5, 11, 59), "13:00", "14:00", None),
    ],
)
def test_quiet_hours_end_on_the_local_clock_across_dst(
    now: dt.datetime, start: str, end: str, until: dt.datetime | None
) -> None:
    assert notifications.quiet_until(now, "Europe/Berlin", start, end) == until


def test_quiet_hours_hold_nothing_twice_across_a_dst_night() -> None:
    """Every minute of both DST nights: a notification is held at most until the next
    07:00 local, and one held is never quiet when it comes due (no skip, no repeat)."""
    zone = zoneinfo.ZoneInfo("Europe/Berlin")
    for night in (_utc(2026, 3, 28, 18, 0), _utc(2026, 10, 24, 18, 0)):
        for minute in range(0, 16 * 60):
            now = night + dt.timedelta(minutes=minute)
            until = notifications.quiet_until(now, zone, "22:00", "07:00")
            local = now.astimezone(zone)
            quiet = local.hour >= 22 or local.hour < 7
            assert (until is not None) == quiet, now
            if until is not None:
                assert until.astimezone(zone).strftime("%H:%M") == "07:00"
                assert notifications.quiet_until(until, zone, "22:00", "07:00") is None


# --------------------------------------------------------------------------- the body


@pytest.fixture
def running(make_broker: Any, start_consumer: Any) -> Any:
    broker = make_broker()
    init_db(get_engine(broker.settings.database.url))
    start_consumer(broker, ["notification", "email", "import-export"])
    return broker


def _inbox(broker: Any, tenant: str = "tenant-123", user: str = "user-456") -> list[Any]:
    engine = get_engine(broker.settings.database.url)
    return [*notifications.list(tenant, user, engine=engine).items]


def test_in_app_notification_is_stored_at_once(running: Any) -> None:
    job = tasks.send_notification(tenant_id="tenant-123", user_id="user-456", type="in-app",
                                  title="New Lead", message="A lead for you",
                                  action_url="https://app.example.com/leads/1")  # fmt: skip
    info = job.wait(15)
    assert info.state == "completed", info.errors
    (stored,) = _inbox(running)
    assert info.result == {
        "status": "delivered",
        "category": "general",
        "channels": {"in-app": {"status": "stored", "id": stored.id}},
        # stored for a user the CRM may add later, but not silently
        "warning": "user 'user-456' is not in the users table of tenant 'tenant-123'"
        " (crmqueue users add): only the tenant defaults applied",
    }
    assert (stored.title, stored.action_url, stored.priority) == (
        "New Lead",
        "https://app.example.com/leads/1",
        150,
    )  # the queue's default priority
    assert _inbox(running, user="user-999") == [] and _inbox(running, "tenant-9") == []


def test_email_channel_enqueues_an_email_job_delivered_through_the_outbox(running: Any) -> None:
    engine = get_engine(running.settings.database.url)
    add_user(engine, "tenant-123", "user-456", name="Ann Lee", email="ann@example.com")
    job = tasks.send_notification(
        tenant_id="tenant-123",
        user_id="user-456",
        channels=["in-app", "email", "push", "sms"],
        category="lead.assigned",
        title="New Lead",
        message="Acme wants a demo",
        action_url="https://app.example.com/leads/7",
    )
    info = job.wait(15)
    assert info.state == "completed", info.errors
    channels = info.result["channels"]
    assert [*channels] == ["in-app", "email", "push", "sms"]
    email_id = channels["email"]["job_id"]
    assert info.result["email_job_id"] == email_id
    assert channels["email"] == {"status": "queued", "job_id": email_id, "to": "ann@example.com",
                                 "template": "notification"}  # fmt: skip
    assert channels["sms"] == {
        "status": "skipped",
        "reason": 'SMS is not configured (sms.provider is "none")',
    }
    # push: tests/test_push.py (here web push has no VAPID key)
    assert channels["push"]["status"] == "skipped"
    assert channels["push"]["reason"].startswith("web push is not configured")
    email = jobs.get(email_id)
    assert email.queue == "email"
    assert email.payload["template"] == "notification" and email.payload["to"] == [
        "ann@example.com"
    ]
    assert email.payload["context"] == {
        "title": "New Lead",
        "message": "Acme wants a demo",
        "first_name": "Ann",
        "action_url": "https://app.example.com/leads/7",
    }
    assert email.payload["idempotency_key"] == f"notification-{job.id}"
    sent = tasks.Job(email_id, "email").wait(15)
    assert sent.state == "completed", sent.errors
    (eml,) = Path(running.settings.email.outbox_dir).glob("*.eml")
    message = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert message["To"] == "ann@example.com" and message["Subject"] == "New Lead"
    text = message.get_body(preferencelist=("plain",)).get_content()
    assert "Hi Ann," in text and "Acme wants a demo" in text
    assert "https://app.example.com/leads/7" in text
    html = message.get_body(preferencelist=("html",)).get_content()
    assert 'href="https://app.example.com/leads/7"' in html
    assert [n.title for n in _inbox(running)] == ["New Lead"]


def test_without_an_enabled_channel_the_job_completes_as_skipped(running: Any) -> None:
    engine = get_engine(running.settings.database.url)
    add_user(engine, "t1", "u1", name="Ann", email="ann@example.com")
    only_push = tasks.send_notification(tenant_id="t1", user_id="u1", type="push", title="T",
                                        message="m").wait(15)  # fmt: skip
    assert only_push.state == "completed", only_push.errors
    assert only_push.result["status"] == "skipped"
    assert only_push.result["reason"].startswith("no enabled channel (push: web push is not")
    notifications.set_preferences("t1", "u1", "lead.assigned", [], engine=engine)
    muted = tasks.send_notification(tenant_id="t1", user_id="u1", category="lead.assigned",
                                    title="T", message="m").wait(15)  # fmt: skip
    assert muted.state == "completed", muted.errors
    assert muted.result == {
        "status": "skipped",
        "category": "lead.assigned",
        "channels": {},
        "reason": "no enabled channel (none is on for lead.assigned)",
    }
    # An email to a user the tenant does not have: skipped, said why.
    nobody = tasks.send_notification(tenant_id="t1", user_id="u9", type="email", title="T",
                                     message="m").wait(15)  # fmt: skip
    assert nobody.result["channels"]["email"] == {
        "status": "skipped",
        "reason": "no user 'u9' in the tenant",
    }
    assert notifications.unread_count("t1", "u1", engine=engine) == 0


def _window_around_now(zone: str) -> tuple[str, str, dt.datetime]:
    """Quiet hours that hold now (from an hour ago to two hours on, local), and their end."""
    tz = zoneinfo.ZoneInfo(zone)
    local = dt.datetime.now(tz).replace(second=0, microsecond=0)
    start, end = local - dt.timedelta(hours=1), local + dt.timedelta(hours=2)
    until = notifications.quiet_until(dt.datetime.now(UTC), tz, start.strftime("%H:%M"),
                                      end.strftime("%H:%M"))  # fmt: skip
    assert until is not None
    return start.strftime("%H:%M"), end.strftime("%H:%M"), until


def test_quiet_hours_hold_email_but_not_in_app_and_urgent_bypasses(running: Any) -> None:
    engine = get_engine(running.settings.database.url)
    add_user(engine, "t1", "u1", name="Ann Lee", email="ann@example.com",
             time_zone="America/New_York")  # fmt: skip
    start, end, until = _window_around_now("America/New_York")
    notifications.set_quiet_hours("t1", "u1", start, end, engine=engine)
    fields = {"tenant_id": "t1", "user_id": "u1", "channels": ["in-app", "email"],
              "title": "Lead", "message": "m"}  # fmt: skip
    info = tasks.send_notification(**fields).wait(15)
    assert info.state == "completed", info.errors
    channels = info.result["channels"]
    assert channels["in-app"]["status"] == "stored"
    held = channels["email"]
    assert held["status"] == "held" and held["until"] == until.isoformat()
    later = jobs.get(held["job_id"])
    assert (later.queue, later.state) == ("notification", "scheduled")
    assert later.payload["channels"] == ["email"] and later.payload["title"] == "Lead"
    assert "email_job_id" not in info.result
    assert jobs.stats("email")["waiting"] + jobs.stats("email")["completed"] == 0

    only_email = tasks.send_notification(**{**fields, "channels": ["email"]}).wait(15)
    assert only_email.result["status"] == "held", only_email.result
    assert only_email.result["channels"]["email"]["until"] == until.isoformat()

    urgent = tasks.send_notification(**fields, priority=200).wait(15)
    assert urgent.state == "completed", urgent.errors
    assert urgent.result["channels"]["email"]["status"] == "queued"
    assert tasks.Job(urgent.result["email_job_id"], "email").wait(15).state == "completed"
    assert notifications.unread_count("t1", "u1", engine=engine) == 2
    assert [n.priority for n in notifications.list("t1", "u1", engine=engine).items] == [200, 150]


def test_import_and_export_completion_notify_their_user_in_app(running: Any) -> None:
    files = Path(running.settings.files.dir)
    files.mkdir(parents=True, exist_ok=True)
    (files / "people.csv").write_text("name,email\nJane Roe,jane@example.com\n")
    imported = tasks.import_records(tenant_id="t1", user_id="u1", file_url="people.csv",
                                    file_type="csv", entity_type="contacts").wait(30)  # fmt: skip
    assert imported.state == "completed", imported.errors
    note = imported.result["notification"]
    assert note["category"] == "import.completed"
    assert tasks.Job(note["job_id"], "notification").wait(15).state == "completed"
    exported = tasks.export_records(tenant_id="t1", user_id="u1", entity_type="contacts",
                                    format="csv", fields=["email"]).wait(30)  # fmt: skip
    assert exported.state == "completed", exported.errors
    done = tasks.Job(exported.result["notification"]["job_id"], "notification").wait(15)
    assert done.state == "completed", done.errors
    inbox = _inbox(running, "t1", "u1")
    assert [(n.category, n.title) for n in inbox] == [
        ("export.ready", "Export ready"),
        ("import.completed", "Import completed"),
    ]
    assert inbox[1].message == "contacts: 1 created, 0 updated, 0 skipped, 0 failed"
    assert inbox[0].message == "Your contacts export (1 rows, CSV) is ready to download."
    assert inbox[0].action_url is None  # no download_base_url: no link to a disk path
    assert _inbox(running, "t1", "u2") == []


def test_payload_channels_type_and_category() -> None:
    from crmqueue.payloads import NotificationPayload, validate_payload

    base = {"tenantId": "t1", "userId": "u1", "title": "T", "message": "m"}
    both = validate_payload(
        NotificationPayload, {**base, "type": "email", "channels": ["email", "in-app", "email"]}
    )
    assert both.requested() == ["email", "in-app"]
    assert validate_payload(NotificationPayload, {**base, "type": "sms"}).requested() == ["sms"]
    assert validate_payload(NotificationPayload, base).requested() is None
    with pytest.raises(PayloadError, match="type 'push' is not among channels"):
        validate_payload(NotificationPayload, {**base, "type": "push", "channels": ["email"]})
    with pytest.raises(PayloadError, match="channels"):
        validate_payload(NotificationPayload, {**base, "channels": []})
    with pytest.raises(PayloadError, match="category"):
        validate_payload(NotificationPayload, {**base, "category": "Lead Assigned"})


def test_users_add_checks_and_updates(crm_engine: Any) -> None:
    user, added = add_user(crm_engine, "t1", "u1", name="Ann Lee", email="ann@example.com",
                           time_zone="Europe/Berlin", phone="+4930123456")  # fmt: skip
    assert added and user.zone == zoneinfo.ZoneInfo("Europe/Berlin")
    again, added = add_user(crm_engine, "t1", "u1", name="Ann Lee", email="ann@new.example.com")
    assert not added and again.email == "ann@new.example.com" and again.phone == "+4930123456"
    assert get_user(crm_engine, "t2", "u1") is None
    with pytest.raises(PayloadError) as info:
        add_user(crm_engine, "t1", "u2", name="", email="nope", time_zone="Nowhere/City",
                 phone="0301234")  # fmt: skip
    assert [field for field, _ in info.value.errors] == ["name", "email", "time_zone", "phone"]


def test_follow_up_jobs_are_made_once_per_job(broker: Any) -> None:
    """A re-run of a notification job (lease lost, crash after enqueueing) finds the email
    or held job it made: their ids derive from its own."""
    from crmqueue.engine.queues import EncodedPayload
    from crmqueue.payloads import NotificationPayload, payload_json
    from crmqueue.workers.notification import enqueue_once, follow_up_id

    valid, encoded = payload_json(
        NotificationPayload, {"tenant_id": "t1", "user_id": "u1", "title": "T", "message": "m"}
    )
    data = EncodedPayload(valid.tenant_id, encoded)
    held = follow_up_id("job-1", "held")
    assert held == follow_up_id("job-1", "held") != follow_up_id("job-2", "held")
    assert held != follow_up_id("job-1", "email") and len(held) == 32
    # Outside a running job nothing is known of earlier runs: it looks, as a re-run does.
    assert enqueue_once("notification", "send", data, held) == held
    assert enqueue_once("notification", "send", data, held) == held
    assert jobs.stats("notification")["waiting"] == 1
    assert jobs.get(held).payload["title"] == "T"


@pytest.mark.parametrize(
    "zone", ["localtime", "Factory", "posixrules", "EST5EDT", "CET", "posix/Europe/Berlin",
             "right/UTC", "Mars/Base", ""],
)  # fmt: skip
def test_only_iana_area_location_zones_or_utc_are_accepted(crm_engine: Any, zone: str) -> None:
    """localtime follows the host, Factory/posixrules are database files, posix/ and right/
    are copies, EST5EDT and CET changed meaning in tzdata 2024b: all refused, by users add
    and by set_quiet_hours alike (one rule, crmqueue.zones)."""
    from crmqueue.zones import time_zone_problem

    assert time_zone_problem(zone) is not None
    with pytest.raises(PayloadError) as info:
        add_user(crm_engine, "t1", "u1", name="Ann", email="ann@example.com", time_zone=zone)
    assert info.value.errors == [("time_zone", time_zone_problem(zone))]
    add_user(crm_engine, "t1", "u1", name="Ann", email="ann@example.com")
    with pytest.raises(PayloadError, match="time_zone"):
        notifications.set_quiet_hours("t1", "u1", "22:00", "07:00", time_zone=zone,
                                      engine=crm_engine)  # fmt: skip
    for good in ("UTC", "Etc/GMT+5", "America/New_York"):
        notifications.set_quiet_hours("t1", "u1", "22:00", "07:00", time_zone=good,
                                      engine=crm_engine)  # fmt: skip
        assert notifications.get_preferences("t1", "u1", engine=crm_engine).time_zone == good


def test_one_user_id_rule_and_normalisation_everywhere(crm_engine: Any) -> None:
    """Enqueue, users add and every crmqueue.notifications call strip surrounding
    whitespace and refuse controls and inner spaces alike; setting preferences, like
    quiet hours, needs a user in the users table."""
    from crmqueue.payloads import NotificationPayload, validate_payload

    base = {"tenant_id": "nt", "title": "T", "message": "m"}
    for bad in ("na\x01", "n a", "", "  ", "x" * 65, "na\x7f"):
        with pytest.raises(PayloadError) as info:
            validate_payload(NotificationPayload, {**base, "user_id": bad})
        assert [field for field, _ in info.value.errors] == ["user_id"], bad
        with pytest.raises(PayloadError, match="user_id"):
            add_user(crm_engine, "nt", bad, name="N", email="n@example.com")
        with pytest.raises(PayloadError, match="user_id"):
            notifications.store("nt", bad, title="T", message="m", engine=crm_engine,
                                settings=load_settings(environ={}))  # fmt: skip
        with pytest.raises(PayloadError, match="user_id"):
            notifications.list("nt", bad, engine=crm_engine)
    assert validate_payload(NotificationPayload, {**base, "userId": "  nb  "}).user_id == "nb"
    user, _ = add_user(crm_engine, "nt", " nb ", name="Nb", email="nb@example.com")
    assert user.user_id == "nb" and get_user(crm_engine, "nt", "nb\t") == user
    first = _store(crm_engine, "nt", "  nb  ", "hello")
    for spaced in ("nb", " nb", "nb  "):
        assert [n.id for n in notifications.list("nt", spaced, engine=crm_engine).items] == [first]
        assert notifications.unread_count("nt", spaced, engine=crm_engine) == 1
    assert notifications.mark_read("nt", " nb", first, engine=crm_engine) is True
    assert notifications.mark_all_read("nt", "nb ", engine=crm_engine) == 0
    notifications.set_preferences("nt", " nb", "general", ["email"], engine=crm_engine)
    prefs = notifications.get_preferences("nt", "nb", engine=crm_engine)
    assert prefs.known and prefs.own == {"general": ("email",)}

    with pytest.raises(PayloadError, match="tenant 'nt' has no user 'ghost'"):
        notifications.set_preferences("nt", "ghost", "general", ["email"], engine=crm_engine)
    with pytest.raises(PayloadError, match="tenant 'nt' has no user 'ghost'"):
        notifications.set_quiet_hours("nt", "ghost", "22:00", "07:00", engine=crm_engine)
    ghost = notifications.get_preferences("nt", "ghost", engine=crm_engine)
    assert (ghost.known, ghost.own) == (False, {})


def test_action_urls_refuse_user_info_and_emails_join_paths_to_the_app(
    make_broker: Any, start_consumer: Any
) -> None:
    """https://crm.example.com@evil.com/ opens evil.com: refused at enqueue and by store();
    a path ("/leads/7") reaches an email joined to notifications.app_base_url, and without
    it the email has no button (a bare path is a dead link in a mail client)."""
    from crmqueue.payloads import NotificationPayload, validate_payload
    from crmqueue.workers.notification import email_action_url

    base = {"tenant_id": "t1", "user_id": "u1", "title": "T", "message": "m"}
    for bad in ("https://crm.example.com@evil.com/", "https://user:pw@crm.example.com/x",
                "http://@crm.example.com/", "https://crm.example.com:99999/"):  # fmt: skip
        with pytest.raises(PayloadError) as info:
            validate_payload(NotificationPayload, {**base, "actionUrl": bad})
        assert [field for field, _ in info.value.errors] == ["action_url"], bad
    with pytest.raises(PayloadError, match="must not hold user info"):
        validate_payload(NotificationPayload,
                         {**base, "action_url": "https://crm.example.com@evil.com/"})  # fmt: skip
    ok = "https://crm.example.com/leads/7?tab=a@b"  # an @ in the query is no user info
    assert validate_payload(NotificationPayload, {**base, "action_url": ok}).action_url == ok

    plain = load_settings(environ={})
    assert email_action_url("/leads/7", plain) is None
    assert email_action_url(ok, plain) == ok
    from crmqueue.errors import ConfigError

    with pytest.raises(ConfigError, match="app_base_url"):
        load_settings(environ={}, overrides={"notifications.app_base_url": "https://a@b.com"})

    broker = make_broker({"notifications.app_base_url": "https://crm.example.com/app/"})
    engine = get_engine(broker.settings.database.url)
    init_db(engine)
    with pytest.raises(PayloadError, match="action_url"):
        notifications.store("t1", "u1", title="T", message="m", engine=engine,
                            action_url="https://crm.example.com@evil.com/",
                            settings=broker.settings)  # fmt: skip
    add_user(engine, "t1", "u1", name="Ann Lee", email="ann@example.com")
    start_consumer(broker, ["notification"])
    info = tasks.send_notification(**base, channels=["in-app", "email"],
                                   action_url="/leads/7").wait(15)  # fmt: skip
    assert info.state == "completed", info.errors
    email = jobs.get(info.result["email_job_id"])
    assert email.payload["context"]["action_url"] == "https://crm.example.com/app/leads/7"
    (stored,) = notifications.list("t1", "u1", engine=engine).items
    assert stored.action_url == "/leads/7"  # the app itself resolves its own paths


def test_readme_says_priority_is_a_job_option_that_exists() -> None:
    """A new user put "priority": 200 in the JSON and was refused: the README says how to
    give it, and what it says exists (the --priority option, the priority= argument)."""
    import inspect

    from crmqueue.cli.enqueue import COMMANDS
    from crmqueue.payloads import NotificationPayload, validate_payload

    with pytest.raises(PayloadError, match="priority"):
        validate_payload(NotificationPayload, {"tenant_id": "t1", "user_id": "u1", "title": "T",
                                               "message": "m", "priority": 200})  # fmt: skip
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Notifications", 1)[1].split("\n## ", 1)[0]
    assert "`crmqueue enqueue notification --priority 200 ...`" in section
    assert "`tasks.send_notification(..., priority=200)`" in section
    assert "priority" in inspect.signature(tasks.send_notification).parameters
    options = {opt for command in COMMANDS for p in command.params for opt in p.opts}
    assert "--priority" in options
