"""Message header: 2011/2013 (12 bytes) and 2019 (17 bytes) layouts, subpackage fields, RSA flag."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import JT808Error
from .wire import bcd

V2011, V2013, V2019 = 2011, 2013, 2019

_ATTR_LEN = 0x03FF
_ATTR_RSA = 0x0400
_ATTR_ENCRYPTION = 0x1C00
_ATTR_SUBPACKAGE = 0x2000
_ATTR_2019 = 0x4000
_ATTR_RESERVED = 0x8000

_H2013 = struct.Struct(">HH6sH")
_H2019 = struct.Struct(">HHB10sH")
_PKG = struct.Struct(">HH")


@dataclass(slots=True)
class Header:
    """What every frame says about itself. ``version`` is the header layout: 2013 (also used by
    2011 terminals) or 2019; the body layout may still say 2011."""

    msg_id: int
    phone: str  # 12 (2013) or 20 (2019) digits as sent, leading zeros kept
    serial: int
    version: int = V2013
    protocol_version: int | None = None  # 2019 only
    body_len: int = 0  # as declared in the attribute word
    encryption: int = 0  # 0 none, 1 RSA (bits 10-12)
    pkg_total: int | None = None
    pkg_index: int | None = None
    reserved_bit: bool = False  # attribute bit 15 (vendor e-locks use it, quirk Q11)

    @property
    def subpackaged(self) -> bool:
        return self.pkg_total is not None

    @property
    def size(self) -> int:
        return (17 if self.version == V2019 else 12) + (4 if self.pkg_total is not None else 0)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "msg_id": f"0x{self.msg_id:04X}",
            "version": str(self.version),
            "phone": self.phone,
            "serial": self.serial,
            "body_len": self.body_len,
        }
        if self.protocol_version is not None:
            out["protocol_version"] = self.protocol_version
        if self.encryption:
            out["encryption"] = self.encryption
        if self.pkg_total is not None:
            out["pkg_total"], out["pkg_index"] = self.pkg_total, self.pkg_index
        return out


def parse_header(content: bytes, force_version: int | None = None) -> tuple[Header, list[str]]:
    """Parse the header of an unescaped frame (header + body, no check code).

    The layout follows attribute bit 14 unless ``force_version`` says otherwise (quirk Q6) or
    only the other layout fits the frame's length (quirks Q5 and Q6, reported as problems).
    """
    n = len(content)
    if n < 12:
        raise JT808Error("header", f"{n} bytes are too short for a header")
    msg_id, attr = _PKG.unpack_from(content, 0)
    problems: list[str] = []
    body_len = attr & _ATTR_LEN
    extra = 4 if attr & _ATTR_SUBPACKAGE else 0
    if force_version is None:
        as_2019 = bool(attr & _ATTR_2019)
        size, other = (17, 12) if as_2019 else (12, 17)
        if n - size - extra != body_len and n - other - extra == body_len:
            problems.append(
                "version flag set but the frame has the 2013 header layout"
                if as_2019
                else "2019 header layout without the version flag"
            )
            as_2019 = not as_2019
    else:
        as_2019 = force_version == V2019
    encryption = (attr & _ATTR_ENCRYPTION) >> 10
    reserved = bool(attr & _ATTR_RESERVED)
    if as_2019:
        if n < 17:
            raise JT808Error("header", f"{n} bytes are too short for a 2019 header")
        _, _, proto, phone, serial = _H2019.unpack_from(content, 0)
        header = Header(
            msg_id, phone.hex(), serial, V2019, proto, body_len, encryption, None, None, reserved
        )
        offset = 17
    else:
        _, _, phone, serial = _H2013.unpack_from(content, 0)
        header = Header(
            msg_id, phone.hex(), serial, V2013, None, body_len, encryption, None, None, reserved
        )
        offset = 12
    if extra:
        if n < offset + 4:
            raise JT808Error("header", "subpackage flag set but the header has no package fields")
        header.pkg_total, header.pkg_index = _PKG.unpack_from(content, offset)
        offset += 4
        if not 1 <= header.pkg_index <= header.pkg_total:
            problems.append(f"package index {header.pkg_index} outside 1..{header.pkg_total}")
    if not header.phone.isdigit():
        problems.append("phone number is not BCD")
    if n - offset != body_len:
        problems.append(f"body length: header says {body_len}, frame has {n - offset}")
    return header, problems


def build_header(header: Header, body_len: int) -> bytes:
    """Header bytes for a body of ``body_len`` bytes (the attribute word is computed)."""
    if body_len > _ATTR_LEN:
        raise JT808Error("encode", f"body of {body_len} bytes exceeds 1023: send it in subpackages")
    attr = body_len | (header.encryption << 10 & _ATTR_ENCRYPTION)
    if header.reserved_bit:
        attr |= _ATTR_RESERVED
    if header.pkg_total is not None:
        attr |= _ATTR_SUBPACKAGE
    try:
        if header.version == V2019:
            attr |= _ATTR_2019
            out = _H2019.pack(
                header.msg_id,
                attr,
                1 if header.protocol_version is None else header.protocol_version,
                bcd(header.phone, 10),
                header.serial,
            )
        else:
            out = _H2013.pack(header.msg_id, attr, bcd(header.phone, 6), header.serial)
        if header.pkg_total is not None:
            out += _PKG.pack(header.pkg_total, header.pkg_index or 1)
    except struct.error as exc:
        raise JT808Error("encode", f"header field out of range: {exc}") from exc
    return out
