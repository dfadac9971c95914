"""0x0200 semantics: signs, flags, time zones and additional items (standard and vendor)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from protocols.jt808 import (
    BEIJING,
    JT808Error,
    LocationReport,
    TerminalProfile,
    check_code,
    decode_frame,
    encode_frame,
    encode_items,
    interpret_items,
)

WHEN = datetime(2026, 11, 22, 8, 30, 15, tzinfo=BEIJING)


def _roundtrip(report: LocationReport, profile: TerminalProfile | None = None) -> LocationReport:
    frame = encode_frame(report, phone="13912345678", serial=1)
    body = decode_frame(frame, profile=profile or TerminalProfile()).body
    assert isinstance(body, LocationReport)
    return body


@pytest.mark.parametrize(
    "lat, lon", [(31.2, 121.5), (-33.868, 151.209), (25.76, -80.19), (-23.5, -46.6)]
)
def test_hemispheres_come_from_status_bits(lat: float, lon: float) -> None:
    body = _roundtrip(LocationReport(status=2, latitude=lat, longitude=lon, time=WHEN))
    assert (body.latitude, body.longitude) == (lat, lon)
    assert body.status_flags["south"] == (lat < 0) and body.status_flags["west"] == (lon < 0)


def test_alarm_and_status_names() -> None:
    report = LocationReport(alarm=1 | 1 << 14 | 1 << 20, status=1 | 2 | 1 << 8 | 1 << 19, time=WHEN)
    body = _roundtrip(report)
    assert body.alarms == ["emergency", "fatigue_warning", "area_in_out"]
    flags = body.status_flags
    assert flags["acc_on"] and flags["positioned"] and flags["beidou"] and not flags["gps"]
    assert flags["load"] == "half"


def test_time_is_beijing_time_and_converts_to_utc() -> None:
    body = _roundtrip(LocationReport(time=WHEN))
    assert body.time == WHEN
    assert body.time.astimezone(UTC) == datetime(2026, 11, 22, 0, 30, 15, tzinfo=UTC)


def test_terminal_clock_in_utc_via_profile() -> None:
    frame = encode_frame(LocationReport(time=WHEN), phone="1", serial=1)  # BCD 261122083015
    body = decode_frame(frame, profile=TerminalProfile(tz=UTC)).body
    assert body.time == datetime(2026, 11, 22, 8, 30, 15, tzinfo=UTC)
    plus7 = timezone(timedelta(hours=7))
    assert decode_frame(
        frame, profile=TerminalProfile(tz=plus7)
    ).body.time.utcoffset() == timedelta(hours=7)


def test_invalid_time_is_none_and_reported() -> None:
    frame = bytearray(encode_frame(LocationReport(time=WHEN), phone="1", serial=1))
    frame[13 + 22 + 1] = 0x13  # month 13
    frame[-2] = check_code(bytes(frame[1:-2]))
    body = decode_frame(bytes(frame)).body
    assert body.time is None and body.problems == ["invalid time 261322083015"]


def test_standard_items_by_name_and_back() -> None:
    extras = {
        "mileage_km": 12345.6,
        "fuel_l": 40.5,
        "recorder_speed_kmh": 61.2,
        "alarm_event_id": 7,
        "carriage_temperature_c": -18,
        "overspeed": {"area_type": "circle", "area_id": 12},
        "area_crossing": {"area_type": "polygon", "area_id": 3, "direction": "out"},
        "route_drive_time": {"segment_id": 9, "drive_time_s": 600, "result": "too_long"},
        "signals": ["low_beam", "brake"],
        "io_status": 2,
        "analog": {"ad0": 1, "ad1": 2},
        "signal_strength": 25,
        "satellites": 14,
        "0xE2": b"v1.2",
    }
    body = _roundtrip(LocationReport(time=WHEN, items=encode_items(extras)))
    assert body.extras() == extras


def test_vendor_reuse_of_standard_ids_stays_raw() -> None:
    """Quirk Q10: 0x06 as one battery byte, 0x2B with 8 bytes."""
    items = [(0x06, b"\x5a"), (0x2B, bytes(8)), (0x31, b"\x09"), (0x71, b"\x01"), (0x71, b"\x02")]
    assert interpret_items(items) == {
        "0x06": b"\x5a",
        "0x2B": bytes(8),
        "satellites": 9,
        "0x71": [b"\x01", b"\x02"],
    }


def test_truncated_item_and_lone_byte_are_kept_in_tail() -> None:
    report = LocationReport(time=WHEN, items=[(0x01, b"\x00\x00\x00\x10")], tail=b"\xf6\x04\x14")
    body = _roundtrip(report)
    assert body.items == [(0x01, b"\x00\x00\x00\x10")] and body.tail == b"\xf6\x04\x14"
    assert body.problems == ["item 0xF6 declares 4 bytes, 1 left"]
    assert encode_frame(body, phone="13912345678", serial=1) == encode_frame(
        report, phone="13912345678", serial=1
    )
    lone = _roundtrip(LocationReport(time=WHEN, tail=b"\x33"))
    assert lone.problems == ["lone byte 0x33 after the last item"]


def test_short_body_is_a_codec_error_with_header() -> None:
    frame = encode_frame(LocationReport(time=WHEN), phone="13912345678", serial=9)
    short = bytearray(frame[:20] + frame[-2:])
    short[4] = 20 - 13  # declared body length
    short[-2] = check_code(bytes(short[1:-2]))
    with pytest.raises(JT808Error) as info:
        decode_frame(bytes(short))
    assert info.value.kind == "body" and info.value.header.serial == 9


def test_encode_items_rejects_unknown_names() -> None:
    with pytest.raises(JT808Error, match="no encoder"):
        encode_items({"warp_speed": 9})
