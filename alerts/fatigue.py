"""Fatigue: driving time per driver (0x0702 IC card) or, with no driver identified, per vehicle.

Timeline. Each report has a state: *driving* (speed over ``moving_kmh``), *idling* (stopped
with the ACC bit set) or *stopped*. A report's state holds until the next report, for at most
``hold_s`` (5 min); a longer silence is a *gap*, counted as a stop: a terminal goes quiet when
the engine is off, and a real blind area is filled in later by its 0x0704 upload (below).
Driving time is the time spent in driving state.

Rest. A rest is ``rest_s`` (20 min) of uninterrupted stop or gap. Idling is stopped but no
rest: the vendors' rule is "ACC off for 20 min". A terminal that never reports ACC has the bit
clear all the time, so for it any 20-min stop is a rest (``use_acc=False`` does the same for a
terminal that reports ACC always on). A shorter stop neither counts as driving nor resets the
count (GB/T 19056: continuous driving is the driving time between rests of 20 min or more).

Alerts (all are episodes that end when a rest is confirmed; end = the moment the vehicle
stopped moving before that rest, i.e. the start of the stationary period, which may begin with
some idling; the close is emitted when the rest is confirmed, 20 min later):

* ``FATIGUE_WARNING`` when continuous driving reaches ``prewarn_s`` (3.5 h); at night for a
  coach the same margin before its night limit (2 h - 30 min).
* ``FATIGUE_ESCALATION`` when the vehicle is driving ``escalation_s`` (15 min) after the warning
  without having rested (a short stop at that moment postpones it to when driving resumes).
* ``FATIGUE_CONTINUOUS`` when continuous driving exceeds ``continuous_s`` (4 h), or for a
  coach ``night_continuous_s`` (2 h) while it is night (22:00-06:00 Beijing). The night limit
  applies to the whole continuous stint: a coach that has driven 3 h by 22:00 is over it then.
* ``FATIGUE_DAILY`` when driving in the rolling ``daily_window_s`` (24 h) exceeds ``daily_s``
  (8 h). After a rest it opens again as soon as the vehicle drives while still over.
* ``NIGHT_DRIVING`` for a long-distance coach (``VehicleInfo.long_distance``) driving for
  ``night_ban_min_s`` in 02:00-05:00 Beijing (start = first driving in the window); it also
  ends at 05:00.

Start times are the exact moments a threshold was crossed (between two reports); keys are
``{type}:{start epoch}``, so a driver's episodes stay distinct across vehicles and late finds.

The timeline is kept as run-length *runs* (start, end, state) for the last day or two, and the
live counters are updated per report in O(1) (the rolling 24 h uses a deque of driving
intervals). Late data (fixes behind the vehicle's newest, from 0x0704 blind-area uploads) is
merged into the runs: a late fix can only fall in a gap (time covered by reports is not
re-judged), splitting it into what the fix says and what remains unknown. The subject is then
replayed from its runs at the next in-order report or :meth:`FatigueRule.tick`, and what the
replay finds that was not emitted is emitted with ``late=True``: a new episode, a close, or
the continuation of an episode that the gap had ended too early. Since a gap counted as a stop,
late data can only add driving, so a replay never takes an alert back.

A driver who signs out and signs in elsewhere within 20 min keeps the count; an episode
stays on the vehicle where it started until the driver rests.
"""

from __future__ import annotations

import bisect
from collections import deque
from datetime import UTC, datetime

from alerts.model import (
    FATIGUE_CONTINUOUS,
    FATIGUE_DAILY,
    FATIGUE_ESCALATION,
    FATIGUE_WARNING,
    HIGH,
    LOW,
    NIGHT_DRIVING,
    AlertEvent,
    Fix,
)
from alerts.settings import Profile
from geo.calendar import DAY_S
from geo.calendar import day_start as bj_day_start
from geo.flags import SPEED_IMPLAUSIBLE
from geo.position import Position

DRIVE, IDLE, STOP, GAP = 0, 1, 2, 3
STATE_NAMES = ("drive", "idle", "stop", "gap")

_DAY = DAY_S
_H = 3600.0
_SEVERITY = {
    FATIGUE_WARNING: LOW,
    FATIGUE_ESCALATION: HIGH,
    FATIGUE_CONTINUOUS: HIGH,
    FATIGUE_DAILY: HIGH,
    NIGHT_DRIVING: HIGH,
}
_MAX_RUNS = 20000
_PRUNE_AT = 256  # runs kept before a prune is tried (amortised O(1) per run)


def _pieces(s: float, e: float) -> list[tuple[float, float, bool]]:
    """[s, e) cut at 06:00 and 22:00 Beijing: (start, end, night)."""
    out = []
    a = s
    while a < e:
        d0 = bj_day_start(a)
        sec = a - d0
        if sec < 6 * _H:
            b, night = d0 + 6 * _H, True
        elif sec < 22 * _H:
            b, night = d0 + 22 * _H, False
        else:
            b, night = d0 + 30 * _H, True
        b = min(b, e)
        out.append((a, b, night))
        a = b
    return out


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def motion(p: Position, profile: Profile) -> int:
    """DRIVE above the moving speed; else IDLE with the ACC on (when ACC counts), else STOP.
    An implausible speed (``geo.flags``) says nothing about motion: ACC decides."""
    if p.speed_kmh > profile.moving_kmh and not (p.extras and SPEED_IMPLAUSIBLE in p.extras):
        return DRIVE
    if profile.use_acc and p.status & 1:
        return IDLE
    return STOP


class Episode:
    """A fatigue episode as the machine sees it (times in epoch seconds)."""

    __slots__ = ("details", "driver", "end", "key", "start", "type", "vehicle_id")

    def __init__(
        self, type_: str, start: float, vehicle_id: int, driver: str | None, details: dict
    ) -> None:
        self.type = type_
        self.start = start
        self.end: float | None = None
        self.key = f"{type_}:{int(start)}"
        self.vehicle_id = vehicle_id
        self.driver = driver
        self.details = details

    def __repr__(self) -> str:
        return f"Episode({self.type}, {self.start}, {self.end}, {self.key})"


class Machine:
    """The fatigue state of one subject, fed timeline segments in time order.

    :meth:`segment` returns the episode transitions it caused, as ("open"|"close", Episode).
    Segments may be any length (a live segment is one report interval, a replayed one a whole
    run): thresholds are found by computing where in the segment they were crossed.
    """

    __slots__ = (
        "block_start",
        "cont",
        "daily",
        "daily_total",
        "driver",
        "escalated",
        "history",
        "limit_floor",
        "night_acc",
        "night_ban",
        "night_end",
        "night_first",
        "night_win",
        "open",
        "p",
        "rest_run",
        "rested",
        "stationary",
        "t",
        "vehicle_id",
        "warn_at",
        "warn_floor",
    )

    def __init__(self, profile: Profile, long_distance: bool, keep_history: bool = False) -> None:
        self.configure(profile, long_distance)
        self.t = -1e18  # consumed up to here
        self.cont = 0.0  # driving seconds since the last rest
        self.stationary: float | None = None  # when the vehicle stopped moving (None: driving)
        self.rest_run: float | None = None  # start of the current uninterrupted stop/gap
        self.rested = True  # the current stationary period is a confirmed rest
        self.warn_at: float | None = None
        self.escalated = False
        self.night_win: float | None = None  # start of the 02:00-05:00 window being counted
        self.night_first: float | None = None
        self.night_acc = 0.0
        self.night_end = 0.0
        self.daily: deque[list[float]] = deque()  # driving intervals [a, b] in the window
        self.daily_total = 0.0
        self.open: dict[str, Episode] = {}
        self.history: list[Episode] | None = [] if keep_history else None
        self.vehicle_id = 0
        self.driver: str | None = None
        self.block_start = -1e18  # stationary start of the last confirmed rest

    def configure(self, profile: Profile, long_distance: bool) -> None:
        """Thresholds from a (new) profile; the counts carry on."""
        self.p = profile
        self.night_ban = profile.night_ban and long_distance
        # the lowest continuous driving at which a warning / an alarm can be due
        night = profile.night_continuous_s
        margin = profile.continuous_s - profile.prewarn_s
        self.limit_floor = min(profile.continuous_s, night or profile.continuous_s)
        self.warn_floor = self.limit_floor - margin

    # ------------------------------------------------------------------ feeding

    def segment(self, s: float, e: float, state: int, out: list[tuple[str, Episode]]) -> None:
        """Consume [s, e) in ``state``; append the transitions it causes to ``out``."""
        if s < self.t:
            s = self.t
        if e <= s:
            return
        self.t = e
        if state == DRIVE:
            if (
                self.stationary is None
                and self.warn_at is None
                and not self.open
                and not self.night_ban
            ):
                # the common case, driving on far from every threshold: just count
                d = e - s
                c1 = self.cont + d
                total = self.daily_total + d
                if c1 < self.warn_floor and total < self.p.daily_s:
                    self.cont = c1
                    self.daily_total = total
                    self.rested = False
                    daily = self.daily
                    if daily and daily[-1][1] == s:
                        daily[-1][1] = e
                    else:
                        daily.append([s, e])
                    return
            if self.stationary is not None:
                self.stationary = None
                self.rest_run = None
            self.rested = False
            if self.open:
                self._night_close(e, out)
            self._drive(s, e, out)
            return
        if self.stationary is None:
            self.stationary = s
        if state == IDLE:
            self.rest_run = None
        elif self.rest_run is None:
            self.rest_run = s
        if self.open:
            self._night_close(e, out)
        if not self.rested and self.rest_run is not None and e - self.rest_run >= self.p.rest_s:
            self._rest(out)

    def _rest(self, out: list[tuple[str, Episode]]) -> None:
        end = self.stationary if self.stationary is not None else self.t
        for ep in self.open.values():
            ep.end = end
            if ep.type in (FATIGUE_CONTINUOUS, FATIGUE_DAILY):
                ep.details = {**ep.details, "driving_s": round(self._driving_at_close(ep))}
            out.append(("close", ep))
        self.open.clear()
        self.rested = True
        self.block_start = end
        self.cont = 0.0
        self.warn_at = None
        self.escalated = False
        self.night_win = self.night_first = None
        self.night_acc = 0.0

    def _driving_at_close(self, ep: Episode) -> float:
        return self.cont if ep.type == FATIGUE_CONTINUOUS else self._daily_at(self.t)

    def _open(self, type_: str, at: float, out: list[tuple[str, Episode]], **details) -> Episode:
        ep = Episode(type_, at, self.vehicle_id, self.driver, details)
        self.open[type_] = ep
        if self.history is not None:
            self.history.append(ep)
        out.append(("open", ep))
        return ep

    def _drive(self, s: float, e: float, out: list[tuple[str, Episode]]) -> None:
        p = self.p
        c0 = self.cont
        self.cont = c0 + (e - s)
        c1 = self.cont
        open_ = self.open
        # --- continuous driving, warning, escalation (cheap test first: most segments of most
        # vehicles are far from any threshold)
        if self.warn_at is None:
            due = c1 >= self.warn_floor
        elif not self.escalated:
            due = True
        else:
            due = FATIGUE_CONTINUOUS not in open_ and c1 >= self.limit_floor
        if due:
            margin = p.continuous_s - p.prewarn_s
            if p.night_continuous_s is None:
                pieces: list[tuple[float, float, bool]] = [(s, e, False)]
            else:
                pieces = _pieces(s, e)
            for a, b, night in pieces:
                limit = p.night_continuous_s if night and p.night_continuous_s else p.continuous_s
                ca = c0 + (a - s)
                cb = ca + (b - a)
                if self.warn_at is None and cb >= limit - margin:
                    self.warn_at = a + max(0.0, limit - margin - ca)
                    self._open(
                        FATIGUE_WARNING, self.warn_at, out, threshold_s=limit - margin, night=night
                    )
                if self.warn_at is not None and not self.escalated:
                    escalate_at = self.warn_at + p.escalation_s
                    if b > escalate_at:
                        self.escalated = True
                        self._open(
                            FATIGUE_ESCALATION,
                            max(a, escalate_at),
                            out,
                            warned_at=_dt(self.warn_at).isoformat(),
                        )
                if FATIGUE_CONTINUOUS not in open_ and cb >= limit:
                    self._open(
                        FATIGUE_CONTINUOUS,
                        a + max(0.0, limit - ca),
                        out,
                        limit_s=limit,
                        night=night,
                    )
        # --- rolling daily driving
        daily = self.daily
        if daily and daily[-1][1] == s:
            daily[-1][1] = e
        else:
            daily.append([s, e])
        self.daily_total += e - s
        # the total of the kept intervals bounds the window's: compute it only when it may be over
        if self.daily_total < p.daily_s:
            if len(daily) > 64:
                self._daily_at(e)  # drop what fell out of the window
        elif FATIGUE_DAILY not in open_ and (now_daily := self._daily_at(e)) >= p.daily_s:
            self._open(
                FATIGUE_DAILY,
                max(s, e - (now_daily - p.daily_s)),
                out,
                limit_s=p.daily_s,
                window_s=p.daily_window_s,
            )
        # --- long-distance coach between 02:00 and 05:00
        if self.night_ban:
            self._night_drive(s, e, out)

    def _daily_at(self, t: float) -> float:
        """Driving in (t - window, t]; drops intervals that fell out of the window."""
        w = t - self.p.daily_window_s
        daily = self.daily
        while daily and daily[0][1] <= w:
            a, b = daily.popleft()
            self.daily_total -= b - a
        if not daily:
            self.daily_total = 0.0
            return 0.0
        a = daily[0][0]
        return self.daily_total - (w - a if w > a else 0.0)

    def _night_drive(self, s: float, e: float, out: list[tuple[str, Episode]]) -> None:
        d0 = bj_day_start(s)
        ws = d0 + 2 * _H
        while ws < e:
            we = ws + 3 * _H
            if we > s:
                a, b = max(s, ws), min(e, we)
                if self.night_win != ws:
                    self.night_win, self.night_first, self.night_acc = ws, None, 0.0
                if NIGHT_DRIVING not in self.open:
                    if self.night_first is None:
                        self.night_first = a
                    self.night_acc += b - a
                    if self.night_acc >= self.p.night_ban_min_s:
                        self.night_end = we
                        self._open(NIGHT_DRIVING, self.night_first, out, window="02:00-05:00")
                if e >= we:
                    self._night_close(e, out)
            ws += _DAY

    def _night_close(self, e: float, out: list[tuple[str, Episode]]) -> None:
        ep = self.open.get(NIGHT_DRIVING)
        if ep is None or e < self.night_end:
            return
        end = self.night_end
        if self.stationary is not None and self.stationary < end:
            end = self.stationary
        ep.end = end
        del self.open[NIGHT_DRIVING]
        self.night_acc = -1e18  # this window is done (a rest resets it)
        out.append(("close", ep))


class Subject:
    """One driver's (or one driverless vehicle's) timeline and machine."""

    __slots__ = (
        "detached",
        "dirty",
        "driver",
        "episodes",
        "last_state",
        "long_distance",
        "machine",
        "name",
        "profile",
        "prune_at",
        "runs",
        "vehicle_id",
        "virtual",
    )

    def __init__(self, name: str, driver: str | None, profile: Profile, long_distance: bool):
        self.name = name
        self.driver = driver
        self.runs: list[list] = []  # [start, end, state, state of the report at start, vehicle]
        self.profile = profile
        self.long_distance = long_distance
        self.machine = Machine(profile, long_distance)
        self.machine.driver = driver
        self.episodes: list[Episode] = []  # emitted and still relevant to a replay
        self.dirty = False
        self.vehicle_id = 0
        self.last_state = STOP
        self.detached: float | None = None
        self.virtual = -1e18  # the live machine ran on (gap) beyond the runs up to here
        self.prune_at = _PRUNE_AT

    @property
    def end(self) -> float:
        return self.runs[-1][1] if self.runs else -1e18

    def add(
        self, s: float, e: float, state: int, st0: int, vid: int, out: list[tuple[str, Episode]]
    ) -> None:
        """Append [s, e) to the timeline (a gap first if it does not join) and feed it to the
        machine; transitions go to ``out``."""
        runs = self.runs
        if runs:
            last = runs[-1]
            end = last[1]
            if s > end:
                runs.append([end, s, GAP, self.last_state, vid])
                self._feed(end, s, GAP, vid, out)
                last = runs[-1]
            elif s < end:
                s = end
                if e <= s:
                    return
            if last[2] == state and state != GAP and last[4] == vid and last[1] == s:
                last[1] = e
            else:
                runs.append([s, e, state, st0, vid])
                if len(runs) > self.prune_at:
                    self.prune(e)
                    self.prune_at = max(_PRUNE_AT, 2 * len(runs))
        else:
            runs.append([s, e, state, st0, vid])
        self._feed(s, e, state, vid, out)

    def _feed(
        self, s: float, e: float, state: int, vid: int, out: list[tuple[str, Episode]]
    ) -> None:
        m = self.machine
        m.vehicle_id = vid
        self.vehicle_id = vid
        n = len(out)
        m.segment(s, e, state, out)
        if len(out) > n:
            self.note(out[n:])

    def note(self, trans: list[tuple[str, Episode]]) -> None:
        """Remember the episodes the machine opened (a replay compares against them)."""
        for phase, ep in trans:
            if phase == "open":
                self.episodes.append(ep)

    def insert_late(self, t: float, state: int, vid: int, hold: float) -> bool:
        """Merge a late report into the runs; True if it changed them."""
        runs = self.runs
        if not runs or t >= runs[-1][1]:
            return False
        if t < runs[0][0]:
            nxt = runs[0][0]
            runs.insert(0, [t, nxt, state if nxt - t <= hold else GAP, state, vid])
            return True
        i = bisect.bisect_right(runs, t, key=lambda r: r[0]) - 1
        g0, g1, kind, st0, gvid = runs[i]
        if kind != GAP or t <= g0:
            return False  # covered by reports already (or the gap's own start report)
        runs[i : i + 1] = [
            [g0, t, st0 if t - g0 <= hold else GAP, st0, gvid],
            [t, g1, state if g1 - t <= hold else GAP, state, vid],
        ]
        return True

    def prune(self, now: float) -> None:
        """Drop runs and closed episodes no replay can need (older than two daily windows and
        than the last rest)."""
        horizon = min(self.machine.block_start, now - 2 * self.profile.daily_window_s)
        runs = self.runs
        k = 0
        while k < len(runs) - 1 and runs[k][1] <= horizon:
            k += 1
        if len(runs) - k > _MAX_RUNS:
            k = len(runs) - _MAX_RUNS
        if k:
            del runs[:k]
        eps = self.episodes
        if eps and eps[0].end is not None and eps[0].end < horizon:
            self.episodes = [ep for ep in eps if ep.end is None or ep.end >= horizon]


def _overlaps(a: Episode, b: Episode) -> bool:
    a_end = 1e18 if a.end is None else a.end
    b_end = 1e18 if b.end is None else b.end
    return a.start < b_end and b.start < a_end


class FatigueRule:
    """Fatigue per subject; fed every report of every vehicle (usable or not)."""

    def __init__(self) -> None:
        self._subjects: dict[str, Subject] = {}
        self._cars: dict[int, _Car] = {}
        self._dirty: set[str] = set()
        self._active: set[str] = set()  # subjects with open episodes (for tick)
        self._trans: list[tuple[str, Episode]] = []  # scratch for the hot path

    # ------------------------------------------------------------------ subjects

    def _subject(self, name: str, driver: str | None, profile: Profile, ld: bool) -> Subject:
        subj = self._subjects.get(name)
        if subj is None:
            subj = self._subjects[name] = Subject(name, driver, profile, ld)
        elif subj.profile is not profile or subj.long_distance != ld:
            subj.profile = profile
            subj.long_distance = ld
            subj.machine.configure(profile, ld)
        return subj

    def _car(self, vid: int, profile: Profile, ld: bool) -> _Car:
        car = self._cars.get(vid)
        if car is None:
            car = self._cars[vid] = _Car(self._subject(f"vehicle:{vid}", None, profile, ld))
        return car

    def driver(
        self, vehicle_id: int, driver: str | None, at: datetime, profile: Profile, ld: bool
    ) -> list[AlertEvent]:
        """0x0702: ``driver`` signed in at ``at`` (None: signed out)."""
        car = self._car(vehicle_id, profile, ld)
        name = f"driver:{driver}" if driver else f"vehicle:{vehicle_id}"
        old = car.subject
        if old.name == name:
            return []
        ts = at.timestamp()
        if car.last_t is not None and ts < car.last_t:
            ts = car.last_t
        out: list[tuple[str, Episode]] = []
        if car.last_t is not None and ts > car.last_t:
            state = car.last_state if ts - car.last_t <= profile.hold_s else GAP
            old.add(car.last_t, ts, state, car.last_state, vehicle_id, out)
            car.last_t = ts
        old.detached = ts
        new = self._subject(name, driver, profile, ld)
        new.detached = None
        new.last_state = car.last_state
        car.subject = new
        car.history.append((ts, new))
        if len(car.history) > 64:
            del car.history[:32]
        self._track(old)
        return self._events(out, False)

    # ------------------------------------------------------------------ reports

    def feed(self, fix: Fix, t: float, profile: Profile) -> list[AlertEvent]:
        """An in-order report (``t`` = fix time, epoch seconds)."""
        out: list[AlertEvent] = []
        self.step(fix, t, profile, out)
        return out

    def step(self, fix: Fix, t: float, profile: Profile, out: list[AlertEvent]) -> None:
        """:meth:`feed` appending to ``out`` (the engine's hot path)."""
        if not profile.fatigue:
            return
        p = fix.position
        vid = p.vehicle_id
        car = self._cars.get(vid)
        if car is None:
            car = self._car(vid, profile, fix.vehicle.long_distance)
        subj = car.subject
        if subj.profile is not profile or subj.long_distance != fix.vehicle.long_distance:
            self._subject(subj.name, subj.driver, profile, fix.vehicle.long_distance)
        state = motion(p, profile)
        last_t = car.last_t
        trans = self._trans
        if last_t is None or t <= last_t:
            if last_t is None:
                car.last_t = t
                if subj.runs and subj.end < t:
                    subj.add(subj.end, t, GAP, subj.last_state, vid, trans)
            car.last_state = subj.last_state = state
        else:
            last_state = car.last_state
            seg = last_state if t - last_t <= profile.hold_s else GAP
            runs = subj.runs
            last = runs[-1] if runs else None
            if (
                last is not None
                and last[1] == last_t
                and last[2] == seg
                and seg != GAP
                and last[4] == vid
            ):
                last[1] = t  # the run goes on (Subject.add, inlined)
                m = subj.machine
                m.vehicle_id = vid
                m.segment(last_t, t, seg, trans)
                if trans:
                    subj.note(trans)
            else:
                subj.add(last_t, t, seg, last_state, vid, trans)
            car.last_t = t
            car.last_state = subj.last_state = state
            if subj.dirty and not p.batch:
                out += self._replay(subj)
        if trans:
            self._track(subj)
            out += self._events(trans, fix.late)
            trans.clear()

    def feed_late(self, fix: Fix, t: float, profile: Profile) -> list[AlertEvent]:
        """A report behind the vehicle's newest: merged into its subject's runs; the results
        come at the next in-order report or tick."""
        if not profile.fatigue:
            return []
        p = fix.position
        car = self._cars.get(p.vehicle_id)
        if car is None:
            return []
        subj = car.subject_at(t)
        state = motion(p, profile)
        if subj.insert_late(t, state, p.vehicle_id, profile.hold_s):
            subj.dirty = True
            self._dirty.add(subj.name)
        return []

    def tick(self, now: datetime) -> list[AlertEvent]:
        """Replays subjects with merged late data; confirms rests of subjects that have gone
        quiet while stopped (or signed out, or silent longer than ``hold_s``)."""
        n = now.timestamp()
        out: list[AlertEvent] = []
        for name in list(self._dirty):
            out += self._replay(self._subjects[name])
        for name in list(self._active):
            subj = self._subjects[name]
            m = subj.machine
            if not m.open:
                self._active.discard(name)
                continue
            end = max(subj.end, m.t)
            if n <= end:
                continue
            if subj.detached is not None or n - subj.end > subj.profile.hold_s:
                state = GAP
            elif subj.last_state == STOP:
                state = STOP
            else:
                continue
            trans: list[tuple[str, Episode]] = []
            m.segment(end, n, state, trans)
            subj.virtual = max(subj.virtual, n)
            out += self._events(trans, False)
            if not m.open:
                self._active.discard(name)
        return out

    # ------------------------------------------------------------------ replay

    def _replay(self, subj: Subject) -> list[AlertEvent]:
        """Recompute the subject from its runs; emit (late) what the live machine missed."""
        subj.dirty = False
        self._dirty.discard(subj.name)
        if not subj.runs:
            return []
        old = subj.machine
        m = Machine(subj.profile, subj.long_distance, keep_history=True)
        m.driver = subj.driver
        scratch: list[tuple[str, Episode]] = []  # the replay's own transitions: see history
        for s, e, state, _st0, vid in subj.runs:
            m.vehicle_id = vid
            m.segment(s, e, state, scratch)
        if subj.virtual > m.t:
            m.segment(m.t, subj.virtual, GAP, scratch)
        trans: list[tuple[str, Episode]] = []
        emitted = subj.episodes
        for r in m.history or ():
            same = [x for x in emitted if x.type == r.type and _overlaps(x, r)]
            if not same:
                trans.append(("open", r))
                if r.end is not None:
                    trans.append(("close", r))
                emitted.append(r)
                continue
            running = next((x for x in same if x.end is None), None)
            if running is not None:
                r.key, r.start, r.vehicle_id, r.driver = (
                    running.key,
                    running.start,
                    running.vehicle_id,
                    running.driver,
                )
                if r.end is not None:
                    trans.append(("close", r))
                emitted[emitted.index(running)] = r
                continue
            last = max(same, key=lambda x: x.end or 0.0)
            if r.end is None or r.end > (last.end or 0.0):
                # the live machine ended it at a gap that late data shows was driving
                cont = Episode(
                    r.type,
                    last.end or r.start,
                    last.vehicle_id,
                    last.driver,
                    {**r.details, "continues": last.key},
                )
                cont.end = r.end
                trans.append(("open", cont))
                if cont.end is not None:
                    trans.append(("close", cont))
                elif m.open.get(r.type) is r:
                    m.open[r.type] = cont
                emitted.append(cont)
            r.key, r.start, r.vehicle_id, r.driver = (
                last.key,
                last.start,
                last.vehicle_id,
                last.driver,
            )
        for x in emitted:  # open before, not reproduced (older than the runs): keep it running
            if (
                x.end is None
                and x.type not in m.open
                and all(x is not r for r in (m.history or ()))
            ):
                m.open[x.type] = x
        m.history = None
        subj.machine = m
        del old
        self._track(subj)
        return self._events(trans, True)

    # ------------------------------------------------------------------ events

    def _track(self, subj: Subject) -> None:
        if subj.machine.open or subj.detached is not None:
            self._active.add(subj.name)

    def _events(self, trans: list[tuple[str, Episode]], late: bool) -> list[AlertEvent]:
        return [
            AlertEvent(
                phase=phase,  # type: ignore[arg-type]
                type=ep.type,
                vehicle_id=ep.vehicle_id,
                key=ep.key,
                start=_dt(ep.start),
                end=_dt(ep.end) if phase == "close" and ep.end is not None else None,
                severity=_SEVERITY[ep.type],
                late=late,
                driver=ep.driver,
                details=ep.details,
            )
            for phase, ep in trans
        ]


class _Car:
    """A vehicle as fatigue sees it: its last report and who is driving it."""

    __slots__ = ("history", "last_state", "last_t", "subject")

    def __init__(self, subject: Subject) -> None:
        self.subject = subject
        self.last_t: float | None = None
        self.last_state = STOP
        # (sign-in/out time, subject from then on), for late reports
        self.history: list[tuple[float, Subject]] = [(-1e18, subject)]

    def subject_at(self, t: float) -> Subject:
        h = self.history
        if t >= h[-1][0]:
            return self.subject
        i = bisect.bisect_right(h, t, key=lambda x: x[0]) - 1
        return h[max(i, 0)][1]
