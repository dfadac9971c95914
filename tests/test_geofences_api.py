"""The geofence editor's REST API over a real twisted.web server and PostGIS: every endpoint,
its bad input (a clear 400 naming the problem), name clashes (409), and who may see and change
what: a dispatcher of company A never reads or changes company B's fences, sees the platform's
read-only, and its own fences concern only its own vehicles."""

from __future__ import annotations

import asyncpg

from store import geofences
from tests.aio import aio_test
from tests.dashboard_harness import Client, Dashboard, dashboard


def circle(name: str, lon: float = 116.40, lat: float = 39.90, **props: object) -> dict:
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {"name": name, "kind": "zone", "radius": 300, **props},
    }


def polygon(name: str, ring: list[list[float]], **props: object) -> dict:
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"name": name, "kind": "forbidden", **props},
    }


SQUARE = [[116.0, 39.0], [116.1, 39.0], [116.1, 39.1], [116.0, 39.1], [116.0, 39.0]]


async def _names(client: Client) -> set[str]:
    reply = await client.get("/api/geofences")
    assert reply.status == 200, reply.body
    assert reply.body["type"] == "FeatureCollection"
    return {f["properties"]["name"] for f in reply.body["features"]}


async def _created(client: Client, feature: dict) -> dict:
    reply = await client.request("POST", "/api/geofences", feature)
    assert reply.status == 201, reply.body
    return reply.body


async def _stored(dash: Dashboard) -> list[asyncpg.Record]:
    async with dash.pool.acquire() as conn:
        return await conn.fetch("SELECT id, name, company_id FROM geofences ORDER BY id")


@aio_test
async def test_create_get_update_delete_round_trip(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        admin = await dash.logged_in("admin")
        windows = [{"days": [1, 2, 3, 4, 5], "from": "07:00", "to": "09:00"}]
        made = await _created(
            admin,
            circle("学校门口", speed_limit=20, windows=windows, applies_to={"classes": ["coach"]}),
        )
        fid = made["id"]
        assert made["company_id"] is None and made["editable"] is True  # a platform fence
        assert made["geometry"] == {"type": "Point", "coordinates": [116.4, 39.9]}
        props = made["properties"]
        assert props["shape"] == "circle" and props["radius"] == 300
        assert props["windows"] == windows and props["applies_to"] == {"classes": ["coach"]}

        got = await admin.get(f"/api/geofences/{fid}")
        assert got.status == 200 and got.body == made
        assert await _names(admin) == {"学校门口"}

        corridor = {
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": [[116.0, 39.0], [116.2, 39.1]]},
            "properties": {
                "name": "G4 京港澳",
                "kind": "speed_limit",
                "width": 60,
                "speed_limit": 80,
            },
        }
        changed = await admin.request("PUT", f"/api/geofences/{fid}", corridor)
        assert changed.status == 200, changed.body
        assert changed.body["id"] == fid  # the id stays: alert keys refer to it
        assert changed.body["properties"]["shape"] == "corridor"
        assert changed.body["properties"]["width"] == 60
        async with dash.pool.acquire() as conn:
            (stored,) = await geofences.load(conn)
        assert stored.id == fid and stored.speed_limit_kmh == 80 and stored.width_m == 60

        rect = polygon("停车场", SQUARE, shape="rectangle")
        box = await _created(admin, rect)
        assert box["properties"]["shape"] == "rectangle" and box["bbox"] == [116, 39, 116.1, 39.1]

        gone = await admin.request("DELETE", f"/api/geofences/{fid}")
        assert gone.status == 200 and gone.body == {"deleted": fid}
        assert (await admin.get(f"/api/geofences/{fid}")).status == 404
        assert (await admin.request("DELETE", f"/api/geofences/{fid}")).status == 404
        assert await _names(admin) == {"停车场"}


@aio_test
async def test_bad_input_is_a_400_that_says_what_is_wrong(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        admin = await dash.logged_in("admin")
        bowtie = [[116.0, 39.0], [116.1, 39.1], [116.1, 39.0], [116.0, 39.1], [116.0, 39.0]]
        many = [[116 + 0.01 * i, 39 + 0.001 * (i % 2)] for i in range(1200)]
        cases = [
            (polygon("蝴蝶结", bowtie), "Self-intersection"),
            (circle("零半径", radius=0), "radius"),
            (circle("负半径", radius=-5), "radius"),
            (circle("怪类", kind="parking"), "kind 'parking'"),
            (circle("坏时段", windows=[{"from": "25:00", "to": "09:00"}]), "windows[0]"),
            (circle("坏时段2", windows=[{"from": "07:00"}]), "both 'from' and 'to'"),
            (circle("坏星期", windows=[{"days": [8]}]), "weekday"),
            (circle("错字", speedlimit=60), "did you mean 'speed_limit'"),
            (circle(""), "name"),
            (circle("限速无值", kind="speed_limit"), "speed_limit"),
            (circle("外星", lon=200.0), "coordinates"),
            (
                {
                    "type": "Feature",
                    "geometry": {"type": "LineString", "coordinates": many},
                    "properties": {"name": "长路", "width": 50},
                },
                "1200 vertices; at most 1000",
            ),
            (
                {
                    "type": "Feature",
                    "geometry": {"type": "MultiPoint", "coordinates": [[1, 2]]},
                    "properties": {"name": "多点"},
                },
                "not a fence shape",
            ),
            ({"type": "FeatureCollection", "features": []}, "not a Feature"),
            (circle("别家", applies_to={"vehicles": [999999]}), "999999"),
            ({**circle("无公司"), "company_id": 999999}, "no such company"),
            ({**circle("字符公司"), "company_id": "A"}, "company_id"),
        ]
        for feature, words in cases:
            reply = await admin.request("POST", "/api/geofences", feature)
            assert reply.status == 400, (words, reply.body)
            assert words in reply.body["error"], (words, reply.body)
        assert await _stored(dash) == []  # nothing half-stored
        for path, status in (
            ("/api/geofences/abc", 400),
            ("/api/geofences/0", 404),
            ("/api/geofences/99999999999", 404),
        ):
            assert (await admin.get(path)).status == status, path
        put = await admin.request("PUT", "/api/geofences/12345", circle("无此"))
        assert put.status == 404
        not_json = await admin.request(
            "POST", "/api/geofences", raw=b"{", headers={"Content-Type": "application/json"}
        )
        assert not_json.status == 400 and "JSON" in not_json.body["error"]
        wrong = await admin.request("PATCH", "/api/geofences/1", circle("x"))
        assert wrong.status == 405


@aio_test
async def test_a_name_clash_is_a_409(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        admin = await dash.logged_in("admin")
        await _created(admin, circle("一号"))
        second = await _created(admin, circle("二号", lon=116.5))
        clash = await admin.request("POST", "/api/geofences", circle("一号", lon=117.0))
        assert clash.status == 409 and "一号" in clash.body["error"], clash.body
        rename = await admin.request("PUT", f"/api/geofences/{second['id']}", circle("一号"))
        assert rename.status == 409, rename.body
        assert [r["name"] for r in await _stored(dash)] == ["一号", "二号"]


@aio_test
async def test_dispatchers_see_and_change_only_their_company_and_read_the_platform(
    db_url: str,
) -> None:
    async with dashboard(db_url) as dash:
        companies, vehicles = dash.seeded.companies, dash.seeded.vehicles
        admin, sup = await dash.logged_in("admin"), await dash.logged_in("super")
        a, b = await dash.logged_in("disp_a"), await dash.logged_in("disp_b")
        platform = await _created(admin, circle("禁区", kind="forbidden"))
        own = await _created(a, circle("A车场", applies_to={"vehicles": [vehicles["京A10001"]]}))
        assert own["company_id"] == companies["A"] and own["editable"] is True
        # a company's fence concerns only its vehicles, whatever it asks for
        assert own["properties"]["applies_to"]["companies"] == [companies["A"]]
        b_fence = await _created(b, circle("B车场", lon=121.47, lat=31.23))
        assert b_fence["company_id"] == companies["B"]

        assert await _names(a) == {"禁区", "A车场"}
        assert await _names(b) == {"禁区", "B车场"}
        assert await _names(sup) == await _names(admin) == {"禁区", "A车场", "B车场"}
        listed = (await a.get("/api/geofences")).body["features"]
        assert {f["properties"]["name"]: f["editable"] for f in listed} == {
            "禁区": False,
            "A车场": True,
        }

        # B's fence does not exist for A: read, change and delete all answer 404
        bid = b_fence["id"]
        assert (await a.get(f"/api/geofences/{bid}")).status == 404
        put = await a.request("PUT", f"/api/geofences/{bid}", circle("抢来的"))
        assert put.status == 404, put.body
        assert (await a.request("DELETE", f"/api/geofences/{bid}")).status == 404
        # the platform's fence is read-only for a dispatcher
        pid = platform["id"]
        assert (await a.get(f"/api/geofences/{pid}")).status == 200
        for reply in (
            await a.request("PUT", f"/api/geofences/{pid}", circle("禁区", radius=1)),
            await a.request("DELETE", f"/api/geofences/{pid}"),
        ):
            assert reply.status == 403 and "platform" in reply.body["error"], reply.body
        # nor can A make fences for B or aimed at B's vehicles
        for feature, words in (
            ({**circle("给B"), "company_id": companies["B"]}, "its own company"),
            (circle("盯B", applies_to={"companies": [companies["B"]]}), "only its own vehicles"),
            (circle("盯B车", applies_to={"vehicles": [vehicles["沪B20001"]]}), "your scope"),
        ):
            reply = await a.request("POST", "/api/geofences", feature)
            assert reply.status == 400 and words in reply.body["error"], reply.body
        # the name of B's fence is taken, but A learns nothing else about it
        clash = await a.request("POST", "/api/geofences", circle("B车场"))
        assert clash.status == 409
        # supervisors edit every company's fences, and may move one to the platform
        moved = await sup.request("PUT", f"/api/geofences/{own['id']}", circle("A车场"))
        assert moved.status == 200 and moved.body["company_id"] is None, moved.body
        assert (await a.request("DELETE", f"/api/geofences/{own['id']}")).status == 403
        rows = {r["name"]: r["company_id"] for r in await _stored(dash)}
        assert rows == {"禁区": None, "A车场": None, "B车场": companies["B"]}


@aio_test
async def test_export_and_import_geojson(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        companies = dash.seeded.companies
        admin, a = await dash.logged_in("admin"), await dash.logged_in("disp_a")
        await _created(
            admin, circle("禁区", kind="forbidden", windows=[{"from": "22:00", "to": "06:00"}])
        )
        await _created(a, polygon("A仓库", SQUARE, kind="zone"))
        export = await a.get("/api/geofences/export")
        assert export.status == 200
        assert "attachment" in export.headers["Content-Disposition"]
        features = export.body["features"]
        assert {f["properties"]["name"] for f in features} == {"禁区", "A仓库"}
        assert all("id" not in f and "editable" not in f for f in features)

        # the admin empties the table and imports A's export: the same fences come back
        before = await _stored(dash)
        async with dash.pool.acquire() as conn:
            await conn.execute("DELETE FROM geofences")
        imported = await admin.request("POST", "/api/geofences/import", export.body)
        assert imported.status == 200, imported.body
        assert imported.body["added"] == 2 and set(imported.body["ids"]) == {"禁区", "A仓库"}
        after = await _stored(dash)
        assert [(r["name"], r["company_id"]) for r in after] == [
            (r["name"], r["company_id"]) for r in before
        ]
        again = await admin.request("POST", "/api/geofences/import", export.body)
        assert again.body["unchanged"] == 2 and again.body["added"] == 0

        # a dispatcher's import: a name held by the platform refuses the whole file
        mine = {
            "type": "FeatureCollection",
            "features": [polygon("A新仓", SQUARE), circle("禁区", radius=50)],
        }
        refused = await a.request("POST", "/api/geofences/import", mine)
        assert refused.status == 409 and "禁区" in refused.body["error"], refused.body
        assert "A新仓" not in await _names(a)
        ok = await a.request(
            "POST",
            "/api/geofences/import",
            {"type": "FeatureCollection", "features": mine["features"][:1]},
        )
        assert ok.status == 200 and ok.body["added"] == 1
        rows = {r["name"]: r["company_id"] for r in await _stored(dash)}
        assert rows["A新仓"] == companies["A"]

        # every problem of a file, with its feature's index, in one answer
        bad = {
            "type": "FeatureCollection",
            "features": [circle("好"), circle("坏", radius=0), circle("也坏", kind="x")],
        }
        reply = await admin.request("POST", "/api/geofences/import", bad)
        assert reply.status == 400
        assert "feature 1" in reply.body["error"] and "feature 2" in reply.body["error"]
        assert "好" not in await _names(admin)
        for body, words in (
            ({"type": "Feature"}, "FeatureCollection"),
            ({"type": "FeatureCollection", "features": [circle("B的", company_id=1)]}, "unknown"),
            (
                {
                    "type": "FeatureCollection",
                    "features": [{**circle("给B"), "company_id": companies["B"]}],
                },
                "feature 0",
            ),
            (
                {
                    "type": "FeatureCollection",
                    "features": [
                        circle("A的", applies_to={"vehicles": [dash.seeded.vehicles["京A10001"]]}),
                        circle("盯B", applies_to={"vehicles": [dash.seeded.vehicles["沪B20001"]]}),
                    ],
                },
                "'盯B': applies_to.vehicles",
            ),
        ):
            reply = await a.request("POST", "/api/geofences/import", body)
            assert reply.status == 400 and words in reply.body["error"], reply.body


@aio_test
async def test_every_geofence_endpoint_needs_a_session_and_changes_need_csrf(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        anonymous = dash.client()
        await anonymous.get("/api/session")
        endpoints = [
            ("GET", "/api/geofences"),
            ("GET", "/api/geofences/1"),
            ("GET", "/api/geofences/export"),
            ("POST", "/api/geofences"),
            ("PUT", "/api/geofences/1"),
            ("DELETE", "/api/geofences/1"),
            ("POST", "/api/geofences/import"),
        ]
        for method, path in endpoints:
            reply = await anonymous.request(method, path)
            assert reply.status == 401, (method, path, reply.body)
        admin = await dash.logged_in("admin")
        fid = (await _created(admin, circle("一号")))["id"]
        for method, path, body in (
            ("POST", "/api/geofences", circle("二号")),
            ("PUT", f"/api/geofences/{fid}", circle("一号", radius=9)),
            ("DELETE", f"/api/geofences/{fid}", None),
            ("POST", "/api/geofences/import", {"type": "FeatureCollection", "features": []}),
        ):
            reply = await admin.request(method, path, body, csrf=False)
            assert reply.status == 403 and "CSRF" in reply.body["error"], (method, reply.body)
        assert await _names(admin) == {"一号"}
        assert (await admin.get(f"/api/geofences/{fid}")).body["properties"]["radius"] == 300
