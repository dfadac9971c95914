"""Watchlist (缉查布控): plates to look out for, each with a reason.

* ``WATCHLIST`` (key ``watchlist``): a listed vehicle reports. One episode per *session*: it
  opens at the first report of the session (start = that fix's time) and closes when the
  session ends, at logout (0x0003) or when the vehicle goes offline (end = its last report), or
  when the plate is taken off the list. The dispatcher gets one alert when the vehicle shows up,
  not one per report, and a new one each time it shows up again. (Per day would hide a vehicle
  that reappears in the evening; per report would bury the desk.)
* ``WATCHLIST_AREA`` (key ``watchlist_area:{fence}``): a listed vehicle enters a geofence with
  ``watched`` set. It is the stay in that fence as the geofence rule confirms it (with its
  hysteresis): it opens at its ``GEOFENCE_ENTER`` and closes at its ``GEOFENCE_EXIT`` (a
  crossing between two sparse fixes gives both at once), or when the session ends.

Plates are compared in their canonical form (``geo.plates``: "京a 12345" is "京A12345"), the form
``vehicles.plate`` and the ``watchlist`` table use. Late reports count (the vehicle was seen)
and their events are flagged late.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from alerts.model import (
    FORBIDDEN_ZONE,
    GEOFENCE_ENTER,
    GEOFENCE_EXIT,
    HIGH,
    OFFLINE,
    WATCHLIST,
    WATCHLIST_AREA,
    AlertEvent,
    Fix,
)
from alerts.state import when
from geo.plates import normalise_plate

if TYPE_CHECKING:
    from geo.index import FenceIndex


class _Seen:
    __slots__ = ("areas", "last_at", "plate", "reason", "start")

    def __init__(self, plate: str, reason: str, start: datetime) -> None:
        self.plate = plate
        self.reason = reason
        self.start = start
        self.last_at = start
        self.areas: dict[int, datetime] = {}  # fence id -> start of the WATCHLIST_AREA episode


class WatchlistRule:
    name = "watchlist"

    def __init__(self, index: FenceIndex | None = None) -> None:
        self.index = index
        self.plates: dict[str, str] = {}
        self._seen: dict[int, _Seen] = {}  # vehicles with an open WATCHLIST episode
        # vehicle id -> (plate as given, normalised, reason or None): checked once per plate
        self._plates: dict[int, tuple[str, str, str | None]] = {}

    def set_watchlist(self, plates: dict[str, str], at: datetime | None = None) -> list[AlertEvent]:
        """Replace the list; returns the closes of episodes whose plate is no longer on it."""
        self.plates = {normalise_plate(p): reason for p, reason in plates.items()}
        self._plates.clear()
        out: list[AlertEvent] = []
        for vid, seen in list(self._seen.items()):
            if seen.plate not in self.plates:
                out += self.end_session(vid, at or seen.last_at)
        return out

    def step(self, fix: Fix, out: list[AlertEvent]) -> None:
        """A report of a vehicle: opens its session's episode if it is listed; turns the
        geofence rule's events of this fix (already in ``out``: that rule runs first) about
        watched fences into WATCHLIST_AREA episodes."""
        vehicle = fix.vehicle
        seen = self._seen.get(vehicle.id)
        if seen is None:
            if not self.plates:
                return
            known = self._plates.get(vehicle.id)
            if known is not None and known[2] is None and known[0] is vehicle.plate:
                return  # checked already: not listed
        else:
            if fix.position.fix_time > seen.last_at:
                seen.last_at = fix.position.fix_time
            if out:
                out += self.geofence_events(fix, out)
            return
        self._first(fix, out)
        if out and vehicle.id in self._seen:
            out += self.geofence_events(fix, out)

    def tick(self, now: datetime, out: list[AlertEvent]) -> None:
        """A vehicle that went offline (the offline rule's OFFLINE opens, already in ``out``)
        ends its session."""
        if not self._seen:
            return
        for e in [e for e in out if e.type == OFFLINE and e.phase == "open"]:
            out += self.end_session(e.vehicle_id, None)

    def export(self, vehicle_id: int) -> dict | None:
        seen = self._seen.get(vehicle_id)
        if seen is None:
            return None
        return {
            "plate": seen.plate,
            "reason": seen.reason,
            "start": seen.start.timestamp(),
            "last": seen.last_at.timestamp(),
            "areas": [[fid, start.timestamp()] for fid, start in seen.areas.items()],
        }

    def restore(self, vehicle_id: int, state: dict | None) -> None:
        if state is None:
            self._seen.pop(vehicle_id, None)
            return
        seen = _Seen(state["plate"], state["reason"], when(state["start"]))
        seen.last_at = when(state["last"])
        seen.areas = {int(fid): when(start) for fid, start in state["areas"]}
        self._seen[vehicle_id] = seen

    def _first(self, fix: Fix, out: list[AlertEvent]) -> None:
        vehicle = fix.vehicle
        if not self.plates or not vehicle.plate:
            return
        known = self._plates.get(vehicle.id)
        if known is None or known[0] is not vehicle.plate:
            plate = normalise_plate(vehicle.plate)
            known = self._plates[vehicle.id] = (vehicle.plate, plate, self.plates.get(plate))
        reason = known[2]
        if reason is None:
            return
        plate = known[1]
        p = fix.position
        self._seen[vehicle.id] = _Seen(plate, reason, p.fix_time)
        out.append(
            AlertEvent(
                phase="open",
                type=WATCHLIST,
                vehicle_id=vehicle.id,
                key="watchlist",
                start=p.fix_time,
                severity=HIGH,
                late=fix.late,
                driver=fix.driver,
                details={
                    "plate": plate,
                    "reason": reason,
                    "lon": p.lon,
                    "lat": p.lat,
                    "valid": fix.usable,
                },
            )
        )

    def geofence_events(self, fix: Fix, events: list[AlertEvent]) -> list[AlertEvent]:
        """Turn the geofence rule's events of a listed vehicle about watched fences into
        WATCHLIST_AREA episodes."""
        seen = self._seen.get(fix.vehicle.id)
        if seen is None or self.index is None:
            return []
        out: list[AlertEvent] = []
        fences = self.index.fences
        for e in events:
            if e.type not in (GEOFENCE_ENTER, GEOFENCE_EXIT, FORBIDDEN_ZONE):
                continue
            fid = fence_id_of(e)
            fence = fences.get(fid) if fid is not None else None
            if fid is None or fence is None or not getattr(fence, "watched", False):
                continue
            # The geofence rule reports entering and leaving as instants (an open at once
            # followed by a close); the stay in between is ours.
            if e.type == FORBIDDEN_ZONE:  # a passage: its open is the entry, its close the exit
                entering = e.phase == "open"
            elif e.phase == "open":
                entering = e.type == GEOFENCE_ENTER
            else:
                continue
            if entering and fid not in seen.areas:
                seen.areas[fid] = e.start
                out.append(self._area_event("open", fix, seen, fid, fence, e.start, None, e.late))
            elif not entering and fid in seen.areas:
                start = seen.areas.pop(fid)
                end = e.end if e.type == FORBIDDEN_ZONE and e.end is not None else e.start
                out.append(self._area_event("close", fix, seen, fid, fence, start, end, e.late))
        return out

    def end_session(self, vehicle_id: int, at: datetime | None) -> list[AlertEvent]:
        """Logout, offline or delisting: close the vehicle's episodes (end = ``at``)."""
        seen = self._seen.pop(vehicle_id, None)
        if seen is None:
            return []
        end = at or seen.last_at
        out = [
            AlertEvent(
                phase="close",
                type=WATCHLIST_AREA,
                vehicle_id=vehicle_id,
                key=f"watchlist_area:{fid}",
                start=start,
                end=max(end, start),
                severity=HIGH,
                details={"plate": seen.plate, "reason": seen.reason, "fence_id": fid},
            )
            for fid, start in seen.areas.items()
        ]
        out.append(
            AlertEvent(
                phase="close",
                type=WATCHLIST,
                vehicle_id=vehicle_id,
                key="watchlist",
                start=seen.start,
                end=max(end, seen.start),
                severity=HIGH,
                details={"plate": seen.plate, "reason": seen.reason},
            )
        )
        return out

    @staticmethod
    def _area_event(
        phase: str,
        fix: Fix,
        seen: _Seen,
        fid: int,
        fence: object,
        start: datetime,
        end: datetime | None,
        late: bool,
    ) -> AlertEvent:
        return AlertEvent(
            phase=phase,  # type: ignore[arg-type]
            type=WATCHLIST_AREA,
            vehicle_id=fix.vehicle.id,
            key=f"watchlist_area:{fid}",
            start=start,
            end=end,
            severity=HIGH,
            late=late,
            driver=fix.driver,
            details={
                "plate": seen.plate,
                "reason": seen.reason,
                "fence_id": fid,
                "fence": getattr(fence, "name", None),
            },
        )


def fence_id_of(event: AlertEvent) -> int | None:
    """The fence a geofence event is about: ``details["fence_id"]``, else the key's last part
    (``geofence:{id}``-style keys)."""
    fid = event.details.get("fence_id")
    if fid is None:
        tail = event.key.rsplit(":", 1)[-1]
        return int(tail) if tail.isdigit() else None
    return int(fid)
