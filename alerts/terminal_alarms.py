"""Terminal alarms: each bit of the 0x0200 alarm word is an episode while it stays set.

An episode (``TERMINAL_ALARM``, key ``terminal_alarm:{bit}``) opens at the first report with the
bit set and closes at the first report with it clear (end = that report's fix time). Its details
carry the bit, its name and the serial of the report that raised it: acknowledging the alarm
answers the terminal with 0x8203 quoting that serial, and bits 20/21/22/28/31 stay set until it
does. Every report counts, with or without a valid fix: the alarm word does not depend on GNSS.

Severity: CRITICAL for bit 0 (emergency/SOS), HIGH for alarms that mean danger to people or
the vehicle (dangerous driving, power cut, theft, illegal ignition or displacement, collision,
rollover, door opened), MEDIUM otherwise. Events of one report are ordered by bit, so an SOS
is always first.

Late data (fixes behind the newest) runs in its own lane (keys ``...:late``) so a blind-area
batch records the alarms it contains without closing or reopening the live episodes.
"""

from __future__ import annotations

from datetime import UTC, datetime

from alerts.model import CRITICAL, HIGH, MEDIUM, TERMINAL_ALARM, AlertEvent, Fix
from alerts.state import at, ts
from protocols.jt808.location import ALARM_BITS

SOS_BIT = 0
HIGH_BITS = frozenset({3, 8, 26, 27, 28, 29, 30, 31})
_EPOCH = datetime.fromtimestamp(0, UTC)


def severity_of(bit: int) -> int:
    if bit == SOS_BIT:
        return CRITICAL
    return HIGH if bit in HIGH_BITS else MEDIUM


class _Lane:
    __slots__ = ("last_at", "opened", "word")

    def __init__(self) -> None:
        self.word = 0
        self.opened: dict[int, tuple[datetime, int]] = {}  # bit -> (start, serial)
        self.last_at: datetime | None = None


class TerminalAlarmRule:
    """Alarm-word episodes per vehicle, fed every report in fix-time order (per lane)."""

    name = "terminal"

    def __init__(self) -> None:
        self._live: dict[int, _Lane] = {}
        self._late: dict[int, _Lane] = {}

    def step(self, fix: Fix, out: list[AlertEvent]) -> None:
        """One report (any: the alarm word needs no GNSS); a fix behind the newest goes to
        the late lane."""
        p = fix.position
        late_lane = fix.behind
        lanes = self._late if late_lane else self._live
        lane = lanes.get(p.vehicle_id)
        if lane is None:
            if not p.alarm:
                return
            lane = lanes[p.vehicle_id] = _Lane()
        lane.last_at = p.fix_time
        changed = lane.word ^ p.alarm
        if not changed:
            return
        lane.word = p.alarm
        suffix = ":late" if late_lane else ""
        bit = 0
        while changed:
            if changed & 1:
                if p.alarm >> bit & 1:
                    lane.opened[bit] = (p.fix_time, p.serial)
                    out.append(
                        self._event(
                            "open", p.vehicle_id, bit, p.fix_time, None, p.serial, fix, suffix
                        )
                    )
                else:
                    start, serial = lane.opened.pop(bit, (p.fix_time, p.serial))
                    out.append(
                        self._event(
                            "close", p.vehicle_id, bit, start, p.fix_time, serial, fix, suffix
                        )
                    )
            changed >>= 1
            bit += 1

    def tick(self, now: datetime, out: list[AlertEvent]) -> None:
        """Nothing runs on the wall clock here."""

    def export(self, vehicle_id: int) -> dict | None:
        lane = self._live.get(vehicle_id)
        if lane is None or (not lane.word and not lane.opened):
            return None
        return {
            "word": lane.word,
            "opened": [[bit, start.timestamp(), n] for bit, (start, n) in lane.opened.items()],
            "last": ts(lane.last_at),
        }

    def restore(self, vehicle_id: int, state: dict | None) -> None:
        if state is None:
            self._live.pop(vehicle_id, None)
            return
        lane = self._live[vehicle_id] = _Lane()
        lane.word = int(state["word"])
        lane.opened = {int(b): (at(s) or _EPOCH, int(n)) for b, s, n in state["opened"]}
        lane.last_at = at(state["last"])

    def end_lane(self, vehicle_id: int, out: list[AlertEvent]) -> None:
        """Forget the late lane, closing its open bits at its last report (a late sequence
        is over)."""
        lane = self._late.pop(vehicle_id, None)
        if lane is None or lane.last_at is None:
            return
        suffix = ":late"
        late_lane = True
        out += [
            AlertEvent(
                phase="close",
                type=TERMINAL_ALARM,
                vehicle_id=vehicle_id,
                key=f"terminal_alarm:{bit}{suffix}",
                start=start,
                end=lane.last_at,
                severity=severity_of(bit),
                late=late_lane,
                details={"bit": bit, "name": ALARM_BITS.get(bit, f"bit{bit}"), "serial": serial},
            )
            for bit, (start, serial) in sorted(lane.opened.items())
        ]

    @staticmethod
    def _event(
        phase: str,
        vid: int,
        bit: int,
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
            key=f"terminal_alarm:{bit}{suffix}",
            start=start,
            end=end,
            severity=severity_of(bit),
            late=fix.late,
            driver=fix.driver,
            details={"bit": bit, "name": ALARM_BITS.get(bit, f"bit{bit}"), "serial": serial},
        )
