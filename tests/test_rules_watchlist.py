"""Watchlist (缉查布控): listed plates when they report, and when they enter a watched area."""

from __future__ import annotations

from datetime import timedelta

from shapely.geometry import Point

from alerts.engine import RulesEngine
from alerts.model import GEOFENCE_ENTER, HIGH, WATCHLIST, WATCHLIST_AREA, VehicleInfo
from alerts.watchlist import normalise_plate
from geo.fences import Geofence
from geo.index import FenceIndex
from tests.test_rules_hygiene import Track, bj, of, run

LISTED = VehicleInfo(id=7, plate="浙A 12345")
OTHER = VehicleInfo(id=8, plate="浙A54321")


def test_plate_form() -> None:
    assert normalise_plate(" 浙a-12345 ") == normalise_plate("浙A·12345") == "浙A12345"


def test_listed_plate_once_per_session() -> None:
    """One alert when the listed vehicle shows up (first report), none for its further reports
    or for unlisted vehicles; the episode ends when it goes offline (end = last report) and a
    new one opens when it reports again."""
    engine = RulesEngine(FenceIndex())
    engine.set_watchlist({"浙A12345": "reported stolen"})
    t, o = Track(7, step=30), Track(8, step=30, lat=30.1)
    events = run(engine, LISTED, t.drive(600, 50)) + run(engine, OTHER, o.drive(600, 50))
    wl = of(events, WATCHLIST)
    assert len(wl) == 1
    assert (wl[0].phase, wl[0].vehicle_id, wl[0].start) == ("open", 7, bj(6, 8))
    assert wl[0].details["reason"] == "reported stolen" and wl[0].details["plate"] == "浙A12345"
    assert wl[0].severity == HIGH
    gone = of(engine.tick(bj(6, 8, 20)), WATCHLIST)
    assert [(e.phase, e.start, e.end) for e in gone] == [("close", bj(6, 8), bj(6, 8, 9, 30))]
    t.skip(3600)
    again = of(run(engine, LISTED, t.drive(60, 50)), WATCHLIST)
    assert [(e.phase, e.start) for e in again] == [("open", bj(6, 9, 10))]


def test_logout_and_delisting_end_the_episode() -> None:
    engine = RulesEngine(FenceIndex())
    engine.set_watchlist({"浙A12345": "x"})
    t = Track(7, step=30)
    run(engine, LISTED, t.drive(60, 50))
    closed = of(engine.logout(7, bj(6, 8, 1)), WATCHLIST)
    assert [(e.phase, e.end) for e in closed] == [("close", bj(6, 8, 0, 30))]
    opened = of(run(engine, LISTED, t.drive(60, 50)), WATCHLIST)
    assert [e.phase for e in opened] == ["open"]
    engine.set_watchlist({})
    assert of(run(engine, LISTED, t.drive(60, 50)), WATCHLIST) == []
    assert [e.phase for e in of(engine.tick(t.t), WATCHLIST)] == ["close"]
    assert of(run(engine, LISTED, t.drive(60, 50)), WATCHLIST) == []


def test_late_report_counts_and_is_flagged() -> None:
    engine = RulesEngine(FenceIndex())
    engine.set_watchlist({"浙A12345": "x"})
    batch = Track(7, step=30).drive(60, 50, batch=True)
    wl = of(run(engine, LISTED, batch), WATCHLIST)
    assert [(e.phase, e.late) for e in wl] == [("open", True)]


def test_listed_vehicle_enters_a_watched_area() -> None:
    """A watched circle (500 m radius, margin 20 m, 30 s on the new side) 1 km east of the
    start. Driving east at 36 km/h (10 m/s, a fix every 10 s), the vehicle is inside beyond
    the margin from 480 m before the centre, i.e. 520 m from the start: the fix at 60 s is the
    first inside, confirmed 30 s later; it leaves beyond the margin 520 m past the centre
    (1520 m: the fix at 160 s). The unlisted vehicle on the same track gets no WATCHLIST_AREA."""
    kx = 96_486.0  # metres per degree of longitude at 30°N, near enough for placing the fence
    fence = Geofence(
        5, "checkpoint", "zone", "circle", Point(120.0 + 1000 / kx, 30.0), radius_m=500.0,
        watched=True,
    )  # fmt: skip
    engine = RulesEngine(FenceIndex([fence]))
    engine.set_watchlist({"浙A12345": "wanted"})
    t = Track(7, step=10)
    events = run(engine, LISTED, t.drive(300, 36))
    assert len(of(events, GEOFENCE_ENTER, "open")) == 1
    area = of(events, WATCHLIST_AREA)
    assert [(e.phase, e.key) for e in area] == [
        ("open", "watchlist_area:5"),
        ("close", "watchlist_area:5"),
    ]
    assert area[0].start == bj(6, 8) + timedelta(seconds=60)
    assert area[1].end == bj(6, 8) + timedelta(seconds=160)
    assert area[0].details["fence_id"] == 5 and area[0].details["reason"] == "wanted"
    o = Track(8, step=10)
    assert of(run(engine, OTHER, o.drive(300, 36)), WATCHLIST_AREA) == []
