"""The regulations added with the rules' rework: a coach's 44 h in any 7 days, and school-bus
hazard zones (20 km/h at school gates, villages, level crossings) as a geofence kind."""

from __future__ import annotations

import json

from shapely.geometry import Point

from alerts.engine import RulesEngine
from alerts.model import (
    COACH,
    FATIGUE_CONTINUOUS,
    FATIGUE_DAILY,
    FATIGUE_WARNING,
    FATIGUE_WEEKLY,
    HEAVY_TRUCK,
    SCHOOL_BUS,
    SPEEDING,
)
from geo.fences import HAZARD, Geofence
from geo.geodesy import metres_per_degree
from geo.geojson_io import dumps, parse_fences
from geo.index import FenceIndex
from geo.position import Position
from tests.test_rules_hygiene import Track, bj, near, of, run, vehicle

H, MIN = 3600, 60
KX, _ = metres_per_degree(30.0)


def week(vid: int) -> list[Position]:
    """Seven days from Monday 6 May: each day 08:00-11:15 and 11:45-15:00 driving (6.5 h),
    parked with the engine off in between and overnight (a fix a minute while driving)."""
    fixes: list[Position] = []
    for day in range(6, 13):
        t = Track(vid, start=bj(day, 8), step=60)
        fixes += t.drive(3 * H + 15 * MIN, 60) + t.stop(30 * MIN, acc=False)
        fixes += t.drive(3 * H + 15 * MIN, 60) + t.stop(40 * MIN, acc=False)
    return fixes


def test_coach_44_hours_in_7_days() -> None:
    """39 h in the first six days; on the seventh, 44 h is passed at 13:30 (after 5 h of its
    driving): one FATIGUE_WEEKLY from 13:30, closed by the rest from 15:00. Never over 8 h a
    day or 3.5 h at a stretch, so nothing else; a truck on the same schedule has no weekly
    limit."""
    events = run(RulesEngine(FenceIndex()), vehicle(1, COACH), week(1))
    weekly = of(events, FATIGUE_WEEKLY)
    assert [e.phase for e in weekly] == ["open", "close"]
    assert near(weekly[0].start, bj(12, 13, 30), 60)
    assert near(weekly[1].end, bj(12, 15), 60)
    assert weekly[0].details["limit_s"] == 44 * H
    assert weekly[1].details["driving_s"] == 45.5 * H
    others = (FATIGUE_WARNING, FATIGUE_CONTINUOUS, FATIGUE_DAILY)
    assert [e for e in events if e.type in others] == []
    assert (
        of(run(RulesEngine(FenceIndex()), vehicle(2, HEAVY_TRUCK), week(2)), FATIGUE_WEEKLY) == []
    )


def test_weekly_driving_survives_export_and_import() -> None:
    """Cut on day 5: the restored engine still knows the week's driving."""
    fixes = week(1)
    coach = vehicle(1, COACH)
    k = next(i for i, p in enumerate(fixes) if p.fix_time >= bj(10, 12))
    first = RulesEngine(FenceIndex())
    run(first, coach, fixes[:k])
    second = RulesEngine(FenceIndex())
    second.import_state(1, json.loads(json.dumps(first.export_state(1))))
    weekly = of(run(second, coach, fixes[k:]), FATIGUE_WEEKLY)
    assert [e.phase for e in weekly] == ["open", "close"]
    assert near(weekly[0].start, bj(12, 13, 30), 60)


# ---------------------------------------------------------------------- hazard zones


def school_gate() -> Geofence:
    """150 m around a school gate 1 km east of the tracks' start."""
    return Geofence(5, "实验小学门口", HAZARD, "circle", Point(120.0 + 1000 / KX, 30.0),
                    radius_m=150.0, properties={"hazard": "school_gate"})  # fmt: skip


def through_gate(klass: str, speed: float) -> list:
    engine = RulesEngine(FenceIndex([school_gate()]))
    t = Track(step=5)
    return run(engine, vehicle(1, klass), t.drive(180, speed))


def test_school_bus_20_kmh_in_a_hazard_zone() -> None:
    """A school bus at 30 km/h past the school gate (36 s inside): speeding against a 20 km/h
    limit, 50% over (level 4); at 18 km/h nothing. A truck at 30 is not concerned (a hazard
    zone without a posted limit binds school buses only), and records no entry or exit."""
    sp = of(through_gate(SCHOOL_BUS, 30.0), SPEEDING)
    assert [e.phase for e in sp] == ["open", "close"]
    assert sp[0].details["limit_kmh"] == 20.0 and sp[0].details["level"] == 4
    assert through_gate(SCHOOL_BUS, 18.0) == []
    assert through_gate(HEAVY_TRUCK, 30.0) == []


def test_hazard_zone_with_a_posted_limit_binds_everyone() -> None:
    gate = school_gate()
    gate.speed_limit_kmh = 25.0
    engine = RulesEngine(FenceIndex([gate]))
    t = Track(step=5)
    sp = of(run(engine, vehicle(1, HEAVY_TRUCK), t.drive(180, 30.0)), SPEEDING)
    assert sp and sp[0].details["limit_kmh"] == 25.0


def test_hazard_zone_geojson_round_trip() -> None:
    text = json.dumps(
        {
            "type": "FeatureCollection",
            "features": [
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [120.01, 30.0]},
                    "properties": {"name": "平交道口", "kind": "hazard", "radius": 80,
                                   "hazard": "level_crossing",
                                   "applies_to": {"classes": ["school_bus"]}},
                }
            ],
        }
    )  # fmt: skip
    (fence,) = parse_fences(text)
    assert fence.kind == HAZARD and fence.speed_limit_kmh is None
    back = json.loads(dumps([fence]))["features"][0]["properties"]
    assert back["kind"] == "hazard" and back["hazard"] == "level_crossing"
    assert back["applies_to"] == {"classes": ["school_bus"]}
