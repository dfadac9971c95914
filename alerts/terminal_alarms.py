"""Terminal alarms: each alarm a terminal reports (by name) is an episode while it stays raised.

An episode (``TERMINAL_ALARM``, key ``terminal_alarm:{name}``) opens at the first report with
the alarm raised and closes at the first report without it (end = that report's fix time). Its
details carry the name and the serial of the report that raised it: acknowledging the alarm
answers the terminal (JT/T 808: 0x8203 quoting that serial), and some alarms stay raised until
it does. Every report counts, with or without a valid fix: alarms do not depend on GNSS.
Names are the platform's (``Position.alarms``, converted at the protocol edge in ``ingest/``).

Severity: CRITICAL for ``emergency`` (SOS), HIGH for alarms that mean danger to people or the
vehicle (dangerous driving, power cut, theft, illegal ignition or displacement, collision,
rollover, door opened), MEDIUM otherwise. Events of one report are ordered by severity then
name, so an SOS is always first.

Late data (fixes behind the newest) runs in its own lane (keys ``...:late``) so a blind-area
batch records the alarms it contains without closing or reopening the live episodes.
"""

from __future__ import annotations

from datetime import UTC, datetime

from alerts.model import CRITICAL, HIGH, MEDIUM, TERMINAL_ALARM, AlertEvent, Fix
from alerts.state import at, ts

SOS = "emergency"
HIGH_ALARMS = frozenset({
    "dangerous_driving", "power_cut", "vehicle_stolen", "illegal_ignition",
    "illegal_displacement", "collision", "rollover", "illegal_door_open",
})  # fmt: skip
_EPOCH = datetime.fromtimestamp(0, UTC)
_NONE: frozenset[str] = frozenset()


def severity_of(name: str) -> int:
    if name == SOS:
        return CRITICAL
    return HIGH if name in HIGH_ALARMS else MEDIUM


def _order(name: str) -> tuple[int, str]:
    return severity_of(name), name


class _Lane:
    __slots__ = ("active", "last_at", "opened")

    def __init__(self) -> None:
        self.active: frozenset[str] = _NONE
        self.opened: dict[str, tuple[datetime, int]] = {}  # name -> (start, serial)
        self.last_at: datetime | None = None


class TerminalAlarmRule:
    """Alarm episodes per vehicle, fed every report in fix-time order (per lane)."""

    name = "terminal"

    def __init__(self) -> None:
        self._live: dict[int, _Lane] = {}
        self._late: dict[int, _Lane] = {}

    def step(self, fix: Fix, out: list[AlertEvent]) -> None:
        """One report (any: alarms need no GNSS); a fix behind the newest goes to the late
        lane."""
        p = fix.position
        alarms = p.alarms
        late_lane = fix.behind
        lanes = self._late if late_lane else self._live
        lane = lanes.get(p.vehicle_id)
        if lane is None:
            if not alarms:
                return
            lane = lanes[p.vehicle_id] = _Lane()
        lane.last_at = p.fix_time
        if alarms == lane.active:
            return
        changed = lane.active ^ alarms
        lane.active = alarms
        suffix = ":late" if late_lane else ""
        for name in sorted(changed, key=_order):
            if name in alarms:
                lane.opened[name] = (p.fix_time, p.serial)
                out.append(
                    self._event("open", p.vehicle_id, name, p.fix_time, None, p.serial, fix, suffix)
                )
            else:
                start, serial = lane.opened.pop(name, (p.fix_time, p.serial))
                out.append(
                    self._event("close", p.vehicle_id, name, start, p.fix_time, serial, fix, suffix)
                )

    def tick(self, now: datetime, out: list[AlertEvent]) -> None:
        """Nothing runs on the wall clock here."""

    def export(self, vehicle_id: int) -> dict | None:
        lane = self._live.get(vehicle_id)
        if lane is None or (not lane.active and not lane.opened):
            return None
        return {
            "active": sorted(lane.active),
            "opened": [[name, start.timestamp(), n] for name, (start, n) in lane.opened.items()],
            "last": ts(lane.last_at),
        }

    def restore(self, vehicle_id: int, state: dict | None) -> None:
        if state is None:
            self._live.pop(vehicle_id, None)
            return
        lane = self._live[vehicle_id] = _Lane()
        lane.active = frozenset(state["active"])
        lane.opened = {str(k): (at(s) or _EPOCH, int(n)) for k, s, n in state["opened"]}
        lane.last_at = at(state["last"])

    def end_lane(self, vehicle_id: int, out: list[AlertEvent]) -> None:
        """Forget the late lane, closing its open alarms at its last report (a late sequence
        is over)."""
        lane = self._late.pop(vehicle_id, None)
        if lane is None or lane.last_at is None:
            return
        for name in sorted(lane.opened, key=_order):
            start, serial = lane.opened[name]
            out.append(
                AlertEvent(
                    phase="close",
                    type=TERMINAL_ALARM,
                    vehicle_id=vehicle_id,
                    key=f"terminal_alarm:{name}:late",
                    start=start,
                    end=lane.last_at,
                    severity=severity_of(name),
                    late=True,
                    details={"name": name, "serial": serial},
                )
            )

    @staticmethod
    def _event(
        phase: str,
        vid: int,
        name: str,
        start: datetime,
        end: datetime | None,
        serial: int,
        fix: Fix,
        suffix: str,
    ) -> AlertEvent:
        return AlertEvent(
            phase=phase,  # type: ignore[arg-type]
            type=TERMINAL_ALARM,
            vehicle_id=vid,
            key=f"terminal_alarm:{name}{suffix}",
            start=start,
            end=end,
            severity=severity_of(name),
            late=fix.late,
            driver=fix.driver,
            details={"name": name, "serial": serial},
        )
