"""The dashboard's live feed over real WebSockets (``/api/live``), a real PostGIS and real TCP
terminals: who may open it, what the snapshot holds, tenant isolation on the socket, positions
and alert changes as deltas, a slow client dropped, and (with ``serve --workers 2``) a position
stored by another worker."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from geo.position import Position
from loadtest.ws_client import LiveClient, Refused, login
from maps.live import Coalescer, pack
from maps.live_socket import Limits
from store.users import Scope, add_user, set_area
from tests.aio import aio_test
from tests.dashboard_harness import PASSWORD, Dashboard, dashboard, password_hash
from tests.ingest_harness import running_ingest
from tests.terminal_client import Terminal, report


async def _open(dash: Dashboard, username: str) -> LiveClient:
    cookie = await asyncio.to_thread(login, dash.port, username, PASSWORD)
    return await LiveClient.connect(dash.port, cookie)


def _plates(snapshot: dict) -> set[str]:
    return {f["properties"]["plate"] for f in snapshot["vehicles"]["features"]}


async def _quiet(client: LiveClient, seconds: float) -> list[dict]:
    """Everything the client receives within ``seconds`` (keepalives left out)."""
    await asyncio.sleep(seconds)
    return [m for m in client.drain() if m["type"] != "keepalive"]


# ---------------------------------------------------------------------- unit: the coalescing


def test_coalescer_first_at_once_then_newest_once_a_second() -> None:
    c: Coalescer[str] = Coalescer(1.0)
    c.offer(1, "a1", 0.0)
    c.offer(2, "b1", 0.0)
    c.offer(1, "a2", 0.05)  # before the first went: replaces it
    assert sorted(c.take(0.1)) == ["a2", "b1"]
    c.offer(1, "a3", 0.2)
    c.offer(1, "a4", 0.5)
    assert c.take(0.6) == []  # within the second: held
    assert c.take(1.1) == ["a4"]  # the newest, once the second is up
    assert c.take(1.2) == []
    c.offer(2, "b2", 5.0)  # long quiet: at once again
    assert c.take(5.0) == ["b2"]


def test_scope_allows_is_the_sql_rule_in_memory() -> None:
    dispatcher, supervisor, admin = Scope(7, False), Scope(None, False), Scope(None, True)
    assert dispatcher.allows(7, 116.4, 39.9) and not dispatcher.allows(8, 116.4, 39.9)
    assert not dispatcher.allows(None, None, None)
    assert supervisor.allows(8, None, None) and not supervisor.allows(None, 1.0, 1.0)
    assert admin.allows(None, 1.0, 1.0) and admin.allows(8, 1.0, 1.0)


def test_pack_keeps_notify_payloads_under_the_limit() -> None:
    items = [json.dumps([n, 116.123456, 39.123456, 88.5, 359, 1_790_000_000_000, 1,
                         1_790_000_000_123]) for n in range(1000)]  # fmt: skip
    payloads = pack(items)
    assert all(len(p.encode()) <= 7900 for p in payloads)
    assert [x for p in payloads for x in json.loads(p)] == [json.loads(i) for i in items]


# ---------------------------------------------------------------------- the socket


@aio_test
async def test_refused_without_session_with_bad_origin_and_without_upgrade(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        with pytest.raises(Refused) as anonymous:
            await LiveClient.connect(dash.port, None)
        assert anonymous.value.status == 401
        assert "not logged in" in json.loads(anonymous.value.body)["error"]
        cookie = await asyncio.to_thread(login, dash.port, "disp_a", PASSWORD)
        with pytest.raises(Refused) as forged:  # another site's page, the dispatcher's cookie
            await LiveClient.connect(dash.port, cookie, origin="http://evil.example")
        assert forged.value.status == 403
        assert "evil.example" in json.loads(forged.value.body)["error"]
        with pytest.raises(Refused) as no_origin:
            await LiveClient.connect(dash.port, cookie, origin=None)
        assert no_origin.value.status == 403
        plain = await dash.client().get("/api/live")  # no session, no upgrade
        assert plain.status in (401, 403)
        logged = await dash.logged_in("disp_a")
        reply = await logged.request("GET", "/api/live", headers={
            "Origin": f"http://127.0.0.1:{dash.port}"})  # fmt: skip
        assert reply.status == 426 and "WebSocket" in reply.body["error"]
        client = await LiveClient.connect(dash.port, cookie)  # the same cookie, own origin
        assert (await client.next("snapshot"))["type"] == "snapshot"
        await client.close()


@aio_test
async def test_snapshot_is_the_scoped_vehicles_and_active_alerts(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        a, admin = await _open(dash, "disp_a"), await _open(dash, "admin")
        snap_a, snap_admin = await a.next("snapshot"), await admin.next("snapshot")
        rest = await (await dash.logged_in("disp_a")).get("/api/vehicles")
        assert snap_a["vehicles"]["features"] == rest.body["features"]  # the same Features
        assert _plates(snap_a) == {"京A10001", "京A10002", "京A10003"}
        assert {x["id"] for x in snap_a["alerts"]} == {
            dash.seeded.alerts["京A10001"], dash.seeded.alerts["京A10002"]}  # fmt: skip
        assert _plates(snap_admin) == {"京A10001", "京A10002", "京A10003", "沪B20001",
                                       "沪B20002", "粤C30001"}  # fmt: skip
        assert len(snap_admin["alerts"]) == 4
        await a.close()
        await admin.close()


def _position(vehicle_id: int, lon: float, lat: float, at: datetime) -> Position:
    return Position(vehicle_id, at, at, lon, lat, speed_kmh=55.0, heading=180)


@aio_test
async def test_dispatcher_never_receives_another_companys_vehicles_or_alerts(
    db_url: str,
) -> None:
    async with dashboard(db_url) as dash:
        seeded = dash.seeded
        a, b, sup = [await _open(dash, u) for u in ("disp_a", "disp_b", "super")]
        for c in (a, b, sup):
            await c.next("snapshot")
        now = datetime.now(UTC)
        dash.hub.durable([  # what a writer's durable feed hands the hub
            _position(seeded.vehicles["京A10001"], 116.5, 39.95, now),
            _position(seeded.vehicles["沪B20001"], 121.6, 31.3, now),
            _position(seeded.unassigned, 113.3, 23.2, now),
        ])  # fmt: skip
        async with dash.pool.acquire() as conn:  # alerts raised for both companies
            for plate in ("京A10002", "沪B20002"):
                await conn.execute(
                    "INSERT INTO alerts (vehicle_id, type, key, severity, start_time)"
                    " VALUES ($1, 'sos', 'sos', 1, now())", seeded.vehicles[plate])  # fmt: skip
        got = {}
        for name, client in (("a", a), ("b", b), ("sup", sup)):
            vehicles = (await client.next("vehicles"))["features"]
            alerts = (await client.next("alerts"))["alerts"]
            rest = await _quiet(client, 0.5)
            got[name] = (
                {f["properties"]["plate"] for f in vehicles}
                | {f["properties"]["plate"] for m in rest if m["type"] == "vehicles"
                   for f in m["features"]},
                {x["plate"] for x in alerts}
                | {x["plate"] for m in rest if m["type"] == "alerts" for x in m["alerts"]},
            )  # fmt: skip
        assert got["a"] == ({"京A10001"}, {"京A10002"})
        assert got["b"] == ({"沪B20001"}, {"沪B20002"})
        assert got["sup"] == ({"京A10001", "沪B20001"}, {"京A10002", "沪B20002"})
        for c in (a, b, sup):
            await c.close()


@aio_test
async def test_a_supervisor_with_an_area_receives_only_what_is_inside(db_url: str) -> None:
    beijing = json.dumps({"type": "Polygon", "coordinates": [
        [[116.0, 39.5], [117.0, 39.5], [117.0, 40.5], [116.0, 40.5], [116.0, 39.5]]]})  # fmt: skip
    async with dashboard(db_url) as dash:
        seeded = dash.seeded
        async with dash.pool.acquire() as conn:
            await set_area(conn, "super", beijing, "北京")
        sup = await _open(dash, "super")
        assert _plates(await sup.next("snapshot")) == {"京A10001", "京A10002"}
        now = datetime.now(UTC)
        dash.hub.durable([
            _position(seeded.vehicles["京A10001"], 116.5, 39.95, now),  # inside
            _position(seeded.vehicles["沪B20001"], 121.6, 31.3, now),  # outside
        ])  # fmt: skip
        async with dash.pool.acquire() as conn:  # alerts of vehicles not moving here: by their
            for plate in ("京A10002", "沪B20002"):  # last stored position
                await conn.execute(
                    "INSERT INTO alerts (vehicle_id, type, key, severity, start_time)"
                    " VALUES ($1, 'sos', 'sos', 1, now())", seeded.vehicles[plate])  # fmt: skip
        messages = [await sup.next("vehicles"), await sup.next("alerts")]
        messages += await _quiet(sup, 0.5)
        plates = {f["properties"]["plate"] for m in messages if m["type"] == "vehicles"
                  for f in m["features"]}  # fmt: skip
        alerts = {a["plate"] for m in messages if m["type"] == "alerts" for a in m["alerts"]}
        assert (plates, alerts) == ({"京A10001"}, {"京A10002"})
        await sup.close()


@aio_test
async def test_terminal_over_tcp_produces_a_coalesced_delta(db_url: str, tmp_path: Path) -> None:
    async with dashboard(db_url) as dash, running_ingest(db_url, tmp_path, max_age=0.01) as ing:
        ing.writer.subscribe(dash.hub.durable)
        async with dash.pool.acquire() as conn:  # the terminal's vehicle belongs to company A
            await conn.execute("UPDATE vehicles SET phone = '13900000077' WHERE plate = $1",
                               "京A10002")  # fmt: skip
        a, b = await _open(dash, "disp_a"), await _open(dash, "disp_b")
        await a.next("snapshot")
        await b.next("snapshot")
        terminal = await Terminal.connect(ing.port, "13900000077")
        await terminal.login("京A10002")
        sent = time.time()
        for i in range(5):  # 5 fixes in quick succession: the first at once, then the newest
            await terminal.send(report(i, lat=39.9, lon=116.45))
            assert (await terminal.receive()).body.result == 0
        span = time.time() - sent
        first = await a.next("vehicles", timeout=5)
        (feature,) = first["features"]
        assert feature["id"] == dash.seeded.vehicles["京A10002"]
        assert feature["properties"]["plate"] == "京A10002"
        assert feature["properties"]["speed_kmh"] == 40.0
        assert 0 <= feature["properties"]["durable_ms"] / 1000 - sent < 5
        times, lats = [a.received_at], [feature["geometry"]["coordinates"][1]]
        while True:
            try:
                (f,) = (await a.next("vehicles", timeout=2.0))["features"]
            except TimeoutError:
                break
            times.append(a.received_at)
            lats.append(f["geometry"]["coordinates"][1])
        assert lats[-1] == pytest.approx(39.9004)  # the newest fix is the last one shown
        assert len(lats) <= 2 + int(span)  # coalesced...
        assert all(t2 - t1 > 0.8 for t1, t2 in itertools.pairwise(times))  # ...one a second
        assert await _quiet(b, 0.1) == []  # company B's dispatcher saw nothing of it
        await terminal.close()
        for c in (a, b):
            await c.close()


@aio_test
async def test_acknowledgement_by_one_dispatcher_reaches_another(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        async with dash.pool.acquire() as conn:
            await add_user(conn, "disp_a2", "dispatcher", await asyncio.to_thread(password_hash),
                           "公司A")  # fmt: skip
        watcher, b = await _open(dash, "disp_a2"), await _open(dash, "disp_b")
        await watcher.next("snapshot")
        await b.next("snapshot")
        target = dash.seeded.alerts["京A10001"]
        acker = await dash.logged_in("disp_a")
        started = time.monotonic()
        assert (await acker.request("POST", f"/api/alerts/{target}/ack")).status == 200
        (alert,) = (await watcher.next("alerts", timeout=5))["alerts"]
        assert time.monotonic() - started < 2
        assert (alert["id"], alert["status"], alert["acknowledged_by"]) == (
            target, "acknowledged", "disp_a")  # fmt: skip
        assert await _quiet(b, 0.3) == []
        await watcher.close()
        await b.close()


@aio_test
async def test_logout_closes_the_socket(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        dash.hub.session_check = 0.5  # (30 s in service)
        client = dash.client()
        await client.login("disp_a")
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        live = await LiveClient.connect(dash.port, cookie)
        await live.next("snapshot")
        assert (await client.request("POST", "/api/logout")).status == 200
        assert await asyncio.wait_for(live.closed, 10) == 4001
        await live.close()


@pytest.mark.parametrize("limits", [
    Limits(slow_after=1.0, max_held=1 << 30),  # dropped for being stuck a second
    Limits(slow_after=600.0, max_held=1 << 20),  # dropped for what it would have to be sent
], ids=["stuck", "backlog"])  # fmt: skip
@aio_test
async def test_a_client_that_does_not_read_is_dropped_others_carry_on(
    db_url: str, limits: Limits
) -> None:
    async with dashboard(db_url, live=limits) as dash:
        cookie = await asyncio.to_thread(login, dash.port, "admin", PASSWORD)
        slow = await LiveClient.connect(dash.port, cookie, read_buffer=4096)
        slow.reader._transport.pause_reading()  # type: ignore[attr-defined]
        fast = await _open(dash, "admin")
        await fast.next("snapshot")
        vehicle = dash.seeded.vehicles["京A10001"]
        async with dash.pool.acquire() as conn:  # ~12 MB of alert changes, never coalesced
            for part in range(6):
                await conn.execute(
                    "INSERT INTO alerts (vehicle_id, type, key, severity, start_time, details)"
                    " SELECT $1, 'speeding', $2 || n, 3, now() - n * interval '1 s',"
                    " jsonb_build_object('pad', repeat('x', 4000))"
                    " FROM generate_series(1, 500) n", vehicle, f"k{part}_")  # fmt: skip
        deadline = time.monotonic() + 30
        while dash.hub.stats["dropped"] == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert dash.hub.stats["dropped"] == 1
        assert len(dash.hub.clients) == 1  # the fast one
        received = 0
        while True:
            try:
                received += len((await fast.next("alerts", timeout=3))["alerts"])
            except TimeoutError:
                break
        assert received == 3000
        await fast.close()
        await slow.close()


# ---------------------------------------------------------------------- across workers


@aio_test
async def test_position_stored_by_worker_1_reaches_a_socket_on_worker_0(
    short_tmp: Path, pg_cluster: object, db_url: str
) -> None:
    from fleetwatch.demo_cmd import wait_for_port
    from tests.test_serve import _free_port

    jt808, http = _free_port(), _free_port()
    data = short_tmp / "data"
    conn = await asyncpg.connect(db_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleetwatch.cli", "serve", "--data-dir", str(data),
        "--db", db_url, "--jt808-port", str(jt808), "--http-port", str(http),
        "--host", "127.0.0.1", "--workers", "2",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        await wait_for_port(http, proc, 60)
        company = await conn.fetchval("INSERT INTO companies (name) VALUES ('W') RETURNING id")
        for n in range(8):
            await conn.execute(
                "INSERT INTO vehicles (plate, phone, company_id) VALUES ($1, $2, $3)",
                f"沪W0000{n}", f"1377777000{n}", company)  # fmt: skip
        hashed = await asyncio.to_thread(password_hash)
        await add_user(conn, "sup", "supervisor", hashed)
        await asyncio.sleep(2.0)  # worker 1 listens too
        cookie = await asyncio.to_thread(login, http, "sup", PASSWORD)
        client = await LiveClient.connect(http, cookie)
        assert (await client.next("snapshot", timeout=20))["vehicles"]["features"]
        for n in range(8):  # the kernel spreads connections over both workers
            terminal = await Terminal.connect(jt808, f"1377777000{n}")
            await terminal.login(f"沪W0000{n}")
            await terminal.send(report(n))
            answer = await terminal.receive()
            while not hasattr(answer.body, "result"):  # a parameter push on login, say
                answer = await terminal.receive()
            assert answer.body.result == 0
            await terminal.close()
        rows = await conn.fetch("SELECT v.plate, h.worker FROM positions p"
                                " JOIN vehicles v ON v.id = p.vehicle_id"
                                " LEFT JOIN terminal_holders h ON h.vehicle_id = v.id")  # fmt: skip
        assert len(rows) == 8
        plates: set[str] = set()
        deadline = time.monotonic() + 10
        while len(plates) < 8 and time.monotonic() < deadline:
            message = await client.next("vehicles", timeout=10)
            plates |= {f["properties"]["plate"] for f in message["features"]}
        assert plates == {f"沪W0000{n}" for n in range(8)}
        listeners = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fleetwatch-live'")
        assert listeners == 1  # worker 0's hub: the rest came through NOTIFY
        await asyncio.sleep(1.5)  # worker 1 publishes its metrics every second
        metrics = await asyncio.to_thread(_metrics, http)
        assert "fleetwatch_live_sockets 1" in metrics
        relayed = int(metrics.split("\nfleetwatch_live_relayed_total ")[1].split()[0])
        assert 0 < relayed < 8  # some, not all, came from worker 1 through NOTIFY
        await client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        await conn.close()
    assert proc.returncode == 0, stderr.decode()[-2000:]


def _metrics(port: int) -> str:
    import urllib.request

    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()

