"""Declarative message bodies: a body is a dataclass whose fields say their wire type.

Most JT/T 808 bodies are a flat sequence of integers, BCD, times and GBK strings, sometimes
different per protocol edition. Declaring that once per field gives both directions (decode and
encode) from one description, so the two can never drift apart. Bodies with irregular layouts
(0x0200, 0x0702, ...) override :meth:`Struct.decode` and :meth:`Struct.encode`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from enum import Enum
from typing import Any, ClassVar, Self

from .wire import Reader, Writer, bcd_time, time_bcd, ungbk


class Spec:
    """How one field travels on the wire."""

    def read(self, r: Reader) -> Any:
        raise NotImplementedError

    def write(self, w: Writer, value: Any) -> None:
        raise NotImplementedError


class Int(Spec):
    def __init__(self, size: int, hex_json: bool = False) -> None:
        self.size = size
        self.hex_json = hex_json
        self._method = {1: "u8", 2: "u16", 4: "u32"}[size]

    def read(self, r: Reader) -> int:
        return getattr(r, self._method)()  # type: ignore[no-any-return]

    def write(self, w: Writer, value: int) -> None:
        w._int(value, self.size)


U8, U16, U32 = Int(1), Int(2), Int(4)
#: A message id field (reply id): shown as "0x0200" in JSON.
MSG_ID = Int(2, hex_json=True)


class Degrees(Spec):
    """Latitude/longitude magnitude as DWORD millionths of a degree (sign lives elsewhere)."""

    def read(self, r: Reader) -> float:
        return r.u32() / 1e6

    def write(self, w: Writer, value: float) -> None:
        w.u32(round(value * 1e6))


DEGREES = Degrees()


class Bcd(Spec):
    def __init__(self, size: int) -> None:
        self.size = size

    def read(self, r: Reader) -> str:
        return r.bcd(self.size)

    def write(self, w: Writer, value: str) -> None:
        w.bcd(value, self.size)


class Time(Spec):
    """BCD[6] time. ``partial`` keeps digit strings that are not a full date (area schedules
    such as ``000000080000`` mean "every day at 08:00"); otherwise an invalid time is None."""

    def __init__(self, tz: tzinfo | None = None, partial: bool = False) -> None:
        self.tz = tz
        self.partial = partial

    def read(self, r: Reader) -> datetime | str | None:
        raw = r.take(6)
        value = bcd_time(raw, self.tz or r.tz)
        if value is None and self.partial:
            return raw.hex()
        return value

    def write(self, w: Writer, value: datetime | str | None) -> None:
        if self.tz is not None and isinstance(value, datetime):
            w.put(time_bcd(value, self.tz))  # not w.time(): that converts to the writer's zone
            return
        w.time(value)


UTC_TIME = Time(tz=UTC)


class Text(Spec):
    """GBK text: fixed width (``size``), length-prefixed (``prefix`` = 1 or 2 bytes) or the rest.

    ``zero_padded``: 2019 fixed fields that some terminals left-pad with ASCII '0' when they
    fill the whole width (quirk Q7); such a value loses its leading zeros.
    """

    def __init__(self, size: int | None = None, prefix: int = 0, zero_padded: bool = False) -> None:
        self.size = size
        self.prefix = prefix
        self.zero_padded = zero_padded

    def read(self, r: Reader) -> str:
        if self.prefix:
            return r.text_u8() if self.prefix == 1 else r.text_u16()
        if self.size is None:
            return ungbk(r.rest().rstrip(b"\x00"))
        raw = r.take(self.size)
        if self.zero_padded and b"\x00" not in raw and raw[:1] == b"0":
            raw = raw.lstrip(b"0")
        return ungbk(raw.rstrip(b"\x00"))

    def write(self, w: Writer, value: str) -> None:
        if self.prefix == 1:
            w.text_u8(value)
        elif self.prefix == 2:
            w.text_u16(value)
        elif self.size is None:
            w.put(value.encode("gbk"))
        else:
            w.text(value, self.size)


class Raw(Spec):
    """Opaque bytes: fixed size, length-prefixed, or the rest of the body."""

    def __init__(self, size: int | None = None, prefix: int = 0) -> None:
        self.size = size
        self.prefix = prefix

    def read(self, r: Reader) -> bytes:
        if self.prefix:
            return r.take(
                r.u8() if self.prefix == 1 else (r.u16() if self.prefix == 2 else r.u32())
            )
        return r.rest() if self.size is None else r.take(self.size)

    def write(self, w: Writer, value: bytes) -> None:
        if self.prefix:
            w._int(len(value), self.prefix)
            w.put(value)
        elif self.size is None:
            w.put(value)
        else:
            w.fixed(value, self.size)


class Many(Spec):
    """A list: a count field (``count`` spec) or, with ``count=None``, items until the end."""

    def __init__(self, item: Spec | type[Struct], count: Int | None = U8) -> None:
        self.item = item
        self.count = count

    def _read_item(self, r: Reader) -> Any:
        item = self.item
        return item.decode(r) if isinstance(item, type) else item.read(r)

    def read(self, r: Reader) -> list[Any]:
        if self.count is None:
            out = []
            while r.remaining():
                out.append(self._read_item(r))
            return out
        return [self._read_item(r) for _ in range(self.count.read(r))]

    def write(self, w: Writer, value: list[Any]) -> None:
        if self.count is not None:
            self.count.write(w, len(value))
        item = self.item
        for v in value:
            if isinstance(item, type):
                v.encode(w)
            else:
                item.write(w, v)


class One(Spec):
    """A nested structure."""

    def __init__(self, struct: type[Struct]) -> None:
        self.struct = struct

    def read(self, r: Reader) -> Struct:
        return self.struct.decode(r)

    def write(self, w: Writer, value: Struct) -> None:
        value.encode(w)


class Optional(Spec):
    """A trailing field that terminals may leave out: None when the body has ended."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def read(self, r: Reader) -> Any:
        return self.spec.read(r) if r.remaining() else None

    def write(self, w: Writer, value: Any) -> None:
        if value is not None:
            self.spec.write(w, value)


class When(Spec):
    """A field present only when a bit of an earlier integer field is set (area attributes)."""

    def __init__(self, flag_field: str, mask: int, spec: Spec) -> None:
        self.flag_field = flag_field
        self.mask = mask
        self.spec = spec

    def present(self, values: Any) -> bool:
        flags = (
            values[self.flag_field]
            if isinstance(values, dict)
            else getattr(values, self.flag_field)
        )
        return bool(flags & self.mask)

    def read(self, r: Reader) -> Any:
        return self.spec.read(r)

    def write(self, w: Writer, value: Any) -> None:
        self.spec.write(w, value)


class Edition(Spec):
    """A field whose layout depends on the protocol edition (2011, 2013, 2019).

    Editions missing from the map do not carry the field: it reads as None and is not written.
    """

    def __init__(self, **by_edition: Spec) -> None:
        self.by_edition = {int(k.lstrip("v")): s for k, s in by_edition.items()}

    def read(self, r: Reader) -> Any:
        spec = self.by_edition.get(r.version)
        return None if spec is None else spec.read(r)

    def write(self, w: Writer, value: Any) -> None:
        spec = self.by_edition.get(w.version)
        if spec is not None:
            spec.write(w, value)


def since_2013(spec: Spec) -> Edition:
    return Edition(v2013=spec, v2019=spec)


def only_2019(spec: Spec) -> Edition:
    return Edition(v2019=spec)


def wire(spec: Spec, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    """Declare a body field and its wire type."""
    if (
        isinstance(spec, Edition | When | Optional)
        and default is dataclasses.MISSING
        and factory is dataclasses.MISSING
    ):
        default = None
    return dataclasses.field(default=default, default_factory=factory, metadata={"wire": spec})


class Struct:
    """Base of every body and nested structure. Subclasses are kw-only slotted dataclasses."""

    __slots__ = ()
    _wire: ClassVar[tuple[tuple[str, Spec], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._wire = ()

    @classmethod
    def _layout(cls) -> tuple[tuple[str, Spec], ...]:
        if not cls._wire and dataclasses.is_dataclass(cls):
            cls._wire = tuple(
                (f.name, f.metadata["wire"])
                for f in dataclasses.fields(cls)
                if "wire" in f.metadata
            )
        return cls._wire

    @classmethod
    def decode(cls, r: Reader) -> Self:
        values: dict[str, Any] = {}
        for name, spec in cls._layout():
            if isinstance(spec, When) and not spec.present(values):
                continue
            values[name] = spec.read(r)
        return cls(**values)

    def encode(self, w: Writer) -> None:
        for name, spec in self._layout():
            if isinstance(spec, When) and not spec.present(self):
                continue
            spec.write(w, getattr(self, name))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        specs = dict(self._layout())
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            spec = specs.get(f.name)
            if isinstance(spec, Int) and spec.hex_json:
                out[f.name] = f"0x{value:04X}"
            else:
                out[f.name] = jsonable(value)
        return out


class Body(Struct):
    """A message body. ``MSG_ID`` is set by :func:`message`."""

    __slots__ = ()
    MSG_ID: ClassVar[int] = -1


#: message id -> body class, filled by :func:`message`.
REGISTRY: dict[int, type[Body]] = {}


def message(*msg_ids: int) -> Callable[[type[Body]], type[Body]]:
    """Register a body class for one message id (or several sharing a layout)."""

    def register(cls: type[Body]) -> type[Body]:
        cls.MSG_ID = msg_ids[0]
        for msg_id in msg_ids:
            if msg_id in REGISTRY:
                raise RuntimeError(f"message 0x{msg_id:04X} registered twice")
            REGISTRY[msg_id] = cls
        return cls

    return register


@dataclasses.dataclass(slots=True, kw_only=True)
class RawBody(Body):
    """A body kept as bytes: unknown/vendor message ids, subpackage parts, encrypted bodies."""

    data: bytes = wire(Raw(), default=b"")


def jsonable(value: Any) -> Any:
    """Turn decoded values into JSON-friendly ones (times ISO 8601 with offset, bytes as hex)."""
    if isinstance(value, Struct):
        return value.to_json()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def empty_body(name: str, msg_id: int, module: str) -> type[Body]:
    """A message whose body is empty (heartbeat, queries without arguments)."""
    cls = dataclasses.make_dataclass(name, [], bases=(Body,), slots=True, kw_only=True)
    cls.__doc__ = f"0x{msg_id:04X}: empty body."
    cls.__module__ = module
    return message(msg_id)(cls)


__all__ = [
    "DEGREES",
    "MSG_ID",
    "REGISTRY",
    "U8",
    "U16",
    "U32",
    "UTC_TIME",
    "Bcd",
    "Body",
    "Edition",
    "Int",
    "Many",
    "One",
    "Optional",
    "Raw",
    "RawBody",
    "Spec",
    "Struct",
    "Text",
    "Time",
    "When",
    "jsonable",
    "message",
    "only_2019",
    "since_2013",
    "wire",
]
