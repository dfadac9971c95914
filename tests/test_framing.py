"""Framing edge cases: escaping, check codes, the stream splitter, header quirks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.jt808 import (
    FrameSplitter,
    Heartbeat,
    JT808Error,
    PlatformGeneralResponse,
    TerminalProfile,
    check_code,
    decode_frame,
    encode_frame,
    encode_general_response,
    escape,
    unescape,
)

# A heartbeat whose check code is 0x7e, so it travels escaped as 7d 02 (SmallChi fixture).
ESCAPED_CHECK_CODE = bytes.fromhex("7E00020000040021679287002B7D027E")


def test_escape_example_from_the_standard() -> None:
    assert escape(bytes.fromhex("307e087d55")) == bytes.fromhex("307d02087d0155")
    assert unescape(bytes.fromhex("307d02087d0155")) == (bytes.fromhex("307e087d55"), True)


def test_unescape_flags_invalid_pairs_but_keeps_a_trailing_lone_7d() -> None:
    assert unescape(bytes.fromhex("017d0302")) == (bytes.fromhex("017d0302"), False)
    assert unescape(bytes.fromhex("01027d")) == (bytes.fromhex("01027d"), True)


def test_check_code_is_xor_of_all_bytes() -> None:
    assert check_code(bytes.fromhex("0102040810")) == 0x1F
    assert check_code(b"") == 0


@given(st.binary(max_size=3000))
def test_folded_check_code_equals_bytewise_xor(data: bytes) -> None:
    expected = 0
    for byte in data:
        expected ^= byte
    assert check_code(data) == expected


def test_escaped_check_code_decodes() -> None:
    message = decode_frame(ESCAPED_CHECK_CODE)
    assert (message.msg_id, message.serial, message.checksum_ok) == (0x0002, 43, True)


def test_bad_check_code_strict_and_lenient() -> None:
    bad = bytearray(ESCAPED_CHECK_CODE)
    bad[5] ^= 0x01  # corrupt the phone number
    with pytest.raises(JT808Error) as info:
        decode_frame(bytes(bad))
    assert info.value.kind == "checksum"
    assert info.value.header is not None and info.value.header.serial == 43
    lenient = decode_frame(bytes(bad), strict=False)
    assert not lenient.checksum_ok
    assert any("check code" in p for p in lenient.problems)
    assert not decode_frame(bytes(bad), profile=TerminalProfile(strict=False)).checksum_ok


def test_lone_7d_check_code_is_accepted() -> None:
    """Quirk Q2: a check code of 0x7d sent without escaping."""
    body = PlatformGeneralResponse(reply_serial=1, reply_id=0x0200, result=0)
    for serial in range(2000):
        frame = encode_frame(body, phone="13912345678", serial=serial)
        if frame.endswith(b"\x7d\x01\x7e"):
            break
    else:
        pytest.fail("no serial gave a check code of 0x7d")
    raw = frame[:-3] + b"\x7d\x7e"
    message = decode_frame(raw)
    assert message.serial == serial and message.checksum_ok


@pytest.mark.parametrize(
    "frame, reason",
    [
        (b"", "framing"),
        (b"\x7e\x7e", "header"),
        (bytes.fromhex("7e0002000001"), "framing"),
        (bytes.fromhex("7e00020000012345678900017e"), "header"),
    ],
)
def test_unreadable_frames_raise_the_codec_error(frame: bytes, reason: str) -> None:
    with pytest.raises(JT808Error) as info:
        decode_frame(frame)
    assert info.value.kind == reason


def _frames(n: int) -> list[bytes]:
    return [encode_frame(Heartbeat(), phone="13912345678", serial=0x7E7D + i) for i in range(n)]


def test_splitter_handles_reads_split_anywhere() -> None:
    frames = _frames(3)
    stream = b"".join(frames)
    for cut in range(1, len(stream)):
        splitter = FrameSplitter()
        assert splitter.feed(stream[:cut]) + splitter.feed(stream[cut:]) == frames
        assert splitter.buffered == 1  # the last closing flag, which may open the next frame


def test_splitter_byte_by_byte_with_garbage_and_double_flags() -> None:
    frames = _frames(4)
    stream = b"GET / HTTP/1.1\r\n" + frames[0] + b"\x7e" + frames[1] + frames[2][1:] + frames[3]
    splitter = FrameSplitter()
    out = [f for byte in stream for f in splitter.feed(bytes((byte,)))]
    assert out == frames  # frames[2] shares its opening flag with frames[1]'s closing flag
    dropped = splitter.take_dropped()
    assert [d.reason for d in dropped] == ["garbage"] * 16
    assert splitter.take_dropped() == []


def test_splitter_drops_oversized_frames_and_recovers() -> None:
    good = _frames(2)
    huge = b"\x7e" + b"\x01" * 5000 + b"\x7e"
    splitter = FrameSplitter(max_frame=200)
    out = []
    for i in range(0, len(huge), 64):  # the oversized frame arrives in pieces
        out += splitter.feed(huge[i : i + 64])
        assert splitter.buffered <= 200
    out += splitter.feed(good[0] + good[1])
    assert out == good
    reasons = {d.reason for d in splitter.take_dropped()}
    assert reasons == {"oversized"}


def test_splitter_drops_a_complete_oversized_frame_in_one_read() -> None:
    good = _frames(1)[0]
    splitter = FrameSplitter(max_frame=40)
    assert splitter.feed(b"\x7e" + b"\x02" * 100 + b"\x7e" + good) == [good]
    assert [d.size for d in splitter.take_dropped()] == [102]


def test_version_flag_with_2013_layout_falls_back() -> None:
    """Quirk Q5 (SmallChi real capture): bit 14 set, 6-byte phone."""
    message = decode_frame(bytes.fromhex("7E0102400C01003000068109024A3130303330303030363831857E"))
    assert message.version == 2013
    assert message.phone == "010030000681"
    assert any("2013 header layout" in p for p in message.problems)


def test_2019_layout_without_flag_is_detected_or_forced() -> None:
    """Quirk Q6: a 2019 header whose attribute word lacks bit 14."""
    frame = bytes.fromhex("7E81040000010000000001341990550700016B7E")
    message = decode_frame(frame)
    assert (message.version, message.phone, message.serial) == (2019, "00000000013419905507", 1)
    forced = decode_frame(frame, profile=TerminalProfile(version=2019))
    assert forced.problems == [] and forced.phone == message.phone


def test_non_bcd_phone_is_kept_and_reported() -> None:
    """Quirk Q4: binary IMEI in the phone field."""
    frame = encode_frame(Heartbeat(), phone="4eb6fb4a1234", serial=1)
    message = decode_frame(frame)
    assert message.phone == "4eb6fb4a1234"
    assert "phone number is not BCD" in message.problems


def test_replies_keep_the_terminals_header_layout() -> None:
    ack = PlatformGeneralResponse(reply_serial=7, reply_id=0x0002, result=0)
    frame = encode_frame(ack, phone="12345678901234567890", serial=65535, version=2019)
    message = decode_frame(frame)
    assert message.version == 2019 and message.header.protocol_version == 1
    assert message.body == ack


@given(
    phone=st.from_regex(r"\A[0-9]{1,12}\Z"),
    serial=st.integers(0, 0xFFFF),
    reply_serial=st.sampled_from([0x7E, 0x7D, 0x7E7D]) | st.integers(0, 0xFFFF),
    reply_id=st.integers(0, 0xFFFF),
    result=st.integers(0, 4),
    v2019=st.booleans(),
)
def test_fast_general_response_equals_the_generic_encoder(
    phone: str, serial: int, reply_serial: int, reply_id: int, result: int, v2019: bool
) -> None:
    version = 2019 if v2019 else 2013
    body = PlatformGeneralResponse(reply_serial=reply_serial, reply_id=reply_id, result=result)
    assert encode_general_response(
        phone, serial, reply_serial, reply_id, result, version=version
    ) == encode_frame(body, phone=phone, serial=serial, version=version)
