"""Speeding: episodes of driving above the limit, with level, and a pre-warning.

The limit at a fix is the lowest of

* the ``speed_limit_kmh`` of every active, applicable fence the vehicle is in (any kind: a zone
  or a route may carry a posted limit, as JT/T 808 areas do), and inside a hazard fence the
  class's ``hazard_kmh`` (a school bus: 20 km/h at school gates, villages, level crossings),
* the class limit: ``expressway_kmh`` inside an active expressway fence (kind ``speed_limit``
  with ``expressway`` set), ``elsewhere_kmh`` otherwise (None: posted limits only),

times the class's ``night_factor`` at night (22:00-06:00 Beijing; coaches: 80% of the day
limit). Police cars are exempt unless configured (``speed_exempt``).

Fence membership uses the index's boundary band (``FenceIndex.classify`` value 0, within the
fence's ``margin_m`` of its edge) as hysteresis: a vehicle keeps the membership it had before it
reached the band (inside once beyond the margin inside, outside again only beyond the margin
outside), so a vehicle driving along an expressway's edge does not flip between the expressway
and "elsewhere" limits. A vehicle first seen in the band (no earlier fix in this lane) gets the
benefit of the doubt until it leaves the band: the higher of the limits with and without that
fence. GNSS error is metres; a speeding record is a violation with a fine attached, so doubt
goes to the driver.

Episode (``SPEEDING``, key ``speeding``): starts once the speed has stayed above the limit for
``min_over_s`` (start = the first fix above), ends once it has stayed at or below the limit for
``min_under_s`` (end = the first fix of that run), or at the last fix before a silence longer
than ``speed_gap_s``. It records the maximum speed, and the limit and percentage over at the
worst fix (highest speed/limit ratio: the limit may change inside an episode), the duration
and the level: 1 under 10% over, 2 10-20%, 3 20-50%, 4 50% and over (severity LOW, MEDIUM,
HIGH, CRITICAL). An ``update`` is sent when the level rises, so the open alert shows it.

Pre-warning (``SPEEDING_WARNING``, key ``speeding_warning``): the same hysteresis with "within
``prewarn_margin_kmh`` of the limit or above" in place of "above": it opens after
``min_over_s`` near the limit, unless a speeding episode is already running, and ends when the
speed has been below the band for ``min_under_s`` or when speeding starts. One warning per
approach: no second warning until the speed has left the band.

Late data: fixes behind the vehicle's newest go to a second state ("late lane", keys with a
``:late`` suffix), so a blind-area batch finds its own episodes (``late=True``) without
disturbing the live one. The engine ends that lane when the batch sequence ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from alerts.model import CRITICAL, HIGH, LOW, MEDIUM, SPEEDING, SPEEDING_WARNING, AlertEvent, Fix
from alerts.settings import Profile
from alerts.state import at, when
from geo.calendar import is_night
from geo.fences import HAZARD
from geo.flags import SPEED_IMPLAUSIBLE

if TYPE_CHECKING:
    from geo.fences import Geofence
    from geo.index import FenceIndex

SEVERITY_BY_LEVEL = {1: LOW, 2: MEDIUM, 3: HIGH, 4: CRITICAL}


def level_of(over_pct: float) -> int:
    """1: under 10% over the limit, 2: 10-20%, 3: 20-50%, 4: 50% and over."""
    if over_pct < 10.0:
        return 1
    if over_pct < 20.0:
        return 2
    if over_pct < 50.0:
        return 3
    return 4


class _Episode:
    __slots__ = (
        "expressway",
        "lat",
        "level",
        "lon",
        "max_speed",
        "night",
        "start",
        "start_t",
        "worst_limit",
        "worst_ratio",
    )
    # Set all at once when the episode opens (see SpeedingRule), declared here for the types.
    expressway: bool
    lat: float
    level: int
    lon: float
    max_speed: float
    night: bool
    start: datetime
    start_t: float
    worst_limit: float
    worst_ratio: float


class _Lane:
    """One vehicle's speeding state in one lane (live or late)."""

    __slots__ = (
        "below_at",
        "below_t",
        "ep",
        "inside",
        "last_at",
        "last_t",
        "near_at",
        "near_t",
        "over_at",
        "over_t",
        "run_limit",
        "run_max",
        "run_pos",
        "run_ratio",
        "under_at",
        "under_t",
        "warn_start",
        "warned",
    )

    def __init__(self) -> None:
        self.last_t = -1e18
        self.last_at: datetime | None = None
        # speed-relevant fences the vehicle counts as inside (True) or might be in (False)
        self.inside: dict[int, bool] = {}
        self.over_t: float | None = None  # first fix of the current run above the limit
        self.over_at: datetime | None = None
        self.run_max = 0.0
        self.run_ratio = 0.0
        self.run_limit = 0.0
        self.run_pos: tuple[float, float, bool, bool] = (0.0, 0.0, False, False)
        self.under_t: float | None = None  # first fix at or under the limit in an episode
        self.under_at: datetime | None = None
        self.ep: _Episode | None = None
        self.near_t: float | None = None  # first fix of the current run near/above the limit
        self.near_at: datetime | None = None
        self.below_t: float | None = None  # first fix below the band after a warning
        self.below_at: datetime | None = None
        self.warn_start: datetime | None = None  # the open warning's start
        self.warned = False  # a warning was given (or skipped) in this approach

    def idle(self) -> bool:
        return self.ep is None and self.over_t is None and self.near_t is None and not self.warned


_LANE_TIMES = ("last_at", "over_at", "under_at", "near_at", "below_at", "warn_start")
_DEFAULT = Profile()


class SpeedingRule:
    """Speeding episodes per vehicle; fed usable fixes in fix-time order (per lane)."""

    name = "speeding"

    def __init__(self, index: FenceIndex) -> None:
        self.index = index
        self._limiting: frozenset[int] = frozenset()  # ids of fences that set a limit
        self._limiting_version = -1  # the index version it is for
        self._live: dict[int, _Lane] = {}
        self._late: dict[int, _Lane] = {}

    # ------------------------------------------------------------------ limit

    def limit(self, lane: _Lane, fix: Fix, t: float, profile: Profile) -> tuple[float | None, bool]:
        """(limit in km/h or None, on an expressway) for this fix; updates fence membership."""
        if profile.speed_exempt:
            return None, False
        fences = fix.fences
        inside = lane.inside
        if not fences and not inside:
            limit = profile.elsewhere_kmh
            if limit is not None and profile.night_factor != 1.0 and is_night(t):
                limit *= profile.night_factor
            return limit, False
        known = self.index.fences
        if inside:
            for fid in [fid for fid in inside if fid not in fences]:
                del inside[fid]
        fresh = lane.last_at is None
        limiting = self.limiting()
        for fid, value in fences.items():
            if fid not in limiting:
                continue
            if value == 1:
                inside[fid] = True
            elif fid not in inside and fresh:
                inside[fid] = False  # first seen in the band: in doubt until it leaves it
        if not inside:
            limit = profile.elsewhere_kmh
            if limit is not None and profile.night_factor != 1.0 and is_night(t):
                limit *= profile.night_factor
            return limit, False
        sure: list[Geofence] = []
        doubtful: list[Geofence] = []
        for fid, certain in inside.items():
            fence = known.get(fid)
            if fence is not None:
                (sure if certain else doubtful).append(fence)
        limit, express = self._combine(sure, fix, profile)
        if doubtful:
            other, other_express = self._combine(sure + doubtful, fix, profile)
            if limit is not None and (other is None or other > limit):
                limit, express = other, other_express
        if limit is not None and profile.night_factor != 1.0 and is_night(t):
            limit *= profile.night_factor
        return limit, express

    def limiting(self) -> frozenset[int]:
        """Ids of the index's fences that bear on a limit (a posted limit, a hazard, an
        expressway); a fix in none of them, and in none before, is under the class limit."""
        index = self.index
        if self._limiting_version != index.version:
            self._limiting = frozenset(
                fid
                for fid, fence in index.fences.items()
                if fence.speed_limit_kmh is not None
                or fence.kind == HAZARD
                or (fence.expressway and fence.kind == "speed_limit")
            )
            self._limiting_version = index.version
        return self._limiting

    @staticmethod
    def _combine(fences: list[Geofence], fix: Fix, profile: Profile) -> tuple[float | None, bool]:
        v = fix.vehicle
        return posted_limit(fences, fix.position.fix_time, v.vehicle_class, v.id, v.company_id,
                            profile)  # fmt: skip

    # ------------------------------------------------------------------ feeding

    def step(self, fix: Fix, out: list[AlertEvent]) -> None:
        """One fix; only usable ones count (a fix behind the newest goes to the late lane). A
        speed flagged implausible (``geo.flags``: 6553 km/h) is no evidence of speeding."""
        if not fix.usable:
            return
        extras = fix.position.extras
        if extras and SPEED_IMPLAUSIBLE in extras:
            return
        t = fix.t
        profile = fix.profile or _DEFAULT
        late_lane = fix.behind
        lanes = self._late if late_lane else self._live
        vid = fix.vehicle.id
        lane = lanes.get(vid)
        if lane is None:
            lane = lanes[vid] = _Lane()
        if profile.speed_exempt:
            limit: float | None = None
            express = False
        elif not lane.inside and (
            not fix.fences
            or fix.fences.keys().isdisjoint(
                self._limiting if self._limiting_version == self.index.version else self.limiting()
            )
        ):
            # in no fence that bears on the limit, now or before: the class's own limit
            limit, express = profile.elsewhere_kmh, False
            if limit is not None and profile.night_factor != 1.0 and is_night(t):
                limit *= profile.night_factor
        else:
            limit, express = self.limit(lane, fix, t, profile)
        if (
            lane.ep is None
            and lane.over_t is None
            and lane.near_t is None
            and not lane.warned
            and (limit is None or fix.position.speed_kmh < limit - profile.prewarn_margin_kmh)
        ):
            lane.last_t, lane.last_at = t, fix.position.fix_time  # nothing going on
            return
        self._step(lane, fix, t, limit, express, profile, late_lane, out)

    def end_lane(self, vehicle_id: int, out: list[AlertEvent]) -> None:
        """Forget the late lane, closing what it has open at its last fix (a late sequence
        is over)."""
        lane = self._late.pop(vehicle_id, None)
        if lane is not None:
            out += self._break(lane, vehicle_id, True, True)

    def tick(self, now: datetime, out: list[AlertEvent]) -> None:
        """Nothing runs on the wall clock here: an episode ends on fixes (or a fix-time gap)."""

    def export(self, vehicle_id: int) -> dict | None:
        lane = self._live.get(vehicle_id)
        if lane is None:
            return None
        d: dict = {}
        for name in _Lane.__slots__:
            v = getattr(lane, name)
            if name == "ep" and v is not None:
                v = {k: getattr(v, k) for k in _Episode.__slots__}
                v["start"] = v["start"].timestamp()
            elif isinstance(v, datetime):
                v = v.timestamp()
            elif name == "inside":
                v = [[fid, sure] for fid, sure in v.items()]
            d[name] = v
        return d

    def restore(self, vehicle_id: int, state: dict | None) -> None:
        if state is None:
            self._live.pop(vehicle_id, None)
            return
        lane = self._live[vehicle_id] = _Lane()
        for name in _Lane.__slots__:
            v = state[name]
            if name in _LANE_TIMES:
                v = at(v)
            elif name == "inside":
                v = {int(fid): bool(sure) for fid, sure in v}
            elif name == "run_pos":
                v = tuple(v)
            elif name == "ep" and v is not None:
                ep = _Episode()
                for k in _Episode.__slots__:
                    setattr(ep, k, v[k])
                ep.start = when(v["start"])
                v = ep
            setattr(lane, name, v)

    def _break(self, lane: _Lane, vid: int, late: bool, late_lane: bool) -> list[AlertEvent]:
        """Close open episodes at the lane's last fix and reset its runs (a silence)."""
        out: list[AlertEvent] = []
        at = lane.last_at
        if lane.ep is not None and at is not None:
            out.append(
                self._speeding_event("close", lane.ep, vid, at, late, late_lane, lane.last_t)
            )
        if lane.warn_start is not None and at is not None:
            out.append(self._warning_event("close", lane.warn_start, vid, at, late, late_lane))
        lane.ep = None
        lane.warn_start = None
        lane.warned = False
        lane.over_t = lane.under_t = lane.near_t = lane.below_t = None
        return out

    def _step(
        self,
        lane: _Lane,
        fix: Fix,
        t: float,
        limit: float | None,
        express: bool,
        profile: Profile,
        late_lane: bool,
        out: list[AlertEvent],
    ) -> None:
        p = fix.position
        at = p.fix_time
        vid = fix.vehicle.id
        late = fix.late
        if t - lane.last_t > profile.speed_gap_s and not lane.idle():
            out += self._break(lane, vid, late, late_lane)
        lane.last_t, lane.last_at = t, at
        speed = p.speed_kmh

        # --- speeding hysteresis
        if limit is not None and speed > limit:
            lane.under_t = None
            ratio = speed / limit if limit > 0 else float("inf")
            if lane.over_t is None:
                lane.over_t, lane.over_at = t, at
                lane.run_max, lane.run_ratio, lane.run_limit = speed, ratio, limit
                lane.run_pos = (p.lon, p.lat, express, is_night(t))
            else:
                if speed > lane.run_max:
                    lane.run_max = speed
                if ratio > lane.run_ratio:
                    lane.run_ratio, lane.run_limit = ratio, limit
            ep = lane.ep
            if ep is None:
                if t - lane.over_t >= profile.min_over_s:
                    ep = lane.ep = _Episode()
                    assert lane.over_at is not None  # set with over_t
                    ep.start, ep.start_t = lane.over_at, lane.over_t
                    ep.max_speed, ep.worst_ratio, ep.worst_limit = (
                        lane.run_max,
                        lane.run_ratio,
                        lane.run_limit,
                    )
                    ep.lon, ep.lat, ep.expressway, ep.night = lane.run_pos
                    ep.level = level_of((ep.worst_ratio - 1.0) * 100.0)
                    if lane.warn_start is not None:
                        out.append(
                            self._warning_event(
                                "close", lane.warn_start, vid, ep.start, late, late_lane
                            )
                        )
                        lane.warn_start = None
                    lane.warned = True
                    out.append(self._speeding_event("open", ep, vid, None, late, late_lane, t))
            else:
                if speed > ep.max_speed:
                    ep.max_speed = speed
                if ratio > ep.worst_ratio:
                    ep.worst_ratio, ep.worst_limit = ratio, limit
                    level = level_of((ratio - 1.0) * 100.0)
                    if level > ep.level:
                        ep.level = level
                        out.append(
                            self._speeding_event("update", ep, vid, None, late, late_lane, t)
                        )
        else:
            lane.over_t = None
            if lane.ep is not None:
                if lane.under_t is None:
                    lane.under_t, lane.under_at = t, at
                if t - lane.under_t >= profile.min_under_s:
                    out.append(
                        self._speeding_event(
                            "close", lane.ep, vid, lane.under_at, late, late_lane, lane.under_t
                        )
                    )
                    lane.ep = None
                    lane.under_t = None

        # --- pre-warning hysteresis
        if limit is not None and speed >= limit - profile.prewarn_margin_kmh:
            lane.below_t = None
            if lane.near_t is None:
                lane.near_t, lane.near_at = t, at
            if not lane.warned and t - lane.near_t >= profile.min_over_s:
                lane.warned = True
                if lane.ep is None:
                    assert lane.near_at is not None  # set with near_t
                    lane.warn_start = lane.near_at
                    out.append(
                        self._warning_event(
                            "open", lane.near_at, vid, None, late, late_lane, speed, limit
                        )
                    )
        else:
            lane.near_t = None
            if lane.warned:
                if lane.below_t is None:
                    lane.below_t, lane.below_at = t, at
                if t - lane.below_t >= profile.min_under_s and lane.ep is None:
                    if lane.warn_start is not None:
                        out.append(
                            self._warning_event(
                                "close", lane.warn_start, vid, lane.below_at, late, late_lane
                            )
                        )
                        lane.warn_start = None
                    lane.warned = False
                    lane.below_t = None

    # ------------------------------------------------------------------ events

    @staticmethod
    def _speeding_event(
        phase: str,
        ep: _Episode,
        vid: int,
        end: datetime | None,
        late: bool,
        late_lane: bool,
        t: float,
    ) -> AlertEvent:
        over_pct = round((ep.worst_ratio - 1.0) * 100.0, 1)
        return AlertEvent(
            phase=phase,  # type: ignore[arg-type]
            type=SPEEDING,
            vehicle_id=vid,
            key="speeding:late" if late_lane else "speeding",
            start=ep.start,
            end=end,
            severity=SEVERITY_BY_LEVEL[ep.level],
            late=late,
            details={
                "max_speed_kmh": ep.max_speed,
                "limit_kmh": round(ep.worst_limit, 1),
                "over_pct": over_pct,
                "level": ep.level,
                "duration_s": round(t - ep.start_t, 1),
                "expressway": ep.expressway,
                "night": ep.night,
                "lon": ep.lon,
                "lat": ep.lat,
            },
        )

    @staticmethod
    def _warning_event(
        phase: str,
        start: datetime,
        vid: int,
        end: datetime | None,
        late: bool,
        late_lane: bool,
        speed: float | None = None,
        limit: float | None = None,
    ) -> AlertEvent:
        details = {} if speed is None else {"speed_kmh": speed, "limit_kmh": round(limit or 0, 1)}
        return AlertEvent(
            phase=phase,  # type: ignore[arg-type]
            type=SPEEDING_WARNING,
            vehicle_id=vid,
            key="speeding_warning:late" if late_lane else "speeding_warning",
            start=start,
            end=end,
            severity=LOW,
            late=late,
            details=details,
        )


def posted_limit(
    fences: Iterable[Geofence], at: datetime, vehicle_class: str, vehicle_id: int,
    company_id: int | None, profile: Profile,
) -> tuple[float | None, bool]:  # fmt: skip
    """(limit in km/h or None, on an expressway) of a vehicle inside these fences at ``at``,
    before the night factor: the lowest posted limit of the active fences that apply to it,
    and the class limit (expressway or elsewhere) if lower. The vehicle panel shows it too."""
    posted: float | None = None
    express = False
    for fence in fences:
        if not fence.active(at) or not fence.applies(vehicle_class, vehicle_id, company_id):
            continue
        if fence.kind == "speed_limit" and fence.expressway:
            express = True
        lim = fence.speed_limit_kmh
        if fence.kind == HAZARD and profile.hazard_kmh is not None:
            lim = profile.hazard_kmh if lim is None else min(lim, profile.hazard_kmh)
        if lim is not None and (posted is None or lim < posted):
            posted = lim
    own = profile.expressway_kmh if express else profile.elsewhere_kmh
    if own is None:
        return posted, express
    return (own if posted is None or own < posted else posted), express
