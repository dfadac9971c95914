"""The fleet simulator and ``fleetwatch demo`` against a real ``fleetwatch serve`` subprocess on
real PostGIS, over real TCP: a day played in seconds gives exactly the scripted alarms, the
simulated terminals answer commands sent through the gateway, and the demo starts, serves its
dashboard to its printed logins, and stops on Ctrl-C (twice: it is idempotent)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from fleetwatch.cli import main
from fleetwatch.demo_cmd import wait_for_port
from geo.geojson_io import parse_fences
from loadtest.fleet.check import compare, expectations
from loadtest.fleet.city import RoadNetwork, demo_fences
from loadtest.fleet.plan import USERS, TimeLapse, build_fleet, build_scenario
from loadtest.fleet.sim import Fleet
from protocols.jt808.terminal import Heartbeat
from store import demo
from store.vehicles import new_vehicle
from tests.aio import aio_test
from tests.dashboard_harness import Client
from tests.ingest_harness import running_ingest
from tests.terminal_client import Terminal


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serving(db_url: str, workdir: Path, offline_s: float = 600) -> AsyncIterator[int]:
    """``fleetwatch serve --db`` on the test's database (policy known); yields its JT/T 808
    port."""
    port, http = _free_port(), _free_port()
    config = workdir / "rules.json"
    config.write_text(json.dumps({"rules": {"offline_s": offline_s}}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleetwatch.cli", "serve", "--db", db_url,
        "--data-dir", str(workdir / "data"), "--jt808-port", str(port), "--http-port", str(http),
        "--listen", "127.0.0.1", "--policy", "known", "--rules-config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_for_port(port, proc, 30)
        yield port
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, stderr.decode()[-2000:]


async def _seed(db_url: str, count: int) -> list:
    fleet = build_fleet(count)
    vehicles = [new_vehicle(v.plate, v.vehicle_class, v.company, v.phone, v.plate_color)
                for v in fleet]  # fmt: skip
    conn = await asyncpg.connect(db_url)
    try:
        seeded = await demo.seed(conn, vehicles, [], parse_fences(demo_fences()))
        assert (seeded.vehicles_added, seeded.fences.added) == (count, 2)
        again = await demo.seed(conn, vehicles, [], parse_fences(demo_fences()))  # idempotent
        assert (again.vehicles_added, again.vehicles_kept, again.fences.unchanged) == (0, count, 2)
    finally:
        await conn.close()
    return fleet


@aio_test
async def test_a_day_in_time_lapse_gives_exactly_the_scripted_alarms(
    db_url: str, short_tmp: Path
) -> None:
    fleet = await _seed(db_url, 7)  # the scripted vehicles, one per violation
    async with serving(db_url, short_tmp, offline_s=5) as port:
        now = time.time()
        clock = TimeLapse(now - 24 * 3600, 24 * 3600 / 12, now)  # a day in 12 s
        scenario = build_scenario(fleet, RoadNetwork(), clock, offline_s=5)
        assert not scenario.skipped  # a 24-h window has a day and a night slot
        document = expectations(fleet, scenario, clock, now, 5)
        assert sorted(e["type"] for e in document["expected"]) == [
            "fatigue_continuous", "fatigue_continuous", "forbidden_zone", "offline",
            "speeding", "terminal_alarm",
        ]  # fmt: skip
        sim = Fleet(fleet, clock, scenario, ("127.0.0.1", port), heartbeat_s=0.5)
        await sim.start(ramp_s=0.2)
        assert await sim.wait_online(7, 10)
        await asyncio.sleep(max(clock.catch_up - time.time(), 0))
        assert await sim.caught_up(clock.catch_up - 1, 30)  # however loaded the machine is
        await sim.stop()  # at catch-up: everything but the silent truck logs out
        stats = sim.stats
        assert stats.positions_sent > 2000
        silent = [v for v in sim.vehicles if v.silent]  # its last reports' acks were lost
        assert [v.spec.role for v in silent] == ["silent"]
        assert all(not v.pending for v in sim.vehicles if not v.silent)
        assert stats.positions_acked == stats.positions_sent - sum(silent[0].pending.values())
        assert stats.batches >= 1  # out of the tunnel
        assert stats.registrations == 7 and stats.logouts == 6
        assert stats.commands["parameters"] == 7 and stats.commands["circles"] >= 2
        conn = await asyncpg.connect(db_url)
        try:
            plates = [v.plate for v in fleet]
            for _ in range(50):  # the supervision stores alerts in batches: let it catch up
                alerts = await demo.fleet_alerts(conn, plates, datetime.fromtimestamp(now, UTC))
                outcome = compare(document, alerts, datetime.now(UTC))
                if not outcome.pending and not outcome.missing:
                    break
                await asyncio.sleep(0.2)
            stored = await conn.fetchval("SELECT count(*) FROM positions")
        finally:
            await conn.close()
    # everything settles into place after the run, so every expectation is due now
    outcome = compare(document, alerts, datetime.fromtimestamp(clock.catch_up + 3600, UTC))
    print(outcome.report())
    assert outcome.ok and not outcome.pending, outcome.report()
    assert len(outcome.present) == 6
    assert stats.positions_acked <= stored <= stats.positions_sent


@aio_test
async def test_simulated_terminals_answer_commands_sent_through_the_gateway(
    db_url: str, short_tmp: Path
) -> None:
    fleet = await _seed(db_url, 4)
    async with serving(db_url, short_tmp) as port:
        clock = TimeLapse(time.time(), 1.0)  # live
        # the hazmat truck: no script fits a live-only window, so it stays parked
        scenario = build_scenario(fleet[3:], RoadNetwork(), clock)
        sim = Fleet(fleet[3:], clock, scenario, ("127.0.0.1", port), heartbeat_s=0.5)
        await sim.start(ramp_s=0)
        assert await sim.wait_online(1, 10)
        plate = fleet[3].plate
        assert fleet[3].version == 2013 and fleet[1].version == 2019

        async def send(*argv: str) -> tuple[int, str]:
            out = short_tmp / "out.txt"

            def call() -> int:
                import contextlib

                with out.open("w") as f, contextlib.redirect_stdout(f):
                    return main(["send", *argv, plate, *(["请靠边停车"] if argv == ("text",)
                                                       else []), "--db", db_url])  # fmt: skip

            status = await asyncio.to_thread(call)
            return status, out.read_text()

        assert (await send("text")) == (0, f"{plate}: accepted\n")
        assert sim.stats.texts == [(plate, "请靠边停车")]
        status, where = await send("query")
        assert status == 0 and f"{plate}: accepted at 28." in where  # Changsha
        sent = sim.stats.positions_sent
        assert (await send("track", "--interval", "1", "--duration", "30"))[0] == 0
        await asyncio.sleep(3.5)
        assert sim.stats.positions_sent - sent >= 3  # every second now (parked: every 5 min)
        await sim.stop()
        assert sim.stats.commands["text"] == 1 and sim.stats.commands["position query"] == 1
        assert sim.stats.heartbeats_acked > 0 and sim.stats.logouts == 1


@aio_test
async def test_a_quiet_terminal_is_not_closed_as_a_slow_sender(
    db_url: str, short_tmp: Path
) -> None:
    # The splitter keeps a frame's closing flag; a terminal silent for longer than the frame
    # timeout between two whole frames (a heartbeat a minute) was closed as a slow sender.
    async with running_ingest(db_url, short_tmp, frame_timeout=0.5, idle_timeout=10) as ingest:
        terminal = await Terminal.connect(ingest.port, "13955550001")
        await terminal.login("湘A55501")
        await asyncio.sleep(1.2)  # sweeps every 0.1 s
        await terminal.send(Heartbeat())
        assert (await terminal.receive()).body.result == 0
        await terminal.close()


async def _read_banner(proc: asyncio.subprocess.Process, timeout: float) -> str:
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + timeout
    while not lines or "stop with Ctrl-C" not in lines[-1]:
        line = await asyncio.wait_for(proc.stdout.readline(), deadline - time.monotonic())
        assert line, "".join(lines)
        lines.append(line.decode())
    return "".join(lines)


@aio_test
async def test_demo_serves_the_dashboard_to_its_logins_and_stops_on_sigint(
    short_tmp: Path,
) -> None:
    data = short_tmp / "demo"
    jt808, http = _free_port(), _free_port()
    for run in (1, 2):  # the second run finds everything in place
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fleetwatch.cli", "demo", "--data-dir", str(data),
            "--vehicles", "12", "--hours", "1", "--minutes", "0.2", "--jt808-port", str(jt808),
            "--http-port", str(http),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            banner = await _read_banner(proc, 90)  # creating the cluster: slow under load
            assert f"dashboard   http://127.0.0.1:{http}/" in banner
            added = "12 vehicles added (0 there already)" if run == 1 else (
                "0 vehicles added (12 there already)")  # fmt: skip
            assert added in banner
            logins = dict(re.findall(r"^    (\w+) +(\S+) ", banner, re.M))
            assert set(logins) == {name for name, _, _ in USERS}
            assert len(set(logins.values())) == len(USERS)  # generated, not a fixed default
            if run == 1:  # the second run only shows it seeds again without duplicates
                client = Client(http)
                page = await client.get("/")
                assert page.status == 200 and "FleetWatch" in page.body.decode()
                assert (await client.login("admin", logins["admin"])).status == 200
                for _ in range(50):  # the vehicles appear as they report
                    vehicles = (await client.get("/api/vehicles")).body["features"]
                    if sum(f["geometry"] is not None for f in vehicles) == 12:
                        break
                    await asyncio.sleep(0.2)
                assert len(vehicles) == 12 and all(f["geometry"] for f in vehicles)
                dispatcher = Client(http)  # a dispatcher sees his company only
                name = "dispatch_hazmat"
                assert (await dispatcher.login(name, logins[name])).status == 200
                features = (await dispatcher.get("/api/vehicles")).body["features"]
                assert {f["properties"]["plate"][:3] for f in features} == {"湘AW"}
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert out.decode().rstrip().endswith("stopped")
        assert "fleet: " in out.decode()  # the progress line at the end
    from store.cluster import EmbeddedCluster

    assert not EmbeddedCluster.in_data_dir(data).running
    document = json.loads((data / "expected-alarms.json").read_text())
    assert len(document["vehicles"]) == 12
    # the check: a 1-h window fits none of the past scripts; what is live is not due yet
    out = short_tmp / "check.txt"

    def check() -> int:
        import contextlib

        with out.open("w") as f, contextlib.redirect_stdout(f):
            return main(["demo", "check", "--data-dir", str(data)])

    assert await asyncio.to_thread(check) == 0
    assert out.read_text().startswith(
        "expected alarms: 0 present, 0 missing, 3 not due yet; 0 unexpected: ok"
    ), out.read_text()


@aio_test
async def test_a_new_vehicle_is_judged_from_its_first_held_position(
    db_url: str, short_tmp: Path
) -> None:
    # Found by the time-lapse: a vehicle with no snapshot is rebuilt from the last hour of its
    # track; positions held while it was being attached that precede that hour were dropped,
    # so 4 h 30 of driving uploaded before the attach finished raised no fatigue alarm.
    from datetime import timedelta

    from tests.supervision_harness import eventually, fix, running_supervision

    async with running_supervision(db_url, short_tmp) as (ingest, supervision):
        blocker = await asyncpg.connect(db_url)
        try:
            locked = blocker.transaction()
            await locked.start()
            await blocker.execute("LOCK TABLE rule_state IN EXCLUSIVE MODE")  # claims wait
            terminal = await Terminal.connect(ingest.port, "13966660001")
            await terminal.login("湘A66601")  # the attach starts, and waits on the lock
            start = datetime.now(UTC) - timedelta(hours=5)
            for minute in range(271):  # 4 h 30 at 60 km/h, a fix a minute
                at = start + timedelta(minutes=minute)
                await terminal.send(fix(at, 113.0, 28.0 + minute * 0.009))
            for _ in range(271):
                assert (await terminal.receive(10)).body.result == 0
            await asyncio.sleep(1.5)  # last_positions moves once a second
            assert supervision.stats.positions == 271 and not supervision.vehicles
            await locked.rollback()
        finally:
            await blocker.close()

        async def fatigue() -> list:
            rows = await ingest.pool.fetch("SELECT type FROM alerts WHERE type LIKE 'fatigue%'")
            return [r["type"] for r in rows]

        assert await eventually(fatigue, 10) == ["fatigue_continuous"]
        await terminal.close()


def test_every_vehicle_can_be_planned_from_any_hour_without_its_script() -> None:
    """A vehicle with a scripted role whose script did not fit the window (a live-only run)
    gets a regular plan: at 23:20 Beijing time the forbidden-zone truck, homed in the zone and
    off every hazmat run, once raised StopIteration and its terminal never came online."""
    from loadtest.fleet.city import RoadNetwork
    from loadtest.fleet.plan import HOUR, Plan, build_fleet

    net = RoadNetwork()
    start = time.time()
    for vehicle in build_fleet(12):
        for hour in range(24):
            plan = Plan(vehicle, net, start + hour * HOUR, 1)
            state = plan.state(plan.timeline.t + 48 * HOUR)
            assert state is not None
