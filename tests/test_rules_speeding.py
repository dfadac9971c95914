"""Speeding scenarios, worked out by hand from the class profiles (alerts/settings.py).

Tracks run east along latitude 30° from 120.0°E; the expressway is a corridor fence along that
line (60 m wide, posted 120 km/h, margin 20 m).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from shapely.geometry import LineString, Polygon

from alerts.engine import RulesEngine
from alerts.model import (
    COACH,
    CRITICAL,
    HEAVY_TRUCK,
    HIGH,
    LOW,
    MEDIUM,
    POLICE,
    SCHOOL_BUS,
    SPEEDING,
    SPEEDING_WARNING,
)
from alerts.settings import RuleSettings
from alerts.speeding import level_of
from geo.fences import Geofence
from geo.geodesy import metres_per_degree
from geo.index import FenceIndex
from tests.test_rules_hygiene import Track, bj, near, of, run, vehicle

EXPRESSWAY = Geofence(
    1,
    "G60",
    "speed_limit",
    "corridor",
    LineString([(119.9, 30.0), (120.6, 30.0)]),
    width_m=60.0,
    speed_limit_kmh=120.0,
)
_KX, _KY = metres_per_degree(30.0)
SCHOOL_ZONE = Geofence(
    2,
    "school",
    "zone",
    "polygon",
    Polygon(
        [(120.02, 29.999), (120.03, 29.999), (120.03, 30.001), (120.02, 30.001), (120.02, 29.999)]
    ),
    speed_limit_kmh=30.0,
)


def test_levels() -> None:
    assert [level_of(x) for x in (0.1, 9.99, 10.0, 19.9, 20.0, 49.9, 50.0, 120.0)] == [
        1, 1, 2, 2, 3, 3, 4, 4,
    ]  # fmt: skip


def test_school_bus_65_70_off_the_expressway() -> None:
    """Limit 60. 30 s at 50, 2 min alternating 65/70, 1 min at 50 (a fix every 5 s).
    One episode: start at the first fix above (+30 s), opened 10 s later; end at the first
    fix back under (+150 s), closed 10 s later. Max 70: 16.7% over, level 2. No pre-warning:
    the speed jumped straight past the band, and speeding took over."""
    engine = RulesEngine(FenceIndex())
    bus = vehicle(1, SCHOOL_BUS)
    t = Track(step=5)
    t0 = t.t
    fixes = t.drive(30, 50)
    for i in range(24):
        fixes += t.drive(5, 65 if i % 2 == 0 else 70)
    fixes += t.drive(60, 50)
    events = run(engine, bus, fixes)
    assert of(events, SPEEDING_WARNING) == []
    sp = of(events, SPEEDING)
    assert [e.phase for e in sp] == ["open", "close"]
    opened, closed = sp
    assert opened.start == t0 + timedelta(seconds=30)
    # opened at +40 s, after 65, 70, 65: the run's worst (70) already makes it level 2
    assert opened.details["level"] == 2 and opened.severity == MEDIUM
    assert closed.start == opened.start and closed.key == opened.key == "speeding"
    assert closed.end == t0 + timedelta(seconds=150)
    d = closed.details
    assert d["max_speed_kmh"] == 70 and d["limit_kmh"] == 60
    assert d["over_pct"] == pytest.approx(16.7) and d["level"] == 2
    assert d["duration_s"] == 120 and not d["expressway"]
    assert not any(e.late for e in events)


def test_school_bus_75_on_the_expressway() -> None:
    """Inside the expressway corridor the bus may do 80 (its class limit; the road's 120 is
    higher): 75 is no speeding. It is within the default 5 km/h pre-warning margin, so one
    warning opens after 10 s near the limit and closes once below the band for 10 s."""
    engine = RulesEngine(FenceIndex([EXPRESSWAY]))
    bus = vehicle(1, SCHOOL_BUS)
    t = Track(step=5)
    t0 = t.t
    events = run(engine, bus, t.drive(300, 75) + t.drive(30, 60))
    assert of(events, SPEEDING) == []
    warn = of(events, SPEEDING_WARNING)
    assert [e.phase for e in warn] == ["open", "close"]
    assert warn[0].start == t0 and warn[0].details["limit_kmh"] == 80
    assert warn[1].end == t0 + timedelta(seconds=300)
    # with no pre-warning margin: nothing at all
    quiet = RulesEngine(
        FenceIndex([EXPRESSWAY]), RuleSettings.from_dict({"all": {"prewarn_margin_kmh": 0}})
    )
    assert run(quiet, bus, Track(step=5).drive(300, 75)) == []
    # the same 75 km/h off the expressway (a parallel road 1 km north) is speeding
    off = RulesEngine(FenceIndex([EXPRESSWAY]))
    sp = of(run(off, bus, Track(step=5, lat=30.01).drive(300, 75)), SPEEDING, "open")
    assert len(sp) == 1 and sp[0].details["limit_kmh"] == 60


def test_posted_zone_limit_is_lower_than_the_class() -> None:
    """A truck (no class limit off expressways) through a 30 km/h school zone at 45 km/h: the
    zone is 0.01° (~964 m) long. Coming from outside, the zone counts from 20 m inside its
    edge (its margin); once in, until 20 m beyond the far edge. Level 4 (50% over)."""
    engine = RulesEngine(FenceIndex([SCHOOL_ZONE]))
    truck = vehicle(1, HEAVY_TRUCK)
    t = Track(step=2, lon=120.015)
    events = run(engine, truck, t.drive(200, 45))
    sp = of(events, SPEEDING)
    assert [e.phase for e in sp] == ["open", "close"]
    enter = (0.005 * _KX + 20) / 12.5  # seconds from the start at 12.5 m/s
    leave = (0.015 * _KX + 20) / 12.5
    assert near(sp[0].start, bj(6, 8) + timedelta(seconds=enter), 2)
    assert near(sp[1].end, bj(6, 8) + timedelta(seconds=leave), 2)
    assert sp[1].details["level"] == 4 and sp[1].severity == CRITICAL
    assert sp[1].details["limit_kmh"] == 30


def test_boundary_band_keeps_membership_and_doubt_goes_to_the_driver() -> None:
    """The corridor is 30 m each side of its line, band ±20 m: 40 m off the line is in the band.
    A bus first seen there gets the higher (expressway) limit; one coming from inside keeps it;
    one coming from well outside keeps "elsewhere" (60) while in the band."""
    bus = vehicle(1, SCHOOL_BUS)
    band_lat = 30.0 + 40 / _KY
    engine = RulesEngine(FenceIndex([EXPRESSWAY]))
    assert engine.index.classify(120.0, band_lat) == {1: 0}
    assert of(run(engine, bus, Track(step=5, lat=band_lat).drive(120, 72)), SPEEDING) == []

    engine = RulesEngine(FenceIndex([EXPRESSWAY]))
    t = Track(step=5)
    events = run(engine, bus, t.drive(30, 72))
    t.lat = band_lat
    events += run(engine, bus, t.drive(120, 72))
    assert of(events, SPEEDING) == []

    engine = RulesEngine(FenceIndex([EXPRESSWAY]))
    t = Track(step=5, lat=30.0 + 200 / _KY)
    events = run(engine, bus, t.drive(30, 50))
    t.lat = band_lat
    events += run(engine, bus, t.drive(120, 72))
    sp = of(events, SPEEDING, "open")
    assert len(sp) == 1 and sp[0].details["limit_kmh"] == 60


def test_coach_at_night_is_held_to_80_percent() -> None:
    """Coach on the expressway: 100 by day (its cap below the posted 120), 80 at night."""
    coach = vehicle(1, COACH)
    day = RulesEngine(FenceIndex([EXPRESSWAY]))
    assert of(run(day, coach, Track(step=5, start=bj(6, 14)).drive(120, 90)), SPEEDING) == []
    night = RulesEngine(FenceIndex([EXPRESSWAY]))
    events = run(night, coach, Track(step=5, start=bj(6, 23)).drive(120, 90))
    sp = of(events, SPEEDING, "open")
    assert len(sp) == 1
    assert sp[0].details["limit_kmh"] == 80 and sp[0].details["night"]
    assert sp[0].details["over_pct"] == pytest.approx(12.5) and sp[0].severity == MEDIUM


def test_police_exempt_unless_configured() -> None:
    car = vehicle(1, POLICE)
    fast = Track(step=5).drive(120, 160)
    assert run(RulesEngine(FenceIndex([EXPRESSWAY])), car, fast) == []
    settings = RuleSettings.from_dict({"classes": {"police": {"speed_exempt": False}}})
    sp = of(run(RulesEngine(FenceIndex([EXPRESSWAY]), settings), car, fast), SPEEDING, "open")
    assert len(sp) == 1 and sp[0].details["limit_kmh"] == 120 and sp[0].severity == HIGH


def test_minimum_duration_and_short_dips() -> None:
    """Over for 5 s only: nothing. Over, a 5 s dip under, over again: one episode."""
    bus = vehicle(1, SCHOOL_BUS)
    t = Track(step=5)
    blip = t.drive(30, 50) + t.drive(5, 70) + t.drive(30, 50)
    assert of(run(RulesEngine(FenceIndex()), bus, blip), SPEEDING) == []
    t = Track(step=5)
    t0 = t.t
    dip = t.drive(30, 50) + t.drive(30, 70) + t.drive(5, 50) + t.drive(30, 70) + t.drive(30, 50)
    sp = of(run(RulesEngine(FenceIndex()), bus, dip), SPEEDING)
    assert [e.phase for e in sp] == ["open", "close"]
    assert sp[1].start == t0 + timedelta(seconds=30)
    assert sp[1].end == t0 + timedelta(seconds=95)


def test_pre_warning_once_per_approach() -> None:
    """57 km/h (limit 60, band from 55) for a minute: one warning. It turns into speeding when
    the bus goes to 66 (the warning ends where speeding starts), and no second warning comes
    while it hovers at 57 again afterwards."""
    bus = vehicle(1, SCHOOL_BUS)
    t = Track(step=5)
    t0 = t.t
    fixes = t.drive(60, 57) + t.drive(60, 66) + t.drive(60, 57) + t.drive(60, 40)
    events = run(RulesEngine(FenceIndex()), bus, fixes)
    warn = of(events, SPEEDING_WARNING)
    sp = of(events, SPEEDING)
    assert [e.phase for e in warn] == ["open", "close"]
    assert warn[0].start == t0 and warn[1].end == t0 + timedelta(seconds=60)
    assert [e.phase for e in sp] == ["open", "close"]
    assert sp[0].start == t0 + timedelta(seconds=60) and sp[1].end == t0 + timedelta(seconds=120)


def test_silence_ends_an_episode_at_the_last_fix() -> None:
    bus = vehicle(1, SCHOOL_BUS)
    t = Track(step=5)
    fixes = t.drive(60, 75)
    last = fixes[-1].fix_time
    t.skip(600)
    fixes += t.drive(60, 75)
    sp = of(run(RulesEngine(FenceIndex()), bus, fixes), SPEEDING)
    assert [e.phase for e in sp] == ["open", "close", "open"]
    assert sp[1].end == last


def test_level_rises_during_an_episode() -> None:
    """30 s at 64 (6.7% over: level 1), then 30 s at 75 (25%: level 3): the open says level 1
    (LOW), an update says level 3 (HIGH), the close keeps it."""
    bus = vehicle(1, SCHOOL_BUS)
    t = Track(step=5)
    fixes = t.drive(30, 50) + t.drive(30, 64) + t.drive(30, 75) + t.drive(30, 50)
    sp = of(run(RulesEngine(FenceIndex()), bus, fixes), SPEEDING)
    assert [(e.phase, e.details["level"], e.severity) for e in sp] == [
        ("open", 1, LOW),
        ("update", 3, HIGH),
        ("close", 3, HIGH),
    ]
    assert sp[1].start == sp[0].start == sp[2].start
    assert sp[2].details["duration_s"] == 60 and sp[2].details["max_speed_kmh"] == 75
