"""Durable rule state from the outside: real ``fleetwatch serve`` processes on one PostGIS
database, killed with SIGKILL and started again, terminals over TCP moving between the workers
of ``--workers 2``. Fix times are in the past (a backlog), so a 4 h drive takes seconds: the
rules run on fix time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from alerts.model import FATIGUE_CONTINUOUS, FATIGUE_WARNING, OFFLINE, SPEEDING, TERMINAL_ALARM
from fleetwatch.demo_cmd import wait_for_port
from protocols.jt808 import Authenticate
from store import pushes
from store.alerts import Alert, AlertStore
from store.vehicles import add_vehicle, new_vehicle
from tests.aio import aio_test
from tests.supervision_harness import Vehicle, eventually, fix
from tests.terminal_client import Terminal
from tests.test_rules_live import KM_PER_DEG, _bj
from tests.test_serve import _free_port

OFFLINE_S = 5.0
SOS = 1 << 0  # the alarm word's emergency bit
CONFIG = {
    "enforcement": {"on_authentication": False},
    "rules": {"offline_s": OFFLINE_S},
    "state": {"save_interval": 0.3, "poll_interval": 0.3},
}


class Serve:
    """One ``fleetwatch serve`` on the test's database (``--db``), as a subprocess."""

    def __init__(self, db_url: str, workdir: Path, config: dict[str, Any], workers: int = 1):
        self.db_url = db_url
        self.workdir = workdir
        self.workers = workers
        self.port = _free_port()
        self.config = workdir / "rules.json"
        self.config.write_text(json.dumps(config))
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0

    async def start(self) -> None:
        self.runs += 1
        log = (self.workdir / f"serve-{self.runs}.log").open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fleetwatch.cli", "serve", "--db", self.db_url,
            "--data-dir", str(self.workdir / "data"), "--jt808-port", str(self.port),
            "--http-port", str(_free_port()), "--host", "127.0.0.1",
            "--rules-config", str(self.config), "--workers", str(self.workers),
            stdout=asyncio.subprocess.DEVNULL, stderr=log, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        log.close()
        await wait_for_port(self.port, self.proc, 60)
        await asyncio.sleep(1.0 * (self.workers - 1))  # the other workers listen too

    async def kill(self) -> None:
        """SIGKILL, the whole process group (every worker): nothing is flushed or saved."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 60)
            except TimeoutError:
                os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()


@asynccontextmanager
async def serving(
    db_url: str, workdir: Path, config: dict[str, Any] = CONFIG, workers: int = 1
) -> AsyncIterator[tuple[Serve, asyncpg.Pool]]:
    serve = Serve(db_url, workdir, config, workers)
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        await serve.start()
        yield serve, pool
    except BaseException:
        for log in sorted(workdir.glob("serve-*.log")):  # what the servers said, for the report
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-6000:]}")
        raise
    finally:
        await serve.stop()
        await pool.close()


async def _vehicle(pool: asyncpg.Pool, plate: str, phone: str, klass: str) -> int:
    async with pool.acquire() as conn:
        added = await add_vehicle(conn, new_vehicle(plate, klass, "测试运输", phone))
    return int(added["id"])


async def _resume(port: int, phone: str, code: str) -> Vehicle:
    """A registered terminal connecting again: authentication only, with its code."""
    car = Vehicle(await Terminal.connect(port, phone))
    await car.terminal.send(Authenticate(auth_code=code))
    ack = await car.terminal.receive()
    assert (ack.msg_id, ack.body.result) == (0x8001, 0), ack
    return car


async def _drive(car: Vehicle, start: datetime, minutes: range, pause: float = 0.0) -> None:
    """60 km/h eastwards, ACC on: one 0x0200 per minute of ``minutes`` after ``start``."""
    for m in minutes:
        await car.send(fix(start + timedelta(minutes=m), 121.0 + m / KM_PER_DEG, 31.2))
        if pause:
            await asyncio.sleep(pause)


async def _alerts(pool: asyncpg.Pool, vid: int, kind: str | None = None) -> list[Alert]:
    found = await AlertStore(pool).list(vehicle_id=vid, type=kind)
    return sorted(found, key=lambda a: a.start_time)


async def _no_duplicates(pool: asyncpg.Pool) -> None:
    """One alert per episode: never two rows of one (vehicle, key, start), nor two running."""
    assert (
        await pool.fetch(
            "SELECT vehicle_id, key, start_time FROM alerts GROUP BY 1, 2, 3 HAVING count(*) > 1"
        )
        == []
    )
    assert (
        await pool.fetch(
            "SELECT vehicle_id, type FROM alerts WHERE end_time IS NULL"
            " GROUP BY 1, 2 HAVING count(*) > 1"
        )
        == []
    )


async def _ended(pool: asyncpg.Pool, alert_id: int) -> bool:
    return await pool.fetchval("SELECT end_time IS NOT NULL FROM alerts WHERE id = $1", alert_id)


async def _fatigue_on_time(pool: asyncpg.Pool, vid: int, start: datetime) -> None:
    """One incident: the 3.5 h warning, then the 4 h alarm, both at their fix times."""
    (incident,) = await eventually(lambda: _alerts(pool, vid, FATIGUE_CONTINUOUS), timeout=10)
    assert incident.start_time == start + timedelta(hours=3.5)
    stages = {s["type"]: datetime.fromisoformat(s["at"]) for s in incident.timeline}
    assert stages[FATIGUE_WARNING] == start + timedelta(hours=3.5)
    assert stages[FATIGUE_CONTINUOUS] == start + timedelta(hours=4)
    assert incident.end_time is None  # still driving
    assert await _alerts(pool, vid, FATIGUE_WARNING) == []  # no second alert


async def _saved_until(pool: asyncpg.Pool, vid: int, newest: datetime) -> None:
    async def saved() -> bool:
        at = await pool.fetchval("SELECT newest FROM rule_state WHERE vehicle_id = $1", vid)
        return at is not None and at >= newest

    await eventually(saved, timeout=10)


@aio_test
async def test_kill_9_mid_drive_then_restart(db_url: str, short_tmp: Path) -> None:
    """A truck 3 h into yesterday's drive when the server is killed (SIGKILL) gets its 3.5 h
    warning and 4 h alarm on time after the restart, from the saved state plus the positions
    stored after it; a vehicle silent since before the crash goes offline on schedule, its
    episode starting at its last report; no alert is duplicated."""
    async with serving(db_url, short_tmp) as (serve, pool):
        truck = await _vehicle(pool, "沪D20001", "13900020001", "heavy_truck")
        quiet = await _vehicle(pool, "沪D20002", "13900020002", "other")
        start = _bj(1, 8)
        car = await Vehicle.online(serve.port, "13900020001", "沪D20001")
        await _drive(car, start, range(0, 181, 2))
        silent = await Vehicle.online(serve.port, "13900020002", "沪D20002")
        now = datetime.now(UTC).replace(microsecond=0)
        for i in range(2):
            await silent.send(fix(now + timedelta(seconds=i), 121.3, 31.3, speed=0.0))
        await _saved_until(pool, truck, start + timedelta(hours=3))
        await _drive(car, start, range(182, 191, 2))  # stored, maybe not in a snapshot
        await serve.kill()
        last_report = await pool.fetchval(
            "SELECT max(received_time) FROM positions WHERE vehicle_id = $1", quiet
        )
        assert await _alerts(pool, truck) == []  # nothing due before 3.5 h
        await car.close()
        await silent.close()

        await serve.start()
        restarted = datetime.now(UTC)
        car = await Vehicle.online(serve.port, "13900020001", "沪D20001")
        await _drive(car, start, range(192, 251, 2))
        await _fatigue_on_time(pool, truck, start)

        (offline,) = await eventually(lambda: _alerts(pool, quiet, OFFLINE), timeout=15)
        assert offline.start_time == last_report  # silent since its last report
        due = max(last_report + timedelta(seconds=OFFLINE_S), restarted)
        assert offline.created_at <= due + timedelta(seconds=4)  # the tick after it was due
        await _no_duplicates(pool)
        await car.close()


@aio_test
async def test_a_terminal_moving_to_the_other_worker_keeps_its_rule_state(
    db_url: str, short_tmp: Path
) -> None:
    """``--workers 2``: a truck 3 h into its drive reconnects until the kernel hands its new
    connection to the other worker; the 4 h counted across the move gives the alarm on time,
    and the worker it left raises no OFFLINE for it."""
    async with serving(db_url, short_tmp, workers=2) as (serve, pool):
        truck = await _vehicle(pool, "沪D20003", "13900020003", "heavy_truck")
        start = _bj(1, 8)
        car = Vehicle(await Terminal.connect(serve.port, "13900020003"))
        code = await car.terminal.login("沪D20003")
        await _drive(car, start, range(0, 181, 2))

        async def owner() -> str:
            return await pool.fetchval("SELECT owner FROM rule_state WHERE vehicle_id = $1", truck)

        first = (await eventually(owner)).split("/")[1]  # generation/worker/pid
        minute, moved = 181, False
        for _ in range(40):  # SO_REUSEPORT picks a worker by the connection's hash
            await car.close()
            car = await _resume(serve.port, "13900020003", code)
            await _drive(car, start, range(minute, minute + 1))
            minute += 1
            await asyncio.sleep(0.2)
            if (await owner()).split("/")[1] != first:
                moved = True
                break
        assert moved, "40 connections, all to one worker"
        # On the new worker, reporting for longer than offline_s after the move.
        await _drive(car, start, range(minute, 251, 2), pause=0.25)
        await _fatigue_on_time(pool, truck, start)
        assert await _alerts(pool, truck, OFFLINE) == []
        await _no_duplicates(pool)
        await car.close()


@aio_test
async def test_replay_after_a_crash_sends_no_second_text(db_url: str, short_tmp: Path) -> None:
    """A school bus speeds now (limit 60) and its driver gets the text; the episode ends. The
    server is killed before any snapshot, so after the restart its state is rebuilt by
    replaying its whole track: the alert stays one closed alert and no second text goes out.
    An automatic text is recorded once per alert in the store as well."""
    config = {**CONFIG, "state": {"save_interval": 3600, "poll_interval": 0.3}}
    async with serving(db_url, short_tmp, config) as (serve, pool):
        bus = await _vehicle(pool, "沪D20004", "13900020004", "school_bus")
        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=40)

        async def report(car: Vehicle, s: int, kmh: float, sos: bool = False) -> None:
            at = t0 + timedelta(seconds=s)
            await car.send(fix(at, 121.2 + s * 0.0002, 31.2, kmh, alarm=SOS if sos else 0))

        car = await Vehicle.online(serve.port, "13900020004", "沪D20004")
        for s in range(0, 40, 2):  # the SOS button held from 30 s on
            await report(car, s, 75.0 if s < 24 else 40.0, sos=s >= 30)
        (text,) = await car.commands(0x8300)
        assert "超速" in text.body.text

        async def ended() -> list[Alert]:
            return [a for a in await _alerts(pool, bus, SPEEDING) if a.end_time]

        (alert,) = await eventually(ended)
        await eventually(lambda: pool.fetchval(
            "SELECT result FROM terminal_pushes WHERE alert_id = $1", alert.id
        ))  # fmt: skip
        assert await pool.fetchval("SELECT count(*) FROM rule_state WHERE state IS NOT NULL") == 0
        await serve.kill()
        await car.close()

        await serve.start()
        car = await Vehicle.online(serve.port, "13900020004", "沪D20004")
        for s in range(40, 50, 2):  # SOS released at 44 s
            await report(car, s, 40.0, sos=s < 44)
        assert [m for m in await car.quiet(1.5) if m.msg_id == 0x8300] == []
        (again,) = await _alerts(pool, bus, SPEEDING)
        assert (again.id, again.end_time) == (alert.id, alert.end_time)  # not reopened
        # The rebuilt state knew the SOS was raised (alarms revived from the stored words), so
        # its release ended the one alert it was.
        (sos,) = await eventually(lambda: _alerts(pool, bus, TERMINAL_ALARM))
        await eventually(lambda: _ended(pool, sos.id))
        (sos,) = await _alerts(pool, bus, TERMINAL_ALARM)
        assert (sos.start_time, sos.end_time) == (
            t0 + timedelta(seconds=30),
            t0 + timedelta(seconds=44),
        )
        assert (
            await pool.fetchval("SELECT count(*) FROM terminal_pushes WHERE item LIKE 'text:%'")
            == 1
        )
        assert await pushes.begin(
            pool, bus, "text", f"text:{SPEEDING}", {"text": "again"}, alert_id=alert.id
        ) is None  # fmt: skip
        await _no_duplicates(pool)
        await car.close()


@aio_test
async def test_an_offline_alert_the_restored_state_never_saw_ends_when_the_vehicle_reports(
    db_url: str, short_tmp: Path
) -> None:
    """Another worker opened an OFFLINE alert after its last snapshot (a wall-clock episode:
    no replay of positions brings it back). The worker that sees the vehicle report next ends
    it when it is back (it authenticated, then reported)."""
    from alerts.model import AlertEvent
    from tests.supervision_harness import running_supervision

    async with running_supervision(db_url, short_tmp, CONFIG) as (ingest, _):
        vid = await _vehicle(ingest.pool, "沪D20005", "13900020005", "other")
        since = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
        (alert_id,) = await AlertStore(ingest.pool).apply(
            [AlertEvent("open", OFFLINE, vid, OFFLINE, since)]
        )
        car = await Vehicle.online(ingest.port, "13900020005", "沪D20005")
        await car.send(fix(datetime.now(UTC).replace(microsecond=0), 121.3, 31.3, speed=0.0))
        await eventually(lambda: _ended(ingest.pool, alert_id))
        (alert,) = await _alerts(ingest.pool, vid, OFFLINE)
        first = await ingest.pool.fetchval(
            "SELECT min(received_time) FROM positions WHERE vehicle_id = $1", vid
        )
        assert (alert.id, alert.start_time) == (alert_id, since)
        assert alert.end_time is not None  # back at its authentication or its first report
        assert first - timedelta(seconds=1) <= alert.end_time <= first + timedelta(seconds=1)
        await car.close()


@aio_test
async def test_a_vehicle_is_saved_when_its_connection_ends(db_url: str, short_tmp: Path) -> None:
    """With no periodic save due for an hour, a terminal that disconnects still leaves its
    latest state for the worker it will reconnect to."""
    from tests.supervision_harness import running_supervision

    config = {**CONFIG, "state": {"save_interval": 3600, "poll_interval": 0.3}}
    async with running_supervision(db_url, short_tmp, config) as (ingest, _):
        vid = await _vehicle(ingest.pool, "沪D20006", "13900020006", "heavy_truck")
        car = await Vehicle.online(ingest.port, "13900020006", "沪D20006")
        start = _bj(1, 8)
        await _drive(car, start, range(0, 7, 2))
        await asyncio.sleep(0.3)  # judged (the feed runs after the acks)
        assert (
            await ingest.pool.fetchval("SELECT newest FROM rule_state WHERE vehicle_id = $1", vid)
            is None
        )  # claimed, not saved
        await car.close()
        await _saved_until(ingest.pool, vid, start + timedelta(minutes=6))
