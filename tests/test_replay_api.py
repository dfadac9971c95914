"""Track replay and export over a real dashboard server and PostGIS: tenant scoping, bad input,
server-side simplification, stops and alerts, and the exports (GeoJSON RFC 7946, GPX 1.1, the
folium print map with no asset from outside 127.0.0.1)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import geojson

from loadtest.bench_replay import insert_track, synthetic_track
from store import tracks
from store.partitions import create_partition
from tests.aio import aio_test
from tests.dashboard_harness import dashboard

T0 = datetime(2026, 11, 30, 22, 0, tzinfo=UTC)  # 06:00 Beijing time on 1 December
GPX = "{http://www.topografix.com/GPX/1/1}"


def _q(start: datetime, end: datetime, extra: str = "") -> str:
    return f"from={quote(start.isoformat())}&to={quote(end.isoformat())}{extra}"


async def _with_track(dash, plate: str = "京A10001", seconds: int = 3 * 3600):  # type: ignore[no-untyped-def]
    """Store a synthetic 1 Hz track of ``seconds`` for the plate; its id and the fixes."""
    vid = dash.seeded.vehicles[plate]
    fixes = synthetic_track(T0, seconds, seed=7)
    async with dash.pool.acquire() as conn:
        for day in {T0.date(), (T0 + timedelta(seconds=seconds)).date()}:
            await create_partition(conn, day)
        await insert_track(conn, vid, fixes)
    return vid, fixes


def _valid_rfc7946(collection: dict) -> None:
    """RFC 7946: a FeatureCollection of Features, lon/lat in range, no crs, lines of >= 2."""
    assert geojson.loads(json.dumps(collection)).is_valid
    assert collection["type"] == "FeatureCollection" and "crs" not in collection
    for feature in collection["features"]:
        assert feature["type"] == "Feature" and "properties" in feature
        geometry = feature["geometry"]
        if geometry is None:
            continue
        coords = geometry["coordinates"]
        points = coords if geometry["type"] == "LineString" else [coords]
        if geometry["type"] == "LineString":
            assert len(points) >= 2
        for lon, lat in points:
            assert -180 <= lon <= 180 and -90 <= lat <= 90


@aio_test
async def test_track_simplified_keeps_endpoints_times_and_speeds(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        vid, fixes = await _with_track(dash)
        client = await dash.logged_in("disp_a")
        end = T0 + timedelta(hours=3)
        reply = await client.get(f"/api/vehicles/{vid}/track?{_q(T0, end)}")
        assert reply.status == 200, reply.body
        _valid_rfc7946(reply.body)
        line = reply.body["features"][0]
        props = line["properties"]
        coords = line["geometry"]["coordinates"]
        assert props["points_total"] == len(fixes) == 3 * 3600
        assert 2 < props["points"] == len(coords) < len(fixes) // 4  # far fewer vertices
        assert len(props["times"]) == len(props["speeds"]) == len(coords)
        # the endpoints are kept, each vertex with its own fix's time and speed
        assert coords[0] == [round(fixes[0][1], 6), round(fixes[0][2], 6)]
        assert coords[-1] == [round(fixes[-1][1], 6), round(fixes[-1][2], 6)]
        by_time = {f[0]: f for f in fixes}
        for time, speed, (lon, lat) in zip(props["times"], props["speeds"], coords, strict=True):
            fix = by_time[datetime.fromisoformat(time)]
            assert (round(fix[1], 6), round(fix[2], 6), round(fix[3], 1)) == (lon, lat, speed)
        assert props["times"] == sorted(props["times"])
        # the fastest moment survives simplification (it is what the speed chart is for)
        assert max(props["speeds"]) == max(round(f[3], 1) for f in fixes)

        tighter = await client.get(f"/api/vehicles/{vid}/track?{_q(T0, end, '&max_points=200')}")
        assert tighter.status == 200
        assert tighter.body["features"][0]["properties"]["points"] <= 200
        assert tighter.body["features"][0]["properties"]["tolerance_m"] > 5
        full = await client.get(f"/api/vehicles/{vid}/track?{_q(T0, end, '&tolerance=0')}")
        assert full.body["features"][0]["properties"]["points"] > props["points"]


@aio_test
async def test_stops_and_alerts_are_markers(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        vid, fixes = await _with_track(dash)
        alert_time = fixes[1800][0]
        async with dash.pool.acquire() as conn:
            alert_id = await conn.fetchval(
                "INSERT INTO alerts (vehicle_id, type, key, severity, start_time)"
                " VALUES ($1, 'speeding', 'speeding2', 2, $2) RETURNING id",
                vid,
                alert_time,
            )
        client = await dash.logged_in("disp_a")
        end = T0 + timedelta(hours=3)
        # the expected stops, from the fixes themselves: runs below 3 km/h (this track has runs
        # of 166, 928 and 1,887 s, so 2 and 20 minutes tell a threshold from its half)
        runs, current = [], []
        for fix in fixes:
            if fix[3] < 3:
                current.append(fix)
            elif current:
                runs.append(current)
                current = []
        runs.append(current)
        for minutes in (2, 20):
            reply = await client.get(
                f"/api/vehicles/{vid}/track?{_q(T0, end, f'&stop_minutes={minutes}')}"
            )
            stops = [f for f in reply.body["features"] if f["properties"]["kind"] == "stop"]
            expected = [
                r for r in runs if r and (r[-1][0] - r[0][0]).total_seconds() >= minutes * 60
            ]
            assert len(stops) == len(expected) >= 1, minutes
            for stop, run in zip(stops, expected, strict=True):
                assert datetime.fromisoformat(stop["properties"]["start"]) == run[0][0]
                seconds = (run[-1][0] - run[0][0]).total_seconds()
                assert stop["properties"]["duration_s"] == seconds
        # the seeded alert (5 minutes before now) is outside the range; ours is inside
        alerts = [f for f in reply.body["features"] if f["properties"]["kind"] == "alert"]
        assert [a["properties"]["alert_id"] for a in alerts] == [alert_id]
        assert alerts[0]["geometry"]["coordinates"] == [
            round(fixes[1800][1], 6), round(fixes[1800][2], 6)
        ]


@aio_test
async def test_speeding_on_a_straight_road_survives_simplification(db_url: str) -> None:
    """Douglas-Peucker alone drops every vertex of a straight road; the fastest fix of each
    time slice is kept, so a minute at 120 km/h on it stays in the colours and the chart."""
    async with dashboard(db_url) as dash:
        vid = dash.seeded.vehicles["京A10001"]
        fixes = []
        lon = 116.0
        for t in range(3600):  # due east on one parallel, 50 km/h but for one minute
            speed = 120.0 if 1800 <= t < 1860 else 50.0
            lon += speed / 3.6 / (111_320 * 0.766)
            fixes.append((T0 + timedelta(seconds=t), lon, 40.0, speed, 90))
        async with dash.pool.acquire() as conn:
            await create_partition(conn, T0.date())
            await insert_track(conn, vid, fixes)
        client = await dash.logged_in("disp_a")
        query = _q(T0, T0 + timedelta(hours=1), "&max_points=100")
        props = (await client.get(f"/api/vehicles/{vid}/track?{query}")).body["features"][0][
            "properties"
        ]
        assert props["points_total"] == 3600 and props["points"] <= 100
        assert 120.0 in props["speeds"]
        assert props["times"][0] == "2026-11-30T22:00:00Z"
        assert props["times"][-1] == "2026-11-30T22:59:59Z"


@aio_test
async def test_scoped_to_the_users_company(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        vid, _ = await _with_track(dash, "沪B20001", 600)
        end = T0 + timedelta(hours=1)
        b = await dash.logged_in("disp_b")
        assert (await b.get(f"/api/vehicles/{vid}/track?{_q(T0, end)}")).status == 200
        a = await dash.logged_in("disp_a")
        for path in ("track", "track.gpx", "track.geojson", "track.html"):
            reply = await a.get(f"/api/vehicles/{vid}/{path}?{_q(T0, end)}")
            assert reply.status == 404 and reply.body == {"error": f"no vehicle {vid}"}, path
        missing = await a.get(f"/api/vehicles/999999/track?{_q(T0, end)}")
        assert missing.status == 404 and missing.body == {"error": "no vehicle 999999"}
        anonymous = dash.client()
        assert (await anonymous.get(f"/api/vehicles/{vid}/track?{_q(T0, end)}")).status == 401
        supervisor = await dash.logged_in("super")
        assert (await supervisor.get(f"/api/vehicles/{vid}/track.gpx?{_q(T0, end)}")).status == 200


@aio_test
async def test_bad_times_and_parameters_are_400s(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        vid = dash.seeded.vehicles["京A10001"]
        client = await dash.logged_in("disp_a")
        good_from, good_to = "2026-12-01T08:00:00%2B08:00", "2026-12-01T10:00:00Z"
        cases = [
            ("", "from: required"),
            (f"from={good_from}", "to: required"),
            (f"from=yesterday&to={good_to}", "not an ISO 8601 time"),
            (f"from=2026-12-01T08:00:00&to={good_to}", "give the offset"),
            (f"from={good_from}&to=2026-12-01T07:00:00%2B08:00", "to must be after from"),
            (f"from={good_from}&to=2026-12-09T08:00:01%2B08:00", "longer than 7 days"),
            (f"from={good_from}&to={good_to}&tolerance=-1", "between 0 and 10000"),
            (f"from={good_from}&to={good_to}&tolerance=nan", "between 0 and 10000"),
            (f"from={good_from}&to={good_to}&tolerance=abc", "not a number"),
            (f"from={good_from}&to={good_to}&max_points=1", "between 10 and 50000"),
            (f"from={good_from}&to={good_to}&stop_minutes=0", "between 1 and 1440"),
        ]
        for query, words in cases:
            reply = await client.get(f"/api/vehicles/{vid}/track?{query}")
            assert reply.status == 400 and words in reply.body["error"], (query, reply.body)
        reply = await client.get(f"/api/vehicles/abc/track?from={good_from}&to={good_to}")
        assert reply.status == 400 and "not an integer" in reply.body["error"]
        # a range with no fixes is an empty track, not an error
        empty = await client.get(f"/api/vehicles/{vid}/track?from={good_from}&to={good_to}")
        assert empty.status == 200
        assert empty.body["features"][0]["geometry"] is None
        assert empty.body["features"][0]["properties"]["points"] == 0


@aio_test
async def test_exports_gpx_and_geojson(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        vid, fixes = await _with_track(dash, seconds=1800)
        client = await dash.logged_in("disp_a")
        query = _q(T0, T0 + timedelta(hours=1))
        gpx = await client.get(f"/api/vehicles/{vid}/track.gpx?{query}")
        assert gpx.status == 200 and gpx.headers["Content-Type"] == "application/gpx+xml"
        disposition = gpx.headers["Content-Disposition"]
        assert disposition.startswith("attachment; filename=") and ".gpx" in disposition
        assert "filename*=UTF-8''%E4%BA%ACA10001-20261201-0600" in disposition  # 京: Beijing time
        root = ET.fromstring(gpx.body)
        assert root.tag == f"{GPX}gpx" and root.get("version") == "1.1"
        points = root.findall(f"{GPX}trk/{GPX}trkseg/{GPX}trkpt")
        assert len(points) == len(fixes)  # exports are full resolution
        for point, fix in ((points[0], fixes[0]), (points[-1], fixes[-1])):
            assert (float(point.get("lat")), float(point.get("lon"))) == (
                round(fix[2], 6), round(fix[1], 6)
            )
            when = datetime.fromisoformat(point.find(f"{GPX}time").text)
            assert when == fix[0]
        speed = points[-1].find(".//{http://www.garmin.com/xmlschemas/TrackPointExtension/v2}speed")
        assert abs(float(speed.text) - fixes[-1][3] / 3.6) < 0.01
        # waypoints come before the track (GPX 1.1's sequence)
        tags = [child.tag for child in root]
        assert tags[0] == f"{GPX}metadata" and tags[-1] == f"{GPX}trk"

        exported = await client.get(f"/api/vehicles/{vid}/track.geojson?{query}")
        assert exported.headers["Content-Type"] == "application/geo+json"
        assert exported.headers["Content-Disposition"].startswith("attachment;")
        body = json.loads(exported.body)
        _valid_rfc7946(body)
        assert len(body["features"][0]["geometry"]["coordinates"]) == len(fixes)
        assert body["bbox"][0] <= body["features"][0]["geometry"]["coordinates"][0][0]


@aio_test
async def test_print_map_loads_nothing_from_outside(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        vid, _ = await _with_track(dash, seconds=1800)
        client = await dash.logged_in("disp_a")
        query = _q(T0, T0 + timedelta(hours=1))
        reply = await client.get(f"/api/vehicles/{vid}/track.html?{query}")
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/html")
        assert "default-src 'self'" in reply.headers["Content-Security-Policy"]
        html = reply.body.decode()
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
        assert "../../../vendor/leaflet/leaflet.js" in urls
        # every asset relative (to this origin); no absolute URL anywhere in the page
        assert all(not re.match(r"^(?:[a-z]+:)?//", u) for u in urls), urls
        absolute = re.findall(r"https?://[^\s\"'<>)]+", html)
        assert all(re.match(r"https?://127\.0\.0\.1[:/]", u) for u in absolute), absolute
        # the relative path reaches the vendored Leaflet from where the page is served
        leaflet = await client.get("/vendor/leaflet/leaflet.js")
        assert leaflet.status == 200 and b"Leaflet" in leaflet.body[:2000]
        assert "京A10001" in html and "北京时间" in html and "L.polyline" in html


@aio_test
async def test_track_scan_uses_the_partition_index(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        vid, _ = await _with_track(dash, seconds=600)
        async with dash.pool.acquire() as conn:  # a fleet's day: 100 other vehicles' fixes
            await conn.execute(
                "INSERT INTO positions (vehicle_id, fix_time, received_time, geom)"
                " SELECT 1000 + v, $1::timestamptz + s * interval '10 seconds', $1,"
                "        ST_SetSRID(ST_MakePoint(116, 40), 4326)"
                " FROM generate_series(1, 100) v, generate_series(0, 359) s",
                T0,
            )
            await conn.execute("ANALYZE positions")
            plan = await tracks.explain(conn, vid, T0, T0 + timedelta(minutes=30))
        print(plan)
        assert "positions_dedupe" in plan or re.search(r"positions_\d{8}_vehicle_id", plan), plan
        assert "positions_20261130" in plan and "positions_default" not in plan, plan


@aio_test
async def test_a_track_too_slow_to_read_is_a_503(db_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The simplifying statement has a time limit (here 1 ms, for a 3-hour track)."""
    monkeypatch.setattr(tracks, "STATEMENT_TIMEOUT_MS", 1)
    async with dashboard(db_url) as dash:
        vid, _ = await _with_track(dash)
        client = await dash.logged_in("disp_a")
        reply = await client.get(f"/api/vehicles/{vid}/track?{_q(T0, T0 + timedelta(hours=3))}")
        assert reply.status == 503 and "took too long" in reply.body["error"]
        assert (await client.get("/api/vehicles")).status == 200  # the pool is fine
