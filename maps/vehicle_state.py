"""What the map shows a vehicle as: one state out of its last fix, its connection and its alarms.

Decided on the server, once, so the REST answer, the live deltas and any other client agree
on the colour of a vehicle. Precedence is the dispatcher's: an open alarm outranks everything
(a vehicle in alarm that went offline is still the one to look at), then no connection, then no
usable fix, then moving or stopped (engine on: idling) or parked (engine off or not reported).
"""

from __future__ import annotations

MOVING, IDLE, PARKED, OFFLINE, NO_FIX, ALARM = (
    "moving", "idle", "parked", "offline", "nofix", "alarm",
)  # fmt: skip
STATES = (MOVING, IDLE, PARKED, OFFLINE, NO_FIX, ALARM)
#: Below this a reported speed is GNSS drift of a standing vehicle, not driving.
MOVING_KMH = 3.0


def vehicle_state(
    *, online: bool, has_fix: bool, speed_kmh: float | None, ignition: bool | None,
    in_alarm: bool,
) -> str:  # fmt: skip
    """The state of a vehicle (one of :data:`STATES`). ``has_fix``: a last position exists and
    the receiver had a fix for it."""
    if in_alarm:
        return ALARM
    if not online:
        return OFFLINE
    if not has_fix:
        return NO_FIX
    if (speed_kmh or 0.0) >= MOVING_KMH:
        return MOVING
    return IDLE if ignition else PARKED
