"""Location messages (0x0200, 0x0201, 0x0500, 0x0704) → platform :class:`Position` values.

The protocol edge: Beijing (or the terminal's) time becomes UTC here, extras become JSON values,
the status word becomes ``valid`` and ``ignition`` (bit 0, ACC), the alarm word a set of alarm
names. Past here no code reads a JT/T 808 bit: the words ride along only for the store's
columns. Alarm words repeat (most are 0, the rest a handful of combinations), so their name
sets are made once per distinct word and shared.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from geo.position import NO_ALARMS, SOURCE_JT808, Position
from protocols.jt808 import (
    BatchLocation,
    LocationQueryReply,
    LocationReport,
    Message,
    jsonable,
)
from protocols.jt808.location import alarm_names

_ACC = 0x01
_POSITIONED = 0x02
_ALARM_SETS: dict[int, frozenset[str]] = {0: NO_ALARMS}
_ALARM_SETS_MAX = 4096  # distinct words kept (a flood of odd words cannot grow it further)


def alarm_set(word: int) -> frozenset[str]:
    """The alarm names of an alarm word (shared frozensets, one per distinct word)."""
    names = _ALARM_SETS.get(word)
    if names is None:
        names = frozenset(alarm_names(word))
        if len(_ALARM_SETS) < _ALARM_SETS_MAX:
            _ALARM_SETS[word] = names
    return names


def revive(position: Position) -> Position:
    """A JT/T 808 position read back from the store, which keeps the raw words: its ignition
    and alarms again, from them (for the rules' replay after a restore). Other sources carry
    no words; they are returned as stored."""
    if position.source == SOURCE_JT808:
        position.ignition = bool(position.status_word & _ACC)
        position.alarms = alarm_set(position.alarm_word)
    return position


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
        ignition=bool(report.status & _ACC),
        alarms=alarm_set(report.alarm),
        valid=valid,
        serial=serial,
        batch=batch,
        source=SOURCE_JT808,
        extras=extras,
        alarm_word=report.alarm,
        status_word=report.status,
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
