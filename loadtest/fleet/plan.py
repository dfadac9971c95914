"""What each simulated vehicle does and when: the fleet, day plans by class, the scripted
violations and the alarms they must cause, and the time-lapse clock.

Everything is decided before it is driven and from a seed, so the expected alarms are known at
start: a plan is a timeline of segments (parked with the ignition off, idling, or driving at a
constant speed along a route), queried with :meth:`Timeline.state` at each report's fix time.

Regular vehicles keep within every rule: school buses and hazmat trucks stay under 50 km/h
(their limit is 60, the pre-warning 55) and crawl at 12 km/h through the school zone (20);
hazmat trucks route around the forbidden zone; every leg is under 1 h 45 of driving and is
followed by at least 30 minutes parked (a rest is 20), and no class drives 8 h a day. Scripted
vehicles do nothing but park, except for their violation (``ROLES``).

Times are epoch seconds (UTC); day and night are Beijing time (night: 22:00-06:00).
"""

from __future__ import annotations

import math
import random
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from loadtest.fleet.city import (
    EXPRESSWAY,
    FORBIDDEN_CENTRE,
    FORBIDDEN_RADIUS_M,
    OUTER,
    SCHOOL_RADIUS_M,
    URBAN,
    RoadNetwork,
    Route,
    place_xy,
)

BEIJING = timezone(timedelta(hours=8), "Beijing")
HOUR = 3600.0
MINUTE = 60.0

POLICE, SCHOOL_BUS, COACH, HEAVY_TRUCK, HAZMAT = (
    "police",
    "school_bus",
    "coach",
    "heavy_truck",
    "hazmat",
)

#: class → (company, plate prefix, plate colour (JT/T 697.7), share of the fleet)
CLASSES: dict[str, tuple[str, str, int, float]] = {
    POLICE: ("星城警务保障中心", "湘A", 4, 0.15),
    SCHOOL_BUS: ("星城校车服务公司", "湘AX", 2, 0.20),
    COACH: ("湘运客运公司", "湘AK", 2, 0.25),
    HEAVY_TRUCK: ("湘江物流公司", "湘AH", 2, 0.25),
    HAZMAT: ("湘中危险品运输公司", "湘AW", 2, 0.15),
}
#: Demo logins: (user, role, company or None).
USERS: tuple[tuple[str, str, str | None], ...] = (
    ("admin", "admin", None),
    ("supervisor", "supervisor", None),
    ("dispatch_police", "dispatcher", CLASSES[POLICE][0]),
    ("dispatch_school", "dispatcher", CLASSES[SCHOOL_BUS][0]),
    ("dispatch_coach", "dispatcher", CLASSES[COACH][0]),
    ("dispatch_freight", "dispatcher", CLASSES[HEAVY_TRUCK][0]),
    ("dispatch_hazmat", "dispatcher", CLASSES[HAZMAT][0]),
)

#: Scripted vehicles: the first vehicles of their class, one violation each.
ROLES: tuple[tuple[str, str], ...] = (
    (SCHOOL_BUS, "speeding"),
    (COACH, "fatigue_day"),
    (COACH, "fatigue_night"),
    (HAZMAT, "forbidden"),
    (POLICE, "sos"),
    (HEAVY_TRUCK, "silent"),
    (HEAVY_TRUCK, "tunnel"),
)

#: (street low, street high, expressway low, expressway high) km/h.
SPEEDS: dict[str, tuple[float, float, float, float]] = {
    POLICE: (30, 55, 80, 110),
    SCHOOL_BUS: (25, 48, 40, 50),
    COACH: (30, 50, 75, 95),
    HEAVY_TRUCK: (25, 45, 60, 80),
    HAZMAT: (25, 45, 40, 50),
}
#: Departures, hours of the Beijing day (each jittered by up to ±40 min per vehicle and day).
DEPARTURES: dict[str, tuple[float, ...]] = {
    POLICE: (7.5, 10.5, 14.0, 17.0, 21.5),
    SCHOOL_BUS: (6.7, 16.5),
    COACH: (7.5, 11.0, 14.5, 18.0),
    HEAVY_TRUCK: (5.0, 9.0, 13.0, 17.0, 22.5),
    HAZMAT: (8.0, 11.5, 15.0),
}
HAZMAT_RUNS = (("changshaxian", "liuyang"), ("wangcheng", "ningxiang"), ("yuhua", "changshaxian"))
SCHOOL_CRAWL_KMH, SCHOOL_CRAWL_M = 12.0, SCHOOL_RADIUS_M + 200.0
SPEEDING_KMH = 72.0  # the scripted school bus, limit 60
MIN_PARK_S = 30 * MINUTE


def is_night(t: float) -> bool:
    hour = datetime.fromtimestamp(t, BEIJING).hour
    return hour >= 22 or hour < 6


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


class TimeLapse:
    """The simulated clock: from ``start`` (in the past) it runs ``speed`` times faster than the
    wall clock until it catches up with it, then it is the wall clock. So fix times never run
    ahead of the wall clock (the server flags those), and a day can be played in minutes."""

    def __init__(self, start: float, speed: float, wall0: float | None = None) -> None:
        self.wall0 = time.time() if wall0 is None else wall0
        self.speed = max(float(speed), 1.0)
        if self.speed == 1.0 or start >= self.wall0:
            start = self.wall0
        self.start = start
        #: The wall (= simulated) time at which the time-lapse ends.
        self.catch_up = (
            self.wall0 + (self.wall0 - start) / (self.speed - 1) if start < self.wall0 else start
        )

    def sim(self, wall: float) -> float:
        return wall if wall >= self.catch_up else self.start + self.speed * (wall - self.wall0)

    def wall(self, sim: float) -> float:
        return sim if sim >= self.catch_up else self.wall0 + (sim - self.start) / self.speed

    def now(self) -> float:
        return self.sim(time.time())


# ---------------------------------------------------------------------------- the fleet


@dataclass(frozen=True, slots=True)
class VehicleSpec:
    index: int
    plate: str
    plate_color: int
    vehicle_class: str
    company: str
    phone: str
    version: int  # 2013 or 2019
    home: str
    role: str | None = None


def build_fleet(count: int, seed: int = 1) -> list[VehicleSpec]:
    """``count`` vehicles: the scripted ones first (when ``count`` allows), then the classes in
    their shares; a third of the terminals speak the 2019 protocol."""
    rng = random.Random(seed)
    classes = [cls for cls, _ in ROLES][:count]
    roles: list[str | None] = [role for _, role in ROLES[:count]]
    shares = {cls: info[3] for cls, info in CLASSES.items()}
    while len(classes) < count:  # the class furthest below its share next
        cls = max(shares, key=lambda c: shares[c] * (len(classes) + 1) - classes.count(c))
        classes.append(cls)
        roles.append(None)
    fleet, numbers = [], dict.fromkeys(CLASSES, 0)
    for index, (cls, role) in enumerate(zip(classes, roles, strict=True)):
        company, prefix, color, _ = CLASSES[cls]
        numbers[cls] += 1
        n = numbers[cls]
        plate = f"{prefix}{n:04d}警" if cls == POLICE else f"{prefix}{n:04d}"
        fleet.append(
            VehicleSpec(
                index=index,
                plate=plate,
                plate_color=color,
                vehicle_class=cls,
                company=company,
                phone=f"1390731{index:04d}",
                version=2019 if index % 3 == 1 else 2013,
                home=_home(cls, role, rng),
                role=role,
            )
        )
    return fleet


def _home(cls: str, role: str | None, rng: random.Random) -> str:
    if cls == HAZMAT:
        return "tianxin" if role == "forbidden" else rng.choice(HAZMAT_RUNS)[0]
    if cls == SCHOOL_BUS:
        return rng.choice(("furong", "yuelu", "kaifu", "yuhua"))
    if cls == HEAVY_TRUCK:
        return "yuhua" if role else rng.choice(("yuhua", "changshaxian", "wangcheng"))
    if cls == COACH:
        return "furong" if role else rng.choice(("furong", "yuhua"))
    return rng.choice(URBAN)


# ---------------------------------------------------------------------------- timelines


@dataclass(slots=True)
class Segment:
    """From ``t0`` to ``t1`` the vehicle goes from ``d0`` to ``d1`` along ``route`` (equal:
    standing still), with the ignition on (``acc``) or off."""

    t0: float
    t1: float
    route: Route
    d0: float
    d1: float
    acc: bool

    @property
    def speed_kmh(self) -> float:
        return (self.d1 - self.d0) / (self.t1 - self.t0) * 3.6 if self.t1 > self.t0 else 0.0


@dataclass(frozen=True, slots=True)
class State:
    lon: float
    lat: float
    speed_kmh: float
    heading: int
    acc: bool


def _stay(place: str) -> Route:
    xy = place_xy(place)
    return Route([xy, xy], [0.0, 0.0], [(0.0, 0.0, "street")], (place,))


class Timeline:
    """One vehicle's segments, appended in time order; queried at increasing times."""

    def __init__(self, place: str, t: float) -> None:
        self.segments: list[Segment] = []
        self.starts: list[float] = []
        self.t = t  # where the timeline ends so far
        self.route = _stay(place)
        self.d = 0.0
        self.place = place

    def _add(self, t1: float, d1: float, acc: bool) -> None:
        if t1 <= self.t:
            return
        self.segments.append(Segment(self.t, t1, self.route, self.d, d1, acc))
        self.starts.append(self.t)
        self.t, self.d = t1, d1

    def park(self, until: float) -> None:
        self._add(until, self.d, False)

    def idle(self, seconds: float) -> None:
        self._add(self.t + seconds, self.d, True)

    def drive(
        self,
        route: Route,
        speeds: tuple[float, float, float, float],
        rng: random.Random,
        burst: tuple[float, float, float] | None = None,
    ) -> None:
        """Drive ``route`` in pieces of random speed for their road kind, with short stops at
        lights on streets; crawl near the school; ``burst`` = (from m, to m, km/h)."""
        self.route, self.d = route, 0.0
        self.idle(60.0)  # starting up
        cuts = {0.0, route.length}
        for start, end, _ in route.kinds:
            cuts.update((start, end))
        if route.nodes[0] == "school":
            cuts.add(min(SCHOOL_CRAWL_M, route.length))
        if route.nodes[-1] == "school":
            cuts.add(max(route.length - SCHOOL_CRAWL_M, 0.0))
        if burst is not None:
            cuts.update((burst[0], burst[1]))
        marks = sorted(c for c in cuts if 0 <= c <= route.length)
        d = 0.0
        for stop in marks[1:]:
            while d < stop - 1e-6:
                kind = route.kind_at(d)
                piece = rng.uniform(3000, 8000) if kind == EXPRESSWAY else rng.uniform(800, 2000)
                end = min(d + piece, stop)
                lo, hi = (speeds[2], speeds[3]) if kind == EXPRESSWAY else (speeds[0], speeds[1])
                kmh = rng.uniform(lo, hi)
                if (route.nodes[0] == "school" and end <= SCHOOL_CRAWL_M + 1e-6) or (
                    route.nodes[-1] == "school" and d >= route.length - SCHOOL_CRAWL_M - 1e-6
                ):
                    kmh = SCHOOL_CRAWL_KMH
                if burst is not None and burst[0] - 1e-6 <= d and end <= burst[1] + 1e-6:
                    kmh = burst[2]
                self._add(self.t + (end - d) / (kmh / 3.6), end, True)
                d = end
                if kind != EXPRESSWAY and end < route.length and rng.random() < 0.35:
                    self.idle(rng.uniform(20, 60))  # traffic lights
        self.idle(60.0)  # pulling in
        self.place = route.nodes[-1]

    def driving_s(self, since: float = 0.0) -> float:
        return sum(s.t1 - max(s.t0, since) for s in self.segments if s.d1 > s.d0 and s.t1 > since)

    def at_time(self, d: float, after: float = 0.0) -> float:
        """When the current route's distance ``d`` is reached (after ``after``)."""
        for s in self.segments:
            if s.route is self.route and s.t1 > after and s.d0 <= d <= s.d1 and s.d1 > s.d0:
                return s.t0 + (d - s.d0) / (s.d1 - s.d0) * (s.t1 - s.t0)
        raise ValueError(f"distance {d} not on the current route")

    def segment(self, t: float) -> Segment:
        i = max(bisect_right(self.starts, t) - 1, 0)
        return self.segments[i]

    def state(self, t: float) -> State:
        s = self.segment(t)
        if t >= s.t1 or s.d1 == s.d0:
            lon, lat, heading = s.route.at(s.d1 if t >= s.t1 else s.d0)
            return State(lon, lat, 0.0, heading, s.acc)
        d = s.d0 + (s.d1 - s.d0) * (t - s.t0) / (s.t1 - s.t0)
        lon, lat, heading = s.route.at(d)
        return State(lon, lat, s.speed_kmh, heading, s.acc)

    def prune(self, before: float) -> None:
        """Forget segments that ended before ``before`` (keep the last one)."""
        keep = max(bisect_right(self.starts, before) - 1, 0)
        if keep > 64:
            del self.segments[:keep]
            del self.starts[:keep]


@dataclass
class Script:
    """A vehicle's extras beyond its timeline: SOS windows, tunnels (no live reports; the fixes
    go up as a blind-area batch afterwards), and when the terminal goes silent for good."""

    sos: list[tuple[float, float]] = field(default_factory=list)
    tunnels: list[tuple[float, float]] = field(default_factory=list)
    silent_at: float | None = None

    def in_sos(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.sos)

    def in_tunnel(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.tunnels)


class Plan:
    """A vehicle's timeline, extended day by day for regular vehicles; scripted ones get their
    timeline from the scenario and stay parked after it."""

    def __init__(
        self,
        spec: VehicleSpec,
        net: RoadNetwork,
        start: float,
        seed: int,
        timeline: Timeline | None = None,
        script: Script | None = None,
    ) -> None:
        self.spec = spec
        self.net = net
        self.seed = seed
        self.scripted = timeline is not None
        self.timeline = timeline or Timeline(spec.home, start)
        self.script = script or Script()
        self._day = _local_day(start) - timedelta(days=1)
        self._legs = 0

    def state(self, t: float) -> State:
        while self.timeline.t <= t + HOUR:
            self._extend()
        return self.timeline.state(t)

    def next_wake(self, t: float) -> float:
        """The start of the segment after the one at ``t`` (a parked vehicle reports then)."""
        s = self.timeline.segment(t)
        return s.t1

    def _extend(self) -> None:
        tl = self.timeline
        if self.scripted:
            tl.park(tl.t + 6 * HOUR)
            return
        self._day += timedelta(days=1)
        day = self._day
        rng = random.Random(f"{self.seed}:{self.spec.index}:{day.isoformat()}")
        midnight = datetime(day.year, day.month, day.day, tzinfo=BEIJING).timestamp()
        for hour in DEPARTURES[self.spec.vehicle_class]:
            depart = midnight + hour * HOUR + rng.uniform(-40, 40) * MINUTE
            if depart < tl.t + MIN_PARK_S:
                continue
            tl.park(depart)
            self._leg(rng)
        tl.park(midnight + 24 * HOUR)

    def _leg(self, rng: random.Random) -> None:
        spec, tl, net = self.spec, self.timeline, self.net
        speeds = SPEEDS[spec.vehicle_class]
        here = tl.place
        self._legs += 1
        cls = spec.vehicle_class
        if cls == POLICE:  # a patrol: out to a neighbouring district and back
            there = rng.choice([n for n in net.neighbours[here] if n in URBAN])
            tl.drive(net.route(here, there), speeds, rng)
            tl.idle(rng.uniform(5, 10) * MINUTE)
            tl.drive(net.route(there, here), speeds, rng)
        elif cls == SCHOOL_BUS:
            there = spec.home if here == "school" else "school"
            tl.drive(net.route(here, there, school_roads(net)), speeds, rng)
        elif cls == COACH:
            there = spec.home if here in OUTER else rng.choice(OUTER)
            tl.drive(net.route(here, there), speeds, rng)
        elif cls == HAZMAT:
            run = next((r for r in HAZMAT_RUNS if spec.home in r and here in r), None)
            if run is None:  # the forbidden-zone truck whose script did not fit: its home lies
                tl.park(tl.t + 6 * HOUR)  # in the zone, off every run, so it stays parked
                return
            there = run[1] if here == run[0] else run[0]
            tl.drive(net.route(here, there, hazmat_roads(net)), speeds, rng)
        else:  # trucks: to a neighbouring place and, every other leg, home again
            there = rng.choice([n for n in net.neighbours[here] if n != "school"])
            if self._legs % 2 == 0 and here != spec.home and spec.home in net.neighbours[here]:
                there = spec.home
            tl.drive(net.route(here, there), speeds, rng)


def _local_day(t: float) -> Any:
    return datetime.fromtimestamp(t, BEIJING).date()


def hazmat_roads(net: RoadNetwork) -> Any:
    """Roads a hazmat truck may not take: those within 500 m of the forbidden zone."""
    return net.clear_of(place_xy(FORBIDDEN_CENTRE), FORBIDDEN_RADIUS_M + 500)


def school_roads(net: RoadNetwork) -> Any:
    """Roads near the school other than its own (a school bus crawls only on its own road)."""
    near = net.clear_of(place_xy("school"), SCHOOL_CRAWL_M + 100)
    return lambda u, v: near(u, v) and "school" not in (u, v)


# ---------------------------------------------------------------------------- the scenario


@dataclass
class Scenario:
    """The scripted vehicles' timelines and extras, and the alarms they must cause."""

    timelines: dict[int, Timeline] = field(default_factory=dict)
    scripts: dict[int, Script] = field(default_factory=dict)
    expected: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def find_slot(night: bool, duration: float, after: float, before: float) -> float | None:
    """The first start (10-minute steps) from ``after`` with ``[start, start + duration]``
    wholly in the day (06:00-22:00 Beijing) or wholly in the night, ending by ``before``."""
    t = math.ceil(after / 600) * 600
    while t + duration <= before:
        ends = (t, t + duration * 0.5, t + duration)
        if all(is_night(x) == night for x in ends) and (
            night
            or datetime.fromtimestamp(t, BEIJING).date()
            == datetime.fromtimestamp(t + duration, BEIJING).date()
        ):
            return t
        t += 600
    return None


def build_scenario(
    fleet: list[VehicleSpec],
    net: RoadNetwork,
    clock: TimeLapse,
    *,
    offline_s: float = 600.0,
    live: bool = False,
    seed: int = 1,
) -> Scenario:
    """Place each scripted violation in the simulated window (before the time-lapse catches
    up; with ``live`` the SOS and the speeding happen again a minute or two after it) and say
    which alarm each must cause, when it is due (wall clock) and the window of its start."""
    sc = Scenario()
    start, end = clock.start + 10 * MINUTE, clock.catch_up - 5 * MINUTE
    span = end - start
    by_role = {v.role: v for v in fleet if v.role}

    def expect(
        v: VehicleSpec,
        kind: str,
        lo: float,
        hi: float,
        due: float,
        why: str,
        name: str | None = None,
        wall_start: bool = False,
    ) -> None:
        item: dict[str, Any] = {
            "plate": v.plate,
            "type": kind,
            "start_from": iso(lo),
            "start_to": iso(hi),
            "due": iso(due),
            "why": why,
        }
        if name:
            item["name"] = name
        if wall_start:
            item["wall_start"] = True
        sc.expected.append(item)

    def timeline(v: VehicleSpec) -> Timeline:
        if v.index not in sc.timelines:
            sc.timelines[v.index] = Timeline(v.home, clock.start)
            sc.scripts[v.index] = Script()
        return sc.timelines[v.index]

    def rng(v: VehicleSpec, what: str) -> random.Random:
        return random.Random(f"{seed}:{v.index}:{what}")

    def fits(at: float, duration: float) -> bool:
        return span > 0 and start <= at and at + duration <= end

    def speeding(v: VehicleSpec, at: float, label: str) -> None:
        tl = timeline(v)
        tl.park(at)
        route = net.route(v.home, "school", school_roads(net))
        r = rng(v, label)
        tl.drive(route, SPEEDS[SCHOOL_BUS], r, burst=(2000.0, 5000.0, SPEEDING_KMH))
        t0, t1 = tl.at_time(2000.0, at), tl.at_time(5000.0, at)
        expect(
            v,
            "speeding",
            t0 - 1,
            t1,
            clock.wall(t1) + 20,
            f"{label}: {SPEEDING_KMH:g} km/h for 3 km, limit 60",
        )
        tl.park(tl.t + MIN_PARK_S)
        tl.drive(net.route("school", v.home, school_roads(net)), SPEEDS[SCHOOL_BUS], r)

    def sos(v: VehicleSpec, at: float, label: str) -> None:
        tl = timeline(v)
        tl.park(at - 5 * MINUTE)
        there = next(n for n in net.neighbours[v.home] if n in URBAN)
        r = rng(v, label)
        tl.drive(net.route(v.home, there), SPEEDS[POLICE], r)
        tl.idle(5 * MINUTE)
        tl.drive(net.route(there, v.home), SPEEDS[POLICE], r)
        sc.scripts[v.index].sos.append((at, at + 3 * MINUTE))
        expect(
            v,
            "terminal_alarm",
            at - 1,
            at + 61,
            clock.wall(at + 61) + 20,
            f"{label}: SOS button",
            name="emergency",
        )

    if (v := by_role.get("speeding")) and fits(start + 0.25 * span, HOUR):
        speeding(v, start + 0.25 * span, "speeding")
    elif v:
        sc.skipped.append("speeding: window too short")
    if (v := by_role.get("sos")) and fits(start + 0.2 * span, HOUR):
        sos(v, start + 0.2 * span, "SOS")
    elif v:
        sc.skipped.append("SOS: window too short")
    if (v := by_role.get("forbidden")) and fits(start + 0.15 * span, 2 * HOUR):
        tl = timeline(v)
        at = start + 0.15 * span
        tl.park(at)
        route = net.route("tianxin", "kaifu")  # through the old centre: the ban's middle
        tl.drive(route, SPEEDS[HAZMAT], rng(v, "forbidden"))
        inside = route.first_within(place_xy(FORBIDDEN_CENTRE), FORBIDDEN_RADIUS_M - 100)
        assert inside is not None
        entry = tl.at_time(inside, at)
        expect(
            v,
            "forbidden_zone",
            entry - 120,
            entry + 120,
            clock.wall(entry + 600) + 20,
            "hazmat truck through the old-centre ban",
        )
        tl.park(tl.t + MIN_PARK_S)
        tl.drive(net.route("kaifu", "tianxin", hazmat_roads(net)), SPEEDS[HAZMAT], rng(v, "back"))
    elif v:
        sc.skipped.append("forbidden zone: window too short")
    if (v := by_role.get("tunnel")) and fits(start + 0.3 * span, 2 * HOUR):
        tl = timeline(v)
        at = start + 0.3 * span
        tl.park(at)
        route = net.route("yuhua", "changshaxian")  # an expressway
        tl.drive(route, SPEEDS[HEAVY_TRUCK], rng(v, "tunnel"))
        enter = tl.at_time(route.length / 2, at)
        sc.scripts[v.index].tunnels.append((enter, enter + 4 * MINUTE))
        tl.park(tl.t + MIN_PARK_S)
        tl.drive(net.route("changshaxian", "yuhua"), SPEEDS[HEAVY_TRUCK], rng(v, "back"))
    if v := by_role.get("silent"):
        at = start + 0.45 * span if fits(start + 0.45 * span, 20 * MINUTE) else clock.catch_up + 30
        tl = timeline(v)
        tl.park(at - 10 * MINUTE)
        tl.drive(net.route(v.home, "changshaxian"), SPEEDS[HEAVY_TRUCK], rng(v, "silent"))
        sc.scripts[v.index].silent_at = at
        lo = clock.wall(at - 2 * MINUTE) - 5
        expect(
            v,
            "offline",
            lo,
            clock.wall(at) + 5,
            clock.wall(at) + offline_s + 20,
            "terminal silent (power cut): offline after the rule's limit",
            wall_start=True,
        )
    for role, night, limit in (("fatigue_day", False, 4 * HOUR), ("fatigue_night", True, 2 * HOUR)):
        v = by_role.get(role)
        if v is None:
            continue
        stint = limit + 15 * MINUTE  # of driving
        slot = find_slot(night, stint * 1.3 + 10 * MINUTE, start, end)
        if slot is None:
            sc.skipped.append(f"{role}: no {'night' if night else 'day'} slot in the window")
            continue
        at = slot
        tl = timeline(v)
        tl.park(at)
        r = rng(v, role)
        town = "liuyang"
        while tl.driving_s(at) < stint:
            there = town if tl.place != town else v.home
            tl.drive(net.route(tl.place, there), SPEEDS[COACH], r)
            tl.idle(3 * MINUTE)  # a turnaround: no rest
        stop = tl.t
        tl.park(stop + 45 * MINUTE)
        prewarn = limit - 30 * MINUTE
        expect(
            v,
            "fatigue_continuous",
            at + prewarn,
            stop,
            clock.wall(stop + 25 * MINUTE) + 20,
            f"coach driving {stint / HOUR:.2f} h without a rest "
            f"({'night: limit 2 h' if night else 'day: limit 4 h'})",
        )
    if live:
        t = clock.catch_up
        if v := by_role.get("sos"):
            sos(v, max(t + 90, timeline(v).t + 6 * MINUTE), "live SOS")
        if v := by_role.get("speeding"):
            speeding(v, max(t + 60, timeline(v).t + MIN_PARK_S), "live speeding")
    return sc


__all__ = ["BEIJING", "Plan", "Scenario", "TimeLapse", "build_fleet", "build_scenario"]
