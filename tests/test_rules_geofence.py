"""The geofence rule on synthetic tracks whose alerts are worked out by hand.

Tracks are laid out in metres from a fence with geodesic offsets (``destination``), so the
expected side of each fix is exact: with a margin of 20 m, a fix is "inside" (classify 1) closer
than r - 20 m to a circle's centre, "outside" (absent) beyond r + 20 m, and in the band between.
Each Fix is built the way the engine builds it: ``index.classify`` of its position.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, time, timedelta

import pytest
from shapely.geometry import LineString, Point, box

from alerts.geofence_rule import GeofenceRule
from alerts.model import (
    COACH,
    FORBIDDEN_ZONE,
    GEOFENCE_DWELL,
    GEOFENCE_ENTER,
    GEOFENCE_EXIT,
    HAZMAT,
    HIGH,
    LOW,
    ROUTE_DEVIATION,
    AlertEvent,
    Fix,
    VehicleInfo,
)
from geo.fences import AppliesTo, Geofence, TimeWindow
from geo.geodesy import destination, metres_per_degree
from geo.index import FenceIndex
from geo.position import Position

CENTRE = (121.47, 31.23)  # Shanghai
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 10:00 Beijing time
TRUCK = VehicleInfo(id=7, plate="沪A00007", vehicle_class=HAZMAT, company_id=3)
BUS = VehicleInfo(id=8, plate="沪A00008", vehicle_class=COACH, company_id=3)


def east(metres: float, origin: tuple[float, float] = CENTRE) -> tuple[float, float]:
    """The point ``metres`` east (negative: west) of ``origin`` along the geodesic."""
    return destination(*origin, 90.0 if metres >= 0 else 270.0, abs(metres))


def offset(x: float, y: float, origin: tuple[float, float] = CENTRE) -> tuple[float, float]:
    """``x`` m east and ``y`` m north of ``origin`` (local plane; exact to millimetres here)."""
    kx, ky = metres_per_degree(origin[1])
    return origin[0] + x / kx, origin[1] + y / ky


def circle(fid: int = 1, radius: float = 300.0, **kw: object) -> Geofence:
    return Geofence(fid, f"fence{fid}", kw.pop("kind", "zone"), "circle", Point(*CENTRE),
                    radius_m=radius, **kw)  # type: ignore[arg-type]  # fmt: skip


class Drive:
    """Feeds a vehicle's fixes to a rule, building each Fix like the engine does."""

    def __init__(self, fences: Sequence[Geofence], vehicle: VehicleInfo = TRUCK) -> None:
        self.index = FenceIndex(fences)
        self.rule = GeofenceRule(self.index)
        self.vehicle = vehicle

    def fix(
        self,
        t: datetime,
        lonlat: tuple[float, float],
        *,
        late: bool = False,
        usable: bool = True,
        vehicle: VehicleInfo | None = None,
    ) -> list[AlertEvent]:
        vehicle = vehicle or self.vehicle
        position = Position(vehicle.id, t, t, lonlat[0], lonlat[1], speed_kmh=30.0)
        fences = self.index.classify(*lonlat) if usable else {}
        out: list[AlertEvent] = []
        fix = Fix(position, vehicle, late=late, usable=usable, fences=fences, t=t.timestamp())
        self.rule.step(fix, out)
        return out

    def tick(self, now: datetime) -> list[AlertEvent]:
        out: list[AlertEvent] = []
        self.rule.tick(now, out)
        return out

    def track(
        self, points: Iterable[tuple[datetime, tuple[float, float]]], **kw: object
    ) -> list[AlertEvent]:
        events: list[AlertEvent] = []
        for t, lonlat in points:
            events += self.fix(t, lonlat, **kw)  # type: ignore[arg-type]
        return events


def summary(events: Iterable[AlertEvent]) -> list[tuple[str, str, datetime, datetime | None]]:
    return [(e.type, e.phase, e.start, e.end) for e in events]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def instant(kind: str, when: datetime) -> list[tuple[str, str, datetime, datetime | None]]:
    return [(kind, "open", when, when), (kind, "close", when, when)]


# ----------------------------------------------------------------------------- no flapping


def test_parked_vehicle_jittering_across_the_edge_never_flaps() -> None:
    """An hour parked on the edge of a 300 m circle, a fix every 10 s scattered ±15 m across
    it: every fix is in the 20 m band, so nothing is ever confirmed."""
    drive = Drive([circle()])
    jitter = [((k * 7919) % 31 - 15) for k in range(360)]  # -15..+15 m, all values hit
    assert min(jitter) == -15 and max(jitter) == 15
    points = [(at(10 * k), east(300 + j)) for k, j in enumerate(jitter)]
    assert {drive.index.classify(*p).get(1) for _, p in points} == {0}
    assert drive.track(points) == []


def test_parked_after_entering_gives_one_enter_and_no_exit() -> None:
    """Drive in from 1 km west (10 m/s, a fix every 5 s), park on the east edge and jitter
    ±15 m there for an hour: exactly one entry, dated at the first fix inside the band."""
    drive = Drive([circle()])
    approach = [(at(5 * k), east(-1000 + 50 * k)) for k in range(26)]  # to x = +250
    # First fix closer than 280 m: x = -250 at k = 15 (75 s); confirmed 30 s later.
    parked = [(at(130 + 10 * k), east(300 + (k * 7919) % 31 - 15)) for k in range(360)]
    events = drive.track(approach + parked)
    assert summary(events) == instant(GEOFENCE_ENTER, at(75))
    assert events[0].key == "geofence_enter:1"
    assert events[0].details == {"fence_id": 1, "fence_name": "fence1", "kind": "zone"}
    assert events[0].severity == LOW


def test_excursions_beyond_the_margin_shorter_than_min_time_are_forgotten() -> None:
    """Bad multipath: 20 s 35 m inside, 20 s 35 m outside, repeatedly, for an hour. Each
    excursion is beyond the margin but shorter than the 30 s minimum: no event. The same track
    with the hysteresis off (no margin, no minimum time) flaps on every swing."""
    points = [(at(10 * k), east(300 - 35 if (k // 2) % 2 == 0 else 300 + 35)) for k in range(360)]
    assert Drive([circle()]).track(points) == []

    flappy = Drive([circle(margin_m=0.0, min_time_s=0.0)])
    events = flappy.track(points)
    # First fix inside sets the side silently; then every 2 fixes the side changes: 179 swings.
    assert len(events) == 2 * 179
    assert {e.type for e in events} == {GEOFENCE_ENTER, GEOFENCE_EXIT}


# ----------------------------------------------------------------------------- enter / exit


def test_clean_entry_and_exit() -> None:
    """Straight through the centre, 10 m/s, a fix every 5 s, from 1 km west to 1 km east.
    Inside beyond the margin: |x| < 280 m, first at x = -250 (75 s), confirmed at 105 s.
    Outside beyond it: |x| > 320, first at x = 350 (135 s), confirmed at 165 s."""
    drive = Drive([circle()])
    points = [(at(5 * k), east(-1000 + 50 * k)) for k in range(41)]
    emitted_at = {}
    for t, p in points:
        for e in drive.fix(t, p):
            emitted_at.setdefault(e.type, t)
    drive = Drive([circle()])
    events = drive.track(points)
    assert summary(events) == instant(GEOFENCE_ENTER, at(75)) + instant(GEOFENCE_EXIT, at(135))
    assert emitted_at == {GEOFENCE_ENTER: at(105), GEOFENCE_EXIT: at(165)}
    assert all(not e.late and e.vehicle_id == TRUCK.id for e in events)


def test_unusable_fixes_change_nothing() -> None:
    """Inside the fence, a burst of unusable fixes "outside" (a bad fix, a jump) for two
    minutes: ignored, no exit."""
    drive = Drive([circle()])
    assert drive.track([(at(0), east(-1000)), (at(10), east(0)), (at(50), east(0))]) != []
    noise = [(at(60 + 10 * k), east(5000)) for k in range(12)]
    assert drive.track(noise, usable=False) == []
    assert drive.fix(at(200), east(0)) == []


# ----------------------------------------------------------------------------- crossings


def test_sparse_track_crossing_a_small_circle_between_two_fixes() -> None:
    """60 km/h with a fix every 2 minutes is 2 km between fixes: x = -5000, -3000, -1000,
    +1000, +3000, +5000 m. The 300 m circle lies between the 3rd and 4th fixes (both outside):
    the segment enters it at (1000 - 300) / 2000 = 0.35 of the way (42 s after the 3rd fix)
    and leaves at 0.65 (78 s)."""
    drive = Drive([circle()])
    points = [(at(120 * k), east(-5000 + 2000 * k)) for k in range(6)]
    assert all(drive.index.classify(*p) == {} for _, p in points)
    events = drive.track(points)
    assert [(e.type, e.phase) for e in events] == [
        (GEOFENCE_ENTER, "open"), (GEOFENCE_ENTER, "close"),
        (GEOFENCE_EXIT, "open"), (GEOFENCE_EXIT, "close"),
    ]  # fmt: skip
    enter, exit_ = events[0].start, events[2].start
    assert abs((enter - at(240 + 42)).total_seconds()) < 0.5
    assert abs((exit_ - at(240 + 78)).total_seconds()) < 0.5
    assert all(e.details["crossed"] is True for e in events)


def test_sparse_track_over_a_forbidden_zone_records_the_violation() -> None:
    drive = Drive([circle(kind="forbidden")])
    points = [(at(120 * k), east(-5000 + 2000 * k)) for k in range(6)]
    events = drive.track(points)
    zone = [e for e in events if e.type == FORBIDDEN_ZONE]
    assert [(e.phase, e.severity) for e in zone] == [("open", HIGH), ("close", HIGH)]
    assert abs((zone[0].start - at(282)).total_seconds()) < 0.5
    assert zone[1].start == zone[0].start
    assert zone[1].end is not None and abs((zone[1].end - at(318)).total_seconds()) < 0.5
    assert zone[0].key == "forbidden_zone:1" and zone[0].details["crossed"] is True


def test_sparse_track_passing_beside_the_circle_or_after_a_long_gap() -> None:
    """400 m north of the centre the segment misses the circle; and fixes 20 minutes apart
    are too far apart to assume a straight line."""
    drive = Drive([circle()])
    north = [(at(120 * k), offset(-5000 + 2000 * k, 400)) for k in range(6)]
    assert drive.track(north) == []
    drive = Drive([circle()])
    assert drive.track([(at(0), east(-1000)), (at(1200), east(1000))]) == []


# ----------------------------------------------------------------------------- forbidden


def night_zone(**kw: object) -> Geofence:
    """A 2 km square, forbidden to hazmat trucks 22:00-06:00 (Beijing)."""
    lon0, lat0 = offset(-1000, -1000)
    lon1, lat1 = offset(1000, 1000)
    return Geofence(
        2, "old town", "forbidden", "rectangle", box(lon0, lat0, lon1, lat1),
        windows=(TimeWindow(start=time(22), end=time(6)),),
        applies_to=AppliesTo(classes=frozenset({HAZMAT})), **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def through_square(start: datetime) -> list[tuple[datetime, tuple[float, float]]]:
    """West to east through the square's middle, 10 m/s, a fix every 10 s from x = -2000 m.
    Inside beyond the margin: -980 < x < 980 -> first fix x = -900 (110 s). Outside again:
    x > 1020 -> first fix x = 1100 (310 s)."""
    return [(start + timedelta(seconds=10 * k), offset(-2000 + 100 * k, 0)) for k in range(41)]


def test_forbidden_zone_inside_its_window() -> None:
    drive = Drive([night_zone()])
    start = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # 23:00 Beijing
    events = drive.track(through_square(start))
    enter, exit_ = start + timedelta(seconds=110), start + timedelta(seconds=310)
    # one passage, one alert: no entry or exit instants of their own
    assert summary(events) == [
        (FORBIDDEN_ZONE, "open", enter, None),
        (FORBIDDEN_ZONE, "close", enter, exit_),
    ]
    opened = events[0]
    assert opened.severity == HIGH and opened.key == "forbidden_zone:2"
    assert opened.details == {"fence_id": 2, "fence_name": "old town", "kind": "forbidden"}
    assert events[-1].details["duration_s"] == 200.0


def test_forbidden_zone_outside_its_window_or_for_another_class() -> None:
    """Outside its window a fence is not in force: no violation, and no entry or exit either."""
    noon = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)  # 12:00 Beijing
    assert Drive([night_zone()]).track(through_square(noon)) == []
    evening = datetime(2026, 3, 2, 13, 58, 20, tzinfo=UTC)  # 21:58:20, in at 22:00:10
    events = Drive([night_zone()]).track(through_square(evening))
    assert [e.type for e in events] == [FORBIDDEN_ZONE] * 2
    night = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
    assert Drive([night_zone()], vehicle=BUS).track(through_square(night)) == []


def test_forbidden_zone_window_ending_while_inside() -> None:
    """In at 05:50 Beijing, parked inside until 06:20: the violation ends with the first fix
    at or after 06:00."""
    drive = Drive([night_zone()])
    start = datetime(2026, 3, 2, 21, 50, tzinfo=UTC)  # 05:50 Beijing on Tuesday
    track = [(start + timedelta(seconds=60 * k), offset(0, 0)) for k in range(31)]
    events = drive.track([(start - timedelta(seconds=60), offset(-3000, 0)), *track])
    six = datetime(2026, 3, 2, 22, 0, tzinfo=UTC)
    assert summary(events) == [
        (FORBIDDEN_ZONE, "open", start, None),
        (FORBIDDEN_ZONE, "close", start, six),
    ]
    assert events[-1].details["window_ended"] is True


# ----------------------------------------------------------------------------- dwell


def test_dwell_too_long() -> None:
    """Max dwell 10 min. In at x = -250 (first fix inside, t = 0), parked for 15 min with a fix
    a minute, out again: the dwell alert opens at the first fix more than 600 s after the entry
    (660 s) and is dated from the entry; it closes at the exit."""
    drive = Drive([circle(max_dwell_s=600.0)])
    events = drive.fix(at(-60), east(-1000))
    opened_at = None
    for k in range(16):
        new = drive.fix(at(60 * k), east(-250))
        if any(e.type == GEOFENCE_DWELL for e in new):
            opened_at = at(60 * k)
        events += new
    events += drive.fix(at(960), east(-1000)) + drive.fix(at(1000), east(-1000))
    assert opened_at == at(660)
    assert summary(events) == [
        *instant(GEOFENCE_ENTER, at(0)),
        (GEOFENCE_DWELL, "open", at(0), None),
        *instant(GEOFENCE_EXIT, at(960)),
        (GEOFENCE_DWELL, "close", at(0), at(960)),
    ]
    assert events[2].details["max_dwell_s"] == 600.0
    assert events[-1].details["dwell_s"] == 960.0


def test_dwell_of_a_vehicle_that_stopped_reporting_comes_from_tick() -> None:
    drive = Drive([circle(max_dwell_s=600.0)])
    drive.track([(at(-60), east(-1000)), (at(0), east(0)), (at(30), east(0))])
    assert drive.tick(at(600)) == []
    events = drive.tick(at(601))
    assert summary(events) == [(GEOFENCE_DWELL, "open", at(0), None)]
    assert drive.tick(at(700)) == []


# ----------------------------------------------------------------------------- route


def route(vehicles: frozenset[int] = frozenset({TRUCK.id})) -> Geofence:
    """A 6 km east-west corridor, 100 m wide: inside beyond the margin |y| < 30 m, outside
    beyond it |y| > 70 m."""
    line = LineString([offset(-3000, 0), offset(3000, 0)])
    return Geofence(3, "G15 route", "route", "corridor", line, width_m=100.0,
                    applies_to=AppliesTo(vehicle_ids=vehicles))  # fmt: skip


def detour() -> list[tuple[datetime, tuple[float, float]]]:
    """Along the route for 1 km, a 300 m detour north for 1 km, back on the route; 100 m per
    10 s fix. Off the route from x = -1000 (y = 300) at 100 s to x = 0 (200 s), back at
    x = 100 (y = 0) at 210 s."""
    points = []
    for k in range(31):
        x = -2000 + 100 * k
        y = 300.0 if 10 <= k <= 20 else 0.0
        points.append((at(10 * k), offset(x, y)))
    return points


def test_route_deviation() -> None:
    drive = Drive([route()])
    events = drive.track(detour())
    assert summary(events) == [
        *instant(GEOFENCE_EXIT, at(100)),
        (ROUTE_DEVIATION, "open", at(100), None),
        *instant(GEOFENCE_ENTER, at(210)),
        (ROUTE_DEVIATION, "close", at(100), at(210)),
    ]
    assert events[2].key == "route_deviation:3"


def test_route_applies_only_to_its_vehicles() -> None:
    assert Drive([route()], vehicle=BUS).track(detour()) == []


def test_a_vehicle_never_on_the_route_has_not_deviated() -> None:
    points = [(at(10 * k), offset(-2000 + 100 * k, 500)) for k in range(20)]
    assert Drive([route()]).track(points) == []


# ----------------------------------------------------------------------------- late data


def test_late_fixes_give_late_events() -> None:
    drive = Drive([circle()])
    points = [(at(5 * k), east(-1000 + 50 * k)) for k in range(41)]
    events = drive.track(points, late=True)
    assert [e.type for e in events] == [GEOFENCE_ENTER] * 2 + [GEOFENCE_EXIT] * 2
    assert all(e.late for e in events)


def test_blind_area_batch_replayed_after_live_data() -> None:
    """Live: outside the forbidden circle until 10:01, no signal until 11:00, live again
    outside. Then the 0x0704 batch of the gap arrives: it drove through the zone (in from
    10:20, out from 10:40). The violation is recorded whole and late; the live state is
    untouched (no event when live fixes go on)."""
    drive = Drive([circle(radius=1000.0, kind="forbidden")])
    live = [(at(10 * k), east(-3000)) for k in range(7)]
    assert drive.track(live) == []
    assert drive.fix(at(3600), east(-3000)) == []
    batch = [(at(60 * k), east(-3000 if k < 20 or k >= 40 else 0)) for k in range(2, 59)]
    events = drive.track(batch, late=True)
    assert summary(events) == [
        (FORBIDDEN_ZONE, "open", at(1200), None),
        (FORBIDDEN_ZONE, "close", at(1200), at(2400)),
    ]
    assert all(e.late for e in events)
    assert events[-1].key == "forbidden_zone:1:late"  # never mixed with a live episode
    assert drive.fix(at(3610), east(-3000)) == []


def test_replay_still_inside_is_cut_when_the_batch_goes_quiet() -> None:
    drive = Drive([circle(radius=1000.0, kind="forbidden")])
    drive.track([(at(0), east(-3000)), (at(3600), east(-3000))])
    batch = [(at(600 + 60 * k), east(0)) for k in range(5)]  # inside from 600 s
    events = drive.track(batch, late=True)
    assert summary(events) == []  # the passage is held back
    # Received times equal fix times here: quiet for 120 s after the last one (840 s).
    assert drive.tick(at(900)) == []
    events = drive.tick(at(960))
    assert summary(events) == [
        (FORBIDDEN_ZONE, "open", at(600), None),
        (FORBIDDEN_ZONE, "close", at(600), at(840)),
    ]
    assert events[1].details["truncated"] is True and all(e.late for e in events)


# ----------------------------------------------------------------------------- fence changes


def test_removing_a_fence_ends_its_episodes() -> None:
    drive = Drive([night_zone()])
    start = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
    events = drive.track(through_square(start)[:25])  # inside, violation open
    assert [(e.type, e.phase) for e in events][-1] == (FORBIDDEN_ZONE, "open")
    drive.index.rebuild([])
    last = start + timedelta(seconds=240)
    events = drive.fix(start + timedelta(seconds=250), offset(500, 0))
    assert summary(events) == [(FORBIDDEN_ZONE, "close", start + timedelta(seconds=110), last)]
    assert events[0].details["fence_removed"] is True


@pytest.mark.parametrize("kind", ["zone", "forbidden", "route"])
def test_speed_limit_areas_record_no_entries_but_other_kinds_do(kind: str) -> None:
    points = [(at(5 * k), east(-1000 + 50 * k)) for k in range(41)]
    assert Drive([circle(kind="speed_limit", speed_limit_kmh=60.0)]).track(points) == []
    assert Drive([circle(kind=kind)]).track(points) != []


def test_replay_leaves_a_live_episode_alone() -> None:
    """Inside the forbidden circle before the gap (live violation open since 60 s) and after
    it. The batch of the gap shows the vehicle out from 1200 s and back in from 1800 s: the
    replay records the exit and re-entry and its own violation (cut where the batch ends),
    under ``:late`` keys, and never closes the live one."""
    drive = Drive([circle(radius=1000.0, kind="forbidden")])
    live = drive.track([(at(0), east(-3000)), (at(60), east(0)), (at(120), east(0))])
    assert summary(live) == [(FORBIDDEN_ZONE, "open", at(60), None)]
    assert drive.track([(at(180), east(0)), (at(3600), east(0))]) == []
    batch = [(at(60 * k), east(-3000 if 20 <= k < 30 else 0)) for k in range(4, 60)]
    assert drive.track(batch, late=True) == []  # the live passage owns the exit; re-entry held
    events = drive.tick(at(3540 + 120))
    assert summary(events) == [
        (FORBIDDEN_ZONE, "open", at(1800), None),
        (FORBIDDEN_ZONE, "close", at(1800), at(3540)),
    ]
    assert {e.key for e in events} == {"forbidden_zone:1:late"}
    # The live timeline still has its violation open: leaving closes it, dated live.
    events = drive.track([(at(3700), east(-3000)), (at(3760), east(-3000))])
    assert summary(events) == [(FORBIDDEN_ZONE, "close", at(60), at(3700))]


def test_standing_in_one_empty_cell_still_confirms_and_sees_new_fences() -> None:
    """The rule skips fixes that stay in one empty grid cell with no fence state (the index
    gives such a cell one dict). A vehicle that left a fence and stands in such a cell still
    gets its exit confirmed there, and a fence drawn around it later is entered: new fences
    make new cells."""
    drive = Drive([circle(radius=100.0)])
    here = [east(1300 + (k % 3)) for k in range(12)]  # a few metres of jitter, one cell
    assert all(drive.index.classify(*p) is drive.index.classify(*here[0]) for p in here)
    inside = drive.track([(at(0), CENTRE), (at(10), CENTRE)])
    standing = drive.track([(at(20 + 10 * k), p) for k, p in enumerate(here)])
    assert inside == [] and summary(standing) == instant(GEOFENCE_EXIT, at(20))
    around = Geofence(2, "fence2", "zone", "circle", Point(*here[0]), radius_m=200.0)
    drive.index.rebuild([circle(radius=100.0), around])
    later = drive.track([(at(200 + 10 * k), p) for k, p in enumerate(here)])
    assert summary(later) == instant(GEOFENCE_ENTER, at(200))
