"""What every route shares: the app's state, the caller's role (401/429), role checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from crmqueue.api.auth import FailureLimiter, Role, TokenTable
from crmqueue.config import Settings
from crmqueue.engine.queues import Broker


@dataclass
class ApiState:
    settings: Settings
    broker: Broker
    tokens: TokenTable
    limiter: FailureLimiter

    def crm_engine(self) -> Any:
        from crmqueue.crm.store import get_engine

        return get_engine(self.settings.database.url)


def state(request: Request) -> ApiState:
    found: ApiState = request.app.state.crmqueue
    return found


_bearer = HTTPBearer(auto_error=False, description="A token from `crmqueue api token create`.")


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Role:
    """The role of the bearer token; 401 without a (known) token, 429 after too many
    failures from this client address (with Retry-After)."""
    app = state(request)
    client = _client(request)
    wait = app.limiter.blocked(client)
    if wait is not None:
        raise HTTPException(
            429,
            "too many failed token checks from this address; try again later",
            headers={"Retry-After": str(max(1, round(wait)))},
        )
    if credentials is None or not credentials.credentials:
        app.limiter.failed(client)
        raise _unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    role = app.tokens.role_of(credentials.credentials)
    if role is None:
        app.limiter.failed(client)
        raise _unauthorized("unknown token")
    return role


Caller = Annotated[Role, Depends(caller)]
State = Annotated[ApiState, Depends(state)]


def require_admin(role: Role) -> None:
    if not role.admin:
        raise HTTPException(403, "this route needs an admin token")


def require_tenant_role(role: Role) -> None:
    """Admin or tenant tokens; a user token sees its notifications only."""
    if role.user is not None:
        raise HTTPException(403, "a user token reaches only its own notifications")


def not_found(what: str) -> HTTPException:
    return HTTPException(404, f"{what} not found")


def tenant_for(role: Role, tenant_id: str | None) -> str:
    """The tenant a tenant-scoped route acts for: the token's own (another one given: 404,
    as if it did not exist), or for an admin the `tenant_id` query parameter (required)."""
    require_tenant_role(role)
    if role.admin:
        if not tenant_id:
            from crmqueue.errors import PayloadError

            raise PayloadError([("tenant_id", "required with an admin token")])
        return tenant_id
    assert role.tenant is not None
    if tenant_id is not None and tenant_id != role.tenant:
        raise not_found(f"tenant {tenant_id}")
    return role.tenant
