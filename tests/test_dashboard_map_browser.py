"""The live map in a real headless Chromium (Debian's, through playwright's ``executable_path``):
class icons and state colours, the heading, clusters when zoomed out, markers changed in place,
follow-a-vehicle, the dark theme remembered, the offline base map with nothing leaving
127.0.0.1, MBTiles tiles with the GCJ-02 shift, and the frame time with 5,000 vehicles.

As in test_dashboard_browser.py: DOM state and locator assertions only (the page's CSP forbids
the eval a polling wait_for_function needs); page.evaluate calls a function (no eval) to reach
the page's own modules. Screenshots go to the test's tmp dir (paths printed).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from geo.geodesy import wgs84_to_gcj02
from maps.tiles import tile_source
from tests.aio import aio_test
from tests.dashboard_harness import PASSWORD, STATE_CASES, add_state_vehicles, dashboard
from tests.mbtiles import make_mbtiles
from tests.test_dashboard_browser import CHROMIUM, TIMEOUT_MS

#: The state colours of map.css (computed fill of the badge), rgb().
COLOURS = {
    "moving": "rgb(34, 165, 89)", "idle": "rgb(30, 120, 214)", "parked": "rgb(93, 109, 126)",
    "offline": "rgb(160, 166, 171)", "nofix": "rgb(224, 142, 11)", "alarm": "rgb(224, 49, 43)",
}  # fmt: skip
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


class Browser:
    """One Chromium page with every request off 127.0.0.1 refused and recorded."""

    def __init__(self, p: Any) -> None:
        self.browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        self.context = self.browser.new_context(viewport={"width": 1366, "height": 768})
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.page.route("**/*", self._route)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _route(self, r: Any) -> None:
        if urlparse(r.request.url).hostname != "127.0.0.1":
            self.outside.append(r.request.url)
            r.abort()
        else:
            r.continue_()

    def login(self, url: str, user: str = "disp_a") -> None:
        self.page.goto(url)
        self.page.wait_for_selector("body[data-state=login]")
        self.page.fill("#username", user)
        self.page.fill("#password", PASSWORD)
        self.page.click("#login-submit")
        self.page.wait_for_selector("body[data-state=ready]")

    def call(self, module: str, script: str, arg: Any = None) -> Any:
        """Run ``script`` (the body of ``async (m, arg) => {...}``) with the page's module."""
        return self.page.evaluate(
            f"async ([path, arg]) => {{ const m = await import(path); "
            f"return await (async (m, arg) => {{ {script} }})(m, arg); }}",
            [module, arg],
        )

    def close(self) -> None:
        self.browser.close()


def _markers(page: Page) -> dict[str, dict[str, str]]:
    """plate → the marker element's state, class, heading, fill colour, arrow and icon."""
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.vm')].map(
        (el) => [el.querySelector('.plate-label').textContent, {
            state: el.dataset.state, cls: el.dataset.class, heading: el.dataset.heading,
            fill: getComputedStyle(el.querySelector('.badge circle')).fill,
            arrow: el.querySelector('.hd').style.transform,
            arrowShown: getComputedStyle(el.querySelector('.hd')).display !== 'none',
            icon: el.querySelector('use').getAttribute('href'), id: el.dataset.vehicleId}]))""")


def _live_map(url: str, tmp: Path, ids: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with sync_playwright() as p:
        b = Browser(p)
        try:
            page = b.page
            b.login(url)
            # 2 seeded with a position + 6 of the state vehicles (one has no position yet)
            page.wait_for_selector("#map[data-vehicles='8'][data-basemap=offline]")
            b.call("./map.js", "m.getMap().setView([39, 117.05], 13, {animate: false});")
            page.wait_for_selector(".vm[data-state=moving]")
            expect(page.locator(".vm")).to_have_count(6)  # the state vehicles with a position
            out["markers"] = _markers(page)
            page.screenshot(path=str(tmp / "map-states.png"))
            # a pan while the cluster's zoom animation runs (markercluster skips it on its own)
            b.call(
                "./map.js",
                """const map = m.getMap(); map.setView([39, 117.05], 12, {animate: false});
                map.setView([39, 117.05], 13, {animate: false});
                map.setView([39.91, 116.42], 13, {animate: false});""",
            )
            expect(page.locator(".vm")).to_have_count(2)  # the seeded ones, in Beijing
            out["markers"].update(_markers(page))
            out["counters"] = page.evaluate(
                "() => ({...document.querySelector('#counters').dataset})"
            )
            out["basemap"] = page.evaluate("() => ({...document.querySelector('#map').dataset})")
            out["canvas"] = page.locator(".leaflet-basemap-pane canvas").count()
            b.call("./map.js", "m.getMap().setView([39, 117.05], 13, {animate: false});")

            # changed in place: the same element, repainted (no clear-and-recreate)
            moving = ids["京A20001"]
            page.evaluate(
                "(id) => { document.querySelector(`.vm[data-vehicle-id='${id}']`)"
                ".dataset.probe = 'same'; }",
                moving,
            )
            b.call(
                "./map.js",
                """m.updateVehicle({type: 'Feature', id: arg,
                properties: {state: 'alarm', in_alarm: true, heading: 180}});""",
                moving,
            )
            page.wait_for_selector(
                f".vm[data-vehicle-id='{moving}'][data-probe=same][data-state=alarm]"
            )
            out["rotated"] = page.locator(f".vm[data-vehicle-id='{moving}'] .hd").evaluate(
                "(el) => el.style.transform"
            )
            expect(page.locator("#counters")).to_have_attribute("data-alarm", "4")

            # follow: from the popup; a move keeps the vehicle in the middle
            page.locator(f".vm[data-vehicle-id='{moving}']").click()
            page.locator(".leaflet-popup button.follow").click()
            page.wait_for_selector(f"#map[data-follow='{moving}']")
            b.call(
                "./map.js",
                """m.updateVehicle({type: 'Feature', id: arg,
                geometry: {type: 'Point', coordinates: [117.5, 39.3]}, properties: {}});""",
                moving,
            )
            page.wait_for_selector("#map[data-pending='0']")
            out["centre"] = b.call(
                "./map.js", "const c = m.getMap().getCenter(); return [c.lng, c.lat];"
            )
            page.click("#follow-badge button")
            page.wait_for_selector("#map:not([data-follow])")

            # zoomed out: clusters, the one holding the alarms marked
            b.call("./map.js", "m.getMap().setView([36, 110], 5, {animate: false});")
            page.wait_for_selector(".vcluster.has-alarm")
            out["clusters"] = page.locator(".vcluster").count()
            out["cluster_text"] = page.locator(".vcluster").first.inner_text()
            out["single_markers"] = page.locator(".vm").count()
            page.screenshot(path=str(tmp / "map-clusters.png"))

            # the night theme: toggled, remembered over a reload
            page.click("#theme-toggle")
            page.wait_for_selector("body[data-theme=dark]")
            page.reload()
            page.wait_for_selector("body[data-state=ready][data-theme=dark]")
            page.wait_for_selector("#map[data-basemap=offline]")
            b.call("./map.js", "m.getMap().setView([39, 117.05], 13, {animate: false});")
            page.wait_for_selector(".vm[data-state=moving]")
            out["dark_bg"] = page.evaluate(
                "() => getComputedStyle(document.querySelector('#map')).backgroundColor"
            )
            out["dark_header"] = page.evaluate(
                "() => getComputedStyle(document.querySelector('header')).backgroundColor"
            )
            page.screenshot(path=str(tmp / "map-dark.png"))
            page.click("#theme-toggle")
            page.wait_for_selector("body[data-theme=light]")
            out["stored"] = page.evaluate("() => localStorage.getItem('fw-theme')")

            # the same transform in the page as in geo.geodesy
            out["gcj"] = b.call(
                "./gcj02.js",
                "return arg.map(([x, y]) => m.wgs84ToGcj02(x, y));",
                [[121.5272106, 31.1774276], [116.377817, 39.911954], [2.35, 48.85]],
            )
            page.goto(url + "?lang=en")
            page.wait_for_selector("body[data-state=ready]")
            out["english"] = page.inner_text("#basemap-notice")
            page.wait_for_selector("#map[data-basemap=offline]")
            b.call("./map.js", "m.getMap().setView([39, 117.05], 13, {animate: false});")
            out["english_states"] = page.locator(".vm").first.get_attribute("title")
        finally:
            out["outside"], out["errors"] = b.outside, b.errors
            b.close()
    return out


@aio_test
async def test_markers_states_clusters_follow_theme_and_offline_basemap(
    db_url: str, tmp_path: Path
) -> None:
    async with dashboard(db_url) as dash:
        async with dash.pool.acquire() as conn:
            ids = await add_state_vehicles(conn, dash.seeded.companies["A"])
        seen = await asyncio.to_thread(_live_map, dash.url, tmp_path, ids)
    print(f"\nscreenshots: {tmp_path}/map-states.png map-clusters.png map-dark.png")
    assert seen["errors"] == [], seen["errors"]
    assert seen["outside"] == [], f"requests left 127.0.0.1: {seen['outside']}"
    markers = seen["markers"]
    for plate, cls, _, fix, _, state, _ in STATE_CASES:
        if fix is None:
            assert plate not in markers  # nothing to place yet
            continue
        m = markers[plate]
        assert (m["state"], m["cls"], m["icon"]) == (state, cls, f"#fw-i-{cls}"), (plate, m)
        assert m["fill"] == COLOURS[state], (plate, m)
        assert m["heading"] == "90" and m["arrow"] == "rotate(90deg)", (plate, m)
        assert m["arrowShown"] is (state in ("moving", "idle", "alarm")), (plate, m)
    assert markers["京A10001"]["state"] == "alarm"  # seeded: open speeding alert
    assert seen["counters"] == {"total": "10", "online": "6", "offline": "4", "alarm": "3"}
    basemap = seen["basemap"]
    assert basemap["basemap"] == "offline" and basemap["tiles"] == "off"
    assert basemap["basemap_province"] == "42" and int(basemap["basemapCountries"]) > 200
    assert basemap["basemap_city"] == "388"  # zoom 12: cities and counties drawn too
    assert seen["canvas"] >= 1
    assert seen["rotated"] == "rotate(180deg)"
    assert seen["centre"] == pytest.approx([117.5, 39.3], abs=1e-6)
    assert seen["clusters"] >= 1 and seen["single_markers"] < 8
    assert int(seen["cluster_text"].split()[0]) >= 2
    assert seen["dark_bg"] == "rgb(14, 22, 33)" and seen["dark_header"] == "rgb(10, 16, 23)"
    assert seen["stored"] == "light"
    expected = [wgs84_to_gcj02(121.5272106, 31.1774276), wgs84_to_gcj02(116.377817, 39.911954)]
    for got, want in zip(seen["gcj"], expected, strict=False):
        assert got == pytest.approx(list(want), abs=1e-12)
    assert seen["gcj"][2] == [2.35, 48.85]
    assert "not an approved map" in seen["english"]
    assert seen["english_states"] and "·" in seen["english_states"]


def _tiles_page(url: str, tmp: Path, vehicle: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with sync_playwright() as p:
        b = Browser(p)
        try:
            page = b.page
            b.login(url)
            page.wait_for_selector("#map[data-tiles=on][data-gcj02=true]")
            page.wait_for_selector("img.leaflet-tile-loaded[src*='tiles/']")
            out["tile_src"] = page.locator("img.leaflet-tile-loaded").first.get_attribute("src")
            b.call("./map.js", "m.getMap().setView([39.9, 116.4], 15, {animate: false});")
            page.wait_for_selector(f".vm[data-vehicle-id='{vehicle}']")
            out["marker"] = b.call(
                "./map.js",
                """let at = null;
                m.getMap().eachLayer((l) => { if (l.vehicleId === arg) at = l.getLatLng(); });
                return at && [at.lng, at.lat];""",
                vehicle,
            )
            page.screenshot(path=str(tmp / "map-tiles-gcj02.png"))
        finally:
            out["outside"], out["errors"] = b.outside, b.errors
            b.close()
    return out


@aio_test
async def test_mbtiles_under_the_map_and_positions_shifted_to_gcj02(
    db_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "t.mbtiles"
    make_mbtiles(path, max_zoom=3)
    async with dashboard(db_url, tiles=tile_source(str(path), gcj02=True)) as dash:
        vehicle = dash.seeded.vehicles["京A10001"]  # WGS-84 116.40, 39.90
        seen = await asyncio.to_thread(_tiles_page, dash.url, tmp_path, vehicle)
    print(f"\nscreenshot: {tmp_path}/map-tiles-gcj02.png")
    assert seen["errors"] == [] and seen["outside"] == [], seen
    assert "tiles/" in seen["tile_src"]
    assert seen["marker"] == pytest.approx(list(wgs84_to_gcj02(116.40, 39.90)), abs=1e-9)
    assert seen["marker"] != pytest.approx([116.40, 39.90], abs=1e-4)  # really shifted


#: 5,000 vehicles over eastern China; each "report" moves every one of them a little.
FRAME_SCRIPT = """
const N = arg.n, classes = ['police', 'school_bus', 'coach', 'heavy_truck', 'hazmat'];
const states = ['moving', 'idle', 'parked', 'offline', 'nofix', 'alarm'];
const feature = (i, t) => ({type: 'Feature', id: 1000000 + i,
  geometry: {type: 'Point',
    coordinates: [105 + (i % 100) * 0.2 + t * 0.001, 22 + Math.floor(i / 100) * 0.35]},
  properties: {plate: '测' + String(i).padStart(5, '0'), class: classes[i % 5],
    state: states[(i + t) % 6], online: (i + t) % 6 !== 3, in_alarm: (i + t) % 6 === 5,
    heading: (i * 7 + t * 30) % 360, speed_kmh: 40}});
m.polling(false);  // only these vehicles: the page's 10 s REST refresh would remove them
const map = m.getMap();
map.setView([arg.lat, arg.lon], arg.zoom, {animate: false});
m.setVehicles(Array.from({length: N}, (_, i) => feature(i, 0)));
const drained = () => document.querySelector('#map').dataset.pending === '0';
const settle = () => new Promise((ok) => {
  const c = () => drained() ? ok() : requestAnimationFrame(c); c(); });
await settle();
const frames = []; let last = performance.now(), running = true;
const tick = (now) => {
  frames.push(now - last); last = now; if (running) requestAnimationFrame(tick); };
requestAnimationFrame(tick);
const started = performance.now();
for (let t = 1; t <= arg.rounds; t++) {
  // a report round spread as the live feed would: deltas in 10 bursts per period
  for (let burst = 0; burst < 10; burst++) {
    for (let i = burst; i < N; i += 10) m.updateVehicle(feature(i, t));
    await new Promise((ok) => setTimeout(ok, arg.period / 10));
  }
}
await settle();
running = false;
const elapsed = performance.now() - started;
return {frames, elapsed, markers: document.querySelectorAll('.vm').length,
  clusters: document.querySelectorAll('.vcluster').length};
"""


def _frames(url: str, tmp: Path, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = []
    with sync_playwright() as p:
        b = Browser(p)
        try:
            b.login(url)
            b.page.wait_for_selector("#map[data-basemap=offline]")
            for run in runs:
                got = b.call("./map.js", FRAME_SCRIPT, run)
                frames = sorted(got["frames"][1:])
                results.append({
                    **run, "frames": len(frames), "markers": got["markers"],
                    "clusters": got["clusters"], "elapsed_ms": round(got["elapsed"]),
                    "p50_ms": round(statistics.median(frames), 1),
                    "p95_ms": round(frames[int(len(frames) * 0.95)], 1),
                    "p99_ms": round(frames[int(len(frames) * 0.99)], 1),
                    "max_ms": round(frames[-1], 1),
                    "over_50ms": sum(1 for f in frames if f > 50),
                })  # fmt: skip
                b.page.screenshot(path=str(tmp / f"map-5000-z{run['zoom']}.png"))
        finally:
            errors = b.errors
            b.close()
    assert errors == [], errors
    return results


@aio_test
async def test_frame_time_with_5000_vehicles_updating(db_url: str, tmp_path: Path) -> None:
    """5,000 vehicles, each reporting (moved, new state and heading) once per period, fed
    through updateVehicle; the page's frame times while it applies them (printed, and kept in
    the tmp dir as frames.json), at the required 10 s: zoomed out (all in clusters) and at
    zoom 9 (hundreds of single markers in view)."""
    runs = [
        {"n": 5000, "rounds": 2, "period": 10000, "zoom": 5, "lon": 115, "lat": 30},
        {"n": 5000, "rounds": 2, "period": 10000, "zoom": 9, "lon": 115, "lat": 30},
    ]
    async with dashboard(db_url) as dash:
        results = await asyncio.to_thread(_frames, dash.url, tmp_path, runs)
    load = os.getloadavg()
    (tmp_path / "frames.json").write_text(json.dumps({"loadavg": load, "runs": results}, indent=1))
    print(
        f"\nframe times ({tmp_path}/frames.json, screenshots map-5000-z*.png), "
        f"load average {load[0]:.1f} on {os.cpu_count()} cores:"
    )
    for r in results:
        print(
            f"  zoom {r['zoom']}: {r['markers']} markers + {r['clusters']} clusters drawn; "
            f"{r['frames']} frames: p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, "
            f"p99 {r['p99_ms']} ms, max {r['max_ms']} ms, {r['over_50ms']} over 50 ms"
        )
    for r in results:
        # every round of 5,000 changes applied within its period, the median frame at 30 fps
        # or better; the tail is reported, not asserted: on a shared 2-core machine it
        # follows the load average (kept in frames.json) more than the page
        assert r["elapsed_ms"] < r["rounds"] * r["period"] + 5000, r
        assert r["p50_ms"] < 34, r
