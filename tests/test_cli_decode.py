"""``fleetwatch decode``: JSON lines, error lines, options, stdin, multi-frame lines, --explain.

Most tests run ``main([...])`` in-process; one runs the installed console script and
``python -m fleetwatch.cli`` for real, so the entry points themselves are covered too.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetwatch.cli import main
from fleetwatch.decode import MESSAGE_NAMES, message_name
from protocols.jt808 import (
    BEIJING,
    REGISTRY,
    BatchLocation,
    Heartbeat,
    LocationQueryReply,
    LocationReport,
    RawBody,
    Register,
    encode_frame,
    encode_items,
    escape,
    unescape,
)
from protocols.jt808.framing import check_code
from protocols.jt808.location_items import ITEMS

#: Real 0x0200 with 14 additional items (SmallChi/JT808 test suite).
REAL_LOCATION = (
    "7E0200007A0123456789017FFF000004000000080006EEB6AD02633DF701380003006320070719235901040000"
    "000B02020016030200210402002C051E3737370000000000000000000000000000000000000000000000000000"
    "00110012064D0000004D4D1307000000580058582504000000632A02000A2B040000001430011E310128330120"
    "7A7E"
)
#: Real heartbeat whose check code is 0x7E, sent escaped as 7D 02.
REAL_HEARTBEAT = "7E00020000040021679287002B7D027E"

WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=BEIJING)

LOCATION_KEYS = {
    "latitude",
    "longitude",
    "altitude_m",
    "speed_kmh",
    "heading",
    "time",
    "alarm",
    "alarms",
    "status",
    "status_flags",
    "extras",
}


def report(**overrides: Any) -> LocationReport:
    fields: dict[str, Any] = {
        "alarm": 0b11,  # emergency, overspeed
        "status": 0b11,  # acc_on, positioned
        "latitude": -33.868820,
        "longitude": -151.209296,
        "altitude_m": 58,
        "speed_kmh": 42.5,
        "heading": 270,
        "time": WHEN,
        "items": encode_items({"mileage_km": 1234.5, "satellites": 9}),
    }
    fields.update(overrides)
    return LocationReport(**fields)


def frame_hex(body: Any, **kwargs: Any) -> str:
    kwargs.setdefault("phone", "13800138000")
    kwargs.setdefault("serial", 7)
    return encode_frame(body, **kwargs).hex().upper()


def wrap_content(content: bytes, check: int | None = None) -> str:
    """Header + body → a wire frame, with the right check code unless ``check`` is given."""
    code = check_code(content) if check is None else check
    return (b"\x7e" + escape(content + bytes([code])) + b"\x7e").hex().upper()


LOCATION = frame_hex(report())
HEARTBEAT = frame_hex(Heartbeat(), serial=8)
#: Location frame with the check code off by one.
BAD_CHECK = wrap_content(
    unescape(bytes.fromhex(LOCATION)[1:-1])[0][:-1],
    check=check_code(unescape(bytes.fromhex(LOCATION)[1:-1])[0][:-1]) ^ 1,
)
#: Location header declaring 28 bytes, but only 10 body bytes follow (valid check code).
TRUNCATED = wrap_content(bytes.fromhex("0200001C0138001380000005") + bytes(10))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]]]:
    """Run ``fleetwatch decode ARGS`` in-process; return the status and the JSON lines."""
    status = main(["decode", *args])
    out = capsys.readouterr().out
    return status, [json.loads(line) for line in out.splitlines()]


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(["decode", "--explain", *args])
    return status, capsys.readouterr().out


def set_stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


# --------------------------------------------------------------------------- JSON output


def test_real_location_report(capsys: pytest.CaptureFixture[str]) -> None:
    status, [obj] = run(capsys, REAL_LOCATION)
    assert status == 0
    assert obj["msg_id"] == "0x0200"
    assert obj["version"] == "2013"
    assert obj["phone"] == "012345678901"
    assert obj["serial"] == 32767
    assert obj["checksum_ok"] is True
    body = obj["body"]
    assert body.keys() >= LOCATION_KEYS
    # This test frame carries 116.3 in the latitude field and 40.06 in the longitude field.
    assert body["latitude"] == 116.307629
    assert body["longitude"] == 40.058359
    assert body["altitude_m"] == 312
    assert body["speed_kmh"] == 0.3
    assert body["heading"] == 99
    assert body["time"] == "2020-07-07T19:23:59+08:00"
    assert body["alarm"] == 1024
    assert body["alarms"] == ["tts_fault"]
    assert body["status"] == 2048
    assert body["status_flags"]["circuit_cut"] is True
    assert body["status_flags"]["positioned"] is False
    extras = body["extras"]
    assert extras["mileage_km"] == 1.1
    assert extras["fuel_l"] == 2.2
    assert extras["signals"] == ["low_beam", "high_beam", "reverse", "fog_lamp"]
    assert extras["satellites"] == 40
    assert extras["0x33"] == "20"  # unknown item kept raw


def test_built_location_report(capsys: pytest.CaptureFixture[str]) -> None:
    status, [obj] = run(capsys, LOCATION)
    assert status == 0
    assert (obj["msg_id"], obj["phone"], obj["serial"]) == ("0x0200", "013800138000", 7)
    body = obj["body"]
    assert body["latitude"] == -33.86882
    assert body["longitude"] == -151.209296
    assert body["speed_kmh"] == 42.5
    assert body["time"] == "2024-05-06T07:08:09+08:00"
    assert body["alarms"] == ["emergency", "overspeed"]
    flags = body["status_flags"]
    assert flags["acc_on"] and flags["positioned"] and flags["south"] and flags["west"]
    assert body["extras"] == {"mileage_km": 1234.5, "satellites": 9}


def test_output_is_one_json_line_per_frame_unicode_kept(capsys: pytest.CaptureFixture[str]) -> None:
    register = frame_hex(
        Register(
            province=44,
            city=300,
            manufacturer="ACME",
            model="T1",
            terminal_id="T000001",
            plate_color=1,
            plate="粤B12345",
        )
    )
    assert main(["decode", register, HEARTBEAT]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert "粤B12345" in lines[0]  # ensure_ascii=False
    assert json.loads(lines[0])["body"]["plate"] == "粤B12345"
    assert json.loads(lines[1])["msg_id"] == "0x0002"


def test_real_heartbeat_with_escaped_check_code(capsys: pytest.CaptureFixture[str]) -> None:
    status, [obj] = run(capsys, REAL_HEARTBEAT)
    assert status == 0
    assert obj == {
        "msg_id": "0x0002",
        "version": "2013",
        "phone": "040021679287",
        "serial": 43,
        "body_len": 0,
        "checksum_ok": True,
        "body": {},
    }


def test_2019_frame(capsys: pytest.CaptureFixture[str]) -> None:
    frame = frame_hex(report(), version=2019, phone="12345678901234567890")
    status, [obj] = run(capsys, frame)
    assert status == 0
    assert obj["version"] == "2019"
    assert obj["phone"] == "12345678901234567890"
    assert obj["protocol_version"] == 1
    assert obj["body"]["alarms"] == ["emergency", "overspeed"]


def test_batch_location_items(capsys: pytest.CaptureFixture[str]) -> None:
    later = datetime(2024, 5, 6, 7, 9, 9, tzinfo=BEIJING)
    batch = BatchLocation(batch_type=1, items=[report(), report(time=later, latitude=31.5)])
    status, [obj] = run(capsys, frame_hex(batch))
    assert status == 0
    assert obj["msg_id"] == "0x0704"
    assert obj["body"]["batch_type"] == 1
    items = obj["body"]["items"]
    assert [item.keys() >= LOCATION_KEYS for item in items] == [True, True]
    assert [item["time"] for item in items] == [
        "2024-05-06T07:08:09+08:00",
        "2024-05-06T07:09:09+08:00",
    ]
    assert items[1]["latitude"] == 31.5
    assert items[0]["extras"]["mileage_km"] == 1234.5


def test_unknown_message_id_is_kept_raw(capsys: pytest.CaptureFixture[str]) -> None:
    frame = frame_hex(RawBody(data=b"\x01\x02"), msg_id=0x0F01)
    status, [obj] = run(capsys, frame)
    assert status == 0
    assert obj["body"] == {"data": "0102", "unknown_message": True}


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("line", "reason", "shown"),
    [
        ("7E02ZZ7E", "not hexadecimal: unexpected character 'Z' at column 5", "7E02ZZ7E"),
        ("7E0200007", "odd number of hex digits (9)", "7E0200007"),
        ("0x", "no hex digits", "0x"),
        ("00020000040021679287002B", "no 0x7e flags", "00020000040021679287002B"),
        (BAD_CHECK, "checksum: check code", BAD_CHECK),
        (TRUNCATED, "body: 0x0200 location report: truncated: need 28 bytes", TRUNCATED),
        ("7E0200001C0138", "unterminated frame: no closing 0x7e flag", "7E0200001C0138"),
        ("7E7E", "no frame: only 0x7e flags", "7E7E"),
        ("7E00017E", "header: 2 bytes are too short for a frame", "7E00017E"),
    ],
)
def test_error_line_then_next_line_decodes(
    capsys: pytest.CaptureFixture[str], line: str, reason: str, shown: str
) -> None:
    status, objs = run(capsys, line, HEARTBEAT)
    assert status == 1
    assert len(objs) == 2
    error, decoded = objs
    assert reason in error["error"]
    assert error["hex"] == shown
    assert set(error) <= {"error", "hex", "header"}
    assert decoded["msg_id"] == "0x0002" and decoded["serial"] == 8


def test_checksum_error_names_the_header_and_the_way_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, [error] = run(capsys, BAD_CHECK)
    assert status == 1
    assert "(--lenient decodes it anyway)" in error["error"]
    assert error["header"]["msg_id"] == "0x0200"
    assert error["header"]["serial"] == 7


def test_lenient_decodes_bad_check_code(capsys: pytest.CaptureFixture[str]) -> None:
    status, [obj] = run(capsys, "--lenient", BAD_CHECK)
    assert status == 0
    assert obj["checksum_ok"] is False
    assert any("check code" in problem for problem in obj["problems"])
    assert obj["body"]["extras"]["mileage_km"] == 1234.5


def test_spaces_and_0x_prefixes_are_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    spaced = " ".join(REAL_HEARTBEAT[i : i + 2] for i in range(0, len(REAL_HEARTBEAT), 2))
    prefixed = " ".join(f"0x{REAL_HEARTBEAT[i : i + 2]}" for i in range(0, len(REAL_HEARTBEAT), 2))
    status, objs = run(capsys, spaced, "0x" + REAL_HEARTBEAT.lower(), prefixed)
    assert status == 0
    assert [obj["serial"] for obj in objs] == [43, 43, 43]


# --------------------------------------------------------------------------- stdin


def test_reads_stdin_when_no_frame_is_given(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_stdin(monkeypatch, f"{LOCATION}\n\n   \n{REAL_HEARTBEAT}\r\n{HEARTBEAT}\n")
    status, objs = run(capsys)
    assert status == 0
    assert [(obj["msg_id"], obj["serial"]) for obj in objs] == [
        ("0x0200", 7),
        ("0x0002", 43),
        ("0x0002", 8),
    ]


def test_stdin_errors_keep_order_and_set_exit_status(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_stdin(monkeypatch, f"{HEARTBEAT}\nnot a frame\n{LOCATION}\n")
    status, objs = run(capsys)
    assert status == 1
    assert objs[0]["msg_id"] == "0x0002"
    assert objs[1]["error"].startswith("not hexadecimal")
    assert objs[1]["hex"] == "not a frame"
    assert objs[2]["msg_id"] == "0x0200"


def test_arguments_take_precedence_over_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_stdin(monkeypatch, f"{LOCATION}\n")
    status, objs = run(capsys, f"{HEARTBEAT}\n{REAL_HEARTBEAT}")  # one argument, two lines
    assert status == 0
    assert [obj["serial"] for obj in objs] == [8, 43]


# --------------------------------------------------------------------------- multi-frame lines


def test_concatenated_frames_give_one_object_each(capsys: pytest.CaptureFixture[str]) -> None:
    status, objs = run(capsys, HEARTBEAT + LOCATION + REAL_HEARTBEAT)
    assert status == 0
    assert [(obj["msg_id"], obj["serial"]) for obj in objs] == [
        ("0x0002", 8),
        ("0x0200", 7),
        ("0x0002", 43),
    ]


def test_frames_sharing_a_flag_are_split(capsys: pytest.CaptureFixture[str]) -> None:
    status, objs = run(capsys, HEARTBEAT + LOCATION[2:])  # ...7E0200...7E: one flag between
    assert status == 0
    assert [obj["msg_id"] for obj in objs] == ["0x0002", "0x0200"]


def test_stream_with_garbage_and_cut_off_tail(capsys: pytest.CaptureFixture[str]) -> None:
    status, objs = run(capsys, "AABB" + HEARTBEAT + BAD_CHECK + "7E0200")
    assert status == 1
    assert objs[0] == {
        "error": "2 bytes before the first 0x7e flag (missing opening flag?)",
        "hex": "AABB",
    }
    assert objs[1]["msg_id"] == "0x0002"
    assert objs[2]["error"].startswith("checksum:")
    assert objs[3]["error"].startswith("unterminated frame")
    assert objs[3]["hex"] == "7E0200"
    assert len(objs) == 4


def test_bytes_after_the_last_frame(capsys: pytest.CaptureFixture[str]) -> None:
    status, objs = run(capsys, HEARTBEAT + "0011")  # the frame's closing flag, then junk
    assert status == 1
    assert objs[0]["msg_id"] == "0x0002"
    assert objs[1] == {
        "error": "2 bytes after the last frame, without a closing 0x7e flag",
        "hex": "0011",
    }


def test_cut_off_frame_still_shows_its_header(capsys: pytest.CaptureFixture[str]) -> None:
    cut = REAL_LOCATION[:40]  # a log line truncated at its length limit
    status, [error] = run(capsys, cut)
    assert status == 1
    assert error["error"] == "unterminated frame: no closing 0x7e flag after 20 bytes"
    assert error["hex"] == cut
    assert error["header"]["msg_id"] == "0x0200"
    assert error["header"]["serial"] == 32767
    status, text = explain(capsys, cut)
    assert status == 1
    assert "cut-off frame, unescaped (19 bytes after the opening flag" in text
    assert re.search(r"10-11  7FFF +serial +32767", text)
    assert "body length: 122 (frame has 7)" in text
    assert text.rstrip().endswith(
        "result: FAILED: unterminated frame: no closing 0x7e flag after 20 bytes"
    )


# --------------------------------------------------------------------------- --bare


def test_bare_wraps_lines_without_flags(capsys: pytest.CaptureFixture[str]) -> None:
    bare = HEARTBEAT[2:-2]
    status, [error] = run(capsys, bare)
    assert status == 1
    assert "--bare" in error["error"]
    status, [obj] = run(capsys, "--bare", bare)
    assert status == 0
    assert (obj["msg_id"], obj["serial"]) == ("0x0002", 8)


def test_bare_keeps_escaped_content_and_reports_user_hex(
    capsys: pytest.CaptureFixture[str],
) -> None:
    escaped = REAL_HEARTBEAT[2:-2]  # ends with 7D02, the escaped check code 0x7E
    bad = HEARTBEAT[2:-4] + "00"
    status, objs = run(capsys, "--bare", escaped, bad, LOCATION)
    assert status == 1
    assert objs[0]["serial"] == 43
    assert objs[1]["error"].startswith("checksum:")
    assert objs[1]["hex"] == bad  # without the flags --bare added
    assert objs[2]["msg_id"] == "0x0200"  # flagged lines are unaffected


# --------------------------------------------------------------------------- --tz, --version


@pytest.mark.parametrize(
    ("zone", "time"),
    [
        ("UTC", "2024-05-06T07:08:09+00:00"),
        ("+08:00", "2024-05-06T07:08:09+08:00"),
        ("=-05:30", "2024-05-06T07:08:09-05:30"),
        ("UTC-5", "2024-05-06T07:08:09-05:00"),
        ("+0200", "2024-05-06T07:08:09+02:00"),
        ("Europe/Berlin", "2024-05-06T07:08:09+02:00"),
    ],
)
def test_tz_sets_the_terminal_clock_zone(
    capsys: pytest.CaptureFixture[str], zone: str, time: str
) -> None:
    option = ["--tz" + zone] if zone.startswith("=") else ["--tz", zone]
    status, [obj] = run(capsys, *option, LOCATION)
    assert status == 0
    assert obj["body"]["time"] == time


@pytest.mark.parametrize("zone", ["+25:00", "Mars/Olympus", "8"])
def test_bad_tz_is_a_usage_error(capsys: pytest.CaptureFixture[str], zone: str) -> None:
    assert main(["decode", "--tz", zone, LOCATION]) == 2
    captured = capsys.readouterr()
    assert "--tz" in captured.err
    assert captured.out == ""


def test_version_forces_the_header_layout(capsys: pytest.CaptureFixture[str]) -> None:
    frame = frame_hex(Heartbeat(), version=2019, phone="12345678901234567890")
    _, [auto] = run(capsys, frame)
    status, [forced] = run(capsys, "--version", "2013", frame)
    assert status == 0
    assert auto["version"] == "2019" and "problems" not in auto
    assert forced["version"] == "2013"
    assert forced["phone"] != auto["phone"]
    assert any("trailing" in problem for problem in forced["problems"])


def test_version_2011_forces_the_body_layout(capsys: pytest.CaptureFixture[str]) -> None:
    body = Register(
        province=44,
        city=300,
        manufacturer="ACME",
        model="MODEL-0123456789",
        terminal_id="T000001",
        plate_color=1,
        plate="B12345",
    )
    frame = frame_hex(body)
    _, [auto] = run(capsys, frame)
    status, [forced] = run(capsys, "--version", "2011", frame)
    assert status == 0
    assert (auto["body"]["model"], auto["body"]["edition"]) == ("MODEL-0123456789", 2013)
    assert (forced["body"]["model"], forced["body"]["edition"]) == ("MODEL-01", 2011)


# --------------------------------------------------------------------------- --pretty, CLI


def test_pretty_prints_indented_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--pretty", LOCATION]) == 0
    pretty = capsys.readouterr().out
    _, [compact] = run(capsys, LOCATION)
    assert pretty.startswith('{\n  "msg_id": "0x0200",\n')
    assert json.loads(pretty) == compact


def test_help_documents_exit_status_and_input_forms(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--help"]) == 0
    text = capsys.readouterr().out
    assert "exit status:" in text
    assert "1 if any line or frame failed" in text
    assert "--bare" in text and "--lenient" in text and "--explain" in text
    assert "7E...7E7E...7E" in text


def test_main_without_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "decode" in capsys.readouterr().err


def test_pretty_and_explain_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--pretty", "--explain", LOCATION]) == 2
    assert "not allowed with" in capsys.readouterr().err


# --------------------------------------------------------------------------- --explain


def test_explain_location_report(capsys: pytest.CaptureFixture[str]) -> None:
    status, text = explain(capsys, REAL_LOCATION)
    assert status == 0
    lines = text.splitlines()
    assert lines[0] == "== line 1"
    assert f"wire (137 bytes): {REAL_LOCATION}" in text
    assert "unescaped (135 bytes, flags removed, 0 escape(s) undone" in text
    assert "0  02 00 00 7A 01 23 45 67 89 01 7F FF 00 00 04 00" in text
    expected_rows = [
        r"header: 2011/2013 layout, 12 bytes",
        r"0-1  0200 +message id +0x0200 location report \(LocationReport\)",
        r"2-3  007A +attributes +0x007A",
        r"bits 0-9 +body length: 122",
        r"bits 10-12 +encryption: none",
        r"bit 13 +subpackage: no",
        r"bit 14 +version flag: 0 \(2011/2013 header\)",
        r"4-9  012345678901 +phone BCD\[6\] +012345678901",
        r"10-11  7FFF +serial +32767",
        r"body: bytes 12-133 \(122 bytes, header says 122\)",
        r"check code: byte 134  sent 0x7A, computed \(XOR of bytes 0-133\) 0x7A: ok",
        r"problems: none",
        r"12-15  00000400 +alarm +0x00000400: tts_fault",
        r"20-23  06EEB6AD +latitude +116.307629",
        r"34-39  200707192359 +time +2020-07-07T19:23:59\+08:00",
        r"additional items: 14",
        r"40-45  item 0x01  length 4  raw 0000000B",
        r"= mileage_km: 1.1",
        r"90-91  item 0x11  length 0  raw \(empty\)",
        r"= kept raw: standard overspeed has length 1 or 5",
        r"131-133  item 0x33  length 1  raw 20",
        r"= unknown or vendor item, kept as raw bytes",
        r"result: decoded",
    ]
    position = 0
    for pattern in expected_rows:  # each row present, in this order
        match = re.compile(pattern).search(text, position)
        assert match, f"missing (in order): {pattern}"
        position = match.end()


def test_explain_2019_header_offsets(capsys: pytest.CaptureFixture[str]) -> None:
    frame = frame_hex(report(), version=2019, phone="12345678901234567890")
    status, text = explain(capsys, frame)
    assert status == 0
    assert "header: 2019 layout, 17 bytes" in text
    assert re.search(r"\b4  01 +protocol version 1", text)
    assert re.search(r"5-14  12345678901234567890 phone BCD\[10\] +12345678901234567890", text)
    assert re.search(r"15-16  0007 +serial +7", text)
    assert re.search(r"bit 14 +version flag: 1 \(2019 header\)", text)
    assert re.search(r"17-20  00000003 +alarm +0x00000003: emergency, overspeed", text)
    assert re.search(r"status +0x0000000F: acc_on; positioned; south; west; load empty", text)


def test_explain_batch_items_with_offsets(capsys: pytest.CaptureFixture[str]) -> None:
    batch = BatchLocation(batch_type=1, items=[report(), report(latitude=31.5)])
    status, text = explain(capsys, frame_hex(batch))
    assert status == 0
    assert "batch_type: 1 (blind-area re-send)" in text
    # items start after count (2) and type (1): the first length word is at 12 + 3
    assert re.search(r"\[0\] 15-16  length 37", text)
    assert re.search(r"17-20  00000003 +alarm", text)
    assert re.search(r"\[1\] 54-55  length 37", text)
    assert re.search(r"56-59  00000003 +alarm", text)
    assert re.search(r"item 0x01  length 4  raw 00003039\n += mileage_km: 1234.5", text)


def test_explain_nested_location_and_reply_names(capsys: pytest.CaptureFixture[str]) -> None:
    reply = frame_hex(LocationQueryReply(reply_serial=99, location=report()))
    status, text = explain(capsys, reply)
    assert status == 0
    assert "0x0201 location query reply (LocationQueryReply)" in text
    assert "reply_serial: 99" in text
    assert re.search(r"14-17  00000003 +alarm", text)  # 12 header + 2 reply serial


def test_explain_bad_check_code_still_shows_header_and_body(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, text = explain(capsys, BAD_CHECK, REAL_HEARTBEAT)
    assert status == 1
    first = text.split("\n\n== ")[0]
    assert re.search(r"0-1  0200 +message id", first)
    assert re.search(r"check code: byte \d+  sent 0x[0-9A-F]{2}, computed .*: MISMATCH", first)
    assert "= mileage_km: 1234.5" in first  # body explained anyway
    assert "result: FAILED: checksum:" in first
    assert "(--lenient decodes it anyway)" in first
    assert text.rstrip().endswith("result: decoded")  # next frame goes on


def test_explain_lenient_accepts_bad_check_code(capsys: pytest.CaptureFixture[str]) -> None:
    status, text = explain(capsys, "--lenient", BAD_CHECK)
    assert status == 0
    assert "result: decoded (check code mismatch accepted by --lenient)" in text


def test_explain_truncated_body_explains_header_then_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, text = explain(capsys, TRUNCATED)
    assert status == 1
    assert re.search(r"2-3  001C +attributes +0x001C", text)
    assert "body length: 28 (frame has 10)" in text
    assert "- body length: header says 28, frame has 10" in text
    assert ": ok" in text  # the check code itself is right
    assert "result: FAILED: body: 0x0200 location report: truncated" in text


def test_explain_incomplete_header(capsys: pytest.CaptureFixture[str]) -> None:
    # subpackage bit set, but the frame ends before the package fields
    frame = wrap_content(bytes.fromhex("020020000138001380000005"))
    status, text = explain(capsys, frame)
    assert status == 1
    assert "header: 2011/2013 layout, 16 bytes" in text
    assert "bit 13         subpackage: yes" in text
    assert "12-13  package total: missing" in text
    assert "header cannot be read: header: subpackage flag set" in text
    assert "result: FAILED: header:" in text


def test_explain_input_errors(capsys: pytest.CaptureFixture[str]) -> None:
    status, text = explain(capsys, "hello", "7E02")
    assert status == 1
    assert "== line 1: not a frame\n  input: hello\n  result: FAILED: not hexadecimal" in text
    assert "== line 2: not a frame" in text
    assert "unterminated frame" in text


def test_explain_unknown_and_subpackaged_bodies(capsys: pytest.CaptureFixture[str]) -> None:
    unknown = frame_hex(RawBody(data=b"\xab\xcd"), msg_id=0x0F01)
    part = wrap_content(bytes.fromhex("08012003013800138000000900030001") + b"abc")
    status, text = explain(capsys, unknown + part)
    assert status == 0
    assert "== line 1, frame 1 of 2" in text and "== line 1, frame 2 of 2" in text
    assert "0x0F01 unknown message id (body kept as bytes)" in text
    assert "unknown message id; 2 bytes kept as they are:" in text
    assert re.search(r"12-13  0003 +package total +3", text)
    assert "subpackage 1 of 3: reassemble all parts to decode the body" in text


def test_every_registered_message_has_a_name() -> None:
    assert set(REGISTRY) <= set(MESSAGE_NAMES)
    assert message_name(0x0200) == "0x0200 location report (LocationReport)"
    assert message_name(0x8001) == "0x8001 platform general response (PlatformGeneralResponse)"
    assert "unknown" in message_name(0xF0F0)


def _location_content(parts: tuple[int, bytes, list[tuple[int, bytes]], bytes]) -> bytes:
    """A 0x0200 frame's header + body: any basic block, TLV items, maybe a ragged tail."""
    msg_id, basic, items, tail = parts
    body = basic + b"".join(bytes((i, len(raw))) + raw for i, raw in items) + tail
    header = msg_id.to_bytes(2, "big") + (len(body) & 0x3FF).to_bytes(2, "big")
    return header + bytes.fromhex("0138001380000001") + body


#: Additional item ids the codec interprets, plus vendor ones.
ITEM_IDS = [*ITEMS, 0x33, 0xE0, 0xEB, 0xFE]

LOCATION_CONTENT = st.tuples(
    st.sampled_from([0x0200, 0x0201, 0x0500, 0x0704]),
    st.binary(min_size=28, max_size=30),
    st.lists(st.tuples(st.sampled_from(ITEM_IDS), st.binary(max_size=48)), max_size=4),
    st.binary(max_size=2),
).map(_location_content)


@settings(max_examples=400, deadline=None)
@given(
    content=st.one_of(
        st.binary(max_size=80),
        LOCATION_CONTENT,
        # a registered message id and a plausible attribute word, then anything
        st.tuples(
            st.sampled_from(sorted(REGISTRY)),
            st.sampled_from([0x0000, 0x2000, 0x4000, 0x6000, 0x0400, 0x8000]),
            st.binary(min_size=8, max_size=80),
        ).map(
            lambda t: (
                t[0].to_bytes(2, "big") + (t[1] | (len(t[2]) - 8) & 0x3FF).to_bytes(2, "big") + t[2]
            )
        ),
    ),
    mode=st.sampled_from([[], ["--lenient"], ["--version", "2019"], ["--version", "2011"]]),
)
def test_never_crashes_on_any_frame(content: bytes, mode: list[str]) -> None:
    frame = wrap_content(content)
    for output in ([], ["--explain"]):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            status = main(["decode", *mode, *output, frame])
        text = buffer.getvalue()
        assert status in (0, 1)
        assert "internal decoder error" not in text
        assert "cannot explain" not in text
        if output:
            assert "result: " in text
        else:
            [obj] = [json.loads(line) for line in text.splitlines()]
            assert ("error" in obj) == (status == 1)


@settings(max_examples=200, deadline=None)
@given(line=st.text(max_size=60))
def test_never_crashes_on_any_text(line: str) -> None:
    for output in ([], ["--explain"]):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            status = main(["decode", *output, "--", line])
        assert status in (0, 1)


# --------------------------------------------------------------------------- real process


def _entry_points() -> list[list[str]]:
    script = Path(sys.executable).parent / "fleetwatch"
    return [[str(script)], [sys.executable, "-m", "fleetwatch.cli"]]


@pytest.mark.parametrize("command", _entry_points(), ids=["console-script", "python-m"])
def test_real_process_reads_stdin(command: list[str]) -> None:
    stdin = f"{REAL_LOCATION}\nzz\n{HEARTBEAT}\n"
    done = subprocess.run(
        [*command, "decode"], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1, done.stderr
    objs = [json.loads(line) for line in done.stdout.splitlines()]
    assert objs[0]["body"]["time"] == "2020-07-07T19:23:59+08:00"
    assert objs[1]["error"].startswith("not hexadecimal")
    assert objs[2]["serial"] == 8
    assert done.stderr == ""
