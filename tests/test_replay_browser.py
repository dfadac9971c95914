"""Track replay in a real headless Chromium (Debian's, through playwright's ``executable_path``):
a dispatcher opens the replay from a vehicle's popup, then asks for a range with a stored 1 Hz
track, sees it drawn with its stop and alarm markers and the speed chart, plays it at 64x (the
marker advances at about 64 seconds of track a second), pauses, seeks with the timeline, opens
the printable map, and nothing leaves 127.0.0.1.

Synchronisation is by the panel's DOM state (``#replay[data-state]``, ``data-t``) through
locator assertions (the page's CSP forbids the eval that ``wait_for_function`` needs). The one
timed wait is the measurement of the playback rate itself.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from playwright.sync_api import expect, sync_playwright

from loadtest.bench_replay import insert_track, synthetic_track
from store.partitions import create_partition
from tests.aio import aio_test
from tests.dashboard_harness import PASSWORD, dashboard
from tests.test_dashboard_browser import CHROMIUM, TIMEOUT_MS

T0 = datetime(2026, 11, 30, 22, 0, tzinfo=UTC)  # 06:00 Beijing time on 1 December
HOURS = 3


def _replay_session(url: str, vehicle_id: int, shots: Path) -> dict[str, Any]:
    outside: list[str] = []
    errors: list[str] = []
    seen: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768}, locale="zh-CN")
            page.set_default_timeout(TIMEOUT_MS)

            def route(r: Any) -> None:  # nothing may leave 127.0.0.1
                if urlparse(r.request.url).hostname != "127.0.0.1":
                    outside.append(r.request.url)
                    r.abort()
                else:
                    r.continue_()

            page.route("**/*", route)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            page.wait_for_selector("body[data-state=login]")
            page.fill("#username", "disp_a")
            page.fill("#password", PASSWORD)
            page.click("#login-submit")
            page.wait_for_selector("body[data-state=ready]")
            page.wait_for_selector("#map[data-vehicles='2']")
            # from the vehicle's popup: its marker is just left of its plate label
            label = page.locator(".leaflet-tooltip.plate-label", has_text="京A10001").bounding_box()
            assert label is not None
            page.mouse.click(label["x"] - 9, label["y"] + label["height"] / 2)
            page.locator(f".replay-button[data-vehicle-id='{vehicle_id}']").click()
            page.screenshot(path=str(shots / "replay-from-popup.png"))
            panel = page.locator("#replay")
            expect(panel).to_be_visible()
            expect(panel).to_have_attribute("data-state", "ready", timeout=TIMEOUT_MS)
            seen["popup_vehicle"] = page.input_value("#replay-vehicle")
            seen["popup_points"] = panel.get_attribute("data-points")  # the last 24 h: none
            seen["tz_label"] = page.inner_text("#replay-form .tz")
            page.select_option("#replay-vehicle", str(vehicle_id))
            page.fill("#replay-from", "2026-12-01T06:00")  # Beijing time = T0
            page.fill("#replay-to", f"2026-12-01T{6 + HOURS:02d}:00")
            page.click("#replay-load")
            expect(panel).to_have_attribute("data-state", "ready", timeout=TIMEOUT_MS)
            seen["points"] = int(panel.get_attribute("data-points") or 0)
            seen["markers"] = int(panel.get_attribute("data-markers") or 0)
            seen["load_ms"] = int(panel.get_attribute("data-load-ms") or 0)
            seen["stops"] = page.locator("path.replay-stop").count()
            seen["alarms"] = page.locator("path.replay-alert").count()
            seen["t_start"] = int(panel.get_attribute("data-t") or 0)
            seen["gpx_href"] = page.get_attribute("#replay-gpx", "href")
            seen["info"] = page.inner_text("#replay-info")
            page.screenshot(path=str(shots / "replay-loaded.png"))

            page.select_option("#replay-rate", "64")
            first = (panel.get_attribute("data-lon"), panel.get_attribute("data-lat"))
            page.click("#replay-play")
            expect(panel).to_have_attribute("data-playing", "true")
            t_a, wall_a = int(panel.get_attribute("data-t") or 0), time.monotonic()
            expect(panel).not_to_have_attribute("data-t", str(t_a))
            time.sleep(3)  # the measurement: how far 3 s of wall clock take the playback
            t_b, wall_b = int(panel.get_attribute("data-t") or 0), time.monotonic()
            seen["rate"] = (t_b - t_a) / 1000 / (wall_b - wall_a)
            now = (panel.get_attribute("data-lon"), panel.get_attribute("data-lat"))
            seen["moved"] = first != now
            page.screenshot(path=str(shots / "replay-playing-64x.png"))
            page.click("#replay-play")  # pause
            expect(panel).to_have_attribute("data-playing", "false")
            paused = panel.get_attribute("data-t")
            page.locator("#replay-info").click()  # a round trip to the page: still paused
            seen["paused_still"] = panel.get_attribute("data-t") == paused
            page.fill("#replay-slider", "500")  # seek to the middle
            seen["t_mid"] = int(panel.get_attribute("data-t") or 0)
            page.screenshot(path=str(shots / "replay-seek-middle.png"))
            # the printable map (folium) renders with Leaflet from this server
            page.goto(url + (page.get_attribute("#replay-html", "href") or ""))
            drawn = page.locator(".leaflet-container path.leaflet-interactive")
            drawn.first.wait_for(state="attached")  # a short polyline may have no visible box
            seen["print_paths"] = page.locator(".leaflet-container path").count()
            seen["print_title"] = page.inner_text("body")
            page.screenshot(path=str(shots / "replay-print-map.png"))
        finally:
            browser.close()
    seen["outside"] = outside
    seen["errors"] = errors
    return seen


@aio_test
async def test_replay_plays_a_stored_track_at_64x(db_url: str, tmp_path: Path) -> None:
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: run scripts/setup.sh"
    async with dashboard(db_url) as dash:
        vid = dash.seeded.vehicles["京A10001"]
        fixes = synthetic_track(T0, HOURS * 3600, seed=7)
        async with dash.pool.acquire() as conn:
            await create_partition(conn, T0.date())
            await create_partition(conn, (T0 + timedelta(hours=HOURS)).date())
            await insert_track(conn, vid, fixes)
            await conn.execute(
                "INSERT INTO alerts (vehicle_id, type, key, severity, start_time)"
                " VALUES ($1, 'speeding', 'speeding-replay', 2, $2)",
                vid,
                fixes[2000][0],
            )
        seen = await asyncio.to_thread(_replay_session, dash.url, vid, tmp_path)
    print(f"\nscreenshots: {sorted(str(p) for p in tmp_path.glob('*.png'))}\n{seen}")
    assert seen["errors"] == [], seen["errors"]
    assert seen["outside"] == [], f"requests left 127.0.0.1: {seen['outside']}"
    assert seen["tz_label"] == "北京时间"
    assert seen["popup_vehicle"] == str(vid) and seen["popup_points"] == "0"
    assert 2 < seen["points"] < len(fixes)  # simplified on the server
    assert seen["stops"] >= 1 and seen["alarms"] == 1
    assert seen["t_start"] == int(T0.timestamp() * 1000)  # starts at the first fix
    assert "track.gpx?from=2026-12-01T06%3A00%3A00%2B08%3A00" in seen["gpx_href"]
    assert "km/h" in seen["info"] and "北京时间" in seen["info"]
    assert 40 < seen["rate"] < 80, seen["rate"]  # 64 s of track per second, give or take
    assert seen["moved"]
    assert seen["paused_still"]
    assert seen["print_paths"] > 3 and "京A10001" in seen["print_title"]
    middle = T0.timestamp() * 1000 + HOURS * 3600 * 1000 / 2
    assert abs(seen["t_mid"] - middle) < 30_000, seen["t_mid"]
    shots = ("replay-from-popup.png", "replay-loaded.png", "replay-playing-64x.png",
             "replay-seek-middle.png", "replay-print-map.png")
    for name in shots:
        assert (tmp_path / name).stat().st_size > 10_000
