"""What the platform can ask of a vehicle's terminal, in platform terms, and what comes back.

These are the words of :class:`alerts.gateway.CommandGateway` (``send(vehicle, command) ->
reply``): supervision, the duty desk and the CLI say *what* they want (a text read aloud, where
the vehicle is, report every 10 s for 5 minutes); the terminal end in ``ingest/`` says it in
the vehicle's protocol (JT/T 808 0x8300, 0x8201, 0x8202, ...) and turns the answer into a
:class:`Reply`. Commands travel between processes as JSON (:func:`command_to_json`,
:func:`command_from_json`), so each is a frozen dataclass of JSON-able fields.

A command the terminal answered gives a :class:`Reply` (``result`` accepted, failed or
unsupported: the terminal's own verdict); one that never reached an answer raises
:class:`CommandFailed` with a ``reason`` (offline, timeout, disconnected, or invalid: the
terminal's protocol cannot say it), so a caller cannot mistake "nobody heard it" for "the
terminal said no".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

#: The terminal's answer to a command it received.
ACCEPTED, FAILED, UNSUPPORTED = "accepted", "failed", "unsupported"
#: Why a command got no answer (:attr:`CommandFailed.reason`).
#: (The values of the result columns of terminal_pushes and commands, migration 0008.)
OFFLINE, TIMEOUT, DISCONNECTED, INVALID = "offline", "timeout", "disconnected", "invalid"
ANSWERS = (ACCEPTED, FAILED, UNSUPPORTED)
FAILURES = (OFFLINE, TIMEOUT, DISCONNECTED, INVALID)


class CommandFailed(Exception):
    """The command got no answer from the terminal; ``reason`` is one of :data:`FAILURES`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Reply:
    """The terminal's answer: its verdict, when it came, the serial the command went out with
    (recorded with every push) and, for a position query, where the vehicle is."""

    result: str
    answered_at: datetime | None = None
    serial: int | None = None
    position: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "answered_at": self.answered_at.isoformat() if self.answered_at else None,
            "serial": self.serial,
            "position": self.position,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reply:
        at = data.get("answered_at")
        return cls(
            result=str(data["result"]),
            answered_at=datetime.fromisoformat(at) if at else None,
            serial=data.get("serial"),
            position=data.get("position"),
        )


class Command:
    """Base of the platform commands; ``KIND`` names a command in JSON and in push records."""

    KIND: ClassVar[str] = ""


_KINDS: dict[str, type[Command]] = {}


def _command(cls: type[Command]) -> type[Command]:
    _KINDS[cls.KIND] = cls
    return cls


@_command
@dataclass(frozen=True, slots=True)
class Text(Command):
    """A message to the driver: shown on the display, read aloud (TTS), or both; ``urgent``
    makes the terminal interrupt what it shows. ``service``: a service message rather than a
    notice, where the terminal's protocol tells them apart."""

    KIND: ClassVar[str] = "text"
    text: str
    tts: bool = True
    display: bool = True
    urgent: bool = False
    service: bool = False

    def __post_init__(self) -> None:
        if not self.text:
            raise ValueError("a text command needs a text")
        if not (self.tts or self.display):
            raise ValueError("a text must be shown, read aloud, or both")


@_command
@dataclass(frozen=True, slots=True)
class QueryPosition(Command):
    """Where is the vehicle now (the reply carries the position)."""

    KIND: ClassVar[str] = "query_position"


@_command
@dataclass(frozen=True, slots=True)
class Track(Command):
    """Report every ``interval_s`` seconds for ``duration_s`` seconds (interval 0 stops)."""

    KIND: ClassVar[str] = "track"
    interval_s: int
    duration_s: int

    def __post_init__(self) -> None:
        if not 0 <= self.interval_s <= 0xFFFF:
            raise ValueError(f"tracking interval {self.interval_s} s: 0..65535")
        if not 0 <= self.duration_s <= 0xFFFFFFFF:
            raise ValueError(f"tracking duration {self.duration_s} s: 0..4294967295")


#: Terminal alarms a terminal keeps raising until the platform confirms them (ConfirmAlarm).
CONFIRMABLE_ALARMS = (
    "emergency", "dangerous_driving", "area_in_out", "route_in_out", "route_drive_time",
    "illegal_ignition", "illegal_displacement",
)  # fmt: skip


@_command
@dataclass(frozen=True, slots=True)
class ConfirmAlarm(Command):
    """A dispatcher has seen this terminal alarm (by name, e.g. ``emergency``): the terminal
    may clear it. ``report_serial``: the report that raised it (None: every such alarm)."""

    KIND: ClassVar[str] = "confirm_alarm"
    alarm: str
    report_serial: int | None = None


@_command
@dataclass(frozen=True, slots=True)
class SetParameters(Command):
    """Terminal settings by platform name (``max_speed_kmh``, ``continuous_driving_limit_s``,
    ...); the terminal end knows which names its protocol can carry."""

    KIND: ClassVar[str] = "set_parameters"
    values: dict[str, int | str] = field(default_factory=dict)


@_command
@dataclass(frozen=True, slots=True)
class SetAreas(Command):
    """Areas the terminal watches by itself (JSON-able descriptions, see
    :mod:`alerts.enforcement`); ``shape`` circle or rectangle replaces all of that shape, a
    polygon or route goes one per command."""

    KIND: ClassVar[str] = "set_areas"
    shape: str
    areas: list[dict[str, Any]] = field(default_factory=list)


@_command
@dataclass(frozen=True, slots=True)
class DeleteAreas(Command):
    """Remove areas of one shape from the terminal (no ids: all of them)."""

    KIND: ClassVar[str] = "delete_areas"
    shape: str
    ids: list[int] = field(default_factory=list)


_canonical = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode


def canonical_json(content: Any) -> str:
    """A JSON value in one canonical text (sorted keys, no spaces)."""
    return _canonical(content)


def content_hash(content: Any) -> str:
    """sha256 of a JSON value's canonical text: equal content, equal hash (what decides
    whether a terminal already holds a push)."""
    return hashlib.sha256(_canonical(content).encode()).hexdigest()


def command_to_json(command: Command) -> dict[str, Any]:
    """``{"kind": ..., fields...}``: what travels between processes and is stored with a push."""
    out: dict[str, Any] = {"kind": command.KIND}
    out.update(dataclasses.asdict(command))  # type: ignore[call-overload]
    return out


def command_from_json(data: Mapping[str, Any]) -> Command:
    """The command a :func:`command_to_json` dict describes (ValueError if it is none)."""
    kind = data.get("kind")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown command kind {kind!r}")
    fields = {k: v for k, v in data.items() if k != "kind"}
    try:
        return cls(**fields)
    except TypeError as exc:
        raise ValueError(f"{kind}: {exc}") from None


__all__ = [
    "ACCEPTED",
    "ANSWERS",
    "CONFIRMABLE_ALARMS",
    "DISCONNECTED",
    "FAILED",
    "FAILURES",
    "INVALID",
    "OFFLINE",
    "TIMEOUT",
    "UNSUPPORTED",
    "Command",
    "CommandFailed",
    "ConfirmAlarm",
    "DeleteAreas",
    "QueryPosition",
    "Reply",
    "SetAreas",
    "SetParameters",
    "Text",
    "Track",
    "canonical_json",
    "command_from_json",
    "command_to_json",
    "content_hash",
]
