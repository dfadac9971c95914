"""The dashboard's REST API over a real twisted.web server and PostGIS: authentication, CSRF,
rate limiting, every endpoint's bad input, and tenant isolation (a dispatcher of company A
never reads or changes anything of company B)."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import asyncpg
import pytest

from fleetwatch.cli import main
from maps.alarms import AlarmApi
from maps.api import Api
from maps.geofences import GeofenceApi
from maps.limits import LoginLimiter
from maps.live import LiveHub
from maps.live_socket import LiveApi
from maps.panel import PanelApi
from maps.tiles import BaseMapApi
from maps.tracks import TrackApi
from tests.aio import aio_test
from tests.dashboard_harness import PASSWORD, STATE_CASES, Client, add_state_vehicles, dashboard

ENDPOINTS = [
    ("GET", "/api/vehicles"),
    ("GET", "/api/alerts?status=open"),
    ("POST", "/api/alerts/1/ack"),
    ("POST", "/api/logout"),
    ("GET", "/api/basemap"),
]


async def _refused_queries(client: Client, path: str, cases: list[tuple[str, str]]) -> None:
    """Each query string is answered 400 with a message containing its words."""
    for query, words in cases:
        reply = await client.get(f"{path}?{query}")
        assert reply.status == 400 and words in reply.body["error"], (query, reply.body)


def _plates(collection: dict) -> set[str]:
    return {f["properties"]["plate"] for f in collection["features"]}


@pytest.mark.parametrize("secure", [False, True])
@aio_test
async def test_cookies_are_secure_behind_tls_only_when_asked(db_url: str, secure: bool) -> None:
    """``serve --secure-cookies`` (a TLS proxy in front): both cookies are marked Secure; without
    it they are not, or a browser on plain http://127.0.0.1 could never log in."""
    async with dashboard(db_url, secure_cookies=secure) as dash:
        reply = await dash.client().login("disp_a")
        assert reply.status == 200, reply.body
        for name in ("fw_session=", "fw_csrf="):
            cookie = next(c for c in reply.cookies if c.startswith(name))
            assert ("Secure" in cookie.split("; ")) is secure, cookie


@aio_test
async def test_login_session_cookie_and_logout(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        client = dash.client()
        anonymous = await client.get("/api/session")
        assert anonymous.status == 200 and anonymous.body["user"] is None
        reply = await client.login("disp_a")
        assert reply.status == 200, reply.body
        assert reply.body["user"]["role"] == "dispatcher"
        assert reply.body["user"]["company"] == "公司A"
        session_cookie = next(c for c in reply.cookies if c.startswith("fw_session="))
        assert "HttpOnly" in session_cookie and "SameSite=strict" in session_cookie
        csrf_cookie = next(c for c in reply.cookies if c.startswith("fw_csrf="))
        assert "HttpOnly" not in csrf_cookie  # the page reads it to send the header
        assert reply.body["csrf"] == client.cookies["fw_csrf"]
        async with dash.pool.acquire() as conn:  # only the token's digest is stored
            stored = await conn.fetchval("SELECT token_sha256 FROM sessions")
        assert client.cookies["fw_session"].encode() not in bytes(stored)
        me = await client.get("/api/session")
        assert me.body["user"]["username"] == "disp_a"

        old_cookies = dict(client.cookies)
        out = await client.request("POST", "/api/logout")
        assert out.status == 200
        assert (await client.get("/api/vehicles")).status == 401
        client.cookies = old_cookies  # a replayed token of a closed session is worthless
        replay = await client.get("/api/vehicles")
        assert replay.status == 401 and "not logged in" in replay.body["error"]

        late = await dash.logged_in("disp_b")
        assert (await late.get("/api/vehicles")).status == 200
        async with dash.pool.acquire() as conn:
            await conn.execute("UPDATE sessions SET expires_at = now() - interval '1 second'")
        expired = await late.get("/api/vehicles")
        assert expired.status == 401 and "expired" in expired.body["error"]


@aio_test
async def test_login_bad_input_and_wrong_passwords(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        client = dash.client()
        await client.get("/api/session")
        good = {"username": "disp_a", "password": PASSWORD}
        cases = [
            (await client.request("POST", "/api/login", good, csrf=False), 403, "CSRF"),
            (
                await client.request(
                    "POST",
                    "/api/login",
                    raw=b"username=disp_a",
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                ),
                415,
                "application/json",
            ),
            (
                await client.request(
                    "POST", "/api/login", raw=b"{nope", headers={"Content-Type": "application/json"}
                ),
                400,
                "JSON",
            ),
            (await client.request("POST", "/api/login", [1, 2]), 400, "object"),
            (await client.request("POST", "/api/login", {"username": "disp_a"}), 400, "password"),
            (
                await client.request("POST", "/api/login", {"username": 5, "password": "x"}),
                400,
                "username",
            ),
            (
                await client.request("POST", "/api/login", {**good, "password": "wrong one"}),
                401,
                "wrong user name or password",
            ),
            (
                await client.request("POST", "/api/login", {**good, "username": "nobody"}),
                401,
                "wrong user name or password",
            ),
        ]
        for reply, status, words in cases:
            assert reply.status == status, reply.body
            assert words in reply.body["error"], reply.body
        async with dash.pool.acquire() as conn:
            await conn.execute("UPDATE users SET disabled = true WHERE username = 'disp_b'")
        disabled = await client.request("POST", "/api/login", {**good, "username": "disp_b"})
        assert disabled.status == 401
        assert "fw_session" not in client.cookies


@aio_test
async def test_login_rate_limited_per_user_and_address(db_url: str) -> None:
    async with dashboard(db_url, limiter=LoginLimiter(attempts=3, window=600)) as dash:
        client = dash.client()
        await client.get("/api/session")
        for _ in range(3):
            reply = await client.request(
                "POST", "/api/login", {"username": "disp_a", "password": "wrong pass"}
            )
            assert reply.status == 401
        blocked = await client.request(
            "POST", "/api/login", {"username": "disp_a", "password": PASSWORD}
        )
        assert blocked.status == 429, blocked.body
        assert "too many failed logins" in blocked.body["error"]
        assert int(blocked.headers["Retry-After"]) > 500
        other = await dash.client().login("disp_b")  # another user is not locked out
        assert other.status == 200


@aio_test
async def test_every_endpoint_needs_a_session_and_changes_need_csrf(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        anonymous = dash.client()
        await anonymous.get("/api/session")
        for method, path in ENDPOINTS:
            reply = await anonymous.request(method, path)
            assert reply.status == 401, (method, path, reply.body)
            assert reply.body["error"]
        client = await dash.logged_in("disp_a")
        own = dash.seeded.alerts["京A10001"]
        for path in (f"/api/alerts/{own}/ack", "/api/logout"):
            missing = await client.request("POST", path, csrf=False)
            assert missing.status == 403 and "CSRF token missing" in missing.body["error"]
            forged = await client.request("POST", path, headers={"X-CSRF-Token": "forged"})
            assert forged.status == 403 and "does not match" in forged.body["error"]
        # a cookie and header that agree but are not the session's own token
        client.cookies["fw_csrf"] = "planted"
        planted = await client.request("POST", f"/api/alerts/{own}/ack")
        assert planted.status == 403
        async with dash.pool.acquire() as conn:
            assert await conn.fetchval("SELECT status FROM alerts WHERE id = $1", own) == "open"


@aio_test
async def test_vehicles_are_scoped_geojson_and_paginated(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        a = (await (await dash.logged_in("disp_a")).get("/api/vehicles")).body
        assert a["type"] == "FeatureCollection"
        assert _plates(a) == {"京A10001", "京A10002", "京A10003"}
        by_plate = {f["properties"]["plate"]: f for f in a["features"]}
        first = by_plate["京A10001"]
        assert first["geometry"] == {"type": "Point", "coordinates": [116.40, 39.90]}
        assert first["properties"]["online"] is True
        assert first["properties"]["class"] == "coach"
        assert by_plate["京A10002"]["properties"]["online"] is False
        assert by_plate["京A10003"]["geometry"] is None  # never reported
        assert a["next_after"] is None

        b = (await (await dash.logged_in("disp_b")).get("/api/vehicles")).body
        assert _plates(b) == {"沪B20001", "沪B20002"}
        sup = (await (await dash.logged_in("super")).get("/api/vehicles")).body
        assert len(sup["features"]) == 5  # every company, not the unassigned pool
        admin = await dash.logged_in("admin")
        assert "粤C30001" in _plates((await admin.get("/api/vehicles")).body)

        page1 = (await admin.get("/api/vehicles?limit=4")).body
        assert len(page1["features"]) == 4 and page1["next_after"] == page1["features"][-1]["id"]
        page2 = (await admin.get(f"/api/vehicles?limit=4&after={page1['next_after']}")).body
        assert len(page2["features"]) == 2 and page2["next_after"] is None
        assert not {f["id"] for f in page1["features"]} & {f["id"] for f in page2["features"]}

        await _refused_queries(admin, "/api/vehicles", [
            ("limit=0", "between 1 and"),
            ("limit=abc", "not an integer"),
            ("after=-1", "between 0 and"),
            ("limit=99999", "between 1 and"),
        ])  # fmt: skip


@aio_test
async def test_vehicle_states_ignition_and_alarm_are_scoped(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        async with dash.pool.acquire() as conn:
            await add_state_vehicles(conn, dash.seeded.companies["A"])
        a = (await (await dash.logged_in("disp_a")).get("/api/vehicles")).body
        props = {f["properties"]["plate"]: f["properties"] for f in a["features"]}
        for plate, cls, _, fix, _, state, ignition in STATE_CASES:
            p = props[plate]
            assert (p["state"], p["ignition"]) == (state, ignition), (plate, p)
            assert p["in_alarm"] is (state == "alarm"), (plate, p)
            assert (p["received_time"] is None) is (fix is None), (plate, p)
            assert p["class"] == cls
        moving = props["京A20001"]
        assert moving["heading"] == 90 and moving["speed_kmh"] == 42.0
        assert moving["received_time"] < moving["fix_time"]  # ISO, both UTC
        # the seeded vehicles: open speeding alerts where they have a position
        assert props["京A10001"]["in_alarm"] and props["京A10001"]["state"] == "alarm"
        assert props["京A10003"]["state"] == "offline" and not props["京A10003"]["in_alarm"]
        # company B's alarms are not A's: B sees its own, in alarm; A's list has none of them
        b = (await (await dash.logged_in("disp_b")).get("/api/vehicles")).body
        assert {f["properties"]["state"] for f in b["features"]} == {"alarm"}
        assert not _plates(b) & set(props)
        # without the protocol edge's reading the ignition is unknown, never guessed
        bare = Api(dash.pool)
        assert bare.ignition is None


@aio_test
async def test_alerts_are_scoped_filtered_and_paginated(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        seeded = dash.seeded
        a = await dash.logged_in("disp_a")
        listed = (await a.get("/api/alerts?status=open")).body["alerts"]
        assert {x["id"] for x in listed} == {seeded.alerts["京A10001"], seeded.alerts["京A10002"]}
        assert all(x["plate"].startswith("京A") for x in listed)
        b_ids = {seeded.alerts["沪B20001"], seeded.alerts["沪B20002"]}
        b_listed = (await (await dash.logged_in("disp_b")).get("/api/alerts")).body["alerts"]
        assert {x["id"] for x in b_listed} == b_ids

        page = (await a.get("/api/alerts?status=open&limit=1")).body
        assert len(page["alerts"]) == 1 and page["next_before"] == page["alerts"][0]["id"]
        rest = (await a.get(f"/api/alerts?status=open&limit=1&before={page['next_before']}")).body
        assert len(rest["alerts"]) == 1 and rest["alerts"][0]["id"] < page["next_before"]
        assert (await a.get("/api/alerts?status=closed")).body["alerts"] == []

        await _refused_queries(a, "/api/alerts", [
            ("status=gone", "status 'gone'"),
            ("limit=x", "not an integer"),
            ("before=0", "between 1 and"),
        ])  # fmt: skip


@aio_test
async def test_ack_is_scoped_audited_and_checked(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        seeded = dash.seeded
        a = await dash.logged_in("disp_a")
        theirs = seeded.alerts["沪B20001"]
        refused = await a.request("POST", f"/api/alerts/{theirs}/ack")
        assert refused.status == 404 and f"no alert {theirs}" in refused.body["error"]
        async with dash.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT status, acknowledged_by FROM alerts WHERE id = $1", theirs
            )
            assert (row["status"], row["acknowledged_by"]) == ("open", None)
            assert not await conn.fetchval(
                "SELECT count(*) FROM alert_audit WHERE alert_id = $1", theirs
            )

        own = seeded.alerts["京A10001"]
        done = await a.request("POST", f"/api/alerts/{own}/ack")
        assert done.status == 200, done.body
        assert done.body["alert"]["status"] == "acknowledged"
        assert done.body["alert"]["acknowledged_by"] == "disp_a"
        again = await a.request("POST", f"/api/alerts/{own}/ack")
        assert again.status == 409 and again.body["error"]
        assert (await a.request("POST", "/api/alerts/abc/ack")).status == 400
        missing = await a.request("POST", "/api/alerts/999999/ack")
        assert missing.status == 404 and "no alert 999999" in missing.body["error"]
        still_open = (await a.get("/api/alerts?status=open")).body["alerts"]
        assert own not in {x["id"] for x in still_open}
        async with dash.pool.acquire() as conn:
            audit = await conn.fetch(
                "SELECT actor, action FROM alert_audit WHERE alert_id = $1", own
            )
        assert [(r["actor"], r["action"]) for r in audit] == [("disp_a", "acknowledge")]
        b_open = (await (await dash.logged_in("disp_b")).get("/api/alerts?status=open")).body
        assert theirs in {x["id"] for x in b_open["alerts"]}


@aio_test
async def test_unknown_paths_methods_and_static_files(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        client = await dash.logged_in("admin")
        unknown = await client.get("/api/nothing")
        assert unknown.status == 404 and "/api/nothing" in unknown.body["error"]
        wrong = await client.request("DELETE", "/api/vehicles")
        assert wrong.status == 405 and wrong.headers["Allow"] == "GET"
        page = await client.get("/")
        assert page.status == 200 and b'lang="zh-CN"' in page.body
        assert b"vendor/leaflet/leaflet.js" in page.body and b"//unpkg" not in page.body
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        assert page.headers["X-Frame-Options"] == "DENY"
        assert (await client.get("/vendor/leaflet/leaflet.js")).status == 200
        listing = await client.get("/vendor/")
        assert listing.status == 404


def _cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(args))
    finally:
        sys.stdin = old
    return code, out.getvalue(), err.getvalue()


@aio_test
async def test_users_cli(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)

    async def users(command: str, stdin: str = "long enough pw\n") -> tuple[int, str, str]:
        """``fleetwatch users COMMAND --db URL`` (words split on spaces)."""
        return await asyncio.to_thread(_cli, "users", *command.split(), "--db", db_url, stdin=stdin)

    try:
        await conn.execute("INSERT INTO companies (name) VALUES ('公司A')")
        code, _, err = await users("add d1 --role dispatcher --password-stdin")
        assert code == 1 and "needs --company" in err
        add_d1 = "add d1 --role dispatcher --company 公司A --password-stdin"
        code, _, err = await users(add_d1, stdin="short\n")
        assert code == 1 and "at least 8 characters" in err
        code, out, err = await users(add_d1)
        assert code == 0, err
        assert "d1, dispatcher, company 公司A" in out
        code, _, err = await users("add d1 --role admin --password-stdin")
        assert code == 1 and "exists already" in err
        code, _, err = await users("add x --role dispatcher --company nope --password-stdin")
        assert code == 1 and "no company 'nope'" in err
        stored = await conn.fetchval("SELECT password_hash FROM users WHERE username = 'd1'")
        assert stored.startswith("$argon2id$") and "long enough pw" not in stored

        user_id = await conn.fetchval("SELECT id FROM users WHERE username = 'd1'")
        await conn.execute(
            "INSERT INTO sessions (token_sha256, user_id, csrf, expires_at)"
            " VALUES ('\\x01', $1, 'c', now() + interval '1 hour')",
            user_id,
        )
        code, out, err = await users("passwd d1 --password-stdin", stdin="another long one\n")
        assert code == 0, err
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 0
        assert await conn.fetchval("SELECT password_hash FROM users") != stored
        code, _, err = await users("disable ghost")
        assert code == 1 and "no user 'ghost'" in err
        code, _, err = await users("disable d1")
        assert code == 0, err
        code, out, _ = await users("list")
        assert code == 0 and "d1, dispatcher, company 公司A, DISABLED" in out
    finally:
        await conn.close()


def test_openapi_describes_exactly_the_routes() -> None:
    spec = json.loads((Path(__file__).parent.parent / "docs" / "openapi.json").read_text())
    described = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    api = Api(pool=None)
    features = (
        GeofenceApi(api),
        AlarmApi(api),
        PanelApi(api),
        TrackApi(api),
        BaseMapApi(api, None),
    )
    routes = api.resource(*features, LiveApi(api, LiveHub(None, ""))).routes
    served = {
        (method, "/" + "/".join("{id}" if p == "{}" else p for p in pattern))
        for method, pattern in routes
    }
    assert described == served
    for method, path in served:
        responses = spec["paths"][path][method.lower()]["responses"]
        if path != "/session":  # every other endpoint can refuse bad input or a caller
            assert {"400", "401"} & set(responses), (method, path)
