"""The CRM schema (SQLAlchemy Core): every table carries `tenant_id` and every index the
jobs use starts with it. The schema is versioned: `schema_version` holds the applied
version and `MIGRATIONS` upgrades an existing database step by step, keeping its data."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

metadata = sa.MetaData()

TENANT = 64


class UtcDateTime(sa.types.TypeDecorator[dt.datetime]):
    """A point in time, stored as UTC on every database and read back as an aware UTC
    datetime. PostgreSQL's TIMESTAMP WITH TIME ZONE keeps the instant itself; SQLite has no
    time zones and SQLAlchemy's SQLite DATETIME drops an offset (10:00+02:00 would be stored
    as 10:00), so there it is written converted to UTC, without the offset, and read as
    UTC. A naive value is taken as UTC (crmqueue.crm.entities.as_utc). The DDL is that of
    DateTime(timezone=True): no migration."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        # a date: its midnight, UTC
        stamp = value if isinstance(value, dt.datetime) else dt.datetime.combine(value, dt.time())
        stamp = stamp.replace(tzinfo=dt.UTC) if stamp.tzinfo is None else stamp.astimezone(dt.UTC)
        return stamp.replace(tzinfo=None) if dialect.name == "sqlite" else stamp

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        stamp: dt.datetime = value
        if stamp.tzinfo is None:
            return stamp.replace(tzinfo=dt.UTC)
        return stamp.astimezone(dt.UTC)


def _tenant() -> sa.Column[str]:
    return sa.Column("tenant_id", sa.String(TENANT), nullable=False)


def _stamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    ]


schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("applied_at", UtcDateTime(), nullable=False),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("email", sa.String(254), nullable=False),
    *_stamps(),
    # _notifications: the user's IANA time zone and quiet hours ("HH:MM" local, start and
    # end; a window past midnight when start > end), and a phone (E.164) for SMS.
    sa.Column("time_zone", sa.String(64)),
    sa.Column("phone", sa.String(20)),
    sa.Column("quiet_start", sa.String(5)),
    sa.Column("quiet_end", sa.String(5)),
    sa.UniqueConstraint("tenant_id", "user_id", name="uq_users_tenant_user"),
)

companies = sa.Table(
    "companies",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("name", sa.String(300), nullable=False),
    sa.Column("domain", sa.String(253)),
    sa.Column("industry", sa.String(100)),
    sa.Column("employees", sa.Integer),
    sa.Column("phone", sa.String(50)),
    sa.Column("city", sa.String(100)),
    sa.Column("country", sa.String(100)),
    sa.Column("external_id", sa.String(100)),
    *_stamps(),
)
sa.Index("ix_companies_tenant_domain", companies.c.tenant_id, sa.func.lower(companies.c.domain))
sa.Index("ix_companies_tenant_name", companies.c.tenant_id, sa.func.lower(companies.c.name))

contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _tenant(),
    # Version 3: the original system's full name and lifecycle state (the store keeps
    # `name` and first/last names in step: crmqueue.crm.entities.complete_names).
    sa.Column("name", sa.String(200)),
    sa.Column("first_name", sa.String(100)),
    sa.Column("last_name", sa.String(100)),
    sa.Column("email", sa.String(254)),
    sa.Column("phone", sa.String(50)),
    sa.Column("title", sa.String(200)),
    sa.Column("company", sa.String(300)),
    sa.Column("company_id", sa.Integer, sa.ForeignKey("companies.id", ondelete="SET NULL")),
    sa.Column("city", sa.String(100)),
    sa.Column("country", sa.String(100)),
    sa.Column("source", sa.String(100)),
    sa.Column("external_id", sa.String(100)),
    sa.Column("status", sa.String(20)),
    *_stamps(),
)
sa.Index("ix_contacts_tenant_email", contacts.c.tenant_id, sa.func.lower(contacts.c.email))
sa.Index("ix_contacts_tenant_created", contacts.c.tenant_id, contacts.c.created_at)
ix_contacts_tenant_status = sa.Index(
    "ix_contacts_tenant_status", contacts.c.tenant_id, contacts.c.status
)

leads = sa.Table(
    "leads",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("external_id", sa.String(100)),
    sa.Column("title", sa.String(300), nullable=False),
    sa.Column("amount", sa.Numeric(14, 2)),
    sa.Column("currency", sa.String(3)),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("stage", sa.String(50)),
    sa.Column("owner", sa.String(64)),
    sa.Column("close_date", sa.Date),
    sa.Column("contact_id", sa.Integer, sa.ForeignKey("contacts.id", ondelete="SET NULL")),
    sa.Column("company_id", sa.Integer, sa.ForeignKey("companies.id", ondelete="SET NULL")),
    *_stamps(),
)
sa.Index("ix_leads_tenant_external", leads.c.tenant_id, leads.c.external_id)
sa.Index("ix_leads_tenant_stage", leads.c.tenant_id, leads.c.status, leads.c.stage)
sa.Index("ix_leads_tenant_owner", leads.c.tenant_id, leads.c.owner)
sa.Index("ix_leads_tenant_close", leads.c.tenant_id, leads.c.close_date)

activities = sa.Table(
    "activities",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("external_id", sa.String(100)),
    sa.Column("type", sa.String(20), nullable=False),
    sa.Column("subject", sa.String(300), nullable=False),
    sa.Column("notes", sa.Text),
    sa.Column("due_at", UtcDateTime()),
    sa.Column("completed_at", UtcDateTime()),
    sa.Column("owner", sa.String(64)),
    sa.Column("contact_id", sa.Integer, sa.ForeignKey("contacts.id", ondelete="SET NULL")),
    sa.Column("lead_id", sa.Integer, sa.ForeignKey("leads.id", ondelete="SET NULL")),
    *_stamps(),
)
sa.Index("ix_activities_tenant_external", activities.c.tenant_id, activities.c.external_id)
sa.Index("ix_activities_tenant_due", activities.c.tenant_id, activities.c.due_at)
sa.Index("ix_activities_tenant_contact", activities.c.tenant_id, activities.c.contact_id)

notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("type", sa.String(20), nullable=False),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("action_url", sa.Text),
    sa.Column("read_at", UtcDateTime()),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    # _notifications: what it is about, the job's priority, when it expires, and the job
    # that stored it (unique per tenant: a re-run job finds its notification stored).
    sa.Column("category", sa.String(100), nullable=False, server_default="general"),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("expires_at", UtcDateTime()),
    sa.Column("job_id", sa.String(64)),
)
sa.Index(
    "ix_notifications_tenant_user",
    notifications.c.tenant_id,
    notifications.c.user_id,
    notifications.c.read_at,
)
# _notifications: the inbox newest first (id order), the job's row, expiry sweeps.
NOTIFICATION_INDEXES = (
    sa.Index(
        "ix_notifications_tenant_user_id",
        notifications.c.tenant_id,
        notifications.c.user_id,
        notifications.c.id,
    ),
    sa.Index(
        "uq_notifications_tenant_job", notifications.c.tenant_id, notifications.c.job_id,
        unique=True,
    ),
    sa.Index("ix_notifications_tenant_expires", notifications.c.tenant_id,
             notifications.c.expires_at),
)  # fmt: skip

# _notifications: a user's own choice of channels per category ("*": every category
# without its own row); tenant defaults come from the config ([notifications]).
notification_preferences = sa.Table(
    "notification_preferences",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("category", sa.String(100), nullable=False),
    sa.Column("channels", sa.JSON, nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint(
        "tenant_id", "user_id", "category", name="uq_notification_preferences_user_category"
    ),
)

webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("webhook_id", sa.String(64), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("secret", sa.String(200), nullable=False),
    sa.Column("event_types", sa.JSON, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    *_stamps(),
    # Version 4 (_webhook_endpoints): description, why it was disabled, the rotated-out
    # secret that still signs until previous_secret_until, and the circuit breaker.
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("disabled_reason", sa.Text),
    sa.Column("previous_secret", sa.String(200)),
    sa.Column("previous_secret_until", UtcDateTime()),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failing_since", UtcDateTime()),
    sa.Column("probe_at", UtcDateTime()),
    sa.UniqueConstraint("tenant_id", "webhook_id", name="uq_webhook_endpoints_tenant_id"),
)

# Version 4: the delivery log, one row per attempt (crmqueue.webhooks.Delivery). It
# replaces version 1's one-row-per-delivery table, which nothing ever wrote.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column(
        "endpoint_id",
        sa.Integer,
        sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("webhook_id", sa.String(64), nullable=False),
    sa.Column("message_id", sa.String(64), nullable=False),
    sa.Column("event_type", sa.String(100), nullable=False),
    sa.Column("job_id", sa.String(64)),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("succeeded", sa.Boolean, nullable=False),
    sa.Column("status_code", sa.Integer),
    sa.Column("latency_ms", sa.Integer, nullable=False),
    sa.Column("response_excerpt", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
)
sa.Index(
    "ix_webhook_deliveries_tenant_endpoint_log",
    webhook_deliveries.c.tenant_id,
    webhook_deliveries.c.endpoint_id,
    webhook_deliveries.c.id,
)
sa.Index("ix_webhook_deliveries_at", webhook_deliveries.c.at)

# Version 4: each event message as first sent, so a replay re-sends the same id, type,
# time and data (webhook-id stays stable across retries and replays).
webhook_messages = sa.Table(
    "webhook_messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("message_id", sa.String(64), nullable=False),
    sa.Column("event_type", sa.String(100), nullable=False),
    sa.Column("occurred_at", UtcDateTime(), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("tenant_id", "message_id", name="uq_webhook_messages_tenant_message"),
)
sa.Index("ix_webhook_messages_created", webhook_messages.c.created_at)

# Version 2: the import checkpoint, written in the same transaction as each batch.
import_checkpoints = sa.Table(
    "import_checkpoints",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    _tenant(),
    sa.Column("last_batch", sa.Integer, nullable=False),
    sa.Column("counts", sa.JSON, nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

# The stage-history step: one row per `pipeline.stage_changed`, a lead entering a stage or
# status (from_* NULL: the lead was created in to_*). Pipeline reports read stage-to-stage
# conversion and days in stage from it (crmqueue.reports.queries).
lead_stage_history = sa.Table(
    "lead_stage_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("lead_id", sa.Integer, sa.ForeignKey("leads.id", ondelete="CASCADE"), nullable=False),
    sa.Column("from_stage", sa.String(50)),
    sa.Column("to_stage", sa.String(50)),
    sa.Column("from_status", sa.String(20)),
    sa.Column("to_status", sa.String(20), nullable=False),
    sa.Column("changed_at", UtcDateTime(), nullable=False),
)
sa.Index(
    "ix_lead_stage_history_tenant_lead",
    lead_stage_history.c.tenant_id,
    lead_stage_history.c.lead_id,
    lead_stage_history.c.changed_at,
)
sa.Index(
    "ix_lead_stage_history_tenant_changed",
    lead_stage_history.c.tenant_id,
    lead_stage_history.c.changed_at,
)

# Recurring schedules (issue #16; crmqueue.schedules): per tenant, a cron expression in an
# IANA time zone or an interval in seconds, the job each occurrence enqueues, the catch-up
# policy, and the scheduler's state (next_due_at; revision guards concurrent leaders).
schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("cron", sa.String(200)),
    sa.Column("interval_seconds", sa.Integer),
    sa.Column("time_zone", sa.String(64), nullable=False),
    sa.Column("queue", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(200)),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("catch_up", sa.String(10), nullable=False),
    sa.Column("paused", sa.Boolean, nullable=False),
    sa.Column("source", sa.String(10), nullable=False),  # "api" or "config"
    sa.Column("anchor_at", UtcDateTime(), nullable=False),  # intervals count from here
    sa.Column("next_due_at", UtcDateTime()),
    sa.Column("last_run_at", UtcDateTime()),  # the occurrence last enqueued
    sa.Column("last_job_id", sa.String(100)),
    sa.Column("last_error", sa.Text),
    sa.Column("revision", sa.Integer, nullable=False),
    *_stamps(),
    sa.UniqueConstraint("tenant_id", "name", name="uq_schedules_tenant_name"),
    # Never reuse a removed schedule's id: occurrence job ids (sched-<id>-<time>) of a new
    # schedule would match the old one's jobs still kept, and be skipped as duplicates.
    sqlite_autoincrement=True,
)
sa.Index("ix_schedules_due", schedules.c.paused, schedules.c.next_due_at)
# _push_subscriptions: a user's web push subscriptions (issue #14), one per browser or
# device: the push service's endpoint URL, the browser's P-256 key and auth secret
# (base64url, RFC 8291), and the last push sent to it (a retried push job skips the
# subscriptions it already reached). Unique per endpoint per user (endpoint_hash: the
# SHA-256 of the endpoint, which may be longer than an index key may be).
push_subscriptions = sa.Table(
    "push_subscriptions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("endpoint", sa.Text, nullable=False),
    sa.Column("endpoint_hash", sa.String(64), nullable=False),
    sa.Column("p256dh", sa.String(100), nullable=False),
    sa.Column("auth", sa.String(50), nullable=False),
    sa.Column("user_agent", sa.String(500)),
    *_stamps(),
    sa.Column("last_sent_at", UtcDateTime()),
    sa.Column("last_job_id", sa.String(64)),
    sa.Column("last_status", sa.Integer),
    sa.UniqueConstraint(
        "tenant_id", "user_id", "endpoint_hash", name="uq_push_subscriptions_user_endpoint"
    ),
)

V1_TABLES = [
    users,
    companies,
    contacts,
    leads,
    activities,
    notifications,
    webhook_endpoints,
    webhook_deliveries,
]


def _v1(conn: Connection) -> None:
    # Creates the tables in their current shape: a later step finds its columns present
    # on a new database and adds them only to one created by an earlier crmqueue.
    metadata.create_all(conn, tables=V1_TABLES)


def _v2(conn: Connection) -> None:
    metadata.create_all(conn, tables=[import_checkpoints])


def full_name(first: sa.ColumnElement[str], last: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    """SQL for a contact's `name` from first and last name, as
    crmqueue.crm.entities.join_names computes it (NULL when both are empty)."""
    parts = [sa.func.coalesce(sa.func.trim(part), "") for part in (first, last)]
    joined = sa.func.trim(parts[0] + " " + parts[1])
    return sa.func.nullif(sa.func.substr(joined, 1, 200), "")


def _v3(conn: Connection) -> None:
    """contacts.name and contacts.status; `name` of existing contacts from first and last
    name (as crmqueue.crm.entities.complete_names does for new ones)."""
    present = {column["name"] for column in sa.inspect(conn).get_columns("contacts")}
    for column in (contacts.c.name, contacts.c.status):
        if column.name not in present:
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE contacts ADD COLUMN {column.name} {kind}"))
    # IF NOT EXISTS rather than checkfirst: reflecting the expression indexes warns.
    conn.execute(
        sa.text(
            "CREATE INDEX IF NOT EXISTS ix_contacts_tenant_status ON contacts (tenant_id, status)"
        )
    )
    conn.execute(
        contacts.update()
        .where(contacts.c.name.is_(None))
        .values(name=full_name(contacts.c.first_name, contacts.c.last_name))
    )


# Days a notification stored before _notifications existed is kept (notifications.keep_days'
# default): the step gives those rows an expiry.
NOTIFICATION_KEEP_DAYS = 90
_ADDED_DEFAULTS = {
    "category": " NOT NULL DEFAULT 'general'",
    "priority": " NOT NULL DEFAULT 0",
}


def _notifications(conn: Connection) -> None:
    """Notifications get category, priority, expiry and job id; users get time zone,
    phone and quiet hours; user preferences get their table. Columns present (a database
    created by _v1 of this version) are left alone."""
    for table, columns in (
        (notifications, ("category", "priority", "expires_at", "job_id")),
        (users, ("time_zone", "phone", "quiet_start", "quiet_end")),
    ):
        present = {column["name"] for column in sa.inspect(conn).get_columns(table.name)}
        for name in columns:
            if name not in present:
                column = table.c[name]
                kind = column.type.compile(dialect=conn.dialect)
                # NOT NULL columns have a default: existing rows take it.
                extra = _ADDED_DEFAULTS.get(name, "")
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}{extra}"))
    for index in NOTIFICATION_INDEXES:
        names = ", ".join(column.name for column in index.columns)
        unique = "UNIQUE " if index.unique else ""
        conn.execute(
            sa.text(f"CREATE {unique}INDEX IF NOT EXISTS {index.name} ON notifications ({names})")
        )
    metadata.create_all(conn, tables=[notification_preferences])
    stored = conn.execute(
        sa.select(notifications.c.id, notifications.c.created_at).where(
            notifications.c.expires_at.is_(None)
        )
    ).all()
    keep = dt.timedelta(days=NOTIFICATION_KEEP_DAYS)
    for row in stored:
        conn.execute(
            notifications.update()
            .where(notifications.c.id == row.id)
            .values(expires_at=row.created_at + keep)
        )


def _stage_history(conn: Connection) -> None:
    """The lead stage-history table, if not there yet (the steps of parallel branches are
    ordered at merge, so this one checks what is present); each lead that has no history
    gets its creation row (its current stage and status since created_at)."""
    if not sa.inspect(conn).has_table(lead_stage_history.name):
        metadata.create_all(conn, tables=[lead_stage_history])
    history = lead_stage_history
    conn.execute(
        history.insert().from_select(
            ["tenant_id", "lead_id", "to_stage", "to_status", "changed_at"],
            sa.select(
                leads.c.tenant_id, leads.c.id, leads.c.stage, leads.c.status, leads.c.created_at
            ).where(~sa.exists().where(history.c.lead_id == leads.c.id)),
        )
    )


def _webhook_endpoints(conn: Connection) -> None:
    """Webhooks (issue #12): the endpoint's new columns, the per-attempt delivery log in
    place of version 1's webhook_deliveries (which crmqueue never wrote; any rows are
    carried over as one attempt each), and webhook_messages. Each part is
    checked first, so the step runs in any order with other teams' steps and on a
    database whose tables version 1 already created in their current shape."""
    inspector = sa.inspect(conn)
    present = {column["name"] for column in inspector.get_columns("webhook_endpoints")}
    # Existing rows get these values; the other new columns start empty (NULL).
    not_null = {"description": "''", "consecutive_failures": "0"}
    for column in webhook_endpoints.columns:
        if column.name in present:
            continue
        kind = column.type.compile(dialect=conn.dialect)
        default = f" NOT NULL DEFAULT {not_null[column.name]}" if column.name in not_null else ""
        conn.execute(
            sa.text(f"ALTER TABLE webhook_endpoints ADD COLUMN {column.name} {kind}{default}")
        )
    legacy: list[dict[str, Any]] = []
    if inspector.has_table("webhook_deliveries"):
        logged = {column["name"] for column in inspector.get_columns("webhook_deliveries")}
        if "message_id" not in logged:
            # Version 1's shape (one row per delivery): its rows, should anyone have
            # written some, become one logged attempt each.
            legacy = [
                {
                    "tenant_id": row.tenant_id,
                    "endpoint_id": row.endpoint_id,
                    "webhook_id": row.webhook_id,
                    "message_id": f"legacy_{row.id}",
                    "event_type": row.event_type,
                    "job_id": None,
                    "attempt": max(1, row.attempts or 1),
                    "at": row.delivered_at or row.created_at,
                    "succeeded": row.status == "delivered",
                    "status_code": row.response_status,
                    "latency_ms": 0,
                    "response_excerpt": "",
                    "error": row.error,
                }
                for row in conn.execute(
                    sa.text(
                        "SELECT d.id, d.tenant_id, d.endpoint_id, e.webhook_id, d.event_type,"
                        " d.status, d.attempts, d.response_status, d.error, d.created_at,"
                        " d.delivered_at FROM webhook_deliveries d JOIN webhook_endpoints e"
                        " ON e.id = d.endpoint_id ORDER BY d.id"
                    ).columns(created_at=UtcDateTime(), delivered_at=UtcDateTime())
                )
            ]
            conn.execute(sa.text("DROP TABLE webhook_deliveries"))
    metadata.create_all(conn, tables=[webhook_deliveries, webhook_messages])
    if legacy:
        conn.execute(webhook_deliveries.insert(), legacy)


def _schedules(conn: Connection) -> None:
    """The schedules table (issue #16), if not there yet (steps of parallel branches are
    ordered at merge, so this one checks what is present)."""
    if not sa.inspect(conn).has_table(schedules.name):
        metadata.create_all(conn, tables=[schedules])


def _push_subscriptions(conn: Connection) -> None:
    """Web push subscriptions (issue #14): their table, if not there yet (the steps of
    parallel branches are ordered at merge, so this one checks what is present)."""
    if not sa.inspect(conn).has_table(push_subscriptions.name):
        metadata.create_all(conn, tables=[push_subscriptions])


# MIGRATIONS[n - 1] takes a database from version n - 1 to n. Append only.
MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1,
    _v2,
    _v3,
    _stage_history,
    _notifications,
    _webhook_endpoints,
    _schedules,
    _push_subscriptions,
]
SCHEMA_VERSION = len(MIGRATIONS)

ENTITY_TABLES: dict[str, sa.Table] = {
    "contacts": contacts,
    "companies": companies,
    "leads": leads,
    "activities": activities,
}
