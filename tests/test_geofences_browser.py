"""The vehicle list and the geofence editor in a real headless Chromium (Debian's, through
playwright's ``executable_path``): a dispatcher filters the list by plate, status and class,
then draws a circle with Leaflet-Geoman by mouse on the map, names it and saves it, and the
API has it. Synchronisation by DOM state (data-* attributes), as tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.aio import aio_test
from tests.dashboard_harness import PASSWORD, dashboard
from tests.test_dashboard_browser import chromium_page, watch

#: In the page: 5,000 vehicles as the map's "vehicles" event, then a plate search; the times
#: (ms) and how many rows the DOM holds. CDP's evaluate is not subject to the page's CSP.
BIG_LIST = """async () => {
  const core = await import('./core.js');
  const now = new Date().toISOString();
  const features = Array.from({length: 5000}, (_, i) => ({type: 'Feature', id: 100000 + i,
    geometry: {type: 'Point', coordinates: [116 + i / 10000, 39.9]},
    properties: {plate: '测A' + String(i).padStart(5, '0'), class: 'coach', online: i % 2 === 0,
                 speed_kmh: i % 120, fix_time: now}}));
  const list = document.querySelector('#vehicle-list');
  const t0 = performance.now();
  core.emit('vehicles', features);
  while (list.dataset.total !== '5000') await new Promise((r) => setTimeout(r, 5));
  const t1 = performance.now();
  const rowsAll = document.querySelectorAll('.vl-row').length;
  const search = document.querySelector('#vehicle-search');
  search.value = '测A0499';
  search.dispatchEvent(new Event('input'));
  const t2 = performance.now();
  return {load_ms: t1 - t0, search_ms: t2 - t1, rows_in_dom: rowsAll,
          count: list.dataset.count, total: list.dataset.total};
}"""


@contextlib.contextmanager
def _logged_in(url: str, user: str) -> Iterator[tuple[Page, dict[str, object]]]:
    """A page logged in as ``user`` and the dict the session fills with what it saw; requests
    that tried to leave 127.0.0.1 and the page's errors end up in it too."""
    outside: list[str] = []
    errors: list[str] = []
    seen: dict[str, object] = {"outside": outside, "errors": errors}
    with chromium_page() as page:
        watch(page, outside, errors)
        page.goto(url)
        page.wait_for_selector("body[data-state=login]")
        page.fill("#username", user)
        page.fill("#password", PASSWORD)
        page.click("#login-submit")
        page.wait_for_selector("body[data-state=ready]")
        yield page, seen


def _session(url: str, shots: Path) -> dict[str, object]:
    with _logged_in(url, "disp_a") as (page, seen):
        page.wait_for_selector("#map[data-vehicles='2']")

        # ---- the vehicle list
        vlist = page.locator("#vehicle-list")
        expect(vlist).to_have_attribute("data-total", "3")
        rows = page.locator(".vl-row")
        seen["all"] = rows.locator(".vl-plate").all_inner_texts()
        page.fill("#vehicle-search", "10002")
        expect(vlist).to_have_attribute("data-count", "1")
        seen["search"] = rows.locator(".vl-plate").all_inner_texts()
        page.fill("#vehicle-search", "沪B")  # another company's plate: nothing
        expect(vlist).to_have_attribute("data-count", "0")
        page.fill("#vehicle-search", "")
        page.select_option("#vehicle-status", "online")
        expect(vlist).to_have_attribute("data-count", "1")
        seen["online"] = rows.locator(".vl-plate").all_inner_texts()
        page.select_option("#vehicle-status", "alarm")  # both reported vehicles' alerts
        expect(vlist).to_have_attribute("data-count", "2")
        seen["alarm"] = rows.locator(".vl-plate").all_inner_texts()
        page.select_option("#vehicle-status", "offline")
        expect(vlist).to_have_attribute("data-count", "2")
        page.select_option("#vehicle-status", "")
        page.select_option("#vehicle-class", "hazmat")
        expect(vlist).to_have_attribute("data-count", "0")
        page.select_option("#vehicle-class", "coach")
        expect(vlist).to_have_attribute("data-count", "3")
        page.select_option("#vehicle-sort", "time")
        page.locator(".vl-row[data-vehicle-id]").first.click()
        expect(page.locator(".vl-row.selected")).to_have_count(1)
        page.screenshot(path=str(shots / "vehicle-list.png"))
        seen["big"] = page.evaluate(BIG_LIST)  # 5,000 vehicles through the same event
        page.screenshot(path=str(shots / "vehicle-list-5000.png"))

        # ---- draw a circle with geoman, by mouse, and save it
        page.click("#geofences-open")
        panel = page.locator("#geofence-panel")
        expect(panel).to_be_visible()
        expect(panel).to_have_attribute("data-count", "1")
        # the platform's fence: shown, not editable by a dispatcher
        page.click("#gf-list li:has-text('平台禁区')")
        expect(panel).to_have_attribute("data-mode", "editing")
        seen["platform_form"] = (
            page.is_visible("#gf-save"),
            page.is_visible("#gf-delete"),
            page.is_disabled("#gf-name"),
            page.is_visible("#gf-owner-row"),
        )
        page.click("#gf-cancel")
        expect(panel).to_have_attribute("data-mode", "idle")
        page.click("#geofence-panel [data-draw=circle]")
        expect(panel).to_have_attribute("data-mode", "drawing")
        box = page.locator("#map").bounding_box()
        assert box is not None
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx, cy)
        page.mouse.click(cx, cy)
        for step in range(1, 9):
            page.mouse.move(cx + 10 * step, cy)
        page.mouse.click(cx + 80, cy)
        expect(panel).to_have_attribute("data-mode", "editing")
        seen["radius_shown"] = page.input_value("#gf-radius")
        page.fill("#gf-name", "浏览器画的圆")
        page.select_option("#gf-kind", "forbidden")
        page.fill("#gf-speed", "30")
        page.click("#gf-add-window")
        page.locator(".gf-window input[type=checkbox][value='1']").check()
        page.fill(".gf-window .gf-from", "07:00")
        page.fill(".gf-window .gf-to", "09:30")
        page.locator("#gf-classes input[value=coach]").check()
        page.screenshot(path=str(shots / "geofence-form.png"))
        page.click("#gf-save")
        expect(panel).to_have_attribute("data-count", "2")
        expect(panel).to_have_attribute("data-mode", "idle")
        seen["saved"] = panel.get_attribute("data-saved")
        seen["listed"] = page.locator("#gf-list li").all_inner_texts()
        seen["paths"] = page.locator("#map path.leaflet-interactive").count()

        # ---- a bad save says why and keeps the form open
        page.click("#geofence-panel [data-draw=circle]")
        page.mouse.click(cx - 200, cy + 100)
        page.mouse.move(cx - 170, cy + 100)
        page.mouse.click(cx - 150, cy + 100)
        expect(panel).to_have_attribute("data-mode", "editing")
        page.fill("#gf-name", "浏览器画的圆")  # taken
        page.click("#gf-save")
        expect(page.locator("#gf-error")).to_contain_text("exists")
        seen["clash"] = page.inner_text("#gf-error")
        page.screenshot(path=str(shots / "geofence-saved.png"))
    return seen


@aio_test
async def test_vehicle_list_filters_and_a_circle_drawn_with_geoman_is_saved(
    db_url: str, tmp_path: Path
) -> None:
    async with dashboard(db_url) as dash:
        admin = await dash.logged_in("admin")
        platform = {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [116.2, 39.7]},
            "properties": {"name": "平台禁区", "kind": "forbidden", "radius": 200},
        }
        assert (await admin.request("POST", "/api/geofences", platform)).status == 201
        seen = await asyncio.to_thread(_session, dash.url, tmp_path)
        client = await dash.logged_in("disp_a")
        fences = (await client.get("/api/geofences")).body["features"]
    print(f"\nscreenshots: {sorted(str(p) for p in tmp_path.glob('*.png'))}")
    assert seen["errors"] == [], seen["errors"]
    assert seen["outside"] == [], seen["outside"]
    assert sorted(seen["all"]) == ["京A10001", "京A10002", "京A10003"]  # type: ignore[arg-type]
    assert seen["search"] == ["京A10002"]
    assert seen["online"] == ["京A10001"]
    assert sorted(seen["alarm"]) == ["京A10001", "京A10002"]  # type: ignore[arg-type]

    big = seen["big"]
    print(f"5,000 vehicles: {big}")
    assert big["total"] == "5000" and big["count"] == "10"  # type: ignore[index]
    assert big["rows_in_dom"] < 80  # type: ignore[index]  # the visible slice, not 5,000
    assert big["search_ms"] < 500  # type: ignore[index]

    assert seen["platform_form"] == (False, False, True, False)  # read-only, no owner choice
    (fence,) = [f for f in fences if f["properties"]["name"] != "平台禁区"]
    props = fence["properties"]
    assert str(fence["id"]) == seen["saved"]
    assert fence["company_id"] == dash.seeded.companies["A"]
    assert props["name"] == "浏览器画的圆" and props["kind"] == "forbidden"
    assert props["shape"] == "circle" and fence["geometry"]["type"] == "Point"
    assert props["radius"] > 0 and str(round(props["radius"])) == seen["radius_shown"]
    assert props["speed_limit"] == 30
    assert props["windows"] == [{"days": [1], "from": "07:00", "to": "09:30"}]
    assert props["applies_to"]["classes"] == ["coach"]
    lon, lat = fence["geometry"]["coordinates"]
    assert 115.9 < lon < 116.6 and 39.5 < lat < 40.0  # around Beijing, where the map was
    assert any("浏览器画的圆" in item for item in seen["listed"])  # type: ignore[attr-defined]
    assert seen["paths"] >= 1  # the fence is drawn on the map
    assert "浏览器画的圆" in str(seen["clash"])


IMPORT = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [116.41, 39.91]},
            "properties": {"name": "导入的圆", "radius": 150, "kind": "hazard", "speed_limit": 20},
        },
        {
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": [[116.3, 39.8], [116.5, 39.9]]},
            "properties": {"name": "导入的走廊", "width": 40, "kind": "route"},
        },
    ],
}


def _draw_shapes(url: str, shots: Path) -> dict[str, object]:
    """A supervisor draws a rectangle, a polygon and a corridor, then renames one in the list."""
    with _logged_in(url, "super") as (page, seen):
        page.click("#geofences-open")
        panel = page.locator("#geofence-panel")
        expect(panel).to_have_attribute("data-count", "0")
        box = page.locator("#map").bounding_box()
        assert box is not None
        x0, y0 = box["x"] + 60, box["y"] + 60

        def draw(
            shape: str, points: list[tuple[float, float]], name: str, kind: str, owner: str = ""
        ) -> None:
            page.click(f"#geofence-panel [data-draw={shape}]")
            expect(panel).to_have_attribute("data-mode", "drawing")
            for x, y in points:
                page.mouse.move(x0 + x, y0 + y)
                page.mouse.click(x0 + x, y0 + y)
            expect(panel).to_have_attribute("data-mode", "editing")
            page.fill("#gf-name", name)
            page.select_option("#gf-kind", kind)
            if owner:
                page.select_option("#gf-owner", label=owner)
            if shape == "corridor":
                page.fill("#gf-width", "80")
                page.fill("#gf-speed", "60")
            page.click("#gf-save")
            expect(panel).to_have_attribute("data-mode", "idle")

        draw("rectangle", [(0, 0), (120, 80)], "矩形区", "zone")
        expect(panel).to_have_attribute("data-count", "1")
        triangle = [(200, 0), (320, 20), (260, 120), (200, 0)]
        draw("polygon", triangle, "多边形区", "forbidden", "公司A")
        expect(panel).to_have_attribute("data-count", "2")
        draw("corridor", [(0, 200), (150, 260), (300, 220), (300, 220)], "走廊", "speed_limit")
        expect(panel).to_have_attribute("data-count", "3")
        page.screenshot(path=str(shots / "geofence-shapes.png"))

        # edit: pick the rectangle in the list, rename it
        page.click("#gf-list li:has-text('矩形区')")
        expect(panel).to_have_attribute("data-mode", "editing")
        seen["edit_shape"] = page.inner_text("#gf-shape")
        page.fill("#gf-name", "矩形区二")
        page.click("#gf-save")
        expect(panel).to_have_attribute("data-mode", "idle")
        expect(page.locator("#gf-list li:has-text('矩形区二')")).to_have_count(1)
        page.screenshot(path=str(shots / "geofence-edited.png"))

        # export to a file, and import one
        with page.expect_download() as download:
            page.click("#gf-export")
        exported = shots / "export.geojson"
        download.value.save_as(exported)
        seen["exported"] = json.loads(exported.read_text())
        upload = shots / "import.geojson"
        upload.write_text(json.dumps(IMPORT), encoding="utf-8")
        page.set_input_files("#gf-import", str(upload))
        expect(panel).to_have_attribute("data-count", "5")
        seen["imported"] = page.inner_text("#gf-message")
        upload.write_text(json.dumps({"type": "FeatureCollection", "features": [{}]}))
        page.set_input_files("#gf-import", str(upload))
        expect(page.locator("#gf-message")).to_contain_text("feature 0")
        seen["bad_import"] = page.inner_text("#gf-message")
    return seen


@aio_test
async def test_rectangle_polygon_and_corridor_drawn_and_a_fence_renamed(
    db_url: str, tmp_path: Path
) -> None:
    async with dashboard(db_url) as dash:
        seen = await asyncio.to_thread(_draw_shapes, dash.url, tmp_path)
        client = await dash.logged_in("super")
        fences = (await client.get("/api/geofences")).body["features"]
    print(f"\nscreenshots: {sorted(str(p) for p in tmp_path.glob('*.png'))}")
    assert seen["errors"] == [] and seen["outside"] == [], seen
    by_name = {f["properties"]["name"]: f for f in fences}
    assert set(by_name) == {"矩形区二", "多边形区", "走廊", "导入的圆", "导入的走廊"}
    rect, poly, road = by_name["矩形区二"], by_name["多边形区"], by_name["走廊"]
    assert rect["properties"]["shape"] == "rectangle" and len(rect["bbox"]) == 4
    assert rect["id"] == min(f["id"] for f in fences)  # renamed in place: same id
    assert "#" + str(rect["id"]) in str(seen["edit_shape"])
    assert poly["properties"]["shape"] == "polygon" and poly["properties"]["kind"] == "forbidden"
    assert len(poly["geometry"]["coordinates"][0]) == 4  # three corners, closed
    assert road["properties"]["shape"] == "corridor" and road["geometry"]["type"] == "LineString"
    assert len(road["geometry"]["coordinates"]) == 3
    assert road["properties"]["width"] == 80 and road["properties"]["speed_limit"] == 60
    assert poly["company_id"] == dash.seeded.companies["A"]  # the owner chosen in the form
    assert poly["properties"]["applies_to"]["companies"] == [dash.seeded.companies["A"]]
    assert rect["company_id"] is None and road["company_id"] is None  # the platform's
    exported = seen["exported"]["features"]  # type: ignore[index]
    assert {f["properties"]["name"] for f in exported} == {"矩形区二", "多边形区", "走廊"}
    assert "+2" in str(seen["imported"])
    assert {"导入的圆", "导入的走廊"} <= set(by_name)
    assert "import.geojson" in str(seen["bad_import"])
