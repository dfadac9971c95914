"""The rules on the live server, judged on fix time: terminals over real TCP, alerts in PostGIS.

A backlog uploaded with pauses, a terminal whose clock is 8 h behind, old data: each gets the
alarms real time would have given (at the fix times), and no driver is told about the past.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from alerts.model import (
    FATIGUE_CONTINUOUS,
    FATIGUE_WARNING,
    OFFLINE,
    SPEEDING,
)
from protocols.jt808 import BEIJING, BatchLocation
from store.alerts import Alert, AlertStore
from store.vehicles import add_vehicle, new_vehicle
from tests.aio import aio_test
from tests.ingest_harness import Ingest
from tests.supervision_harness import Vehicle, eventually, fix, running_supervision

NO_PUSH = {"enforcement": {"on_authentication": False}}
KM_PER_DEG = 95.3  # longitude degrees at 31.2 N
STOPPED = 0x2  # positioned, ACC off


async def _alerts(pool: asyncpg.Pool, alert_type: str) -> list[Alert]:
    return sorted(await AlertStore(pool).list(type=alert_type), key=lambda a: a.start_time)


async def _vehicle(ingest: Ingest, plate: str, phone: str, klass: str) -> Vehicle:
    async with ingest.pool.acquire() as conn:
        await add_vehicle(conn, new_vehicle(plate, klass, "测试客运", phone))
    return await Vehicle.online(ingest.port, phone, plate)


def _bj(days_ago: int, hour: int, minute: int = 0) -> datetime:
    """``hour:minute`` Beijing time ``days_ago`` days before today (Beijing), as UTC."""
    today = datetime.now(BEIJING).date() - timedelta(days=days_ago)
    return datetime(today.year, today.month, today.day, hour, minute, tzinfo=BEIJING).astimezone(
        UTC
    )


async def _upload(
    car: Vehicle, start: datetime, minutes: int, step_min: int = 2, *, pause_every: int = 20
) -> None:
    """Driving at 60 km/h from ``start`` for ``minutes``, one 0x0200 per ``step_min``, sent in
    fix order as fast as acknowledged, with a 0.5 s pause every ``pause_every`` reports
    (the supervision tick runs every 0.2 s: several ticks see each pause)."""
    for n, m in enumerate(range(0, minutes + 1, step_min)):
        if n and n % pause_every == 0:
            await asyncio.sleep(0.5)
        await car.send(fix(start + timedelta(minutes=m), 121.0 + m / KM_PER_DEG, 31.2))


async def _fatigue_on_time(ingest: Ingest, car: Vehicle, warn: datetime, alarm: datetime) -> None:
    """One alert for the incident, at its alarm stage: it started with the warning at
    ``warn``, reached the alarm at ``alarm`` (its timeline says so)."""
    (incident,) = await eventually(lambda: _alerts(ingest.pool, FATIGUE_CONTINUOUS), timeout=10)
    assert incident.start_time == warn
    stages = {s["type"]: datetime.fromisoformat(s["at"]) for s in incident.timeline}
    assert stages[FATIGUE_WARNING] == warn and stages[FATIGUE_CONTINUOUS] == alarm
    assert await _alerts(ingest.pool, FATIGUE_WARNING) == []  # no second alert
    # still driving at the last report: no rest, so nothing ended
    assert incident.end_time is None
    assert incident.late  # found in old data
    assert [m for m in await car.quiet(0.5) if m.msg_id == 0x8300] == []  # nobody told


#: (plate, Beijing start days ago and time, minutes uploaded, warning and alarm after):
#: yesterday 08:00-12:20, day limit 4 h; two nights ago from 22:30, night limit 2 h.
BACKLOGS = {
    "day_4h": ("沪B10001", (1, 8, 0), 260, 3.5, 4.0),
    "night_2h": ("沪B10002", (2, 22, 30), 140, 1.5, 2.0),
}


@pytest.mark.parametrize("case", sorted(BACKLOGS))
@aio_test
async def test_backlog_with_pauses_gets_the_fatigue_alarm_on_time(
    case: str, db_url: str, short_tmp: Path
) -> None:
    """A coach uploads an old drive (fix times a day or two behind the wall clock) with pauses
    between uploads: the warning and the alarm at their fix times (by day 3.5 h / 4 h, by night
    1.5 h / 2 h), both still open, and no text to the driver."""
    plate, (days_ago, hour, minute), minutes, warn_h, alarm_h = BACKLOGS[case]
    async with running_supervision(db_url, short_tmp, NO_PUSH) as (ingest, _):
        car = await _vehicle(ingest, plate, "1390001000" + plate[-1], "coach")
        start = _bj(days_ago, hour, minute)
        await _upload(car, start, minutes)
        await _fatigue_on_time(
            ingest, car, start + timedelta(hours=warn_h), start + timedelta(hours=alarm_h)
        )
        await car.close()


@aio_test
async def test_terminal_clock_8h_behind_gets_its_alarms_and_stays_online(
    db_url: str, short_tmp: Path
) -> None:
    """A truck whose terminal sends UTC as Beijing time: every fix time is 8 h behind. Live
    reporting for 4 h 10 of fix time (its reports are received now): the 4 h alarm at its
    fix time, and no OFFLINE although our clock is 8 h ahead of its fixes."""
    config = {**NO_PUSH, "rules": {"offline_s": 3.0}}
    async with running_supervision(db_url, short_tmp, config) as (ingest, _):
        car = await _vehicle(ingest, "沪B10003", "13900010003", "heavy_truck")
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=8, minutes=250)
        await _upload(car, start, 250)
        await _fatigue_on_time(
            ingest, car, start + timedelta(hours=3.5), start + timedelta(hours=4)
        )
        assert await _alerts(ingest.pool, OFFLINE) == []
        await car.close()


@aio_test
async def test_no_automatic_text_for_old_data(db_url: str, short_tmp: Path) -> None:
    """Two school buses at 75 km/h off any expressway (limit 60) for a minute, sent as live
    0x0200 reports: one drove an hour ago, one drives now. Both get a stored speeding alert;
    only the current one's driver gets the 0x8300 text; the old one is marked late."""
    async with running_supervision(db_url, short_tmp, NO_PUSH) as (ingest, _):
        old = await _vehicle(ingest, "沪B10004", "13900010004", "school_bus")
        now = await _vehicle(ingest, "沪B10005", "13900010005", "school_bus")
        t_old = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        t_now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=70)
        for car, t0 in ((old, t_old), (now, t_now)):
            for i in range(7):
                await car.send(fix(t0 + timedelta(seconds=10 * i), 121.0 + i * 0.002, 31.2, 75))
        (text,) = await now.commands(0x8300)
        assert "超速" in text.body.text
        alerts = await eventually(lambda: _n_alerts(ingest.pool, SPEEDING, 2), timeout=5)
        by_plate = {a.plate: a for a in alerts}
        assert by_plate["沪B10004"].late and not by_plate["沪B10005"].late
        assert [m for m in await old.quiet(0.5) if m.msg_id == 0x8300] == []
        await old.close()
        await now.close()


async def _n_alerts(pool: asyncpg.Pool, alert_type: str, n: int) -> list[Alert]:
    found = await _alerts(pool, alert_type)
    return found if len(found) >= n else []


async def _fences(ingest: Ingest, supervision: object, fences: list) -> None:
    from store import geofences

    reloads = supervision.stats.fence_reloads  # type: ignore[attr-defined]
    await geofences.save(ingest.pool, fences)
    await eventually(lambda: _true(supervision.stats.fence_reloads > reloads))  # type: ignore[attr-defined]


async def _true(value: bool) -> bool:
    return value


@aio_test
async def test_one_alert_per_forbidden_zone_passage(db_url: str, short_tmp: Path) -> None:
    """A truck drives through a forbidden zone, then through a plain zone: the passage is one
    alert (start at the entry, end at the exit, its timeline open -> close), not three; the
    plain zone's entry and exit are recorded but closed at once (nothing to handle), so the
    dispatcher's active list holds the one passage."""
    from shapely.geometry import Point

    from geo.fences import Geofence

    async with running_supervision(db_url, short_tmp, NO_PUSH) as (ingest, supervision):
        await _fences(
            ingest,
            supervision,
            [
                Geofence(0, "禁行桥", "forbidden", "circle", Point(121.5, 31.2), radius_m=300),
                Geofence(0, "服务区", "zone", "circle", Point(121.52, 31.2), radius_m=300),
            ],
        )
        car = await _vehicle(ingest, "沪B10006", "13900010006", "heavy_truck")
        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=460)
        # eastwards at 30 km/h (83 m per 10 s), from 600 m west of the bridge to past the zone
        for i in range(45):
            lon = 121.5 - 0.0063 + i * 0.00087
            await car.send(fix(t0 + timedelta(seconds=10 * i), lon, 31.2, speed=30.0))
        store = AlertStore(ingest.pool)

        async def ended() -> list[Alert]:
            return [a for a in await _alerts(ingest.pool, "forbidden_zone") if a.end_time]

        (passage,) = await eventually(ended)
        assert [s["phase"] for s in passage.timeline] == ["open", "close"]
        assert passage.status == "open"  # the dispatcher handles it
        everything = await store.list()
        assert sorted(a.type for a in everything) == [
            "forbidden_zone", "geofence_enter", "geofence_exit",
        ]  # fmt: skip
        for instant in (a for a in everything if a.type != "forbidden_zone"):
            assert instant.status == "closed" and instant.details["fence_name"] == "服务区"
        assert [a.id for a in await store.list(status="active")] == [passage.id]
        await car.close()


@aio_test
async def test_coach_44h_in_7_days_over_tcp(db_url: str, short_tmp: Path) -> None:
    """A coach's last seven days uploaded in fix order (0x0704, a fix every 3 min): each
    day 08:00-11:15 and 11:45-15:00 driving, parked (ACC off) in between and overnight. 44 h
    is passed on the seventh day at 13:30: one FATIGUE_WEEKLY alert, ended by that day's 15:00
    rest; no daily or continuous alarm (6.5 h a day, 3 h 15 at a stretch)."""
    async with running_supervision(db_url, short_tmp, NO_PUSH) as (ingest, _):
        car = await _vehicle(ingest, "沪B10007", "13900010007", "coach")
        reports = []
        for days_ago in range(8, 1, -1):
            day = _bj(days_ago, 8)
            lon = 121.0
            # (first minute, last minute driving, parked until): a fix every 3 min
            for start, end, parked in ((0, 195, 225), (225, 420, 460)):
                for m in range(start, parked, 3):
                    moving = m < end
                    reports.append(
                        fix(day + timedelta(minutes=m), lon, 31.2, 60.0 if moving else 0.0,
                            status=0x3 if moving else STOPPED)
                    )  # fmt: skip
                    lon += 3 / KM_PER_DEG if moving else 0.0
        for i in range(0, len(reports), 30):  # stored reports, as 0x0704 uploads of 30
            await car.send(BatchLocation(batch_type=1, items=reports[i : i + 30]))

        async def ended() -> list[Alert]:
            return [a for a in await _alerts(ingest.pool, "fatigue_weekly") if a.end_time]

        (weekly,) = await eventually(ended, timeout=10)
        assert abs((weekly.start_time - _bj(2, 13, 30)).total_seconds()) <= 180
        assert weekly.end_time == _bj(2, 15)
        assert weekly.details["limit_s"] == 44 * 3600
        for other in ("fatigue_daily", FATIGUE_CONTINUOUS, FATIGUE_WARNING):
            assert await _alerts(ingest.pool, other) == []
        await car.close()


@aio_test
async def test_school_bus_20_kmh_in_a_hazard_zone_over_tcp(db_url: str, short_tmp: Path) -> None:
    """A hazard zone (level crossing, kind 'hazard') stored as a fence; a school bus crosses it
    at 30 km/h now: a speeding alert against 20 km/h and the driver is told the limit. A
    truck at the same speed raises nothing there."""
    from shapely.geometry import Point

    from geo.fences import Geofence

    async with running_supervision(db_url, short_tmp, NO_PUSH) as (ingest, supervision):
        crossing = Geofence(0, "平交道口", "hazard", "circle", Point(121.5, 31.2), radius_m=150,
                            properties={"hazard": "level_crossing"})  # fmt: skip
        await _fences(ingest, supervision, [crossing])
        bus = await _vehicle(ingest, "沪B10008", "13900010008", "school_bus")
        truck = await _vehicle(ingest, "沪B10009", "13900010009", "heavy_truck")
        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=110)
        for car in (bus, truck):
            for i in range(12):  # 83 m per 10 s fix: from 500 m west to 410 m east
                lon = 121.5 - 0.0053 + i * 0.00087
                await car.send(fix(t0 + timedelta(seconds=10 * i), lon, 31.2, speed=30.0))
        (text,) = await bus.commands(0x8300)
        assert "限速20公里每小时" in text.body.text
        (alert,) = await eventually(lambda: _alerts(ingest.pool, SPEEDING))
        assert alert.plate == "沪B10008" and alert.details["limit_kmh"] == 20.0
        assert [m for m in await truck.quiet(0.3) if m.msg_id == 0x8300] == []
        await bus.close()
        await truck.close()
