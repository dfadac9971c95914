"""Location messages (0x0200, 0x0201, 0x0500, 0x0704) → platform :class:`Position` values.

The protocol edge: Beijing (or the terminal's) time becomes UTC here, extras become JSON values,
the status word becomes ``valid`` and ``ignition`` (bit 0, ACC), the alarm word a set of alarm
names. Past here no code reads a JT/T 808 bit: the words ride along only for the store's
columns. Alarm words repeat (most are 0, the rest a handful of combinations), so their name
sets are made once per distinct word and shared.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from geo.flags import TIME_INVALID
from geo.position import NO_ALARMS, SOURCE_JT808, Position
from protocols.jt808 import (
    BatchLocation,
    LocationQueryReply,
    LocationReport,
    Message,
    jsonable,
)
from protocols.jt808.location import alarm_names, status_flags

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


def status_names(word: int) -> list[str]:
    """A stored status word in platform words for people (the vehicle panel): the flags that
    are set (``acc_on``, ``positioned``, ``doors_locked``, ...) and ``load_*`` unless empty.
    The dashboard gets this function from the wiring, so it reads no JT/T 808 bit itself."""
    flags = status_flags(word)
    names = [k for k, v in flags.items() if v is True]
    load = flags["load"]
    return names + ([f"load_{load}"] if load != "empty" else [])


def revive(position: Position) -> Position:
    """A JT/T 808 position read back from the store, which keeps the raw words: its ignition
    and alarms again, from them (for the rules' replay after a restore). Other sources carry
    no words; they are returned as stored."""
    if position.source == SOURCE_JT808:
        position.ignition = bool(position.status_word & _ACC)
        position.alarms = alarm_set(position.alarm_word)
    return position


def _plain(extras: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready extras; numbers (nearly all of them) pass through untouched. Text loses NUL
    characters: PostgreSQL stores none in text or jsonb, and one inside a vendor's fixed-width
    field (an active-safety alarm's terminal id) made the whole report unstorable."""
    return {
        k: v if isinstance(v, int | float) else _no_nul(v if isinstance(v, str) else jsonable(v))
        for k, v in extras.items()
    }


def _no_nul(value: Any) -> Any:
    """``value`` (JSON-ready) with NUL characters taken out of every string in it."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nul(v) for v in value]
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def untimed_key(report: LocationReport) -> datetime:
    """The stored fix time of a report whose time is not a time: a point before 1980 (no GNSS
    time is that old) derived from the report's content, never from when it arrived. A
    retransmission (same serial, same content) so maps to the same (vehicle, fix time, serial)
    row and the dedupe index drops it; distinct reports differ in content, so a serial that
    comes round again after 65,536 messages is not taken for a repeat. 48 bits of BLAKE2b as
    microseconds: 1970-01-01 to 1978-12."""
    content = repr((report.alarm, report.status, report.latitude, report.longitude,
                    report.altitude_m, report.speed_kmh, report.heading, report.items,
                    report.tail))  # fmt: skip
    digest = hashlib.blake2b(content.encode(), digest_size=6).digest()
    return _EPOCH + timedelta(microseconds=int.from_bytes(digest, "big"))


def to_position(
    report: LocationReport, vehicle_id: int, serial: int, received: datetime, batch: bool = False
) -> Position:
    """One report as a Position. A report without a valid time is kept, invalid and flagged
    ``time_invalid``, at a stable stand-in time (:func:`untimed_key`); the rules judge it at
    its receive time (``geo.flags``)."""
    extras = _plain(report.extras()) if report.items else {}
    valid = bool(report.status & _POSITIONED)
    if report.time is None:
        fix_time = untimed_key(report)
        valid = False
        extras[TIME_INVALID] = True
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
