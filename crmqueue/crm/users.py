"""CRM users: the people notifications go to (their email address, time zone, phone and
quiet hours). Every query names the tenant."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from crmqueue.crm import schema
from crmqueue.errors import PayloadError
from crmqueue.fields import AddressError, parse_address
from crmqueue.tenancy import tenant_problem, user_id_problem
from crmqueue.zones import time_zone_problem

__all__ = [
    "User",
    "add_user",
    "changes",
    "check_hhmm",
    "check_phone",
    "check_time_zone",
    "check_user_id",
    "get_user",
    "list_users",
]

# E.164: a plus, a country code not starting with 0, at most 15 digits in all.
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


@dataclass(frozen=True)
class User:
    tenant_id: str
    user_id: str
    name: str
    email: str
    time_zone: str | None = None  # IANA name, e.g. Europe/Berlin; None: UTC
    phone: str | None = None  # E.164
    quiet_start: str | None = None  # "HH:MM" local time, with quiet_end
    quiet_end: str | None = None

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone or "UTC")


def check_time_zone(name: str, field: str = "time_zone") -> str:
    """`name` if it is an IANA Area/Location time zone or UTC (the rule of
    crmqueue.zones: not localtime, Factory or a legacy name like EST5EDT), else
    PayloadError naming `field`."""
    problem = time_zone_problem(name)
    if problem is not None:
        raise PayloadError([(field, problem)])
    return name


def check_user_id(user_id: str, field: str = "user_id") -> str:
    """`user_id` without surrounding whitespace if it is a user id by crmqueue.tenancy's
    rule (1-64 characters, no whitespace or controls; as a notification payload's
    user_id at enqueue), else PayloadError naming `field`."""
    stripped = user_id.strip() if isinstance(user_id, str) else user_id
    problem = user_id_problem(stripped)
    if problem is not None:
        raise PayloadError([(field, problem)])
    return stripped


def check_phone(number: str, field: str = "phone") -> str:
    if not _E164.fullmatch(number):
        raise PayloadError([(field, f"{number!r} is not an E.164 number (e.g. +14155550100)")])
    return number


def check_hhmm(text: str, field: str) -> str:
    if not _HHMM.fullmatch(text):
        raise PayloadError([(field, f"{text!r} is not a time of day as HH:MM (00:00-23:59)")])
    return text


def _user(row: Any) -> User:
    m = row._mapping
    return User(
        m["tenant_id"], m["user_id"], m["name"], m["email"], m["time_zone"], m["phone"],
        m["quiet_start"], m["quiet_end"],
    )  # fmt: skip


_COLUMNS = (
    schema.users.c.tenant_id, schema.users.c.user_id, schema.users.c.name, schema.users.c.email,
    schema.users.c.time_zone, schema.users.c.phone, schema.users.c.quiet_start,
    schema.users.c.quiet_end,
)  # fmt: skip


# Built once: a statement made per call costs more Python than its query (the
# notification queue reads a user per job).
_BY_ID = sa.select(*_COLUMNS).where(
    schema.users.c.tenant_id == sa.bindparam("tenant_id"),
    schema.users.c.user_id == sa.bindparam("user_id"),
)


def get_user(engine: Engine | Connection, tenant_id: str, user_id: str) -> User | None:
    """The tenant's user `user_id` (surrounding whitespace stripped), or None. `engine`
    may be a Connection: read on it (in its transaction)."""
    params = {"tenant_id": tenant_id, "user_id": user_id.strip()}
    if isinstance(engine, Connection):
        row = engine.execute(_BY_ID, params).first()
    else:
        with engine.connect() as conn:
            row = conn.execute(_BY_ID, params).first()
    return None if row is None else _user(row)


def list_users(engine: Engine, tenant_id: str, limit: int = 1000) -> list[User]:
    """The tenant's users by user id (at most `limit`)."""
    users = schema.users
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(*_COLUMNS)
            .where(users.c.tenant_id == tenant_id)
            .order_by(users.c.user_id)
            .limit(limit)
        ).all()
    return [_user(row) for row in rows]


def add_user(
    engine: Engine,
    tenant_id: str,
    user_id: str,
    *,
    name: str,
    email: str,
    time_zone: str | None = None,
    phone: str | None = None,
) -> tuple[User, bool]:
    """Add a user to a tenant, or update the one with that id (its name, email, and the
    time zone and phone when given); returns (the user, whether it was added). Raises
    PayloadError naming each bad field (a user id by check_user_id, email as
    local@domain, an IANA time zone by crmqueue.zones, an E.164 phone)."""
    errors: list[tuple[str, str]] = []
    problem = tenant_problem(tenant_id)
    if problem is not None:
        errors.append(("tenant_id", problem))
    try:
        user_id = check_user_id(user_id)
    except PayloadError as exc:
        errors += exc.errors
    if not name.strip() or len(name) > 200:
        errors.append(("name", "must be 1-200 characters"))
    try:
        parse_address(email)
    except AddressError as exc:
        errors.append(("email", str(exc)))
    for check, value, field in ((check_time_zone, time_zone, "time_zone"),
                                (check_phone, phone, "phone")):  # fmt: skip
        if value is not None:
            try:
                check(value, field)
            except PayloadError as exc:
                errors += exc.errors
    if errors:
        raise PayloadError(errors)
    users = schema.users
    now = dt.datetime.now(dt.UTC)
    values: dict[str, object] = {"name": name.strip(), "email": email, "updated_at": now}
    if time_zone is not None:
        values["time_zone"] = time_zone
    if phone is not None:
        values["phone"] = phone
    with engine.begin() as conn:
        updated = conn.execute(
            users.update()
            .where(users.c.tenant_id == tenant_id, users.c.user_id == user_id)
            .values(**values)
        ).rowcount
        if not updated:
            conn.execute(
                users.insert().values(
                    tenant_id=tenant_id, user_id=user_id, created_at=now, **values
                )
            )
    global _changes
    _changes += 1
    user = get_user(engine, tenant_id, user_id)
    assert user is not None
    return user, not updated


# Users added or changed by this process (add_user): caches of what users imply
# (crmqueue.notifications.recent_preferences) compare it to forget what they kept.
_changes = 0


def changes() -> int:
    """How many times add_user changed users in this process."""
    return _changes
