"""Connecting to the CRM database (SQLite by default, PostgreSQL by URL), creating or
upgrading its schema, and seeding demo data."""

from __future__ import annotations

import datetime as dt
import random
import threading
import unicodedata
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from crmqueue.config import DEFAULT_CONTACT_STATUSES
from crmqueue.crm import schema
from crmqueue.crm.entities import caseless_fields, complete_names
from crmqueue.errors import ConfigError, CrmQueueError

_engines: dict[str, Engine] = {}
# SQLite connections a process keeps open (a consumer runs up to 40 worker threads).
SQLITE_POOL_SIZE = 40
_engines_lock = threading.Lock()


def sqlalchemy_url(url: str) -> str:
    """`database.url` as SQLAlchemy understands it: PostgreSQL through psycopg 3."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith("sqlite:///"):
        return url
    raise ConfigError(
        f"database.url: unsupported scheme in {url.split('://', 1)[0]!r}"
        " (use sqlite:///path or postgresql://user@host/db)"
    )


def create_engine(url: str, connect_timeout: int = 10) -> Engine:
    """A new engine for `url` (no schema work); PostgreSQL connects within
    `connect_timeout` seconds."""
    target = sqlalchemy_url(url)
    if target.startswith("sqlite"):
        path = target[len("sqlite:///") :]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Connections kept open for every worker thread of a consumer: past the default
        # pool of 5, each checkout opened a connection and ran the pragmas below anew.
        engine = sa.create_engine(
            target, connect_args={"timeout": 30}, pool_size=SQLITE_POOL_SIZE, max_overflow=10
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    # No server-side prepared statements: psycopg prepares a query after five runs, and
    # PostgreSQL may then keep a generic plan made when an import's table was still small.
    # Sessions in UTC: time stamps come back in UTC whatever the server's TimeZone, and one
    # near 9999-12-31 UTC is not shown in a zone where it would be year 10000 (which
    # psycopg cannot read).
    return sa.create_engine(
        target,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": connect_timeout,
            "prepare_threshold": None,
            "options": "-c timezone=UTC",
        },
    )


def get_engine(url: str) -> Engine:
    """The process-wide engine for `url`, its schema created or upgraded on first use."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(url)
            init_db(engine)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def current_version(conn: Connection) -> int:
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    value = conn.execute(sa.select(sa.func.max(schema.schema_version.c.version))).scalar()
    return int(value or 0)


def init_db(engine: Engine, target: int = schema.SCHEMA_VERSION) -> tuple[int, int]:
    """Create or upgrade the schema to `target`; returns (version before, version after).
    Each step runs in its own transaction with its version row."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # One initialiser at a time: concurrent workers all call this on first use.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(742319)"))
        schema.metadata.create_all(conn, tables=[schema.schema_version])
        before = current_version(conn)
        if before > schema.SCHEMA_VERSION:
            raise CrmQueueError(
                f"the CRM database is at schema version {before}, newer than this crmqueue"
                f" ({schema.SCHEMA_VERSION}): upgrade crmqueue"
            )
        for version in range(before + 1, target + 1):
            schema.MIGRATIONS[version - 1](conn)
            conn.execute(schema.schema_version.insert().values(version=version, applied_at=now()))
    return before, max(before, target)


# --------------------------------------------------------------------------- filters


def filter_conditions(
    table: sa.Table, entity: str, filters: dict[str, Any]
) -> list[sa.ColumnElement[bool]]:
    """The WHERE conditions of an export's filters, as crmqueue.crm.entities
    .check_export_filters returns them (field -> value, [values] or None): equal, any of
    the values, or empty. The caseless_fields (emails, the default duplicate keys) compare
    lower-cased, as duplicate detection does (on SQLite, lower() folds ASCII letters
    only); a `date` given for a time stamp matches that whole day in UTC."""
    caseless = caseless_fields(entity)
    conditions: list[sa.ColumnElement[bool]] = []
    for name, value in filters.items():
        column: sa.ColumnElement[Any] = table.c[name]
        if value is None:
            conditions.append(column.is_(None))
            continue
        values = value if isinstance(value, list) else [value]
        if name in caseless:
            column = sa.func.lower(column)
            values = [item.lower() if isinstance(item, str) else item for item in values]
        if isinstance(table.c[name].type, schema.UtcDateTime):
            days = [v for v in values if not isinstance(v, dt.datetime)]
            values = [v for v in values if isinstance(v, dt.datetime)]
            matches = [_whole_day(column, day) for day in days]
            if values:
                matches.append(column.in_(values))
            conditions.append(sa.or_(sa.false(), *matches))  # an empty list matches nothing
        elif isinstance(value, list):
            conditions.append(column.in_(values))
        else:
            conditions.append(column == values[0])
    return conditions


def _whole_day(column: sa.ColumnElement[Any], day: dt.date) -> sa.ColumnElement[bool]:
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    if day == dt.date.max:
        return column >= start
    return sa.and_(column >= start, column < start + dt.timedelta(days=1))


# --------------------------------------------------------------------------- contacts


def contact_update(changes: dict[str, Any]) -> dict[str, Any]:
    """The SET values of an UPDATE of one contact by `changes` (its fields not None), with
    its names kept in step (crmqueue.crm.entities.complete_names): `name` alone also sets
    first and last name; first and/or last name alone also set `name`, joined in SQL with
    the stored other part."""
    values = {key: value for key, value in changes.items() if value is not None}
    has_parts = "first_name" in values or "last_name" in values
    if has_parts and "name" not in values:
        c = schema.contacts.c
        first = sa.literal(values["first_name"]) if "first_name" in values else c.first_name
        last = sa.literal(values["last_name"]) if "last_name" in values else c.last_name
        values["name"] = schema.full_name(first, last)
        return values
    return complete_names(values)


# --------------------------------------------------------------------------- leads


def last_lead_id(conn: Connection) -> int:
    """The highest lead id visible now (every tenant's): leads inserted afterwards have
    higher ones (record_new_leads)."""
    return int(conn.execute(sa.select(sa.func.max(schema.leads.c.id))).scalar() or 0)


def record_new_leads(conn: Connection, tenant_id: str, after_id: int, created_at: Any) -> None:
    """The stage-history creation rows (pipeline.stage_changed from nothing) of the leads
    of `tenant_id` inserted with `created_at` and an id above `after_id`
    (last_lead_id before the insert): one INSERT ... SELECT, so a bulk insert (COPY
    included) needs no ids back."""
    leads, history = schema.leads, schema.lead_stage_history
    conn.execute(
        history.insert().from_select(
            ["tenant_id", "lead_id", "to_stage", "to_status", "changed_at"],
            sa.select(
                leads.c.tenant_id, leads.c.id, leads.c.stage, leads.c.status, leads.c.created_at
            ).where(
                leads.c.id > after_id,
                leads.c.tenant_id == tenant_id,
                leads.c.created_at == created_at,
            ),
        )
    )


def record_stage_change(
    conn: Connection, tenant_id: str, lead_id: int, changes: dict[str, Any], at: dt.datetime
) -> None:
    """Before `changes` (values of None are not applied) update lead `lead_id`: a
    stage-history row (pipeline.stage_changed) when they change its stage or status, from
    the stored ones to the new ones, at `at`."""
    stage, status = changes.get("stage"), changes.get("status")
    if stage is None and status is None:
        return
    leads, history = schema.leads, schema.lead_stage_history
    new_stage = sa.literal(stage, sa.String) if stage is not None else leads.c.stage
    new_status = sa.literal(status, sa.String) if status is not None else leads.c.status
    conn.execute(
        history.insert().from_select(
            ["tenant_id", "lead_id", "from_stage", "to_stage", "from_status", "to_status",
             "changed_at"],
            sa.select(
                leads.c.tenant_id, leads.c.id, leads.c.stage, new_stage, leads.c.status,
                new_status, sa.literal(at, schema.UtcDateTime()),
            ).where(
                leads.c.id == lead_id,
                leads.c.tenant_id == tenant_id,
                sa.or_(leads.c.stage.is_distinct_from(new_stage), leads.c.status != new_status),
            ),
        )
    )  # fmt: skip


def update_lead(
    conn: Connection,
    tenant_id: str,
    lead_id: int,
    changes: dict[str, Any],
    at: dt.datetime | None = None,
) -> int:
    """The store's update path of one lead: its fields set to `changes` (values of None
    left as they are), updated_at to `at` (default now), and a stage change recorded in
    the stage history (record_stage_change). Returns the rows updated (0: no such lead
    in this tenant)."""
    stamp = at or now()
    values = {key: value for key, value in changes.items() if value is not None}
    record_stage_change(conn, tenant_id, lead_id, values, stamp)
    leads = schema.leads
    result = conn.execute(
        leads.update()
        .where(leads.c.id == lead_id, leads.c.tenant_id == tenant_id)
        .values(**values, updated_at=stamp)
    )
    return int(result.rowcount)


# --------------------------------------------------------------------------- seeding

FIRST = [
    "James",
    "Mary",
    "John",
    "Patricia",
    "Robert",
    "Jennifer",
    "Michael",
    "Linda",
    "William",
    "Elizabeth",
    "David",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Amélie",
    "Jürgen",
    "Søren",
    "Zoë",
    "Chloé",
]
LAST = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Müller",
    "O'Brien",
]
WORDS = [
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Hooli",
    "Vandelay",
    "Soylent",
    "Tyrell",
    "Cyberdyne",
]
SUFFIX = ("Inc", "LLC", "GmbH", "Ltd", "Group", "Labs")
INDUSTRIES = ("Software", "Retail", "Finance", "Healthcare", "Manufacturing", "Education")
CITIES = (("Berlin", "DE"), ("Paris", "FR"), ("New York", "US"), ("London", "GB"), ("Lyon", "FR"))
TITLES = ("CEO", "CTO", "Sales Manager", "Engineer", "Buyer", "Head of Marketing")
SOURCES = ("web", "referral", "event", "import", "cold-call")
STAGES = ("prospecting", "qualification", "proposal", "negotiation", "closed")
# The open stages a seeded deal walks through (reports.stage_probabilities' defaults), with
# the chance to move on from each and the mean days spent in it.
PIPELINE = (("prospecting", 0.8, 12.0), ("qualification", 0.7, 18.0),
            ("proposal", 0.65, 21.0), ("negotiation", 0.65, 14.0))  # fmt: skip
ACTIVITY_TYPES = ("call", "email", "meeting", "task", "note")
# How busy each calendar month is (January first): summer and December dips.
SEASON = (0.9, 1.0, 1.15, 1.1, 1.05, 1.0, 0.8, 0.7, 1.1, 1.2, 1.15, 0.75)
HISTORY_MONTHS = 24
MONTHLY_GROWTH = 1.04
# Seeded users u1..u5: how many deals each owns and how often each wins.
OWNER_WEIGHTS = (0.3, 0.25, 0.2, 0.15, 0.1)
OWNER_SKILL = (1.1, 1.0, 1.0, 0.9, 0.8)
CURRENCIES = (("EUR", 0.75), ("USD", 0.2), ("GBP", 0.05))


class _Calendar:
    """Moments over the past HISTORY_MONTHS months, drawn with growth (MONTHLY_GROWTH a
    month) and seasonality (SEASON), never after `end`."""

    def __init__(self, end: dt.datetime) -> None:
        first = dt.datetime(end.year, end.month, 1, tzinfo=dt.UTC)
        starts = [first]
        for _ in range(HISTORY_MONTHS - 1):
            before = starts[0] - dt.timedelta(days=1)
            starts.insert(0, before.replace(day=1))
        self.spans = [
            (start, (starts[i + 1] if i + 1 < len(starts) else end) - start)
            for i, start in enumerate(starts)
        ]
        self.weights = [
            MONTHLY_GROWTH**i * SEASON[start.month - 1] for i, (start, _) in enumerate(self.spans)
        ]
        self.end = end

    def moment(self, rng: random.Random) -> dt.datetime:
        start, length = rng.choices(self.spans, self.weights)[0]
        return start + length * rng.random()


def _deal_history(
    rng: random.Random, created: dt.datetime, skill: float, end: dt.datetime
) -> tuple[str, str, list[tuple[str | None, str, str | None, str, dt.datetime]]]:
    """(stage, status, stage-history rows) of a deal created at `created`: it walks the
    PIPELINE, sometimes skipping a stage, until it is lost, won after negotiation, or
    `end` comes first (still open)."""
    index, at = 0, created
    stage = PIPELINE[0][0]
    rows: list[tuple[str | None, str, str | None, str, dt.datetime]] = [
        (None, stage, None, "open", created)
    ]
    while True:
        _, advance, mean_days = PIPELINE[index]
        at = at + dt.timedelta(days=rng.expovariate(1 / mean_days))
        if at >= end:
            return stage, "open", rows
        if rng.random() >= min(0.95, advance * skill):
            rows.append((stage, stage, "open", "lost", at))
            return stage, "lost", rows
        if index == len(PIPELINE) - 1:
            rows.append((stage, stage, "open", "won", at))
            return stage, "won", rows
        index += 2 if index < len(PIPELINE) - 2 and rng.random() < 0.1 else 1
        rows.append((stage, PIPELINE[index][0], "open", "open", at))
        stage = PIPELINE[index][0]


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return folded.lower().replace("'", "")


def seed(
    engine: Engine,
    tenant_id: str,
    contacts: int,
    rng_seed: int = 1,
    chunk: int = 5000,
    contact_statuses: tuple[str, ...] | list[str] = DEFAULT_CONTACT_STATUSES,
) -> dict[str, int]:
    """Realistic demo data for one tenant: users, companies (1 per 20 contacts), contacts
    (full and first/last names, a status from `contact_statuses`), leads (1 per 5
    contacts) and activities (1 per 5 contacts), bulk-inserted. Contacts, deals and
    activities spread over the past 24 months, growing about 4 % a month with seasonal
    dips (SEASON); deals in EUR, USD and GBP walk the pipeline with their stage history
    (won or lost by owner skill, a few skipping a stage; the recent ones still open), and
    activities due in the past are mostly completed, some overdue."""
    rng = random.Random(rng_seed)
    # Statuses from a generator of their own: the other values stay those of earlier seeds.
    status_rng = random.Random(-rng_seed)
    # Time stamps, outcomes and currencies from one more generator of their own.
    history_rng = random.Random(rng_seed + 1_000_003)
    statuses = tuple(contact_statuses)
    stamp = now()
    calendar = _Calendar(stamp)
    counts = {"users": 5, "companies": max(1, contacts // 20), "contacts": contacts}
    counts["leads"] = contacts // 5
    counts["activities"] = contacts // 5
    with engine.begin() as conn:
        start = conn.execute(
            sa.select(sa.func.count()).where(schema.contacts.c.tenant_id == tenant_id)
        ).scalar_one()
        has_users = conn.execute(
            sa.select(sa.func.count()).where(schema.users.c.tenant_id == tenant_id)
        ).scalar_one()
        if not has_users:
            conn.execute(
                schema.users.insert(),
                [
                    {
                        "tenant_id": tenant_id, "user_id": f"u{n}",
                        "name": f"{FIRST[n]} {LAST[n]}", "email": f"user{n}@example.com",
                        "created_at": stamp, "updated_at": stamp,
                    }
                    for n in range(1, 6)
                ],
            )  # fmt: skip
        company_rows = []
        for n in range(counts["companies"]):
            name = f"{rng.choice(WORDS)} {rng.choice(SUFFIX)} {start + n}"
            city, country = rng.choice(CITIES)
            company_rows.append(
                {
                    "tenant_id": tenant_id, "name": name,
                    "domain": f"{name.split()[0].lower()}{start + n}.example.com",
                    "industry": rng.choice(INDUSTRIES), "employees": rng.randint(1, 5000),
                    "city": city, "country": country, "created_at": stamp, "updated_at": stamp,
                }
            )  # fmt: skip
        for offset in range(0, len(company_rows), chunk):
            conn.execute(schema.companies.insert(), company_rows[offset : offset + chunk])
        company_ids = list(
            conn.execute(
                sa.select(schema.companies.c.id, schema.companies.c.name)
                .where(schema.companies.c.tenant_id == tenant_id)
                .order_by(schema.companies.c.id.desc())
                .limit(counts["companies"])
            )
        )
        for offset in range(0, contacts, chunk):
            rows = []
            for n in range(offset, min(contacts, offset + chunk)):
                first, last = rng.choice(FIRST), rng.choice(LAST)
                status = status_rng.choice(statuses)
                company_id, company_name = rng.choice(company_ids)
                city, country = rng.choice(CITIES)
                created = calendar.moment(history_rng)
                rows.append(
                    {
                        "tenant_id": tenant_id, "name": f"{first} {last}",
                        "first_name": first, "last_name": last, "status": status,
                        "email": _ascii(f"{first}.{last}.{start + n}@example.com"),
                        "phone": f"+1-555-{rng.randint(0, 9999):04d}", "title": rng.choice(TITLES),
                        "company": company_name, "company_id": company_id, "city": city,
                        "country": country, "source": rng.choice(SOURCES),
                        "created_at": created, "updated_at": created,
                    }
                )  # fmt: skip
            conn.execute(schema.contacts.insert(), rows)
        contact_rows = list(
            conn.execute(
                sa.select(schema.contacts.c.id, schema.contacts.c.company_id)
                .where(schema.contacts.c.tenant_id == tenant_id)
                .order_by(schema.contacts.c.id.desc())
                .limit(contacts)
            )
        )
        lead_rows: list[dict[str, Any]] = []
        journeys: dict[str, list[tuple[str | None, str, str | None, str, dt.datetime]]] = {}
        codes = [code for code, _ in CURRENCIES]
        shares = [share for _, share in CURRENCIES]
        for n in range(counts["leads"]):
            owner = history_rng.choices(range(1, 6), OWNER_WEIGHTS)[0]
            created = calendar.moment(history_rng)
            stage, status, journey = _deal_history(
                history_rng, created, OWNER_SKILL[owner - 1], stamp
            )
            closed_at = journey[-1][4]
            close_date = (
                closed_at.date()
                if status != "open"
                else (created + dt.timedelta(days=history_rng.randint(30, 120))).date()
            )
            contact_id, company_id = (
                history_rng.choice(contact_rows) if contact_rows else (None, None)
            )
            external_id = f"L-{start + n}"
            journeys[external_id] = journey
            lead_rows.append(
                {
                    "tenant_id": tenant_id, "external_id": external_id,
                    "title": f"{rng.choice(WORDS)} deal {start + n}",
                    "amount": Decimal(rng.randint(500, 250_000)),
                    "currency": history_rng.choices(codes, shares)[0],
                    "status": status, "stage": stage, "owner": f"u{owner}",
                    "close_date": close_date, "contact_id": contact_id,
                    "company_id": company_id, "created_at": created, "updated_at": closed_at,
                }
            )  # fmt: skip
        after_id = last_lead_id(conn)
        for offset in range(0, len(lead_rows), chunk):
            conn.execute(schema.leads.insert(), lead_rows[offset : offset + chunk])
        leads = schema.leads.c
        new_ids = conn.execute(
            sa.select(leads.external_id, leads.id).where(
                leads.id > after_id, leads.tenant_id == tenant_id
            )
        )
        history_rows = [
            {
                "tenant_id": tenant_id, "lead_id": lead_id, "from_stage": from_stage,
                "to_stage": to_stage, "from_status": from_status, "to_status": to_status,
                "changed_at": at,
            }
            for external_id, lead_id in new_ids
            for from_stage, to_stage, from_status, to_status, at in journeys.get(external_id, ())
        ]  # fmt: skip
        for offset in range(0, len(history_rows), chunk):
            conn.execute(schema.lead_stage_history.insert(), history_rows[offset : offset + chunk])
        activity_rows = []
        for n in range(counts["activities"]):
            created = calendar.moment(history_rng)
            due = created + dt.timedelta(days=history_rng.randint(0, 21), hours=9)
            completed = None
            if due < stamp and history_rng.random() < 0.8:
                completed = min(stamp, due + dt.timedelta(hours=history_rng.randint(-48, 72)))
            activity_rows.append(
                {
                    "tenant_id": tenant_id, "type": rng.choice(ACTIVITY_TYPES),
                    "subject": f"Follow-up {start + n}",
                    "owner": f"u{history_rng.choices(range(1, 6), OWNER_WEIGHTS)[0]}",
                    "due_at": due, "completed_at": completed,
                    "contact_id": history_rng.choice(contact_rows)[0] if contact_rows else None,
                    "created_at": created, "updated_at": completed or created,
                }
            )  # fmt: skip
        for offset in range(0, len(activity_rows), chunk):
            conn.execute(schema.activities.insert(), activity_rows[offset : offset + chunk])
    return counts
