"""The dashboard's features working together, in a real headless Chromium (Debian's, through
playwright's ``executable_path``) against real PostGIS:

* clicking an alarm in the queue opens the vehicle's track from half an hour before the alarm
  to half an hour after its end, with the alarm's marker in view;
* a vehicle's popup keeps the replay button when the vehicle updates while it is open, and the
  base map's notice stays off the replay panel at 1366x768;
* with GCJ-02 tiles, a circle drawn on the map is stored in WGS-84 and the replay's line lies
  on the same pixels as the vehicle markers;
* a circle fence drawn with geoman, then a terminal over real TCP drives into it: the alarm
  shows up in the page's queue live, without a reload.

DOM state and locator assertions only (the page's CSP forbids the eval a polling
wait_for_function needs); ``Browser.call`` reaches the page's own modules. Screenshots go to
the test's tmp dir (paths printed).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from geo.geodesy import distance_m
from loadtest.bench_replay import insert_track, synthetic_track
from maps.tiles import tile_source
from store.alerts import AlertStore
from store.partitions import create_partition
from tests.aio import aio_test
from tests.dashboard_harness import VEHICLES, dashboard
from tests.mbtiles import make_mbtiles
from tests.supervision_harness import Vehicle, eventually, fix, running_supervision
from tests.test_dashboard_browser import TIMEOUT_MS
from tests.test_dashboard_map_browser import Browser

BEIJING = timedelta(hours=8)
M_PER_DEG_LON = 85_390.0  # at 39.9 N

#: The page pixel of a WGS-84 point as the map draws it (through map.js's mapLatLng).
PIXEL = """const map = m.getMap();
const p = map.latLngToContainerPoint(m.mapLatLng(arg[0], arg[1]));
const r = map.getContainer().getBoundingClientRect();
return [r.left + p.x, r.top + p.y];"""


def _beijing_input(moment: datetime) -> str:
    """What replay.js puts in a datetime-local field: Beijing time to the minute."""
    return (moment.astimezone(UTC) + BEIJING).strftime("%Y-%m-%dT%H:%M")


def _inside(inner: dict[str, float], outer: dict[str, float]) -> bool:
    return (
        inner["x"] >= outer["x"]
        and inner["y"] >= outer["y"]
        and inner["x"] + inner["width"] <= outer["x"] + outer["width"]
        and inner["y"] + inner["height"] <= outer["y"] + outer["height"]
    )


def _boxes(page: Page, selector: str) -> list[dict[str, float]]:
    return [b for b in (el.bounding_box() for el in page.locator(selector).all()) if b]


@contextmanager
def _logged_in(url: str, out: dict[str, Any]) -> Iterator[Browser]:
    """A page logged in as disp_a; what left 127.0.0.1 and the page's errors go into ``out``."""
    with sync_playwright() as p:
        b = Browser(p)
        try:
            b.login(url)
            yield b
        finally:
            out["outside"], out["errors"] = b.outside, b.errors
            b.close()


def _draw_fence(
    b: Browser, centre: tuple[float, float], radius_m: float, zoom: int, name: str, kind: str
) -> str | None:
    """Draw a circle with geoman by mouse around the WGS-84 ``centre`` (a click on the
    centre, a drag out, a click), name it and save it; the saved fence's id."""
    b.page.click("#geofences-open")
    panel = b.page.locator("#geofence-panel")
    b.page.click("#geofence-panel [data-draw=circle]")
    expect(panel).to_have_attribute("data-mode", "drawing")
    b.call("./map.js", "m.getMap().setView(m.mapLatLng(...arg), arg[2], {animate: false});",
           [*centre, zoom])  # fmt: skip
    cx, cy = b.call("./map.js", PIXEL, list(centre))
    ex, ey = b.call("./map.js", PIXEL, [centre[0] + radius_m / M_PER_DEG_LON, centre[1]])
    b.page.mouse.move(cx, cy)
    b.page.mouse.click(cx, cy)
    for step in range(1, 9):
        b.page.mouse.move(cx + (ex - cx) * step / 8, cy + (ey - cy) * step / 8)
    b.page.mouse.click(ex, ey)
    expect(panel).to_have_attribute("data-mode", "editing")
    b.page.fill("#gf-name", name)
    b.page.select_option("#gf-kind", kind)
    b.page.click("#gf-save")
    expect(panel).to_have_attribute("data-mode", "idle")
    return panel.get_attribute("data-saved")


# ------------------------------------------------------------------ alarm -> replay


def _alarm_session(url: str, tmp: Path, vehicle: int, alert_id: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with _logged_in(url, out) as b:
        page = b.page
        page.wait_for_selector("#map[data-vehicles='2']")
        page.locator(f"#alerts li[data-alert-id='{alert_id}'] .title").click()
        replay = page.locator("#replay")
        expect(replay).to_be_visible()
        expect(replay).to_have_attribute("data-state", "ready", timeout=TIMEOUT_MS)
        out["vehicle"] = page.input_value("#replay-vehicle")
        out["from"] = page.input_value("#replay-from")
        out["to"] = page.input_value("#replay-to")
        out["points"] = int(replay.get_attribute("data-points") or 0)
        page.wait_for_timeout(600)  # the map's fit (and a late "select-vehicle") settle
        out["map_box"] = page.locator("#map").bounding_box()
        out["alarm_boxes"] = _boxes(page, "path.replay-alert")
        out["notice_box"] = page.locator("#basemap-notice").bounding_box()
        out["replay_box"] = replay.bounding_box()
        page.screenshot(path=str(tmp / "alarm-opens-replay.png"))

        # the vehicle's popup, then an update of that vehicle while it is open
        b.call("./map.js", "m.getMap().setView(m.mapLatLng(116.40, 39.90), 16, {animate: false});")
        page.locator(f".vm[data-vehicle-id='{vehicle}'] .badge").click()
        popup = page.locator(".vehicle-popup")
        expect(popup.locator(".replay-button")).to_have_count(1)
        b.call(
            "./map.js",
            "m.updateVehicle({type: 'Feature', id: arg, properties: {speed_kmh: 77}});",
            vehicle,
        )
        expect(popup).to_contain_text("77 km/h")
        out["buttons_after_update"] = popup.locator(".replay-button").count()
        page.screenshot(path=str(tmp / "popup-after-update.png"))
        popup.locator(".replay-button").click()
        expect(replay).to_have_attribute("data-state", "ready", timeout=TIMEOUT_MS)
        out["replay_from_popup"] = page.input_value("#replay-vehicle")
    return out


@aio_test
async def test_clicking_an_alarm_opens_its_track_and_popups_keep_their_replay_button(
    db_url: str, tmp_path: Path
) -> None:
    async with dashboard(db_url) as dash:
        vid = dash.seeded.vehicles["京A10001"]
        start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)
        fixes = synthetic_track(start, 2 * 3600, seed=11)  # 1 Hz, 2 hours
        at = fixes[3600]  # the alarm: an hour in, ten minutes long
        end = at[0] + timedelta(minutes=10)
        async with dash.pool.acquire() as conn:
            for day in {start.date(), (start + timedelta(hours=2)).date()}:
                await create_partition(conn, day)
            await insert_track(conn, vid, fixes)
            alert_id = await conn.fetchval(
                "INSERT INTO alerts (vehicle_id, type, key, severity, start_time, end_time,"
                " details) VALUES ($1, 'speeding', 'speeding-polish', 1, $2, $3, $4)"
                " RETURNING id",
                vid, at[0], end, json.dumps({"lon": at[1], "lat": at[2]}),
            )  # fmt: skip
        seen = await asyncio.to_thread(_alarm_session, dash.url, tmp_path, vid, alert_id)
    print(f"\nscreenshots: {sorted(str(p) for p in tmp_path.glob('*.png'))}\n{seen}")
    assert seen["errors"] == [] and seen["outside"] == [], seen
    assert seen["vehicle"] == str(vid)
    assert seen["from"] == _beijing_input(at[0] - timedelta(minutes=30))
    assert seen["to"] == _beijing_input(end + timedelta(minutes=30))
    assert seen["points"] > 2
    (alarm,) = seen["alarm_boxes"]  # the alarm's marker, in the map's view
    assert _inside(alarm, seen["map_box"]), (alarm, seen["map_box"])
    # the base map's notice: inside the map, above the replay panel's top edge
    notice, panel = seen["notice_box"], seen["replay_box"]
    assert notice["y"] + notice["height"] <= panel["y"] + 0.5, (notice, panel)
    assert _inside(notice, seen["map_box"])
    assert seen["buttons_after_update"] == 1
    assert seen["replay_from_popup"] == str(vid)


# ------------------------------------------------------------------ GCJ-02 tiles


def _gcj_session(
    url: str, tmp: Path, vehicle: int, centre: tuple[float, float], t0: datetime
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with _logged_in(url, out) as b:
        page = b.page
        page.wait_for_selector("#map[data-tiles=on][data-gcj02=true]")
        # zoom 18: half a metre a pixel, so the mouse's whole pixels cost < 0.5 m
        out["saved"] = _draw_fence(b, centre, 40, 18, "GCJ 画的圆", "zone")
        page.screenshot(path=str(tmp / "gcj02-fence.png"))
        page.click("#gf-close")

        # the replay's line through the vehicle's position, against the vehicle's marker
        b.call(
            "./core.js",
            "m.emit('replay', {vehicleId: arg[0], from: arg[1], to: arg[2]});",
            [
                vehicle,
                (t0 - timedelta(minutes=1)).isoformat(),
                (t0 + timedelta(minutes=5)).isoformat(),
            ],
        )
        expect(page.locator("#replay")).to_have_attribute("data-state", "ready", timeout=TIMEOUT_MS)
        b.call("./map.js", "m.getMap().setView(m.mapLatLng(116.40, 39.90), 17, {animate: false});")
        marker = page.locator(f".vm[data-vehicle-id='{vehicle}']").bounding_box()
        assert marker is not None
        out["marker_px"] = [
            marker["x"] + marker["width"] / 2,
            marker["y"] + marker["height"] / 2,
        ]
        out["vertices_px"] = b.call(
            "./map.js",
            """const map = m.getMap(), r = map.getContainer().getBoundingClientRect(), out = [];
            map.eachLayer((l) => {
              if (!(l instanceof L.Polyline) || l instanceof L.Polygon) return;
              if (l.options.weight !== 4) return;  // the replay's runs, not the base map
              for (const at of l.getLatLngs()) {
                const p = map.latLngToContainerPoint(at); out.push([r.left + p.x, r.top + p.y]);
              }
            });
            return out;""",
        )
        page.screenshot(path=str(tmp / "gcj02-replay.png"))
    return out


@aio_test
async def test_gcj02_tiles_fences_saved_in_wgs84_and_replay_on_the_markers(
    db_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "t.mbtiles"
    make_mbtiles(path, max_zoom=3)
    centre = (116.43, 39.92)  # WGS-84: where the dispatcher means the fence to be
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    async with dashboard(db_url, tiles=tile_source(str(path), gcj02=True)) as dash:
        vid = dash.seeded.vehicles["京A10001"]  # last position WGS-84 116.40, 39.90
        # three fixes, the middle one where the vehicle is now (a corner: the simplification
        # keeps it)
        fixes = [
            (t0, 116.398, 39.899, 30.0, 45),
            (t0 + timedelta(seconds=60), 116.40, 39.90, 30.0, 135),
            (t0 + timedelta(seconds=120), 116.402, 39.899, 30.0, 90),
        ]
        async with dash.pool.acquire() as conn:
            await create_partition(conn, t0.date())
            await insert_track(conn, vid, fixes)
        seen = await asyncio.to_thread(_gcj_session, dash.url, tmp_path, vid, centre, t0)
        client = await dash.logged_in("disp_a")
        (fence,) = (await client.get("/api/geofences")).body["features"]
    print(f"\nscreenshots: {sorted(str(p) for p in tmp_path.glob('*.png'))}\n{seen}")
    assert seen["errors"] == [] and seen["outside"] == [], seen
    assert str(fence["id"]) == seen["saved"]
    lon, lat = fence["geometry"]["coordinates"]
    off = distance_m(lon, lat, *centre)
    print(f"fence centre {lon:.7f}, {lat:.7f}: {off:.2f} m from the intended WGS-84 point")
    assert off < 2.0, off  # GCJ-02 left in, it would be ~ 500 m off
    assert fence["properties"]["radius"] == pytest.approx(40, abs=3)
    mx, my = seen["marker_px"]
    nearest = min(((x - mx) ** 2 + (y - my) ** 2) ** 0.5 for x, y in seen["vertices_px"])
    assert nearest < 1.0, (nearest, seen["marker_px"], seen["vertices_px"])


# ------------------------------------------------------------------ drawn fence -> live alarm


def _fence_session(url: str, tmp: Path, centre: tuple[float, float], plate: str) -> dict[str, Any]:
    out: dict[str, Any] = {"navigations": 0}
    with _logged_in(url, out) as b:
        page = b.page
        page.wait_for_selector("#live[data-state=open]")
        page.on("framenavigated", lambda _: out.__setitem__("navigations", out["navigations"] + 1))
        out["saved"] = _draw_fence(b, centre, 500, 15, "画的禁行区", "forbidden")
        page.screenshot(path=str(tmp / "fence-drawn.png"))
        # the terminal drives in (the test's other half); the alarm arrives over the socket
        item = page.locator("#alerts li", has_text=f"{plate} · 进入禁区")
        started = time.monotonic()
        item.wait_for(timeout=60_000)
        out["waited_s"] = time.monotonic() - started
        out["item_vehicle"] = item.get_attribute("data-vehicle-id")
        out["item_status"] = item.get_attribute("data-status")
        page.screenshot(path=str(tmp / "fence-alarm-live.png"))
    return out


@aio_test
async def test_a_circle_drawn_in_the_browser_raises_a_live_entry_alarm_in_the_queue(
    db_url: str, short_tmp: Path, tmp_path: Path
) -> None:
    async with (
        running_supervision(db_url, short_tmp, fence_interval=3600.0) as (ingest, supervision),
        dashboard(db_url) as dash,
    ):
        plate = "京A10002"
        phone = f"1380000{[v[0] for v in VEHICLES].index(plate):04d}"
        car = await Vehicle.online(ingest.port, phone, plate)
        await car.quiet(1.0)
        reloads = supervision.stats.fence_reloads
        centre = (116.50, 39.90)
        browser = asyncio.ensure_future(
            asyncio.to_thread(_fence_session, dash.url, tmp_path, centre, plate)
        )

        async def reloaded() -> bool:  # the drawn fence reached the rules (NOTIFY, no poll)
            assert not browser.done(), browser.result()
            return supervision.stats.fence_reloads > reloads

        await eventually(reloaded, timeout=60.0)
        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=300)
        for i in range(25):  # 1 km west of the centre to 1 km east, 30 km/h
            lon = centre[0] + (-1000 + i * 83) / M_PER_DEG_LON
            await car.send(fix(t0 + timedelta(seconds=10 * i), lon, centre[1], speed=30.0))
        seen = await browser
        stored = await AlertStore(ingest.pool).list(type="forbidden_zone")
        await car.close()
    print(f"\nscreenshots: {sorted(str(p) for p in tmp_path.glob('*.png'))}\n{seen}")
    assert seen["errors"] == [] and seen["outside"] == [], seen
    (alert,) = stored
    assert alert.details["fence_id"] == int(seen["saved"])
    assert seen["item_vehicle"] == str(dash.seeded.vehicles[plate])
    assert seen["item_status"] == "open"
    assert seen["navigations"] == 0  # live: no reload
