"""Data hygiene and rule settings; also the synthetic-track helpers the other rule tests use.

A :class:`Track` is one vehicle moving along a heading: ``drive(seconds, speed)`` emits a fix
every ``step`` seconds starting at the track's clock and advances the clock by ``seconds``, so
consecutive calls join without a gap and the expected alert times can be read off the script.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from pyproj import Geod

from alerts.engine import RulesEngine
from alerts.hygiene import (
    INVALID,
    NO_FIX,
    OK,
    REANCHORED,
    REJECTED,
    ZERO,
    JumpFilter,
    bad_coordinates,
    hop_m,
)
from alerts.model import COACH, HEAVY_TRUCK, POLICE, SCHOOL_BUS, SPEEDING, VehicleInfo
from alerts.settings import RuleSettings
from geo.geodesy import metres_per_degree
from geo.index import FenceIndex
from geo.position import Position
from protocols.jt808 import BEIJING
from protocols.jt808.location import alarm_names


def bj(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A Beijing wall-clock time in May 2024 (6 May is a Monday), as UTC."""
    return datetime(2024, 5, day, hour, minute, second, tzinfo=BEIJING).astimezone(UTC)


class Track:
    """Synthetic fixes of one vehicle."""

    def __init__(
        self,
        vehicle_id: int = 1,
        start: datetime | None = None,
        lon: float = 120.0,
        lat: float = 30.0,
        heading: float = 90.0,
        step: float = 10.0,
    ) -> None:
        self.vehicle_id = vehicle_id
        self.t = start or bj(6, 8)
        self.lon, self.lat = lon, lat
        self.heading = heading
        self.step = step
        self.serial = 0

    def fix(
        self,
        speed: float,
        *,
        acc: bool = True,
        valid: bool = True,
        alarm: int = 0,
        batch: bool = False,
        at: tuple[float, float] | None = None,
        received: datetime | None = None,
    ) -> Position:
        self.serial += 1
        lon, lat = at if at is not None else (self.lon, self.lat)
        return Position(
            vehicle_id=self.vehicle_id,
            fix_time=self.t,
            received_time=received or self.t,
            lon=lon,
            lat=lat,
            speed_kmh=speed,
            ignition=acc,
            valid=valid,
            alarms=frozenset(alarm_names(alarm)),
            serial=self.serial,
            batch=batch,
        )

    def _advance(self, seconds: float, speed: float) -> None:
        kx, ky = metres_per_degree(self.lat)
        d = speed / 3.6 * seconds
        h = math.radians(self.heading)
        self.lon += d * math.sin(h) / kx
        self.lat += d * math.cos(h) / ky
        self.t += timedelta(seconds=seconds)

    def drive(
        self, seconds: float, speed: float, step: float | None = None, **kw
    ) -> list[Position]:
        step = step or self.step
        out = []
        for _ in range(round(seconds / step)):
            out.append(self.fix(speed, **kw))
            self._advance(step, speed)
        return out

    def stop(self, seconds: float, acc: bool = False, step: float | None = None, **kw):
        return self.drive(seconds, 0.0, step=step, acc=acc, **kw)

    def skip(self, seconds: float, speed: float = 0.0) -> None:
        """Move the clock (and the vehicle, at ``speed``) without reporting."""
        self._advance(seconds, speed)


def vehicle(vid: int = 1, klass: str = HEAVY_TRUCK, **kw) -> VehicleInfo:
    return VehicleInfo(id=vid, plate=f"浙A{vid:05d}", vehicle_class=klass, **kw)


def run(engine: RulesEngine, v: VehicleInfo, positions: list[Position]) -> list:
    out = []
    for p in positions:
        out += engine.feed(p, v)
    return out


def of(events: list, kind: str, phase: str | None = None) -> list:
    return [e for e in events if e.type == kind and (phase is None or e.phase == phase)]


def near(a: datetime | None, b: datetime, seconds: float = 10.0) -> bool:
    """Within one fix (``seconds``) of the expected time."""
    return a is not None and abs((a - b).total_seconds()) <= seconds


# ---------------------------------------------------------------------- hygiene


def test_bad_coordinates() -> None:
    t = Track()
    assert bad_coordinates(t.fix(50)) is None
    assert bad_coordinates(t.fix(50, valid=False)) == INVALID
    assert bad_coordinates(t.fix(50, at=(0.0, 0.0))) == ZERO
    assert bad_coordinates(t.fix(50, at=(200.0, 30.0))) == INVALID
    assert bad_coordinates(t.fix(50, at=(0.0, 30.0))) is None  # only both zero is "zero"


def test_hop_matches_the_geodesic() -> None:
    geod = Geod(ellps="WGS84")
    for lon, lat, az, d in [(120, 30, 45, 500), (87, 43, 170, 3000), (126, 45.5, 280, 15000)]:
        lon2, lat2, _ = geod.fwd(lon, lat, az, d)
        assert hop_m(lon, lat, lon2, lat2) == pytest.approx(d, rel=1e-3)


def test_jump_filter() -> None:
    t = Track(step=1)
    jf = JumpFilter()
    kx, _ = metres_per_degree(30.0)

    def at(dx_m: float, dt: float) -> tuple[Position, float]:
        p = t.fix(0, at=(120.0 + dx_m / kx, 30.0))
        return p, (p.fix_time - bj(6, 8)).total_seconds() + dt

    assert jf.check(*at(0, 0), 250, 50, 3) == OK
    # 100 m in 1 s is 360 km/h, but 50 m of it is GNSS scatter: 180 km/h, fine
    assert jf.check(*at(100, 1), 250, 50, 3) == OK
    # 2 km in 2 s: a jump; the anchor stays where it was
    assert jf.check(*at(2100, 3), 250, 50, 3) == REJECTED
    assert jf.anchor is not None and jf.anchor.lon == pytest.approx(120.0 + 100 / kx)
    # back on the track a second later: fine again
    assert jf.check(*at(130, 4), 250, 50, 3) == OK


def test_judge_is_the_whole_verdict() -> None:
    """The engine's one-call verdict: NO_FIX for bad coordinates, else the jump test (its cheaper
    distance agrees with :func:`hop_m` to 0.5%, so the 250 km/h line moves by ~1 km/h)."""
    t = Track(step=1)
    jf = JumpFilter()
    kx, _ = metres_per_degree(30.0)
    assert jf.judge(t.fix(0, valid=False), 0.0, 250, 50, 3) == NO_FIX
    assert jf.judge(t.fix(0, at=(0.0, 0.0)), 0.0, 250, 50, 3) == NO_FIX
    assert jf.anchor is None
    assert jf.judge(t.fix(0), 0.0, 250, 50, 3) == OK
    # 10 s later: 50 m of scatter + 250 km/h x 10 s = 744 m is the edge
    assert jf.judge(t.fix(0, at=(120.0 + 735 / kx, 30.0)), 10.0, 250, 50, 3) == OK
    assert jf.judge(t.fix(0, at=(120.0 + 735 / kx + 760 / kx, 30.0)), 20.0, 250, 50, 3) == REJECTED


def test_jump_filter_reanchors_after_agreeing_fixes() -> None:
    """The vehicle really is elsewhere (a ferry with the terminal off, a wrong first fix)."""
    t = Track(step=1)
    jf = JumpFilter()
    kx, _ = metres_per_degree(30.0)
    assert jf.check(t.fix(0), 0.0, 250, 50, 3) == OK
    far = [t.fix(0, at=(121.0 + i * 20 / kx, 30.0)) for i in range(3)]
    assert [jf.check(p, 10.0 + i, 250, 50, 3) for i, p in enumerate(far)] == [
        REJECTED,
        REJECTED,
        REANCHORED,
    ]
    assert jf.anchor is far[2]


def test_bad_fixes_never_feed_speeding() -> None:
    """A school bus at 50 km/h (limit 60) with three fixes at 90 km/h spanning 10 s: invalid,
    at (0, 0), or jumped 50 km away. None of them may start a speeding episode; the same
    three fixes as good fixes do."""
    settings = RuleSettings(jump_reanchor=5)
    bus = vehicle(1, SCHOOL_BUS)
    kx, _ = metres_per_degree(30.0)

    def scenario(kind: str) -> list:
        engine = RulesEngine(FenceIndex(), settings)
        t = Track(step=5)
        events = run(engine, bus, t.drive(60, 50))
        if kind == "invalid":
            bad = t.drive(15, 90, valid=False)
        elif kind == "zero":
            bad = [t.fix(90, at=(0.0, 0.0)) for _ in range(3)]
            for i, p in enumerate(bad):
                p.fix_time += timedelta(seconds=5 * i)
            t.skip(15, 50)
        elif kind == "jump":
            bad = []
            for _ in range(3):
                bad.append(t.fix(90, at=(t.lon + 50_000 / kx, t.lat)))
                t.skip(5, 50)
        else:
            bad = t.drive(15, 90)
        events += run(engine, bus, bad)
        events += run(engine, bus, t.drive(60, 50))
        return events

    for kind in ("invalid", "zero", "jump"):
        assert of(scenario(kind), SPEEDING) == [], kind
    good = scenario("good")
    assert [e.phase for e in of(good, SPEEDING)] == ["open", "close"]


# ---------------------------------------------------------------------- settings


def test_class_defaults_follow_the_regulations() -> None:
    s = RuleSettings()
    bus = s.profile(vehicle(1, SCHOOL_BUS))
    assert (bus.expressway_kmh, bus.elsewhere_kmh) == (80, 60)
    coach = s.profile(vehicle(1, COACH))
    assert (coach.expressway_kmh, coach.elsewhere_kmh, coach.night_factor) == (100, None, 0.8)
    assert coach.night_continuous_s == 2 * 3600
    truck = s.profile(vehicle(1, HEAVY_TRUCK))
    assert (truck.expressway_kmh, truck.elsewhere_kmh, truck.night_continuous_s) == (
        100,
        None,
        None,
    )
    assert s.profile(vehicle(1, POLICE)).speed_exempt
    assert (truck.continuous_s, truck.daily_s, truck.rest_s) == (4 * 3600, 8 * 3600, 20 * 60)
    assert (truck.prewarn_s, truck.escalation_s) == (3.5 * 3600, 15 * 60)
    assert (s.offline_s, s.no_fix_s, s.jump_kmh) == (600, 600, 250)


def test_settings_from_dict_and_vehicle_overrides() -> None:
    s = RuleSettings.from_dict(
        {
            "offline_s": 900,
            "all": {"min_over_s": 20},
            "classes": {"police": {"speed_exempt": False}, "coach": {"expressway_kmh": 90}},
        }
    )
    assert s.offline_s == 900
    assert s.profile(vehicle(1, SCHOOL_BUS)).min_over_s == 20
    assert not s.profile(vehicle(1, POLICE)).speed_exempt
    assert s.profile(vehicle(1, COACH)).expressway_kmh == 90
    own = vehicle(2, SCHOOL_BUS, overrides={"elsewhere_kmh": 40, "enforcement": {"x": 1}})
    assert s.profile(own).elsewhere_kmh == 40  # unknown keys (other parts' settings) skipped
    assert (
        s.profile(vehicle(3, HEAVY_TRUCK, overrides={"elsewhere_kmh": "fast"})).elsewhere_kmh
        is None
    )
    with pytest.raises(ValueError, match="unknown rule setting"):
        RuleSettings.from_dict({"classes": {"coach": {"expresway_kmh": 90}}})
    with pytest.raises(ValueError, match="must be a number"):
        RuleSettings.from_dict({"offline_s": "ten"})
