"""The NMEA 0183 TCP server: simple trackers and police-car AVL units that stream sentences.

Wire protocol (one connection = one vehicle):

1. The first non-empty line identifies the vehicle, in one of two forms:

   * ``$PFWID,<id>*hh``: a proprietary sentence (talker ``P``, maker ``FWI``, type ``D``) with
     a valid NMEA checksum, for units that can emit a configurable sentence;
   * ``#ID <id>``: a plain line, for units that can only prepend a fixed text.

   ``<id>`` is the vehicle's terminal phone (digits; leading zeros do not matter, as with
   JT/T 808) or its plate (``京A12345``, case and spaces ignored; a plate registered in two
   colours is ambiguous and refused: use the phone). Anything else as the first line, an
   unknown id, or no identification within ``id_timeout`` seconds: the connection is closed,
   with a log line saying why. Lines sent while the id is being looked up wait for the answer.
2. Then NMEA sentences, one per line (``\\r\\n`` or ``\\n``): RMC, optionally GGA/GNS/GSA,
   any talker. Everything else valid (GSV, VTG, TXT, proprietary) is ignored. The sentences of
   one epoch become one position (see :class:`ingest.nmea.NmeaTrack`), which goes to the writer.
   A repeated identification line with the same id is ignored; a different id closes the
   connection (reconnect to change vehicles).

Nothing is ever written back: NMEA has no acknowledgements, so a unit cannot retransmit what
was lost. Fixes the writer could not make durable are counted and logged as lost.

Bad lines (wrong or missing checksum, not a sentence, unreadable field, longer than
``max_line`` bytes) are counted by kind, logged with the raw line (the first
``log_bad_lines`` of a connection, then one in 100), and the session goes on. Idle
connections are closed after ``idle_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from geo.plates import normalise_plate
from geo.position import Position
from ingest.directory import phone_key
from ingest.limits import AcceptGate
from ingest.metrics import Metrics
from ingest.nmea import MAX_SENTENCE, NmeaError, NmeaTrack, checksum
from ingest.values import DEFAULT_LIMITS, ValueLimits, flag_values

if TYPE_CHECKING:
    import asyncpg

log = Logger()

#: The identification sentence's address field (``$PFWID,<id>*hh``).
ID_SENTENCE = "PFWID"
#: The plain identification line's prefix (``#ID <id>``).
ID_PREFIX = "#ID"
#: Longest identifier accepted (a 2019 phone has 20 digits, a plate a dozen characters).
MAX_ID = 32

Lookup = Callable[[str], Awaitable[int | None]]
SubmitPositions = Callable[[list[Position]], "asyncio.Future[str]"]


class IdentificationError(ValueError):
    """An identification line that is malformed (the message says how)."""


def parse_identification(line: str) -> str | None:
    """The identifier an identification line names; None if the line is not one at all.

    Raises :class:`IdentificationError` for an identification line that is malformed (wrong
    checksum, no id, an id too long or with control characters).
    """
    text = line.strip()
    if text.upper().startswith(ID_PREFIX) and (len(text) == 3 or text[3] in " \t"):
        ident = text[3:].strip()
    elif text.upper().startswith("$" + ID_SENTENCE + ","):
        body, star, sent = text[1:].rpartition("*")
        if not star or not re.fullmatch(r"[0-9A-Fa-f]{2}", sent):
            raise IdentificationError(f"${ID_SENTENCE} needs a *hh checksum")
        if int(sent, 16) != checksum(body):
            raise IdentificationError(
                f"${ID_SENTENCE} checksum: sent *{sent.upper()}, computed *{checksum(body):02X}"
            )
        ident = body[len(ID_SENTENCE) + 1 :].strip()
    else:
        return None
    if not ident:
        raise IdentificationError("no vehicle id given")
    if len(ident) > MAX_ID or not ident.isprintable() or "," in ident:
        raise IdentificationError(f"vehicle id {ident[:40]!r} is not a phone or plate")
    return ident


async def find_vehicle_id(pool: asyncpg.Pool | asyncpg.Connection, identifier: str) -> int | None:
    """The vehicle an NMEA unit names: by terminal phone (digits), else by plate.

    Phones compare without leading zeros (as the JT/T 808 directory stores them); plates
    compare in their canonical form (``geo.plates``, as ``vehicles.plate`` holds them). A plate
    that exists in several colours matches nothing (logged), since guessing could file one
    vehicle's track under another.
    """
    ident = identifier.strip()
    digits = re.sub(r"[\s-]", "", ident)
    if digits.isdigit() and digits.isascii():
        found = await pool.fetchval("SELECT id FROM vehicles WHERE phone = $1", phone_key(digits))
        if found is not None:
            return int(found)
    plate = normalise_plate(ident)
    rows = await pool.fetch("SELECT id FROM vehicles WHERE plate = $1 ORDER BY id", plate)
    if len(rows) > 1:
        ids = [r["id"] for r in rows]
        log.warn("NMEA id {ident!r} is ambiguous: plate of vehicles {ids}", ident=ident, ids=ids)
        return None
    return int(rows[0]["id"]) if rows else None


class NmeaService:
    """What all NMEA connections share: the lookup, the writer, live sessions, metrics."""

    def __init__(
        self,
        lookup: Lookup,
        submit: SubmitPositions,
        metrics: Metrics | None = None,
        *,
        max_line: int = MAX_SENTENCE,
        id_timeout: float = 30.0,
        idle_timeout: float = 300.0,
        hold: float = 2.0,
        log_bad_lines: int = 20,
        limits: ValueLimits = DEFAULT_LIMITS,
    ) -> None:
        self.lookup = lookup
        self.limits = limits
        self.submit = submit
        self.metrics = metrics or Metrics()
        self.max_line = max_line
        self.id_timeout = id_timeout
        self.idle_timeout = idle_timeout
        self.hold = hold  # longest an incomplete epoch waits for more of its sentences
        self.log_bad_lines = log_bad_lines
        self.connections: set[NmeaProtocol] = set()
        self.sessions: dict[int, NmeaProtocol] = {}  # vehicle id -> identified connection
        self.paused = False
        self.gate: AcceptGate | None = None  # shared with the JT808 service (descriptors)
        self.metrics.gauge(
            "fleetwatch_nmea_connected", "open NMEA connections", lambda: len(self.connections)
        )
        self.metrics.gauge(
            "fleetwatch_nmea_identified", "identified NMEA connections", lambda: len(self.sessions)
        )

    def set_pressure(self, on: bool) -> None:
        """Writer backpressure: stop reading from every NMEA socket until it has caught up."""
        self.paused = on
        for conn in self.connections:
            conn.update_flow()

    def bind(self, conn: NmeaProtocol) -> None:
        """A connection identified its vehicle: a newer connection replaces an older one."""
        assert conn.vehicle_id is not None
        old = self.sessions.get(conn.vehicle_id)
        self.sessions[conn.vehicle_id] = conn
        if old is not None and old is not conn:
            old.close("replaced by a new connection")

    def unbind(self, conn: NmeaProtocol) -> None:
        self.connections.discard(conn)
        if conn.vehicle_id is not None and self.sessions.get(conn.vehicle_id) is conn:
            del self.sessions[conn.vehicle_id]


class NmeaFactory(protocol.ServerFactory):
    def __init__(self, service: NmeaService) -> None:
        self.service = service

    def buildProtocol(self, addr: IAddress | None) -> NmeaProtocol | None:
        gate = self.service.gate
        if gate is not None and not gate.admit():
            return None  # past the descriptor budget (see ingest.limits.AcceptGate)
        return NmeaProtocol(self.service)


class NmeaProtocol(LineReceiver, TimeoutMixin):
    """One NMEA unit's connection."""

    transport: Any  # set by the reactor before connectionMade
    delimiter = b"\n"

    def __init__(self, service: NmeaService) -> None:
        self.service = service
        self.metrics = service.metrics
        self.MAX_LENGTH = service.max_line
        self.peer = ""
        self.identifier: str | None = None
        self.vehicle_id: int | None = None
        self.track = NmeaTrack()
        self.bad_lines = 0
        self.lines = 0
        self._looking_up = False
        self._skipping = False  # discarding the rest of an overlong line
        self._closed = False
        self._hold_call: IDelayedCall | None = None

    # -- connection ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self.service.connections.add(self)
        self.metrics.inc("fleetwatch_nmea_connections_total")
        if self.service.gate is not None:
            self.service.gate.opened()
        self.setTimeout(self.service.id_timeout)
        self.update_flow()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._closed = True
        self.setTimeout(None)
        if self.service.gate is not None:
            self.service.gate.closed()
        if self._hold_call is not None and self._hold_call.active():
            self._hold_call.cancel()
        if self.vehicle_id is not None:
            self._submit(self.track.flush())  # the last epoch, if it was still waiting
        self.service.unbind(self)
        if self.bad_lines:
            log.info(
                "NMEA {peer} ({ident}) closed after {lines} lines, {bad} bad",
                peer=self.peer,
                ident=self.identifier,
                lines=self.lines,
                bad=self.bad_lines,
            )

    def close(self, why: str, reason: str | None = None) -> None:
        """Hang up; ``reason`` (default: ``why``) labels the disconnect metric, so it must be
        one of a few fixed words, never data from the line."""
        if not self._closed:
            log.info(
                "closing NMEA {peer} ({ident}): {why}",
                peer=self.peer,
                ident=self.identifier,
                why=why,
            )
            self.metrics.inc("fleetwatch_nmea_disconnects_total", reason=reason or why)
            self._closed = True
            self.transport.loseConnection()

    def refuse(self, reason: str, why: str) -> None:
        """Close an unidentified connection, saying why in the log."""
        self.metrics.inc("fleetwatch_nmea_refused_total", reason=reason)
        log.warn("refused NMEA connection from {peer}: {why}", peer=self.peer, why=why)
        self.close(f"refused ({reason})", "refused")

    def timeoutConnection(self) -> None:
        if self.vehicle_id is None:
            self.refuse("no_id", f"no identification within {self.service.id_timeout:g} s")
        else:
            self.close("idle timeout")

    def update_flow(self) -> None:
        """Read while neither a lookup nor the writer's backpressure asks us to wait."""
        hold = self._looking_up or self.service.paused
        if hold and not self.paused:
            self.pauseProducing()
        elif not hold and self.paused and not self._closed:
            self.resumeProducing()  # also delivers the lines buffered meanwhile

    # -- input -----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if data:
            self.resetTimeout()
        if self._skipping:
            cut = data.find(self.delimiter)
            if cut < 0:
                return
            self._skipping = False
            data = data[cut + 1 :]
        super().dataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        """An overlong line is a bad line, not a reason to hang up: drop it and go on."""
        head, sep, rest = line.partition(self.delimiter)
        self.lines += 1
        self.metrics.inc("fleetwatch_nmea_lines_total")
        self._bad("too_long", f"longer than {self.MAX_LENGTH} bytes", head[:80].decode("latin-1"))
        if not sep:
            self._skipping = True  # its end has not arrived yet
            return
        # LineReceiver stops at an overlong line: hand it the rest again, from the reactor.
        self._buffer = rest
        self.callLater(0, lambda: self.dataReceived(b""))

    def lineReceived(self, line: bytes) -> None:
        if self._closed:
            return
        text = line.rstrip(b"\r").decode("utf-8", errors="replace")
        if not text.strip():
            return
        self.lines += 1
        self.metrics.inc("fleetwatch_nmea_lines_total")
        if self.vehicle_id is None:
            self._identify(text)
        else:
            self._sentence(text)

    def _identify(self, text: str) -> None:
        try:
            ident = parse_identification(text)
        except IdentificationError as exc:
            self.refuse("bad_id", f"bad identification line {text[:100]!r}: {exc}")
            return
        if ident is None:
            self.refuse(
                "no_id",
                f"the first line must identify the vehicle (${ID_SENTENCE},<id>*hh or "
                f"{ID_PREFIX} <id>), got {text[:100]!r}",
            )
            return
        self.identifier = ident
        self._looking_up = True
        self.update_flow()
        d: Deferred[int | None] = Deferred.fromFuture(
            asyncio.ensure_future(self.service.lookup(ident))
        )
        d.addCallbacks(self._identified, self._lookup_failed)

    def _identified(self, vehicle_id: int | None) -> None:
        self._looking_up = False
        if self._closed:
            return
        if vehicle_id is None:
            self.refuse("unknown", f"unknown vehicle id {self.identifier!r}")
            return
        self.vehicle_id = vehicle_id
        self.track = NmeaTrack(vehicle_id)
        self.service.bind(self)
        self.setTimeout(self.service.idle_timeout)
        log.info(
            "NMEA {peer} is vehicle {vehicle} ({ident})",
            peer=self.peer,
            vehicle=vehicle_id,
            ident=self.identifier,
        )
        self.update_flow()

    def _lookup_failed(self, failure: Failure) -> None:
        self._looking_up = False
        log.failure("looking up NMEA id {ident!r}", failure, ident=self.identifier)
        self.metrics.inc("fleetwatch_nmea_refused_total", reason="lookup_error")
        self.close("lookup failed")

    def _sentence(self, text: str) -> None:
        if text.startswith(("#", "$" + ID_SENTENCE)):
            try:
                ident = parse_identification(text)
            except IdentificationError:
                ident = None
            if ident is not None:
                if ident != self.identifier:
                    why = f"identified as {self.identifier!r}, then as {ident!r}"
                    self.close(why, "changed id")
                return
        try:
            positions = self.track.feed(text, datetime.now(UTC))
        except NmeaError as exc:
            self._bad(exc.kind, exc.reason, text)
            return
        self._submit(positions)
        self._schedule_hold()

    def _bad(self, kind: str, reason: str, raw: str) -> None:
        self.bad_lines += 1
        self.metrics.inc("fleetwatch_nmea_bad_lines_total", kind=kind)
        limit = self.service.log_bad_lines
        if self.bad_lines <= limit or self.bad_lines % 100 == 0:
            more = " (logging 1 in 100 from now on)" if self.bad_lines == limit else ""
            log.warn(
                "bad NMEA line {n} from {peer} ({ident}): {kind}: {reason}: {raw!r}{more}",
                n=self.lines,
                peer=self.peer,
                ident=self.identifier,
                kind=kind,
                reason=reason,
                raw=raw[:200],
                more=more,
            )

    # -- output to the writer --------------------------------------------------------------

    def _schedule_hold(self) -> None:
        """An epoch left waiting is emitted after ``hold`` seconds even if nothing follows."""
        since = self.track.pending_since
        if since is None or (self._hold_call is not None and self._hold_call.active()):
            return
        wait = self.service.hold - (datetime.now(UTC) - since).total_seconds()
        self._hold_call = self.callLater(max(wait, 0.0), self._hold_over)

    def _hold_over(self) -> None:
        self._hold_call = None
        since = self.track.pending_since
        if since is None or self._closed:
            return
        if (datetime.now(UTC) - since).total_seconds() >= self.service.hold - 1e-3:
            self._submit(self.track.flush())
        else:
            self._schedule_hold()  # a younger epoch is waiting now

    def _submit(self, positions: list[Position]) -> None:
        if not positions:
            return
        flag_values(positions, self.service.limits)
        try:
            future = self.service.submit(positions)
        except Exception:  # a broken writer must not take the connection down with it
            log.failure("submitting NMEA positions of vehicle {vehicle}", vehicle=self.vehicle_id)
            self._lost(len(positions), "submit raised")
            return
        future.add_done_callback(lambda done: self._stored(done, len(positions)))

    def _stored(self, done: asyncio.Future[Any], count: int) -> None:
        if done.cancelled() or done.exception() is not None:
            why = "cancelled" if done.cancelled() else repr(done.exception())
            self._lost(count, why)
            return
        self.metrics.inc("fleetwatch_nmea_positions_total", count, outcome=str(done.result()))

    def _lost(self, count: int, why: str) -> None:
        # No ack exists in NMEA, so the unit will not resend: the loss is final, say so.
        self.metrics.inc("fleetwatch_nmea_positions_lost_total", count)
        log.error(
            "{count} NMEA position(s) of vehicle {vehicle} not stored: {why}",
            count=count,
            vehicle=self.vehicle_id,
            why=why,
        )
