"""The geofence rule: enter/exit with hysteresis, dwell, forbidden zones, route deviation,
and fences skipped over between sparse fixes. Pure: values in, :class:`AlertEvent` out.

State, per vehicle and fence, is the *confirmed side* (inside or outside). A usable fix
classified 1 (inside beyond the margin) or absent (outside beyond it) on the other side starts
a *pending* change; the change is confirmed by a later fix still on that side at least
``min_time_s`` after the first one, and dated from that first fix. A fix back on the confirmed
side cancels it; a fix in the margin band (0) neither confirms nor cancels. So a parked vehicle
whose fixes jitter across an edge never flaps: within the band nothing happens, and excursions
beyond it shorter than ``min_time_s`` are forgotten.

Events (``key`` is ``f"{type}:{fence_id}"``; details carry ``fence_id``, ``fence_name``,
``kind``):

* GEOFENCE_ENTER / GEOFENCE_EXIT (severity LOW), for every kind except speed_limit (unless the
  fence is ``watched``): an *instant*, emitted as an ``open`` immediately followed by a
  ``close``, both with ``start == end`` = the first fix on the new side (or the estimated time
  of a crossing). They need no handling: the store records them closed
  (:data:`~alerts.model.RECORD_ONLY`).
* FORBIDDEN_ZONE (HIGH): one alert per passage through a forbidden fence during its active
  window: opens at the confirmed entry (or at the first fix in the window if the vehicle was
  already inside), closes at the confirmed exit (or the first fix after the window). Entering
  and leaving a forbidden fence while it is active make no ENTER/EXIT of their own: the
  passage is one incident to handle, not three.
* ROUTE_DEVIATION (MEDIUM): opens when a vehicle that was inside a route fence leaves it
  (confirmed, during the window), closes when it is back (a vehicle that never was on the
  route has not deviated from it).
* GEOFENCE_DWELL (MEDIUM), for fences with ``max_dwell_s``: opens once the stay is longer
  (at a fix, or at :meth:`GeofenceRule.tick` for a vehicle gone quiet), dated from the entry;
  closes at the exit. details ``max_dwell_s``, and ``dwell_s`` on the close.
* A crossing: two consecutive usable fixes both outside a fence while the straight segment
  between them passes through it (at most ``max_crossing_gap_s`` apart) gives an ENTER and an
  EXIT at the times interpolated along the segment, with ``{"crossed": true}``, and for a
  forbidden zone a FORBIDDEN_ZONE episode opened and closed at those times.

Events are produced only for fences that apply to the vehicle, and enter/exit/episode starts
only while the fence is active (its windows, Beijing time). ``late`` is copied from the fix.
Fixes older than the vehicle's newest (a 0x0704 blind-area batch after live data resumed) are
replayed on a separate copy of the state as it was before the gap they fill, so they cannot
disturb the live state; their events have keys ending in ``:late`` (``forbidden_zone:3:late``)
so the store never mixes them with a live episode of the same fence, and their episodes are
emitted whole (open and close together) once they end, or cut at the batch's last fix when the
batch goes quiet (``details["truncated"]``). Episodes already open before the gap stay with the
live timeline.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from alerts.model import (
    FORBIDDEN_ZONE,
    GEOFENCE_DWELL,
    GEOFENCE_ENTER,
    GEOFENCE_EXIT,
    HIGH,
    LOW,
    MEDIUM,
    ROUTE_DEVIATION,
    AlertEvent,
    Fix,
    VehicleInfo,
)
from alerts.state import at, dump_position, load_position, ts, when
from geo.fences import FORBIDDEN, LIMIT_KINDS, ROUTE, Geofence
from geo.index import FenceIndex
from geo.position import Position

#: Kinds with conditions that change while the side does not (windows opening and closing).
_ONGOING = (FORBIDDEN, ROUTE)

SEVERITY = {
    GEOFENCE_ENTER: LOW,
    GEOFENCE_EXIT: LOW,
    GEOFENCE_DWELL: MEDIUM,
    FORBIDDEN_ZONE: HIGH,
    ROUTE_DEVIATION: MEDIUM,
}


@dataclass(slots=True)
class _FenceState:
    """One vehicle's state for one fence (kept only while not plainly outside)."""

    inside: bool = False  # the confirmed side
    since: datetime | None = None  # first fix on the confirmed side
    pending: datetime | None = None  # first fix beyond the margin on the other side
    episodes: dict[str, datetime] = field(default_factory=dict)  # open episode type -> start

    def copy(self) -> _FenceState:
        return _FenceState(self.inside, self.since, self.pending, dict(self.episodes))

    @property
    def idle(self) -> bool:
        return not self.inside and self.pending is None and not self.episodes


@dataclass(slots=True)
class _Lane:
    """A timeline of one vehicle: the live one, or a replay of late fixes."""

    states: dict[int, _FenceState] = field(default_factory=dict)
    last: Position | None = None  # last usable fix
    last_fences: dict[int, int] = field(default_factory=dict)
    last_late: bool = False
    replay: bool = False
    held: dict[str, AlertEvent] = field(default_factory=dict)  # replay: opens awaiting a close
    inherited: set[str] = field(default_factory=set)  # replay: keys the live timeline owns
    seen: datetime | None = None  # replay: received time of its last fix
    last_t: float = -1e18  # fix time of ``last``, epoch seconds (the hot path compares floats)

    @property
    def last_time(self) -> datetime | None:
        return self.last.fix_time if self.last is not None else None

    def copy(self, replay: bool) -> _Lane:
        states = {fid: st.copy() for fid, st in self.states.items()}
        return _Lane(
            states=states,
            last=self.last,
            last_fences=self.last_fences,
            last_late=self.last_late,
            replay=replay,
            inherited={f"{kind}:{fid}:late" for fid, st in states.items() for kind in st.episodes},
            last_t=self.last_t,
        )


@dataclass(slots=True)
class _Vehicle:
    info: VehicleInfo
    live: _Lane = field(default_factory=_Lane)
    snapshot: _Lane | None = None  # the live lane as it was before its last gap
    replay: _Lane | None = None
    version: int = -1  # index version the applies cache is for
    applies: dict[int, int] = field(default_factory=dict)  # fence id -> _concern()


class GeofenceRule:
    """Geofence alerts for every vehicle, fed fix by fix (see the module docstring).

    ``gap_s``: a live gap at least this long is one a blind-area batch may fill later (the
    state before it is kept for that replay). ``replay_idle_s``: a replay with no new late fix
    for this long (received time) is over; :meth:`tick` cuts its open episodes.
    """

    name = "geofence"

    def __init__(
        self,
        index: FenceIndex,
        max_crossing_gap_s: float = 900.0,
        gap_s: float = 60.0,
        replay_idle_s: float = 120.0,
    ) -> None:
        self.index = index
        self.max_crossing_gap_s = max_crossing_gap_s
        self.gap_s = gap_s
        self.replay_idle_s = replay_idle_s
        self._vehicles: dict[int, _Vehicle] = {}
        self._dwell_watch: dict[tuple[int, int], None] = {}  # (vehicle, fence) inside, no dwell
        self._replaying: dict[int, None] = {}

    # ------------------------------------------------------------------ feeding

    def step(self, fix: Fix, events: list[AlertEvent]) -> None:
        """The events one fix causes (usually none). Unusable fixes change nothing."""
        if not fix.usable:
            return
        pos = fix.position
        veh = self._vehicles.get(pos.vehicle_id)
        if veh is None:
            if not self.index.fences:
                return  # nothing to judge, nothing to end: no state until there are fences
            veh = self._vehicles[pos.vehicle_id] = _Vehicle(fix.vehicle)
        if veh.version != self.index.version or (
            veh.info is not fix.vehicle and veh.info != fix.vehicle
        ):
            self._refresh(veh, fix.vehicle, pos.fix_time, events)
        lane = veh.live
        last_t = lane.last_t
        if fix.t < last_t:
            lane = self._replay_lane(veh, pos.fix_time, events)
            lane.seen = pos.received_time
        else:
            if fix.t - last_t >= self.gap_s and lane.last is not None:
                veh.snapshot = lane.copy(replay=True)
            fences = fix.fences
            if not fences and fences is lane.last_fences and not lane.states:
                # Still in the same empty cell (one dict per such cell: index.classify), in no
                # fence and with no state: nothing skipped over, nothing to decide.
                lane.last, lane.last_t, lane.last_late = pos, fix.t, fix.late
                return
        self._step(veh, lane, fix, events)

    def tick(self, now: datetime, events: list[AlertEvent]) -> None:
        """Wall-clock events: dwell limits passed by vehicles that report no more, and the
        end of replays that went quiet. A silent vehicle's dwell is judged on its own fix
        clock (its last fix time plus the wall time since that fix was received), so a
        terminal whose clock lags, or a backlog, is not judged on our clock."""
        for vid, fid in list(self._dwell_watch):
            veh = self._vehicles.get(vid)
            st = veh.live.states.get(fid) if veh else None
            fence = self.index.fences.get(fid)
            if veh is None or st is None or fence is None or not st.inside or not fence.max_dwell_s:
                del self._dwell_watch[vid, fid]
                continue
            last = veh.live.last
            if last is None:
                continue
            silent = now - last.received_time
            if silent.total_seconds() < self.gap_s:
                continue  # still reporting: its fixes judge the dwell
            clock = last.fix_time + silent
            self._check_dwell(veh, veh.live, fence, st, clock, veh.live.last_late, None, events)
        for vid in list(self._replaying):
            veh = self._vehicles.get(vid)
            lane = veh.replay if veh else None
            if veh is None or lane is None:
                del self._replaying[vid]
            elif lane.seen is not None and (now - lane.seen).total_seconds() >= self.replay_idle_s:
                self._end_replay(veh, events)

    def export(self, vehicle_id: int) -> dict | None:
        """The live lane (a running replay of late fixes is not kept: see the engine)."""
        veh = self._vehicles.get(vehicle_id)
        if veh is None:
            return None
        lane = veh.live
        return {
            "states": [
                [
                    fid,
                    st.inside,
                    ts(st.since),
                    ts(st.pending),
                    [[kind, start.timestamp()] for kind, start in st.episodes.items()],
                ]
                for fid, st in lane.states.items()
            ],
            "last": dump_position(lane.last),
            "fences": [[fid, v] for fid, v in lane.last_fences.items()],
            "late": lane.last_late,
        }

    def restore(self, vehicle_id: int, state: dict | None) -> None:
        self.forget(vehicle_id)
        if state is None:
            return
        veh = self._vehicles[vehicle_id] = _Vehicle(VehicleInfo(id=vehicle_id))
        lane = veh.live
        for fid, inside, since, pending, episodes in state["states"]:
            lane.states[int(fid)] = _FenceState(
                bool(inside), at(since), at(pending), {k: when(v) for k, v in episodes}
            )
            if inside:
                self._dwell_watch[vehicle_id, int(fid)] = None  # tick drops what needs none
        lane.last = load_position(state["last"])
        lane.last_t = lane.last.fix_time.timestamp() if lane.last is not None else -1e18
        lane.last_fences = {int(fid): int(v) for fid, v in state["fences"]}
        lane.last_late = bool(state["late"])

    def forget(self, vehicle_id: int) -> None:
        """Drop a vehicle's state (deprovisioned)."""
        self._vehicles.pop(vehicle_id, None)
        self._replaying.pop(vehicle_id, None)
        for key in [k for k in self._dwell_watch if k[0] == vehicle_id]:
            del self._dwell_watch[key]

    # ------------------------------------------------------------------ lanes

    def _refresh(
        self, veh: _Vehicle, info: VehicleInfo, at: datetime, events: list[AlertEvent]
    ) -> None:
        """The vehicle's facts or the fences changed: recompute which fences apply, and end
        what fences that are gone (or no longer apply) had open."""
        veh.info = info
        veh.version = self.index.version
        veh.applies = {}
        for lane in (veh.live, veh.replay):
            if lane is None:
                continue
            for fid in list(lane.states):
                fence = self.index.fences.get(fid)
                if fence is not None and self._applies(veh, fence):
                    continue
                st = lane.states.pop(fid)
                end = lane.last_time or at
                for kind, start in list(st.episodes.items()):
                    reason = "fence_removed" if fence is None else "no_longer_applies"
                    self._close(
                        lane, veh, kind, fid, fence, start, end, lane.last_late, None,
                        {reason: True}, events,
                    )  # fmt: skip
                if not lane.replay:
                    self._dwell_watch.pop((info.id, fid), None)

    def _replay_lane(self, veh: _Vehicle, at: datetime, events: list[AlertEvent]) -> _Lane:
        lane = veh.replay
        if lane is not None and lane.last_time is not None and at >= lane.last_time:
            return lane
        if lane is not None:
            self._end_replay(veh, events)
        snapshot = veh.snapshot
        if snapshot is not None and snapshot.last_time is not None and snapshot.last_time <= at:
            lane = snapshot.copy(replay=True)
        else:
            lane = _Lane(replay=True)  # nothing known before it: its first fix sets the sides
        veh.replay = lane
        self._replaying[veh.info.id] = None
        return lane

    def _end_replay(self, veh: _Vehicle, events: list[AlertEvent]) -> None:
        lane = veh.replay
        veh.replay = None
        self._replaying.pop(veh.info.id, None)
        if lane is None:
            return
        for opened in list(lane.held.values()):
            end = lane.last_time or opened.start
            close = _copy_event(opened, "close", end)
            close.details = {**close.details, "truncated": True}
            events.extend((opened, close))
        lane.held.clear()

    # ------------------------------------------------------------------ one fix

    def _applies(self, veh: _Vehicle, fence: Geofence) -> bool:
        """Whether the fence concerns the vehicle and can cause an event at all (a plain
        speed-limit area only sets a limit: the speeding rule's business, not this one's)."""
        known = veh.applies.get(fence.id)
        if known is None:
            known = veh.applies[fence.id] = _concern(fence, veh.info)
        return known > _IGNORED

    def _step(self, veh: _Vehicle, lane: _Lane, fix: Fix, events: list[AlertEvent]) -> None:
        pos = fix.position
        fences = fix.fences
        prev = lane.last
        if (
            prev is not None
            and fences is not lane.last_fences  # the same dict: one fixed cell (index.classify)
            and fix.t - lane.last_t <= self.max_crossing_gap_s
        ):
            crossed = self.index.crossed_between(
                prev.lon, prev.lat, pos.lon, pos.lat, lane.last_fences, fences
            )
            for fid in crossed:
                skipped = self.index.fences[fid]
                self._crossing(veh, lane, skipped, prev, pos, fix.late, fix.driver, events)

        states = lane.states
        if fences or states:  # (most fixes are in no fence and have no state: done)
            t = pos.fix_time
            late = fix.late
            driver = fix.driver
            first = prev is None
            index_fences = self.index.fences
            if len(fences) == 1 and (not states or states.keys() <= fences.keys()):
                fids: Iterable[int] = fences  # one fence (the usual case): nothing to sort
            else:
                fids = sorted(fences.keys() | states.keys()) if states else sorted(fences)
            applies = veh.applies
            for fid in fids:
                concern = applies.get(fid)  # _applies' cache, read inline (most fixes stop here)
                if concern is None:
                    fence = index_fences.get(fid)
                    if fence is None:
                        continue
                    concern = applies[fid] = _concern(fence, veh.info)
                if concern == _IGNORED:
                    continue
                value = fences.get(fid)
                st = states.get(fid)
                if st is None:
                    if value == 0:
                        continue  # in the band with no state: it decides nothing, makes none
                elif (
                    st.pending is None
                    and value != 0
                    and (value == 1) == st.inside
                    and (
                        concern == _STEADY
                        or (
                            concern == _ALWAYS_FORBIDDEN
                            and st.inside
                            and FORBIDDEN_ZONE in st.episodes
                        )
                    )
                ):
                    # still on its side, and nothing that runs on in time can change (a
                    # forbidden zone with no windows and its passage open stays as it is)
                    continue
                fence = index_fences[fid]
                if st is None:
                    st = states[fid] = _FenceState()
                    if first:  # the first fix sets the sides silently
                        st.inside, st.since = value == 1, t
                        if st.inside and fence.max_dwell_s and not lane.replay:
                            self._dwell_watch[veh.info.id, fid] = None
                self._advance(veh, lane, fence, st, value, t, late, driver, events)
                if st.idle:
                    del states[fid]
        lane.last = pos
        lane.last_t = fix.t
        lane.last_fences = fences
        lane.last_late = fix.late

    def _advance(
        self,
        veh: _Vehicle,
        lane: _Lane,
        fence: Geofence,
        st: _FenceState,
        value: int | None,
        t: datetime,
        late: bool,
        driver: str | None,
        events: list[AlertEvent],
    ) -> None:
        if value != 0:  # beyond the margin on one side (the band decides nothing)
            inside = value == 1
            if inside == st.inside:
                st.pending = None
            else:
                if st.pending is None:
                    st.pending = t
                if (t - st.pending).total_seconds() >= fence.min_time_s:
                    start = st.pending
                    st.inside, st.since, st.pending = inside, start, None
                    if inside:
                        self._entered(veh, lane, fence, st, start, late, driver, events)
                    else:
                        self._exited(veh, lane, fence, st, start, late, driver, events)
        episodes = st.episodes
        if st.inside:
            if fence.kind == FORBIDDEN:
                active = fence.active(t)
                if active and FORBIDDEN_ZONE not in episodes:
                    since = st.since or t
                    start = since if since == t or fence.active(since) else t
                    self._open(lane, veh, FORBIDDEN_ZONE, fence, start, late, driver, {}, events)
                elif not active and FORBIDDEN_ZONE in episodes:
                    self._close_episode(
                        lane, veh, FORBIDDEN_ZONE, fence, st, t, late, driver,
                        {"window_ended": True}, events,
                    )  # fmt: skip
            if fence.max_dwell_s and GEOFENCE_DWELL not in episodes:
                self._check_dwell(veh, lane, fence, st, t, late, driver, events)
        elif fence.kind == ROUTE and ROUTE_DEVIATION in episodes and not fence.active(t):
            self._close_episode(
                lane, veh, ROUTE_DEVIATION, fence, st, t, late, driver,
                {"window_ended": True}, events,
            )  # fmt: skip

    def _entered(
        self,
        veh: _Vehicle,
        lane: _Lane,
        fence: Geofence,
        st: _FenceState,
        start: datetime,
        late: bool,
        driver: str | None,
        events: list[AlertEvent],
    ) -> None:
        if _records(fence) and fence.active(start) and fence.kind != FORBIDDEN:
            # (a forbidden zone's passage is its FORBIDDEN_ZONE alert, opened next)
            self._instant(lane, veh, GEOFENCE_ENTER, fence, start, late, driver, {}, events)
        if ROUTE_DEVIATION in st.episodes:
            self._close_episode(
                lane, veh, ROUTE_DEVIATION, fence, st, start, late, driver, {}, events
            )
        if fence.max_dwell_s and not lane.replay:
            self._dwell_watch[veh.info.id, fence.id] = None

    def _exited(
        self,
        veh: _Vehicle,
        lane: _Lane,
        fence: Geofence,
        st: _FenceState,
        start: datetime,
        late: bool,
        driver: str | None,
        events: list[AlertEvent],
    ) -> None:
        passage = fence.kind == FORBIDDEN and FORBIDDEN_ZONE in st.episodes
        if _records(fence) and fence.active(start) and not passage:
            self._instant(lane, veh, GEOFENCE_EXIT, fence, start, late, driver, {}, events)
        for kind in (FORBIDDEN_ZONE, GEOFENCE_DWELL):
            if kind in st.episodes:
                self._close_episode(lane, veh, kind, fence, st, start, late, driver, {}, events)
        if not lane.replay:
            self._dwell_watch.pop((veh.info.id, fence.id), None)
        if fence.kind == ROUTE and fence.active(start):
            self._open(lane, veh, ROUTE_DEVIATION, fence, start, late, driver, {}, events)

    def _check_dwell(
        self,
        veh: _Vehicle,
        lane: _Lane,
        fence: Geofence,
        st: _FenceState,
        now: datetime,
        late: bool,
        driver: str | None,
        events: list[AlertEvent],
    ) -> None:
        since = st.since
        limit = fence.max_dwell_s
        if since is None or not limit or GEOFENCE_DWELL in st.episodes:
            return
        if (now - since).total_seconds() > limit and fence.active(now):
            details = {"max_dwell_s": limit}
            self._open(lane, veh, GEOFENCE_DWELL, fence, since, late, driver, details, events)
            if not lane.replay:
                self._dwell_watch.pop((veh.info.id, fence.id), None)

    def _crossing(
        self,
        veh: _Vehicle,
        lane: _Lane,
        fence: Geofence,
        prev: Position,
        pos: Position,
        late: bool,
        driver: str | None,
        events: list[AlertEvent],
    ) -> None:
        """Record a fence skipped over between two fixes (both outside it)."""
        if not self._applies(veh, fence):
            return
        st = lane.states.get(fence.id)
        if st is not None and (st.inside or st.pending is not None):
            return
        fractions = self.index.crossing_fractions(fence.id, prev.lon, prev.lat, pos.lon, pos.lat)
        if fractions is None:
            return
        span = pos.fix_time - prev.fix_time
        t_in = prev.fix_time + span * fractions[0]
        t_out = prev.fix_time + span * fractions[1]
        details = {
            "crossed": True,
            "from": prev.fix_time.isoformat(),
            "to": pos.fix_time.isoformat(),
        }
        active = fence.active(t_in)
        passage = fence.kind == FORBIDDEN and active  # one FORBIDDEN_ZONE alert, no instants
        if _records(fence) and active and not passage:
            self._instant(lane, veh, GEOFENCE_ENTER, fence, t_in, late, driver, details, events)
        if _records(fence) and fence.active(t_out) and not passage:
            self._instant(lane, veh, GEOFENCE_EXIT, fence, t_out, late, driver, details, events)
        if passage:
            opened = self._event(
                "open", FORBIDDEN_ZONE, veh, fence, t_in, None, late, driver, lane.replay
            )
            opened.details.update(details)
            events.append(opened)
            events.append(_copy_event(opened, "close", t_out))

    # ------------------------------------------------------------------ events

    def _event(
        self,
        phase: Any,
        kind: str,
        veh: _Vehicle,
        fence: Geofence | None,
        start: datetime,
        end: datetime | None,
        late: bool,
        driver: str | None,
        replay: bool,
        fence_id: int | None = None,
    ) -> AlertEvent:
        fid = fence.id if fence is not None else fence_id
        details: dict[str, Any] = {"fence_id": fid}
        if fence is not None:
            details["fence_name"] = fence.name
            details["kind"] = fence.kind
            if fence.watched:
                details["watched"] = True
        return AlertEvent(
            phase=phase,
            type=kind,
            vehicle_id=veh.info.id,
            key=f"{kind}:{fid}:late" if replay else f"{kind}:{fid}",
            start=start,
            end=end,
            severity=SEVERITY[kind],
            late=late,
            driver=driver,
            details=details,
        )

    def _instant(
        self,
        lane: _Lane,
        veh: _Vehicle,
        kind: str,
        fence: Geofence,
        at: datetime,
        late: bool,
        driver: str | None,
        details: dict[str, Any],
        events: list[AlertEvent],
    ) -> None:
        opened = self._event("open", kind, veh, fence, at, at, late, driver, lane.replay)
        opened.details.update(details)
        events.append(opened)
        events.append(_copy_event(opened, "close", at))

    def _open(
        self,
        lane: _Lane,
        veh: _Vehicle,
        kind: str,
        fence: Geofence,
        start: datetime,
        late: bool,
        driver: str | None,
        details: dict[str, Any],
        events: list[AlertEvent],
    ) -> None:
        st = lane.states.get(fence.id)
        if st is not None:
            st.episodes[kind] = start
        opened = self._event("open", kind, veh, fence, start, None, late, driver, lane.replay)
        opened.details.update(details)
        if lane.replay:
            lane.held[opened.key] = opened  # emitted whole once it ends
        else:
            events.append(opened)

    def _close_episode(
        self,
        lane: _Lane,
        veh: _Vehicle,
        kind: str,
        fence: Geofence,
        st: _FenceState,
        end: datetime,
        late: bool,
        driver: str | None,
        details: dict[str, Any],
        events: list[AlertEvent],
    ) -> None:
        start = st.episodes.pop(kind)
        self._close(lane, veh, kind, fence.id, fence, start, end, late, driver, details, events)

    def _close(
        self,
        lane: _Lane,
        veh: _Vehicle,
        kind: str,
        fid: int,
        fence: Geofence | None,
        start: datetime,
        end: datetime,
        late: bool,
        driver: str | None,
        details: dict[str, Any],
        events: list[AlertEvent],
    ) -> None:
        closed = self._event(
            "close", kind, veh, fence, start, end, late, driver, lane.replay, fence_id=fid
        )
        closed.details.update(details)
        closed.details["duration_s"] = (end - start).total_seconds()
        if kind == GEOFENCE_DWELL and fence is not None:
            closed.details["max_dwell_s"] = fence.max_dwell_s
            closed.details["dwell_s"] = closed.details["duration_s"]
        if lane.replay and closed.key in lane.inherited:
            # Opened before the gap the replay fills: that episode belongs to the live
            # timeline, which closes it when the live fixes say so.
            lane.inherited.discard(closed.key)
            return
        held = lane.held.pop(closed.key, None)
        if held is not None:
            events.append(held)
        events.append(closed)


#: What a fence is to a vehicle (the per-vehicle ``applies`` cache): no concern of this rule;
#: a fence whose side is all there is (no windows opening and closing an ongoing episode, no
#: dwell limit), so a fix on the confirmed side changes nothing; a forbidden zone in force at
#: all times, without a dwell limit (inside it with its passage open, nothing changes); any
#: other (each fix may matter).
_IGNORED, _STEADY, _ALWAYS_FORBIDDEN, _TIMED = 0, 1, 2, 3


def _concern(fence: Geofence, info: VehicleInfo) -> int:
    """The fence's ``_IGNORED``/``_STEADY``/``_ALWAYS_FORBIDDEN``/``_TIMED`` class for the
    vehicle (computed once per vehicle, fence and index version)."""
    if not (_records(fence) or fence.max_dwell_s) or not fence.applies(
        info.vehicle_class, info.id, info.company_id
    ):
        return _IGNORED
    if fence.max_dwell_s:
        return _TIMED
    if fence.kind not in _ONGOING:
        return _STEADY
    return _ALWAYS_FORBIDDEN if fence.kind == FORBIDDEN and not fence.windows else _TIMED


def _records(fence: Geofence) -> bool:
    """Whether entering and leaving the fence are recorded (not for speed-limit and hazard
    areas, which only set a limit, unless the fence is watched)."""
    return fence.kind not in LIMIT_KINDS or fence.watched


def _copy_event(event: AlertEvent, phase: Any, end: datetime) -> AlertEvent:
    return AlertEvent(
        phase=phase,
        type=event.type,
        vehicle_id=event.vehicle_id,
        key=event.key,
        start=event.start,
        end=end,
        severity=event.severity,
        late=event.late,
        driver=event.driver,
        details=dict(event.details),
    )
