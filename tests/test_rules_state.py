"""Rule state export/restore: an engine restored from a JSON snapshot goes on exactly like one
that never stopped, and replaying the track it had already judged changes nothing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from shapely.geometry import Point

from alerts.engine import RulesEngine
from alerts.model import (
    COACH,
    FATIGUE_CONTINUOUS,
    FATIGUE_WARNING,
    FORBIDDEN_ZONE,
    OFFLINE,
    SCHOOL_BUS,
    SPEEDING,
    TERMINAL_ALARM,
    WATCHLIST,
    AlertEvent,
)
from geo.fences import Geofence
from geo.geodesy import metres_per_degree
from geo.index import FenceIndex
from geo.position import Position
from tests.test_rules_hygiene import Track, bj, vehicle

KX, _ = metres_per_degree(30.0)
COACH_V = vehicle(1, COACH)
BUS_V = vehicle(2, SCHOOL_BUS)
TRUCK_V = vehicle(3)
VEHICLES = {v.id: v for v in (COACH_V, BUS_V, TRUCK_V)}


def index() -> FenceIndex:
    # on the coach's road about an hour (80 km) from its start
    zone = Geofence(7, "closed bridge", "forbidden", "circle", Point(120.0 + 80_000 / KX, 30.0),
                    radius_m=2000)  # fmt: skip
    return FenceIndex([zone])


def stream() -> list[Position]:
    """Three vehicles' fixes merged in fix-time order."""
    coach = Track(1, start=bj(6, 8), step=60)
    fixes = coach.drive(2 * 3600, 80)
    fixes += coach.stop(600, acc=True)  # a short stop with the engine on: no rest
    fixes += coach.drive(1800, 80)
    fixes += coach.drive(180, 80, alarm=1)  # SOS held for three fixes
    fixes += coach.drive(2 * 3600, 80)
    fixes += coach.stop(1800, acc=False)  # the rest that ends the fatigue episodes
    bus = Track(2, start=bj(6, 8), lat=30.5, step=10)
    fixes += bus.drive(600, 50) + bus.drive(300, 75) + bus.drive(600, 50) + bus.drive(300, 85)
    truck = Track(3, start=bj(6, 8, 30), lat=31.0, step=30)
    fixes += truck.drive(1800, 60)
    return sorted(fixes, key=lambda p: (p.fix_time, p.vehicle_id))


def engine() -> RulesEngine:
    e = RulesEngine(index())
    e.set_watchlist({TRUCK_V.plate or "": "stolen"})
    return e


def play(e: RulesEngine, fixes: list[Position], tick_from: datetime | None) -> list[AlertEvent]:
    """Feed in order; tick (wall clock = fix time) every 5 minutes from ``tick_from``."""
    out: list[AlertEvent] = []
    next_tick = tick_from
    for p in fixes:
        if next_tick is not None:
            while p.fix_time >= next_tick:
                out += e.tick(next_tick)
                next_tick += timedelta(minutes=5)
        out += e.feed(p, VEHICLES[p.vehicle_id])
    return out


def finish(e: RulesEngine, last: datetime) -> list[AlertEvent]:
    return e.tick(last + timedelta(minutes=30))


def key(e: AlertEvent) -> tuple:
    return (e.phase, e.type, e.vehicle_id, e.key, e.start, e.end, e.late, e.severity,
            json.dumps(e.details, sort_keys=True, default=str))  # fmt: skip


def tick_grid(fixes: list[Position], at: datetime) -> datetime:
    """The first 5-minute tick at or after ``at`` on the grid starting at the first fix."""
    t0 = fixes[0].fix_time
    n = -(-(at - t0) // timedelta(minutes=5))
    return t0 + n * timedelta(minutes=5)


def test_uninterrupted_run_has_the_episodes_the_test_relies_on() -> None:
    fixes = stream()
    events = play(engine(), fixes, fixes[0].fix_time) + finish(engine(), fixes[-1].fix_time)
    kinds = {(e.type, e.phase) for e in events}
    for kind in (FORBIDDEN_ZONE, SPEEDING, TERMINAL_ALARM):
        assert (kind, "open") in kinds and (kind, "close") in kinds, kind
    # the fatigue incident: warning, then the alarm stage, closed by the rest
    assert {(FATIGUE_WARNING, "open"), (FATIGUE_CONTINUOUS, "update")} <= kinds
    assert (FATIGUE_CONTINUOUS, "close") in kinds
    assert (WATCHLIST, "open") in kinds and (OFFLINE, "open") in kinds


#: Beijing times to cut at: inside the bus's first and second speeding, the coach's forbidden
#: zone passage, its short stop, its SOS, its fatigue warning, its 4 h alarm, its rest.
CUTS = ["08:05", "08:12", "08:27", "09:00", "10:05", "10:41", "11:40", "12:30", "13:05"]


@pytest.mark.parametrize("cut", CUTS)
def test_export_import_continue_gives_the_uninterrupted_events(cut: str) -> None:
    fixes = stream()
    start = fixes[0].fix_time
    a = engine()
    expected = play(a, fixes, start) + finish(a, fixes[-1].fix_time)

    hh, mm = map(int, cut.split(":"))
    k = next(i for i, p in enumerate(fixes) if p.fix_time >= bj(6, hh, mm))
    b = engine()
    before = play(b, fixes[:k], start)
    snapshot = json.loads(json.dumps({vid: b.export_state(vid) for vid in VEHICLES}))
    c = engine()
    for vid, state in snapshot.items():
        if state is not None:
            c.import_state(int(vid), state)
    # the restored worker first sees the whole track again (a replay from the store)
    assert play(c, fixes[:k], None) == []
    after = play(c, fixes[k:], tick_grid(fixes, fixes[k - 1].fix_time + timedelta(seconds=1)))
    after += finish(c, fixes[-1].fix_time)
    assert [key(e) for e in before + after] == [key(e) for e in expected]


def test_open_episode_continues_after_restore_and_is_not_reopened() -> None:
    """Cut inside the coach's fatigue warning: the restored engine takes the same incident
    (same key) to its alarm stage and closes it, and opens no second one."""
    fixes = stream()
    b = engine()
    events = play(b, fixes, None)
    warn = next(e for e in events if e.type == FATIGUE_WARNING and e.phase == "open")
    k = next(i for i, p in enumerate(fixes) if p.fix_time > warn.start + timedelta(minutes=5))
    b = engine()
    before = play(b, fixes[:k], None)
    c = engine()
    c.import_state(1, json.loads(json.dumps(b.export_state(1))))
    after = play(c, fixes, None)
    incident = [e for e in before + after if e.key == warn.key]
    assert [e.phase for e in incident] == ["open", "update", "update", "close"]
    assert [e.phase for e in before + after if e.type == FATIGUE_WARNING] == ["open"]
    assert all(e.key == warn.key for e in after if e.type in (FATIGUE_WARNING, FATIGUE_CONTINUOUS))


def test_dirty_lists_changed_vehicles_once() -> None:
    e = engine()
    fixes = stream()
    assert e.dirty() == set()
    play(e, fixes[:50], None)
    assert e.dirty() == {p.vehicle_id for p in fixes[:50]}
    assert e.dirty() == set()
    e.feed(fixes[49], VEHICLES[fixes[49].vehicle_id])  # a redelivery: judged already
    assert e.dirty() == set()
    e.driver(2, "D1", fixes[60].fix_time)
    assert e.dirty() == {2}


def test_state_of_another_version_is_refused() -> None:
    e = engine()
    with pytest.raises(ValueError, match="version"):
        e.import_state(1, {"version": 999})
