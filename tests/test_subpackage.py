"""Subpackage reassembly: out of order, duplicates, re-requests of missing parts, limits."""

from __future__ import annotations

from datetime import datetime

import pytest

from protocols.jt808 import (
    BEIJING,
    V2019,
    JT808Error,
    LocationReport,
    MediaData,
    Reassembler,
    ReassemblyBudget,
    ResendSubpackages,
    decode_frame,
    encode_frame,
    encode_frames,
    resend_batches,
)
from protocols.jt808.subpackage import PART_OVERHEAD

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


def test_announced_and_held_parts_are_bounded() -> None:
    parts = _parts()  # 6 parts of 512 bytes
    strict = Reassembler(max_parts=5)
    with pytest.raises(JT808Error, match="6 parts announced, at most 5"):
        strict.add(decode_frame(parts[0]), now=0.0)
    assert not strict.pending and strict.parts == 0
    few = Reassembler(max_parts=8)
    for part in parts[:5]:
        few.add(decode_frame(part), now=0.0)
    other = encode_frames(_media(3000), phone="13900000000", serial=1, max_body=512)
    for part in other[:3]:
        few.add(decode_frame(part), now=0.0)
    with pytest.raises(JT808Error, match="8 parts held"):
        few.add(decode_frame(other[3]), now=0.0)  # a 9th part: its message goes
    assert [k[0].lstrip("0") for k in few.pending] == [PHONE] and few.parts == 5


def test_a_trickle_of_parts_cannot_keep_a_message_alive() -> None:
    parts = _parts()
    reassembler = Reassembler(timeout=5.0, max_age=20.0)
    for n, part in enumerate(parts[:5]):  # one part every 4 s: never quiet for 5 s
        reassembler.add(decode_frame(part), now=4.0 * n)
        assert reassembler.due(4.0 * n + 1) == ([], [])
    request, abandon = reassembler.due(20.0)
    assert request == [] and [p.missing for p in abandon] == [[6]]
    assert reassembler.bytes == reassembler.parts == 0


def test_the_shared_budget_is_charged_and_given_back() -> None:
    cost = 512 + PART_OVERHEAD
    budget = ReassemblyBudget(limit=6 * cost)
    a, b = Reassembler(budget=budget), Reassembler(budget=budget)
    parts = _parts()
    for part in parts[:4]:
        a.add(decode_frame(part), now=0.0)
    for part in parts[:2]:
        b.add(decode_frame(part), now=0.0)
    assert budget.used == 6 * cost
    with pytest.raises(JT808Error, match="reassembly budget"):
        b.add(decode_frame(parts[2]), now=0.0)
    assert budget.used == 4 * cost  # b's message was dropped
    a.clear()  # a's connection closed
    assert budget.used == 0
    for part in parts:  # a whole message fits again, and completing it frees it
        whole = b.add(decode_frame(part), now=1.0)
    assert whole is not None and budget.used == 0


@pytest.mark.parametrize(("version", "sizes"), [(2013, [255, 44]), (V2019, [299])])
def test_resend_requests_fit_their_count(version: int, sizes: list[int]) -> None:
    missing = list(range(2, 301))
    batches = resend_batches(missing, version)
    assert [len(b) for b in batches] == sizes
    assert [i for ids in batches for i in ids] == missing
    for ids in batches:
        frame = encode_frame(ResendSubpackages(orig_serial=7, ids=ids), phone=PHONE, serial=1,
                             version=version)  # fmt: skip
        assert decode_frame(frame).body.ids == ids
    assert len(resend_batches(list(range(1, 1200)), V2019)) == 3  # 509 a request


def test_completed_messages_remembered_are_bounded() -> None:
    """Parts may name any phone: completing many tiny messages under new keys must not grow
    the memory of completed ones without bound."""
    reassembler = Reassembler(max_pending=2)
    for n in range(100):
        for part in encode_frames(_media(600), phone=f"1390000{n:04d}", serial=1, max_body=512):
            reassembler.add(decode_frame(part), now=0.0)
    assert len(reassembler._completed) == 8
    assert [k[0] for k in reassembler._completed][-1] == "013900000099"
