"""Fatigue scenarios, worked out by hand (a fix every 10 s unless said otherwise).

Rules (alerts/fatigue.py): continuous driving counts driving time between rests of >= 20 min
stopped (ACC off); warning at 3.5 h, escalation 15 min later if still driving, alarm at 4 h
(a coach at night: 1.5 h / 1 h 45 / 2 h); episodes end at the start of the stop that became the
rest, and are closed when the rest is confirmed (20 min later).
"""

from __future__ import annotations

from datetime import timedelta
from unittest.mock import ANY

from alerts.engine import RulesEngine
from alerts.model import (
    COACH,
    FATIGUE_CONTINUOUS,
    FATIGUE_DAILY,
    FATIGUE_ESCALATION,
    FATIGUE_WARNING,
    HEAVY_TRUCK,
    NIGHT_DRIVING,
)
from alerts.settings import RuleSettings
from geo.index import FenceIndex
from tests.test_rules_hygiene import Track, bj, near, of, run, vehicle

FATIGUE_TYPES = (
    FATIGUE_WARNING,
    FATIGUE_ESCALATION,
    FATIGUE_CONTINUOUS,
    FATIGUE_DAILY,
    NIGHT_DRIVING,
)

H, MIN = 3600, 60


def fatigue(events: list) -> list:
    return [e for e in events if e.type in FATIGUE_TYPES]


def summary(events: list) -> list[tuple[str, str]]:
    return [(e.phase, e.type) for e in fatigue(events)]


def when(e) -> object:
    """The moment of an event: a stage's ``at``, else the episode's start."""
    return e.at or e.start


def stage(events: list, kind: str) -> list:
    """The open or update that reached stage ``kind`` of a continuous-driving incident."""
    return [e for e in events if e.type == kind and e.phase in ("open", "update")]


#: One continuous-driving incident, as the rules report it: one alert in three stages.
INCIDENT = [("open", FATIGUE_WARNING), ("update", FATIGUE_ESCALATION),
            ("update", FATIGUE_CONTINUOUS)]  # fmt: skip


def test_4h10_with_a_15_minute_stop_is_fatigue() -> None:
    """08:00-10:00 driving, 10:00-10:15 stopped (ACC off: too short to rest), 10:15-12:25
    driving (4 h 10 min in all), then stopped. Driving time reaches 3.5 h at 11:45 (warning),
    the truck is still driving at 12:00 (escalation), 4 h at 12:15 (alarm). The stop from 12:25
    becomes a rest at 12:45: the incident (one alert, three stages) closes with end 12:25."""
    engine = RulesEngine(FenceIndex())
    truck = vehicle(1, HEAVY_TRUCK)
    t = Track(start=bj(6, 8))
    fixes = t.drive(2 * H, 60) + t.stop(15 * MIN) + t.drive(2 * H + 10 * MIN, 60)
    events = run(engine, truck, fixes)
    assert summary(events) == INCIDENT
    warn, esc, cont = fatigue(events)
    assert (
        near(when(warn), bj(6, 11, 45))
        and near(when(esc), bj(6, 12))
        and near(when(cont), bj(6, 12, 15))
    )
    assert {(e.key, e.start) for e in (warn, esc, cont)} == {(warn.key, warn.start)}
    assert warn.key == f"fatigue:{int(warn.start.timestamp())}"
    assert cont.details["limit_s"] == 4 * H and not cont.details["night"]
    assert all(e.driver is None and not e.late for e in fatigue(events))
    rest = run(engine, truck, t.stop(19 * MIN))
    assert fatigue(rest) == []  # not a rest yet
    rest = run(engine, truck, t.stop(2 * MIN))
    assert summary(rest) == [("close", FATIGUE_CONTINUOUS)]  # closed at the stage it reached
    (closed,) = fatigue(rest)
    assert (closed.key, closed.start) == (warn.key, warn.start)
    assert near(closed.end, bj(6, 12, 25))
    assert closed.details["driving_s"] == 4 * H + 10 * MIN


def test_4h10_with_a_20_minute_stop_is_no_fatigue() -> None:
    """The same day with a 20-minute stop: that stop is a rest, so the count restarts at
    10:20 and the second stint (2 h 10) is far from 3.5 h."""
    engine = RulesEngine(FenceIndex())
    t = Track(start=bj(6, 8))
    fixes = t.drive(2 * H, 60) + t.stop(20 * MIN) + t.drive(2 * H + 10 * MIN, 60) + t.stop(30 * MIN)
    assert fatigue(run(engine, vehicle(1), fixes)) == []


def test_idling_with_acc_on_is_no_rest() -> None:
    """A 30-minute stop with the engine running (ACC on) does not reset the count; a terminal
    that never reports ACC (bit always clear) rests by speed alone."""
    fixes = Track(start=bj(6, 8))
    fixes_on = (
        fixes.drive(2 * H, 60) + fixes.stop(30 * MIN, acc=True) + fixes.drive(2 * H + 10 * MIN, 60)
    )
    events = run(RulesEngine(FenceIndex()), vehicle(1), fixes_on)
    cont = stage(events, FATIGUE_CONTINUOUS)
    assert len(cont) == 1 and near(when(cont[0]), bj(6, 12, 30))
    t = Track(start=bj(6, 8))
    no_acc = (
        t.drive(2 * H, 60, acc=False) + t.stop(20 * MIN) + t.drive(2 * H + 10 * MIN, 60, acc=False)
    )
    assert fatigue(run(RulesEngine(FenceIndex()), vehicle(1), no_acc)) == []


def test_coach_at_night_two_hours() -> None:
    """A coach drives 21:00-00:00 without a stop. At 22:00 it has driven 1 h; the night limit is
    2 h, so: warning at 22:30 (1.5 h), escalation 22:45, alarm 23:00. A truck on the same
    track gets nothing (3 h < 3.5 h)."""
    coach = vehicle(1, COACH)
    t = Track(start=bj(6, 21))
    fixes = t.drive(3 * H, 80)
    events = run(RulesEngine(FenceIndex()), coach, fixes)
    assert summary(events) == INCIDENT
    warn, esc, cont = fatigue(events)
    assert near(when(warn), bj(6, 22, 30)) and near(when(esc), bj(6, 22, 45))
    assert near(when(cont), bj(6, 23))
    assert cont.details == {"limit_s": 2 * H, "night": True, "fatigue_continuous_at": ANY}
    assert fatigue(run(RulesEngine(FenceIndex()), vehicle(2, HEAVY_TRUCK), fixes)) == []


def test_coach_already_over_two_hours_when_night_falls() -> None:
    """A coach that has driven 2.5 h by 22:00 is over the night limit at 22:00 exactly."""
    t = Track(start=bj(6, 19, 30))
    events = run(RulesEngine(FenceIndex()), vehicle(1, COACH), t.drive(3 * H, 80))
    cont = stage(events, FATIGUE_CONTINUOUS)
    assert len(cont) == 1 and near(when(cont[0]), bj(6, 22))


def test_long_distance_coach_between_2_and_5() -> None:
    """A long-distance coach drives 01:30-02:50 (1 h 20: under every continuous threshold)
    then stops: NIGHT_DRIVING from 02:00 to 02:50. Another drives 04:10-05:20: from 04:10 to
    05:00, the end of the window. A coach not marked long-distance: nothing."""
    ld = vehicle(1, COACH, long_distance=True)
    engine = RulesEngine(FenceIndex())
    t = Track(start=bj(7, 1, 30))
    events = run(engine, ld, t.drive(80 * MIN, 80) + t.stop(25 * MIN))
    assert summary(events) == [("open", NIGHT_DRIVING), ("close", NIGHT_DRIVING)]
    assert near(events[0].start, bj(7, 2)) and near(events[1].end, bj(7, 2, 50))

    engine = RulesEngine(FenceIndex())
    t = Track(start=bj(7, 4, 10))
    events = run(engine, ld, t.drive(70 * MIN, 80))
    assert summary(events) == [("open", NIGHT_DRIVING), ("close", NIGHT_DRIVING)]
    assert near(events[0].start, bj(7, 4, 10)) and near(events[1].end, bj(7, 5))

    t = Track(start=bj(7, 1, 30))
    assert fatigue(run(RulesEngine(FenceIndex()), vehicle(2, COACH), t.drive(80 * MIN, 80))) == []


def test_daily_eight_hours_in_24() -> None:
    """Three 3-hour stints with 30-minute rests from 06:00: 06:00-09:00, 09:30-12:30,
    13:00-16:00. The third crosses 8 h of driving at 15:00. It ends with the 16:00 stop."""
    engine = RulesEngine(FenceIndex())
    t = Track(start=bj(6, 6), step=30)
    fixes = []
    for _ in range(3):
        fixes += t.drive(3 * H, 60) + t.stop(30 * MIN)
    events = run(engine, vehicle(1), fixes)
    daily = of(events, FATIGUE_DAILY)
    assert [e.phase for e in daily] == ["open", "close"]
    assert near(daily[0].start, bj(6, 15), 30) and near(daily[1].end, bj(6, 16), 30)
    assert daily[1].details["driving_s"] == 9 * H
    assert stage(events, FATIGUE_CONTINUOUS) == []


def test_daily_window_rolls() -> None:
    """Day 1: 7 h of driving between 06:00 and 14:30 (stints of 2, 2, 2, 1 h with 30 min
    rests). Day 2: driving from 02:00. Until 06:00 on day 2 the window (x - 24 h, x] still
    holds all of day 1, so 8 h is reached after 1 h of day 2 driving: at 03:00."""
    engine = RulesEngine(FenceIndex())
    t = Track(start=bj(6, 6), step=30)
    fixes = []
    for hours in (2, 2, 2, 1):
        fixes += t.drive(hours * H, 60) + t.stop(30 * MIN)
    t.skip((bj(7, 2) - t.t).total_seconds())
    fixes += t.drive(3 * H, 60) + t.stop(30 * MIN)
    daily = of(run(engine, vehicle(1), fixes), FATIGUE_DAILY)
    assert [e.phase for e in daily] == ["open", "close"]
    assert near(daily[0].start, bj(7, 3), 30)


def test_silence_is_no_rest_and_the_wall_clock_confirms_none() -> None:
    """4 h 10 of driving, one stopped fix (ACC off) at 12:10, then silence: ticks an hour
    later close nothing (the wall clock decides no rest). The next report, stopped at 12:50,
    shows the stop held: the rest is confirmed then, and the episodes end at 12:10."""
    engine = RulesEngine(FenceIndex())
    t = Track(start=bj(6, 8))
    events = run(engine, vehicle(1), t.drive(4 * H + 10 * MIN, 60) + t.stop(10, acc=False))
    assert len(stage(events, FATIGUE_CONTINUOUS)) == 1
    for now in (bj(6, 12, 31), bj(6, 13), bj(6, 14)):
        assert fatigue(engine.tick(now)) == []
    t.skip(40 * MIN)
    closed = fatigue(run(engine, vehicle(1), t.stop(10, acc=False)))
    assert [e.phase for e in closed] == ["close"]
    assert near(closed[0].end, bj(6, 12, 10))
    assert fatigue(run(engine, vehicle(1), t.stop(10 * MIN))) == []


def test_a_gap_after_driving_is_no_rest() -> None:
    """Driving 08:00-11:00, 40 min without reports (the last one was driving), driving again
    from 11:40: the silence is unknown, not a rest, so the driving before and after adds up
    (3.5 h reached at 12:10; the silence is not counted as driving either)."""
    engine = RulesEngine(FenceIndex())
    t = Track(start=bj(6, 8))
    events = run(engine, vehicle(1), t.drive(3 * H, 60))
    t.skip(40 * MIN, 60)
    events += run(engine, vehicle(1), t.drive(40 * MIN, 60))
    warn = of(events, FATIGUE_WARNING)
    assert [e.phase for e in warn] == ["open"] and near(warn[0].start, bj(6, 12, 10))


def test_per_driver_count_follows_the_ic_card() -> None:
    """Driver A drives truck 1 08:00-11:00, signs out, signs in to truck 2 at 11:05 and drives
    on: A's count continues (the 5 min change is no rest) and the alarm comes on truck 2 at
    12:05 (4 h of driving), tagged with A. Driver B, who takes truck 1 at 11:05, starts
    from zero."""
    engine = RulesEngine(FenceIndex())
    one, two = vehicle(1), vehicle(2)
    engine.driver(1, "A", bj(6, 8))
    t1 = Track(1, start=bj(6, 8))
    events = run(engine, one, t1.drive(3 * H, 60) + t1.stop(5 * MIN))
    events += engine.driver(1, None, bj(6, 11, 5))
    events += engine.driver(1, "B", bj(6, 11, 5))
    events += engine.driver(2, "A", bj(6, 11, 5))
    t2 = Track(2, start=bj(6, 11, 5), lat=30.1)
    events += run(engine, two, t2.drive(90 * MIN, 60))
    events += run(engine, one, t1.drive(90 * MIN, 60))
    cont = stage(events, FATIGUE_CONTINUOUS)
    assert len(cont) == 1
    assert cont[0].vehicle_id == 2 and cont[0].driver == "A" and near(when(cont[0]), bj(6, 12, 5))
    assert {e.driver for e in fatigue(events)} == {"A"}


def test_late_blind_area_batch_is_merged() -> None:
    """Driving 08:00-11:00 reported live; 11:00-12:00 in a blind area (no live reports); live
    again driving 12:00-12:30. Live alone, the hour's silence looks like a rest: nothing. Then
    the 0x0704 batch for 11:00-12:00 arrives (driving): merged and replayed, it shows 3.5 h at
    11:30, still driving at 11:45, 4 h at 12:00: three episodes, late. They close, not late,
    when the truck then rests from 12:30."""
    engine = RulesEngine(FenceIndex())
    truck = vehicle(1)
    t = Track(start=bj(6, 8))
    live = t.drive(3 * H, 60)
    t.skip(H, 60)
    blind_start = live[-1].fix_time + timedelta(seconds=10)
    live += t.drive(30 * MIN, 60)
    events = run(engine, truck, live)
    assert fatigue(events) == []
    b = Track(start=blind_start)
    batch = b.drive(H, 60, batch=True, received=bj(6, 12, 30))
    assert fatigue(run(engine, truck, batch)) == []  # merged, results at the next live report
    after = run(engine, truck, t.stop(30 * MIN))
    assert summary(after) == [*INCIDENT, ("close", FATIGUE_CONTINUOUS)]
    ev = fatigue(after)
    assert [e.late for e in ev] == [True] * 3 + [False]
    assert near(when(ev[0]), bj(6, 11, 30)) and near(when(ev[1]), bj(6, 11, 45))
    assert near(when(ev[2]), bj(6, 12))
    assert near(ev[3].end, bj(6, 12, 30))
    assert {e.key for e in ev} == {ev[0].key}


def test_late_data_fills_a_gap_the_episode_stays_one() -> None:
    """Driving 08:00-12:30 live (alarm at 12:00), then 40 min of silence while driving on,
    live again 13:10-13:20 and a rest. The silence is no rest, so the alarm stays open; the
    blind-area batch shows the driving went on; the episode closes once, at 13:20."""
    engine = RulesEngine(FenceIndex())
    truck = vehicle(1)
    t = Track(start=bj(6, 8))
    events = run(engine, truck, t.drive(4 * H + 30 * MIN, 60))
    gap_start = t.t
    t.skip(40 * MIN, 60)
    events += run(engine, truck, t.drive(10 * MIN, 60))
    cont = of(events, FATIGUE_CONTINUOUS)
    assert [e.phase for e in cont] == ["update"]
    b = Track(start=gap_start)
    run(engine, truck, b.drive(40 * MIN, 60, batch=True, received=bj(6, 13, 20)))
    after = of(run(engine, truck, t.stop(25 * MIN, acc=False)), FATIGUE_CONTINUOUS)
    assert [(e.phase, e.late) for e in after] == [("close", False)]
    assert after[0].key == cont[0].key and near(after[0].end, bj(6, 13, 20))


def test_late_data_showing_a_rest_in_a_gap_closes_the_episode() -> None:
    """Driving 08:00-12:10 (alarm at 12:00), silence, driving from 12:50: live, the episode
    runs on. The blind-area batch shows the truck parked, ACC off, 12:10-12:50: that was a
    rest, so the episode closes (late) at 12:10, and the count starts again."""
    engine = RulesEngine(FenceIndex())
    truck = vehicle(1)
    t = Track(start=bj(6, 8))
    events = run(engine, truck, t.drive(4 * H + 10 * MIN, 60))
    gap_start = t.t
    t.skip(40 * MIN)
    events += run(engine, truck, t.drive(10 * MIN, 60))
    assert [e.phase for e in of(events, FATIGUE_CONTINUOUS)] == ["update"]
    b = Track(start=gap_start)
    run(engine, truck, b.stop(40 * MIN, acc=False, batch=True, received=bj(6, 13)))
    after = of(run(engine, truck, t.drive(10 * MIN, 60)), FATIGUE_CONTINUOUS)
    assert [(e.phase, e.late) for e in after] == [("close", True)]
    assert near(after[0].end, bj(6, 12, 10))


def test_configurable_thresholds() -> None:
    """Pre-warning at 3 h instead of 3.5 h, from the platform config."""
    settings = RuleSettings.from_dict({"all": {"prewarn_s": 3 * H}})
    t = Track(start=bj(6, 8))
    events = run(RulesEngine(FenceIndex(), settings), vehicle(1), t.drive(3 * H + 5 * MIN, 60))
    warn = of(events, FATIGUE_WARNING)
    assert len(warn) == 1 and near(warn[0].start, bj(6, 11))


def test_vehicle_override_changes_the_limits_mid_stream() -> None:
    """vehicles.overrides can tighten the limit for one vehicle (2 h continuous, warning at
    1.5 h). Applied from the report that carries the new VehicleInfo on: a truck that has
    driven 1 h gets a warning at 1 h 30 and the alarm at 2 h."""
    engine = RulesEngine(FenceIndex())
    t = Track(start=bj(6, 8))
    assert fatigue(run(engine, vehicle(1), t.drive(H, 60))) == []
    strict = vehicle(1, overrides={"continuous_s": 2 * H, "prewarn_s": 1.5 * H})
    events = run(engine, strict, t.drive(H + 10 * MIN, 60))
    assert summary(events) == INCIDENT
    assert near(when(events[0]), bj(6, 9, 30)) and near(when(events[2]), bj(6, 10))
