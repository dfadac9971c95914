"""0x0200 location report: the 28-byte basic block, named alarm/status flags, additional items.

This is the hot path of the whole platform, so the basic block is unpacked with one struct call
and the additional items are only split (id, bytes) here; :meth:`LocationReport.extras` names
and interprets them on demand (see ``location_items``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Self

from .body import Body, Spec, jsonable, message
from .location_items import interpret_items
from .wire import Reader, Writer, bcd_time, time_bcd

_BASIC = struct.Struct(">IIIIHHH6s")
BASIC_SIZE = _BASIC.size  # 28

_new = object.__new__

STATUS_SOUTH = 1 << 2
STATUS_WEST = 1 << 3

#: Alarm word bits, 2019 meanings (2013 differs only in naming bit 3 and leaving 15-17 reserved).
ALARM_BITS: dict[int, str] = {
    0: "emergency",
    1: "overspeed",
    2: "fatigue_driving",
    3: "dangerous_driving",
    4: "gnss_module_fault",
    5: "gnss_antenna_cut",
    6: "gnss_antenna_short",
    7: "power_undervoltage",
    8: "power_cut",
    9: "display_fault",
    10: "tts_fault",
    11: "camera_fault",
    12: "ic_card_module_fault",
    13: "overspeed_warning",
    14: "fatigue_warning",
    15: "illegal_driving",
    16: "tyre_pressure_warning",
    17: "right_turn_blind_zone",
    18: "daily_driving_overtime",
    19: "parking_overtime",
    20: "area_in_out",
    21: "route_in_out",
    22: "route_drive_time",
    23: "route_deviation",
    24: "vss_fault",
    25: "fuel_abnormal",
    26: "vehicle_stolen",
    27: "illegal_ignition",
    28: "illegal_displacement",
    29: "collision",
    30: "rollover",
    31: "illegal_door_open",
}
ALARM_BY_NAME = {name: bit for bit, name in ALARM_BITS.items()}

#: Single-bit status flags (bits 8-9, the load state, are decoded separately).
STATUS_BITS: dict[int, str] = {
    0: "acc_on",
    1: "positioned",
    2: "south",
    3: "west",
    4: "out_of_service",
    5: "coords_encrypted",
    10: "oil_cut",
    11: "circuit_cut",
    12: "doors_locked",
    13: "door1_open",
    14: "door2_open",
    15: "door3_open",
    16: "door4_open",
    17: "door5_open",
    18: "gps",
    19: "beidou",
    20: "glonass",
    21: "galileo",
    22: "moving",
}
LOAD_STATES = ("empty", "half", "reserved", "full")


def alarm_names(alarm: int) -> list[str]:
    return [name for bit, name in ALARM_BITS.items() if alarm >> bit & 1]


def status_flags(status: int) -> dict[str, Any]:
    flags: dict[str, Any] = {name: bool(status >> bit & 1) for bit, name in STATUS_BITS.items()}
    flags["load"] = LOAD_STATES[status >> 8 & 3]
    return flags


@message(0x0200)
@dataclass(slots=True, kw_only=True)
class LocationReport(Body):
    """A position fix. Latitude/longitude are signed degrees (south/west from status bits 2/3);
    ``items`` are the additional items as sent (id, raw bytes), in order; ``tail`` holds bytes
    after the last whole item (truncated items, non-TLV vendor data), so nothing is dropped."""

    alarm: int = 0
    status: int = 0
    latitude: float = 0.0
    longitude: float = 0.0
    altitude_m: int = 0
    speed_kmh: float = 0.0
    heading: int = 0
    time: datetime | None = None
    items: list[tuple[int, bytes]] = field(default_factory=list)
    tail: bytes = b""
    problems: list[str] = field(default_factory=list)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        data = r.data
        pos = r.pos
        if len(data) - pos < BASIC_SIZE:
            r.take(BASIC_SIZE)  # raises the codec's truncation error
        alarm, status, lat, lon, alt, speed, heading, raw_time = _BASIC.unpack_from(data, pos)
        # Hot path: filling the slots directly is 5x cheaper than the dataclass __init__.
        report = _new(cls)
        report.alarm = alarm
        report.status = status
        # -(x / 1e6), not -x / 1e6: a zero south/west coordinate must stay -0.0, or re-encoding
        # the report clears the status bit
        report.latitude = -(lat / 1e6) if status & STATUS_SOUTH else lat / 1e6
        report.longitude = -(lon / 1e6) if status & STATUS_WEST else lon / 1e6
        report.altitude_m = alt
        report.speed_kmh = speed / 10
        report.heading = heading
        report.time = bcd_time(raw_time, r.tz)
        report.items = []
        report.tail = b""
        report.problems = []
        if report.time is None:
            report.problems.append(f"invalid time {raw_time.hex()}")
        pos += BASIC_SIZE
        end = len(data)
        items = report.items
        while pos + 2 <= end:
            length = data[pos + 1]
            if pos + 2 + length > end:
                report.problems.append(
                    f"item 0x{data[pos]:02X} declares {length} bytes, {end - pos - 2} left"
                )
                break
            items.append((data[pos], data[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        if pos < end:
            report.tail = data[pos:]
            if pos + 1 == end:
                report.problems.append(f"lone byte 0x{data[pos]:02X} after the last item")
        r.pos = end
        return report

    @classmethod
    def decode_basic(cls, r: Reader) -> Self:
        """Only the 28-byte block (as embedded in 0x0801 and 0x0802)."""
        start = r.pos
        r.take(BASIC_SIZE)
        return cls.decode(Reader(r.data[start : start + BASIC_SIZE], r.version, r.tz))

    def encode(self, w: Writer) -> None:
        self.encode_basic(w)
        buf = w.buf
        for item_id, raw in self.items:
            buf += bytes((item_id, len(raw)))
            buf += raw
        buf += self.tail

    def encode_basic(self, w: Writer) -> None:
        status = self.status & ~(STATUS_SOUTH | STATUS_WEST)
        if math.copysign(1.0, self.latitude) < 0:
            status |= STATUS_SOUTH
        if math.copysign(1.0, self.longitude) < 0:
            status |= STATUS_WEST
        w.put(
            _BASIC.pack(
                self.alarm,
                status,
                round(abs(self.latitude) * 1e6),
                round(abs(self.longitude) * 1e6),
                self.altitude_m,
                round(self.speed_kmh * 10),
                self.heading,
                b"\x00" * 6 if self.time is None else time_bcd(self.time, w.tz),
            )
        )

    @property
    def alarms(self) -> list[str]:
        return alarm_names(self.alarm)

    @property
    def status_flags(self) -> dict[str, Any]:
        return status_flags(self.status)

    @property
    def positioned(self) -> bool:
        return bool(self.status & 2)

    def extras(self) -> dict[str, Any]:
        """Additional items by name; unknown and vendor items as ``"0xNN"`` → raw bytes."""
        return interpret_items(self.items)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "latitude": self.latitude,
            "longitude": self.longitude,
            "altitude_m": self.altitude_m,
            "speed_kmh": self.speed_kmh,
            "heading": self.heading,
            "time": jsonable(self.time),
            "alarm": self.alarm,
            "alarms": self.alarms,
            "status": self.status,
            "status_flags": self.status_flags,
            "extras": jsonable(self.extras()),
        }
        if self.tail:
            out["tail"] = self.tail.hex()
        if self.problems:
            out["problems"] = list(self.problems)
        return out


class Location(Spec):
    """A location report embedded in another body: whole (rest of the body) or basic block only."""

    def __init__(self, basic_only: bool = False) -> None:
        self.basic_only = basic_only

    def read(self, r: Reader) -> LocationReport:
        return LocationReport.decode_basic(r) if self.basic_only else LocationReport.decode(r)

    def write(self, w: Writer, value: LocationReport) -> None:
        if self.basic_only:
            value.encode_basic(w)
        else:
            value.encode(w)
