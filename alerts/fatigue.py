"""Fatigue: driving time per driver (0x0702 IC card) or, with no driver identified, per vehicle.

Two clocks. Everything here runs on fix time: a report's state covers the fix-time interval
up to the next report, whenever either was received. The wall clock decides nothing: a
backlog uploaded with pauses, a terminal whose clock is hours behind, or a restart between two
reports gets exactly the alarms it would get in real time.

Timeline. Each report has a state: *driving* (speed over ``moving_kmh``), *idling* (stopped
with the ignition on) or *stopped* (ignition off, or not reported). A report's state holds
until the next report, for at most ``hold_s`` (5 min) when it is driving or idling; beyond that
the interval is a *gap*: unknown, neither driving nor rest (a gap is never a rest by itself).
A stopped report holds until the next report however long the silence (*held* stop): a
terminal with the engine off reports rarely or not at all, and its last word was "parked,
engine off". Driving time is the time spent in driving state.

Rest. A rest is ``rest_s`` (20 min) of uninterrupted stop, as the fixes show it. Idling is
stopped but no rest: the vendors' rule is "ACC off for 20 min". A terminal that never reports
ignition counts any 20-min stop as a rest (``use_acc=False`` does the same for a terminal that
reports ACC always on). A shorter stop neither counts as driving nor resets the count (GB/T
19056: continuous driving is the driving time between rests of 20 min or more). A rest is
confirmed by the first report at or after its 20th minute (fix time), never by a tick.

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
* ``FATIGUE_WEEKLY`` (coaches, ``weekly_s``) the same over any 7 days (``weekly_window_s``):
  more than 44 h of driving (道路旅客运输企业安全管理规范 Art. 38(3)). A replay of merged
  late data rebuilds the last day or two from the runs and keeps the older weekly driving.
* ``NIGHT_DRIVING`` for a long-distance coach (``VehicleInfo.long_distance``) driving for
  ``night_ban_min_s`` in 02:00-05:00 Beijing (start = first driving in the window); it also
  ends at 05:00.

Start times are the exact moments a threshold was crossed (between two reports); keys are
``{type}:{start epoch}``, so a driver's episodes stay distinct across vehicles and late finds.

The timeline is kept as run-length *runs* (start, end, state) for the last day or two, and the
live counters are updated per report in O(1) (the rolling 24 h uses a deque of driving
intervals). Late data (fixes behind the vehicle's newest, from 0x0704 blind-area uploads) is
merged into the runs: a late fix can only fall in a gap or a held stop (time covered by
reports is not re-judged), splitting it into what the fix says and what remains unknown. The
subject is then replayed from its runs at the next in-order report or :meth:`FatigueRule.tick`,
and what the replay finds that was not emitted is emitted with ``late=True``: a new episode, a
close, or the continuation of an episode that a held stop had ended too early. A replay never
takes an alert back (an episode it does not reproduce stays open until the next rest).

A driver who signs out and signs in elsewhere within 20 min keeps the count; an episode
stays on the vehicle where it started until the driver rests. A signed-out driver rests on the
fix clock of the vehicle he left (its reports after the sign-out), or of the one he signs in to.
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
    FATIGUE_WEEKLY,
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

#: Report states; GAP (unknown) and HELD (a stop held across a silence) only label intervals.
DRIVE, IDLE, STOP, GAP, HELD = 0, 1, 2, 3, 4
STATE_NAMES = ("drive", "idle", "stop", "gap", "held")

_DAY = DAY_S
_H = 3600.0
_SEVERITY = {
    FATIGUE_WARNING: LOW,
    FATIGUE_ESCALATION: HIGH,
    FATIGUE_CONTINUOUS: HIGH,
    FATIGUE_DAILY: HIGH,
    FATIGUE_WEEKLY: HIGH,
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
    """DRIVE above the moving speed; else IDLE with the ignition on (when it counts), else
    STOP. An implausible speed (``geo.flags``) says nothing about motion: ignition decides."""
    if p.speed_kmh > profile.moving_kmh and not (p.extras and SPEED_IMPLAUSIBLE in p.extras):
        return DRIVE
    if profile.use_acc and p.ignition:
        return IDLE
    return STOP


def span_state(st0: int, span: float, hold: float) -> int:
    """The state of an interval of ``span`` seconds after a report in ``st0``: the report's
    own up to ``hold``; beyond it a stop is held (HELD) and anything else is unknown (GAP)."""
    if st0 in (HELD, GAP):
        return st0
    if span <= hold:
        return st0
    return HELD if st0 == STOP else GAP


class Tally:
    """Driving time in a rolling window (24 h, 7 days): driving intervals [a, b] in a deque and
    their total, which bounds the window's (exact figure computed only when it may be over)."""

    __slots__ = ("spans", "total", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.spans: deque[list[float]] = deque()
        self.total = 0.0

    def add(self, s: float, e: float) -> None:
        spans = self.spans
        if spans and spans[-1][1] == s:
            spans[-1][1] = e
        else:
            spans.append([s, e])
            if len(spans) > 64 and spans[0][1] <= e - self.window:
                self.at(e)  # drop what fell out of the window
        self.total += e - s

    def at(self, t: float) -> float:
        """Driving in (t - window, t]; drops intervals that fell out of the window."""
        w = t - self.window
        spans = self.spans
        while spans and spans[0][1] <= w:
            a, b = spans.popleft()
            self.total -= b - a
        if not spans:
            self.total = 0.0
            return 0.0
        a = spans[0][0]
        return self.total - (w - a if w > a else 0.0)

    def dump(self) -> list:
        return [self.window, self.total, list(self.spans)]

    @classmethod
    def load(cls, d: list) -> Tally:
        tally = cls(float(d[0]))
        tally.total = float(d[1])
        tally.spans = deque([list(x) for x in d[2]])
        return tally


_WINDOWED = (FATIGUE_DAILY, FATIGUE_WEEKLY)

#: The stages of one continuous-driving incident: one alert, warning -> escalation -> alarm.
STAGES = (FATIGUE_WARNING, FATIGUE_ESCALATION, FATIGUE_CONTINUOUS)


class Episode:
    """A fatigue episode as the machine sees it (times in epoch seconds).

    A later stage of a continuous-driving incident has ``lead`` = the incident's first
    episode: it is reported as an ``update`` of the lead's alert, and its close is the lead's
    (``stage`` on the lead is the last stage reached)."""

    __slots__ = (
        "details", "driver", "end", "key", "lead", "stage", "start", "type", "vehicle_id",
    )  # fmt: skip

    def __init__(
        self, type_: str, start: float, vehicle_id: int, driver: str | None, details: dict
    ) -> None:
        self.type = type_
        self.start = start
        self.end: float | None = None
        self.key = f"fatigue:{int(start)}" if type_ in STAGES else f"{type_}:{int(start)}"
        self.vehicle_id = vehicle_id
        self.driver = driver
        self.details = details
        self.lead: Episode | None = None
        self.stage = type_

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
        "weekly",
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
        self.daily = Tally(profile.daily_window_s)
        self.weekly = Tally(profile.weekly_window_s) if profile.weekly_s else None
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
        if hasattr(self, "daily"):  # a new profile for a running machine
            self.daily.window = profile.daily_window_s
            if not profile.weekly_s:
                self.weekly = None
            elif self.weekly is None:
                self.weekly = Tally(profile.weekly_window_s)
            else:
                self.weekly.window = profile.weekly_window_s

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
                weekly = self.weekly
                if (
                    c1 < self.warn_floor
                    and self.daily.total + d < self.p.daily_s
                    and (weekly is None or weekly.total + d < (self.p.weekly_s or 0.0))
                ):
                    self.cont = c1
                    self.rested = False
                    daily = self.daily
                    spans = daily.spans
                    if spans and spans[-1][1] == s:  # Tally.add's usual case, inlined
                        spans[-1][1] = e
                        daily.total += d
                    else:
                        daily.add(s, e)
                    if weekly is not None:
                        weekly.add(s, e)
                    return
            if self.stationary is not None:
                self.stationary = None
                self.rest_run = None
            self.rested = False
            if self.open:
                self._night_close(e, out)
            self._drive(s, e, out)
            return
        if state == GAP:  # unknown: no driving counted, and no rest either
            self.stationary = self.rest_run = None
            if self.open:
                self._night_close(e, out)
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
            if ep.type in _WINDOWED or (ep.lead is None and ep.stage == FATIGUE_CONTINUOUS):
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
        if ep.type == FATIGUE_DAILY:
            return self.daily.at(self.t)
        if ep.type == FATIGUE_WEEKLY and self.weekly is not None:
            return self.weekly.at(self.t)
        return self.cont

    def _open(self, type_: str, at: float, out: list[tuple[str, Episode]], **details) -> Episode:
        ep = Episode(type_, at, self.vehicle_id, self.driver, details)
        if type_ in STAGES:
            for other in self.open.values():
                if other.type in STAGES:
                    ep.lead = lead = other.lead or other
                    lead.stage = type_
                    break
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
        # --- rolling 24 h (and for coaches 7 days) of driving
        self._windowed(FATIGUE_DAILY, self.daily, p.daily_s, s, e, out)
        if self.weekly is not None and p.weekly_s:
            self._windowed(FATIGUE_WEEKLY, self.weekly, p.weekly_s, s, e, out)
        # --- long-distance coach between 02:00 and 05:00
        if self.night_ban:
            self._night_drive(s, e, out)

    def _windowed(
        self,
        kind: str,
        tally: Tally,
        limit: float,
        s: float,
        e: float,
        out: list[tuple[str, Episode]],
    ) -> None:
        """Add [s, e) of driving to ``tally``; open ``kind`` where the window passes ``limit``
        (the kept total bounds the window's: the exact figure only when it may be over)."""
        tally.add(s, e)
        if tally.total >= limit and kind not in self.open and (now := tally.at(e)) >= limit:
            start = max(s, e - (now - limit))
            self._open(kind, start, out, limit_s=limit, window_s=tally.window)

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
                join = span_state(self.last_state, s - end, self.profile.hold_s)
                runs.append([end, s, join, self.last_state, vid])
                self._feed(end, s, join, vid, out)
                last = runs[-1]
            elif s < end:
                s = end
                if e <= s:
                    return
            if last[2] == state and state < GAP and last[4] == vid and last[1] == s:
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
            runs.insert(0, [t, nxt, span_state(state, nxt - t, hold), state, vid])
            return True
        i = bisect.bisect_right(runs, t, key=lambda r: r[0]) - 1
        g0, g1, kind, st0, gvid = runs[i]
        if kind < GAP or t <= g0:
            return False  # covered by reports already (or the gap's own start report)
        runs[i : i + 1] = [
            [g0, t, span_state(st0, t - g0, hold), st0, gvid],
            [t, g1, span_state(state, g1 - t, hold), state, vid],
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


_MACHINE_FIELDS = (
    "t", "cont", "stationary", "rest_run", "rested", "warn_at", "escalated", "night_win",
    "night_first", "night_acc", "night_end", "vehicle_id", "driver",
    "block_start",
)  # fmt: skip
_SUBJECT_FIELDS = (
    "dirty", "last_state", "detached", "prune_at", "vehicle_id", "long_distance",
)  # fmt: skip


def _dump_episode(ep: Episode, index: dict[int, int]) -> list:
    lead = None if ep.lead is None else index[id(ep.lead)]
    return [ep.type, ep.start, ep.end, ep.key, ep.vehicle_id, ep.driver, ep.details, ep.stage, lead]


def _dump_subject(subj: Subject) -> dict:
    m = subj.machine
    table: list[Episode] = []
    index: dict[int, int] = {}
    for ep in [*subj.episodes, *m.open.values()]:
        for x in (ep.lead, ep) if ep.lead is not None else (ep,):
            if id(x) not in index:
                index[id(x)] = len(table)
                table.append(x)
    return {
        "name": subj.name,
        "driver": subj.driver,
        **{f: getattr(subj, f) for f in _SUBJECT_FIELDS},
        "runs": subj.runs,
        "episodes_table": [_dump_episode(ep, index) for ep in table],
        "episodes": [index[id(ep)] for ep in subj.episodes],
        "machine": {
            **{f: getattr(m, f) for f in _MACHINE_FIELDS},
            "daily": m.daily.dump(),
            "weekly": None if m.weekly is None else m.weekly.dump(),
            "open": [[kind, index[id(ep)]] for kind, ep in m.open.items()],
        },
    }


def _load_subject(d: dict) -> Subject:
    subj = Subject(d["name"], d["driver"], _DEFAULT, bool(d["long_distance"]))
    for f in _SUBJECT_FIELDS:
        setattr(subj, f, d[f])
    subj.runs = [list(r) for r in d["runs"]]
    table = []
    leads = []
    for type_, start, end, key, vid, driver, details, stage, lead in d["episodes_table"]:
        ep = Episode(type_, start, vid, driver, dict(details))
        ep.end, ep.key, ep.stage = end, key, stage
        table.append(ep)
        leads.append(lead)
    for ep, lead in zip(table, leads, strict=True):
        ep.lead = None if lead is None else table[lead]
    subj.episodes = [table[i] for i in d["episodes"]]
    m = subj.machine
    md = d["machine"]
    for f in _MACHINE_FIELDS:
        setattr(m, f, md[f])
    m.daily = Tally.load(md["daily"])
    m.weekly = None if md["weekly"] is None else Tally.load(md["weekly"])
    m.open = {kind: table[i] for kind, i in md["open"]}
    return subj


def _overlaps(a: Episode, b: Episode) -> bool:
    a_end = 1e18 if a.end is None else a.end
    b_end = 1e18 if b.end is None else b.end
    return a.start < b_end and b.start < a_end


_DEFAULT = Profile()


class FatigueRule:
    """Fatigue per subject; fed every report of every vehicle (usable or not)."""

    name = "fatigue"

    def __init__(self) -> None:
        self._subjects: dict[str, Subject] = {}
        self._cars: dict[int, _Car] = {}
        self._dirty: set[str] = set()
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
            state = span_state(car.last_state, ts - car.last_t, profile.hold_s)
            old.add(car.last_t, ts, state, car.last_state, vehicle_id, out)
            car.last_t = ts
        old.detached = ts
        old.last_state = STOP  # out of the vehicle: not driving it
        car.left = old if old.machine.open and not old.name.startswith("vehicle:") else None
        new = self._subject(name, driver, profile, ld)
        new.detached = None
        new.last_state = car.last_state
        car.subject = new
        car.history.append((ts, new))
        if len(car.history) > 64:
            del car.history[:32]
        return self._events(out, False)

    # ------------------------------------------------------------------ reports

    def step(self, fix: Fix, out: list[AlertEvent]) -> None:
        """One report (usable or not: speed and ACC still tell motion); a report behind the
        vehicle's newest is merged into the timeline (:meth:`feed_late`)."""
        profile = fix.profile or _DEFAULT
        if not profile.fatigue:
            return
        t = fix.t
        if fix.behind:
            self.feed_late(fix, t, profile)
            return
        p = fix.position
        vid = p.vehicle_id
        car = self._cars.get(vid)
        if car is None:
            car = self._car(vid, profile, fix.vehicle.long_distance)
        subj = car.subject
        if subj.profile is not profile or subj.long_distance != fix.vehicle.long_distance:
            self._subject(subj.name, subj.driver, profile, fix.vehicle.long_distance)
        # motion(p, profile), inlined (the hot path)
        if p.speed_kmh > profile.moving_kmh and not (p.extras and SPEED_IMPLAUSIBLE in p.extras):
            state = DRIVE
        else:
            state = IDLE if profile.use_acc and p.ignition else STOP
        last_t = car.last_t
        trans = self._trans
        if last_t is None or t <= last_t:
            if last_t is None:
                car.last_t = t
                if subj.runs and subj.end < t:
                    join = span_state(subj.last_state, t - subj.end, profile.hold_s)
                    subj.add(subj.end, t, join, subj.last_state, vid, trans)
            car.last_state = subj.last_state = state
        else:
            last_state = car.last_state
            span = t - last_t
            seg = last_state if span <= profile.hold_s else span_state(last_state, span, 0.0)
            runs = subj.runs
            last = runs[-1] if runs else None
            if (
                last is not None
                and last[1] == last_t
                and last[2] == seg
                and seg < GAP
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
            out += self._events(trans, fix.late)
            trans.clear()
        left = car.left
        if left is not None:
            self._rest_away(car, left, t, vid, fix.late, out)

    def _rest_away(
        self, car: _Car, subj: Subject, t: float, vid: int, late: bool, out: list[AlertEvent]
    ) -> None:
        """A driver signed out of this vehicle with episodes open: he has been out of it (a
        stop) up to this report's fix time, unless he signed in somewhere since."""
        if subj.detached is None or not subj.machine.open:
            car.left = None
            return
        if t > subj.end:
            trans: list[tuple[str, Episode]] = []
            subj.add(subj.end, t, HELD, STOP, vid, trans)
            if trans:
                out += self._events(trans, late)

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

    def tick(self, now: datetime, out: list[AlertEvent]) -> None:
        """Replays subjects with merged late data whose vehicle has not reported since (a
        replay only reads the runs: fix time). Nothing else: the wall clock confirms no rest
        and moves no subject's clock."""
        for name in list(self._dirty):
            out += self._replay(self._subjects[name])

    # ------------------------------------------------------------------ state

    def export(self, vehicle_id: int) -> dict | None:
        """The vehicle's fatigue: its last report, and the subject driving it (a driver's
        subject travels with the vehicle that exported it last)."""
        car = self._cars.get(vehicle_id)
        if car is None:
            return None
        return {
            "last_t": car.last_t,
            "last_state": car.last_state,
            "subject": _dump_subject(car.subject),
            "history": [[t, subj.name] for t, subj in car.history],
            "left": None if car.left is None else car.left.name,
        }

    def restore(self, vehicle_id: int, state: dict | None) -> None:
        if state is None:
            self._cars.pop(vehicle_id, None)
            return
        subj = _load_subject(state["subject"])
        known = self._subjects.get(subj.name)
        if known is not None and known.machine.t > subj.machine.t:
            subj = known  # another vehicle brought this driver's newer state already
        else:
            self._subjects[subj.name] = subj
        car = self._cars[vehicle_id] = _Car(subj)
        car.last_t = state["last_t"]
        car.last_state = int(state["last_state"])
        history = []
        for t, name in state["history"]:
            past = subj if name == subj.name else self._subjects.get(name)
            if past is not None:
                history.append((float(t), past))
        if history:
            car.history = history
        car.left = self._subjects.get(state["left"]) if state["left"] else None
        if subj.dirty:
            self._dirty.add(subj.name)

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
        if old.weekly is not None and m.weekly is not None:
            first = subj.runs[0][0]  # the week's driving before the kept runs carries over
            for a, b in old.weekly.spans:
                if a < first:
                    m.weekly.add(a, min(b, first))
        for s, e, state, _st0, vid in subj.runs:
            m.vehicle_id = vid
            m.segment(s, e, state, scratch)
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
        return self._events(trans, True)

    # ------------------------------------------------------------------ events

    def _events(self, trans: list[tuple[str, Episode]], late: bool) -> list[AlertEvent]:
        """Machine transitions as alert events: a later stage of an incident is an update of
        the lead's alert (at the moment it was reached), and only the lead closes."""
        out = []
        for phase, ep in trans:
            lead = ep.lead
            if lead is None:
                kind = ep.stage if phase == "close" else ep.type
                out.append(
                    AlertEvent(
                        phase=phase,  # type: ignore[arg-type]
                        type=kind,
                        vehicle_id=ep.vehicle_id,
                        key=ep.key,
                        start=_dt(ep.start),
                        end=_dt(ep.end) if phase == "close" and ep.end is not None else None,
                        severity=_SEVERITY[kind],
                        late=late,
                        driver=ep.driver,
                        details=ep.details,
                    )
                )
            elif phase == "open":
                out.append(
                    AlertEvent(
                        phase="update",
                        type=ep.type,
                        vehicle_id=lead.vehicle_id,
                        key=lead.key,
                        start=_dt(lead.start),
                        severity=_SEVERITY[ep.type],
                        late=late,
                        driver=ep.driver,
                        details={**ep.details, f"{ep.type}_at": _dt(ep.start).isoformat()},
                        at=_dt(ep.start),
                    )
                )
        return out


class _Car:
    """A vehicle as fatigue sees it: its last report and who is driving it."""

    __slots__ = ("history", "last_state", "last_t", "left", "subject")

    def __init__(self, subject: Subject) -> None:
        self.subject = subject
        self.left: Subject | None = None  # a driver who signed out with episodes open
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
