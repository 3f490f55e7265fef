"""Web push subscriptions in the CRM store (``push_subscriptions``): added (or refreshed:
a browser that subscribes again may bring new keys), listed, removed, and marked after a
send. Every call names the tenant AND the user; nothing here checks values (that is
crmqueue.push's job, before they get here)."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from crmqueue.crm import schema

__all__ = [
    "StoredSubscription",
    "count",
    "delete",
    "delete_id",
    "endpoint_hash",
    "list_for_user",
    "mark_sent",
    "upsert",
]

_s = schema.push_subscriptions


@dataclass(frozen=True)
class StoredSubscription:
    id: int
    tenant_id: str
    user_id: str
    endpoint: str
    p256dh: str
    auth: str
    user_agent: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    last_sent_at: dt.datetime | None
    last_job_id: str | None
    last_status: int | None


_COLUMNS = (
    _s.c.id, _s.c.tenant_id, _s.c.user_id, _s.c.endpoint, _s.c.p256dh, _s.c.auth,
    _s.c.user_agent, _s.c.created_at, _s.c.updated_at, _s.c.last_sent_at, _s.c.last_job_id,
    _s.c.last_status,
)  # fmt: skip


def endpoint_hash(endpoint: str) -> str:
    """The unique key of an endpoint: hex SHA-256 of its UTF-8 text."""
    return hashlib.sha256(endpoint.encode()).hexdigest()


def _mine(tenant_id: str, user_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(_s.c.tenant_id == tenant_id, _s.c.user_id == user_id)


def upsert(
    engine: Engine,
    tenant_id: str,
    user_id: str,
    endpoint: str,
    p256dh: str,
    auth: str,
    user_agent: str | None,
    now: dt.datetime,
) -> tuple[StoredSubscription, bool]:
    """Store the subscription, or refresh the user's one with that endpoint (keys, user
    agent); (the row, True when it is new)."""
    key = endpoint_hash(endpoint)
    where = sa.and_(_mine(tenant_id, user_id), _s.c.endpoint_hash == key)
    values: dict[str, Any] = {"p256dh": p256dh, "auth": auth, "user_agent": user_agent,
                              "updated_at": now}  # fmt: skip
    created = True
    try:
        with engine.begin() as conn:
            conn.execute(
                _s.insert().values(
                    tenant_id=tenant_id, user_id=user_id, endpoint=endpoint,
                    endpoint_hash=key, created_at=now, **values,
                )
            )  # fmt: skip
    except IntegrityError:  # the user has it: refresh its keys
        created = False
        with engine.begin() as conn:
            conn.execute(_s.update().where(where).values(**values))
    with engine.connect() as conn:
        row = conn.execute(sa.select(*_COLUMNS).where(where)).one()
    return StoredSubscription(**row._mapping), created


def list_for_user(engine: Engine, tenant_id: str, user_id: str) -> list[StoredSubscription]:
    """The user's subscriptions, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(*_COLUMNS).where(_mine(tenant_id, user_id)).order_by(_s.c.id)
        ).all()
    return [StoredSubscription(**row._mapping) for row in rows]


def count(engine: Engine, tenant_id: str, user_id: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(_s).where(_mine(tenant_id, user_id))
            ).scalar_one()
        )


def delete(engine: Engine, tenant_id: str, user_id: str, endpoint: str) -> bool:
    """Remove the user's subscription with `endpoint`; False if there is none."""
    with engine.begin() as conn:
        result = conn.execute(
            _s.delete().where(
                _mine(tenant_id, user_id), _s.c.endpoint_hash == endpoint_hash(endpoint)
            )
        )
    return bool(result.rowcount)


def delete_id(engine: Engine, tenant_id: str, user_id: str, subscription_id: int) -> bool:
    """Remove the user's subscription `subscription_id` (the push service said it is gone);
    False if there is none."""
    with engine.begin() as conn:
        result = conn.execute(
            _s.delete().where(_mine(tenant_id, user_id), _s.c.id == subscription_id)
        )
    return bool(result.rowcount)


def mark_sent(
    engine: Engine,
    tenant_id: str,
    subscription_id: int,
    *,
    job_id: str | None,
    status: int,
    now: dt.datetime,
) -> None:
    """Record a push service's answer to a send to the subscription: its status, and for
    a success the job that sent it (a retry of that job skips it)."""
    values: dict[str, Any] = {"last_status": status}
    if 200 <= status < 300:
        values.update(last_sent_at=now, last_job_id=job_id)
    with engine.begin() as conn:
        conn.execute(
            _s.update()
            .where(_s.c.tenant_id == tenant_id, _s.c.id == subscription_id)
            .values(**values)
        )
