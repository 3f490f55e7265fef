"""The dashboard (issue #15 item 3) driven in headless Chromium (Debian's /usr/bin/chromium,
through Playwright) against a real `crmqueue api` process over loopback, with jobs run by a
real consumer on the same storage: it asks for the token (and again after a 401), shows
the right counts, updates without a reload, retries a dead job after a confirmation,
pauses and resumes a queue, shows a `<script>` payload as text, and fits a phone screen.

Screenshots go to build/test-artifacts/dashboard/ (gitignored). Without Chromium
(/usr/bin/chromium, or $CHROMIUM_BIN) or Playwright the tests are skipped, except under
CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port, wait_until

from crmqueue.api.auth import config_line, new_token, parse_role

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "build" / "test-artifacts" / "dashboard"
TIMEOUT_MS = 10_000  # every expectation below polls until then (Playwright's expect)

# The page is a client of the API, whose storage code the API tests cover on both
# storages: one (SQLite) is enough for the browser.
pytestmark = pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)


def _require_browser() -> Any:
    problem = None
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        problem = f"{CHROMIUM} not found (apt-get install chromium; scripts/test.sh does)"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            problem = "playwright is not installed (pip install -e '.[dev]')"
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{problem}: CI must run the dashboard tests", pytrace=False)
        pytest.skip(problem)
    return sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _require_browser()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


class Site:
    """`crmqueue api` in its own process on this test's storage, and the test's broker."""

    def __init__(self, tmp_path: Path, storage_url: str, broker: Any, token: str) -> None:
        self.broker = broker
        self.token = token
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = tmp_path / "api.toml"
        line = json.dumps(config_line(parse_role("admin"), token))
        config.write_text(
            textwrap.dedent(
                f"""
                [storage]
                url = "{storage_url}"
                [database]
                url = "sqlite:///{tmp_path}/crm.db"
                [files]
                dir = "{tmp_path}/files"
                [queues.email]
                attempts = 1
                [api]
                port = {port}
                tokens = [{line}]
                """
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMQUEUE_", "REDIS_"))}
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crmqueue", "api", "--config", str(config)],
            cwd=tmp_path,
            env=env,
        )
        wait_until(self._answers, timeout=30, message="the crmqueue api process")

    def _answers(self) -> bool:
        assert self.proc.poll() is None, "crmqueue api exited"
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stats(self, queue: str = "email") -> dict[str, Any]:
        answer = httpx.get(
            self.url + "/api/v1/admin/jobs/stats",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        answer.raise_for_status()
        found: dict[str, Any] = next(q for q in answer.json() if q["queue"] == queue)
        return found

    def enqueue(self, name: str, **payload: Any) -> str:
        queue = self.broker.queue("email")
        return str(queue.enqueue(f"tests.fixture_jobs.{name}", {"tenant_id": "t1", **payload}))

    def state(self, job_id: str) -> str:
        return str(self.broker.queue("email").store.get_job(job_id)["state"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def site(
    tmp_path: Path, storage_url: str, make_broker: Callable[..., Any], browser: Any
) -> Iterator[Site]:
    broker = make_broker({"queues.email.attempts": 1})
    served = Site(tmp_path, storage_url, broker, new_token())
    yield served
    served.stop()


class Page:
    """A browser page on the site, recording console errors and uncaught exceptions
    (a CSP violation is a console error)."""

    def __init__(self, browser: Any, site: Site, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.site = site
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.problems.append(f"exception: {e}"))
        self.page.goto(site.url + "/")

    def _console(self, message: Any) -> None:
        # The browser logs every non-2xx answer ("Failed to load resource": the health
        # route's 503 while a queue has no consumer, a wrong token's 401): not a problem
        # of the page. Anything else logged as an error (a CSP refusal) is.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(f"console: {message.text}")

    def sign_in(self, token: str | None = None) -> None:
        dialog = self.page.locator("#token-dialog")
        expect(dialog).to_be_visible()
        self.page.fill("#token-input", token or self.site.token)
        self.page.click("#token-submit")

    def field(self, queue: str, name: str) -> Any:
        return self.page.locator(f"[data-testid=card-{queue}] [data-field={name}]")

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def confirm(self, ok: bool) -> None:
        expect(self.page.locator("#confirm-dialog")).to_be_visible()
        self.page.click("#confirm-ok" if ok else "#confirm-cancel")
        expect(self.page.locator("#confirm-dialog")).to_be_hidden()

    def no_horizontal_scroll(self) -> None:
        widths = self.page.evaluate(
            "[document.documentElement.scrollWidth, window.innerWidth, document.body.scrollWidth]"
        )
        assert widths[0] <= widths[1] and widths[2] <= widths[1], widths

    def close(self) -> None:
        self.context.close()


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


@pytest.fixture
def open_page(browser: Any, site: Site) -> Iterator[Callable[..., Page]]:
    pages: list[Page] = []

    def open_(**context: Any) -> Page:
        pages.append(Page(browser, site, **{"viewport": {"width": 1280, "height": 900}, **context}))
        return pages[-1]

    yield open_
    for page in pages:
        page.close()


def finish(site: Site, start_consumer: Callable[..., Any], ids: list[str], state: str) -> None:
    """Run the jobs with a real consumer until every one is in `state`, then stop it."""
    consumer = start_consumer(site.broker, ["email"])
    wait_until(lambda: all(site.state(i) == state for i in ids), message=f"jobs {state}")
    consumer.stop(5.0)


def test_asks_for_the_token_shows_counts_and_updates_live(
    site: Site, open_page: Callable[..., Page], start_consumer: Callable[..., Any]
) -> None:
    done = [site.enqueue("noop", n=n) for n in range(3)]
    dead = site.enqueue("always_fail")
    finish(site, start_consumer, done, "completed")
    wait_until(lambda: site.state(dead) == "dead", message="the failing job to die")

    view = open_page()
    page = view.page
    view.sign_in("cq_not-a-token")  # 401: asked again, saying why
    expect(page.locator("#token-error")).to_contain_text("401")
    expect(page.locator("#token-dialog")).to_be_visible()
    view.screenshot("token", full_page=False)
    view.sign_in()
    expect(page.locator("#token-dialog")).to_be_hidden()
    expect(page.locator(".card")).to_have_count(5)
    expect(view.field("email", "completed")).to_have_text("3")
    expect(view.field("email", "dead")).to_have_text("1")
    expect(view.field("email", "waiting")).to_have_text("0")
    expect(view.field("email", "failure_rate")).to_have_text("25.0 %")
    expect(view.field("email", "failed")).to_have_text("1")
    expect(view.field("email", "health")).to_have_text("unhealthy")  # 25 % failed > 10 %
    expect(view.field("report", "health")).to_have_text("healthy")
    expect(page.locator("#health")).to_have_text("error")  # no live consumer
    expect(page.locator("polyline[data-queue=email]")).to_have_attribute("data-total", "3")

    # Live: more jobs finish and the same page (no navigation) shows them.
    page.evaluate("window.__sameDocument = true")
    more = [site.enqueue("noop", n=n) for n in range(3, 5)]
    expect(view.field("email", "waiting")).to_have_text("2")
    consumer = start_consumer(site.broker, ["email"])
    expect(view.field("email", "completed")).to_have_text("5")
    expect(view.field("email", "workers")).not_to_have_text("0")
    expect(page.locator("polyline[data-queue=email]")).to_have_attribute("data-total", "5")
    assert all(site.state(i) == "completed" for i in more)
    assert page.evaluate("window.__sameDocument") is True
    # The job list follows too: the default list is email's waiting jobs, now empty.
    page.select_option("#f-state", "completed")
    expect(page.locator("#job-rows tr")).to_have_count(5)
    page.fill("#f-id", done[0][:8])
    page.click("#filters button[type=submit]")
    expect(page.locator("#job-rows tr")).to_have_count(1)
    expect(page.locator(f"#job-rows tr[data-job='{done[0]}']")).to_be_visible()
    page.fill("#f-id", "")
    page.fill("#f-tenant", "t2")  # by tenant: t1's jobs only here
    page.click("#filters button[type=submit]")
    expect(page.locator("#job-rows tr")).to_have_count(0)
    expect(page.locator("#jobs-empty")).to_be_visible()
    page.fill("#f-tenant", "t1")
    page.press("#f-tenant", "Enter")
    expect(page.locator("#job-rows tr")).to_have_count(5)
    consumer.stop(5.0)
    view.screenshot("desktop")

    # The token is kept for the browser session: a reload does not ask again.
    page.reload()
    expect(view.field("email", "completed")).to_have_text("5")
    expect(page.locator("#token-dialog")).to_be_hidden()
    assert view.problems == []


def test_retry_button_moves_a_dead_job_back_to_waiting(
    site: Site, open_page: Callable[..., Page], start_consumer: Callable[..., Any]
) -> None:
    dead = site.enqueue("always_fail")
    finish(site, start_consumer, [dead], "dead")
    view = open_page()
    page = view.page
    view.sign_in()
    view.field("email", "dead").click()
    row = page.locator(f"#job-rows tr[data-job='{dead}']")
    row.locator("button").click()
    dialog = page.locator("#job-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("[data-field=state] dd")).to_have_text("dead")
    timeline = page.locator("#job-timeline")
    expect(timeline).to_contain_text("RuntimeError")
    expect(timeline).to_contain_text("boom 1")
    timeline.locator("summary").first.click()
    expect(timeline.locator("pre").first).to_contain_text("Traceback")
    expect(timeline.locator("pre").first).to_contain_text("always_fail")
    view.screenshot("job-dead", full_page=False)

    page.click("#job-retry")
    view.confirm(ok=False)  # cancelled: nothing happens
    assert site.state(dead) == "dead"
    page.click("#job-retry")
    expect(page.locator("#confirm-text")).to_contain_text(dead)
    view.confirm(ok=True)
    wait_until(lambda: site.state(dead) == "waiting", message="the retried job to wait")
    expect(dialog.locator("[data-field=state] dd")).to_have_text("waiting")
    expect(page.locator("#job-retry")).to_be_disabled()
    page.click("#job-close")
    expect(view.field("email", "waiting")).to_have_text("1")
    expect(view.field("email", "dead")).to_have_text("0")
    assert view.problems == []


def test_pause_resume_replay_and_remove_after_confirmation(
    site: Site, open_page: Callable[..., Page], start_consumer: Callable[..., Any]
) -> None:
    dead = [site.enqueue("always_fail", n=n) for n in range(2)]
    finish(site, start_consumer, dead, "dead")
    waiting = site.enqueue("noop")
    view = open_page()
    page = view.page
    view.sign_in()
    replay = page.locator("[data-testid=card-email] [data-action=replay]")
    expect(view.field("email", "dead")).to_have_text("2")
    replay.click()
    view.confirm(ok=True)
    expect(view.field("email", "dead")).to_have_text("0")
    expect(view.field("email", "waiting")).to_have_text("3")
    expect(page.locator("#notice")).to_have_text("2 dead job(s) of email back to waiting")
    expect(replay).to_be_disabled()
    assert [site.state(i) for i in dead] == ["waiting", "waiting"]
    pause = page.locator("[data-testid=card-email] [data-action=pause]")
    expect(pause).to_have_text("Pause")
    pause.click()
    view.confirm(ok=True)
    expect(view.field("email", "paused")).to_be_visible()
    expect(pause).to_have_text("Resume")
    assert site.stats()["paused"] is True
    pause.click()
    view.confirm(ok=True)
    expect(view.field("email", "paused")).to_be_hidden()
    assert site.stats()["paused"] is False

    page.locator(f"#job-rows tr[data-job='{waiting}'] button").click()
    page.click("#job-remove")
    view.confirm(ok=True)
    expect(page.locator(f"#job-rows tr[data-job='{waiting}']")).to_have_count(0)
    expect(view.field("email", "waiting")).to_have_text("2")
    assert site.broker.queue("email").store.get_job(waiting) is None
    assert view.problems == []


XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


def test_a_script_payload_renders_as_text_and_secrets_stay_masked(
    site: Site, open_page: Callable[..., Page]
) -> None:
    job_id = site.enqueue("noop", note=XSS, api_key="sk_live_hidden", nested={"password": "pw1"})
    view = open_page()
    page = view.page
    view.sign_in()
    page.locator(f"#job-rows tr[data-job='{job_id}'] button").click()
    payload = page.locator("#job-payload")
    expect(payload).to_contain_text(XSS.replace('"', '\\"'))  # JSON-escaped quotes, as text
    expect(payload).to_contain_text('"api_key": "********"')
    expect(payload).to_contain_text('"password": "********"')
    assert page.locator("#job-dialog img, #job-dialog script").count() == 0
    assert page.evaluate("window.__xss") is None
    content = page.content()
    assert "sk_live_hidden" not in content and "pw1" not in content
    view.screenshot("job-xss", full_page=False)
    assert view.problems == []


def test_fits_a_phone_screen(
    site: Site, open_page: Callable[..., Page], start_consumer: Callable[..., Any]
) -> None:
    ids = [site.enqueue("noop", n=n) for n in range(2)]
    finish(site, start_consumer, ids, "completed")
    dead = site.enqueue("always_fail", reason="x" * 300)  # a long unbroken value
    finish(site, start_consumer, [dead], "dead")
    waiting = site.enqueue("noop", n=9)
    view = open_page(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
        device_scale_factor=2,
    )  # fmt: skip
    page = view.page
    view.sign_in()
    expect(view.field("email", "completed")).to_have_text("2")
    expect(page.locator(f"#job-rows tr[data-job='{waiting}']")).to_be_visible()
    view.no_horizontal_scroll()
    view.screenshot("phone")
    view.field("email", "dead").click()
    page.locator(f"#job-rows tr[data-job='{dead}'] button").click()
    expect(page.locator("#job-timeline")).to_contain_text("RuntimeError")
    view.no_horizontal_scroll()
    box = page.locator("#job-dialog").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    view.screenshot("phone-job", full_page=False)
    assert view.problems == []


def test_the_job_view_follows_a_running_jobs_progress(
    site: Site, open_page: Callable[..., Page], start_consumer: Callable[..., Any]
) -> None:
    from tests import fixture_jobs

    job_id = site.enqueue("progress", key="p1")
    start_consumer(site.broker, ["email"])
    store = site.broker.queue("email").store
    wait_until(lambda: store.get_job(job_id)["progress"] == 10, message="progress 10")
    view = open_page()
    page = view.page
    view.sign_in()
    expect(view.field("email", "active")).to_have_text("1")
    view.field("email", "active").click()
    page.locator(f"#job-rows tr[data-job='{job_id}'] button").click()
    bar = page.locator("#job-progress")
    expect(bar).to_have_js_property("value", 10)
    fixture_jobs.step("p1").release()  # the body reports 50 and waits again
    expect(bar).to_have_js_property("value", 50)
    expect(page.locator("#job-progress-text")).to_have_text("50 %")
    view.screenshot("job-progress", full_page=False)
    fixture_jobs.step("p1").release(2)  # 90, then done
    expect(page.locator("#job-fields [data-field=state] dd")).to_have_text("completed")
    expect(bar).to_have_js_property("value", 100)
    expect(page.locator("#job-result")).to_have_text('"done"')
    assert view.problems == []
