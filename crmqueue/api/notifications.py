"""``/api/v1/notifications``: the calling user's in-app inbox (crmqueue.notifications)
and a server-sent-events stream of new notifications."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from crmqueue import notifications
from crmqueue.api.auth import Role
from crmqueue.api.deps import ApiState, Caller, State, not_found
from crmqueue.errors import PayloadError

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


def _newer(app: ApiState, tenant: str, user: str, after: int) -> list[dict[str, Any]]:
    """The user's notifications with ids above `after`, oldest first."""
    engine = app.crm_engine()
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = notifications.list_notifications(
            tenant, user, limit=notifications.MAX_PAGE, cursor=cursor, engine=engine
        )
        fresh = [n.to_dict() for n in page.items if n.id > after]
        found += fresh
        if len(fresh) < len(page.items) or page.next_cursor is None:
            return found[::-1]
        cursor = page.next_cursor


def _newest_id(app: ApiState, tenant: str, user: str) -> int:
    page = notifications.list_notifications(tenant, user, limit=1, engine=app.crm_engine())
    return page.items[0].id if page.items else 0


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
    if last_event_id and last_event_id.isascii() and last_event_id.isdigit():
        after = int(last_event_id)
    else:
        after = await run_in_threadpool(_newest_id, app, tenant, user)
    poll = app.settings.api.stream_poll_seconds

    async def events() -> AsyncIterator[bytes]:
        nonlocal after
        yield b"retry: 1000\n: connected\n\n"
        quiet = 0.0
        while not await request.is_disconnected():
            fresh = await run_in_threadpool(_newer, app, tenant, user, after)
            for item in fresh:
                after = max(after, int(item["id"]))
                data = json.dumps(item, separators=(",", ":"))
                yield f"id: {item['id']}\nevent: notification\ndata: {data}\n\n".encode()
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
