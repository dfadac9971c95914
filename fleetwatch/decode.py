"""``fleetwatch decode``: hex frames pasted from logs → JSON lines, or a field-by-field breakdown.

This is the tool ops reach for when a terminal misbehaves, so it never stops at a bad line: every
input line gives output (a decoded message or an ``{"error": ...}`` object), in input order, and
the exit status tells whether anything failed. ``--explain`` re-reads a frame step by step with
the codec's own primitives, so it can show everything up to the point where decoding breaks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, timedelta, timezone, tzinfo
from typing import Any, TextIO, TypeGuard
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from protocols.jt808 import (
    DEFAULT_PROFILE,
    REGISTRY,
    V2011,
    V2013,
    V2019,
    BatchLocation,
    FrameSplitter,
    Header,
    JT808Error,
    LocationQueryReply,
    LocationReport,
    Message,
    RawBody,
    Struct,
    TerminalProfile,
    VehicleControlReply,
    check_code,
    decode_frame,
    interpret_items,
    jsonable,
    unescape,
)
from protocols.jt808.header import parse_header
from protocols.jt808.location_items import ITEMS

BAD_ESCAPE = "invalid escape sequence (0x7d not followed by 01 or 02)"

#: Human names of the registered message ids (``--explain`` and error hints).
MESSAGE_NAMES: dict[int, str] = {
    0x0001: "terminal general response",
    0x0002: "heartbeat",
    0x0003: "logout",
    0x0004: "server time query",
    0x0005: "subpackage resend request (terminal)",
    0x0100: "register",
    0x0102: "authenticate",
    0x0104: "parameters reply",
    0x0107: "terminal attributes",
    0x0108: "upgrade result",
    0x0200: "location report",
    0x0201: "location query reply",
    0x0301: "event report",
    0x0302: "question answer",
    0x0303: "information on demand",
    0x0500: "vehicle control reply",
    0x0701: "electronic waybill",
    0x0702: "driver identity",
    0x0704: "batch location upload",
    0x0705: "CAN bus data",
    0x0800: "multimedia event",
    0x0801: "multimedia data",
    0x0802: "media search reply",
    0x0805: "camera shoot reply",
    0x0900: "transparent data (uplink)",
    0x0901: "compressed data",
    0x8001: "platform general response",
    0x8003: "resend subpackages",
    0x8004: "server time",
    0x8100: "register response",
    0x8103: "set parameters",
    0x8104: "query all parameters",
    0x8105: "terminal control",
    0x8106: "query parameters",
    0x8107: "query terminal attributes",
    0x8108: "upgrade package",
    0x8201: "location query",
    0x8202: "temporary tracking",
    0x8203: "alarm confirmation",
    0x8300: "text message",
    0x8301: "event setting",
    0x8302: "question",
    0x8303: "information menu setting",
    0x8304: "information service",
    0x8400: "call back",
    0x8401: "phone book",
    0x8500: "vehicle control",
    0x8600: "set circular areas",
    0x8601: "delete circular areas",
    0x8602: "set rectangular areas",
    0x8603: "delete rectangular areas",
    0x8604: "set polygon area",
    0x8605: "delete polygon areas",
    0x8606: "set route",
    0x8607: "delete routes",
    0x8608: "query areas and routes",
    0x8702: "request driver identity",
    0x8800: "multimedia upload response",
    0x8801: "camera shoot",
    0x8802: "media search",
    0x8803: "upload stored media",
    0x8900: "transparent data (downlink)",
}

EPILOG = """\
input:
  One frame per line as hex digits; spaces inside a line and 0x prefixes are allowed
  ("7E 02 00 ...", "0x7E0200..."), blank lines are skipped. Frames come from the arguments
  (an argument may hold several lines) or, when none is given, from stdin.
  A line holding several frames back to back (7E...7E7E...7E, or frames sharing one 7E) is
  split with the codec's FrameSplitter and gives one output per frame; bytes outside the
  flags and a frame without its closing 7E give error objects of their own.
  A line with no 7E byte at all is rejected ("no 0x7e flags") unless --bare is given: then
  it is taken as one frame's header + body + check code and wrapped in flags.

output:
  One JSON object per frame, one per line, in input order: msg_id ("0x0200"), version
  ("2013" or "2019"), phone, serial, body_len, checksum_ok, body (named fields; a location
  report has latitude, longitude, altitude_m, speed_kmh, heading, time (ISO 8601 with
  offset), alarm, alarms, status, status_flags, extras) and problems, when there are any.
  Input that cannot be decoded prints {"error": "<reason>", "hex": "<input>"}, plus
  "header" when the header was readable, and decoding goes on with the next frame.

exit status:
  0 if every frame decoded, 1 if any line or frame failed, 2 on a usage error. A frame with a
  wrong check code or an invalid escape (0x7d not followed by 01 or 02; a lone 0x7d as the
  last byte is a known terminal quirk and accepted) fails, unless --lenient is given: then it
  is decoded, its problem listed, and it counts as decoded.

examples:
  fleetwatch decode 7E00020000040021679287002B7D027E
  grep -o '7[Ee][0-9A-Fa-f]*7[Ee]' terminal.log | fleetwatch decode --lenient
  fleetwatch decode --explain --tz UTC 7E0200...7E
"""

_BATCH_TYPES = {0: "normal", 1: "blind-area re-send"}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_TOKEN = re.compile(r"\S+")
_OFFSET = re.compile(r"^(?:UTC|GMT)?([+-])(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)


# --------------------------------------------------------------------------- options


def parse_tz(text: str) -> tzinfo:
    """``--tz`` value → tzinfo: UTC/Z, an offset (+08:00, UTC-5, +0530) or an IANA zone name."""
    value = text.strip()
    if value.upper() in ("UTC", "Z", "GMT"):
        return UTC
    match = _OFFSET.match(value)
    if match:
        sign, hours, minutes = match.group(1), int(match.group(2)), int(match.group(3) or 0)
        if hours > 23 or minutes > 59:
            raise argparse.ArgumentTypeError(f"offset out of range: {text!r}")
        offset = timedelta(hours=hours, minutes=minutes)
        return timezone(-offset if sign == "-" else offset)
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise argparse.ArgumentTypeError(
            f"unknown time zone {text!r} (use UTC, an offset such as +08:00, or a zone name)"
        ) from exc


def profile_from(args: argparse.Namespace) -> TerminalProfile:
    """The codec's per-terminal overrides for what the options say."""
    return TerminalProfile(
        version=args.version,
        tz=args.tz if args.tz is not None else DEFAULT_PROFILE.tz,
        strict=not args.lenient,
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``decode`` to the ``fleetwatch`` command line."""
    parser = subparsers.add_parser(
        "decode",
        help="decode hex JT/T 808 frames into JSON (or explain them field by field)",
        description=(
            "Decode JT/T 808 frames given as hex (from terminal logs or captures) into one\n"
            "JSON object per frame, or explain them field by field (--explain)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "frames",
        nargs="*",
        metavar="HEX",
        help="frames as hex, one per argument (default: read lines from stdin)",
    )
    parser.add_argument(
        "--lenient",
        action="store_true",
        help="decode frames with a wrong check code (reported as checksum_ok: false) or an "
        "invalid escape (listed in problems) instead of rejecting them",
    )
    parser.add_argument(
        "--version",
        type=int,
        choices=(V2011, V2013, V2019),
        help="force the header and body layout for terminals that misreport their version "
        "(default: attribute bit 14 picks the 2013 or 2019 layout)",
    )
    parser.add_argument(
        "--tz",
        type=parse_tz,
        metavar="ZONE",
        help="zone of the terminal's clock: UTC, an offset like +08:00 or UTC-05:00 (or "
        "--tz=-05:00), or a name like Asia/Dubai (default: Beijing time, +08:00)",
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="take lines without any 7E byte as header + body + check code and add the flags "
        "(default: such lines are errors)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--pretty", action="store_true", help="indent the JSON output")
    output.add_argument(
        "--explain",
        action="store_true",
        help="print a human, field-by-field breakdown (offsets, raw bytes, meanings) "
        "instead of JSON",
    )
    parser.set_defaults(handler=run)


# --------------------------------------------------------------------------- input


@dataclass(frozen=True, slots=True)
class FrameInput:
    """One frame cut from an input line (flags included; ``wrapped`` if --bare added them)."""

    line: int
    wire: bytes
    wrapped: bool = False
    index: int = 1
    count: int = 1

    @property
    def hex(self) -> str:
        """The frame as the user gave it (without flags that --bare added)."""
        return (self.wire[1:-1] if self.wrapped else self.wire).hex().upper()


@dataclass(frozen=True, slots=True)
class InputError:
    """Input that is not a frame; ``text`` is the offending input (hex if it parsed).

    ``partial`` holds a frame cut off before its closing flag (opening flag included), which
    is what a log line truncated at its length limit looks like: its header is still worth
    showing.
    """

    line: int
    reason: str
    text: str
    partial: bytes = b""


Item = FrameInput | InputError


def input_lines(frames: list[str], stdin: TextIO | None) -> Iterator[tuple[int, str]]:
    """(line number, text) of the input: the arguments, or stdin when there are none.

    Stdin is read as bytes where possible, so a stray non-UTF-8 byte becomes an error line
    instead of a UnicodeDecodeError.
    """
    lines: Iterator[str]
    if frames:
        lines = (line for arg in frames for line in arg.splitlines())
    elif stdin is None:  # no stdin at all (closed, or a GUI launcher)
        return
    else:
        binary = getattr(stdin, "buffer", None)
        if binary is not None:
            lines = (raw.decode("utf-8", errors="replace") for raw in binary)
        else:
            lines = iter(stdin)
    yield from enumerate(lines, 1)


def parse_hex(text: str) -> bytes | str:
    """Hex digits (whitespace and 0x prefixes allowed) → bytes, or the reason they are not."""
    digits: list[str] = []
    for token in _TOKEN.finditer(text):
        chunk = token.group()
        skip = 2 if chunk[:2] in ("0x", "0X") else 0
        for i, char in enumerate(chunk[skip:], token.start() + skip + 1):
            if char not in _HEX_DIGITS:
                return f"not hexadecimal: unexpected character {char!r} at column {i}"
        digits.append(chunk[skip:])
    joined = "".join(digits)
    if not joined:
        return "no hex digits"
    if len(joined) % 2:
        return f"odd number of hex digits ({len(joined)}): the last byte is incomplete"
    return bytes.fromhex(joined)


def _count(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _bytes(count: int) -> str:
    return _count(count, "byte", "bytes")


def split_line(number: int, line: str, bare: bool = False) -> list[Item]:
    """One input line → the frames in it and the errors about the rest, in order."""
    text = line.strip().lstrip("\ufeff").strip()
    data = parse_hex(text)
    if isinstance(data, str):
        return [InputError(number, data, text)]
    if b"\x7e" not in data:
        if bare:
            return [FrameInput(number, b"\x7e" + data + b"\x7e", wrapped=True)]
        return [
            InputError(
                number,
                "no 0x7e flags: not a framed message (--bare decodes header + body + check "
                "code without flags)",
                data.hex().upper(),
            )
        ]
    splitter = FrameSplitter()
    frames = splitter.feed(data)
    errors: list[InputError] = []
    first_flag = data.find(b"\x7e")
    if first_flag > 0:
        errors.append(
            InputError(
                number,
                f"{_bytes(first_flag)} before the first 0x7e flag (missing opening flag?)",
                data[:first_flag].hex().upper(),
            )
        )
    for dropped in splitter.take_dropped():
        if dropped.reason != "garbage":
            errors.append(
                InputError(
                    number,
                    f"{dropped.reason} frame of {_bytes(dropped.size)} dropped (first bytes shown)",
                    dropped.head.hex().upper(),
                )
            )
    start = len(data) - splitter.buffered
    tail = data[start:]
    if len(tail) > 1 and frames and data[start - 1] != 0x7E:
        # the last frame's closing flag opened this tail: trailing bytes, not a new frame
        errors.append(
            InputError(
                number,
                f"{_bytes(len(tail) - 1)} after the last frame, without a closing 0x7e flag",
                tail[1:].hex().upper(),
                partial=tail if len(tail) > 12 else b"",  # a header's worth: a cut-off frame?
            )
        )
    elif len(tail) > 1:
        errors.append(
            InputError(
                number,
                f"unterminated frame: no closing 0x7e flag after {_bytes(len(tail))}",
                tail.hex().upper(),
                partial=tail,
            )
        )
    if not frames and not errors:
        errors.append(InputError(number, "no frame: only 0x7e flags", data.hex().upper()))
    items: list[Item] = [
        FrameInput(number, frame, index=i, count=len(frames)) for i, frame in enumerate(frames, 1)
    ]
    if first_flag > 0:  # garbage comes before the frames; other problems after them
        return [errors[0], *items, *errors[1:]]
    return [*items, *errors]


# --------------------------------------------------------------------------- JSON output


def describe_error(exc: JT808Error, profile: TerminalProfile) -> str:
    """The codec's reason, naming the message when it is known, plus how to get past it."""
    text = f"{exc.kind}: {exc.reason}"
    if exc.kind == "body" and exc.header is not None and not exc.reason.startswith("malformed"):
        msg_id = exc.header.msg_id
        name = MESSAGE_NAMES.get(msg_id, "message")
        text = f"body: 0x{msg_id:04X} {name}: {exc.reason}"
    if exc.kind == "checksum" and profile.strict:
        text += " (--lenient decodes it anyway)"
    return text


def decode_item(item: FrameInput, profile: TerminalProfile) -> dict[str, Any]:
    """A frame → its message as JSON, or an error object (never raises)."""
    try:
        message = decode_frame(item.wire, profile=profile)
        if profile.strict and not unescape(item.wire[1:-1])[1]:
            return {
                "error": f"escape: {BAD_ESCAPE} (--lenient decodes it anyway)",
                "hex": item.hex,
                "header": message.header.to_json(),
            }
        return message.to_json()
    except JT808Error as exc:
        out: dict[str, Any] = {"error": describe_error(exc, profile), "hex": item.hex}
        if exc.header is not None:
            out["header"] = exc.header.to_json()
        return out
    except Exception as exc:  # a codec bug must not stop a batch of log lines
        return {"error": f"internal decoder error: {type(exc).__name__}: {exc}", "hex": item.hex}


def _json_default(value: Any) -> Any:
    converted = jsonable(value)
    return str(value) if converted is value else converted


def dump(obj: dict[str, Any], pretty: bool = False) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2 if pretty else None, default=_json_default)


# --------------------------------------------------------------------------- explain


def message_name(msg_id: int) -> str:
    """``0x0200 location report (LocationReport)``; unknown ids say so."""
    cls = REGISTRY.get(msg_id)
    if cls is None:
        return f"0x{msg_id:04X} unknown message id (body kept as bytes)"
    name = MESSAGE_NAMES.get(msg_id)
    return f"0x{msg_id:04X} {name} ({cls.__name__})" if name else f"0x{msg_id:04X} {cls.__name__}"


def _span(start: int, end: int) -> str:
    """Inclusive byte range ``start-end`` (end exclusive on input)."""
    return str(start) if end - start == 1 else f"{start}-{end - 1}"


def _row(pad: str, span: str, raw: bytes | str, name: str, value: str) -> str:
    raw_hex = raw.hex().upper() if isinstance(raw, bytes) else raw
    return f"{pad}{span:>9}  {raw_hex:<20} {name:<16} {value}".rstrip()


def _scalar(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def hexdump(data: bytes, indent: str, width: int = 16) -> list[str]:
    """Rows of ``width`` bytes, each prefixed with the offset of its first byte."""
    if not data:
        return [f"{indent}(no bytes)"]
    return [
        f"{indent}{offset:>5}  {data[offset : offset + width].hex(' ').upper()}"
        for offset in range(0, len(data), width)
    ]


def _header_fields(is_2019: bool, subpackaged: bool) -> list[tuple[int, int, str]]:
    fields = [(0, 2, "message id"), (2, 4, "attributes")]
    if is_2019:
        fields += [(4, 5, "protocol version"), (5, 15, "phone BCD[10]"), (15, 17, "serial")]
    else:
        fields += [(4, 10, "phone BCD[6]"), (10, 12, "serial")]
    if subpackaged:
        end = 17 if is_2019 else 12
        fields += [(end, end + 2, "package total"), (end + 2, end + 4, "package index")]
    return fields


def _attribute_lines(attr: int, actual_body: int | None, pad: str) -> list[str]:
    encryption = (attr >> 10) & 7
    length = attr & 0x3FF
    length_note = "" if actual_body in (None, length) else f" (frame has {actual_body})"
    enc_text = {0: "none", 1: "RSA"}.get(encryption, f"reserved value {encryption}")
    bits = [
        ("bits 0-9", "body length", f"{length}{length_note}"),
        ("bits 10-12", "encryption", enc_text),
        ("bit 13", "subpackage", "yes" if attr & 0x2000 else "no"),
        (
            "bit 14",
            "version flag",
            "1 (2019 header)" if attr & 0x4000 else "0 (2011/2013 header)",
        ),
        ("bit 15", "reserved", "1 (vendor use)" if attr & 0x8000 else "0"),
    ]
    return [_row(pad, "", "", f"  {where}", f"{what}: {value}") for where, what, value in bits]


def _header_value(name: str, raw: bytes) -> str:
    number = int.from_bytes(raw, "big")
    if name == "message id":
        return message_name(number)
    if name == "attributes":
        return f"0x{number:04X}"
    if name.startswith("phone"):
        digits = raw.hex()
        return digits if digits.isdigit() else f"{digits} (not BCD)"
    return str(number)


def explain_header(
    content: bytes, profile: TerminalProfile, pad: str
) -> tuple[list[str], Header | None, int | None, list[str]]:
    """Header fields with offsets and raw bytes, as far as ``content`` holds them.

    Returns the lines, the parsed header (None if the codec cannot read it), where the body
    starts (None when the header itself is incomplete) and the header's problems.
    """
    lines: list[str] = []
    header: Header | None = None
    failure: str | None = None
    problems: list[str] = []
    try:
        header, problems = parse_header(content, profile.version)
    except JT808Error as exc:
        failure = f"{exc.kind}: {exc.reason}"
    if header is not None:
        is_2019, subpackaged = header.version == V2019, header.pkg_total is not None
    else:
        attr = int.from_bytes(content[2:4], "big") if len(content) >= 4 else 0
        is_2019 = profile.version == V2019 if profile.version else bool(attr & 0x4000)
        subpackaged = bool(attr & 0x2000)
    fields = _header_fields(is_2019, subpackaged)
    size = fields[-1][1]
    forced = f", forced by --version {profile.version}" if profile.version else ""
    layout = "2019" if is_2019 else "2011/2013"
    lines.append(f"{pad}header: {layout} layout, {size} bytes{forced}")
    for start, end, name in fields:
        if end > len(content):
            lines.append(
                f"{pad}{_span(start, end):>11}  {name}: missing (only {_bytes(len(content))} "
                "to read)"
            )
            break
        raw = content[start:end]
        lines.append(_row(pad + "  ", _span(start, end), raw, name, _header_value(name, raw)))
        if name == "attributes":
            actual = len(content) - size if len(content) >= size else None
            lines.extend(_attribute_lines(int.from_bytes(raw, "big"), actual, pad + "  "))
    if failure is not None:
        lines.append(f"{pad}  header cannot be read: {failure}")
    return lines, header, size if len(content) >= size else None, problems


def _flags_text(report: LocationReport) -> str:
    flags = report.status_flags
    names = [name for name, on in flags.items() if on is True]
    return "; ".join([*names, f"load {flags['load']}"])


def location_lines(
    report: LocationReport, raw: bytes | None, base: int | None, pad: str
) -> list[str]:
    """A location report: basic block and every additional item (id, length, raw, meaning).

    With ``raw`` (the report's bytes) and ``base`` (their offset in the unescaped frame) each
    row also shows its byte range and raw hex.
    """
    time_text = report.time.isoformat() if report.time is not None else "invalid"
    lat_note = " (south: status bit 2)" if report.latitude < 0 else ""
    lon_note = " (west: status bit 3)" if report.longitude < 0 else ""
    basic = [
        (0, 4, "alarm", f"0x{report.alarm:08X}: {', '.join(report.alarms) or 'none'}"),
        (4, 8, "status", f"0x{report.status:08X}: {_flags_text(report)}"),
        (8, 12, "latitude", f"{report.latitude}{lat_note}"),
        (12, 16, "longitude", f"{report.longitude}{lon_note}"),
        (16, 18, "altitude_m", str(report.altitude_m)),
        (18, 20, "speed_kmh", str(report.speed_kmh)),
        (20, 22, "heading", str(report.heading)),
        (22, 28, "time", time_text),
    ]
    located = raw is not None and len(raw) >= 28 and base is not None
    at = base if located and base is not None else 0
    lines = []
    for start, end, name, value in basic:
        if located and raw is not None:
            lines.append(_row(pad, _span(at + start, at + end), raw[start:end], name, value))
        else:
            lines.append(f"{pad}{name:<16} {value}")
    lines.append(f"{pad}additional items: {len(report.items) or 'none'}")
    position = 28
    item_pad = pad + " " * 11 if located else pad + "  "
    for item_id, value_raw in report.items:
        span = ""
        if located:
            span = f"{_span(at + position, at + position + 2 + len(value_raw)):>9}  "
        lines.append(
            f"{pad}{span or '  '}item 0x{item_id:02X}  length {len(value_raw)}  "
            f"raw {value_raw.hex().upper() or '(empty)'}"
        )
        lines.extend(_item_meaning(item_id, value_raw, item_pad + "  "))
        position += 2 + len(value_raw)
    if report.tail:
        lines.append(f"{pad}tail (not an item): {report.tail.hex().upper()}")
    for problem in report.problems:
        lines.append(f"{pad}problem: {problem}")
    return lines


def _item_meaning(item_id: int, raw: bytes, pad: str) -> list[str]:
    """What one additional item means, or why it is kept as raw bytes."""
    ((key, value),) = interpret_items([(item_id, raw)]).items()
    if key.startswith("0x"):
        known = ITEMS.get(item_id)
        if known is None:
            return [f"{pad}= unknown or vendor item, kept as raw bytes"]
        name, sizes, _ = known
        if sizes is not None and len(raw) not in sizes:
            expected = " or ".join(str(s) for s in sizes)
            return [f"{pad}= kept raw: standard {name} has length {expected}"]
        return [f"{pad}= kept raw: does not parse as {name}"]
    json_value = jsonable(value)
    if isinstance(json_value, dict):
        return [f"{pad}= {key}:", *_value_lines(json_value, pad + "    ")]
    return [f"{pad}= {key}: {_inline(json_value)}"]


def _inline(value: Any) -> str:
    """A JSON value on one line: strings unquoted unless empty, the rest as JSON."""
    if isinstance(value, str) and value:
        return value
    return _scalar(value)


def _value_lines(value: Any, pad: str, name: str | None = None) -> list[str]:
    """A JSON-shaped value as indented ``name: value`` lines."""
    label = f"{name}:" if name is not None else ""
    if isinstance(value, dict):
        lines = [f"{pad}{label}"] if name is not None else []
        inner = pad + "  " if name is not None else pad
        for key, item in value.items():
            lines.extend(_value_lines(item, inner, str(key)))
        return lines or [f"{pad}{label} {{}}"]
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        lines = [f"{pad}{label} {_count(len(value), 'entry', 'entries')}".lstrip()]
        for index, item in enumerate(value):
            lines.extend(_value_lines(item, pad + "  ", f"[{index}]"))
        return lines
    text = _scalar(value) if isinstance(value, list) else _inline(value)
    return [f"{pad}{label} {text}" if name is not None else f"{pad}{text}"]


def _is_struct_list(value: Any) -> TypeGuard[list[Struct]]:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Struct) for v in value)


def struct_lines(obj: Struct, pad: str) -> list[str]:
    """Fields of a decoded body or nested structure, recursing into nested structures."""
    if isinstance(obj, LocationReport):
        return location_lines(obj, None, None, pad)
    data = obj.to_json()
    hex_ids: set[str] = (
        {name for name, spec in type(obj)._layout() if getattr(spec, "hex_json", False)}
        if dataclasses.is_dataclass(obj)
        else set()
    )
    lines: list[str] = []
    for key, value in data.items():
        attr = getattr(obj, key, None)
        if isinstance(attr, Struct):
            lines.append(f"{pad}{key}:")
            lines.extend(struct_lines(attr, pad + "  "))
        elif _is_struct_list(attr):
            lines.append(f"{pad}{key}: {_count(len(attr), 'entry', 'entries')}")
            for index, item in enumerate(attr):
                lines.extend(_entry_lines(index, item, pad + "  "))
        elif key in hex_ids and isinstance(attr, int):
            lines.append(f"{pad}{key}: {message_name(attr)}")
        else:
            lines.extend(_value_lines(value, pad, key))
    return lines


def _entry_lines(index: int, item: Struct, pad: str) -> list[str]:
    """A list entry: one line when it is small and flat, nested lines otherwise."""
    data = item.to_json()
    if not isinstance(item, LocationReport) and all(
        not isinstance(v, dict | list) for v in data.values()
    ):
        line = f"{pad}[{index}] " + ", ".join(f"{k}={_inline(v)}" for k, v in data.items())
        if len(line) <= 100:
            return [line]
    return [f"{pad}[{index}]", *struct_lines(item, pad + "  ")]


def body_lines(message: Message, pad: str) -> list[str]:
    """The decoded body, with byte offsets where the layout makes them certain (0x0200 etc.)."""
    header, body, raw = message.header, message.body, message.raw_body
    base = header.size
    if isinstance(body, RawBody):
        if header.subpackaged:
            why = (
                f"subpackage {header.pkg_index} of {header.pkg_total}: reassemble all parts "
                "to decode the body"
            )
        elif header.encryption:
            why = "encrypted body"
        elif header.msg_id not in REGISTRY:
            why = "unknown message id"
        else:
            why = "raw body"
        return [f"{pad}{why}; {len(body.data)} bytes kept as they are:", *hexdump(body.data, pad)]
    if isinstance(body, LocationReport):
        return location_lines(body, raw, base, pad)
    if isinstance(body, LocationQueryReply | VehicleControlReply):
        return [
            f"{pad}reply_serial: {body.reply_serial}",
            f"{pad}location:",
            *location_lines(body.location, raw[2:], base + 2, pad + "  "),
        ]
    if isinstance(body, BatchLocation):
        return batch_lines(body, raw, base, pad)
    return struct_lines(body, pad) or [f"{pad}(empty body)"]


def batch_lines(body: BatchLocation, raw: bytes, base: int, pad: str) -> list[str]:
    """0x0704: each item is a length-prefixed location report, so its offsets are known."""
    lines = [
        f"{pad}declared_count: {body.declared_count}",
        f"{pad}batch_type: {body.batch_type} ({_BATCH_TYPES.get(body.batch_type, 'unknown')})",
        f"{pad}items: {len(body.items)}",
    ]
    position = 3
    for index, report in enumerate(body.items):
        size = int.from_bytes(raw[position : position + 2], "big")
        lines.append(
            f"{pad}  [{index}] {_span(base + position, base + position + 2)}  length {size}"
        )
        lines.extend(location_lines(report, raw[position + 2 :], base + position + 2, pad + "    "))
        position += 2 + size
    if body.tail:
        lines.append(f"{pad}tail: {body.tail.hex().upper()}")
    lines.extend(f"{pad}problem: {problem}" for problem in body.problems)
    return lines


def explain_frame(item: FrameInput, profile: TerminalProfile) -> tuple[list[str], bool]:
    """Field-by-field breakdown of one frame, and whether it decodes in the chosen mode."""
    pad = "  "
    wire = item.wire
    flags_note = ", flags added by --bare" if item.wrapped else ""
    lines = [f"{pad}wire ({_bytes(len(wire))}{flags_note}): {wire.hex().upper()}"]
    inner = wire[1:-1]
    payload, clean = unescape(inner)
    undone = len(inner) - len(payload)
    lines.append(
        f"{pad}unescaped ({_bytes(len(payload))}, flags removed, {undone} escape(s) undone; "
        "offsets below count from here):"
    )
    lines.extend(hexdump(payload, pad + "  "))
    content = payload[:-1]
    header_problems: list[str] = []
    if content:
        header_text, header, body_start, header_problems = explain_header(content, profile, pad)
        lines.extend(header_text)
        if header is not None and body_start is not None:
            size = len(content) - body_start
            where = f"bytes {_span(body_start, len(content))}" if size else "empty"
            lines.append(f"{pad}body: {where} ({_bytes(size)}, header says {header.body_len})")
    if len(payload) >= 2:
        sent, computed = payload[-1], check_code(content)
        verdict = "ok" if sent == computed else "MISMATCH"
        lines.append(
            f"{pad}check code: byte {len(payload) - 1}  sent 0x{sent:02X}, computed (XOR of bytes "
            f"0-{len(content) - 1}) 0x{computed:02X}: {verdict}"
        )
    message: Message | None = None
    body_failure: str | None = None
    try:
        message = decode_frame(wire, strict=False, profile=profile)
    except JT808Error as exc:
        body_failure = f"{exc.kind}: {exc.reason}"
    except Exception as exc:  # report a codec bug instead of crashing the whole run
        body_failure = f"internal decoder error: {type(exc).__name__}: {exc}"
    if message is not None:
        problems = message.problems
    else:  # what the codec would have said had it got that far
        escape_problem = [] if clean else [BAD_ESCAPE]
        problems = [*escape_problem, *header_problems]
    lines.append(f"{pad}problems: {'none' if not problems else ''}".rstrip())
    lines.extend(f"{pad}  - {problem}" for problem in problems)
    if message is not None:
        lines.append(f"{pad}body fields:")
        lines.extend(body_lines(message, pad + "  "))
    result = decode_item(item, profile)
    if "error" in result:
        lines.append(f"{pad}result: FAILED: {result['error']}")
        if body_failure is not None and body_failure not in result["error"]:
            lines.append(f"{pad}  also: {body_failure}")
        return lines, False
    accepted = [
        *(["check code mismatch"] if not result["checksum_ok"] else []),
        *(["invalid escape"] if not clean else []),
    ]
    lenient_note = f" ({' and '.join(accepted)} accepted by --lenient)" if accepted else ""
    lines.append(f"{pad}result: decoded{lenient_note}")
    return lines, True


def partial_header(partial: bytes, profile: TerminalProfile) -> Header | None:
    """The header of a frame cut off before its closing flag, if enough of it is there."""
    try:
        return parse_header(unescape(partial[1:])[0], profile.version)[0]
    except JT808Error:
        return None


def explain_partial(partial: bytes, profile: TerminalProfile) -> list[str]:
    """What can be read of a cut-off frame: its bytes and header (no check code to verify)."""
    payload = unescape(partial[1:])[0]
    lines = [
        f"  cut-off frame, unescaped ({_bytes(len(payload))} after the opening flag; no check "
        "code, offsets count from here):",
        *hexdump(payload, "    "),
    ]
    if payload:
        lines.extend(explain_header(payload, profile, "  ")[0])
    return lines


def explain_item(item: Item, profile: TerminalProfile) -> tuple[list[str], bool]:
    """Title line plus breakdown; never raises, whatever the input."""
    if isinstance(item, InputError):
        lines = [f"== line {item.line}: not a frame", f"  input: {item.text}"]
        if item.partial:
            lines.extend(explain_partial(item.partial, profile))
        return [*lines, f"  result: FAILED: {item.reason}"], False
    part = f", frame {item.index} of {item.count}" if item.count > 1 else ""
    title = f"== line {item.line}{part}"
    try:
        lines, ok = explain_frame(item, profile)
    except Exception as exc:  # the explanation itself must not take the run down
        return [
            title,
            f"  wire: {item.wire.hex().upper()}",
            f"  result: FAILED: cannot explain: {type(exc).__name__}: {exc}",
        ], False
    return [title, *lines], ok


# --------------------------------------------------------------------------- command


def run(args: argparse.Namespace) -> int:
    """Decode (or explain) every input line; 0 if all decoded, 1 if any failed."""
    profile = profile_from(args)
    out = sys.stdout
    if not args.frames and sys.stdin is not None and sys.stdin.isatty():
        print("reading hex frames from stdin, one per line (Ctrl-D to end)", file=sys.stderr)
    failed = False
    first = True
    for number, line in input_lines(args.frames, sys.stdin):
        if not line.strip().lstrip("\ufeff").strip():
            continue
        for item in split_line(number, line, bare=args.bare):
            if args.explain:
                lines, ok = explain_item(item, profile)
                if not first:
                    out.write("\n")
                out.write("\n".join(lines) + "\n")
            else:
                if isinstance(item, InputError):
                    obj: dict[str, Any] = {"error": item.reason, "hex": item.text}
                    header = partial_header(item.partial, profile) if item.partial else None
                    if header is not None:
                        obj["header"] = header.to_json()
                else:
                    obj = decode_item(item, profile)
                ok = "error" not in obj
                out.write(dump(obj, args.pretty) + "\n")
            failed = failed or not ok
            first = False
        out.flush()
    return 1 if failed else 0
