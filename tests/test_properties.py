"""Property-based tests of the sans-I/O JT/T 808 codec (generators in ``tests/strategies.py``).

1. encode → decode is the identity for every registered body, in every edition, over the wire;
2. values are biased towards 0x7e/0x7d, and frames really carry escapes;
3. a stream cut anywhere gives back exactly the frames that were sent;
4. damaged or random input only ever raises :class:`JT808Error`;
5. subpackages reassemble in any order, and a missing part is asked for, then given up.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from operator import attrgetter
from typing import Any, Self

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.jt808 import (
    BEIJING,
    DEFAULT_PROFILE,
    MAX_BODY,
    REGISTRY,
    V2011,
    V2013,
    V2019,
    Body,
    FrameSplitter,
    Header,
    JT808Error,
    LocationReport,
    MediaSearch,
    Message,
    RawBody,
    Reassembler,
    ServerTime,
    Struct,
    TerminalProfile,
    decode_frame,
    encode_body,
    encode_frame,
    encode_frames,
    interpret_items,
)
from protocols.jt808.body import U8, wire
from protocols.jt808.framing import MAX_WIRE_FRAME, check_code, unescape, wrap
from protocols.jt808.header import build_header
from protocols.jt808.location_items import ITEMS
from protocols.jt808.wire import Reader, Writer
from tests.strategies import (
    ALL_CASES,
    ESCAPE_BYTES,
    VERSIONS,
    Envelope,
    Sample,
    active_safety_alarms,
    blobs,
    body_strategy,
    byte_values,
    envelopes,
    frames,
    large_bodies,
    mutated_frames,
    raw_bodies,
    samples,
    samples_of,
    uints,
    unknown_ids,
)

#: Multiplies every test's number of examples: ``JT808_EXAMPLES_SCALE=50`` for a long hunt.
SCALE = float(os.environ.get("JT808_EXAMPLES_SCALE", "1"))


def examples(n: int, **kwargs: Any) -> settings:
    """Settings for ``n`` examples (times SCALE), no deadline: the module runs in ~15 s."""
    return settings(max_examples=max(1, round(n * SCALE)), deadline=None, **kwargs)


ERROR_KINDS = {"framing", "escape", "checksum", "header", "body", "encode"}
PROFILES = (DEFAULT_PROFILE, TerminalProfile(version=V2011), TerminalProfile(version=V2019))


def _case_id(case: tuple[int, int]) -> str:
    msg_id, version = case
    return f"0x{msg_id:04X}-{REGISTRY[msg_id].__name__}-{version}"


# ------------------------------------------------------------------------ 1. round trip


def test_strategies_cover_every_registered_message() -> None:
    """A message registered without a usable strategy (irregular codec, unknown field spec)
    fails here, and the round-trip cases below list every id in every edition."""
    problems = {}
    for msg_id, cls in REGISTRY.items():
        for version in VERSIONS:
            try:
                body_strategy(cls, version)
            except (LookupError, NotImplementedError) as exc:
                problems[f"0x{msg_id:04X} {cls.__name__} {version}"] = str(exc)
    assert problems == {}
    assert set(ALL_CASES) == {(m, v) for m in REGISTRY for v in VERSIONS}
    assert len(REGISTRY) >= 62


def test_irregular_body_without_strategy_is_refused() -> None:
    """The coverage test above can fail: an irregular body is not guessed from its layout."""

    @dataclasses.dataclass(slots=True, kw_only=True)
    class Irregular(Body):  # deliberately not registered
        value: int = wire(U8)

        @classmethod
        def decode(cls, r: Reader) -> Self:
            return cls(value=r.u8() ^ 0xFF)

        def encode(self, w: Writer) -> None:
            w.u8(self.value)

    with pytest.raises(LookupError):
        body_strategy(Irregular, V2013)


# pytest-twisted (pytest.ini: --reactor=asyncio) re-wraps a @given test for every parametrized
# item of the same function, and the second item then fails inside the reactor greenlet. So the
# parametrized test is a plain function that runs its own @given check.
@pytest.mark.parametrize(("msg_id", "version"), ALL_CASES, ids=[_case_id(c) for c in ALL_CASES])
def test_encode_decode_round_trip(msg_id: int, version: int) -> None:
    @examples(10)
    @given(sample=samples_of(msg_id, version))
    def round_trip(sample: Sample) -> None:
        check_round_trip(msg_id, version, sample)

    round_trip()


def check_round_trip(msg_id: int, version: int, sample: Sample) -> None:
    envelope = sample.envelope
    message = decode_frame(sample.frame, profile=envelope.profile)

    assert type(message.body) is REGISTRY[msg_id]
    assert message.body == sample.body
    header = message.header
    assert (header.msg_id, header.phone, header.serial, header.version) == (
        msg_id,
        envelope.phone,
        envelope.serial,
        envelope.header_version,
    )
    assert header.protocol_version == (envelope.protocol_version if version == V2019 else None)
    assert (header.pkg_total, header.pkg_index, header.encryption, header.reserved_bit) == (
        None,
        None,
        0,
        False,
    )
    assert header.body_len == len(message.raw_body) <= MAX_BODY
    assert message.raw_body == encode_body(sample.body, version)
    assert message.checksum_ok
    assert message.problems == []
    json.dumps(message.to_json(), allow_nan=False)
    if version != V2011:  # a decoded Message does not remember a configured 2011 body layout
        assert encode_frame(message) == sample.frame


@examples(40)
@given(
    msg_id=unknown_ids,
    body=raw_bodies(),
    envelope=st.sampled_from([V2013, V2019]).flatmap(envelopes),
)
def test_unknown_message_ids_round_trip_as_raw_bodies(
    msg_id: int, body: RawBody, envelope: Envelope
) -> None:
    message = decode_frame(envelope.encode(body, msg_id))
    assert message.msg_id == msg_id
    assert message.body == body
    assert message.to_json()["body"]["unknown_message"] is True


@examples(60)
@given(version=st.sampled_from(VERSIONS), data=st.data())
def test_active_safety_items_interpret_back(version: int, data: st.DataObject) -> None:
    """Well-formed 0x64-0x67 items, as a location report carries them, read back as sent."""
    item_id, alarm = data.draw(active_safety_alarms(version), label="alarm")
    w = Writer(version)
    alarm.encode(w)
    extras = interpret_items([(item_id, w.getvalue())])
    assert extras == {ITEMS[item_id][0]: alarm}


TIME_BODIES: dict[str, tuple[Callable[[datetime], Body], Callable[[Body], Any], tzinfo]] = {
    "0x0200 time (Beijing)": (lambda t: LocationReport(time=t), attrgetter("time"), BEIJING),
    "0x8004 time (UTC)": (lambda t: ServerTime(time=t), attrgetter("time"), UTC),
    "0x8802 start (Beijing, partial)": (
        lambda t: MediaSearch(media_type=0, channel=0, event=0, start=t, end=t),
        attrgetter("start"),
        BEIJING,
    ),
}


@examples(100)
@given(
    field=st.sampled_from(sorted(TIME_BODIES)),
    when=st.datetimes(
        min_value=datetime(1990, 1, 1),
        max_value=datetime(2110, 1, 1),
        timezones=st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m))),
    ),
)
def test_times_keep_their_instant_or_are_refused(field: str, when: datetime) -> None:
    """Any aware time, in any zone, comes back as the same instant (to the second), or encoding
    refuses it: BCD[6] holds years 2000-2099 of the field's zone, nothing may wrap around."""
    make, read, zone = TIME_BODIES[field]
    body = make(when)
    if 2000 <= when.astimezone(zone).year <= 2099:
        decoded = decode_frame(encode_frame(body, phone="13800138000")).body
        assert read(decoded) == when.replace(microsecond=0)
    else:
        with pytest.raises(JT808Error) as raised:
            encode_frame(body, phone="13800138000")
        assert raised.value.kind == "encode"


# --------------------------------------------------------------------------- 2. escaping


def test_generated_frames_really_contain_escapes() -> None:
    """The strategies' bias towards 0x7e/0x7d works: uniformly random bytes would need escaping
    in under 1% of the bytes; here it is several times that, in most frames."""
    inner: list[bytes] = []

    @examples(200, database=None)
    @given(frames())
    def collect(frame: bytes) -> None:
        inner.append(frame[1:-1])

    collect()
    assert all(0x7E not in f for f in inner)
    escaped = sum(b"\x7d" in f for f in inner)
    both = sum(b"\x7d\x01" in f and b"\x7d\x02" in f for f in inner)
    share = sum(f.count(0x7D) for f in inner) / sum(len(f) for f in inner)
    assert escaped >= len(inner) // 3, (escaped, len(inner))
    assert both >= len(inner) // 10, (both, len(inner))
    assert share >= 0.03, share


@examples(80)
@given(
    envelope=st.sampled_from([V2013, V2019]).flatmap(envelopes),
    msg_id=unknown_ids,
    data=blobs(max_size=40),
    check=st.sampled_from(ESCAPE_BYTES),
)
def test_check_codes_that_need_escaping(
    envelope: Envelope, msg_id: int, data: bytes, check: int
) -> None:
    """The last body byte is chosen so that the check code is 0x7e, 0x7d, 0x01 or 0x02."""
    header = Header(
        msg_id, envelope.phone, envelope.serial, envelope.header_version, envelope.protocol_version
    )
    content = build_header(header, len(data) + 1) + data
    body = data + bytes((check_code(content) ^ check,))
    frame = envelope.encode(RawBody(data=body), msg_id)
    assert unescape(frame[1:-1])[0][-1] == check
    if check in (0x7E, 0x7D):
        assert frame.endswith(bytes((0x7D, check - 0x7C, 0x7E)))
    message = decode_frame(frame)
    assert message.body == RawBody(data=body)
    assert (message.checksum_ok, message.problems) == (True, [])
    if check == 0x7D:  # quirk Q2: some terminals send a 0x7d check code unescaped
        quirky = decode_frame(frame[:-3] + b"\x7d\x7e")
        assert quirky.body == RawBody(data=body)
        assert (quirky.checksum_ok, quirky.problems) == (True, [])


# ------------------------------------------------------------------------ 3. stream splitting

SEPARATORS = {"none": b"", "flag": b"\x7e", "flags": b"\x7e\x7e\x7e"}


@st.composite
def chunks(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """``stream`` cut at random places (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=24)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


@examples(60)
@given(
    sent=st.lists(frames(), min_size=1, max_size=5),
    garbage=st.binary(max_size=24).map(lambda b: b.replace(b"\x7e", b"")),
    data=st.data(),
)
def test_splitter_gives_back_frames_from_any_chunking(
    sent: list[bytes], garbage: bytes, data: st.DataObject
) -> None:
    stream = bytearray(garbage)
    for i, frame in enumerate(sent):
        joint = data.draw(st.sampled_from([*SEPARATORS, "shared"]), label=f"joint {i}")
        if joint == "shared" and stream.endswith(b"\x7e"):
            stream += frame[1:]  # the previous closing flag opens this frame
        else:
            stream += SEPARATORS.get(joint, b"") + frame
    splitter = FrameSplitter()
    received: list[bytes] = []
    for chunk in data.draw(chunks(bytes(stream)), label="chunks"):
        received += splitter.feed(chunk)
        assert splitter.buffered <= splitter.max_frame
    assert received == sent
    assert splitter.buffered <= 1  # at most the last flag, which may open another frame
    dropped = splitter.take_dropped()
    assert {d.reason for d in dropped} <= {"garbage"}  # reported as it comes, maybe in pieces
    assert sum(d.size for d in dropped) == len(garbage)


def reference_split(stream: bytes, max_frame: int) -> tuple[list[bytes], int]:
    """What a splitter must have returned after ``stream``, computed on the whole of it: every
    stretch between two consecutive flags that is not empty and not longer than ``max_frame``;
    and what it must still hold: the bytes from the last flag on, unless already too many."""
    flags = [i for i, b in enumerate(stream) if b == 0x7E]
    frames_ = [
        stream[a : b + 1]
        for a, b in itertools.pairwise(flags)
        if b - a > 1 and b - a + 1 <= max_frame
    ]
    held = len(stream) - flags[-1] if flags else 0
    return frames_, held if held <= max_frame else 0


#: Streams with flags everywhere (tiny frames), or stretches of up to 60 bytes between flags
#: (around the small ``max_frame`` bounds used below).
flag_streams = st.lists(st.just(0x7E) | byte_values, max_size=300).map(bytes) | st.lists(
    st.lists(byte_values.filter(lambda b: b != 0x7E), max_size=60).map(bytes), max_size=8
).map(b"\x7e".join)


@examples(150)
@given(stream=flag_streams, max_frame=st.integers(3, 48), data=st.data())
def test_splitter_on_random_bytes(stream: bytes, max_frame: int, data: st.DataObject) -> None:
    splitter = FrameSplitter(max_frame=max_frame)
    received: list[bytes] = []
    fed = 0
    for chunk in data.draw(chunks(stream), label="chunks"):
        received += splitter.feed(chunk)
        fed += len(chunk)
        assert splitter.buffered <= max_frame
        assert (received, splitter.buffered) == reference_split(stream[:fed], max_frame)
    for frame in received:
        assert frame[0] == 0x7E and frame[-1] == 0x7E
        assert 3 <= len(frame) <= max_frame
        assert 0x7E not in frame[1:-1]


def test_splitter_bound_is_one_worst_case_frame() -> None:
    """The default bound admits the largest legitimate frame, every byte escaped."""
    header = Header(0x0900, "1" * 20, 0x7E7E, V2019, 0x7E, pkg_total=0x7E7E, pkg_index=0x7E7E)
    body = bytes([0x7E] * MAX_BODY)
    frame = wrap(build_header(header, len(body)) + body)
    assert len(frame) <= MAX_WIRE_FRAME
    assert FrameSplitter().feed(frame) == [frame]


# ----------------------------------------------------------------------------- 4. fuzzing


def _location_reports(value: Any) -> Iterator[LocationReport]:
    """Every location report inside a body (0x0200 itself, replies, batches, media...)."""
    if isinstance(value, LocationReport):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _location_reports(item)
    elif isinstance(value, Struct) and dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _location_reports(getattr(value, f.name))


def decode_everything(frame: bytes) -> None:
    """Decode ``frame`` every way there is (strict and lenient, each layout); only JT808Error
    may come out, and whatever decodes must be fit for JSON, extras and reassembly."""
    for strict in (True, False):
        for profile in PROFILES:
            try:
                message = decode_frame(frame, strict=strict, profile=profile)
            except JT808Error as exc:
                assert exc.kind in ERROR_KINDS
                continue
            check_decoded(message, profile)


def check_decoded(message: Message, profile: TerminalProfile) -> None:
    json.dumps(message.to_json(), allow_nan=False)
    for report in _location_reports(message.body):
        json.dumps(report.to_json(), allow_nan=False)
        report.extras()
    try:
        whole = Reassembler(profile=profile).add(message, 0.0)
    except JT808Error as exc:
        assert exc.kind in ERROR_KINDS
    else:
        if whole is not None:
            json.dumps(whole.to_json(), allow_nan=False)


@examples(200)
@given(
    raw=st.binary(max_size=80)
    | st.lists(byte_values, max_size=80).map(lambda b: b"\x7e" + bytes(b) + b"\x7e")
)
def test_random_bytes_only_raise_codec_errors(raw: bytes) -> None:
    decode_everything(raw)


@st.composite
def random_body_frames(draw: st.DrawFn) -> bytes:
    """A good header for a registered (or any) message id, random body bytes, right check code."""
    msg_id = draw(st.sampled_from(sorted(REGISTRY)) | uints(2))
    version = draw(st.sampled_from([V2013, V2019]))
    header = Header(msg_id, "0" * (20 if version == V2019 else 12), 1, version, 1)
    if draw(st.booleans()):
        header.pkg_total, header.pkg_index = draw(uints(2)), draw(uints(2))
    header.encryption = draw(st.sampled_from([0, 0, 0, 1, 7]))
    body = draw(blobs(max_size=120))
    return wrap(build_header(header, len(body)) + body)


@examples(300)
@given(frame=random_body_frames())
def test_random_bodies_only_raise_codec_errors(frame: bytes) -> None:
    decode_everything(frame)


@examples(300)
@given(frame=mutated_frames())
def test_damaged_frames_only_raise_codec_errors(frame: bytes) -> None:
    decode_everything(frame)


@examples(40)
@given(sample=samples(), data=st.data())
def test_truncated_bodies_only_raise_codec_errors(sample: Sample, data: st.DataObject) -> None:
    """Every message cut short, with a consistent header and check code, as terminals that stop
    early send them."""
    message = decode_frame(sample.frame, profile=sample.envelope.profile)
    cut = data.draw(st.integers(0, len(message.raw_body)), label="cut")
    decode_everything(wrap(build_header(message.header, cut) + message.raw_body[:cut]))


# --------------------------------------------------------------------------- 5. subpackages


@st.composite
def split_messages(draw: st.DrawFn) -> tuple[Body, Envelope, list[Message]]:
    """A large body in one edition, sent as subpackages of a random size, decoded part by part."""
    version = draw(st.sampled_from(VERSIONS), label="version")
    body = draw(large_bodies(version), label="body")
    envelope = draw(envelopes(version), label="envelope")
    size = len(encode_body(body, version))
    max_body = draw(st.integers(48, min(MAX_BODY, size - 1)), label="max_body")  # 2+ parts
    parts = encode_frames(
        body,
        phone=envelope.phone,
        serial=envelope.serial,
        version=version,
        protocol_version=envelope.protocol_version,
        max_body=max_body,
    )
    return body, envelope, [decode_frame(p, profile=envelope.profile) for p in parts]


def _check_parts(parts: list[Message], envelope: Envelope) -> None:
    total = len(parts)
    assert total > 1
    for index, part in enumerate(parts, 1):
        assert isinstance(part.body, RawBody)
        assert part.header.pkg_total == total
        assert part.header.pkg_index == index
        assert part.header.serial == (envelope.serial + index - 1) & 0xFFFF
        assert part.problems == []


def _check_whole(whole: Message, body: Body, envelope: Envelope) -> None:
    assert whole.body == body
    assert whole.msg_id == type(body).MSG_ID
    assert (whole.phone, whole.serial, whole.version) == (
        envelope.phone,
        envelope.serial,
        envelope.header_version,
    )
    assert whole.header.pkg_total is None
    assert whole.problems == []


@examples(15)
@given(split=split_messages(), data=st.data())
def test_subpackages_reassemble_in_any_order(
    split: tuple[Body, Envelope, list[Message]], data: st.DataObject
) -> None:
    body, envelope, parts = split
    _check_parts(parts, envelope)
    indexes = data.draw(st.permutations(range(len(parts))), label="arrival")
    *early, last = indexes
    repeats = data.draw(st.lists(st.sampled_from(early), max_size=6), label="duplicates")
    order = [*data.draw(st.permutations([*early, *repeats]), label="shuffled"), last]

    reassembler = Reassembler(profile=envelope.profile)
    complete = []
    for now, i in enumerate(order):
        whole = reassembler.add(parts[i], float(now))
        if whole is not None:
            complete.append(whole)
    assert len(complete) == 1
    _check_whole(complete[0], body, envelope)
    assert reassembler.duplicates == len(repeats)
    assert reassembler.pending == {}


@examples(15)
@given(
    split=split_messages(),
    max_requests=st.integers(1, 4),
    timeout=st.floats(0.001, 600.0),
    data=st.data(),
)
def test_missing_subpackage_is_requested_then_abandoned(
    split: tuple[Body, Envelope, list[Message]],
    max_requests: int,
    timeout: float,
    data: st.DataObject,
) -> None:
    body, envelope, parts = split
    withheld = data.draw(st.integers(1, len(parts)), label="withheld")
    late = data.draw(st.none() | st.integers(1, max_requests), label="arrives after request")
    reassembler = Reassembler(timeout=timeout, max_requests=max_requests, profile=envelope.profile,
                              max_age=timeout * (max_requests + 2))  # fmt: skip
    now = 1000.0
    for i in data.draw(st.permutations(range(1, len(parts) + 1)), label="arrival"):
        if i != withheld:
            assert reassembler.add(parts[i - 1], now) is None
    assert reassembler.due(now + timeout / 2) == ([], [])

    for attempt in range(1, max_requests + 1):
        now += timeout
        request, abandon = reassembler.due(now)
        assert abandon == []
        assert len(request) == 1
        pending = request[0]
        assert pending.missing == [withheld]
        assert pending.requests == attempt
        assert (pending.phone, pending.msg_id, pending.total) == (
            envelope.phone,
            type(body).MSG_ID,
            len(parts),
        )
        assert pending.first_serial == envelope.serial  # the "original serial" of 0x8003
        if attempt == late:
            whole = reassembler.add(parts[withheld - 1], now)
            assert whole is not None
            _check_whole(whole, body, envelope)
            assert reassembler.pending == {}
            return

    now += timeout
    request, abandon = reassembler.due(now)
    assert request == []
    assert [p.missing for p in abandon] == [[withheld]]
    assert reassembler.pending == {}
