"""The dashboard's server side (issue #15 item 3), without a browser: the page and its
assets are package data under 200 KB, served with a strict CSP and no inline script or
style; the script never parses data as HTML; the throughput history route counts the
jobs finished per minute on SQLite and Redis, for an admin token only.
(tests/test_dashboard_browser.py drives the page itself in Chromium.)"""

from __future__ import annotations

import itertools
import re
import threading
import tomllib
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from conftest import free_port, wait_until

from crmqueue.api import dashboard
from crmqueue.api.app import create_app
from crmqueue.api.auth import config_line, new_token, parse_role

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "crmqueue" / "api" / "static"


class Served:
    def __init__(self, url: str, tokens: dict[str, str], broker: Any) -> None:
        self.url = url
        self.tokens = tokens
        self.broker = broker

    def get(self, path: str, role: str | None = "admin", **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.get(self.url + path, headers=headers, timeout=10, **kwargs)


@pytest.fixture
def served(make_broker: Callable[..., Any]) -> Iterator[Served]:
    tokens = {role: new_token() for role in ("admin", "tenant:t1")}
    broker = make_broker(
        {
            "api.tokens": [config_line(parse_role(r), t) for r, t in tokens.items()],
            "queues.email.attempts": 1,
        }
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, message="uvicorn to start")
    yield Served(f"http://127.0.0.1:{port}", tokens, broker)
    server.should_exit = True
    thread.join(5)


def test_assets_are_small_package_data() -> None:
    files = sorted(p.name for p in STATIC.iterdir() if p.is_file())
    assert files == ["app.js", "favicon.svg", "index.html", "style.css"]
    assert sorted(dashboard.ASSET_NAMES) == files
    assert dashboard.assets() == {name: (STATIC / name).read_bytes() for name in files}
    total = sum(p.stat().st_size for p in STATIC.iterdir())
    assert total < dashboard.ASSET_LIMIT_BYTES, f"{total} bytes of dashboard assets"
    # Installed (wheel) and frozen (PyInstaller collects crmqueue's package data): the
    # package-data globs must name every asset.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["crmqueue"]
    for name in files:
        assert any(Path("api/static", name).match(g) for g in globs), f"{name} not package data"
    assert 'collect_data_files("crmqueue"' in (ROOT / "build" / "crmqueue.spec").read_text()


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, _value in attrs:
            if name.startswith("on") or name == "style":
                self.inline.append(f"<{tag} {name}=…>")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(f"<script>{data.strip()[:40]}")


def test_the_page_has_no_inline_script_or_style_and_no_external_source() -> None:
    html = (STATIC / "index.html").read_text()
    markup = _Markup()
    markup.feed(html)
    assert markup.inline == []
    assert [s.get("src") for s in markup.scripts] == ["/dashboard/app.js"]
    # No CDN: every URL the page or the script names is this origin's.
    for text in (html, (STATIC / "app.js").read_text(), (STATIC / "style.css").read_text()):
        urls = re.findall(r"(?:https?:)?//[\w.-]+", text)
        assert set(urls) <= {"http://www.w3.org"}, urls  # the SVG namespace name only


def test_the_script_never_parses_data_as_html() -> None:
    script = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
    assert "new Function" not in script


def test_the_page_and_assets_are_served_with_a_strict_csp(served: Served) -> None:
    page = served.get("/", role=None)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.text == (STATIC / "index.html").read_text()
    script = served.get("/dashboard/app.js", role=None)
    assert script.status_code == 200 and script.headers["content-type"].startswith(
        "text/javascript"
    )
    assert script.content == (STATIC / "app.js").read_bytes()
    assert (
        served.get("/dashboard/style.css", role=None).headers["content-type"].startswith("text/css")
    )
    for missing in ("/dashboard/nope.js", "/dashboard/..%2Fapp.py", "/dashboard/dashboard.py"):
        assert served.get(missing, role=None).status_code == 404
    # The page routes stay out of the OpenAPI document; the history route is in it.
    paths = served.get("/openapi.json", role=None).json()["paths"]
    assert "/" not in paths and "/api/v1/admin/queues/history" in paths


def test_history_counts_completed_jobs_and_failures_per_minute(
    served: Served, start_consumer: Callable[..., Any]
) -> None:
    queue = served.broker.queue("email")
    ids = [queue.enqueue("tests.fixture_jobs.noop", {"tenant_id": "t1", "n": n}) for n in range(4)]
    dead = queue.enqueue("tests.fixture_jobs.always_fail", {"tenant_id": "t1"})
    start_consumer(served.broker, ["email"])
    store = queue.store
    wait_until(
        lambda: (
            all(store.get_job(str(i))["state"] == "completed" for i in ids)
            and store.get_job(str(dead))["state"] == "dead"
        ),
        message="the jobs to finish",
    )

    def counted() -> Any:
        answer = served.get("/api/v1/admin/queues/history")
        assert answer.status_code == 200, answer.text
        return answer.json()

    history = counted()
    assert [q["queue"] for q in history] == list(served.broker.queues)
    email = next(q for q in history if q["queue"] == "email")
    minutes = email["minutes"]
    assert len(minutes) == 60
    starts = [m["minute"] for m in minutes]
    assert starts == sorted(starts) and all(b - a == 60 for a, b in itertools.pairwise(starts))
    # The jobs may straddle a minute boundary: the last two minutes hold them all.
    assert sum(m["completed"] for m in minutes[-2:]) == 4
    assert sum(m["failed"] for m in minutes[-2:]) == 1
    assert sum(m["completed"] + m["failed"] for m in minutes[:-2]) == 0
    others = [q for q in history if q["queue"] != "email"]
    assert all(m["completed"] == 0 for q in others for m in q["minutes"])

    short = served.get("/api/v1/admin/queues/history", params={"minutes": 5}).json()
    assert all(len(q["minutes"]) == 5 for q in short)
    assert served.get("/api/v1/admin/queues/history", params={"minutes": 61}).status_code == 422
    assert served.get("/api/v1/admin/queues/history", role="tenant:t1").status_code == 403
    assert served.get("/api/v1/admin/queues/history", role=None).status_code == 401
