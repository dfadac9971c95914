"""The alarm queue, the alert lifecycle over REST (handle, close, review, timeline), the vehicle
panel and its commands, and supervisors limited to an area: a real twisted.web server over
PostGIS (tests/dashboard_harness.py), with tenant isolation checked endpoint by endpoint."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from alerts.settings import Profile
from geo.calendar import is_night
from maps.panel import driving_time
from store.users import Scope
from tests.aio import aio_test
from tests.dashboard_harness import Client, Dashboard, dashboard
from tests.supervision_harness import Vehicle, eventually, fix, running_supervision
from tests.test_dashboard_api import _cli

#: Around central Beijing: 京A10001 (116.40, 39.90) and 京A10002 (116.45, 39.92) are inside,
#: 沪B (Shanghai) outside, 京A10003 has no position.
BEIJING_AREA = {
    "type": "FeatureCollection",
    "features": [
        {"type": "Feature", "properties": {"name": "东城"},
         "geometry": {"type": "Polygon", "coordinates": [
             [[116.3, 39.85], [116.42, 39.85], [116.42, 39.95], [116.3, 39.95], [116.3, 39.85]]]}},
        {"type": "Feature", "properties": {"name": "朝阳"},
         "geometry": {"type": "Polygon", "coordinates": [
             [[116.42, 39.85], [116.5, 39.85], [116.5, 39.95], [116.42, 39.95], [116.42, 39.85]]]}},
    ],
}  # fmt: skip


async def _ids(client: Client, view: str = "pending") -> list[int]:
    reply = await client.get(f"/api/alert-queue?view={view}")
    assert reply.status == 200, reply.body
    return [a["id"] for a in reply.body["alerts"]]


async def _more_alerts(dash: Dashboard) -> dict[str, int]:
    """A critical SOS (newest) and a low offline alarm (oldest) on 京A10001."""
    vid = dash.seeded.vehicles["京A10001"]
    out = {}
    async with dash.pool.acquire() as conn:
        for name, severity, minutes in (("sos", 1, 1), ("offline", 4, 30)):
            out[name] = await conn.fetchval(
                "INSERT INTO alerts (vehicle_id, type, key, severity, start_time)"
                " VALUES ($1, $2, $2, $3, now() - $4 * interval '1 minute') RETURNING id",
                vid, name, severity, minutes,
            )  # fmt: skip
    return out


@aio_test
async def test_queue_order_views_and_bad_input(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        extra = await _more_alerts(dash)
        a = await dash.logged_in("disp_a")
        speeding = [dash.seeded.alerts["京A10001"], dash.seeded.alerts["京A10002"]]
        # critical first; within "high" the two speeding alarms (same start) by id; low last
        assert await _ids(a) == [extra["sos"], *sorted(speeding), extra["offline"]]
        assert await _ids(a, "handled") == [] and await _ids(a, "review") == []
        b = await dash.logged_in("disp_b")
        assert set(await _ids(b)) == {
            dash.seeded.alerts["沪B20001"],
            dash.seeded.alerts["沪B20002"],
        }
        for query, words in (("view=closed", "view='closed': one of pending"),
                             ("limit=0", "limit=0: must be between 1"),
                             ("limit=x", "not an integer")):  # fmt: skip
            reply = await a.get(f"/api/alert-queue?{query}")
            assert reply.status == 400 and words in reply.body["error"], reply.body
        assert (await dash.client().get("/api/alert-queue")).status == 401


@aio_test
async def test_acknowledge_handle_close_review_and_the_timeline(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        a = await dash.logged_in("disp_a")
        target = dash.seeded.alerts["京A10001"]
        base = f"/api/alerts/{target}"

        early = await a.request("POST", f"{base}/handle", {"action": "phone_call"})
        assert early.status == 409 and "acknowledge it before" in early.body["error"]
        assert (await a.request("POST", f"{base}/ack")).status == 200
        assert target not in await _ids(a, "handled")

        for payload, status, words in (
            ({"action": "sms"}, 400, "action 'sms': one of text_sent"),
            ({"action": "note"}, 400, "action 'note': the note is required"),
            ({"action": "phone_call", "note": 5}, 400, "note: a string"),
            ({"action": "phone_call", "text": "slow down"}, 400, "a text goes with action"),
            ({"action": "text_sent"}, 400, "give the text to send"),
            ({"text": "x" * 201}, 400, "text: a string of at most 200"),
            ({"text": "请减速"}, 503, "command gateway"),  # this server has none
        ):
            reply = await a.request("POST", f"{base}/handle", payload)
            assert reply.status == status and words in reply.body["error"], (payload, reply.body)
        assert (await a.request("POST", "/api/alerts/x/handle", {})).status == 400
        no_csrf = await a.request("POST", f"{base}/handle", {"action": "note"}, csrf=False)
        assert no_csrf.status == 403
        form_type = {"Content-Type": "application/x-www-form-urlencoded"}
        form = await a.request("POST", f"{base}/handle", raw=b"action=note", headers=form_type)
        assert form.status == 415

        handled = await a.request(
            "POST", f"{base}/handle", {"action": "phone_call", "note": "司机已减速"}
        )
        assert handled.status == 200, handled.body
        assert handled.body["alert"]["status"] == "handled"
        assert handled.body["alert"]["handled_by"] == "disp_a"
        assert target not in await _ids(a) and target in await _ids(a, "handled")
        again = await a.request("POST", f"{base}/handle", {"action": "reported"})
        assert again.status == 200  # a second handling, audited

        review_early = await (await dash.logged_in("super")).request(
            "POST", f"{base}/review", {"verdict": "approved", "note": "ok"}
        )
        assert review_early.status == 200  # handled alerts may be reviewed before closing
        closed = await a.request("POST", f"{base}/close", {})
        assert closed.status == 200 and closed.body["alert"]["status"] == "closed"
        twice = await a.request("POST", f"{base}/close", {"note": "again"})
        assert twice.status == 409 and "closed alerts are final" in twice.body["error"]

        other = dash.seeded.alerts["京A10002"]
        unhandled = await a.request("POST", f"/api/alerts/{other}/close", {"note": "  "})
        assert unhandled.status == 409 and "needs a note" in unhandled.body["error"]
        false_alarm = await a.request("POST", f"/api/alerts/{other}/close", {"note": "误报"})
        assert false_alarm.status == 200
        assert false_alarm.body["alert"]["acknowledged_by"] == "disp_a"  # closing acknowledges

        sup = await dash.logged_in("super")
        assert await _ids(sup, "review") == [other]  # the first one is reviewed already
        assert (await a.request("POST", f"/api/alerts/{other}/review",
                                {"verdict": "approved", "note": "ok"})).status == 403  # fmt: skip
        for payload, words in (({"verdict": "fine", "note": "n"}, "verdict 'fine': one of"),
                               ({"verdict": "rejected"}, "note: required")):  # fmt: skip
            reply = await sup.request("POST", f"/api/alerts/{other}/review", payload)
            assert reply.status == 400 and words in reply.body["error"], reply.body
        rejected = await sup.request(
            "POST", f"/api/alerts/{other}/review", {"verdict": "rejected", "note": "应先电话核实"}
        )
        assert rejected.status == 200, rejected.body
        body = rejected.body["alert"]
        assert (body["status"], body["reviewed_by"], body["review_verdict"]) == (
            "closed", "super", "rejected",
        )  # fmt: skip
        second = await sup.request(
            "POST", f"/api/alerts/{other}/review", {"verdict": "approved", "note": "改判"}
        )
        assert second.status == 409 and "reviewed already" in second.body["error"]
        assert await _ids(sup, "review") == []
        pending = dash.seeded.alerts["沪B20001"]
        too_early = await sup.request(
            "POST", f"/api/alerts/{pending}/review", {"verdict": "approved", "note": "n"}
        )
        assert too_early.status == 409 and "only a handled or closed" in too_early.body["error"]

        timeline = await a.get(f"{base}/timeline")
        assert timeline.status == 200
        trail = [(e["action"], e["actor"], e["to_status"]) for e in timeline.body["audit"]]
        assert trail == [
            ("acknowledge", "disp_a", "acknowledged"), ("handle", "disp_a", "handled"),
            ("handle", "disp_a", "handled"), ("review", "super", "handled"),
            ("close", "disp_a", "closed"),
        ]  # fmt: skip
        assert timeline.body["audit"][1]["details"] == {
            "handling_action": "phone_call", "note": "司机已减速",
        }  # fmt: skip
        assert timeline.body["audit"][3]["details"] == {"verdict": "approved", "note": "ok"}
        assert (await a.get("/api/alerts/999999/timeline")).status == 404


@aio_test
async def test_company_a_cannot_touch_company_b(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        a = await dash.logged_in("disp_a")
        theirs = dash.seeded.alerts["沪B20001"]
        vehicle = dash.seeded.vehicles["沪B20001"]
        for method, path, payload in (
            ("GET", f"/api/alerts/{theirs}/timeline", None),
            ("POST", f"/api/alerts/{theirs}/handle", {"action": "phone_call"}),
            ("POST", f"/api/alerts/{theirs}/close", {"note": "not mine"}),
            ("POST", f"/api/alerts/{theirs}/review", {"verdict": "approved", "note": "n"}),
            ("GET", f"/api/vehicles/{vehicle}/panel", None),
            ("POST", f"/api/vehicles/{vehicle}/commands", {"kind": "query_position"}),
            ("GET", f"/api/vehicles/{dash.seeded.unassigned}/panel", None),
        ):
            reply = await a.request(method, path, payload)
            assert reply.status == 404, (method, path, reply.body)
            assert str(theirs) in reply.body["error"] or "vehicle" in reply.body["error"]
        async with dash.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT status, reviewed_by FROM alerts WHERE id = $1", theirs
            )
            audits = await conn.fetchval(
                "SELECT count(*) FROM alert_audit WHERE alert_id = $1", theirs
            )
        assert (row["status"], row["reviewed_by"], audits) == ("open", None, 0)


@aio_test
async def test_vehicle_panel_and_command_bad_input(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        vid = dash.seeded.vehicles["京A10001"]
        now = datetime.now(UTC)
        async with dash.pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO positions (vehicle_id, fix_time, received_time, geom, speed_kmh)"
                " VALUES ($1, $2, $2, ST_SetSRID(ST_MakePoint(116.40, 39.90), 4326), 50)",
                [(vid, now - timedelta(minutes=10 - i)) for i in range(10)],
            )
            await conn.execute(  # ACC on, positioned, doors locked, fully loaded
                "UPDATE last_positions SET status = $2 WHERE vehicle_id = $1", vid, 0x1303
            )
            await conn.execute(
                "INSERT INTO geofences (name, kind, shape, geom, properties) VALUES"
                " ('长安街限速', 'speed_limit', 'polygon',"
                " ST_MakeEnvelope(116.3, 39.8, 116.5, 40.0, 4326), '{\"speed_limit\": 60}')"
            )
            await conn.execute(
                "UPDATE alerts SET driver = '张三' WHERE id = $1", dash.seeded.alerts["京A10001"]
            )
        a = await dash.logged_in("disp_a")
        reply = await a.get(f"/api/vehicles/{vid}/panel")
        assert reply.status == 200, reply.body
        panel = reply.body
        assert panel["vehicle"]["plate"] == "京A10001" and panel["vehicle"]["online"] is True
        assert panel["last"]["speed_kmh"] == 42
        assert panel["status"] == ["acc_on", "positioned", "doors_locked", "load_full"]
        night = is_night(datetime.fromisoformat(panel["last"]["fix_time"]).timestamp())
        posted = 60 * 0.8 if night else 60  # a coach's limits are 80% at night
        assert panel["limit"] == {"kmh": posted, "expressway": False, "fences": ["长安街限速"]}
        assert panel["driver"] == "张三"
        driving = panel["driving"]
        assert driving["daily_limit_s"] == 8 * 3600
        assert driving["continuous_limit_s"] in (4 * 3600, 2 * 3600)  # a coach at night: 2 h
        if datetime.fromisoformat(driving["since"]) < now - timedelta(minutes=10):
            assert 9 * 60 < driving["today_s"] <= 11 * 60, driving
            assert driving["continuous_s"] == driving["today_s"]
        assert [x["id"] for x in panel["alerts"]] == [dash.seeded.alerts["京A10001"]]

        never = await a.get(f"/api/vehicles/{dash.seeded.vehicles['京A10003']}/panel")
        assert never.status == 200 and never.body["last"] is None
        for path, words in (("/api/vehicles/x/panel", "not an integer"),
                            ("/api/vehicles/0/panel", "out of range")):  # fmt: skip
            bad = await a.get(path)
            assert bad.status == 400 and words in bad.body["error"]
        assert (await a.get("/api/vehicles/999999/panel")).status == 404

        commands = f"/api/vehicles/{vid}/commands"
        for payload, words in (
            ({}, "kind None: one of text, query_position, track"),
            ({"kind": "reboot"}, "kind 'reboot'"),
            ({"kind": "text"}, "text: required"),
            ({"kind": "text", "text": "hi", "tts": False, "display": False}, "shown, read aloud"),
            ({"kind": "text", "text": "hi", "urgent": "yes"}, "urgent: true or false"),
            ({"kind": "track", "interval_s": 10}, "duration_s: a whole number"),
            ({"kind": "track", "interval_s": -1, "duration_s": 60}, "interval_s"),
            ({"kind": "track", "interval_s": 10, "duration_s": 86401}, "duration_s"),
        ):
            bad = await a.request("POST", commands, payload)
            assert bad.status == 400 and words in bad.body["error"], (payload, bad.body)
        assert (
            await a.request("POST", commands, {"kind": "query_position"}, csrf=False)
        ).status == 403
        no_gateway = await a.request("POST", commands, {"kind": "query_position"})
        assert no_gateway.status == 503


def test_driving_time_counts_moving_fixes_and_resets_after_a_rest() -> None:
    p = Profile()  # moving > 5 km/h, a fix holds 300 s, a rest is 20 min
    t0 = datetime(2026, 12, 1, 8, tzinfo=UTC)
    fixes = [(t0 + timedelta(seconds=30 * i), 60.0) for i in range(121)]  # 1 h driving
    end = fixes[-1][0]
    assert driving_time(fixes, end, p) == (3600.0, 3600.0)
    # a 10-minute silence while driving: 5 min count (hold), the rest is a stop, not a rest
    gap = [*fixes, (end + timedelta(minutes=10), 60.0)]
    assert driving_time(gap, end + timedelta(minutes=10), p) == (3900.0, 3900.0)
    # 25 min parked (slow fixes), then 10 min more driving: the continuous count starts again
    parked = [(end + timedelta(minutes=m), 0.0) for m in range(1, 26)]
    again = [(end + timedelta(minutes=26, seconds=30 * i), 50.0) for i in range(21)]
    total, continuous = driving_time([*fixes, *parked, *again], again[-1][0], p)
    assert (total, continuous) == (3600.0 + 60 + 600.0, 600.0)  # + the minute to parking
    assert driving_time([], end, p) == (0.0, 0.0)


@aio_test
async def test_supervisor_limited_to_an_area(db_url: str, tmp_path: Path) -> None:
    area_file = tmp_path / "beijing.geojson"
    area_file.write_text(json.dumps(BEIJING_AREA, ensure_ascii=False))

    async def users(*args: str) -> tuple[int, str, str]:
        return await asyncio.to_thread(_cli, "users", *args, "--db", db_url,
                                       stdin="long enough pw\n")  # fmt: skip

    async with dashboard(db_url) as dash:
        sup = await dash.logged_in("super")
        everything = {
            f["properties"]["plate"] for f in (await sup.get("/api/vehicles")).body["features"]
        }
        assert everything == {"京A10001", "京A10002", "京A10003", "沪B20001", "沪B20002"}

        code, out, err = await users(
            "area", "super", "--area", str(area_file), "--area-name", "东城朝阳"
        )
        assert code == 0, err
        assert "super, supervisor, area 东城朝阳" in out
        # the same session sees the new scope at its next request
        seen = (await sup.get("/api/vehicles")).body["features"]
        assert {f["properties"]["plate"] for f in seen} == {"京A10001", "京A10002"}
        queue = await _ids(sup)
        assert set(queue) == {dash.seeded.alerts["京A10001"], dash.seeded.alerts["京A10002"]}
        assert set(await _ids_of_alerts(sup)) == set(queue)
        shanghai = dash.seeded.vehicles["沪B20001"]
        assert (await sup.get(f"/api/vehicles/{shanghai}/panel")).status == 404
        far = dash.seeded.alerts["沪B20001"]
        assert (await sup.request("POST", f"/api/alerts/{far}/close", {"note": "x"})).status == 404
        assert (await sup.request("POST", f"/api/alerts/{far}/ack")).status == 404
        me = (await sup.get("/api/session")).body["user"]
        assert (me["has_area"], me["area_name"]) == (True, "东城朝阳")

        # the vehicle moves out of the area: out of scope at once
        async with dash.pool.acquire() as conn:
            await conn.execute(
                "UPDATE last_positions SET geom = ST_SetSRID(ST_MakePoint(117.2, 39.1), 4326)"
                " WHERE vehicle_id = $1", dash.seeded.vehicles["京A10002"],
            )  # fmt: skip
            scope = await _user_scope(conn, "super")
            rows = await conn.fetch(
                "SELECT v.company_id, ST_X(p.geom) AS lon, ST_Y(p.geom) AS lat, v.plate"
                " FROM vehicles v LEFT JOIN last_positions p ON p.vehicle_id = v.id"
            )
        seen = (await sup.get("/api/vehicles")).body["features"]
        assert {f["properties"]["plate"] for f in seen} == {"京A10001"}
        # Scope.allows (in memory) agrees with scope_sql, vehicle by vehicle
        assert {r["plate"] for r in rows if scope.allows(r["company_id"], r["lon"], r["lat"])} == {
            "京A10001"
        }

        code, _, err = await users("area", "disp_a", "--area", str(area_file))
        assert code == 1 and "only a supervisor has an area" in err
        bad = tmp_path / "line.geojson"
        bad.write_text('{"type": "LineString", "coordinates": [[116, 39], [117, 40]]}')
        code, _, err = await users("area", "super", "--area", str(bad))
        assert code == 1 and "an area must be polygons, not 'LineString'" in err
        bowtie = tmp_path / "bowtie.geojson"
        bowtie.write_text('{"type": "Polygon", "coordinates": [[[0,0],[1,1],[1,0],[0,1],[0,0]]]}')
        code, _, err = await users("area", "super", "--area", str(bowtie))
        assert code == 1 and "not a valid polygon: Self-intersection" in err
        code, _, err = await users("area", "super")
        assert code == 1 and "either --area FILE or --clear" in err
        code, _, err = await users(
            "add", "road", "--role", "supervisor", "--area", str(area_file), "--password-stdin"
        )
        assert code == 0, err
        code, _, err = await users("add", "d9", "--role", "admin", "--area", str(area_file),
                                   "--password-stdin")  # fmt: skip
        assert code == 1 and "only a supervisor has an --area" in err
        road = dash.client()
        assert (await road.login("road", "long enough pw")).status == 200
        assert {
            f["properties"]["plate"] for f in (await road.get("/api/vehicles")).body["features"]
        } == {"京A10001"}

        code, _, err = await users("area", "super", "--clear")
        assert code == 0, err
        seen = (await sup.get("/api/vehicles")).body["features"]
        assert len(seen) == 5  # every company again, never the unassigned pool


async def _ids_of_alerts(client: Client) -> list[int]:
    reply = await client.get("/api/alerts?status=active")
    return [a["id"] for a in reply.body["alerts"]]


async def _user_scope(conn: asyncpg.Connection, username: str) -> Scope:
    from store.users import get_user

    user_id = await conn.fetchval("SELECT id FROM users WHERE username = $1", username)
    user = await get_user(conn, user_id)
    assert user is not None
    return user.scope


def test_scope_allows_matches_the_roles() -> None:
    dispatcher = Scope(7, False)
    assert dispatcher.allows(7, None, None) and not dispatcher.allows(8, 116.4, 39.9)
    assert not dispatcher.allows(None, 116.4, 39.9)
    admin = Scope(None, True)
    assert admin.allows(None, None, None) and admin.allows(3, 0, 0)
    assert not Scope(None, False).allows(None, 116.4, 39.9)  # the pool: admins only
    area = json.dumps(BEIJING_AREA["features"][0]["geometry"])
    road = Scope(None, False, area)
    assert road.allows(5, 116.40, 39.90) and road.allows(5, 116.42, 39.90)  # edge: inside
    assert not road.allows(5, 116.45, 39.90) and not road.allows(5, None, None)
    assert road.params[1] is not None and json.loads(road.params[1])["area"]["type"] == "Polygon"
    assert dispatcher.params == (7, None)


@aio_test
async def test_text_handling_and_commands_reach_a_terminal_over_tcp(
    db_url: str, tmp_path: Path
) -> None:
    """Through the real ingest stack and command gateway: a handling with a text is recorded
    only when the terminal accepted the text; commands return the terminal's answer; a
    terminal that does not answer is a 504, one connected nowhere a 409."""
    async with (
        running_supervision(db_url, tmp_path / "ingest") as (ingest, supervision),
        dashboard(db_url, gateway=supervision.gateway) as dash,
    ):
        plate = "京A10002"  # phone 13800000001 in the harness's seed
        vid, alert_id = dash.seeded.vehicles[plate], dash.seeded.alerts[plate]
        vehicle = await Vehicle.online(ingest.port, "13800000001", plate)
        a = await dash.logged_in("disp_a")
        base = f"/api/alerts/{alert_id}"
        assert (await a.request("POST", f"{base}/ack")).status == 200

        async def answered(call: Any, msg_id: int) -> Any:
            """Run the request while the terminal answers the command it causes."""
            reply, _ = await asyncio.gather(call, vehicle.commands(msg_id, count=count(msg_id) + 1))
            return reply

        def count(msg_id: int) -> int:
            return len([m for m in vehicle.received if m.msg_id == msg_id])

        vehicle.answers[0x8300] = 1  # the terminal refuses: not handled, but audited
        refused = await answered(
            a.request("POST", f"{base}/handle", {"text": "请减速慢行", "tts": True}), 0x8300
        )
        assert refused.status == 502 and "answered failed" in refused.body["error"]
        vehicle.answers[0x8300] = 0
        ok = await answered(
            a.request("POST", f"{base}/handle", {"text": "请减速慢行", "note": "提醒"}), 0x8300
        )
        assert ok.status == 200, ok.body
        assert ok.body["alert"]["handling_action"] == "text_sent"
        assert ok.body["alert"]["handling_note"] == "提醒\n[请减速慢行] → accepted"
        texts = [m.body.text for m in vehicle.received if m.msg_id == 0x8300]
        assert texts == ["请减速慢行", "请减速慢行"]
        trail = (await a.get(f"{base}/timeline")).body["audit"]
        assert [(e["action"], e["details"].get("result")) for e in trail] == [
            ("acknowledge", None), ("text", "failed"), ("text", "accepted"), ("handle", None),
        ]  # fmt: skip

        commands = f"/api/vehicles/{vid}/commands"
        track = await answered(
            a.request("POST", commands, {"kind": "track", "interval_s": 5, "duration_s": 60}),
            0x8202,
        )
        assert track.status == 200 and track.body["reply"]["result"] == "accepted"
        sent = next(m for m in vehicle.received if m.msg_id == 0x8202)
        assert (sent.body.interval_s, sent.body.validity_s) == (5, 60)

        vehicle.answers[0x8201] = None  # never answers: the dashboard's deadline (5 s here)
        silent = await answered(a.request("POST", commands, {"kind": "query_position"}), 0x8201)
        assert (
            silent.status == 504 and "no answer from the terminal (timeout" in silent.body["error"]
        )

        # An SOS closed from the dashboard as a false alarm: closing acknowledges it, and the
        # supervision service confirms it to the terminal (0x8203) whichever worker holds it.
        t0 = datetime.now(UTC)
        await vehicle.send(fix(t0, 116.45, 39.92))
        sos_serial = await vehicle.send(fix(t0 + timedelta(seconds=5), 116.45, 39.92, alarm=0x1))

        async def sos_alert() -> int | None:
            async with dash.pool.acquire() as conn:
                return await conn.fetchval(
                    "SELECT id FROM alerts WHERE vehicle_id = $1 AND type = 'terminal_alarm'", vid
                )

        sos = await eventually(sos_alert, 10.0)
        sos_closed, (confirmation,) = await asyncio.gather(
            a.request("POST", f"/api/alerts/{sos}/close", {"note": "误触紧急按钮"}),
            vehicle.commands(0x8203),
        )
        assert sos_closed.status == 200, sos_closed.body
        assert sos_closed.body["alert"]["acknowledged_by"] == "disp_a"
        assert confirmation.body.alarm_serial == sos_serial

        await vehicle.close()
        while supervision.gateway.holds(vid):
            await asyncio.sleep(0.05)
        offline = await a.request("POST", commands, {"kind": "text", "text": "在吗"})
        assert offline.status == 409
        assert "not connected (offline); nothing was sent" in offline.body["error"]
        closed = await a.request("POST", f"{base}/handle", {"text": "再次提醒"})
        assert closed.status == 409 and "offline" in closed.body["error"]
        async with dash.pool.acquire() as conn:
            handling = await conn.fetchval(
                "SELECT count(*) FROM alert_audit WHERE alert_id = $1 AND action = 'handle'",
                alert_id,
            )
        assert handling == 1  # the offline attempt recorded no handling
