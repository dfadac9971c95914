"""Primitive wire types of JT/T 808: big-endian integers, BCD, BCD times, GBK strings.

:class:`Reader` never reads past the end of its data: a short body raises :class:`JT808Error`
with the offset, so a malformed frame can never crash a caller with an IndexError.
"""

from __future__ import annotations

import contextlib
import struct
from datetime import datetime, timedelta, timezone, tzinfo

from .errors import JT808Error

#: JT/T 808 times are Beijing time unless a message says otherwise.
BEIJING = timezone(timedelta(hours=8), "+08:00")

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

#: BCD byte -> value 0-99, or -1 for a byte with a non-decimal nibble.
_BCD = [((b >> 4) * 10 + (b & 15)) if (b >> 4) < 10 and (b & 15) < 10 else -1 for b in range(256)]


#: Recently decoded times: terminals report the current time, so within a second many of them
#: send the same six bytes. Bounded by emptying it when full (datetimes are immutable).
_TIMES: dict[tuple[bytes, tzinfo], datetime | None] = {}
_TIMES_MAX = 4096


def bcd_time(raw: bytes, tz: tzinfo = BEIJING) -> datetime | None:
    """BCD ``YYMMDDhhmmss`` → aware datetime, or None if the digits are not a valid time."""
    key = (raw, tz)
    try:
        return _TIMES[key]
    except KeyError:
        pass
    y, mo, d, h, mi, s = map(_BCD.__getitem__, raw)
    value: datetime | None = None
    if y >= 0:
        with contextlib.suppress(ValueError):  # another non-decimal byte is -1: rejected
            value = datetime(2000 + y, mo, d, h, mi, s, tzinfo=tz)
    if len(_TIMES) >= _TIMES_MAX:
        _TIMES.clear()
    _TIMES[key] = value
    return value


def binary_time(raw: bytes, tz: tzinfo = BEIJING) -> datetime | None:
    """The same six fields as plain bytes (some terminals send binary instead of BCD)."""
    try:
        return datetime(2000 + raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], tzinfo=tz)
    except ValueError:
        return None


def time_bcd(value: datetime | str, tz: tzinfo = BEIJING) -> bytes:
    """Aware datetime (converted to ``tz``) or a 12-digit string → BCD[6]."""
    if isinstance(value, str):
        return bcd(value, 6)
    if value.tzinfo is not None:
        value = value.astimezone(tz)
    if not 2000 <= value.year <= 2099:  # %y would silently wrap it into 2000-2099
        raise JT808Error("encode", f"{value.isoformat()} is outside 2000-2099 (BCD[6] time)")
    return bytes.fromhex(value.strftime("%y%m%d%H%M%S"))


def bcd(digits: str, size: int) -> bytes:
    """Digit string → BCD[size], left-padded with zeros (hex letters pass through, quirk Q4)."""
    text = digits.rjust(size * 2, "0")
    if len(text) != size * 2:
        raise JT808Error("encode", f"{digits!r} does not fit BCD[{size}]")
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise JT808Error("encode", f"{digits!r} is not a BCD digit string") from exc


def gbk(text: str) -> bytes:
    try:
        return text.encode("gbk")
    except UnicodeEncodeError as exc:
        raise JT808Error("encode", f"{text!r} cannot be encoded in GBK") from exc


def ungbk(raw: bytes) -> str:
    return raw.decode("gbk", errors="replace")


class Reader:
    """Cursor over a message body. Every read checks the bounds."""

    __slots__ = ("data", "pos", "tz", "version")

    def __init__(self, data: bytes, version: int = 2013, tz: tzinfo = BEIJING) -> None:
        self.data = data
        self.pos = 0
        self.version = version
        self.tz = tz

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def _need(self, n: int) -> int:
        pos = self.pos
        if pos + n > len(self.data):
            raise JT808Error(
                "body", f"truncated: need {n} bytes at offset {pos}, {len(self.data) - pos} left"
            )
        self.pos = pos + n
        return pos

    def u8(self) -> int:
        return self.data[self._need(1)]

    def u16(self) -> int:
        return _U16.unpack_from(self.data, self._need(2))[0]

    def u32(self) -> int:
        return _U32.unpack_from(self.data, self._need(4))[0]

    def take(self, n: int) -> bytes:
        pos = self._need(n)
        return self.data[pos : pos + n]

    def rest(self) -> bytes:
        pos, self.pos = self.pos, len(self.data)
        return self.data[pos:]

    def bcd(self, n: int) -> str:
        return self.take(n).hex()

    def time(self) -> datetime | None:
        return bcd_time(self.take(6), self.tz)

    def text(self, n: int) -> str:
        """Fixed-width GBK text, 0x00-padded on the right."""
        return ungbk(self.take(n).rstrip(b"\x00"))

    def text_u8(self) -> str:
        return ungbk(self.take(self.u8()))

    def text_u16(self) -> str:
        return ungbk(self.take(self.u16()))


class Writer:
    """Growing body buffer with the same vocabulary as :class:`Reader`."""

    __slots__ = ("buf", "tz", "version")

    def __init__(self, version: int = 2013, tz: tzinfo = BEIJING) -> None:
        self.buf = bytearray()
        self.version = version
        self.tz = tz

    def u8(self, value: int) -> None:
        self._int(value, 1)

    def u16(self, value: int) -> None:
        self._int(value, 2)

    def u32(self, value: int) -> None:
        self._int(value, 4)

    def _int(self, value: int, size: int) -> None:
        try:
            self.buf += value.to_bytes(size, "big")
        except (OverflowError, AttributeError) as exc:
            raise JT808Error(
                "encode", f"{value!r} does not fit an unsigned {8 * size}-bit field"
            ) from exc

    def put(self, raw: bytes | bytearray) -> None:
        self.buf += raw

    def fixed(self, raw: bytes, n: int) -> None:
        if len(raw) > n:
            raise JT808Error("encode", f"{len(raw)} bytes do not fit a {n}-byte field")
        self.buf += raw.ljust(n, b"\x00")

    def bcd(self, digits: str, n: int) -> None:
        self.buf += bcd(digits, n)

    def time(self, value: datetime | str | None) -> None:
        self.buf += b"\x00" * 6 if value is None else time_bcd(value, self.tz)

    def text(self, value: str, n: int) -> None:
        self.fixed(gbk(value), n)

    def text_u8(self, value: str) -> None:
        raw = gbk(value)
        self.u8(len(raw))
        self.buf += raw

    def text_u16(self, value: str) -> None:
        raw = gbk(value)
        self.u16(len(raw))
        self.buf += raw

    def getvalue(self) -> bytes:
        return bytes(self.buf)
