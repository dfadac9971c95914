"""Terminal alarm bits (0x0200 alarm word) as episodes."""

from __future__ import annotations

from alerts.engine import RulesEngine
from alerts.model import CRITICAL, HIGH, MEDIUM, SPEEDING, TERMINAL_ALARM
from alerts.terminal_alarms import severity_of
from geo.index import FenceIndex
from tests.test_rules_hygiene import Track, bj, of, run, vehicle

SOS, OVERSPEED, COLLISION = 1 << 0, 1 << 1, 1 << 29


def test_sos_set_and_cleared() -> None:
    """SOS on three reports, then clear: one episode from the first report with it to
    the first without, carrying the raising report's serial (for the 0x8203 answer)."""
    engine = RulesEngine(FenceIndex())
    t = Track(step=5)
    fixes = t.drive(20, 40) + t.drive(15, 40, alarm=SOS) + t.drive(20, 40)
    events = run(engine, vehicle(1), fixes)
    sos = of(events, TERMINAL_ALARM)
    assert [e.phase for e in sos] == ["open", "close"]
    opened, closed = sos
    assert opened.key == closed.key == "terminal_alarm:emergency"
    assert opened.start == closed.start == fixes[4].fix_time
    assert closed.end == fixes[7].fix_time
    assert opened.severity == CRITICAL
    assert opened.details == {"name": "emergency", "serial": fixes[4].serial}
    assert not opened.late


def test_sos_comes_first() -> None:
    """A report raising collision and SOS, on a bus that is also speeding at that moment:
    the SOS is the first event of the report."""
    engine = RulesEngine(FenceIndex())
    bus = vehicle(1, "school_bus")
    t = Track(step=5)
    run(engine, bus, t.drive(10, 75))
    events = engine.feed(t.fix(75, alarm=SOS | COLLISION), bus)
    assert [(e.type, e.details.get("name")) for e in events] == [
        (TERMINAL_ALARM, "emergency"),
        (TERMINAL_ALARM, "collision"),
        (SPEEDING, None),
    ]
    assert events[1].severity == HIGH


def test_alarms_are_independent_and_invalid_fixes_count() -> None:
    """Overspeed raised, then collision added, then overspeed cleared while collision stays,
    all on invalid fixes (alarms do not depend on the fix), then both clear."""
    engine = RulesEngine(FenceIndex())
    t = Track(step=5)
    a = t.fix(0, valid=False, alarm=OVERSPEED)
    t.skip(5)
    b = t.fix(0, valid=False, alarm=OVERSPEED | COLLISION)
    t.skip(5)
    c = t.fix(0, valid=False, alarm=COLLISION)
    t.skip(5)
    d = t.fix(0, valid=False)
    events = of(run(engine, vehicle(1), [a, b, c, d]), TERMINAL_ALARM)
    assert [(e.phase, e.details["name"], e.start, e.end) for e in events] == [
        ("open", "overspeed", a.fix_time, None),
        ("open", "collision", b.fix_time, None),
        ("close", "overspeed", a.fix_time, c.fix_time),
        ("close", "collision", b.fix_time, d.fix_time),
    ]


def test_severities() -> None:
    assert severity_of("emergency") == CRITICAL
    assert severity_of("collision") == severity_of("rollover") == HIGH
    assert severity_of("dangerous_driving") == HIGH
    assert severity_of("overspeed") == severity_of("camera_fault") == MEDIUM


def test_late_sos_in_a_blind_area_batch() -> None:
    """Live reports 08:00-08:10 and from 08:30; the batch for 08:10-08:30 (arriving after)
    holds an SOS from 08:15 to 08:20. It is recorded in the late lane (own key, late=True)
    and does not touch the live state: the live SOS episode (still set at 08:30) is
    untouched. The late lane ends, closing nothing more, when the batch is over (tick)."""
    engine = RulesEngine(FenceIndex())
    truck = vehicle(1)
    t = Track(start=bj(6, 8))
    live = t.drive(600, 50)
    t.skip(1200, 50)
    live += t.drive(60, 50, alarm=SOS)
    events = run(engine, truck, live)
    assert [e.phase for e in of(events, TERMINAL_ALARM)] == ["open"]
    b = Track(start=bj(6, 8, 10))
    batch = b.drive(300, 50, batch=True) + b.drive(300, 50, batch=True, alarm=SOS)
    batch += b.drive(600, 50, batch=True)
    late = of(run(engine, truck, batch), TERMINAL_ALARM)
    assert [(e.phase, e.key, e.late) for e in late] == [
        ("open", "terminal_alarm:emergency:late", True),
        ("close", "terminal_alarm:emergency:late", True),
    ]
    assert late[0].start == bj(6, 8, 15) and late[1].end == bj(6, 8, 20)
    assert of(engine.tick(bj(6, 8, 40)), TERMINAL_ALARM) == []
    # the live episode goes on and closes normally
    closed = of(run(engine, truck, t.drive(10, 50)), TERMINAL_ALARM)
    assert [(e.phase, e.key, e.start) for e in closed] == [
        ("close", "terminal_alarm:emergency", bj(6, 8, 30))
    ]


def test_late_lane_cut_when_the_batch_ends_with_the_bit_set() -> None:
    engine = RulesEngine(FenceIndex())
    truck = vehicle(1)
    t = Track(start=bj(6, 8))
    run(engine, truck, t.drive(60, 50))
    t.skip(600)
    run(engine, truck, t.drive(60, 50))
    b = Track(start=bj(6, 8, 2))
    batch = b.drive(60, 50, batch=True, alarm=SOS, received=bj(6, 8, 12))
    opened = of(run(engine, truck, batch), TERMINAL_ALARM)
    assert [(e.phase, e.late) for e in opened] == [("open", True)]
    assert of(engine.tick(bj(6, 8, 12, 20)), TERMINAL_ALARM) == []  # not idle long enough
    cut = of(engine.tick(bj(6, 8, 13)), TERMINAL_ALARM)
    assert [(e.phase, e.key, e.end) for e in cut] == [
        ("close", "terminal_alarm:emergency:late", batch[-1].fix_time)
    ]


def test_a_second_report_of_the_same_second_is_judged_a_redelivery_is_not() -> None:
    """The SOS button pressed in the second of a periodic report: the terminal sends another
    0x0200 of the same time (a new serial), which opens the alarm; the same report delivered
    twice (same time and serial) changes nothing."""
    engine = RulesEngine(FenceIndex())
    t = Track(step=5)
    periodic = t.fix(40)
    sos = t.fix(40, alarm=SOS)  # same clock, next serial
    assert sos.fix_time == periodic.fix_time and sos.serial != periodic.serial
    assert engine.feed(periodic, vehicle(1)) == []
    opened = of(engine.feed(sos, vehicle(1)), TERMINAL_ALARM)
    assert [e.phase for e in opened] == ["open"]
    assert engine.feed(sos, vehicle(1)) == []
