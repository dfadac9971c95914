"""Offline and no-fix: the link and the receiver, judged on received time.

* ``OFFLINE`` (key ``offline``): no report for ``offline_s`` (10 min) and no logout (0x0003) since
  the last one. Found by :meth:`tick`; start = the last report's received time (the vehicle has
  been silent since then), end = the received time of the next report. Received time, not fix
  time: a terminal with a stale clock or a blind-area upload is still online.
* ``NO_FIX`` (key ``no_fix``): the vehicle reports but has had no valid fix (invalid or (0, 0))
  for ``no_fix_s``. Start = the first report without a fix, end = the next report with one.
  Counted from the start of the session (first report, or first after being offline or logged
  out), and ended when the vehicle goes offline or logs out (it is then no longer reporting).
  Only live reports count: a late batch says nothing about the receiver now.

:meth:`tick` is O(vehicles that went stale): vehicles are kept in an ordered dict in order of
their last report, so a tick looks only at the stale end of it.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime, timedelta

from alerts.model import LOW, MEDIUM, NO_FIX, OFFLINE, AlertEvent, Fix
from alerts.state import at, ts


class _Link:
    __slots__ = ("driver", "fix_lost_at", "last_at", "no_fix", "offline")

    def __init__(self) -> None:
        self.last_at: datetime | None = None  # last report, received time
        self.offline = False  # an OFFLINE episode is open
        self.fix_lost_at: datetime | None = None  # first report without a fix in this run
        self.no_fix = False  # a NO_FIX episode is open
        self.driver: str | None = None


class OfflineRule:
    name = "offline"

    def __init__(self, offline_s: float = 600.0, no_fix_s: float = 600.0) -> None:
        self.offline_s = offline_s
        self.no_fix_s = no_fix_s
        self._links: dict[int, _Link] = {}
        self._online: OrderedDict[int, _Link] = OrderedDict()  # oldest report first
        self._unsorted = False  # restored links were added out of order

    def export(self, vehicle_id: int) -> dict | None:
        link = self._links.get(vehicle_id)
        if link is None:
            return None
        return {
            "last": ts(link.last_at),
            "offline": link.offline,
            "online": vehicle_id in self._online,
            "lost": ts(link.fix_lost_at),
            "no_fix": link.no_fix,
            "driver": link.driver,
        }

    def restore(self, vehicle_id: int, state: dict | None) -> None:
        self._online.pop(vehicle_id, None)
        if state is None:
            self._links.pop(vehicle_id, None)
            return
        link = self._links[vehicle_id] = _Link()
        link.last_at = at(state["last"])
        link.offline = bool(state["offline"])
        link.fix_lost_at = at(state["lost"])
        link.no_fix = bool(state["no_fix"])
        link.driver = state["driver"]
        if state["online"]:
            self._online[vehicle_id] = link
            self._unsorted = True

    def step(self, fix: Fix, out: list[AlertEvent]) -> None:
        """A report arrived (received time). Its fix counts for NO_FIX only when live: a
        late report keeps the link alive but says nothing about the receiver now."""
        p = fix.position
        vehicle_id = p.vehicle_id
        received = p.received_time
        has_fix = None if fix.behind or p.batch else fix.has_fix
        driver = fix.driver
        link = self._links.get(vehicle_id)
        if link is None:
            link = self._links[vehicle_id] = _Link()
        if link.offline:
            link.offline = False
            out.append(self._event("close", OFFLINE, vehicle_id, link.last_at, received, link))
        last = link.last_at
        if last is None or received >= last:
            link.last_at = received
        link.driver = driver
        online = self._online
        try:
            online.move_to_end(vehicle_id)
        except KeyError:
            online[vehicle_id] = link
        if has_fix is None:
            return
        if has_fix:
            if link.fix_lost_at is not None:
                if link.no_fix:
                    link.no_fix = False
                    out.append(
                        self._event("close", NO_FIX, vehicle_id, link.fix_lost_at, received, link)
                    )
                link.fix_lost_at = None
        elif link.fix_lost_at is None:
            link.fix_lost_at = received
        elif not link.no_fix and (received - link.fix_lost_at).total_seconds() >= self.no_fix_s:
            link.no_fix = True
            out.append(self._event("open", NO_FIX, vehicle_id, link.fix_lost_at, None, link))

    def logout(self, vehicle_id: int, at: datetime) -> list[AlertEvent]:
        """0x0003: the terminal says goodbye; its silence from now on is no alarm."""
        link = self._links.get(vehicle_id)
        if link is None:
            return []
        self._online.pop(vehicle_id, None)
        return self._end_session(vehicle_id, link, at)

    def tick(self, now: datetime, out: list[AlertEvent]) -> None:
        """Vehicles silent (received time) for ``offline_s`` go offline (their OFFLINE opens
        in ``out`` tell later rules, the watchlist, that a session ended)."""
        cutoff = now - timedelta(seconds=self.offline_s)
        online = self._online
        if self._unsorted:
            self._unsorted = False
            order = sorted(online.items(), key=lambda kv: ts(kv[1].last_at) or 0.0)
            online.clear()
            online.update(order)
        while online:
            vid, link = next(iter(online.items()))
            if link.last_at is not None and link.last_at > cutoff:
                break
            del online[vid]
            link.offline = True
            out.append(self._event("open", OFFLINE, vid, link.last_at, None, link))
            out += self._end_session(vid, link, link.last_at)

    def _end_session(self, vid: int, link: _Link, at: datetime | None) -> list[AlertEvent]:
        out = []
        if link.no_fix:
            link.no_fix = False
            out.append(
                self._event("close", NO_FIX, vid, link.fix_lost_at, at or link.last_at, link)
            )
        link.fix_lost_at = None
        return out

    @staticmethod
    def _event(
        phase: str,
        kind: str,
        vid: int,
        start: datetime | None,
        end: datetime | None,
        link: _Link,
    ) -> AlertEvent:
        return AlertEvent(
            phase=phase,  # type: ignore[arg-type]
            type=kind,
            vehicle_id=vid,
            key=kind,
            start=start or datetime.fromtimestamp(0, UTC),
            end=end,
            severity=MEDIUM if kind == OFFLINE else LOW,
            driver=link.driver,
            details={},
        )
