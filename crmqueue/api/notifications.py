"""``/api/v1/notifications``: the calling user's in-app inbox (crmqueue.notifications)
and a server-sent-events stream of new notifications."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from crmqueue import notifications
from crmqueue.api.auth import Role
from crmqueue.api.deps import ApiState, Caller, State, not_found
from crmqueue.errors import PayloadError
from crmqueue.notifications import Notification

router = APIRouter(tags=["notifications"])
KEEPALIVE_SECONDS = 15.0


class NotificationView(BaseModel):
    id: int
    category: str
    title: str
    message: str
    action_url: str | None
    priority: int
    created_at: str
    read: bool
    read_at: str | None
    expires_at: str | None


class NotificationPage(BaseModel):
    items: list[NotificationView]
    next_cursor: str | None
    unread: int


class UnreadCount(BaseModel):
    unread: int


class Marked(BaseModel):
    marked: int


TenantQuery = Annotated[
    str | None, Query(max_length=64, description="Admin token: the tenant. Others: omit.")
]
UserQuery = Annotated[
    str | None, Query(max_length=64, description="Admin or tenant token: the user. User: omit.")
]


def _user(role: Role, tenant_id: str | None, user_id: str | None) -> tuple[str, str]:
    """(tenant, user) whose inbox this call reads: a user token's own (another one given:
    404), a tenant token's tenant with `user_id`, an admin's `tenant_id` and `user_id`."""
    if role.user is not None:
        if (tenant_id not in (None, role.tenant)) or (user_id not in (None, role.user)):
            raise not_found("user")
        assert role.tenant is not None
        return role.tenant, role.user
    if role.admin:
        tenant = tenant_id
    else:
        if tenant_id not in (None, role.tenant):
            raise not_found("user")
        tenant = role.tenant
    missing = [name for name, value in (("tenant_id", tenant), ("user_id", user_id)) if not value]
    if missing:
        raise PayloadError([(name, f"required with a {role} token") for name in missing])
    assert tenant is not None and user_id is not None
    return tenant, user_id


@router.get("/api/v1/notifications", response_model=NotificationPage)
def list_notifications(
    role: Caller,
    app: State,
    tenant_id: TenantQuery = None,
    user_id: UserQuery = None,
    unread: bool = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=18)] = None,
) -> dict[str, Any]:
    """The user's notifications, newest first, with the unread count."""
    tenant, user = _user(role, tenant_id, user_id)
    engine = app.crm_engine()
    page = notifications.list_notifications(
        tenant, user, unread_only=unread, limit=limit, cursor=cursor, engine=engine
    )
    count = notifications.unread_count(tenant, user, engine=engine)
    return {
        "items": [n.to_dict() for n in page.items],
        "next_cursor": page.next_cursor,
        "unread": count,
    }


@router.get("/api/v1/notifications/unread-count", response_model=UnreadCount)
def unread_count(
    role: Caller, app: State, tenant_id: TenantQuery = None, user_id: UserQuery = None
) -> UnreadCount:
    tenant, user = _user(role, tenant_id, user_id)
    return UnreadCount(unread=notifications.unread_count(tenant, user, engine=app.crm_engine()))


@router.post("/api/v1/notifications/read-all", response_model=Marked)
def mark_all_read(
    role: Caller, app: State, tenant_id: TenantQuery = None, user_id: UserQuery = None
) -> Marked:
    """Mark every unread notification of the user read."""
    tenant, user = _user(role, tenant_id, user_id)
    return Marked(marked=notifications.mark_all_read(tenant, user, engine=app.crm_engine()))


@router.post("/api/v1/notifications/{notification_id}/read", response_model=Marked)
def mark_read(
    notification_id: Annotated[int, Path(ge=1, le=notifications.MAX_ID)],
    role: Caller,
    app: State,
    tenant_id: TenantQuery = None,
    user_id: UserQuery = None,
) -> Marked:
    """Mark one notification read; 404 unless it is the user's (and not expired)."""
    tenant, user = _user(role, tenant_id, user_id)
    if not notifications.mark_read(tenant, user, notification_id, engine=app.crm_engine()):
        raise not_found(f"notification {notification_id}")
    return Marked(marked=1)


# PostgreSQL hands out ids at insert, so a notification can commit after one with a
# higher id: a stream looks this far back for ids below its high mark it has not sent.
LATE_COMMIT_SECONDS = 60.0
MAX_SENT_IDS = 10_000  # ids a stream remembers as sent (for the look-back)


def _pages(app: ApiState, tenant: str, user: str) -> Iterator[Sequence[Notification]]:
    engine = app.crm_engine()
    cursor = None
    while True:
        page = notifications.list_notifications(
            tenant, user, limit=notifications.MAX_PAGE, cursor=cursor, engine=engine
        )
        yield page.items
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def _newer(
    app: ApiState, tenant: str, user: str, after: int, sent: set[int]
) -> list[dict[str, Any]]:
    """The user's notifications not sent yet, oldest first: ids above `after`, and those
    below it stored in the last LATE_COMMIT_SECONDS whose ids are not in `sent`."""
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=LATE_COMMIT_SECONDS)
    found: list[dict[str, Any]] = []
    for items in _pages(app, tenant, user):
        for n in items:
            if n.id > after or (n.id not in sent and n.created_at >= cutoff):
                found.append(n.to_dict())
        if not items or (items[-1].id <= after and items[-1].created_at < cutoff):
            break
    return found[::-1]


def _start(app: ApiState, tenant: str, user: str, after: int | None) -> tuple[int, set[int]]:
    """(high mark, ids taken as sent): `after` (Last-Event-ID) or the newest id, and the
    ids at or below it stored in the last LATE_COMMIT_SECONDS."""
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=LATE_COMMIT_SECONDS)
    newest = 0
    recent: set[int] = set()
    for items in _pages(app, tenant, user):
        for n in items:
            newest = max(newest, n.id)
            if n.created_at >= cutoff:
                recent.add(n.id)
        if not items or items[-1].created_at < cutoff:
            break
    mark = newest if after is None else after
    return mark, {i for i in recent if i <= mark}


@router.get(
    "/api/v1/notifications/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "SSE stream"}},
)
async def stream(
    request: Request,
    role: Caller,
    app: State,
    tenant_id: TenantQuery = None,
    user_id: UserQuery = None,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> StreamingResponse:
    """Server-sent events (WHATWG HTML "Server-sent events"): an ``event: notification``
    with the notification's JSON for each new one, its id as the event id (a reconnect
    with Last-Event-ID gets what it missed); within ``[api] stream_poll_seconds`` of its
    storing; a comment line every 15 s keeps proxies from closing the connection."""
    tenant, user = _user(role, tenant_id, user_id)
    given = None
    if last_event_id and last_event_id.isascii() and last_event_id.isdigit():
        given = int(last_event_id)
    after, sent = await run_in_threadpool(_start, app, tenant, user, given)
    poll = app.settings.api.stream_poll_seconds

    async def events() -> AsyncIterator[bytes]:
        nonlocal after, sent
        yield b"retry: 1000\n: connected\n\n"
        quiet = 0.0
        while not await request.is_disconnected():
            fresh = await run_in_threadpool(_newer, app, tenant, user, after, sent)
            for item in fresh:
                after = max(after, int(item["id"]))
                sent.add(int(item["id"]))
                data = json.dumps(item, separators=(",", ":"))
                yield f"id: {item['id']}\nevent: notification\ndata: {data}\n\n".encode()
            if len(sent) > MAX_SENT_IDS:  # the lowest ids are long past the look-back
                sent = set(sorted(sent)[-MAX_SENT_IDS // 2 :])
            quiet = 0.0 if fresh else quiet + poll
            if quiet >= KEEPALIVE_SECONDS:
                quiet = 0.0
                yield b": keepalive\n\n"
            await asyncio.sleep(poll)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
