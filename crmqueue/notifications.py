"""Notifications, the domain service the notification queue's body, the command line and
client code share: a user's in-app inbox and their notification preferences.

Inbox: notifications are stored in the CRM store (``notifications``), listed newest
first with cursor paging, counted unread, marked read one by one or all at once, and
expire ``notifications.keep_days`` (90) days after they were stored. Every call names a
tenant AND a user: nothing here reads or changes another user's notifications. A user
id is stripped of surrounding whitespace and checked (crmqueue.crm.users.check_user_id,
the rule a notification payload's user_id follows at enqueue) by every call.

Preferences (crmqueue.notifications.channels_for): for each category, which channels
are on. A user's own choice for the category, else their choice for "*" (every
category), else the tenant defaults of the configuration ([notifications]). Quiet hours
per user, in the user's IANA time zone (``users.time_zone``), hold email, push and SMS
later) until the window ends; in-app is never held (quiet_until).

``crmqueue.notifications.list`` is list_notifications (the name the command line uses).
"""

from __future__ import annotations

import builtins
import datetime as dt
import threading
import time
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from crmqueue.config import NOTIFICATION_CHANNELS, Settings
from crmqueue.crm import schema
from crmqueue.crm.users import check_hhmm, check_time_zone, check_user_id, get_user
from crmqueue.errors import PayloadError
from crmqueue.group_commit import GroupCommit

__all__ = [
    "CHANNELS",
    "NOT_AVAILABLE",
    "URGENT_PRIORITY",
    "Notification",
    "Page",
    "Preferences",
    "channels_for",
    "get_preferences",
    "list",
    "list_notifications",
    "mark_all_read",
    "mark_read",
    "plan_channels",
    "purge_expired",
    "quiet_until",
    "recent_preferences",
    "set_preferences",
    "set_quiet_hours",
    "store",
    "unread_count",
]

CHANNELS = NOTIFICATION_CHANNELS
# Channels whose delivery exists; the others are recorded as skipped with this reason.
BUILT_CHANNELS = ("in-app", "email", "push", "sms")
NOT_AVAILABLE = "channel not available yet"
# A notification of this job priority or above is urgent: quiet hours do not hold it.
URGENT_PRIORITY = 200
# Channels quiet hours hold (in-app is always stored at once).
HELD_CHANNELS = ("email", "push", "sms")
MAX_PAGE = 200
# Notification ids are SQL BIGINT (SQLite INTEGER): an id past this names no notification.
MAX_ID = 2**63 - 1

_n = schema.notifications


def _now(now: dt.datetime | None) -> dt.datetime:
    return dt.datetime.now(dt.UTC) if now is None else now.astimezone(dt.UTC)


def _settings(settings: Settings | None) -> Settings:
    if settings is not None:
        return settings
    from crmqueue.engine.queues import get_broker

    return get_broker().settings


def _engine(engine: Engine | None, settings: Settings | None = None) -> Engine:
    """`engine`, else the configured CRM database's (schema created or upgraded)."""
    if engine is not None:
        return engine
    from crmqueue.crm.store import get_engine

    return get_engine(_settings(settings).database.url)


# --------------------------------------------------------------------------- inbox


@dataclass(frozen=True)
class Notification:
    id: int
    category: str
    title: str
    message: str
    action_url: str | None
    priority: int
    created_at: dt.datetime
    read_at: dt.datetime | None
    expires_at: dt.datetime | None

    @property
    def read(self) -> bool:
        return self.read_at is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 UTC."""
        return {
            "id": self.id, "category": self.category, "title": self.title,
            "message": self.message, "action_url": self.action_url, "priority": self.priority,
            "created_at": self.created_at.isoformat(), "read": self.read,
            "read_at": self.read_at.isoformat() if self.read_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }  # fmt: skip


@dataclass(frozen=True)
class Page:
    """One page of an inbox, newest first; `next_cursor` fetches the next (None: last)."""

    items: tuple[Notification, ...]
    next_cursor: str | None


_COLUMNS = (
    _n.c.id, _n.c.category, _n.c.title, _n.c.message, _n.c.action_url, _n.c.priority,
    _n.c.created_at, _n.c.read_at, _n.c.expires_at,
)  # fmt: skip


def _mine(tenant_id: str, user_id: str, now: dt.datetime) -> sa.ColumnElement[bool]:
    """The user's notifications that have not expired."""
    return sa.and_(
        _n.c.tenant_id == tenant_id,
        _n.c.user_id == user_id,
        sa.or_(_n.c.expires_at.is_(None), _n.c.expires_at > now),
    )


def store(
    tenant_id: str,
    user_id: str,
    *,
    title: str,
    message: str,
    action_url: str | None = None,
    category: str = "general",
    priority: int = 0,
    job_id: str | None = None,
    engine: Engine | None = None,
    settings: Settings | None = None,
    now: dt.datetime | None = None,
    first_run: bool = False,
) -> int:
    """Store an in-app notification; returns its id. It expires keep_days after `now`.
    With a `job_id`, storing again for the same job (a retried job) returns the first
    one's id instead of a second notification; such rows are group-committed with the
    other worker threads' (_WRITER: one transaction for every row waiting);
    `first_run` True says no earlier run of the job can have stored it (the lookup is
    skipped; the unique index on tenant and job id still refuses a second row). The
    user need not be in ``users`` (the CRM may add them later). Raises PayloadError for
    a bad user id or `action_url` (as at enqueue: crmqueue.payloads.action_url_problem)."""
    user_id = check_user_id(user_id)
    if action_url is not None:
        from crmqueue.payloads import action_url_problem

        problem = action_url_problem(action_url)
        if problem is not None:
            raise PayloadError([("action_url", problem)])
    config = _settings(settings)
    engine = _engine(engine, config)
    stamp = _now(now)
    row = {
        "tenant_id": tenant_id, "user_id": user_id, "type": "in-app", "title": title,
        "message": message, "action_url": action_url, "category": category,
        "priority": priority, "job_id": job_id, "created_at": stamp,
        "expires_at": stamp + dt.timedelta(days=config.notifications.keep_days),
    }  # fmt: skip
    if job_id is not None:
        pending = _Pending(engine, row, maybe_stored=not first_run)
        _WRITER.submit(pending)
        return pending.id
    return _store_one(engine, row)


def _store_one(engine: Engine, row: dict[str, Any]) -> int:
    """Insert `row` in a transaction of its own; a row of the same job stored before
    (the unique index on tenant and job id) gives that row's id."""
    tenant_id, job_id = row["tenant_id"], row["job_id"]
    try:
        with engine.begin() as conn:
            key = conn.execute(_n.insert().values(**row)).inserted_primary_key
            assert key is not None
            return int(key[0])
    except IntegrityError:
        if job_id is None:
            raise
    with engine.connect() as conn:  # the job's notification, stored by an earlier run
        found = conn.execute(
            sa.select(_n.c.id).where(_n.c.tenant_id == tenant_id, _n.c.job_id == job_id)
        ).scalar_one()
    return int(found)


class _Pending:
    """One row handed to the writer thread, and what became of it."""

    __slots__ = ("done", "engine", "error", "id", "maybe_stored", "row")

    def __init__(self, engine: Engine, row: dict[str, Any], maybe_stored: bool) -> None:
        self.engine = engine
        self.row = row
        self.maybe_stored = maybe_stored
        self.id = 0
        self.error: BaseException | None = None
        self.done = threading.Event()


_INSERT_RETURNING = _n.insert().returning(_n.c.id, sort_by_parameter_order=True)


def _store_batch(engine: Engine, batch: builtins.list[_Pending]) -> None:
    """Store the rows of `batch` (each with a job id) in one transaction: the rows whose
    job's notification is stored already (a retried job; looked up only when a row's
    job may have run before) get that one's id, the others
    are inserted with one executemany (RETURNING their ids, in order). If the batch
    fails (another process stored the same job meanwhile and the unique index refused
    it; a row the database refuses), each row is stored on its own instead, so a row's
    caller gets its own outcome."""
    keys = {(p.row["tenant_id"], p.row["job_id"]) for p in batch}
    try:
        with engine.begin() as conn:
            found: dict[tuple[str, str], int] = {}
            if any(pending.maybe_stored for pending in batch):
                found = {
                    (tenant, job): id_
                    for id_, tenant, job in conn.execute(
                        sa.select(_n.c.id, _n.c.tenant_id, _n.c.job_id).where(
                            _n.c.tenant_id.in_({t for t, _ in keys}),
                            _n.c.job_id.in_({j for _, j in keys}),
                        )
                    )
                    if (tenant, job) in keys
                }
            new: dict[tuple[str, str], _Pending] = {}
            for pending in batch:
                key = (pending.row["tenant_id"], pending.row["job_id"])
                if key not in found:
                    new.setdefault(key, pending)
            if new:
                rows = [pending.row for pending in new.values()]
                ids = conn.execute(_INSERT_RETURNING, rows).scalars().all()
                found.update(zip(new, ids, strict=True))
    except Exception:  # each row on its own: a caller gets only its own row's error
        for pending in batch:
            try:
                pending.id = _store_one(engine, pending.row)
            except Exception as exc:
                pending.error = exc
        return
    for pending in batch:
        pending.id = int(found[(pending.row["tenant_id"], pending.row["job_id"])])


def _store_group(batch: builtins.list[_Pending]) -> None:
    _store_batch(batch[0].engine, batch)


# Group commit of in-app notifications stored by jobs (store with a job id), like the
# webhook delivery log's: the worker threads of a process hand their rows to one writer
# thread, which stores every row waiting, per engine, in one transaction (_store_batch)
# and then wakes their threads. A caller returns only once its row is committed, so a job
# never completes before its notification is stored.
_WRITER: GroupCommit[_Pending] = GroupCommit(
    _store_group, name="notification-store", batch=256, idle_seconds=5.0,
    key=lambda pending: id(pending.engine),
)  # fmt: skip


def _cursor(cursor: str | None) -> int | None:
    if cursor is None or cursor == "":
        return None
    # ASCII digits only: str.isdigit also takes "²" and "٣", which int() refuses or reads.
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 18:
        raise PayloadError([("cursor", f"{cursor!r} is not a cursor from an earlier page")])
    return int(cursor)


def list_notifications(
    tenant_id: str,
    user_id: str,
    *,
    unread_only: bool = False,
    limit: int = 50,
    cursor: str | None = None,
    engine: Engine | None = None,
    now: dt.datetime | None = None,
) -> Page:
    """The user's notifications that have not expired, newest first, `limit` (1-200) a
    page; pass a page's `next_cursor` for the next one. Raises PayloadError for a bad
    limit, cursor or user id."""
    user_id = check_user_id(user_id)
    if not 1 <= limit <= MAX_PAGE:
        raise PayloadError([("limit", f"must be 1-{MAX_PAGE}")])
    before = _cursor(cursor)
    query = sa.select(*_COLUMNS).where(_mine(tenant_id, user_id, _now(now)))
    if unread_only:
        query = query.where(_n.c.read_at.is_(None))
    if before is not None:
        query = query.where(_n.c.id < before)
    query = query.order_by(_n.c.id.desc()).limit(limit + 1)
    with _engine(engine).connect() as conn:
        rows = conn.execute(query).all()
    items = tuple(Notification(*row) for row in rows[:limit])
    more = len(rows) > limit
    return Page(items, str(items[-1].id) if more else None)


list = list_notifications  # crmqueue.notifications.list, the CLI's name


def unread_count(
    tenant_id: str, user_id: str, *, engine: Engine | None = None, now: dt.datetime | None = None
) -> int:
    user_id = check_user_id(user_id)
    query = sa.select(sa.func.count()).where(
        _mine(tenant_id, user_id, _now(now)), _n.c.read_at.is_(None)
    )
    with _engine(engine).connect() as conn:
        return int(conn.execute(query).scalar_one())


def mark_read(
    tenant_id: str,
    user_id: str,
    notification_id: int,
    *,
    engine: Engine | None = None,
    now: dt.datetime | None = None,
) -> bool:
    """Mark one of the user's notifications read; False when the user has no such
    notification (unknown, expired, or another user's or tenant's: nothing changes).
    Marking a read one again keeps its first read time. An id that is not a positive
    BIGINT (MAX_ID) names no notification: False, not an overflow in the driver."""
    user_id = check_user_id(user_id)
    if isinstance(notification_id, bool) or not 0 < notification_id <= MAX_ID:
        return False
    stamp = _now(now)
    with _engine(engine).begin() as conn:
        found = conn.execute(
            sa.select(_n.c.read_at).where(
                _mine(tenant_id, user_id, stamp), _n.c.id == notification_id
            )
        ).first()
        if found is None:
            return False
        if found.read_at is None:
            conn.execute(
                _n.update()
                .where(_n.c.tenant_id == tenant_id, _n.c.user_id == user_id)
                .where(_n.c.id == notification_id, _n.c.read_at.is_(None))
                .values(read_at=stamp)
            )
    return True


def mark_all_read(
    tenant_id: str, user_id: str, *, engine: Engine | None = None, now: dt.datetime | None = None
) -> int:
    """Mark every unread notification of the user read; returns how many."""
    user_id = check_user_id(user_id)
    stamp = _now(now)
    with _engine(engine).begin() as conn:
        result = conn.execute(
            _n.update()
            .where(_mine(tenant_id, user_id, stamp), _n.c.read_at.is_(None))
            .values(read_at=stamp)
        )
    return int(result.rowcount)


def purge_expired(
    tenant_id: str, *, engine: Engine | None = None, now: dt.datetime | None = None
) -> int:
    """Delete the tenant's expired notifications; returns how many. (They are hidden from
    the moment they expire; this only reclaims the rows.)"""
    with _engine(engine).begin() as conn:
        result = conn.execute(
            _n.delete().where(_n.c.tenant_id == tenant_id, _n.c.expires_at <= _now(now))
        )
    return int(result.rowcount)


# --------------------------------------------------------------------------- preferences


@dataclass(frozen=True)
class Preferences:
    """A user's own choices: category (or "*") -> channels on, and quiet hours
    ("HH:MM", "HH:MM") in `time_zone` (None: no quiet hours; a zone of None is UTC).
    `known`: the user is in the tenant's ``users`` table (without it, only the tenant
    defaults apply and nothing can be set)."""

    tenant_id: str
    user_id: str
    own: dict[str, tuple[str, ...]]
    time_zone: str | None
    quiet_hours: tuple[str, str] | None
    known: bool = True

    def to_dict(
        self, settings: Settings | None = None, categories: Iterable[str] = ()
    ) -> dict[str, Any]:
        """JSON-ready, with the channels in effect for `categories` (and "*")."""
        effective = {}
        for category in ("*", *categories, *(c for c in self.own if c != "*")):
            channels, source = channels_for(self, category, _settings(settings))
            effective[category] = {"channels": [*channels], "source": source}
        return {
            "tenant_id": self.tenant_id, "user_id": self.user_id,
            "own": {key: [*value] for key, value in self.own.items()},
            "effective": effective, "time_zone": self.time_zone,
            "quiet_hours": [*self.quiet_hours] if self.quiet_hours else None,
            "known": self.known,
        }  # fmt: skip


_p = schema.notification_preferences


def _check_category(category: str, allow_all: bool = True) -> str:
    import re

    from crmqueue.config import CATEGORY_PATTERN

    if (allow_all and category == "*") or (
        len(category) <= 100 and re.fullmatch(CATEGORY_PATTERN, category)
    ):
        return category
    raise PayloadError(
        [("category", f"{category!r} is not a category (dotted lowercase words, or *)")]
    )


_OWN_CHOICES = sa.select(_p.c.category, _p.c.channels).where(
    _p.c.tenant_id == sa.bindparam("tenant_id"), _p.c.user_id == sa.bindparam("user_id")
)


def get_preferences(tenant_id: str, user_id: str, *, engine: Engine | None = None) -> Preferences:
    """The user's preferences; for a user not in ``users``, the tenant defaults with
    `known` False (the notification job still stores in-app for them)."""
    user_id = check_user_id(user_id)
    engine = _engine(engine)
    with engine.connect() as conn:  # one connection for both reads (one per job)
        rows = conn.execute(_OWN_CHOICES, {"tenant_id": tenant_id, "user_id": user_id}).all()
        user = get_user(conn, tenant_id, user_id)
    quiet = None
    if user is not None and user.quiet_start and user.quiet_end:
        quiet = (user.quiet_start, user.quiet_end)
    return Preferences(
        tenant_id, user_id, {row.category: tuple(row.channels) for row in rows},
        user.time_zone if user else None, quiet, user is not None,
    )  # fmt: skip


class _RecentPreferences:
    """Preferences read lately by this process, for recent_preferences: the notification
    queue reads a user's preferences for every job, and a burst for one user would read
    the same rows thousands of times a second. Kept `max_age` seconds; forgotten at once
    when this process changes preferences, quiet hours or users (set_preferences,
    set_quiet_hours, crmqueue.crm.users.add_user); another process's change is seen
    within `max_age`. A read that raced with a change is not kept."""

    SIZE = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._kept: dict[tuple[int, str, str], tuple[float, int, Preferences]] = {}

    def get(self, engine: Engine, tenant_id: str, user_id: str, max_age: float) -> Preferences:
        from crmqueue.crm.users import changes

        key = (id(engine), tenant_id, user_id)
        with self._lock:
            kept = self._kept.get(key)
            generation = self._generation + changes()
        now = time.monotonic()
        if kept is not None and now - kept[0] <= max_age and kept[1] == generation:
            return kept[2]
        found = get_preferences(tenant_id, user_id, engine=engine)
        with self._lock:
            if self._generation + changes() == generation:
                if len(self._kept) >= self.SIZE:
                    self._kept.clear()
                self._kept[key] = (now, generation, found)
        return found

    def changed(self) -> None:
        with self._lock:
            self._generation += 1
            self._kept.clear()


_RECENT = _RecentPreferences()


def recent_preferences(
    tenant_id: str, user_id: str, *, max_age: float, engine: Engine | None = None
) -> Preferences:
    """get_preferences, answered from this process's reads of the last `max_age` seconds
    (notifications.preferences_cache_seconds; 0 reads every time). A change made in this
    process applies at once; one made by another process within `max_age`."""
    if max_age <= 0:
        return get_preferences(tenant_id, user_id, engine=engine)
    return _RECENT.get(_engine(engine), tenant_id, check_user_id(user_id), max_age)


def _no_user(tenant_id: str, user_id: str) -> str:
    return f"tenant {tenant_id!r} has no user {user_id!r} (crmqueue users add)"


def set_preferences(
    tenant_id: str,
    user_id: str,
    category: str,
    channels: Sequence[str] | None,
    *,
    engine: Engine | None = None,
) -> Preferences:
    """The user's own channels for `category` ("*": every category without a choice of
    its own); None removes the choice (the tenant defaults apply again). An empty list
    turns every channel off. The user must exist (crmqueue users add), as for
    set_quiet_hours. Raises PayloadError for an unknown category, channel or user."""
    user_id = check_user_id(user_id)
    _check_category(category)
    if channels is not None:
        unknown = [name for name in channels if name not in CHANNELS]
        if unknown:
            raise PayloadError(
                [("channels", f"unknown {', '.join(map(repr, unknown))} (channels:"
                  f" {', '.join(CHANNELS)})")]
            )  # fmt: skip
    engine = _engine(engine)
    if get_user(engine, tenant_id, user_id) is None:
        raise PayloadError([("user_id", _no_user(tenant_id, user_id))])
    where = (_p.c.tenant_id == tenant_id, _p.c.user_id == user_id, _p.c.category == category)
    with engine.begin() as conn:
        conn.execute(_p.delete().where(*where))
        if channels is not None:
            conn.execute(
                _p.insert().values(
                    tenant_id=tenant_id, user_id=user_id, category=category,
                    channels=[*dict.fromkeys(channels)], updated_at=_now(None),
                )
            )  # fmt: skip
    _RECENT.changed()
    return get_preferences(tenant_id, user_id, engine=engine)


def set_quiet_hours(
    tenant_id: str,
    user_id: str,
    start: str | None,
    end: str | None,
    *,
    time_zone: str | None = None,
    engine: Engine | None = None,
) -> Preferences:
    """Quiet hours from `start` to `end` ("HH:MM", local time of the user's time zone; a
    window past midnight when start > end); both None removes them. `time_zone` (IANA)
    also sets the user's zone. The user must exist (crmqueue users add). Raises
    PayloadError naming the bad field."""
    user_id = check_user_id(user_id)
    engine = _engine(engine)
    if (start is None) != (end is None):
        raise PayloadError([("quiet_hours", "give both start and end, or neither")])
    if start is not None and end is not None:
        check_hhmm(start, "quiet_start")
        check_hhmm(end, "quiet_end")
        if start == end:
            raise PayloadError([("quiet_hours", "start and end must differ")])
    if time_zone is not None:
        check_time_zone(time_zone)
    values: dict[str, Any] = {"quiet_start": start, "quiet_end": end}
    if time_zone is not None:
        values["time_zone"] = time_zone
    users = schema.users
    with engine.begin() as conn:
        changed = conn.execute(
            users.update()
            .where(users.c.tenant_id == tenant_id, users.c.user_id == user_id)
            .values(**values)
        ).rowcount
    _RECENT.changed()
    if not changed:
        raise PayloadError([("user_id", _no_user(tenant_id, user_id))])
    return get_preferences(tenant_id, user_id, engine=engine)


def channels_for(
    preferences: Preferences, category: str, settings: Settings
) -> tuple[tuple[str, ...], str]:
    """(channels on for `category`, where that comes from): the user's own choice for
    the category, else for "*", else the tenant defaults of the configuration
    (NotificationSettings.default_for)."""
    for key in (category, "*"):
        if key in preferences.own:
            return preferences.own[key], f"user's choice for {key}"
    return settings.notifications.default_for(preferences.tenant_id, category)


def plan_channels(
    requested: Sequence[str] | None, preferences: Preferences, category: str, settings: Settings
) -> tuple[builtins.list[str], dict[str, str]]:
    """(channels to deliver, channel -> why it is skipped). Without `requested` channels
    the preferences choose. Requested channels go out unless the user turned them off
    (for the category or "*"): a tenant default never removes a channel the producer
    asked for."""
    enabled, _source = channels_for(preferences, category, settings)
    user_chose = category in preferences.own or "*" in preferences.own
    wanted = [*enabled] if requested is None else [*requested]
    send: builtins.list[str] = []
    skipped: dict[str, str] = {}
    for channel in wanted:
        if requested is not None and user_chose and channel not in enabled:
            skipped[channel] = f"off in the user's preferences for {category}"
        elif channel not in BUILT_CHANNELS:
            skipped[channel] = NOT_AVAILABLE
        else:
            send.append(channel)
    return send, skipped


# --------------------------------------------------------------------------- quiet hours


def _wall(instant: dt.datetime, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def first_instant_at(day: dt.date, at: dt.time, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    """The first moment (UTC) at which the clocks of `zone` show `at` on `day` or later:
    on a day that repeats an hour (DST ends) its first pass; on a day that skips it (DST
    starts) the moment the clocks jump past it."""
    wall = dt.datetime.combine(day, at)
    first = wall.replace(tzinfo=zone, fold=0).astimezone(dt.UTC)
    if _wall(first, zone) == wall:
        return first  # it exists (fold=0 is the earlier of two passes)
    # In a gap: fold=1 reads it with the offset after the jump (too early), fold=0 with
    # the one before (too late); the jump lies between. Find it to the second.
    low = int(wall.replace(tzinfo=zone, fold=1).timestamp())
    high = int(first.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if _wall(dt.datetime.fromtimestamp(middle, dt.UTC), zone) >= wall:
            high = middle
        else:
            low = middle
    return dt.datetime.fromtimestamp(high, dt.UTC)


def quiet_until(
    now: dt.datetime, zone: zoneinfo.ZoneInfo | str, start: str, end: str
) -> dt.datetime | None:
    """When the quiet hours `start`-`end` ("HH:MM" in `zone`) that `now` falls in end
    (UTC), or None if `now` is outside them. A window with start > end runs past
    midnight (22:00-07:00). Both ends are moments on the local clock, found across DST
    changes (first_instant_at): the 07:00 that ends a night of a DST change is 07:00 in
    the new offset, and a window that ended in a repeated hour does not start again."""
    tz = zoneinfo.ZoneInfo(zone) if isinstance(zone, str) else zone
    begin, finish = dt.time.fromisoformat(start), dt.time.fromisoformat(end)
    moment = now.astimezone(dt.UTC)
    today = moment.astimezone(tz).date()
    for day in (today, today - dt.timedelta(days=1)):
        opened = first_instant_at(day, begin, tz)
        if opened > moment:
            continue
        # The latest window that opened at or before now: quiet while it has not closed.
        close_day = day if begin < finish else day + dt.timedelta(days=1)
        closes = first_instant_at(close_day, finish, tz)
        return closes if moment < closes else None
    return None
