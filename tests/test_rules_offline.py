"""Offline (no report for 10 min without a logout) and no-fix (reporting without a fix)."""

from __future__ import annotations

from datetime import timedelta

from alerts.engine import RulesEngine
from alerts.model import NO_FIX, OFFLINE
from alerts.settings import RuleSettings
from geo.index import FenceIndex
from tests.test_rules_hygiene import Track, bj, of, run, vehicle


def test_offline_vehicle() -> None:
    """Reports every 30 s 08:00-08:05 (last at 08:04:30), then silence. Not offline at 08:14;
    offline at 08:14:30 (10 min after the last report), starting at that last report. Back at
    08:40: closed with end 08:40. A second tick does not repeat it."""
    engine = RulesEngine(FenceIndex())
    v = vehicle(1)
    t = Track(step=30)
    events = run(engine, v, t.drive(300, 40))
    assert of(events, OFFLINE) == []
    assert engine.tick(bj(6, 8, 14)) == []
    gone = engine.tick(bj(6, 8, 14, 30))
    assert [(e.type, e.phase, e.start) for e in gone] == [(OFFLINE, "open", bj(6, 8, 4, 30))]
    assert engine.tick(bj(6, 8, 30)) == []
    t.skip((bj(6, 8, 40) - t.t).total_seconds())
    back = of(run(engine, v, t.drive(30, 40)), OFFLINE)
    assert [(e.phase, e.start, e.end) for e in back] == [("close", bj(6, 8, 4, 30), bj(6, 8, 40))]


def test_logout_is_not_offline() -> None:
    engine = RulesEngine(FenceIndex())
    v = vehicle(1)
    t = Track(step=30)
    run(engine, v, t.drive(300, 40))
    assert engine.logout(1, bj(6, 8, 5)) == []
    assert engine.tick(bj(6, 9)) == []
    # a new session after the logout is watched again
    t.skip(3600)
    run(engine, v, t.drive(60, 40))
    assert [e.type for e in engine.tick(t.t + timedelta(minutes=11))] == [OFFLINE]


def test_received_time_not_fix_time() -> None:
    """A terminal whose clock is an hour behind still counts as online: offline is about the
    link, judged on received time."""
    engine = RulesEngine(FenceIndex())
    v = vehicle(1)
    t = Track(step=30, start=bj(6, 7))
    for p in t.drive(600, 40):
        p.received_time = p.fix_time + timedelta(hours=1)
        engine.feed(p, v)
    assert engine.tick(bj(6, 8, 12)) == []


def test_many_vehicles_only_the_silent_one() -> None:
    engine = RulesEngine(FenceIndex(), RuleSettings(offline_s=300))
    tracks = {vid: Track(vid, step=60) for vid in range(1, 6)}
    for minute in range(10):
        for vid, t in tracks.items():
            if vid == 3 and minute >= 2:
                t.skip(60)
                continue
            engine.feed(t.drive(60, 30)[0], vehicle(vid))
        if minute == 6:
            events = engine.tick(bj(6, 8, 6, 30))
            assert [(e.vehicle_id, e.type, e.start) for e in events] == [(3, OFFLINE, bj(6, 8, 1))]
    assert engine.tick(bj(6, 8, 10)) == []


def test_no_fix_while_reporting() -> None:
    """Valid fixes to 08:02, then invalid ones (and one at (0, 0)) every 30 s: NO_FIX opens at
    the report 10 min after the first fixless one (08:02 -> 08:12) and closes with the first
    valid fix again (08:17, after 15 min without one)."""
    engine = RulesEngine(FenceIndex())
    v = vehicle(1)
    t = Track(step=30)
    events = run(engine, v, t.drive(120, 40))
    lost = t.drive(300, 40, valid=False)
    lost.append(t.fix(40, at=(0.0, 0.0)))
    t.skip(30, 40)
    lost += t.drive(570, 40, valid=False)
    events += run(engine, v, lost)
    events += run(engine, v, t.drive(60, 40))
    nf = of(events, NO_FIX)
    assert [(e.phase, e.start, e.end) for e in nf] == [
        ("open", bj(6, 8, 2), None),
        ("close", bj(6, 8, 2), bj(6, 8, 17)),
    ]
    assert of(events, OFFLINE) == []


def test_no_fix_ends_with_the_session() -> None:
    engine = RulesEngine(FenceIndex())
    v = vehicle(1)
    t = Track(step=30)
    events = run(engine, v, t.drive(60, 40) + t.drive(900, 40, valid=False))
    assert [e.phase for e in of(events, NO_FIX)] == ["open"]
    last = t.t - timedelta(seconds=30)
    gone = engine.tick(t.t + timedelta(minutes=10))
    assert [(e.type, e.phase) for e in gone] == [(OFFLINE, "open"), (NO_FIX, "close")]
    assert gone[1].end == last


def test_a_jump_is_still_a_fix() -> None:
    """Fixes that jump 50 km back and forth are unusable for the position rules, but the
    receiver is working: no NO_FIX."""
    engine = RulesEngine(FenceIndex(), RuleSettings(jump_reanchor=1000))
    v = vehicle(1)
    t = Track(step=30)
    events = run(engine, v, t.drive(60, 40))
    for i in range(30):
        events += engine.feed(t.fix(40, at=(t.lon + (0.5 if i % 2 else -0.5), t.lat)), v)
        t.skip(30, 40)
    assert of(events, NO_FIX) == []
