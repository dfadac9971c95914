"""The live feed in a real headless Chromium: a dispatcher's page, with no polling, moves a
vehicle's marker after its terminal reports over TCP, and a second page shows an alarm
acknowledged on the first as acknowledged, without a reload.

As in test_dashboard_browser.py: Debian's chromium through playwright's ``executable_path``, the
browser in a worker thread (the servers run on the test's loop), synchronisation by DOM state
only (``#live[data-state]``, the marker element's ``data-lat``), no string ``wait_for_function``
(the page's CSP forbids eval).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from tests.aio import aio_test
from tests.dashboard_harness import PASSWORD, dashboard
from tests.ingest_harness import running_ingest
from tests.terminal_client import Terminal, report
from tests.test_dashboard_browser import TIMEOUT_MS, chromium_page, watch

#: Where the terminal reports from: inside the map's initial view, away from the seeded fix.
LAT, LON = 39.91, 116.43


def _login(page: Any, url: str, outside: list[str], errors: list[str]) -> Any:
    watch(page, outside, errors)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("body[data-state=login]")
    page.fill("#username", "disp_a")
    page.fill("#password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_selector("body[data-state=ready]")
    page.wait_for_selector("#live[data-state=open]")
    return page


def _watch(url: str, vehicle: int, alert: int, move: Callable[[], None], shots: Path) -> dict:
    errors: list[str] = []
    outside: list[str] = []
    with chromium_page() as first:
        second = first.context.browser.new_page(  # the other page, same browser
            viewport={"width": 1366, "height": 768}, locale="zh-CN")  # fmt: skip
        page, other = _login(first, url, outside, errors), _login(second, url, outside, errors)
        marker = page.locator(f"#map path[data-vehicle-id='{vehicle}']")
        before = {"lat": marker.get_attribute("data-lat"), "box": marker.bounding_box()}
        page.screenshot(path=str(shots / "live-before.png"))
        move()  # the terminal reports over TCP
        expect(marker).to_have_attribute("data-lat", str(LAT), timeout=TIMEOUT_MS)
        after = {"lat": marker.get_attribute("data-lat"), "box": marker.bounding_box()}
        updates = page.locator("#map").get_attribute("data-updates")
        page.screenshot(path=str(shots / "live-after.png"))
        # an alarm acknowledged on one page is shown acknowledged on the other, pushed
        item = page.locator(f"#alerts li[data-alert-id='{alert}']")
        other_item = other.locator(f"#alerts li[data-alert-id='{alert}']")
        expect(other_item).to_have_attribute("data-status", "open", timeout=TIMEOUT_MS)
        item.locator("button.ack").click()
        expect(other_item).to_have_attribute("data-status", "acknowledged", timeout=TIMEOUT_MS)
        other.screenshot(path=str(shots / "live-other-page.png"))
        indicator = page.inner_text("#live")
    return {"before": before, "after": after, "updates": updates, "errors": errors,
            "indicator": indicator, "outside": outside}  # fmt: skip


@aio_test
async def test_page_moves_the_marker_when_a_terminal_reports(db_url: str, tmp_path: Path) -> None:
    async with dashboard(db_url) as dash, running_ingest(db_url, tmp_path, max_age=0.01) as ing:
        ing.writer.subscribe(dash.hub.durable)
        vehicle = dash.seeded.vehicles["京A10001"]
        loop = asyncio.get_running_loop()

        async def report_over_tcp() -> None:
            terminal = await Terminal.connect(ing.port, "13800000000")  # 京A10001's phone
            await terminal.login("京A10001")
            await terminal.send(report(0, lat=LAT, lon=LON))
            assert (await terminal.receive()).body.result == 0
            await terminal.close()

        def move() -> None:  # from the browser's thread, on the test's loop
            asyncio.run_coroutine_threadsafe(report_over_tcp(), loop).result(30)

        seen = await asyncio.to_thread(
            _watch, dash.url, vehicle, dash.seeded.alerts["京A10001"], move, tmp_path
        )
    print(f"\nscreenshots: {tmp_path}/live-*.png")
    assert seen["errors"] == [], seen["errors"]
    assert seen["outside"] == [], f"requests left 127.0.0.1: {seen['outside']}"
    assert seen["before"]["lat"] == "39.9"
    assert seen["after"]["lat"] == str(LAT)
    assert seen["before"]["box"] != seen["after"]["box"]  # the marker moved on the screen
    assert int(seen["updates"]) >= 1
    assert seen["indicator"].endswith("实时")
