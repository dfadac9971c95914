"""Additional items of a location report (0x0200 and everything that embeds it).

Each standard item has a name and an interpretation. An item whose length does not match its
standard layout (vendors reuse ids, quirk Q10), and every unknown or vendor id, is kept as raw
bytes under ``"0xNN"``: interpreting never raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .body import U8, U16, U32, Many, One, Raw, Spec, Struct, Time, wire
from .errors import JT808Error
from .wire import Reader, Writer

VIDEO_ALARM_BITS = (
    "video_loss",
    "video_occlusion",
    "storage_fault",
    "other_video_device_fault",
    "bus_overcrowded",
    "abnormal_driving",
    "special_alarm_storage_threshold",
)
ABNORMAL_DRIVING_BITS = ("fatigue", "phone_call", "smoking")
SIGNAL_BITS = (
    "low_beam",
    "high_beam",
    "right_turn",
    "left_turn",
    "brake",
    "reverse",
    "fog_lamp",
    "clearance_lamp",
    "horn",
    "air_conditioner",
    "neutral",
    "retarder",
    "abs",
    "heater",
    "clutch",
)
AREA_TYPES = ("none", "circle", "rectangle", "polygon", "route_segment")


def bit_names(value: int, names: tuple[str, ...]) -> list[str]:
    return [name for bit, name in enumerate(names) if value >> bit & 1]


class AlarmIdentification(Struct):
    """Active-safety alarm id: terminal id, time, sequence, attachment count, reserved.

    Terminals with 2013 headers send 16 bytes (7-byte terminal id, 1 reserved byte); 2019 ones
    send 40 (30-byte terminal id, 2 reserved bytes). It is the last field of every alarm item
    but the TPMS one, so the bytes left tell the two apart.
    """

    __slots__ = ("attachments", "reserved", "sequence", "terminal_id", "time")

    SHORT, LONG = 16, 40

    def __init__(
        self,
        terminal_id: str,
        time: datetime | str | None,
        sequence: int,
        attachments: int,
        reserved: bytes,
    ) -> None:
        self.terminal_id, self.time, self.sequence = terminal_id, time, sequence
        self.attachments, self.reserved = attachments, reserved

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AlarmIdentification) and self.to_json() == other.to_json()

    @classmethod
    def decode(cls, r: Reader, long: bool | None = None) -> AlarmIdentification:
        if long is None:
            long = r.remaining() >= cls.LONG
        terminal_id = r.text(30 if long else 7)
        time = Time(partial=True).read(r)
        sequence, attachments = r.u8(), r.u8()
        return cls(terminal_id, time, sequence, attachments, r.take(2 if long else 1))

    def encode(self, w: Writer) -> None:
        w.text(self.terminal_id, 30 if len(self.reserved) == 2 else 7)
        w.time(self.time)
        w.u8(self.sequence)
        w.u8(self.attachments)
        w.put(self.reserved)

    def to_json(self) -> dict[str, Any]:
        from .body import jsonable

        return {
            "terminal_id": self.terminal_id,
            "time": jsonable(self.time),
            "sequence": self.sequence,
            "attachments": self.attachments,
        }


@dataclass(slots=True, kw_only=True)
class AlarmSite(Struct):
    """Where and when an active-safety alarm happened: shared by all four alarm items."""

    speed_kmh: int = wire(U8)
    altitude_m: int = wire(U16)
    lat_raw: int = wire(U32)
    lon_raw: int = wire(U32)
    time: datetime | str | None = wire(Time(partial=True))
    vehicle_status: int = wire(U16)


@dataclass(slots=True, kw_only=True)
class AdasAlarm(Struct):
    """0x64 advanced driver assistance alarm (T/JSATL 12-2017)."""

    alarm_id: int = wire(U32)
    flag: int = wire(U8)  # 0 n/a, 1 start, 2 end
    type: int = wire(U8)
    level: int = wire(U8)
    front_speed_kmh: int = wire(U8)
    front_distance: int = wire(U8)  # 100 ms
    departure_type: int = wire(U8)
    road_sign_type: int = wire(U8)
    road_sign_data: int = wire(U8)
    site: AlarmSite = wire(One(AlarmSite))
    identification: AlarmIdentification = wire(One(AlarmIdentification))


@dataclass(slots=True, kw_only=True)
class DsmAlarm(Struct):
    """0x65 driver state monitoring alarm: 1 fatigue (with its degree), 2 phone, 3 smoking..."""

    alarm_id: int = wire(U32)
    flag: int = wire(U8)
    type: int = wire(U8)
    level: int = wire(U8)
    fatigue_degree: int = wire(U8)
    reserved: bytes = wire(Raw(4))
    site: AlarmSite = wire(One(AlarmSite))
    identification: AlarmIdentification = wire(One(AlarmIdentification))


@dataclass(slots=True, kw_only=True)
class TyreEvent(Struct):
    position: int = wire(U8)
    type: int = wire(U16)
    pressure_kpa: int = wire(U16)
    temperature_c: int = wire(U16)
    battery_pct: int = wire(U16)


@dataclass(slots=True, kw_only=True)
class TpmsAlarm(Struct):
    """0x66 tyre pressure monitoring alarm with its per-tyre events."""

    alarm_id: int = wire(U32)
    flag: int = wire(U8)
    site: AlarmSite = wire(One(AlarmSite))
    identification: AlarmIdentification = wire(One(AlarmIdentification))
    events: list[TyreEvent] = wire(Many(TyreEvent), factory=list)

    @classmethod
    def decode(cls, r: Reader) -> TpmsAlarm:
        """The event list follows the identification, so its form is told by the event count."""
        alarm_id, flag, site = r.u32(), r.u8(), AlarmSite.decode(r)
        left = r.remaining()
        short = AlarmIdentification.SHORT
        long = not (left > short and left == short + 1 + 9 * r.data[r.pos + short])
        identification = AlarmIdentification.decode(r, long=long)
        return cls(
            alarm_id=alarm_id,
            flag=flag,
            site=site,
            identification=identification,
            events=Many(TyreEvent).read(r),
        )


@dataclass(slots=True, kw_only=True)
class BsdAlarm(Struct):
    """0x67 blind spot detection alarm."""

    alarm_id: int = wire(U32)
    flag: int = wire(U8)
    type: int = wire(U8)
    site: AlarmSite = wire(One(AlarmSite))
    identification: AlarmIdentification = wire(One(AlarmIdentification))


def _int(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _tenths(raw: bytes) -> float:
    return int.from_bytes(raw, "big") / 10


def _temperature(raw: bytes) -> int:
    value = int.from_bytes(raw, "big")
    return -(value & 0x7FFF) if value & 0x8000 else value


def _area_type(code: int) -> str:
    return AREA_TYPES[code] if code < len(AREA_TYPES) else f"type_{code}"


def _overspeed(raw: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {"area_type": _area_type(raw[0])}
    if len(raw) == 5:
        out["area_id"] = _int(raw[1:])
    return out


def _area_crossing(raw: bytes) -> dict[str, Any]:
    return {
        "area_type": _area_type(raw[0]),
        "area_id": _int(raw[1:5]),
        "direction": "in" if raw[5] == 0 else ("out" if raw[5] == 1 else raw[5]),
    }


def _route_time(raw: bytes) -> dict[str, Any]:
    return {
        "segment_id": _int(raw[:4]),
        "drive_time_s": _int(raw[4:6]),
        "result": "too_short" if raw[6] == 0 else ("too_long" if raw[6] == 1 else raw[6]),
    }


def _abnormal_driving(raw: bytes) -> dict[str, Any]:
    return {"behaviours": bit_names(_int(raw[:2]), ABNORMAL_DRIVING_BITS), "fatigue_level": raw[2]}


def _analog(raw: bytes) -> dict[str, int]:
    value = _int(raw)
    return {"ad0": value & 0xFFFF, "ad1": value >> 16}


def _struct(cls: type[Struct]) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        r = Reader(raw)
        value = cls.decode(r)
        if r.remaining():
            raise JT808Error("body", "trailing bytes")
        return value

    return decode


# id -> (name, accepted lengths or None for any, interpretation)
ITEMS: dict[int, tuple[str, tuple[int, ...] | None, Callable[[bytes], Any]]] = {
    0x01: ("mileage_km", (4,), _tenths),
    0x02: ("fuel_l", (2,), _tenths),
    0x03: ("recorder_speed_kmh", (2,), _tenths),
    0x04: ("alarm_event_id", (2,), _int),
    0x05: ("tyre_pressure", (30,), list),
    0x06: ("carriage_temperature_c", (2,), _temperature),
    0x11: ("overspeed", (1, 5), _overspeed),
    0x12: ("area_crossing", (6,), _area_crossing),
    0x13: ("route_drive_time", (7,), _route_time),
    0x14: ("video_alarms", (4,), lambda raw: bit_names(_int(raw), VIDEO_ALARM_BITS)),
    0x15: ("video_loss_channels", (4,), _int),
    0x16: ("video_occlusion_channels", (4,), _int),
    0x17: ("storage_faults", (2,), _int),
    0x18: ("abnormal_driving", (3,), _abnormal_driving),
    0x25: ("signals", (4,), lambda raw: bit_names(_int(raw), SIGNAL_BITS)),
    0x2A: ("io_status", (2,), _int),
    0x2B: ("analog", (4,), _analog),
    0x30: ("signal_strength", (1,), _int),
    0x31: ("satellites", (1,), _int),
    0x64: ("adas", None, _struct(AdasAlarm)),
    0x65: ("dsm", None, _struct(DsmAlarm)),
    0x66: ("tpms", None, _struct(TpmsAlarm)),
    0x67: ("bsd", None, _struct(BsdAlarm)),
}
ITEM_BY_NAME = {name: item_id for item_id, (name, _, _) in ITEMS.items()}


def interpret_items(items: list[tuple[int, bytes]]) -> dict[str, Any]:
    """Name and interpret items; a repeated id keeps every value (as a list)."""
    out: dict[str, Any] = {}
    for item_id, raw in items:
        known = ITEMS.get(item_id)
        key: str | None = None
        value: Any = raw
        if known is not None and (known[1] is None or len(raw) in known[1]):
            try:
                value = known[2](raw)
                key = known[0]
            except (JT808Error, IndexError, ValueError, TypeError):
                value = raw
        if key is None:
            key = f"0x{item_id:02X}"
        if key in out:
            prev = out[key]
            out[key] = [*prev, value] if isinstance(prev, list) and key[1] == "x" else [prev, value]
        else:
            out[key] = value
    return out


def _encode_int(size: int, scale: float = 1) -> Callable[[Any], bytes]:
    return lambda value: round(value * scale).to_bytes(size, "big")


_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "mileage_km": _encode_int(4, 10),
    "fuel_l": _encode_int(2, 10),
    "recorder_speed_kmh": _encode_int(2, 10),
    "alarm_event_id": _encode_int(2),
    "carriage_temperature_c": lambda v: (abs(v) | (0x8000 if v < 0 else 0)).to_bytes(2, "big"),
    "video_loss_channels": _encode_int(4),
    "video_occlusion_channels": _encode_int(4),
    "storage_faults": _encode_int(2),
    "io_status": _encode_int(2),
    "signal_strength": _encode_int(1),
    "satellites": _encode_int(1),
    "tyre_pressure": bytes,
    "overspeed": lambda v: (
        bytes((AREA_TYPES.index(v["area_type"]),))
        + (v["area_id"].to_bytes(4, "big") if "area_id" in v else b"")
    ),
    "area_crossing": lambda v: (
        bytes((AREA_TYPES.index(v["area_type"]),))
        + v["area_id"].to_bytes(4, "big")
        + bytes(((0 if v["direction"] == "in" else 1),))
    ),
    "route_drive_time": lambda v: (
        v["segment_id"].to_bytes(4, "big")
        + v["drive_time_s"].to_bytes(2, "big")
        + bytes(((0 if v["result"] == "too_short" else 1),))
    ),
    "analog": lambda v: (v["ad0"] | v["ad1"] << 16).to_bytes(4, "big"),
    "signals": lambda v: sum(1 << SIGNAL_BITS.index(n) for n in v).to_bytes(4, "big"),
    "video_alarms": lambda v: sum(1 << VIDEO_ALARM_BITS.index(n) for n in v).to_bytes(4, "big"),
}


def encode_items(extras: dict[str, Any]) -> list[tuple[int, bytes]]:
    """Named extras (as :func:`interpret_items` gives them) → raw items, for building reports.

    Raw ``"0xNN"`` keys pass through; active-safety items must be given as raw bytes."""
    items: list[tuple[int, bytes]] = []
    for key, value in extras.items():
        if key.startswith("0x"):
            items.append((int(key, 16), bytes(value)))
            continue
        encoder = _ENCODERS.get(key)
        if encoder is None:
            raise JT808Error("encode", f"no encoder for additional item {key!r}")
        try:
            items.append((ITEM_BY_NAME[key], encoder(value)))
        except (OverflowError, ValueError, KeyError, TypeError) as exc:
            raise JT808Error("encode", f"additional item {key!r}: {exc}") from exc
    return items


def encode_struct(value: Struct) -> bytes:
    w = Writer()
    value.encode(w)
    return w.getvalue()


__all__ = [
    "ITEMS",
    "AdasAlarm",
    "BsdAlarm",
    "DsmAlarm",
    "Spec",
    "TpmsAlarm",
    "encode_items",
    "encode_struct",
    "interpret_items",
]
