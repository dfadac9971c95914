"""Terminal → platform message bodies."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Self

from .body import (
    MSG_ID,
    U8,
    U16,
    U32,
    Bcd,
    Body,
    Edition,
    Many,
    Optional,
    Raw,
    Struct,
    Text,
    empty_body,
    message,
    only_2019,
    since_2013,
    wire,
)
from .errors import JT808Error
from .header import V2011, V2013, V2019
from .location import Location, LocationReport
from .params import PARAM, Param
from .wire import Reader, Writer, bcd_time, binary_time


@message(0x0001)
@dataclass(slots=True, kw_only=True)
class TerminalGeneralResponse(Body):
    """Terminal's answer to a platform command that has no dedicated reply."""

    reply_serial: int = wire(U16)
    reply_id: int = wire(MSG_ID)
    result: int = wire(U8)  # 0 ok, 1 failed, 2 message error, 3 unsupported


Heartbeat = empty_body("Heartbeat", 0x0002, __name__)
Logout = empty_body("Logout", 0x0003, __name__)
ServerTimeQuery = empty_body("ServerTimeQuery", 0x0004, __name__)


@message(0x0005)
@dataclass(slots=True, kw_only=True)
class TerminalResendRequest(Body):
    """2019: the terminal asks the platform to resend subpackages of one of its messages."""

    orig_serial: int = wire(U16)
    ids: list[int] = wire(Many(U16, count=U16), factory=list)


#: Fixed part of 0x0100 per layout: the body length tells 2011 from 2013.
_REGISTER_FIXED = {V2011: 25, V2013: 37, V2019: 76}


@message(0x0100)
@dataclass(slots=True, kw_only=True)
class Register(Body):
    """Terminal registration. The 2011 and 2013 layouts differ only in field widths, so the
    body length tells them apart; ``edition`` says which layout was read, and re-encoding
    writes that layout again (0, for a body built in code: the frame's layout)."""

    province: int = wire(U16)
    city: int = wire(U16)
    manufacturer: str = wire(
        Edition(v2011=Text(5), v2013=Text(5), v2019=Text(11, zero_padded=True))
    )
    model: str = wire(Edition(v2011=Text(8), v2013=Text(20), v2019=Text(30, zero_padded=True)))
    terminal_id: str = wire(Edition(v2011=Text(7), v2013=Text(7), v2019=Text(30, zero_padded=True)))
    plate_color: int = wire(U8)
    plate: str = wire(Text())  # VIN when plate_color is 0
    edition: int = field(default=0, compare=False)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        size = len(r.data)
        edition = r.version
        if edition == V2013 and size < _REGISTER_FIXED[V2013]:
            edition = V2011
        elif edition == V2019 and size < _REGISTER_FIXED[V2019]:
            edition = V2013 if size >= _REGISTER_FIXED[V2013] else V2011
        body = Struct.decode.__func__(cls, Reader(r.data, edition, r.tz))  # type: ignore[attr-defined]
        body.edition = edition
        r.pos = size
        return body

    def encode(self, w: Writer) -> None:
        if not self.edition or self.edition == w.version:
            Struct.encode(self, w)
            return
        layout = Writer(self.edition, w.tz)
        Struct.encode(self, layout)
        w.put(layout.getvalue())


@message(0x0102)
@dataclass(slots=True, kw_only=True)
class Authenticate(Body):
    """Authentication with the code from 0x8100; 2019 adds IMEI and software version."""

    auth_code: str = wire(Edition(v2011=Text(), v2013=Text(), v2019=Text(prefix=1)))
    imei: str | None = wire(only_2019(Text(15)))
    sw_version: str | None = wire(only_2019(Text(20)))


@message(0x0104)
@dataclass(slots=True, kw_only=True)
class ParametersReply(Body):
    reply_serial: int = wire(U16)
    params: list[Param] = wire(Many(PARAM, count=U8), factory=list)


@message(0x0107)
@dataclass(slots=True, kw_only=True)
class TerminalAttributes(Body):
    terminal_type: int = wire(U16)  # bit0 passenger, 1 dangerous goods, 2 freight, 3 taxi, ...
    manufacturer: str = wire(
        Edition(v2011=Text(5), v2013=Text(5), v2019=Text(11, zero_padded=True))
    )
    model: str = wire(Edition(v2011=Text(20), v2013=Text(20), v2019=Text(30, zero_padded=True)))
    terminal_id: str = wire(Edition(v2011=Text(7), v2013=Text(7), v2019=Text(30, zero_padded=True)))
    iccid: str = wire(Bcd(10))
    hw_version: str = wire(Text(prefix=1))
    fw_version: str = wire(Text(prefix=1))
    gnss_attr: int = wire(U8)  # bit0 GPS, 1 BDS, 2 GLONASS, 3 Galileo
    comm_attr: int = wire(U8)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        """2019 terminals send an 11-byte manufacturer id; some 2019 stacks keep the 5-byte one,
        which the body length reveals."""
        start = r.pos
        try:
            body = Struct.decode.__func__(cls, r)  # type: ignore[attr-defined]
            if r.version != V2019 or not r.remaining():
                return body
        except JT808Error:
            if r.version != V2019:
                raise
        r.pos = start
        return cls(
            terminal_type=r.u16(),
            manufacturer=r.text(5),
            model=r.text(30),
            terminal_id=r.text(30),
            iccid=r.bcd(10),
            hw_version=r.text_u8(),
            fw_version=r.text_u8(),
            gnss_attr=r.u8(),
            comm_attr=r.u8(),
        )


@message(0x0108)
@dataclass(slots=True, kw_only=True)
class UpgradeResult(Body):
    upgrade_type: int = wire(U8)  # 0 terminal, 12 IC card reader, 52 GNSS module
    result: int = wire(U8)  # 0 ok, 1 failed, 2 cancelled


@message(0x0201)
@dataclass(slots=True, kw_only=True)
class LocationQueryReply(Body):
    reply_serial: int = wire(U16)
    location: LocationReport = wire(Location())


@message(0x0500)
@dataclass(slots=True, kw_only=True)
class VehicleControlReply(LocationQueryReply):
    """Reply to 0x8500: where the vehicle is once the command took effect."""


@message(0x0301)
@dataclass(slots=True, kw_only=True)
class EventReport(Body):
    event_id: int = wire(U8)


@message(0x0302)
@dataclass(slots=True, kw_only=True)
class QuestionAnswer(Body):
    reply_serial: int = wire(U16)
    answer_id: int = wire(U8)


@message(0x0303)
@dataclass(slots=True, kw_only=True)
class InfoDemand(Body):
    info_type: int = wire(U8)
    subscribe: int = wire(U8)  # 1 on demand, 0 cancel


@message(0x0701)
@dataclass(slots=True, kw_only=True)
class Waybill(Body):
    content: bytes = wire(Raw(prefix=4))


def _expiry(raw: bytes) -> str:
    """BCD[4] YYYYMMDD, or the binary form some terminals send (year WORD, month, day)."""
    text = raw.hex()
    if text.isdigit():
        return text
    return f"{int.from_bytes(raw[:2], 'big'):04d}{raw[2]:02d}{raw[3]:02d}"


@message(0x0702)
@dataclass(slots=True, kw_only=True)
class DriverIdentity(Body):
    """Driver qualification IC card inserted (status 1) or removed (status 2).

    The 2011 layout (no status or time) is recognised by a first byte other than 1 or 2. Later
    fields are optional because terminals stop early when the card was not read; a binary time
    or expiry instead of BCD (seen on real terminals) is accepted and reported.
    """

    status: int | None = None
    time: datetime | None = None
    read_result: int | None = None  # 0 ok, 1 key auth failed, 2 locked, 3 pulled out, 4 checksum
    driver_name: str | None = None
    cert_code: str | None = None
    issuer: str | None = None
    cert_expiry: str | None = None  # YYYYMMDD
    id_card: str | None = None
    problems: list[str] = field(default_factory=list, compare=False)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        data = r.data
        if r.version == V2011 or (data and data[0] not in (1, 2)):
            return cls(
                driver_name=r.text_u8(),
                id_card=r.text(20),
                cert_code=r.text(40),
                issuer=r.text_u8(),
            )
        body = cls(status=r.u8())
        raw_time = r.take(6)
        body.time = bcd_time(raw_time, r.tz)
        if body.time is None:
            body.time = binary_time(raw_time, r.tz)
            body.problems.append(f"card time {raw_time.hex()} is not BCD")
        if not r.remaining():
            return body
        body.read_result = r.u8()
        if body.read_result != 0 or not r.remaining():
            return body
        body.driver_name = r.text_u8()
        body.cert_code = r.text(20)
        body.issuer = r.text_u8()
        raw_expiry = r.take(4)
        body.cert_expiry = _expiry(raw_expiry)
        if r.version == V2019 or r.remaining() >= 20:
            body.id_card = r.text(20)
        return body

    def encode(self, w: Writer) -> None:
        if w.version == V2011 or self.status is None:
            w.text_u8(self.driver_name or "")
            w.text(self.id_card or "", 20)
            w.text(self.cert_code or "", 40)
            w.text_u8(self.issuer or "")
            return
        w.u8(self.status)
        w.time(self.time)
        if self.read_result is None:
            return
        w.u8(self.read_result)
        if self.read_result != 0 or self.driver_name is None:
            return
        w.text_u8(self.driver_name)
        w.text(self.cert_code or "", 20)
        w.text_u8(self.issuer or "")
        w.bcd(self.cert_expiry or "00000000", 4)
        if w.version == V2019 or self.id_card is not None:
            w.text(self.id_card or "", 20)


@message(0x0704)
@dataclass(slots=True, kw_only=True)
class BatchLocation(Body):
    """Batch upload: type 0 normal, 1 blind-area re-send (stored while out of coverage).

    An item that cannot be read (length beyond the body, shorter than a basic block) ends the
    list; its bytes stay in ``tail`` and the reason in ``problems``."""

    batch_type: int = 0
    items: list[LocationReport] = field(default_factory=list)
    declared_count: int | None = field(default=None, compare=False)
    tail: bytes = b""
    problems: list[str] = field(default_factory=list, compare=False)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        count = r.u16()
        body = cls(batch_type=r.u8(), declared_count=count)
        data = r.data
        for index in range(count):
            start = r.pos
            if r.remaining() < 2:
                body.problems.append(
                    f"item {index}: body ended, {count - index} of {count} missing"
                )
                break
            size = r.u16()
            if size > r.remaining() or size < 28:
                body.problems.append(f"item {index}: length {size}, {r.remaining()} bytes left")
                r.pos = start
                break
            body.items.append(
                LocationReport.decode(Reader(data[r.pos : r.pos + size], r.version, r.tz))
            )
            r.pos += size
        body.tail = r.rest()
        return body

    def encode(self, w: Writer) -> None:
        w.u16(len(self.items))
        w.u8(self.batch_type)
        for item in self.items:
            sub = Writer(w.version, w.tz)
            item.encode(sub)
            w.u16(len(sub.buf))
            w.put(sub.buf)
        w.put(self.tail)


@dataclass(slots=True, kw_only=True)
class CanItem(Struct):
    can_id: int = wire(U32)  # bit31 channel, bit30 frame type, bit29 collection, 0-28 id
    data: bytes = wire(Raw(8))


@message(0x0705)
@dataclass(slots=True, kw_only=True)
class CanBusData(Body):
    received: str = "0000000000"  # BCD[5] hhmmssmsms of the first frame
    items: list[CanItem] = field(default_factory=list)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        count = r.u16()
        received = r.bcd(5)
        return cls(received=received, items=[CanItem.decode(r) for _ in range(count)])

    def encode(self, w: Writer) -> None:
        w.u16(len(self.items))
        w.bcd(self.received, 5)
        for item in self.items:
            item.encode(w)


@message(0x0800)
@dataclass(slots=True, kw_only=True)
class MediaEvent(Body):
    media_id: int = wire(U32)
    media_type: int = wire(U8)  # 0 image, 1 audio, 2 video
    media_format: int = wire(U8)  # 0 JPEG, 1 TIF, 2 MP3, 3 WAV, 4 WMV
    event: int = wire(U8)
    channel: int = wire(U8)


@message(0x0801)
@dataclass(slots=True, kw_only=True)
class MediaData(Body):
    """Multimedia upload (usually reassembled from subpackages); 2013+ carry a location."""

    media_id: int = wire(U32)
    media_type: int = wire(U8)
    media_format: int = wire(U8)
    event: int = wire(U8)
    channel: int = wire(U8)
    location: LocationReport | None = wire(since_2013(Location(basic_only=True)))
    data: bytes = wire(Raw(), default=b"")


@dataclass(slots=True, kw_only=True)
class MediaSearchItem(Struct):
    media_id: int = wire(U32)
    media_type: int = wire(U8)
    channel: int = wire(U8)
    event: int = wire(U8)
    location: LocationReport = wire(Location(basic_only=True))


@message(0x0802)
@dataclass(slots=True, kw_only=True)
class MediaSearchReply(Body):
    reply_serial: int = wire(U16)
    items: list[MediaSearchItem] = wire(Many(MediaSearchItem, count=U16), factory=list)


@message(0x0805)
@dataclass(slots=True, kw_only=True)
class CameraReply(Body):
    """Reply to 0x8801: the ids of the media taken (only when the result is 0)."""

    reply_serial: int = wire(U16)
    result: int = wire(U8)  # 0 ok, 1 failed, 2 channel not supported
    media_ids: list[int] | None = wire(Optional(Many(U32, count=U16)))


@message(0x0900)
@dataclass(slots=True, kw_only=True)
class Transparent(Body):
    """Pass-through data: type 0x00 GNSS detail (NMEA 0183 text), 0x0B IC card, 0x41/0x42
    serial ports, 0xF0-0xFF user-defined."""

    data_type: int = wire(U8)
    data: bytes = wire(Raw(), default=b"")

    GNSS_DETAIL = 0x00

    @property
    def nmea(self) -> str | None:
        if self.data_type != self.GNSS_DETAIL:
            return None
        return self.data.decode("ascii", errors="replace")

    def to_json(self) -> dict[str, Any]:
        out = Struct.to_json(self)
        if self.data_type == self.GNSS_DETAIL:
            out["nmea"] = self.nmea
        return out


@message(0x0901)
@dataclass(slots=True, kw_only=True)
class CompressedData(Body):
    """GZIP-compressed upload; :meth:`decompress` raises the codec's error on bad data."""

    data: bytes = wire(Raw(prefix=4))

    def decompress(self, limit: int = 1 << 20) -> bytes:
        try:
            out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(self.data, limit)
        except zlib.error as exc:
            raise JT808Error("body", f"0x0901 data is not gzip: {exc}") from exc
        return out

    @classmethod
    def of(cls, payload: bytes) -> Self:
        return cls(data=gzip.compress(payload))


__all__ = [
    "Authenticate",
    "BatchLocation",
    "CameraReply",
    "CanBusData",
    "CanItem",
    "CompressedData",
    "DriverIdentity",
    "EventReport",
    "Heartbeat",
    "InfoDemand",
    "LocationQueryReply",
    "Logout",
    "MediaData",
    "MediaEvent",
    "MediaSearchItem",
    "MediaSearchReply",
    "ParametersReply",
    "QuestionAnswer",
    "Register",
    "ServerTimeQuery",
    "TerminalAttributes",
    "TerminalGeneralResponse",
    "TerminalResendRequest",
    "Transparent",
    "UpgradeResult",
    "VehicleControlReply",
    "Waybill",
]
