"""The terminal end of the command gateway: platform commands said in JT/T 808, answers back.

:class:`TerminalEnd` is what :class:`alerts.gateway.CommandGateway` calls for the terminals
connected to this process: it turns a platform command (:mod:`alerts.commands`) into its
message (a text into 0x8300, a position query into 0x8201, ...), sends it on the terminal's
live connection and waits for the answer: the dedicated reply where the standard has one
(0x8104 → 0x0104, 0x8201 → 0x0201, ...), else the terminal's 0x0001 general response, matched
on the command's serial (:class:`PendingCommands`, per connection). It also tells the gateway
when a terminal comes and goes, so other processes can route commands here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from alerts.commands import (
    ACCEPTED,
    DISCONNECTED,
    FAILED,
    INVALID,
    OFFLINE,
    TIMEOUT,
    UNSUPPORTED,
    Command,
    CommandFailed,
    ConfirmAlarm,
    DeleteAreas,
    QueryPosition,
    Reply,
    SetAreas,
    SetParameters,
    Text,
    Track,
)
from protocols.jt808 import (
    ALARM_BITS,
    PARAM_NAMES,
    PARAM_TYPES,
    Body,
    LocationQueryReply,
    LocationReport,
    Message,
    Param,
    alarm_names,
)
from protocols.jt808.platform import (
    RESULT_ALARM_CONFIRMED,
    RESULT_OK,
    RESULT_UNSUPPORTED,
    TEXT_DISPLAY,
    TEXT_TTS,
    TEXT_URGENT,
    AlarmConfirmation,
    QueryLocation,
    TemporaryTracking,
    TextMessage,
)
from protocols.jt808.platform import SetParameters as SetParametersBody

if TYPE_CHECKING:
    from ingest.jt808_server import JT808Protocol

#: Command id → the terminal's dedicated reply id (everything else is answered by 0x0001).
DEDICATED_REPLIES = {
    0x8104: 0x0104,
    0x8106: 0x0104,
    0x8107: 0x0107,
    0x8201: 0x0201,
    0x8500: 0x0500,
    0x8702: 0x0702,
    0x8801: 0x0805,
    0x8802: 0x0802,
}
#: Dedicated replies that carry no reply serial: matched to the oldest command waiting for them.
SERIAL_LESS = frozenset((0x0107, 0x0702))


class CommandError(Exception):
    """A command that got no answer: ``reason`` is offline, timeout or disconnected."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class PendingCommands:
    """Per connection: commands sent and not yet answered."""

    def __init__(self) -> None:
        self.by_serial: dict[int, tuple[Deferred[Message], int]] = {}
        self.serial_less: dict[int, deque[int]] = {}

    def expect(self, serial: int, msg_id: int, timeout: float) -> Deferred[Message]:
        d: Deferred[Message] = Deferred()
        reply_id = DEDICATED_REPLIES.get(msg_id, 0x0001)
        self.by_serial[serial] = (d, reply_id)
        if reply_id in SERIAL_LESS:
            self.serial_less.setdefault(reply_id, deque()).append(serial)
        call = reactor.callLater(timeout, self._expire, serial, msg_id, timeout)  # type: ignore[attr-defined]

        def settled(result: Any) -> Any:
            if call.active():
                call.cancel()
            return result

        d.addBoth(settled)
        return d

    def _expire(self, serial: int, msg_id: int, timeout: float) -> None:
        entry = self.by_serial.pop(serial, None)
        if entry is not None:
            entry[0].errback(
                CommandError("timeout", f"no reply to 0x{msg_id:04X} #{serial} in {timeout:g} s")
            )

    def match(self, message: Message) -> bool:
        """Resolve the command this message answers; False if it answers none."""
        msg_id = message.header.msg_id
        if msg_id in SERIAL_LESS:
            queue = self.serial_less.get(msg_id)
            while queue:
                serial = queue.popleft()
                if serial in self.by_serial:
                    return self._resolve(serial, message)
            return False
        replied = getattr(message.body, "reply_serial", None)
        if replied is None or replied not in self.by_serial:
            return False
        serial = int(replied)
        if self.by_serial[serial][1] not in (msg_id, 0x0001) and msg_id != 0x0001:
            return False
        return self._resolve(serial, message)

    def _resolve(self, serial: int, message: Message) -> bool:
        d, _ = self.by_serial.pop(serial)
        d.callback(message)
        return True

    def fail_all(self, detail: str) -> None:
        pending, self.by_serial = self.by_serial, {}
        self.serial_less.clear()
        for d, _ in pending.values():
            d.errback(CommandError("disconnected", detail))


#: CommandError reason -> the gateway's failure reason.
_FAILURES = {"timeout": TIMEOUT, "disconnected": DISCONNECTED, "offline": OFFLINE}
_ALARM_BITS = {name: bit for bit, name in ALARM_BITS.items()}
_PARAM_IDS = {name: pid for pid, name in PARAM_NAMES.items()}


class TerminalEnd:
    """The JT/T 808 terminals of one ingest service, as the gateway's :class:`TerminalEnd`."""

    def __init__(self) -> None:
        self.connections: dict[int, JT808Protocol] = {}  # vehicle id -> its live connection
        self.on_session: Callable[[int, bool], None] | None = None

    # -- sessions (called by IngestService.bind / unbind) ----------------------------------

    def bound(self, conn: JT808Protocol) -> None:
        assert conn.vehicle is not None
        self.connections[conn.vehicle.id] = conn
        if self.on_session is not None:
            self.on_session(conn.vehicle.id, True)

    def unbound(self, conn: JT808Protocol) -> None:
        assert conn.vehicle is not None
        if self.connections.get(conn.vehicle.id) is conn:
            del self.connections[conn.vehicle.id]
            if self.on_session is not None:
                self.on_session(conn.vehicle.id, False)

    # -- the gateway's interface -----------------------------------------------------------

    def holds(self, vehicle_id: int) -> bool:
        return vehicle_id in self.connections

    async def execute(self, vehicle_id: int, command: Command, timeout: float) -> Reply:
        """Send the command's message and wait for the terminal's answer."""
        conn = self.connections.get(vehicle_id)
        if conn is None:
            raise CommandFailed(OFFLINE, f"vehicle {vehicle_id}: its terminal is not connected")
        try:
            body = to_body(command)
        except (ValueError, TypeError) as exc:
            raise CommandFailed(INVALID, f"{command.KIND}: {exc}") from None
        serial, d = conn.command(body, timeout)
        try:
            message: Message = await d.asFuture(asyncio.get_running_loop())
        except CommandError as exc:
            raise CommandFailed(_FAILURES.get(exc.reason, TIMEOUT), str(exc)) from None
        return to_reply(message, serial)


def to_body(command: Command) -> Body:
    """The JT/T 808 message that says a platform command."""
    if isinstance(command, Text):
        flag = (TEXT_TTS if command.tts else 0) | (TEXT_DISPLAY if command.display else 0)
        flag |= TEXT_URGENT if command.urgent else 0
        # text_type (2019 only: 1 notice, 2 service) is left out of older frames by the codec.
        return TextMessage(flag=flag, text_type=2 if command.service else 1, text=command.text)
    if isinstance(command, QueryPosition):
        return QueryLocation()
    if isinstance(command, Track):
        return TemporaryTracking(interval_s=command.interval_s, validity_s=command.duration_s)
    if isinstance(command, ConfirmAlarm):
        bit = _ALARM_BITS.get(command.alarm)
        if bit is None:
            raise ValueError(f"no JT/T 808 alarm named {command.alarm!r}")
        serial = command.report_serial or 0
        return AlarmConfirmation(alarm_serial=serial & 0xFFFF, alarm_type=1 << bit)
    if isinstance(command, SetParameters):
        return SetParametersBody(
            params=[Param(pid, command.values[k]) for pid, k in _param_ids(command.values)]
        )
    if isinstance(command, SetAreas | DeleteAreas):
        from ingest.areas import area_body

        return area_body(command)
    raise ValueError(f"no JT/T 808 message for {type(command).__name__}")


def _param_ids(values: dict[str, Any]) -> list[tuple[int, str]]:
    """(parameter id, key) for platform names or hex ids ("0x0029"), in id order."""
    out = []
    for key in values:
        pid = _PARAM_IDS.get(key)
        if pid is None and key.lower().startswith("0x"):
            pid = int(key, 16)
        if pid is None or pid not in PARAM_TYPES:
            raise ValueError(f"no JT/T 808 parameter {key!r}")
        out.append((pid, key))
    return sorted(out)


def known_parameter(key: str) -> bool:
    """Whether a parameter name (or hex id) can be pushed to a JT/T 808 terminal."""
    try:
        _param_ids({key: 0})
    except ValueError:
        return False
    return True


def to_reply(message: Message, serial: int) -> Reply:
    """The terminal's answer as a platform reply (a 0x0201 carries where the vehicle is)."""
    body = message.body
    now = datetime.now(UTC)
    if isinstance(body, LocationQueryReply):
        return Reply(ACCEPTED, now, serial, position=position_json(body.location))
    result = getattr(body, "result", RESULT_OK)
    if result in (RESULT_OK, RESULT_ALARM_CONFIRMED):
        verdict = ACCEPTED
    elif result == RESULT_UNSUPPORTED:
        verdict = UNSUPPORTED
    else:
        verdict = FAILED
    return Reply(verdict, now, serial)


def position_json(report: LocationReport) -> dict[str, Any]:
    """A location in platform terms (WGS-84 degrees, km/h, UTC), as JSON."""
    flags = report.status_flags
    return {
        "lon": report.longitude,
        "lat": report.latitude,
        "speed_kmh": report.speed_kmh,
        "heading": report.heading,
        "altitude_m": report.altitude_m,
        "fix_time": report.time.astimezone(UTC).isoformat() if report.time else None,
        "valid": bool(flags.get("positioned")),
        "ignition": bool(flags.get("acc_on")),
        "alarms": alarm_names(report.alarm),
    }
