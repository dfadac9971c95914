"""Hypothesis strategies for the JT/T 808 codec (``protocols.jt808``).

Every registered message body gets a strategy producing bodies that survive
``decode_frame(encode_frame(body))`` unchanged:

* declarative bodies get one derived from their field specs (:func:`struct_values`);
* bodies with their own ``decode``/``encode`` need a hand-written one in :data:`CUSTOM`.
  :func:`body_strategy` refuses to guess for them, so a new irregular message without a
  strategy makes ``test_strategies_cover_every_registered_message`` fail.

Values are biased towards the bytes the framing has to escape (0x7e, 0x7d) so that the escaping
is exercised everywhere, not only in the rare random frame that happens to contain them.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from datetime import datetime, tzinfo
from functools import cache
from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from protocols.jt808 import (
    BEIJING,
    DEFAULT_PROFILE,
    REGISTRY,
    V2011,
    V2013,
    V2019,
    BatchLocation,
    Body,
    CanBusData,
    CanItem,
    DriverIdentity,
    LocationReport,
    MediaData,
    Param,
    RawBody,
    Register,
    SetParameters,
    TerminalAttributes,
    TerminalProfile,
    encode_frame,
)
from protocols.jt808.body import (
    Bcd,
    Degrees,
    Edition,
    Int,
    Many,
    One,
    Optional,
    Raw,
    Spec,
    Struct,
    Text,
    Time,
    When,
)
from protocols.jt808.framing import unescape, wrap
from protocols.jt808.location import STATUS_SOUTH, STATUS_WEST, Location
from protocols.jt808.location_items import (
    ITEMS,
    AdasAlarm,
    AlarmIdentification,
    BsdAlarm,
    DsmAlarm,
    TpmsAlarm,
    encode_struct,
)
from protocols.jt808.params import BYTE, DWORD, PARAM_TYPES, STRING, WORD, ParamSpec
from protocols.jt808.wire import bcd_time

VERSIONS: tuple[int, ...] = (V2011, V2013, V2019)

# --------------------------------------------------------------------------- escaping-heavy atoms

#: Bytes that the framing escapes (0x7e, 0x7d) or that follow 0x7d in an escape pair.
ESCAPE_BYTES: tuple[int, ...] = (0x7E, 0x7D, 0x01, 0x02)
_ESCAPE_INTS = (
    0x7E,
    0x7D,
    0x7E7E,
    0x7D7E,
    0x7E7D,
    0x7D7D,
    0x7D01,
    0x7D02,
    0x7E7E7E7E,
    0x7D7D7D7D,
    0x7D027D01,
    0x7E7D7E7D,
)
#: "~" is 0x7e and "}" 0x7d in GBK; these double-byte characters end in 0x7d or 0x7e.
ESCAPE_CHARS: tuple[str, ...] = ("~", "}", "亇", "亊", "倉", "倊", "▆", "▇")

byte_values: SearchStrategy[int] = st.sampled_from(ESCAPE_BYTES) | st.integers(0, 255)


@cache
def uints(size: int) -> SearchStrategy[int]:
    """Unsigned ``size``-byte integers, often made of 0x7e/0x7d bytes."""
    top = (1 << (8 * size)) - 1
    special = sorted({v for v in (0, 1, *_ESCAPE_INTS, top) if v <= top})
    return st.sampled_from(special) | st.integers(0, top)


def blobs(min_size: int = 0, max_size: int = 32) -> SearchStrategy[bytes]:
    """Bytes with plenty of 0x7e and 0x7d."""
    return st.lists(byte_values, min_size=min_size, max_size=max_size).map(bytes)


def big_blobs(min_size: int, max_size: int) -> SearchStrategy[bytes]:
    """Kilobytes of escaping-heavy bytes, from a seed (hypothesis' own buffer is too small)."""
    pool = bytes(range(256)) + bytes(ESCAPE_BYTES) * 16

    def build(seed: int, size: int) -> bytes:
        rng = random.Random(seed)
        return bytes(rng.choice(pool) for _ in range(size))

    return st.builds(build, st.integers(0, 2**32 - 1), st.integers(min_size, max_size))


def digits(n: int) -> SearchStrategy[str]:
    """Exactly ``n`` decimal digits (BCD fields decode to their full width)."""
    return st.text("0123456789", min_size=n, max_size=n)


# --------------------------------------------------------------------------------------- text

text_chars: SearchStrategy[str] = st.sampled_from(ESCAPE_CHARS) | st.characters(
    codec="gbk", exclude_characters="\x00"
)


def _fit(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose GBK form fits ``max_bytes``."""
    out, used = [], 0
    for ch in text:
        size = len(ch.encode("gbk"))
        if used + size > max_bytes:
            break
        out.append(ch)
        used += size
    return "".join(out)


def gbk_text(
    max_chars: int = 12, max_bytes: int = 255, *, zero_padded: bool = False
) -> SearchStrategy[str]:
    """GBK-encodable text without NUL (fixed fields are NUL-padded, so NUL cannot survive).

    ``zero_padded`` (2019 fixed fields): a value filling the whole field loses its leading '0's
    on decoding, so such values are generated without them."""

    def clean(text: str) -> str:
        text = _fit(text, max_bytes)
        if zero_padded and len(text.encode("gbk")) == max_bytes:
            text = text.lstrip("0")
        return text

    return st.text(text_chars, max_size=max_chars).map(clean)


# --------------------------------------------------------------------------------------- times


def times(tz: tzinfo = BEIJING) -> SearchStrategy[datetime]:
    """Aware datetimes in ``tz``, whole seconds, years 2000-2099 (what BCD[6] can carry)."""
    return st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2099, 12, 31, 23, 59, 59),
        timezones=st.just(tz),
    ).map(lambda t: t.replace(microsecond=0))


def _is_schedule(text: str) -> bool:
    return bcd_time(bytes.fromhex(text)) is None


#: 12-digit strings that are not a date ("000000080000": every day at 08:00).
schedules: SearchStrategy[str] = st.sampled_from(
    ["000000080000", "000000000000", "000000235959", "990000120000"]
) | st.lists(st.integers(0, 99), min_size=6, max_size=6).map(
    lambda parts: "".join(f"{p:02d}" for p in parts)
).filter(_is_schedule)

# ------------------------------------------------------------------------------- declarative

MAX_ITEMS = 3  # list lengths: small, so every body fits one frame (1023 bytes)


def spec_values(spec: Spec, version: int) -> SearchStrategy[Any]:
    """Valid values for one field spec in one protocol edition."""
    if isinstance(spec, Edition):
        inner = spec.by_edition.get(version)
        return st.none() if inner is None else spec_values(inner, version)
    if isinstance(spec, Optional):
        return st.none() | spec_values(spec.spec, version)
    if isinstance(spec, When):  # the flag bit is checked by struct_values
        return spec_values(spec.spec, version)
    if isinstance(spec, Degrees):
        return uints(4).map(lambda n: n / 1e6)
    if isinstance(spec, Int):
        return uints(spec.size)
    if isinstance(spec, Bcd):
        return digits(2 * spec.size)
    if isinstance(spec, Time):
        values = times(spec.tz or BEIJING)
        return values | schedules if spec.partial else values
    if isinstance(spec, Text):
        if spec.size is not None and not spec.prefix:
            return gbk_text(spec.size, spec.size, zero_padded=spec.zero_padded)
        return gbk_text()
    if isinstance(spec, Raw):
        if spec.size is not None and not spec.prefix:
            return blobs(spec.size, spec.size)
        return blobs()
    if isinstance(spec, Many):
        item = spec.item
        items = (
            struct_values(item, version) if isinstance(item, type) else spec_values(item, version)
        )
        top = MAX_ITEMS if spec.count is None else min(MAX_ITEMS, (1 << (8 * spec.count.size)) - 1)
        return st.lists(items, max_size=top)
    if isinstance(spec, One):
        return struct_values(spec.struct, version)
    if isinstance(spec, ParamSpec):
        return params()
    if isinstance(spec, Location):
        return location_reports(version, basic=spec.basic_only)
    raise NotImplementedError(f"no strategy for the field spec {type(spec).__name__}")


def struct_values(
    cls: type[Struct], version: int, **overrides: SearchStrategy[Any]
) -> SearchStrategy[Any]:
    """Instances of a declarative struct, derived from ``cls._layout()``.

    Field strategies are built eagerly, so an unknown spec fails here, not mid-test.
    ``When`` fields are drawn exactly when their flag bit is set, and None otherwise."""
    if not overrides:
        return _struct_values(cls, version)
    fields = [
        (name, spec, overrides[name] if name in overrides else spec_values(spec, version))
        for name, spec in cls._layout()
    ]
    return _struct_from(cls, fields)


@cache
def _struct_values(cls: type[Struct], version: int) -> SearchStrategy[Any]:
    fields = [(name, spec, spec_values(spec, version)) for name, spec in cls._layout()]
    return _struct_from(cls, fields)


def _struct_from(
    cls: type[Struct], fields: list[tuple[str, Spec, SearchStrategy[Any]]]
) -> SearchStrategy[Any]:
    @st.composite
    def build(draw: st.DrawFn) -> Any:
        values: dict[str, Any] = {}
        for name, spec, strategy in fields:
            if isinstance(spec, When) and not spec.present(values):
                values[name] = None
            else:
                values[name] = draw(strategy)
        return cls(**values)

    return build()


# ----------------------------------------------------------------------------------- parameters


@st.composite
def params(draw: st.DrawFn) -> Param:
    """One terminal parameter: the value type decoding will give back for its id."""
    param_id = draw(st.sampled_from(sorted(PARAM_TYPES)) | uints(4))
    kind = PARAM_TYPES.get(param_id)
    if kind == STRING:
        return Param(param_id, draw(gbk_text(16)))
    if kind is None:
        return Param(param_id, draw(blobs(max_size=16)))
    size = {BYTE: 1, WORD: 2, DWORD: 4}[kind]
    # raw bytes survive only with a length that does not match the id's integer type
    raw = blobs(max_size=8).filter(lambda b: len(b) != size)
    return Param(param_id, draw(uints(size) | raw))


# ------------------------------------------------------------------------------------- location


def _standard_item(item_id: int) -> SearchStrategy[tuple[int, bytes]]:
    lengths = ITEMS[item_id][1] or (0,)
    return st.sampled_from(lengths).flatmap(lambda n: blobs(n, n)).map(lambda b: (item_id, b))


def active_safety_alarms(version: int = V2013) -> SearchStrategy[tuple[int, Struct]]:
    """Well-formed active-safety alarms (items 0x64-0x67) with a 2013 (short, 16-byte) or 2019
    (long, 40-byte) alarm identification."""
    long = version == V2019
    ident = st.builds(
        AlarmIdentification,
        terminal_id=gbk_text(30 if long else 7, 30 if long else 7),
        time=times() | schedules,
        sequence=uints(1),
        attachments=uints(1),
        reserved=blobs(2, 2) if long else blobs(1, 1),
    )
    kinds: dict[int, type[Struct]] = {
        0x64: AdasAlarm,
        0x65: DsmAlarm,
        0x66: TpmsAlarm,
        0x67: BsdAlarm,
    }
    return st.sampled_from(sorted(kinds)).flatmap(
        lambda item_id: st.tuples(
            st.just(item_id), struct_values(kinds[item_id], version, identification=ident)
        )
    )


def location_items(version: int = V2013) -> SearchStrategy[list[tuple[int, bytes]]]:
    """Additional items: random ids and bytes, standard items, active-safety alarms."""
    raw = st.tuples(uints(1), blobs(max_size=16))
    standard = st.sampled_from(sorted(i for i, spec in ITEMS.items() if spec[1])).flatmap(
        _standard_item
    )
    alarms = active_safety_alarms(version).map(lambda pair: (pair[0], encode_struct(pair[1])))
    return st.lists(raw | standard | alarms, max_size=4)


@cache
def location_reports(
    version: int = V2013, *, basic: bool = False
) -> SearchStrategy[LocationReport]:
    """0x0200 bodies. South/west status bits agree with the signs (the encoder sets them from
    the signs); ``basic`` is the 28-byte block without additional items (0x0801, 0x0802)."""

    @st.composite
    def build(draw: st.DrawFn) -> LocationReport:
        status = draw(uints(4))
        lat = draw(uints(4)) / 1e6
        lon = draw(uints(4)) / 1e6
        return LocationReport(
            alarm=draw(uints(4)),
            status=status,
            latitude=-lat if status & STATUS_SOUTH else lat,
            longitude=-lon if status & STATUS_WEST else lon,
            altitude_m=draw(uints(2)),
            speed_kmh=draw(uints(2)) / 10,
            heading=draw(uints(2)),
            time=draw(times()),
            items=[] if basic else draw(location_items(version)),
        )

    return build()


# --------------------------------------------------------------------------- irregular bodies


def driver_identities(version: int) -> SearchStrategy[DriverIdentity]:
    """0x0702: the 2011 layout (names only), or status 1/2 + time, then optionally the read
    result and, when it is 0, the card fields (``id_card`` always present in 2019)."""
    if version == V2011:
        return st.builds(
            DriverIdentity,
            driver_name=gbk_text(),
            id_card=gbk_text(20, 20),
            cert_code=gbk_text(40, 40),
            issuer=gbk_text(),
        )
    status = st.sampled_from([1, 2])  # any other first byte means the 2011 layout
    card_time = st.none() | times()  # None travels as 000000000000 and reads back as None
    unread = st.builds(
        DriverIdentity,
        status=status,
        time=card_time,
        read_result=st.none() | st.just(0) | uints(1).filter(bool),
    )
    read = st.builds(
        DriverIdentity,
        status=status,
        time=card_time,
        read_result=st.just(0),
        driver_name=gbk_text(),
        cert_code=gbk_text(20, 20),
        issuer=gbk_text(),
        cert_expiry=digits(8),
        id_card=gbk_text(20, 20) if version == V2019 else st.none() | gbk_text(20, 20),
    )
    return unread | read


def batch_locations(version: int) -> SearchStrategy[BatchLocation]:
    return st.builds(
        BatchLocation,
        batch_type=uints(1),
        items=st.lists(location_reports(version), max_size=MAX_ITEMS),
        tail=blobs(max_size=8),  # bytes after the declared items are kept as they are
    )


def can_bus_data(version: int) -> SearchStrategy[CanBusData]:
    return st.builds(
        CanBusData,
        received=digits(10),
        items=st.lists(struct_values(CanItem, version), max_size=4),
    )


Maker = Callable[[int], SearchStrategy[Any]]

#: Bodies whose class has its own decode/encode: each needs a reviewed strategy.
CUSTOM: dict[type[Body], Maker] = {
    LocationReport: location_reports,
    DriverIdentity: driver_identities,
    BatchLocation: batch_locations,
    CanBusData: can_bus_data,
    # decode picks the 2011/2013 layout from the body length: the fixed part is always written
    # in full, so the declared layout is all a strategy needs
    Register: lambda version: struct_values(Register, version),
    # 2019 decode falls back to a 5-byte manufacturer only when bytes are left over
    TerminalAttributes: lambda version: struct_values(TerminalAttributes, version),
}


def has_custom_codec(cls: type[Struct]) -> bool:
    """Whether ``cls`` (or a base below :class:`Struct`) overrides ``decode`` or ``encode``."""
    for klass in cls.__mro__:
        if klass in (Struct, Body, object):
            break
        if "decode" in vars(klass) or "encode" in vars(klass):
            return True
    return False


@cache
def body_strategy(cls: type[Body], version: int) -> SearchStrategy[Any]:
    """Bodies of ``cls`` that round-trip in ``version``. Raises LookupError for an irregular body
    without a hand-written strategy, NotImplementedError for a field spec without one."""
    maker = CUSTOM.get(cls)
    if maker is not None:
        return maker(version)
    if has_custom_codec(cls):
        raise LookupError(
            f"{cls.__name__} has its own decode/encode: add a strategy to tests/strategies.py"
        )
    return struct_values(cls, version)


#: Message ids no body class is registered for: they travel as RawBody.
unknown_ids: SearchStrategy[int] = uints(2).filter(lambda msg_id: msg_id not in REGISTRY)


def raw_bodies() -> SearchStrategy[RawBody]:
    return st.builds(RawBody, data=blobs(max_size=64))


# ----------------------------------------------------------------------------------- envelopes


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """Header fields of a frame to encode (the body edition is ``version``)."""

    version: int
    phone: str
    serial: int
    protocol_version: int = 1

    @property
    def header_version(self) -> int:
        """The header layout: 2011 terminals use the 2013 header."""
        return V2019 if self.version == V2019 else V2013

    @property
    def profile(self) -> TerminalProfile:
        """The decoding profile: a 2011 body cannot be told from the wire, it is configured."""
        return TerminalProfile(version=V2011) if self.version == V2011 else DEFAULT_PROFILE

    def encode(self, body: Body, msg_id: int | None = None) -> bytes:
        return encode_frame(
            body,
            phone=self.phone,
            serial=self.serial,
            version=self.version,
            protocol_version=self.protocol_version,
            msg_id=msg_id,
        )


def envelopes(version: int) -> SearchStrategy[Envelope]:
    """Phone as BCD digits (12 for 2011/2013, 20 for 2019), serial, 2019 protocol version."""
    return st.builds(
        Envelope,
        version=st.just(version),
        phone=digits(20 if version == V2019 else 12),
        serial=uints(2),
        protocol_version=uints(1) if version == V2019 else st.just(1),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """A body, the envelope it travels in, and the frame they make."""

    msg_id: int
    body: Body
    envelope: Envelope
    frame: bytes


def samples_of(msg_id: int, version: int) -> SearchStrategy[Sample]:
    def build(body: Body, envelope: Envelope) -> Sample:
        return Sample(msg_id, body, envelope, envelope.encode(body, msg_id))

    return st.builds(build, body_strategy(REGISTRY[msg_id], version), envelopes(version))


#: Every (message id, edition) pair, for tests that want any message.
ALL_CASES: tuple[tuple[int, int], ...] = tuple(
    (msg_id, version) for msg_id in sorted(REGISTRY) for version in VERSIONS
)


def samples(versions: tuple[int, ...] = VERSIONS) -> SearchStrategy[Sample]:
    """A random registered message in one of ``versions``, encoded."""
    cases = [(m, v) for m, v in ALL_CASES if v in versions]
    return st.sampled_from(cases).flatmap(lambda case: samples_of(*case))


def frames(versions: tuple[int, ...] = VERSIONS) -> SearchStrategy[bytes]:
    return samples(versions).map(lambda sample: sample.frame)


# -------------------------------------------------------------------------------------- damage


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid frame, damaged: bytes replaced, inserted or deleted, or cut short.

    Half the time the damage is done to the unescaped payload and the frame is re-wrapped with a
    correct check code, so strict decoding gets past the checksum and into the body decoders."""
    frame = draw(frames())
    in_payload = draw(st.booleans())
    data = bytearray(unescape(frame[1:-1])[0][:-1] if in_payload else frame)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "replace" and data:
            data[pos] = draw(byte_values)
        elif op == "insert":
            data[pos:pos] = draw(blobs(1, 4))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        elif op == "truncate":
            del data[pos:]
    return wrap(bytes(data)) if in_payload else bytes(data)


# ---------------------------------------------------------------------------------- subpackages


def large_bodies(version: int) -> SearchStrategy[Body]:
    """Bodies far above one frame: kilobytes of media, or a hundred-odd parameters."""
    media = struct_values(MediaData, version, data=big_blobs(1500, 6000))
    settings = st.builds(SetParameters, params=st.lists(params(), min_size=60, max_size=150))
    return media | settings


__all__ = [
    "ALL_CASES",
    "CUSTOM",
    "ESCAPE_BYTES",
    "ESCAPE_CHARS",
    "VERSIONS",
    "Envelope",
    "Sample",
    "active_safety_alarms",
    "batch_locations",
    "big_blobs",
    "blobs",
    "body_strategy",
    "byte_values",
    "can_bus_data",
    "digits",
    "driver_identities",
    "envelopes",
    "frames",
    "gbk_text",
    "has_custom_codec",
    "large_bodies",
    "location_items",
    "location_reports",
    "mutated_frames",
    "params",
    "raw_bodies",
    "samples",
    "samples_of",
    "schedules",
    "spec_values",
    "struct_values",
    "text_chars",
    "times",
    "uints",
    "unknown_ids",
]
