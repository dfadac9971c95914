"""Supervision on the live server, end to end: a terminal over a real socket, the rules, the
alerts in PostGIS, the 0x8203 and 0x8300 it gets back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from alerts.actions import Actions, parse_actions
from alerts.commands import ACCEPTED, CONFIRMABLE_ALARMS, Text
from alerts.model import (
    FATIGUE_WARNING,
    SPEEDING,
    TERMINAL_ALARM,
    AlertEvent,
)
from protocols.jt808 import ALARM_BITS, BatchLocation, DriverIdentity
from store import pushes
from store.alerts import Alert, AlertStore
from tests.aio import aio_test
from tests.supervision_harness import Vehicle, eventually, fix, running_supervision

SOS = 1 << 0
CONFIRMABLE = CONFIRMABLE_ALARMS
NO_PUSH = {"enforcement": {"on_authentication": False}}


async def _alerts(pool: asyncpg.Pool, alert_type: str | None = None) -> list[Alert]:
    return sorted(await AlertStore(pool).list(type=alert_type), key=lambda a: a.start_time)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# ---------------------------------------------------------------------- automatic actions (pure)


def _event(kind: str, phase: str = "open", late: bool = False, **details: object) -> AlertEvent:
    start = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)
    return AlertEvent(phase, kind, 7, kind, start, late=late, details=dict(details))  # type: ignore[arg-type]


def test_action_texts_from_templates_never_for_late_events() -> None:
    actions = Actions()
    warning = actions.plan(_event(FATIGUE_WARNING, threshold_s=12600.0))
    assert warning is not None
    assert warning.text == "您已连续驾驶3.5小时，即将疲劳驾驶，请提前安排行程，注意休息"
    assert warning.command == Text(warning.text, tts=True, display=True, urgent=False)
    coach_night = actions.plan(_event(FATIGUE_WARNING, threshold_s=5400.0))
    assert coach_night is not None and coach_night.text.startswith("您已连续驾驶1.5小时")
    speeding = actions.plan(_event(SPEEDING, limit_kmh=60.0, max_speed_kmh=71.0))
    assert speeding is not None and speeding.text == "您已超速，限速60公里每小时，请减速慢行"
    assert actions.plan(_event(FATIGUE_WARNING, late=True, threshold_s=12600.0)) is None
    assert actions.plan(_event(FATIGUE_WARNING, phase="close", threshold_s=12600.0)) is None
    assert actions.plan(_event(TERMINAL_ALARM, bit=0)) is None  # no default action
    # A missing figure falls back to the plain sentence rather than reading "{hours}" aloud.
    bare = actions.plan(_event(FATIGUE_WARNING))
    assert bare is not None and bare.text == "您即将疲劳驾驶，请提前安排行程，注意休息"


def test_action_cooldown_and_configuration() -> None:
    actions = Actions()
    first = _event(SPEEDING, limit_kmh=60.0)
    assert actions.plan(first) is not None
    soon = _event(SPEEDING, limit_kmh=60.0)
    soon.start = first.start + timedelta(seconds=299)
    assert actions.plan(soon) is None  # within the 300 s cooldown of this vehicle
    later = _event(SPEEDING, limit_kmh=60.0)
    later.start = first.start + timedelta(seconds=700)
    assert actions.plan(later) is not None
    custom = Actions({SPEEDING: None, TERMINAL_ALARM: {"text": "收到{name}报警", "tts": False}})
    assert custom.plan(_event(SPEEDING, limit_kmh=60.0)) is None
    sos = custom.plan(_event(TERMINAL_ALARM, bit=0, name="emergency"))
    assert sos is not None and sos.text == "收到emergency报警"
    assert (sos.command.tts, sos.command.display) == (False, True)
    with pytest.raises(ValueError, match="unknown alert type"):
        parse_actions({"speed": {"text": "x"}})
    with pytest.raises(ValueError, match="needs a text"):
        parse_actions({TERMINAL_ALARM: {"tts": True}})


# ---------------------------------------------------------------------- SOS end to end


@aio_test
async def test_sos_set_cleared_acknowledged_and_confirmed_with_0x8203(
    db_url: str, short_tmp: Path
) -> None:
    async with running_supervision(db_url, short_tmp, NO_PUSH) as (ingest, supervision):
        car = await Vehicle.online(ingest.port, "13900000101", "沪A00101")
        t0 = _now() - timedelta(minutes=5)
        await car.send(fix(t0, 121.5, 31.2))
        sos_serial = await car.send(fix(t0 + timedelta(seconds=10), 121.5001, 31.2, alarm=SOS))
        await car.send(fix(t0 + timedelta(seconds=20), 121.5002, 31.2, alarm=SOS))

        (alert,) = await eventually(lambda: _alerts(ingest.pool, TERMINAL_ALARM))
        assert (alert.status, alert.severity, alert.end_time, alert.plate) == (
            "open", 1, None, "沪A00101",
        )  # fmt: skip
        assert alert.start_time == t0 + timedelta(seconds=10)
        assert alert.details["name"] == "emergency" and alert.details["serial"] == sos_serial

        await car.send(fix(t0 + timedelta(seconds=30), 121.5003, 31.2))  # the bit clears

        async def ended() -> list[Alert]:
            return [a for a in await _alerts(ingest.pool, TERMINAL_ALARM) if a.end_time]

        (ended_alert,) = await eventually(ended)
        assert ended_alert.id == alert.id and ended_alert.end_time == t0 + timedelta(seconds=30)
        assert car.received and all(m.msg_id == 0x8001 for m in car.received)  # no 0x8203 yet

        # The terminal answers while the server waits for it (both run here).
        (acknowledged, result), (confirmation,) = await asyncio.gather(
            supervision.acknowledge(alert.id, "值班员张三"), car.commands(0x8203)
        )
        assert (acknowledged.status, acknowledged.acknowledged_by) == ("acknowledged", "值班员张三")
        assert result == ACCEPTED
        assert (confirmation.body.alarm_serial, confirmation.body.alarm_type) == (sos_serial, SOS)

        (push,) = await pushes.history(ingest.pool, alert_id=alert.id)
        assert (push.command, push.result, push.serial) == (
            "confirm_alarm", "accepted", confirmation.serial
        )
        assert push.answered_at is not None
        audit = await AlertStore(ingest.pool).audit(alert.id)
        assert [a.action for a in audit] == [
            "episode_open", "episode_close", "acknowledge", "terminal_confirm",
        ]  # fmt: skip
        assert audit[-1].details["result"] == "accepted"
        # The 1 s scan finds nothing left to confirm: no second 0x8203.
        assert [m.msg_id for m in await car.quiet(0.6) if m.msg_id == 0x8203] == []
        await car.close()


@aio_test
async def test_acknowledged_from_another_process_is_confirmed_when_online(
    db_url: str, short_tmp: Path
) -> None:
    async with running_supervision(db_url, short_tmp, NO_PUSH) as (ingest, _):
        car = await Vehicle.online(ingest.port, "13900000102", "沪A00102")
        t0 = _now() - timedelta(minutes=5)
        serial = await car.send(fix(t0, 121.5, 31.2, alarm=SOS))
        (alert,) = await eventually(lambda: _alerts(ingest.pool, TERMINAL_ALARM))
        await car.close()  # offline now
        await asyncio.sleep(0.2)

        cli = await asyncpg.connect(db_url)  # the CLI: its own connection, its own store
        try:
            await AlertStore(cli).acknowledge(alert.id, "李四")
        finally:
            await cli.close()
        await asyncio.sleep(0.6)  # scans run; the terminal is not connected: nothing recorded
        assert await pushes.history(ingest.pool, alert_id=alert.id) == []

        back = await Vehicle.online(ingest.port, "13900000102", "沪A00102")
        (confirmation,) = await back.commands(0x8203)
        assert (confirmation.body.alarm_serial, confirmation.body.alarm_type) == (serial, SOS)

        async def confirmed() -> list[pushes.Push]:
            return [p for p in await pushes.history(ingest.pool, alert_id=alert.id) if p.result]

        (push,) = await eventually(confirmed)
        assert push.result == "accepted"
        await back.close()


@aio_test
async def test_unacknowledged_sos_escalates(db_url: str, short_tmp: Path) -> None:
    config = {**NO_PUSH, "escalation": {"severity": {"critical": 0.4}, "max_level": 2}}
    async with running_supervision(db_url, short_tmp, config) as (ingest, supervision):
        car = await Vehicle.online(ingest.port, "13900000103", "沪A00103")
        await car.send(fix(_now(), 121.5, 31.2, alarm=SOS))

        async def escalated() -> list[Alert]:
            return [a for a in await _alerts(ingest.pool) if a.escalation_level == 2]

        (alert,) = await eventually(escalated, timeout=5)
        audit = await AlertStore(ingest.pool).audit(alert.id)
        assert [a.details.get("level") for a in audit if a.action == "escalate"][-1] == 2
        # Acknowledged, it escalates no further (and the terminal gets its 0x8203).
        await asyncio.gather(supervision.acknowledge(alert.id, "王五"), car.commands(0x8203))
        await car.close()


# ---------------------------------------------------------------------- fatigue and late data


def _drive(start: datetime, minutes: int, step_min: int = 4) -> list[tuple[datetime, float]]:
    """Fix times and longitudes for a straight drive at 60 km/h (1 km per minute)."""
    km_per_deg = 95.3  # at 31.2 N
    return [
        (start + timedelta(minutes=m), 121.0 + m / km_per_deg)
        for m in range(0, minutes + 1, step_min)
    ]


@aio_test
async def test_fatigue_prewarning_reaches_the_driver_as_tts(db_url: str, short_tmp: Path) -> None:
    async with running_supervision(db_url, short_tmp, NO_PUSH) as (ingest, _):
        car = await Vehicle.online(ingest.port, "13900000104", "沪A00104")
        # Driving from 3 h 33 min ago, a fix every 4 min: 3.5 h of driving is reached 3 min
        # ago, found by the fix of 1 min ago (recent: the driver is told).
        start = _now() - timedelta(minutes=213)
        track = _drive(start, 212)
        for at, lon in track:
            await car.send(fix(at, lon, 31.2))
        (text,) = await car.commands(0x8300)
        assert text.body.text == "您已连续驾驶3.5小时，即将疲劳驾驶，请提前安排行程，注意休息"
        assert text.body.flag & 0x08  # read aloud

        (warning,) = await eventually(lambda: _alerts(ingest.pool, FATIGUE_WARNING))
        assert warning.start_time == start + timedelta(hours=3.5) and not warning.late

        async def audited() -> list[object]:
            return [
                a for a in await AlertStore(ingest.pool).audit(warning.id)
                if a.action == "auto_text"
            ]  # fmt: skip

        (entry,) = await eventually(audited)
        assert entry.details["result"] == "accepted"  # type: ignore[attr-defined]
        (push,) = await pushes.history(ingest.pool, alert_id=warning.id)
        assert (push.command, push.item) == ("text", "text:fatigue_warning")
        assert push.result == "accepted"
        await car.close()


@aio_test
async def test_late_blind_area_batch_is_flagged_and_sends_no_text(
    db_url: str, short_tmp: Path
) -> None:
    async with running_supervision(db_url, short_tmp, NO_PUSH) as (ingest, _):
        car = await Vehicle.online(ingest.port, "13900000105", "沪A00105")
        start = _now() - timedelta(hours=5)
        track = _drive(start, 212)
        # The first fixes and the newest arrive live; the 3.3 h between them come later in
        # blind-area batches (0x0704 type 1), as after a long stretch without coverage. Live,
        # the gap looked like a rest; the batches show it was driving.
        for point in [*track[:3], track[-1]]:
            await car.send(fix(*_at(point)))
        gap = track[3:-1]
        for chunk in range(0, len(gap), 20):
            items = [fix(*_at(p)) for p in gap[chunk : chunk + 20]]
            await car.send(BatchLocation(batch_type=1, items=items))

        (warning,) = await eventually(lambda: _alerts(ingest.pool, FATIGUE_WARNING), timeout=8)
        assert warning.late and warning.start_time == start + timedelta(hours=3.5)
        assert [m for m in await car.quiet(1.0) if m.msg_id == 0x8300] == []
        assert await pushes.history(ingest.pool, alert_id=warning.id) == []
        await car.close()


def _at(point: tuple[datetime, float]) -> tuple[datetime, float, float]:
    return point[0], point[1], 31.2


@aio_test
async def test_driver_card_names_the_driver_of_later_alerts(db_url: str, short_tmp: Path) -> None:
    async with running_supervision(db_url, short_tmp, NO_PUSH) as (ingest, _):
        car = await Vehicle.online(ingest.port, "13900000106", "沪A00106")
        t0 = _now() - timedelta(minutes=2)
        await car.send(
            DriverIdentity(status=1, time=t0, read_result=0, driver_name="赵六",
                           cert_code="320100198001010011", issuer="交通局",
                           cert_expiry="20301231")
        )  # fmt: skip
        await car.send(fix(t0 + timedelta(seconds=5), 121.5, 31.2, alarm=SOS))
        (alert,) = await eventually(lambda: _alerts(ingest.pool, TERMINAL_ALARM))
        assert alert.driver == "320100198001010011"
        await car.close()


@aio_test
async def test_a_fence_added_while_running_is_enforced_with_a_text(
    db_url: str, short_tmp: Path
) -> None:
    from shapely.geometry import Point

    from geo.fences import Geofence
    from store import geofences

    async with running_supervision(db_url, short_tmp, NO_PUSH) as (ingest, supervision):
        car = await Vehicle.online(ingest.port, "13900000107", "沪A00107")
        reloads = supervision.stats.fence_reloads
        await geofences.save(
            ingest.pool,
            [Geofence(0, "禁行区", "forbidden", "circle", Point(121.5, 31.2), radius_m=300)],
        )
        await eventually(lambda: _true(supervision.stats.fence_reloads > reloads))
        assert [f.name for f in supervision.index.fences.values()] == ["禁行区"]
        # Eastwards at 30 km/h (83 m per 10 s fix), from 600 m west of the centre to inside.
        t0 = _now() - timedelta(seconds=115)  # recent: the text goes out
        for i in range(12):
            lon = 121.5 - 0.0063 + i * 0.00087
            await car.send(fix(t0 + timedelta(seconds=10 * i), lon, 31.2, speed=30.0))
        (text,) = await car.commands(0x8300)
        assert text.body.text == "您已进入禁行区域禁行区，请立即驶离"
        (alert,) = await eventually(lambda: _alerts(ingest.pool, "forbidden_zone"))
        assert alert.end_time is None and alert.details["fence_name"] == "禁行区"
        await car.close()


async def _true(value: bool) -> bool:
    return value


@aio_test
async def test_logout_is_no_offline_but_silence_is(db_url: str, short_tmp: Path) -> None:
    from protocols.jt808 import Logout

    config = {**NO_PUSH, "rules": {"offline_s": 1.0}}
    async with running_supervision(db_url, short_tmp, config) as (ingest, _):
        polite = await Vehicle.online(ingest.port, "13900000108", "沪A00108")
        silent = await Vehicle.online(ingest.port, "13900000109", "沪A00109")
        for car in (polite, silent):
            await car.send(fix(_now(), 121.5, 31.2))
        await polite.send(Logout())  # 0x0003, then the server closes the connection
        await silent.close()  # just gone

        (offline,) = await eventually(lambda: _alerts(ingest.pool, "offline"))
        assert offline.plate == "沪A00109"
        await asyncio.sleep(1.5)  # two offline periods later, still only the silent one
        assert [a.plate for a in await _alerts(ingest.pool, "offline")] == ["沪A00109"]


@aio_test
async def test_alert_events_wait_for_the_database_and_are_stored_once(
    db_url: str, short_tmp: Path
) -> None:
    async with running_supervision(db_url, short_tmp, NO_PUSH) as (ingest, supervision):
        car = await Vehicle.online(ingest.port, "13900000110", "沪A00110")
        await ingest.pool.execute("ALTER FUNCTION alerts_apply RENAME TO alerts_apply_away")
        t0 = _now() - timedelta(minutes=1)
        await car.send(fix(t0, 121.5, 31.2, alarm=SOS))
        await car.send(fix(t0 + timedelta(seconds=5), 121.5, 31.2))  # open and close wait
        await eventually(lambda: _true(supervision.stats.flush_failures > 0))
        assert await _alerts(ingest.pool) == []
        await ingest.pool.execute("ALTER FUNCTION alerts_apply_away RENAME TO alerts_apply")
        (alert,) = await eventually(
            lambda: _alerts(ingest.pool, TERMINAL_ALARM), timeout=5
        )  # retried within a second
        assert (alert.start_time, alert.end_time) == (t0, t0 + timedelta(seconds=5))
        assert supervision.stats.events_dropped == 0
        await car.close()


@aio_test
async def test_a_failing_observer_or_subscriber_never_stops_the_acks(
    db_url: str, short_tmp: Path
) -> None:
    from tests.ingest_harness import running_ingest

    class Broken:
        calls = 0

        def __getattr__(self, name: str) -> object:
            def fail(*args: object) -> None:
                Broken.calls += 1
                raise RuntimeError(f"{name} is broken")

            return fail

        def __call__(self, *args: object) -> None:  # as a durable-feed subscriber
            self.__getattr__("durable")(*args)  # type: ignore[operator]

    async with running_ingest(db_url, short_tmp) as ingest:
        broken = Broken()
        ingest.service.observer = broken  # type: ignore[assignment]
        ingest.writer.subscribe(broken)  # type: ignore[arg-type]
        car = await Vehicle.online(ingest.port, "13900000111", "沪A00111")
        for i in range(3):
            await car.send(fix(_now() + timedelta(seconds=i), 121.5, 31.2))
        # authenticated, then three durable batches (each after its ack)
        await eventually(lambda: _true(Broken.calls == 4))
        await car.close()


@aio_test
async def test_which_acknowledged_alarms_still_need_their_0x8203(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        vid = await pool.fetchval("INSERT INTO vehicles (plate) VALUES ('沪A00112') RETURNING id")
        store = AlertStore(pool)
        t0 = _now() - timedelta(minutes=10)

        def alarm(bit: int, minute: int) -> AlertEvent:
            start = t0 + timedelta(minutes=minute)
            key = f"terminal_alarm:{bit}:{minute}"
            details = {"bit": bit, "name": ALARM_BITS[bit]}
            return AlertEvent("open", TERMINAL_ALARM, vid, key, start, details=details)

        ids = await store.apply([alarm(0, 0), alarm(1, 1), alarm(0, 2), alarm(0, 3), alarm(3, 4)])
        sos, _overspeed, offline, abandoned, pending = ids
        for alert_id in ids:
            await store.acknowledge(alert_id, "值班员")
        assert [u.alert_id for u in await pushes.unconfirmed_alarms(pool, CONFIRMABLE)] == [
            sos, offline, abandoned, pending,
        ]  # fmt: skip  (bit 1, overspeed, is not one a terminal waits to have confirmed)
        for alert_id, result in ((sos, "accepted"), (offline, "offline"), (abandoned, None),
                                 (pending, None)):  # fmt: skip
            item = pushes.CONFIRMATION_ITEM + str(alert_id)
            push_id = await pushes.begin(pool, vid, "confirm_alarm", item, {}, alert_id=alert_id)
            if result:
                await pushes.finish(pool, push_id, result)
            if alert_id == abandoned:  # sent by a server that stopped before the answer
                await pool.execute(
                    "UPDATE terminal_pushes SET sent_at = now() - interval '6 minutes'"
                    " WHERE id = $1", push_id,
                )  # fmt: skip
        assert [u.alert_id for u in await pushes.unconfirmed_alarms(pool, CONFIRMABLE)] == [
            offline, abandoned,
        ]  # fmt: skip
    finally:
        await pool.close()


@aio_test
async def test_nmea_positions_reach_the_rules_once_durable(db_url: str, short_tmp: Path) -> None:
    """The NMEA path (no acks, no Vehicle session): a school bus at 70 km/h for 30 s off any
    expressway (limit 60) is one speeding episode, ended by 30 s at 40 km/h."""
    from geo.position import SOURCE_NMEA, Position
    from store.vehicles import add_vehicle, new_vehicle

    async with running_supervision(db_url, short_tmp, NO_PUSH) as (ingest, _):
        async with ingest.pool.acquire() as conn:
            added = await add_vehicle(
                conn, new_vehicle("沪N00301", "school_bus", "NMEA Co", "13900000301", 2)
            )
        vid = added["id"]
        submit = ingest.writer.submit  # the same durable feed as JT/T 808
        start = _now() - timedelta(minutes=5)
        track = [
            Position(
                vid, start + timedelta(seconds=i), _now(), 121.4 + i * 0.0002, 31.2,
                speed_kmh=70.0 if i < 30 else 40.0, source=SOURCE_NMEA,
            )
            for i in range(60)
        ]  # fmt: skip
        for i in range(0, 60, 5):  # an NMEA connection submits epoch by epoch
            # durable either way: committed, or spooled when a loaded machine misses the deadline
            assert await submit(track[i : i + 5]) in ("db", "spool")

        async def ended() -> list[Alert]:
            return [a for a in await _alerts(ingest.pool, SPEEDING) if a.end_time]

        (alert,) = await eventually(ended)
        assert alert.vehicle_id == vid
        assert alert.start_time == start
        assert alert.end_time == start + timedelta(seconds=30)
        assert alert.details["max_speed_kmh"] == 70.0
