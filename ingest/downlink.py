"""Platform → terminal commands with their replies matched by serial.

A command goes to the terminal's live connection and waits for its answer: the dedicated reply
where the standard has one (0x8104 → 0x0104, 0x8201 → 0x0201, ...), else the terminal's 0x0001
general response, matched on the command's serial. Commands to an offline terminal fail at once
with :class:`CommandError` ("offline"): they are not queued, because a stale command (a text, a
door lock) delivered hours later is worse than a clear failure the dispatcher can retry.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from ingest.directory import phone_key
from protocols.jt808 import Body, Message

if TYPE_CHECKING:
    from ingest.jt808_server import IngestService, JT808Protocol

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
        d.addBoth(lambda result: (call.active() and call.cancel(), result)[1])
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
        serial = getattr(message.body, "reply_serial", None)
        if serial is None or serial not in self.by_serial:
            return False
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


class Downlink:
    """Send commands to online terminals (by phone) and wait for their replies."""

    def __init__(self, service: IngestService, timeout: float = 30.0) -> None:
        self.service = service
        self.timeout = timeout

    def connection(self, phone: str) -> JT808Protocol:
        conn = self.service.sessions.get(phone_key(phone))
        if conn is None:
            raise CommandError("offline", f"terminal {phone} is not connected")
        return conn

    def send(self, phone: str, body: Body, timeout: float | None = None) -> Deferred[Message]:
        """The reply message (check its ``result`` for 0x0001), or a CommandError failure."""
        try:
            conn = self.connection(phone)
        except CommandError as exc:
            d: Deferred[Message] = Deferred()
            d.errback(exc)
            return d
        return conn.command(body, self.timeout if timeout is None else timeout)[1]
