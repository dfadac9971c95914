"""The rules engine: every position of every vehicle through hygiene and all the rules.

    engine = RulesEngine(index, RuleSettings.from_dict(config))
    engine.set_watchlist({"京A12345": "stolen"})
    events = engine.feed(position, vehicle)       # per durable position, fix order per vehicle
    events += engine.driver(vehicle_id, "0042", at)  # 0x0702 sign-in (None: sign-out)
    events += engine.logout(vehicle_id, at)       # 0x0003
    events += engine.tick(now)                    # every few seconds: offline, late data

Sans-I/O: values in, :class:`~alerts.model.AlertEvent` values out; the caller stores them and
notifies (never the driver for ``late`` events). Every rule follows :class:`Rule` (one ``step``
per fix, one ``tick`` for the wall clock, ``export``/``restore`` per vehicle) and the engine
loops over them. Persistence goes through three calls::

    state = engine.export_state(vehicle_id)   # JSON values (None: nothing known)
    engine.import_state(vehicle_id, state)    # after a restart / on another worker
    changed = engine.dirty()                  # vehicles changed since the last call

A restored vehicle does not judge fixes at or before its restored newest fix again, so the
caller may replay a track over it; open episodes continue under their keys.

Two clocks: fix time decides every rule; ``tick(now)`` (the wall clock) only finds silent
vehicles, ends late sequences gone quiet and judges a silent vehicle's dwell on its own clock.

Per position: late detection (a batch fix, a fix time behind the vehicle's newest, or a fix
received more than ``recent_s`` after its time: "found late", never told to the driver),
hygiene (:mod:`alerts.hygiene`), one ``FenceIndex.classify`` for a usable fix, one
:class:`~alerts.model.Fix`, then the rules in this order: terminal alarms (so an SOS is first in
the result), offline/no-fix, geofences, watchlist (it reads the geofence events), speeding
(usable fixes only), fatigue.

Late data. A fix behind the newest (out of order) cannot go through the live state machines
without corrupting them, so: speeding and terminal alarms run it in a separate late lane (its
episodes are keyed apart and flagged late; the lane ends, closing what it has open at its last
fix, when the batch's fix times go backwards or nothing late arrives for ``late_idle_s``);
fatigue merges it into the subject's timeline and replays; the geofence rule replays it on a
copy of its state from before the gap (see alerts/geofence_rule.py); no-fix ignores late
fixes. A batch fix that is in order (newer than anything seen) goes through the live
machines like any fix and its events are flagged late.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from alerts.fatigue import FatigueRule
from alerts.geofence_rule import GeofenceRule
from alerts.hygiene import NO_FIX, REANCHORED, REJECTED, JumpFilter
from alerts.model import AlertEvent, Fix, VehicleInfo
from alerts.offline import OfflineRule
from alerts.settings import Profile, RuleSettings
from alerts.speeding import SpeedingRule
from alerts.state import dump_position, load_position
from alerts.terminal_alarms import TerminalAlarmRule
from alerts.watchlist import WatchlistRule
from geo.flags import time_untrusted

if TYPE_CHECKING:
    from geo.index import FenceIndex
    from geo.position import Position

_EMPTY: dict[int, int] = {}
#: Version of the exported state's layout; a snapshot of another version is not restored.
STATE_VERSION = 1


class Rule(Protocol):
    """What the engine asks of every rule.

    ``name`` keys the rule's part of an exported state. ``step`` judges one durable position
    (as a :class:`Fix`, in fix-time order per vehicle; ``fix.behind`` marks one older than the
    vehicle's newest) and appends what it causes to ``out``; it may read what rules before it
    appended for the same fix (the watchlist turns geofence events into its own). ``tick``
    is the wall clock, for what is about *now* only (a silent vehicle, a late sequence gone
    quiet); nothing about driving is decided there. ``end_lane`` closes what a late sequence
    left open. ``export``/``restore`` move one vehicle's state as JSON values (None: none).
    Thresholds come with the fix (``fix.profile``, per vehicle class) or at construction
    (:class:`RuleSettings`).
    """

    name: str

    def step(self, fix: Fix, out: list[AlertEvent]) -> None: ...

    def tick(self, now: datetime, out: list[AlertEvent]) -> None: ...

    def export(self, vehicle_id: int) -> Any: ...

    def restore(self, vehicle_id: int, state: Any) -> None: ...


class _Vehicle:
    """What the engine itself keeps per vehicle."""

    __slots__ = (
        "driver",
        "floor",
        "info",
        "jump",
        "late_jump",
        "late_recv",
        "late_t",
        "newest",
        "newest_serial",
        "profile",
    )

    def __init__(self, info: VehicleInfo, profile: Profile) -> None:
        self.info = info
        self.profile = profile
        self.newest = -1e18  # newest fix time judged (epoch seconds)
        self.newest_serial = -1  # the frame serial of that fix
        self.floor = -1e18  # restored state covers fixes up to here: older ones were judged
        self.jump = JumpFilter()
        self.late_jump = JumpFilter()
        self.late_t: float | None = None  # last out-of-order fix time of the running late lane
        self.late_recv = 0.0
        self.driver: str | None = None


class RulesEngine:
    def __init__(self, index: FenceIndex, settings: RuleSettings | None = None) -> None:
        self.index = index
        self.settings = settings or RuleSettings()
        s = self.settings
        self.terminal = TerminalAlarmRule()
        self.offline = OfflineRule(s.offline_s, s.no_fix_s)
        self.watchlist = WatchlistRule(index)
        self.geofences = GeofenceRule(index)
        self.speeding = SpeedingRule(index)
        self.fatigue = FatigueRule()
        #: In this order: terminal alarms first (an SOS leads the result); the watchlist after
        #: the geofences (it reads their events).
        self.rules: list[Rule] = [
            self.terminal,
            self.offline,
            self.geofences,
            self.watchlist,
            self.speeding,
            self.fatigue,
        ]
        self._steps = [rule.step for rule in self.rules]
        self._vehicles: dict[int, _Vehicle] = {}
        self._late: set[int] = set()  # vehicles with a running late lane
        self._pending: list[AlertEvent] = []  # for the next tick (watchlist changes)
        self._dirty: set[int] = set()
        self._recent_s = s.recent_s
        self._jump = (s.jump_kmh, s.jump_tolerance_m, s.jump_reanchor)

    # ------------------------------------------------------------------ per position

    def _vehicle(self, vehicle: VehicleInfo) -> _Vehicle:
        st = self._vehicles.get(vehicle.id)
        if st is None:
            st = self._vehicles[vehicle.id] = _Vehicle(vehicle, self.settings.profile(vehicle))
        elif st.info is not vehicle:
            old = st.info
            if old.vehicle_class != vehicle.vehicle_class or old.overrides != vehicle.overrides:
                st.profile = self.settings.profile(vehicle)
            st.info = vehicle
        return st

    def feed(self, position: Position, vehicle: VehicleInfo) -> list[AlertEvent]:
        """All the rules for one durable position of ``vehicle``; SOS events come first.

        The newest fix judged again (same time and frame serial), or a fix at or before the
        last fix of a restored state, was judged already (a redelivery, a replay after a
        restore): it changes nothing. Another report of the same second (an SOS sent at once)
        is judged.
        """
        vid = vehicle.id
        st = self._vehicles.get(vid)
        if st is None or st.info is not vehicle:
            st = self._vehicle(vehicle)
        if position.extras and time_untrusted(position.extras):
            # Its time (unset clock, 2099) cannot be placed: judged as a report without a fix
            # at its arrival, so it never becomes the newest fix and an alarm in it is live.
            position = replace(position, fix_time=position.received_time, valid=False)
        t = position.fix_time.timestamp()
        if t <= st.floor or (t == st.newest and position.serial == st.newest_serial):
            return []
        self._dirty.add(vid)
        out: list[AlertEvent] = []
        if t < st.newest:
            behind = late = True
            if st.late_t is not None and t < st.late_t:
                self._end_late(vid, st, out)  # a new sequence began
            st.late_t = t
            st.late_recv = position.received_time.timestamp()
            self._late.add(vid)
            jf = st.late_jump
        else:
            behind = False
            # found late: a blind-area batch, or a fix already old when it arrived
            late = position.batch or position.received_time.timestamp() - t > self._recent_s
            st.newest = t
            st.newest_serial = position.serial
            jf = st.jump

        previous = jf.anchor
        verdict = jf.judge(position, t, *self._jump)
        usable = verdict > REJECTED
        if verdict == REANCHORED:
            previous = None  # no trustworthy segment to the old anchor
        fix = Fix(
            position,
            vehicle,
            late,
            usable,
            previous,
            self.index.classify(position.lon, position.lat) if usable else _EMPTY,
            st.driver,
            t,
            behind,
            verdict != NO_FIX,
            st.profile,
        )
        for step in self._steps:
            step(fix, out)
        if out:
            for e in out:
                if e.found is None:
                    e.found = position.fix_time
        return out

    def replace(self, rule: Rule) -> None:
        """Put ``rule`` in the place of the engine's rule of the same name (a benchmark's
        no-op, a test's spy)."""
        index = next(i for i, r in enumerate(self.rules) if r.name == rule.name)
        self.rules[index] = rule
        self._steps = [r.step for r in self.rules]

    # ------------------------------------------------------------------ other messages

    def driver(self, vehicle_id: int, driver: str | None, at: datetime) -> list[AlertEvent]:
        """0x0702 driver identity: ``driver`` (the IC card's qualification number or name)
        signed in at ``at``; None signs the current driver out."""
        st = self._vehicles.get(vehicle_id)
        if st is None:
            st = self._vehicle(VehicleInfo(id=vehicle_id))
        st.driver = driver or None
        self._dirty.add(vehicle_id)
        return self.fatigue.driver(vehicle_id, st.driver, at, st.profile, st.info.long_distance)

    def logout(self, vehicle_id: int, at: datetime) -> list[AlertEvent]:
        """0x0003: the terminal logged out; its silence is no OFFLINE alarm."""
        self._dirty.add(vehicle_id)
        return self.offline.logout(vehicle_id, at) + self.watchlist.end_session(vehicle_id, None)

    def set_watchlist(self, plates: dict[str, str]) -> None:
        """Replace the watchlist (plate -> reason). Episodes of plates taken off it are closed;
        those events come with the next :meth:`tick`."""
        self._pending += self.watchlist.set_watchlist(plates)

    def tick(self, now: datetime | None = None) -> list[AlertEvent]:
        """Wall-clock work: offline vehicles, finished late sequences, fatigue replays of
        merged late data, geofence dwell of vehicles gone quiet. Call every few seconds."""
        now = now or datetime.now(UTC)
        out, self._pending = self._pending, []
        if self._late:
            cutoff = now.timestamp() - self.settings.late_idle_s
            for vid in list(self._late):
                st = self._vehicles[vid]
                if st.late_recv <= cutoff:
                    self._end_late(vid, st, out)
        for rule in self.rules:
            rule.tick(now, out)
        for e in out:
            self._dirty.add(e.vehicle_id)
        return out

    def _end_late(self, vid: int, st: _Vehicle, out: list[AlertEvent]) -> None:
        st.late_t = None
        st.late_jump = JumpFilter()
        self._late.discard(vid)
        self.terminal.end_lane(vid, out)
        self.speeding.end_lane(vid, out)

    # ------------------------------------------------------------------ state

    def export_state(self, vehicle_id: int) -> dict | None:
        """Everything the rules know about one vehicle, as JSON values (None: nothing).

        A running late lane (an out-of-order blind-area sequence) is not included: it is
        short-lived, and its fixes are at or before ``newest``, which a restored engine
        treats as judged.
        """
        st = self._vehicles.get(vehicle_id)
        if st is None:
            return None
        jf = st.jump
        return {
            "version": STATE_VERSION,
            "newest": st.newest,
            "driver": st.driver,
            "jump": {
                "anchor": dump_position(jf.anchor),
                "anchor_t": jf.anchor_t,
                "streak": jf.streak,
                "streak_last": dump_position(jf.streak_last),
                "streak_t": jf.streak_t,
            },
            "rules": {rule.name: rule.export(vehicle_id) for rule in self.rules},
        }

    def import_state(self, vehicle_id: int, state: dict) -> None:
        """Restore what :meth:`export_state` gave (after a restart, or from the worker that
        held the vehicle before). Fixes at or before its newest are then not judged again,
        so replaying the track is harmless; open episodes go on, closed ones stay closed."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"rule state version {state.get('version')!r} is not {STATE_VERSION}")
        st = self._vehicles.get(vehicle_id)
        if st is None:
            st = self._vehicle(VehicleInfo(id=vehicle_id))
        st.newest = st.floor = float(state["newest"])
        st.driver = state["driver"]
        st.late_t = None
        st.late_jump = JumpFilter()
        self._late.discard(vehicle_id)
        jd = state["jump"]
        jf = st.jump = JumpFilter()
        jf.anchor = load_position(jd["anchor"])
        jf.anchor_t = float(jd["anchor_t"])
        jf.streak = int(jd["streak"])
        jf.streak_last = load_position(jd["streak_last"])
        jf.streak_t = float(jd["streak_t"])
        rules = state["rules"]
        for rule in self.rules:
            rule.restore(vehicle_id, rules.get(rule.name))

    def forget(self, vehicle_id: int) -> bool:
        """Drop everything known about a vehicle (another process judges it now, see
        alerts/snapshots.py); True if anything was."""
        known = self._vehicles.pop(vehicle_id, None) is not None
        self._late.discard(vehicle_id)
        self._dirty.discard(vehicle_id)
        for rule in self.rules:
            rule.restore(vehicle_id, None)
        return known

    def dirty(self) -> set[int]:
        """Vehicles whose state changed since the previous call (which this one clears)."""
        out, self._dirty = self._dirty, set()
        return out
