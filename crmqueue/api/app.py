"""The FastAPI application: routers, the caller's role, crmqueue's errors as HTTP.

``create_app(settings)`` builds it over the process broker (crmqueue.engine.queues) of
those settings; crmqueue.api.server serves it with uvicorn.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crmqueue import __version__
from crmqueue.api import dashboard as dashboard_routes
from crmqueue.api import jobs, notifications, webhooks
from crmqueue.api.auth import FailureLimiter, TokenTable
from crmqueue.api.deps import ApiState, Caller, require_admin
from crmqueue.api.metrics import registry_for, render
from crmqueue.api.views import Problem, ValidationProblem
from crmqueue.config import Settings
from crmqueue.engine.queues import configure, get_broker
from crmqueue.errors import (
    ConfigError,
    CrmQueueError,
    InvalidJobState,
    JobNotFound,
    PayloadError,
    QuotaExceeded,
    StorageUnavailable,
)

# Every /api/v1 route may answer these; documented so that the OpenAPI stays accurate.
_COMMON: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no token, or an unknown one"},
    403: {"model": Problem, "description": "the token's role may not use this route"},
    404: {"model": Problem, "description": "not found (or another tenant's)"},
    409: {"model": Problem, "description": "not allowed in the object's state"},
    422: {"model": ValidationProblem, "description": "every bad field"},
    429: {"model": Problem, "description": "too many failed token checks"},
    503: {"model": Problem, "description": "the queue storage is unreachable"},
}


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _payload_problem(errors: list[tuple[str, str]]) -> JSONResponse:
    text = "; ".join(f"{field}: {reason}" for field, reason in errors)
    body = {
        "detail": f"invalid: {text}",
        "errors": [{"field": field, "message": reason} for field, reason in errors],
    }
    return JSONResponse(body, status_code=422)


def _not_found_types() -> tuple[type[Exception], ...]:
    from crmqueue.webhooks import DeliveryNotFound, EndpointNotFound, MessageNotFound

    return (JobNotFound, EndpointNotFound, DeliveryNotFound, MessageNotFound)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 (RFC 9110
    15.5.14) before the route reads it: by its Content-Length, or, without one (chunked),
    once the bytes received pass the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await self._refuse(send)
                return
        received = 0
        over = False

        async def counted() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # the route sees a cut body, broken by a NUL
                    over = True
                    return {"type": "http.request", "body": b"\x00", "more_body": False}
            return message

        async def watched(message: Message) -> None:
            if not over:
                await send(message)
            elif message["type"] == "http.response.start":
                await self._refuse(send)  # instead of the route's answer to the cut body

        await self.app(scope, counted, watched)

    async def _refuse(self, send: Send) -> None:
        detail = f"request body over {self.limit:,} bytes (api.max_body_bytes)"
        await _problem(413, detail)({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def _install_errors(app: FastAPI) -> None:
    not_found = _not_found_types()

    @app.exception_handler(StarletteHTTPException)  # FastAPI's own and Starlette's
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer when the JSON parser itself fails (not UTF-8, nesting too
            # deep, an integer over Python's digit limit): a bad field like any other.
            return _payload_problem([("body", "not JSON this server can read")])
        return _problem(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for error in exc.errors():
            loc = [str(part) for part in error.get("loc", ())]
            errors.append((".".join(loc) or "(request)", str(error.get("msg", "invalid"))))
        return _payload_problem(errors)

    @app.exception_handler(CrmQueueError)
    async def crmqueue_error(_request: Request, exc: CrmQueueError) -> JSONResponse:
        if isinstance(exc, QuotaExceeded):  # a PayloadError: 429 with the wait (issue #17)
            return _problem(429, str(exc), {"Retry-After": str(exc.retry_after)})
        if isinstance(exc, PayloadError):
            return _payload_problem(exc.errors)
        if isinstance(exc, not_found):
            return _problem(404, str(exc))
        if isinstance(exc, InvalidJobState):
            return _problem(409, str(exc))
        if isinstance(exc, StorageUnavailable):
            return _problem(503, str(exc))
        if isinstance(exc, ConfigError):
            return _problem(422, str(exc))
        return _problem(422, str(exc))


def create_app(settings: Settings | None = None) -> FastAPI:
    """The admin API over the broker of `settings` (default: the process broker).
    ConfigError for a malformed ``[api] tokens`` entry."""
    broker = configure(settings) if settings is not None else get_broker()
    config = broker.settings.api
    state = ApiState(
        settings=broker.settings,
        broker=broker,
        tokens=TokenTable(config.tokens),
        limiter=FailureLimiter(config.auth_failures_per_minute),
    )
    app = FastAPI(
        title="crmqueue admin API",
        version=__version__,
        description="Jobs, queues, notifications and webhook endpoints of crmqueue."
        " Every /api/v1 route needs `Authorization: Bearer <token>`"
        " (`crmqueue api token create`).",
        # Swagger UI and ReDoc load their scripts from a CDN: not served (the document is).
        docs_url=None,
        redoc_url=None,
    )
    app.state.crmqueue = state
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    _install_errors(app)
    for module in (jobs, notifications, webhooks):
        app.include_router(module.router, responses=_COMMON)
    app.include_router(dashboard_routes.router, responses=_COMMON)  # the page at / (#15)
    registry = registry_for(broker)

    @app.get("/healthz", tags=["probes"], response_model=dict[str, str])
    def healthz() -> dict[str, str]:
        """Liveness: the API process answers (no token, no storage call)."""
        return {"status": "ok"}

    metrics_responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4"},
        401: _COMMON[401],
        403: _COMMON[403],
        429: _COMMON[429],
    }
    if config.metrics_require_token:

        @app.get("/metrics", tags=["probes"], response_class=Response, responses=metrics_responses)
        def metrics(role: Caller) -> Response:
            """Prometheus metrics (see crmqueue.api.metrics); an admin token."""
            require_admin(role)
            return Response(render(registry), media_type="text/plain; version=0.0.4")

    else:

        @app.get("/metrics", tags=["probes"], response_class=Response, responses=metrics_responses)
        def open_metrics() -> Response:
            """Prometheus metrics (see crmqueue.api.metrics)."""
            return Response(render(registry), media_type="text/plain; version=0.0.4")

    return app
