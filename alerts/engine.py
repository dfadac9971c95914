"""The rules engine: every position of every vehicle through hygiene and all the rules.

    engine = RulesEngine(index, RuleSettings.from_dict(config))
    engine.set_watchlist({"京A12345": "stolen"})
    events = engine.feed(position, vehicle)       # per position, in arrival order
    events += engine.driver(vehicle_id, "0042", at)  # 0x0702 sign-in (None: sign-out)
    events += engine.logout(vehicle_id, at)       # 0x0003
    events += engine.tick(now)                    # every few seconds: offline, late data, rests

Sans-I/O: values in, :class:`~alerts.model.AlertEvent` values out; the caller stores them and
notifies (never the driver for ``late`` events). State is per vehicle in dicts (per driver for
fatigue), so it can be rebuilt from the store by replaying positions.

Per position: late detection (a 0x0704 batch fix, or a fix time behind the vehicle's newest),
hygiene (:mod:`alerts.hygiene`), one ``FenceIndex.classify`` for a usable fix, one
:class:`~alerts.model.Fix`, then the rules in this order: terminal alarms (so an SOS is first in
the result), offline/no-fix, watchlist, geofences and speeding (usable fixes only), fatigue.

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
from typing import TYPE_CHECKING

from alerts.fatigue import FatigueRule
from alerts.geofence_rule import GeofenceRule
from alerts.hygiene import NO_FIX, REANCHORED, REJECTED, JumpFilter
from alerts.model import AlertEvent, Fix, VehicleInfo
from alerts.offline import OfflineRule
from alerts.settings import Profile, RuleSettings
from alerts.speeding import SpeedingRule
from alerts.terminal_alarms import TerminalAlarmRule
from alerts.watchlist import WatchlistRule
from geo.flags import time_untrusted

if TYPE_CHECKING:
    from geo.index import FenceIndex
    from geo.position import Position

_EMPTY: dict[int, int] = {}


class _Vehicle:
    """What the engine itself keeps per vehicle."""

    __slots__ = (
        "alarms",
        "driver",
        "info",
        "jump",
        "late_jump",
        "late_recv",
        "late_t",
        "newest",
        "profile",
    )

    def __init__(self, info: VehicleInfo, profile: Profile) -> None:
        self.info = info
        self.profile = profile
        self.newest = -1e18  # newest fix time seen (epoch seconds)
        self.jump = JumpFilter()
        self.late_jump = JumpFilter()
        self.late_t: float | None = None  # last out-of-order fix time of the running late lane
        self.late_recv = 0.0
        self.driver: str | None = None
        self.alarms = False  # the vehicle has reported an alarm bit (terminal rule has state)


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
        self._vehicles: dict[int, _Vehicle] = {}
        self._late: set[int] = set()  # vehicles with a running late lane
        self._pending: list[AlertEvent] = []  # for the next tick (watchlist changes)

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
        """All the rules for one position of ``vehicle``; SOS events come first."""
        vid = vehicle.id
        st = self._vehicles.get(vid)
        if st is None or st.info is not vehicle:
            st = self._vehicle(vehicle)
        profile = st.profile
        if position.extras and time_untrusted(position.extras):
            # Its time (unset clock, 2099) cannot be placed: judged as a report without a fix
            # at its arrival, so it never becomes the newest fix and an alarm in it is live.
            position = replace(position, fix_time=position.received_time, valid=False)
        t = position.fix_time.timestamp()
        out: list[AlertEvent] = []
        if t < st.newest:
            behind = late = True
            if st.late_t is not None and t < st.late_t:
                out += self._end_late(vid, st)  # a new sequence began
            st.late_t = t
            st.late_recv = position.received_time.timestamp()
            self._late.add(vid)
            jf = st.late_jump
        else:
            behind = False
            late = position.batch
            st.newest = t
            jf = st.jump

        s = self.settings
        previous = jf.anchor
        verdict = jf.judge(position, t, s.jump_kmh, s.jump_tolerance_m, s.jump_reanchor)
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
        )

        if position.alarm or st.alarms:
            st.alarms = True  # from now on every report can clear a bit
            self.terminal.step(fix, behind, out)
        self.offline.step(
            vid, position.received_time, None if late else verdict != NO_FIX, st.driver, out
        )
        watchlist = self.watchlist
        if watchlist.plates:
            watchlist.step(fix, out)
        if usable:
            fence_events = self.geofences.feed(fix)
            if fence_events:
                out += fence_events
                if watchlist.plates:
                    out += watchlist.geofence_events(fix, fence_events)
            self.speeding.step(fix, t, profile, behind, out)
        if behind:
            self.fatigue.feed_late(fix, t, profile)
        else:
            self.fatigue.step(fix, t, profile, out)
        return out

    # ------------------------------------------------------------------ other messages

    def driver(self, vehicle_id: int, driver: str | None, at: datetime) -> list[AlertEvent]:
        """0x0702 driver identity: ``driver`` (the IC card's qualification number or name)
        signed in at ``at``; None signs the current driver out."""
        st = self._vehicles.get(vehicle_id)
        if st is None:
            st = self._vehicle(VehicleInfo(id=vehicle_id))
        st.driver = driver or None
        return self.fatigue.driver(vehicle_id, st.driver, at, st.profile, st.info.long_distance)

    def logout(self, vehicle_id: int, at: datetime) -> list[AlertEvent]:
        """0x0003: the terminal logged out; its silence is no OFFLINE alarm."""
        return self.offline.logout(vehicle_id, at) + self.watchlist.end_session(vehicle_id, None)

    def set_watchlist(self, plates: dict[str, str]) -> None:
        """Replace the watchlist (plate -> reason). Episodes of plates taken off it are closed;
        those events come with the next :meth:`tick`."""
        self._pending += self.watchlist.set_watchlist(plates)

    def tick(self, now: datetime | None = None) -> list[AlertEvent]:
        """Time-based work: offline vehicles, finished late sequences, fatigue replays and
        rests of vehicles gone quiet, geofence dwell. Call every few seconds."""
        now = now or datetime.now(UTC)
        out, self._pending = self._pending, []
        events, gone = self.offline.tick(now)
        out += events
        for vid in gone:
            out += self.watchlist.end_session(vid, None)
        if self._late:
            cutoff = now.timestamp() - self.settings.late_idle_s
            for vid in list(self._late):
                st = self._vehicles[vid]
                if st.late_recv <= cutoff:
                    out += self._end_late(vid, st)
        out += self.fatigue.tick(now)
        out += self.geofences.tick(now)
        return out

    def _end_late(self, vid: int, st: _Vehicle) -> list[AlertEvent]:
        st.late_t = None
        st.late_jump = JumpFilter()
        self._late.discard(vid)
        return self.terminal.end_lane(vid) + self.speeding.end_lane(vid)
