"""The engine as a whole: late detection, hygiene, one classify per usable fix, the Fix the
rules see, every rule wired, and a blind-area batch end to end."""

from __future__ import annotations

from datetime import timedelta

from shapely.geometry import Point

from alerts.engine import RulesEngine
from alerts.model import (
    FATIGUE_CONTINUOUS,
    FORBIDDEN_ZONE,
    HEAVY_TRUCK,
    SCHOOL_BUS,
    SPEEDING,
    TERMINAL_ALARM,
    Fix,
    VehicleInfo,
)
from geo.fences import Geofence
from geo.geodesy import metres_per_degree
from geo.index import FenceIndex
from tests.test_rules_hygiene import Track, bj, near, of, run, vehicle

KX, _ = metres_per_degree(30.0)


class CountingIndex(FenceIndex):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.calls = 0

    def classify(self, lon: float, lat: float) -> dict[int, int]:
        self.calls += 1
        return super().classify(lon, lat)


class Spy:
    """Stands in for the geofence rule to see the usable Fix values the engine builds."""

    name = "geofence"

    def __init__(self) -> None:
        self.fixes: list[Fix] = []

    def step(self, fix: Fix, out: list) -> None:
        if fix.usable:
            self.fixes.append(fix)

    def tick(self, now, out: list) -> None:
        pass

    def export(self, vehicle_id: int) -> None:
        return None

    def restore(self, vehicle_id: int, state) -> None:
        pass


def spy_on(engine: RulesEngine) -> Spy:
    """Put a Spy in the geofence rule's place in the engine's loop."""
    spy = Spy()
    engine.replace(spy)
    return spy


def test_the_fix_the_rules_see() -> None:
    """Good, invalid, (0, 0), jump and good again: classify runs for usable fixes only, the
    geofence rule gets only usable fixes, each with the previous usable fix."""
    index = CountingIndex()
    engine = RulesEngine(index)
    spy = spy_on(engine)
    v = vehicle(1)
    t = Track(step=5)
    a = t.drive(5, 50)[0]
    b = t.drive(5, 50, valid=False)[0]
    c = t.fix(50, at=(0.0, 0.0))
    t.skip(5, 50)
    d = t.fix(50, at=(t.lon + 10_000 / KX, t.lat))
    t.skip(5, 50)
    e = t.drive(5, 50)[0]
    run(engine, v, [a, b, c, d, e])
    assert index.calls == 2
    assert [f.position for f in spy.fixes] == [a, e]
    assert spy.fixes[0].previous is None and spy.fixes[1].previous is a
    assert all(f.usable and not f.late and f.vehicle is v for f in spy.fixes)


def test_late_detection() -> None:
    """A fix behind the newest is late; so is an in-order 0x0704 batch fix; others are not."""
    engine = RulesEngine(FenceIndex())
    spy = spy_on(engine)
    v = vehicle(1)
    t = Track(step=5)
    first = t.drive(10, 50)
    batch_in_order = t.drive(10, 50, batch=True)
    run(engine, v, first + batch_in_order + first[:1])
    assert [f.late for f in spy.fixes] == [False, False, True, True, True]


def test_driver_is_on_the_fix_and_the_events() -> None:
    engine = RulesEngine(FenceIndex())
    spy = spy_on(engine)
    engine.driver(1, "张三", bj(6, 8))
    v = vehicle(1)
    t = Track(step=5)
    events = run(engine, v, t.drive(10, 50, alarm=1))
    assert spy.fixes[-1].driver == "张三"
    assert of(events, TERMINAL_ALARM)[0].driver == "张三"
    engine.driver(1, None, bj(6, 8, 1))
    run(engine, v, t.drive(5, 50))
    assert spy.fixes[-1].driver is None


def test_vehicle_facts_changing() -> None:
    """The same vehicle reclassified from truck to school bus: the school-bus limit applies from
    then on; a per-vehicle override (vehicles.overrides) lowers it further."""
    engine = RulesEngine(FenceIndex())
    t = Track(step=5)
    assert run(engine, vehicle(1, HEAVY_TRUCK), t.drive(60, 70)) == []
    sp = of(run(engine, vehicle(1, SCHOOL_BUS), t.drive(60, 70)), SPEEDING, "open")
    assert len(sp) == 1 and sp[0].details["limit_kmh"] == 60
    run(engine, vehicle(1, SCHOOL_BUS), t.drive(60, 30))
    strict = vehicle(1, SCHOOL_BUS, overrides={"elsewhere_kmh": 25})
    sp = of(run(engine, strict, t.drive(60, 30)), SPEEDING, "open")
    assert len(sp) == 1 and sp[0].details["limit_kmh"] == 25


def test_geofence_rule_is_wired() -> None:
    """A forbidden circle (300 m) on the track: the geofence rule (part A) gets the fixes."""
    fence = Geofence(
        9, "depot", "forbidden", "circle", Point(120.0 + 1000 / KX, 30.0), radius_m=300
    )
    engine = RulesEngine(FenceIndex([fence]))
    events = run(engine, vehicle(1), Track(step=10).drive(300, 36))
    assert [e.phase for e in of(events, FORBIDDEN_ZONE)] == ["open", "close"]


def test_blind_area_batch_arrives_late() -> None:
    """A school bus at 50 km/h reports live 08:00-09:00, is in a blind area 09:00-09:30 and
    live again from 09:30 (driving). The 0x0704 batch for 09:00-09:30 arrives after that and
    holds 3 minutes at 75 km/h (09:10-09:13, limit 60). It is recorded as a late speeding
    episode (09:10 to 09:13, key speeding:late), and nothing in it is live. The live lane has
    no speeding at all."""
    engine = RulesEngine(FenceIndex())
    bus = vehicle(1, SCHOOL_BUS)
    t = Track(step=10, start=bj(6, 8))
    live = t.drive(3600, 50)
    t.skip(1800, 50)
    live += t.drive(600, 50)
    events = run(engine, bus, live)
    b = Track(step=10, start=bj(6, 9))
    batch = b.drive(600, 50, batch=True) + b.drive(180, 75, batch=True)
    batch += b.drive(1020, 50, batch=True)
    for p in batch:
        p.received_time = bj(6, 9, 40)
    late = run(engine, bus, batch)
    assert all(e.late for e in late)
    sp = of(late, SPEEDING)
    assert [(e.phase, e.key) for e in sp] == [("open", "speeding:late"), ("close", "speeding:late")]
    assert sp[0].start == bj(6, 9, 10) and sp[1].end == bj(6, 9, 13)
    assert sp[1].details["max_speed_kmh"] == 75
    assert of(events, SPEEDING) == []
    assert engine.tick(bj(6, 9, 41)) == []  # lane ended: nothing was left open


def test_a_day_of_driving_through_the_engine() -> None:
    """Everything at once on one truck: 4 h 30 of driving (alarm at 4 h), an SOS in the middle,
    then a rest; the events come in time order and the counts are exact."""
    engine = RulesEngine(FenceIndex())
    truck = VehicleInfo(id=3, plate="浙B00003", vehicle_class=HEAVY_TRUCK)
    t = Track(3, step=30, start=bj(6, 6))
    fixes = t.drive(2 * 3600, 70) + t.drive(60, 70, alarm=1) + t.drive(2 * 3600 + 1740, 70)
    fixes += t.stop(1800)
    events = run(engine, truck, fixes)
    assert [
        (e.type, e.phase) for e in events if e.type in (TERMINAL_ALARM, FATIGUE_CONTINUOUS)
    ] == [
        (TERMINAL_ALARM, "open"),
        (TERMINAL_ALARM, "close"),
        (FATIGUE_CONTINUOUS, "update"),  # the fatigue incident reaches its alarm stage
        (FATIGUE_CONTINUOUS, "close"),
    ]
    cont = of(events, FATIGUE_CONTINUOUS)
    assert near(cont[0].at, bj(6, 10), 30) and near(cont[1].end, bj(6, 10, 30), 30)
    assert len(events) == 6  # + the incident's warning open and escalation update
    assert near(events[-1].end, t.t - timedelta(seconds=1800), 30)
