"""Terminal parameters (0x8103 set, 0x8106 query some, 0x0104 reply): ids and their types.

A value whose length does not fit its id's type, and any id not in the table, stays raw bytes,
so vendor parameters survive a decode/encode round trip untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .body import Spec, Struct
from .errors import JT808Error
from .wire import Reader, Writer, gbk, ungbk

DWORD, WORD, BYTE, STRING = "dword", "word", "byte", "string"
_INT_SIZE = {BYTE: 1, WORD: 2, DWORD: 4}


def _ids(first: int, last: int, kind: str) -> dict[int, str]:
    return dict.fromkeys(range(first, last + 1), kind)


#: JT/T 808-2013/2019 parameter ids → value type. BYTE[n] parameters (0x0032, CAN ids) are raw.
PARAM_TYPES: dict[int, str] = {
    **_ids(0x0001, 0x0007, DWORD),
    **_ids(0x0010, 0x0017, STRING),
    0x0018: DWORD,
    0x0019: DWORD,
    0x001A: STRING,
    0x001B: DWORD,
    0x001C: DWORD,
    0x001D: STRING,
    **_ids(0x0020, 0x0022, DWORD),
    **_ids(0x0023, 0x0026, STRING),  # 2019: backup server APN/user/password/address
    **_ids(0x0027, 0x0029, DWORD),
    **_ids(0x002C, 0x0030, DWORD),
    0x0031: WORD,
    **_ids(0x0040, 0x0044, STRING),
    0x0045: DWORD,
    0x0046: DWORD,
    0x0047: DWORD,
    0x0048: STRING,
    0x0049: STRING,
    **_ids(0x0050, 0x005A, DWORD),
    **_ids(0x005B, 0x005E, WORD),
    0x0064: DWORD,
    0x0065: DWORD,
    **_ids(0x0070, 0x0074, DWORD),
    0x0080: DWORD,
    0x0081: WORD,
    0x0082: WORD,
    0x0083: STRING,
    0x0084: BYTE,
    0x0090: BYTE,
    0x0091: BYTE,
    0x0092: BYTE,
    0x0093: DWORD,
    0x0094: BYTE,
    0x0095: DWORD,
    0x0100: DWORD,
    0x0101: WORD,
    0x0102: DWORD,
    0x0103: WORD,
}

#: Names of the parameters the supervision rules push (and a few every operator asks about).
PARAM_NAMES: dict[int, str] = {
    0x0001: "heartbeat_interval_s",
    0x0002: "tcp_reply_timeout_s",
    0x0003: "tcp_retransmissions",
    0x0013: "main_server_address",
    0x0018: "server_tcp_port",
    0x0020: "report_strategy",
    0x0027: "sleep_report_interval_s",
    0x0028: "emergency_report_interval_s",
    0x0029: "default_report_interval_s",
    0x0050: "alarm_mask",
    0x0055: "max_speed_kmh",
    0x0056: "overspeed_duration_s",
    0x0057: "continuous_driving_limit_s",
    0x0058: "daily_driving_limit_s",
    0x0059: "minimum_rest_s",
    0x005A: "maximum_parking_s",
    0x005B: "overspeed_warning_margin_dkmh",
    0x005C: "fatigue_warning_margin_s",
    0x0080: "odometer_hm",
    0x0081: "province_id",
    0x0082: "city_id",
    0x0083: "plate",
    0x0084: "plate_color",
}


@dataclass(slots=True)
class Param(Struct):
    """One parameter: numeric types are ints, STRING is text, anything else raw bytes."""

    id: int
    value: int | str | bytes

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": f"0x{self.id:04X}"}
        if self.id in PARAM_NAMES:
            out["name"] = PARAM_NAMES[self.id]
        out["value"] = self.value.hex() if isinstance(self.value, bytes) else self.value
        return out


class ParamSpec(Spec):
    """id DWORD, length BYTE, value."""

    def read(self, r: Reader) -> Param:
        param_id = r.u32()
        raw = r.take(r.u8())
        kind = PARAM_TYPES.get(param_id)
        if kind == STRING:
            return Param(param_id, ungbk(raw))
        if kind is not None and _INT_SIZE[kind] == len(raw):
            return Param(param_id, int.from_bytes(raw, "big"))
        return Param(param_id, raw)

    def write(self, w: Writer, value: Param) -> None:
        v = value.value
        if isinstance(v, bytes):
            raw = v
        elif isinstance(v, str):
            raw = gbk(v)
        else:
            kind = PARAM_TYPES.get(value.id)
            if kind is None or kind == STRING:
                raise JT808Error("encode", f"parameter 0x{value.id:04X} takes text or raw bytes")
            raw = v.to_bytes(_INT_SIZE[kind], "big")
        if len(raw) > 255:
            raise JT808Error("encode", f"parameter 0x{value.id:04X}: {len(raw)} bytes exceed 255")
        w.u32(value.id)
        w.u8(len(raw))
        w.put(raw)


PARAM = ParamSpec()

__all__ = ["PARAM", "PARAM_NAMES", "PARAM_TYPES", "Param", "ParamSpec"]
