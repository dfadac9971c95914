"""Subpackage reassembly: out of order, duplicates, re-requests of missing parts, limits."""

from __future__ import annotations

from datetime import datetime

import pytest

from protocols.jt808 import (
    BEIJING,
    JT808Error,
    LocationReport,
    MediaData,
    Reassembler,
    ResendSubpackages,
    decode_frame,
    encode_frame,
    encode_frames,
)

PHONE = "13912345678"


def _media(size: int) -> MediaData:
    where = LocationReport(
        status=2,
        latitude=31.2,
        longitude=121.5,
        speed_kmh=12.5,
        time=datetime(2026, 11, 22, 9, 0, tzinfo=BEIJING),
    )
    return MediaData(
        media_id=42,
        media_type=0,
        media_format=0,
        event=1,
        channel=1,
        location=where,
        data=bytes(i % 251 for i in range(size)),
    )


def _parts(size: int = 3000, version: int = 2013) -> list[bytes]:
    return encode_frames(_media(size), phone=PHONE, serial=100, version=version, max_body=512)


def test_parts_out_of_order_with_duplicates_reassemble_once() -> None:
    parts = _parts()
    assert len(parts) == 6
    reassembler = Reassembler()
    order = [3, 0, 5, 5, 1, 4, 0, 2]
    results = [reassembler.add(decode_frame(parts[i]), now=float(n)) for n, i in enumerate(order)]
    done = [r for r in results if r is not None]
    assert len(done) == 1 and results[-1] is done[0]
    assert done[0].body == _media(3000)
    assert done[0].serial == 100 and done[0].header.pkg_total is None
    assert reassembler.duplicates == 2 and not reassembler.pending


def test_missing_part_is_requested_then_abandoned() -> None:
    parts = _parts()
    reassembler = Reassembler(timeout=5.0, max_requests=2)
    for i in (0, 1, 2, 4, 5):
        assert reassembler.add(decode_frame(parts[i]), now=0.0) is None
    assert reassembler.due(4.9) == ([], [])
    request, abandon = reassembler.due(5.0)
    assert abandon == [] and [p.missing for p in request] == [[4]]
    assert request[0].first_serial == 100
    resend = ResendSubpackages(orig_serial=request[0].first_serial, ids=request[0].missing)
    assert decode_frame(encode_frame(resend, phone=PHONE, serial=1)).body == resend
    assert reassembler.due(9.0) == ([], [])  # the timer restarted with the request
    assert len(reassembler.due(10.0)[0]) == 1
    request, abandon = reassembler.due(15.0)
    assert request == [] and [p.missing for p in abandon] == [[4]]
    assert not reassembler.pending


def test_missing_part_arrives_after_request() -> None:
    parts = _parts(version=2019)
    reassembler = Reassembler(timeout=1.0)
    for part in parts[1:]:
        reassembler.add(decode_frame(part), now=0.0)
    (pending,), _ = reassembler.due(2.0)
    assert pending.missing == [1] and pending.first_serial == 100
    whole = reassembler.add(decode_frame(parts[0]), now=2.5)
    assert whole is not None and whole.version == 2019
    assert whole.body.data == _media(3000).data


def test_limits_bound_memory() -> None:
    parts = _parts()
    reassembler = Reassembler(max_bytes=1000)
    reassembler.add(decode_frame(parts[0]), now=0.0)
    with pytest.raises(JT808Error, match="exceed 1000 bytes"):
        reassembler.add(decode_frame(parts[1]), now=0.0)
    assert not reassembler.pending
    few = Reassembler(max_pending=1)
    few.add(decode_frame(parts[0]), now=0.0)
    other = encode_frames(_media(3000), phone="13900000000", serial=1, max_body=512)
    with pytest.raises(JT808Error, match="pending"):
        few.add(decode_frame(other[0]), now=0.0)


def test_unpackaged_message_passes_through() -> None:
    message = decode_frame(encode_frame(_media(10), phone=PHONE, serial=1))
    assert Reassembler().add(message, now=0.0) is message


def test_part_retransmitted_after_completion_is_a_duplicate() -> None:
    parts = _parts()
    reassembler = Reassembler(timeout=5.0)
    for part in parts:
        reassembler.add(decode_frame(part), now=0.0)
    assert reassembler.add(decode_frame(parts[2]), now=1.0) is None
    assert reassembler.duplicates == 1 and not reassembler.pending
    assert reassembler.due(10.0) == ([], [])
    again = encode_frames(_media(3000), phone=PHONE, serial=500, max_body=512)
    for part in again[:-1]:  # the next upload with the same part count is a new message
        assert reassembler.add(decode_frame(part), now=2.0) is None
    assert reassembler.add(decode_frame(again[-1]), now=2.0) is not None
