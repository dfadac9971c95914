"""The dashboard in a real headless Chromium (Debian's, driven by playwright through
``executable_path``; no browser download): a dispatcher logs in, sees exactly its company's
vehicles as labelled markers, acknowledges an alarm and sees it marked acknowledged.

Synchronisation is by DOM state only (``body[data-state]``, ``#map[data-vehicles]``, the alarm
item detached, locator assertions), with generous timeouts for a loaded 2-core machine; no
sleeps. No ``wait_for_function`` with a string: the page's CSP forbids the eval it needs once it
has to poll (a failure only when the page is slow, i.e. a flake). The browser runs in a worker
thread because the server runs on the test's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from playwright.sync_api import Page, expect, sync_playwright

from tests.aio import aio_test
from tests.dashboard_harness import PASSWORD, Seeded, dashboard

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TIMEOUT_MS = 30_000


@contextlib.contextmanager
def chromium_page() -> Iterator[Page]:
    """A page of Debian's headless Chromium at a control-room screen's size, in Chinese."""
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768}, locale="zh-CN")
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def watch(page: Page, outside: list[str], errors: list[str]) -> None:
    """Refuse (and list in ``outside``) every request that would leave 127.0.0.1 (no CDN, no
    tiles); list the page's uncaught errors in ``errors``."""

    def route(r: object) -> None:
        request = r.request  # type: ignore[attr-defined]
        if urlparse(request.url).hostname != "127.0.0.1":
            outside.append(request.url)
            r.abort()  # type: ignore[attr-defined]
        else:
            r.continue_()  # type: ignore[attr-defined]

    page.route("**/*", route)
    page.on("pageerror", lambda exc: errors.append(str(exc)))


def _dispatcher_session(url: str, seeded: Seeded, shot: Path) -> dict[str, object]:
    """Drive the page; return what it showed (asserted by the test, in the main thread)."""
    outside: list[str] = []
    errors: list[str] = []
    with chromium_page() as page:
        watch(page, outside, errors)
        page.goto(url)
        page.wait_for_selector("body[data-state=login]")
        login_label = page.inner_text("#login-submit")
        page.fill("#username", "disp_a")
        page.fill("#password", PASSWORD)
        page.click("#login-submit")
        page.wait_for_selector("body[data-state=ready]")
        page.wait_for_selector("#map[data-vehicles='2']")
        plates = sorted(page.locator(".leaflet-tooltip.plate-label").all_inner_texts())
        items = page.locator("#alerts li")
        items.first.wait_for()
        alarms_before = sorted(int(x) for x in _attr_all(items, "data-alert-id"))
        target = seeded.alerts["京A10001"]
        item = page.locator(f"#alerts li[data-alert-id='{target}']")
        item.locator("button.ack").click()
        # a locator assertion, not wait_for_function: the page's CSP forbids eval; an
        # acknowledged alarm stays pending until handled (test_dashboard_ops_browser.py)
        expect(item).to_have_attribute("data-status", "acknowledged", timeout=TIMEOUT_MS)
        expect(page.locator("#alert-count")).to_have_text("2", timeout=TIMEOUT_MS)
        alarms_after = sorted(int(x) for x in _attr_all(items, "data-alert-id"))
        notice = page.inner_text("#basemap-notice")
        page.screenshot(path=str(shot), full_page=True)
    return {
        "login_label": login_label,
        "plates": plates,
        "before": alarms_before,
        "after": alarms_after,
        "notice": notice,
        "outside": outside,
        "errors": errors,
    }


def _attr_all(locator: object, name: str) -> list[str]:
    return [locator.nth(i).get_attribute(name) for i in range(locator.count())]  # type: ignore[attr-defined]


@aio_test
async def test_dispatcher_sees_own_vehicles_and_acknowledges_an_alarm(
    db_url: str, tmp_path: Path
) -> None:
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: run scripts/setup.sh"
    shot = tmp_path / "dashboard-dispatcher.png"
    async with dashboard(db_url) as dash:
        seen = await asyncio.to_thread(_dispatcher_session, dash.url, dash.seeded, shot)
        async with dash.pool.acquire() as conn:
            acked = await conn.fetchrow(
                "SELECT status, acknowledged_by FROM alerts WHERE id = $1",
                dash.seeded.alerts["京A10001"],
            )
            others = await conn.fetchval(
                "SELECT count(*) FROM alerts a JOIN vehicles v ON v.id = a.vehicle_id"
                " WHERE v.plate LIKE '沪B%' AND a.status = 'open'"
            )
    print(f"\nscreenshot: {shot}")
    assert seen["errors"] == [], seen["errors"]
    assert seen["outside"] == [], f"requests left 127.0.0.1: {seen['outside']}"
    assert seen["login_label"] == "登录"  # Chinese by default
    assert seen["plates"] == ["京A10001", "京A10002"]  # company A's, none of B's
    a_alarms = sorted([dash.seeded.alerts["京A10001"], dash.seeded.alerts["京A10002"]])
    assert seen["before"] == a_alarms
    assert seen["after"] == a_alarms
    assert "非审图号" in str(seen["notice"])
    assert (acked["status"], acked["acknowledged_by"]) == ("acknowledged", "disp_a")
    assert others == 2  # company B's alarms untouched
    assert shot.stat().st_size > 10_000
