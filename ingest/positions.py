"""Location messages (0x0200, 0x0201, 0x0500, 0x0704) → platform :class:`Position` values.

The protocol edge: Beijing (or the terminal's) time becomes UTC here, extras become JSON values.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from geo.position import SOURCE_JT808, Position
from protocols.jt808 import (
    BatchLocation,
    LocationQueryReply,
    LocationReport,
    Message,
    jsonable,
)

_POSITIONED = 0x02


def _plain(extras: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready extras; numbers and text (nearly all of them) pass through untouched."""
    return {k: v if isinstance(v, int | float | str) else jsonable(v) for k, v in extras.items()}


def to_position(
    report: LocationReport, vehicle_id: int, serial: int, received: datetime, batch: bool = False
) -> Position:
    """One report as a Position. A report without a valid time is kept with the receive time
    and marked invalid, so the fix is stored but never trusted by the rules."""
    extras = _plain(report.extras()) if report.items else {}
    valid = bool(report.status & _POSITIONED)
    if report.time is None:
        fix_time = received
        valid = False
        extras["time_invalid"] = True
    else:
        fix_time = report.time.astimezone(UTC)
    if report.tail:
        extras["tail"] = report.tail.hex()
    return Position(
        vehicle_id=vehicle_id,
        fix_time=fix_time,
        received_time=received,
        lon=report.longitude,
        lat=report.latitude,
        speed_kmh=report.speed_kmh,
        heading=report.heading,
        altitude_m=report.altitude_m,
        alarm=report.alarm,
        status=report.status,
        valid=valid,
        serial=serial,
        batch=batch,
        source=SOURCE_JT808,
        extras=extras,
    )


def positions_of(message: Message, vehicle_id: int, received: datetime) -> list[Position]:
    """The positions a message carries (none for messages that carry no location)."""
    body = message.body
    serial = message.header.serial
    if isinstance(body, LocationReport):
        return [to_position(body, vehicle_id, serial, received)]
    if isinstance(body, LocationQueryReply):  # also 0x0500, a subclass
        return [to_position(body.location, vehicle_id, serial, received)]
    if isinstance(body, BatchLocation):
        return [to_position(item, vehicle_id, serial, received, batch=True) for item in body.items]
    return []
