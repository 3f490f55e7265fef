"""The live dashboard (issue #15 item 3): its page and assets at ``/``, and the one route
the JSON API lacked for it, the per-minute throughput history of every queue.

The page (crmqueue/api/static: HTML, CSS, vanilla JS, no build step, no CDN) is a client
of the admin API's JSON routes only. It is served with a strict Content-Security-Policy
(``default-src 'self'``, no inline script or style), so injected markup cannot run even if
a rendering bug let it in; the script inserts every value with ``textContent``.

The assets are package data (pyproject.toml ``[tool.setuptools.package-data]``; the
executable gets them through build/crmqueue.spec's ``collect_data_files("crmqueue")``),
read once at import through importlib.resources.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from crmqueue.api.deps import Caller, State, not_found, require_admin

router = APIRouter()

# Content-Security-Policy level 3 (W3C): only this origin's scripts, styles and fetches;
# no inline script or style, no plugins, no framing (clickjacking), no <base> rewriting.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
ASSET_LIMIT_BYTES = 200 * 1024  # issue #15: under 200 KB of assets in all
HISTORY_MINUTES = 60


ASSET_NAMES = ("index.html", "app.js", "style.css", "favicon.svg")  # crmqueue/api/static


def assets() -> dict[str, bytes]:
    """The files of crmqueue/api/static by name (named, not listed: a frozen package's
    resources are read by name, as the Redis store reads its Lua scripts)."""
    folder = resources.files("crmqueue.api").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in ASSET_NAMES}


_ASSETS = assets()


def _asset(name: str) -> Response:
    body = _ASSETS.get(name)
    if body is None:
        raise not_found(f"dashboard file {name}")
    media_type = MEDIA_TYPES["." + name.rpartition(".")[2]]
    return Response(body, media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/", include_in_schema=False)
def page() -> Response:
    """The dashboard (no token needed to load it; it asks for one to call the API)."""
    return _asset("index.html")


@router.get("/dashboard/{name}", include_in_schema=False)
def asset(name: str) -> Response:
    """The page's script, style sheet and icon (404 for any other name)."""
    return _asset(name)


class Minute(BaseModel):
    """Jobs finished in one minute: `minute` is its start, in Unix seconds (UTC)."""

    minute: int
    completed: int
    failed: int = Field(description="Failed attempts (retried or dead).")


class QueueHistory(BaseModel):
    queue: str
    minutes: list[Minute] = Field(description="Oldest first; the last one is the current one.")


@router.get("/api/v1/admin/queues/history", response_model=list[QueueHistory], tags=["jobs"])
def history(
    role: Caller,
    app: State,
    minutes: Annotated[int, Query(ge=1, le=HISTORY_MINUTES)] = HISTORY_MINUTES,
) -> list[QueueHistory]:
    """Completed jobs and failed attempts per minute of the last `minutes` (at most 60)
    of every queue (admin), as the storage counts them for `throughput_per_min`; from
    the storage, so every consumer process and host is counted."""
    require_admin(role)
    current = int(time.time() // 60)
    result = []
    for name in app.broker.queues:
        store = app.broker.queue(name).store
        # window_counts(60 k) counts the current minute and the k - 1 before it: the
        # differences of successive windows are the minutes, newest first.
        rows: list[Minute] = []
        previous = (0, 0)
        for k in range(1, minutes + 1):
            total = store.window_counts(60 * k)
            completed = max(0, total[0] - previous[0])
            failed = max(0, total[1] - previous[1])
            rows.append(Minute(minute=(current - k + 1) * 60, completed=completed, failed=failed))
            previous = (max(total[0], previous[0]), max(total[1], previous[1]))
        rows.reverse()
        result.append(QueueHistory(queue=name, minutes=rows))
    return result
