"""Values that cannot be true (issue 11 item 6): a clock decades ahead, no time at all, a point
off the globe, 6553 km/h. Stored as sent and flagged; never on the map, never "current".

End to end over real TCP into PostGIS, plus the rules engine's side (a 2099 fix must not make
every later fix late, and an SOS after it is live)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from alerts.engine import RulesEngine
from alerts.model import SPEEDING, TERMINAL_ALARM
from geo.flags import COORDS_INVALID, SPEED_IMPLAUSIBLE, TIME_AHEAD, TIME_INVALID, moves_last
from geo.index import FenceIndex
from geo.position import Position
from ingest.positions import to_position, untimed_key
from ingest.values import ValueLimits, flag_values
from protocols.jt808 import BEIJING, BatchLocation, LocationReport, encode_items
from store.writer import refresh_last_positions
from tests.aio import aio_test
from tests.ingest_harness import Ingest, running_ingest
from tests.terminal_client import Terminal, report
from tests.test_rules_hygiene import Track, of, run, vehicle
from tests.test_rules_speeding import EXPRESSWAY

SOS = 1


def _now_report(i: int, **changes: object) -> LocationReport:
    """A fix of the test track dated now (so "ahead" is measured against a real clock)."""
    r = report(i)
    r.time = (
        (datetime.now(UTC) - timedelta(seconds=30 - i)).astimezone(BEIJING).replace(microsecond=0)
    )
    for name, value in changes.items():
        setattr(r, name, value)
    return r


async def _rows(pool: asyncpg.Pool, phone: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        """SELECT p.fix_time, p.received_time, p.serial, p.valid, p.late, p.speed_kmh,
                  ST_X(p.geom) AS lon, ST_Y(p.geom) AS lat, p.extras
           FROM positions p JOIN vehicles v ON v.id = p.vehicle_id
           WHERE v.phone = $1 ORDER BY p.received_time, p.fix_time""",
        phone,
    )


async def _last(pool: asyncpg.Pool, phone: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        """SELECT lp.fix_time, ST_X(lp.geom) AS lon, ST_Y(lp.geom) AS lat FROM last_positions lp
           JOIN vehicles v ON v.id = lp.vehicle_id WHERE v.phone = $1""",
        phone,
    )


async def _await_last(pool: asyncpg.Pool, phone: str, fix_time: datetime) -> asyncpg.Record:
    """The vehicle's last position once it shows ``fix_time`` (the writer moves it each 1 s)."""
    for _ in range(100):
        row = await _last(pool, phone)
        if row is not None and row["fix_time"] == fix_time:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"last position stayed {row and row['fix_time']}, not {fix_time}")


async def _send_acked(terminal: Terminal, body: object, serial: int | None = None) -> int:
    serial = await terminal.send(body, serial)  # type: ignore[arg-type]
    ack = await terminal.receive()
    assert (ack.msg_id, ack.body.reply_serial, ack.body.result) == (0x8001, serial, 0), ack
    return serial


@contextlib.asynccontextmanager
async def _logged_in(
    db_url: str, workdir: Path, phone: str, plate: str
) -> AsyncIterator[tuple[Ingest, Terminal]]:
    """The ingest stack and one authenticated terminal."""
    async with running_ingest(db_url, workdir) as ingest:
        terminal = await Terminal.connect(ingest.port, phone)
        await terminal.login(plate)
        try:
            yield ingest, terminal
        finally:
            await terminal.close()


def _extras(row: asyncpg.Record) -> dict[str, object]:
    return json.loads(row["extras"]) if row["extras"] else {}


# ------------------------------------------------------------------ end to end: TCP + PostGIS


@aio_test
async def test_a_2099_fix_is_stored_but_never_freezes_the_last_position(
    db_url: str, short_tmp: Path
) -> None:
    phone = "13800000001"
    async with _logged_in(db_url, short_tmp, phone, "京A20990") as (ingest, terminal):
        first = _now_report(0)
        await _send_acked(terminal, first)
        await _await_last(ingest.pool, phone, first.time.astimezone(UTC))
        future = _now_report(1, time=datetime(2099, 1, 1, 8, tzinfo=BEIJING), alarm=SOS)
        await _send_acked(terminal, future)
        later = _now_report(2)
        await _send_acked(terminal, later)
        last = await _await_last(ingest.pool, phone, later.time.astimezone(UTC))
        assert last["lat"] == pytest.approx(later.latitude)
        rows = await _rows(ingest.pool, phone)
        assert [r["fix_time"] for r in rows] == [
            first.time.astimezone(UTC), datetime(2099, 1, 1, 0, tzinfo=UTC),
            later.time.astimezone(UTC),
        ]  # fmt: skip
        assert _extras(rows[1])[TIME_AHEAD] is True
        assert TIME_AHEAD not in _extras(rows[2])
        assert not rows[2]["late"], "the fix after the 2099 one must not count as late"
        # A restart's catch-up of lagging last positions skips it too.
        await ingest.pool.execute("DELETE FROM last_positions")
        async with ingest.pool.acquire() as conn:
            await refresh_last_positions(conn)
        assert (await _last(ingest.pool, phone))["fix_time"] == later.time.astimezone(UTC)


@aio_test
async def test_a_retransmitted_report_without_a_valid_time_is_stored_once(
    db_url: str, short_tmp: Path
) -> None:
    phone = "13800000002"
    async with _logged_in(db_url, short_tmp, phone, "京A00000") as (ingest, terminal):
        untimed = _now_report(0, time=None)
        serial = await _send_acked(terminal, untimed)
        await asyncio.sleep(1.1)  # a retransmission comes later: another receive time
        await _send_acked(terminal, untimed, serial)  # the terminal missed the ack
        other = _now_report(1, time=None)  # another report, same serial (after a wrap)
        await _send_acked(terminal, other, serial)
        # A blind-area batch of two untimed fixes under one serial, sent twice.
        batch = BatchLocation(items=[_now_report(2, time=None), _now_report(3, time=None)])
        batch_serial = await _send_acked(terminal, batch)
        await _send_acked(terminal, batch, batch_serial)
        rows = await _rows(ingest.pool, phone)
        assert len(rows) == 4, [(r["fix_time"], r["serial"]) for r in rows]
        for row in rows:
            assert _extras(row)[TIME_INVALID] is True
            assert not row["valid"]
            assert row["fix_time"] < datetime(1980, 1, 6, tzinfo=UTC)  # never a real GNSS time
        assert rows[0]["fix_time"] == untimed_key(untimed)
        await asyncio.sleep(1.2)  # past the writer's last-position interval
        assert await _last(ingest.pool, phone) is None, "an untimed fix is not a position"


@aio_test
async def test_out_of_range_coordinates_and_impossible_speed_are_flagged(
    db_url: str, short_tmp: Path
) -> None:
    phone = "13800000003"
    async with _logged_in(db_url, short_tmp, phone, "京A00095") as (ingest, terminal):
        good = _now_report(0)
        await _send_acked(terminal, good)
        off_globe = _now_report(1, latitude=95.0, longitude=200.0)
        await _send_acked(terminal, off_globe)
        fast = _now_report(2, speed_kmh=6553.5)
        await _send_acked(terminal, fast)
        rows = await _rows(ingest.pool, phone)
        assert [(r["lon"], r["lat"]) for r in rows][1] == pytest.approx((200.0, 95.0))
        assert not rows[1]["valid"] and _extras(rows[1])[COORDS_INVALID] is True
        assert rows[2]["valid"] and rows[2]["speed_kmh"] == pytest.approx(6553.5)
        assert _extras(rows[2])[SPEED_IMPLAUSIBLE] is True
        assert SPEED_IMPLAUSIBLE not in _extras(rows[0]) and rows[0]["valid"]
        # The map moves to the fast fix (its place is fine), never to the one off the globe.
        last = await _await_last(ingest.pool, phone, fast.time.astimezone(UTC))
        assert last["lat"] == pytest.approx(fast.latitude)


@aio_test
async def test_an_out_of_range_fix_alone_never_reaches_the_map(
    db_url: str, short_tmp: Path
) -> None:
    phone = "13800000004"
    async with _logged_in(db_url, short_tmp, phone, "京A00096") as (ingest, terminal):
        await _send_acked(terminal, _now_report(0, latitude=95.0, longitude=200.0))
        await asyncio.sleep(1.3)
        assert await _last(ingest.pool, phone) is None


def _adas_item(terminal_id: bytes) -> tuple[int, bytes]:
    """A 0x64 active-safety alarm item (47 bytes, short identification) naming ``terminal_id``."""
    when = bytes.fromhex("251122090000")
    site = bytes([60]) + struct.pack(">HII", 12, 31_200_000, 121_500_000) + when + b"\0\0"
    ident = terminal_id.ljust(7, b"\0") + when + bytes([1, 0, 0])
    return 0x64, struct.pack(">I", 7) + bytes([1, 1, 1, 0, 0, 0, 0, 0]) + site + ident


@aio_test
async def test_a_nul_inside_a_text_item_does_not_make_the_report_unstorable(
    db_url: str, short_tmp: Path
) -> None:
    phone = "13800000005"
    async with _logged_in(db_url, short_tmp, phone, "京A00097") as (ingest, terminal):
        await _send_acked(terminal, _now_report(0, items=[_adas_item(b"AB\0CD")]))
        (row,) = await _rows(ingest.pool, phone)
        assert _extras(row)["adas"]["identification"]["terminal_id"] == "ABCD"


# ------------------------------------------------------------------ the checks themselves


def test_limits_are_configurable() -> None:
    received = datetime(2026, 5, 6, tzinfo=UTC)

    def fix(ahead_s: float, speed: float) -> Position:
        return Position(1, received + timedelta(seconds=ahead_s), received, 120.0, 30.0, speed)

    fixes = [fix(599, 250), fix(601, 251), fix(119, 120), fix(121, 121)]
    flag_values(fixes[:2])
    flag_values(fixes[2:], ValueLimits(max_ahead_s=120, max_speed_kmh=120))
    assert [TIME_AHEAD in f.extras for f in fixes] == [False, True, False, True]
    assert [SPEED_IMPLAUSIBLE in f.extras for f in fixes] == [False, True, False, True]
    assert [moves_last(f.extras) for f in fixes] == [True, False, True, False]
    with pytest.raises(ValueError):
        ValueLimits(max_ahead_s=0)


def test_untimed_key_is_stable_and_tells_reports_apart() -> None:
    received = datetime(2026, 5, 6, tzinfo=UTC)
    a, b = report(1), report(2)
    a.time = b.time = None
    pa = to_position(a, 7, 42, received)
    again = to_position(report(1), 7, 42, received + timedelta(minutes=3))
    assert TIME_INVALID not in again.extras  # report(1) with its time is a normal fix
    again_untimed = report(1)
    again_untimed.time = None
    pa2 = to_position(again_untimed, 7, 42, received + timedelta(minutes=3))
    assert pa.fix_time == pa2.fix_time, "a retransmission maps to the same key"
    assert pa.fix_time != to_position(b, 7, 42, received).fix_time
    assert not pa.valid and pa.extras[TIME_INVALID] is True
    items = encode_items({"mileage_km": 1.0})
    assert untimed_key(LocationReport(items=items)) != untimed_key(LocationReport())


# ------------------------------------------------------------------ the rules' side


def test_a_2099_fix_is_judged_at_arrival_and_later_fixes_stay_live() -> None:
    engine = RulesEngine(FenceIndex([]))
    v = vehicle(1)
    t = Track()
    before = t.drive(30, 40)
    wild = t.fix(40)
    wild.fix_time = datetime(2099, 1, 1, tzinfo=UTC)
    wild.received_time = t.t
    wild.extras[TIME_AHEAD] = True
    t.skip(10, 40)
    after = t.drive(20, 40, alarm=SOS)
    events = run(engine, v, [*before, wild, *after])
    sos = of(events, TERMINAL_ALARM, "open")
    assert len(sos) == 1 and not sos[0].late, "the SOS after a 2099 fix is a live alarm"
    assert sos[0].start == after[0].fix_time


def test_an_implausible_speed_is_not_motion() -> None:
    from alerts.fatigue import DRIVE, IDLE, motion
    from alerts.settings import RuleSettings

    profile = RuleSettings().profile(vehicle(1))
    t = Track()
    glitch = t.fix(6553.5, acc=True)
    assert motion(glitch, profile) == DRIVE
    glitch.extras[SPEED_IMPLAUSIBLE] = True
    assert motion(glitch, profile) == IDLE


def test_an_implausible_speed_is_no_speeding() -> None:
    engine = RulesEngine(FenceIndex([EXPRESSWAY]))
    v = vehicle(1)
    t = Track(step=1.0)
    fixes = t.drive(120, 60)
    for f in fixes:
        f.speed_kmh = 6553.5
        f.extras[SPEED_IMPLAUSIBLE] = True
    assert of(run(engine, v, fixes), SPEEDING) == []
    t2 = Track(vehicle_id=2, step=1.0)
    fast = t2.drive(120, 60)
    for f in fast:
        f.speed_kmh = 180.0
    assert of(run(engine, vehicle(2), fast), SPEEDING), "the control case does alert"
