"""Codec benchmark (a script, not a test): µs per frame and frames/s on one core.

    python -m loadtest.bench_codec [--seconds 0.5]

Measures decode_frame on a typical 0x0200 (mileage, signal strength and satellite items),
the same plus naming the extras, a minimal struct-based parse of the same frame as the floor
to compare with, a 10-item 0x0704 batch, encoding a 0x8001, and splitting a stream.
"""

from __future__ import annotations

import argparse
import operator
import struct
import timeit
from collections.abc import Callable
from datetime import datetime
from functools import reduce

from protocols.jt808 import (
    BEIJING,
    BatchLocation,
    FrameSplitter,
    LocationReport,
    PlatformGeneralResponse,
    decode_frame,
    encode_frame,
    encode_items,
)

_HEAD = struct.Struct(">HH6sH")
_BODY = struct.Struct(">IIIIHHH6s")
_BCD = [(b >> 4) * 10 + (b & 15) for b in range(256)]


def minimal_parse(frame: bytes) -> tuple[object, ...]:
    """The floor: what any 0x0200 parser must do to yield usable values (unescape, check code,
    header, basic block, phone as text, BCD time as an aware datetime)."""
    payload = frame[1:-1]
    if b"\x7d" in payload:
        payload = payload.replace(b"\x7d\x02", b"\x7e").replace(b"\x7d\x01", b"\x7d")
    if reduce(operator.xor, payload[:-1], 0) != payload[-1]:
        raise ValueError("check code")
    msg_id, _attr, phone, serial = _HEAD.unpack_from(payload, 0)
    alarm, status, lat, lon, alt, speed, heading, t = _BODY.unpack_from(payload, 12)
    y, mo, d, h, mi, s = map(_BCD.__getitem__, t)
    when = datetime(2000 + y, mo, d, h, mi, s, tzinfo=BEIJING)
    return (msg_id, phone.hex(), serial, alarm, status, lat, lon, alt, speed, heading, when)


def typical_report() -> LocationReport:
    return LocationReport(
        alarm=0,
        status=0x000C0003,
        latitude=31.234567,
        longitude=121.487654,
        altitude_m=12,
        speed_kmh=62.5,
        heading=87,
        time=datetime(2026, 11, 22, 8, 30, 15, tzinfo=BEIJING),
        items=encode_items({"mileage_km": 12345.6, "signal_strength": 25, "satellites": 14}),
    )


def measure(name: str, fn: Callable[[], object], seconds: float) -> tuple[float, float]:
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(number, int(number * seconds / 0.2))
    best = min(timer.repeat(repeat=5, number=number)) / number
    print(f"{name:<44} {best * 1e6:8.2f} µs/frame {1 / best:12,.0f} frames/s")
    return best, 1 / best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per repeat (approx.)")
    args = parser.parse_args(argv)

    report = typical_report()
    frame = encode_frame(report, phone="013912345678", serial=4711)
    batch = encode_frame(
        BatchLocation(batch_type=1, items=[report] * 10), phone="013912345678", serial=4712
    )
    ack = PlatformGeneralResponse(reply_serial=4711, reply_id=0x0200, result=0)
    stream = frame * 1000
    print(f"0x0200 frame: {len(frame)} bytes; 0x0704 batch of 10: {len(batch)} bytes")

    floor, _ = measure(
        "minimal struct parse of 0x0200 (floor)", lambda: minimal_parse(frame), args.seconds
    )
    dec, _ = measure("decode_frame 0x0200", lambda: decode_frame(frame), args.seconds)
    measure(
        "decode_frame 0x0200 + extras()", lambda: decode_frame(frame).body.extras(), args.seconds
    )
    measure("decode_frame 0x0704 (10 items)", lambda: decode_frame(batch), args.seconds)
    measure(
        "encode_frame 0x8001",
        lambda: encode_frame(ack, phone="013912345678", serial=1),
        args.seconds,
    )
    split, _ = measure(
        "FrameSplitter.feed, per frame (1000/feed)",
        lambda: FrameSplitter().feed(stream),
        args.seconds,
    )
    print(f"  (splitter: {split * 1e6 / 1000:.3f} µs/frame)")
    print(f"decode_frame / floor = {dec / floor:.2f}x")


if __name__ == "__main__":
    main()
