"""Frame-level API: wire bytes ⇄ :class:`Message` (header + decoded body).

``decode_frame`` takes one complete frame as cut by :class:`~.framing.FrameSplitter`;
``encode_frame`` builds one, ``encode_frames`` splits a large body into subpackages.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import tzinfo
from functools import lru_cache
from typing import Any

from .body import REGISTRY, Body, RawBody
from .errors import JT808Error
from .framing import check_code, unescape, wrap
from .header import V2011, V2013, V2019, Header, build_header, parse_header
from .location import LocationReport
from .wire import BEIJING, Reader, Writer, bcd

MAX_BODY = 1023


@dataclass(frozen=True, slots=True)
class TerminalProfile:
    """Per-terminal decoding overrides, for devices that do not follow the standard.

    ``version`` forces the layout (2011, 2013 or 2019) whatever attribute bit 14 says;
    ``tz`` is the zone of the terminal's clock (Beijing time by default); ``strict`` rejects
    frames with a wrong check code (lenient decoding flags them instead).
    """

    version: int | None = None
    tz: tzinfo = BEIJING
    strict: bool = True


DEFAULT_PROFILE = TerminalProfile()


@dataclass(slots=True)
class Message:
    """One decoded frame."""

    header: Header
    body: Body
    checksum_ok: bool = True
    problems: list[str] = field(default_factory=list)
    raw_body: bytes = b""
    #: For a message reassembled from subpackages: the serial of each part, in index order
    #: (what the platform acknowledges).
    part_serials: list[int] = field(default_factory=list)

    @property
    def msg_id(self) -> int:
        return self.header.msg_id

    @property
    def phone(self) -> str:
        return self.header.phone

    @property
    def serial(self) -> int:
        return self.header.serial

    @property
    def version(self) -> int:
        return self.header.version

    def to_json(self) -> dict[str, Any]:
        out = self.header.to_json()
        out["checksum_ok"] = self.checksum_ok
        body = out["body"] = self.body.to_json()
        if isinstance(self.body, RawBody) and self.header.msg_id not in REGISTRY:
            body["unknown_message"] = True
        if self.problems:
            out["problems"] = list(self.problems)
        return out


def decode_frame(
    frame: bytes, *, strict: bool | None = None, profile: TerminalProfile = DEFAULT_PROFILE
) -> Message:
    """Decode one complete wire frame (with its 0x7e flags).

    Raises :class:`JT808Error` for frames that cannot be read; with ``strict`` (the default,
    from the profile) a wrong check code is such an error, otherwise it is flagged in
    ``checksum_ok``. Unknown message ids decode to :class:`RawBody`, as do subpackage parts
    (see :class:`~.subpackage.Reassembler`) and RSA-encrypted bodies.
    """
    if len(frame) < 2 or frame[0] != 0x7E or frame[-1] != 0x7E:
        raise JT808Error("framing", "a frame must start and end with 0x7e")
    payload = frame[1:-1]
    clean = True
    if b"\x7d" in payload:
        payload, clean = unescape(payload)
    if len(payload) < 13:
        raise JT808Error("header", f"{len(payload)} bytes are too short for a frame")
    content = payload[:-1]
    header, problems = parse_header(content, profile.version)
    if not clean:
        problems.append("invalid escape sequence (0x7d not followed by 01 or 02)")
    expected = check_code(content)
    checksum_ok = expected == payload[-1]
    if not checksum_ok:
        reason = f"check code 0x{payload[-1]:02X}, computed 0x{expected:02X}"
        if profile.strict if strict is None else strict:
            raise JT808Error("checksum", reason, header)
        problems.append(reason)
    raw_body = content[header.size :]
    if header.pkg_total is not None:
        body: Body = RawBody(data=raw_body)
    elif header.encryption:
        body = RawBody(data=raw_body)
        problems.append("RSA-encrypted body kept as bytes")
    else:
        edition = V2019 if header.version == V2019 else (profile.version or V2013)
        try:
            if header.msg_id == 0x0200:  # the hot path: skip the registry and trailing check
                body = LocationReport.decode(Reader(raw_body, edition, profile.tz))
            else:
                body = decode_body(header.msg_id, raw_body, edition, profile.tz, problems)
        except JT808Error as exc:
            raise JT808Error(exc.kind, exc.reason, header) from None
    return Message(header, body, checksum_ok, problems, raw_body)


def decode_body(
    msg_id: int,
    data: bytes,
    version: int = V2013,
    tz: tzinfo = BEIJING,
    problems: list[str] | None = None,
) -> Body:
    """Decode a body (also a reassembled one). Trailing bytes are reported in ``problems``."""
    cls = REGISTRY.get(msg_id)
    if cls is None:
        return RawBody(data=data)
    r = Reader(data, version, tz)
    try:
        body = cls.decode(r)
    except JT808Error:
        raise
    except (IndexError, ValueError, KeyError, OverflowError, struct.error) as exc:
        raise JT808Error("body", f"malformed 0x{msg_id:04X} body: {exc}") from exc
    if r.pos < len(data) and problems is not None:
        problems.append(f"{len(data) - r.pos} trailing body bytes ignored")
    return body


def encode_body(body: Body, version: int = V2013, tz: tzinfo = BEIJING) -> bytes:
    w = Writer(version, tz)
    try:
        body.encode(w)
    except JT808Error:
        raise
    except (TypeError, ValueError, AttributeError, OverflowError, struct.error) as exc:
        raise JT808Error("encode", f"{type(body).__name__}: {exc}") from exc
    return w.getvalue()


def _header_for(
    body: Body, phone: str, serial: int, version: int, protocol_version: int, msg_id: int | None
) -> Header:
    if msg_id is None:
        msg_id = body.MSG_ID
    if msg_id < 0:
        raise JT808Error("encode", f"{type(body).__name__} needs an explicit msg_id")
    return Header(
        msg_id,
        phone,
        serial,
        V2019 if version == V2019 else V2013,
        protocol_version if version == V2019 else None,
    )


def encode_frame(
    body: Body | Message,
    *,
    phone: str = "",
    serial: int = 0,
    version: int = V2013,
    protocol_version: int = 1,
    msg_id: int | None = None,
    tz: tzinfo = BEIJING,
) -> bytes:
    """Build one wire frame. Pass a body plus header fields, or a whole :class:`Message`.

    ``version`` is 2011, 2013 or 2019 (2011 changes only some body layouts). ``msg_id`` is
    needed only for a :class:`RawBody` or a body class shared by several ids.
    """
    if isinstance(body, Message):
        header = body.header
        data = (
            encode_body(body.body, header.version, tz) if not header.subpackaged else body.raw_body
        )
        return wrap(build_header(header, len(data)) + data)
    header = _header_for(body, phone, serial, version, protocol_version, msg_id)
    data = encode_body(body, version if version in (V2011, V2019) else V2013, tz)
    return wrap(build_header(header, len(data)) + data)


def encode_frames(
    body: Body,
    *,
    phone: str,
    serial: int,
    version: int = V2013,
    protocol_version: int = 1,
    msg_id: int | None = None,
    max_body: int = MAX_BODY,
    tz: tzinfo = BEIJING,
) -> list[bytes]:
    """Build a message as one frame, or as subpackages if its body exceeds ``max_body``.

    Parts take consecutive serials starting at ``serial`` (the first part's serial is the one
    a 0x8003 refers to)."""
    data = encode_body(body, version if version in (V2011, V2019) else V2013, tz)
    header = _header_for(body, phone, serial, version, protocol_version, msg_id)
    if len(data) <= max_body:
        return [wrap(build_header(header, len(data)) + data)]
    chunks = [data[i : i + max_body] for i in range(0, len(data), max_body)]
    frames = []
    for index, chunk in enumerate(chunks, 1):
        header.pkg_total, header.pkg_index = len(chunks), index
        header.serial = (serial + index - 1) & 0xFFFF
        frames.append(wrap(build_header(header, len(chunk)) + chunk))
    return frames


_GENERAL_RESPONSE = struct.Struct(">HHB")
_HEAD_2013 = struct.Struct(">HH6sH")
_HEAD_2019 = struct.Struct(">HHB10sH")


@lru_cache(maxsize=65536)
def _phone_bcd(phone: str, size: int) -> bytes:
    return bcd(phone, size)


def encode_general_response(
    phone: str,
    serial: int,
    reply_serial: int,
    reply_id: int,
    result: int,
    version: int = V2013,
    protocol_version: int = 1,
) -> bytes:
    """0x8001 as :func:`encode_frame` builds it, in a third of the time: the platform sends
    one for nearly every terminal message, so it skips the generic body machinery."""
    body = _GENERAL_RESPONSE.pack(reply_serial, reply_id, result)
    if version == V2019:
        head = _HEAD_2019.pack(0x8001, 0x4005, protocol_version, _phone_bcd(phone, 10), serial)
    else:
        head = _HEAD_2013.pack(0x8001, 5, _phone_bcd(phone, 6), serial)
    return wrap(head + body)
