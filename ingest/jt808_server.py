"""The JT/T 808 TCP server: one :class:`JT808Protocol` per terminal connection.

A connection's frames are handled strictly in order. Registration and authentication wait for
the database, so frames arriving meanwhile are held back until the answer is known. Location
reports are acknowledged (0x8001) only once the writer says their rows are durable; replies go
out in the header layout (2013/2019) the terminal used.

What a client may hold is bounded (see docs/decisions.md, "Ingest that attacks cannot break"):
before authentication only registration, authentication, heartbeat and logout are read, never a
subpackage; a connection must authenticate within ``pre_auth_timeout``, complete each frame
within ``frame_timeout`` and send a complete frame every ``idle_timeout``; connections per
source address, registrations (``open`` policy), reassembly and bad-input logging are capped.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, TypeVar

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.python.failure import Failure

from geo.position import Position
from ingest.directory import POLICY_OPEN, Directory, Vehicle, phone_key
from ingest.downlink import PendingCommands, TerminalEnd
from ingest.limits import AcceptGate, AddressCount, RegistrationLimit, TokenBucket
from ingest.media import MediaStore
from ingest.metrics import Metrics
from ingest.nmea import gnss_detail
from ingest.positions import positions_of
from ingest.values import DEFAULT_LIMITS, ValueLimits, flag_values
from protocols.jt808 import (
    REGISTRY,
    Authenticate,
    Body,
    DriverIdentity,
    FrameSplitter,
    JT808Error,
    MediaData,
    MediaUploadResponse,
    Message,
    Reassembler,
    ReassemblyBudget,
    Register,
    RegisterResponse,
    ResendSubpackages,
    TerminalProfile,
    Transparent,
    decode_frame,
    encode_frame,
    encode_general_response,
    resend_batches,
)
from protocols.jt808.header import Header
from protocols.jt808.platform import (
    REGISTER_TERMINAL_TAKEN,
    RESULT_FAILED,
    RESULT_MESSAGE_ERROR,
    RESULT_OK,
    RESULT_UNSUPPORTED,
)

log = Logger()
T = TypeVar("T")

LOCATION_IDS = frozenset((0x0200, 0x0201, 0x0500, 0x0704))
#: Accepted before authentication (a terminal may also log out or beat its heart).
PRE_AUTH_IDS = frozenset((0x0100, 0x0102, 0x0002, 0x0003))
#: Terminal messages the platform does not answer with 0x8001.
NO_ACK_IDS = frozenset((0x0001, 0x0100, 0x0801))
#: Bad input logged in full (with its hex) per connection; after that it is only counted, and
#: the count is logged when the connection closes.
BAD_INPUT_LOGGED = 5
#: Frames held while a registration or authentication waits for the database; past this the
#: connection is not read until the answer is in.
MAX_BACKLOG = 64

#: What 0x0900 GNSS detail adds to positions, and for how long after it arrived.
GNSS_QUALITY = ("fix_quality", "satellites", "hdop", "pdop", "vdop", "fix_type")
GNSS_FRESH_S = 60.0

#: The writer's ``write(positions, done)``: ``done`` gets "db"/"spool", or the exception.
WritePositions = Callable[[list[Position], Callable[[str | BaseException], None]], None]


def aio(coro: Coroutine[Any, Any, T]) -> Deferred[T]:
    """asyncio coroutine → Deferred (the one bridge between Twisted and asyncpg)."""
    return Deferred.fromFuture(asyncio.ensure_future(coro))


class IngestObserver(Protocol):
    """What the supervision rules are told besides positions (those come from the writer's
    durable feed), in each connection's order: authentications, driver cards (0x0702),
    logouts (0x0003), and the end of a terminal's session here (its connection closed, not
    replaced by a newer one here). Calls must be cheap and must not block: they run on the
    ingest path."""

    def authenticated(self, vehicle: Vehicle) -> None: ...

    def released(self, vehicle: Vehicle) -> None: ...

    def driver(self, vehicle: Vehicle, driver: str | None, at: datetime) -> None: ...

    def logout(self, vehicle: Vehicle) -> None: ...


class IngestService:
    """What all connections share: the directory, the writer, live sessions, metrics."""

    def __init__(
        self,
        directory: Directory,
        write: WritePositions,
        metrics: Metrics | None = None,
        *,
        idle_timeout: float = 180.0,
        pre_auth_timeout: float = 30.0,
        frame_timeout: float = 20.0,
        max_auth_failures: int = 3,
        reassembly_timeout: float = 10.0,
        reassembly_bytes: int = 8 << 20,
        reassembly_total_bytes: int = 256 << 20,
        max_per_address: int = 256,
        registration_rate: float = 20.0,
        gate: AcceptGate | None = None,
        media: MediaStore | None = None,
        observer: IngestObserver | None = None,
        limits: ValueLimits = DEFAULT_LIMITS,
    ) -> None:
        self.directory = directory
        self.limits = limits
        self.media = media
        self.observer = observer
        self.metrics = m = metrics or Metrics()
        self.frame_keys: dict[int, Any] = {}
        self.k_positions = {
            o: m.key("fleetwatch_positions_total", outcome=o) for o in ("db", "spool")
        }
        #: one per send() of queued acks (a connection's acks of one flush share one)
        self.k_queued_sends = m.key("fleetwatch_queued_sends_total")
        self.ack_seconds = m.histogram(
            "fleetwatch_ack_seconds",
            "location report received → acknowledged (rows durable), seconds",
        )
        self.write = write
        self.idle_timeout = idle_timeout
        self.pre_auth_timeout = pre_auth_timeout
        self.frame_timeout = frame_timeout
        self.max_auth_failures = max_auth_failures
        self.reassembly_timeout = reassembly_timeout
        self.reassembly_bytes = reassembly_bytes
        self.reassembly_budget = ReassemblyBudget(reassembly_total_bytes)
        self.addresses = AddressCount(max_per_address)
        self.registrations = (
            RegistrationLimit(max(1.0, registration_rate / 10), registration_rate)
            if registration_rate > 0 and directory.policy == POLICY_OPEN
            else None
        )
        self.gate = gate
        self.refusal_log = TokenBucket(1.0, 5.0)  # refused connections: a few log lines a second
        self.connections: set[JT808Protocol] = set()
        self.sessions: dict[str, JT808Protocol] = {}  # phone (normalised) -> authenticated
        #: The command gateway's end in this process (alerts.gateway): commands to terminals.
        self.terminals = TerminalEnd()
        self.paused = False
        self._to_flush: list[JT808Protocol] = []  # connections with acks queued this turn
        self.metrics.gauge(
            "fleetwatch_terminals_connected",
            "open terminal connections",
            lambda: len(self.connections),
        )
        self.metrics.gauge(
            "fleetwatch_terminals_authenticated",
            "authenticated terminals",
            lambda: len(self.sessions),
        )

    def set_pressure(self, on: bool) -> None:
        """Writer backpressure: stop reading from every socket until it has caught up."""
        self.paused = on
        self.metrics.inc("fleetwatch_backpressure_events_total", state="on" if on else "off")
        for conn in self.connections:
            conn.set_paused(on)

    def flush_soon(self, conn: JT808Protocol) -> None:
        """``conn`` has queued output: send it at the end of this loop turn, with whatever
        else the turn queues for it (see :meth:`JT808Protocol.queue`)."""
        if not self._to_flush:
            asyncio.get_running_loop().call_soon(self._flush_queued)
        self._to_flush.append(conn)

    def _flush_queued(self) -> None:
        conns, self._to_flush = self._to_flush, []
        self.metrics.add(self.k_queued_sends, len(conns))
        for conn in conns:
            conn.flush_queued()

    def bind(self, conn: JT808Protocol) -> None:
        """A terminal authenticated: a second connection of the same terminal replaces the first."""
        assert conn.vehicle is not None
        phone = conn.vehicle.phone
        old = self.sessions.get(phone)
        self.sessions[phone] = conn
        if old is not None and old is not conn:
            log.info("terminal {phone} reconnected; closing its previous connection", phone=phone)
            old.close("replaced by a new connection")
        self.terminals.bound(conn)

    def unbind(self, conn: JT808Protocol) -> None:
        self.connections.discard(conn)
        if conn.vehicle is not None and self.sessions.get(conn.vehicle.phone) is conn:
            del self.sessions[conn.vehicle.phone]
            if self.observer is not None:
                conn._observe(self.observer.released, conn.vehicle)
        if conn.vehicle is not None:
            self.terminals.unbound(conn)

    def sweep(self, now: float) -> None:
        """Close expired connections and re-request missing subpackages (run every few
        seconds). One connection's failure is logged and its reassembly dropped: it must not
        stop the sweep for the others."""
        for conn in list(self.connections):
            try:
                why = conn.expired(now)
                if why:
                    conn.close(why)
                else:
                    conn.request_missing_parts(now)
            except Exception:
                log.failure("sweeping {peer} ({phone})", peer=conn.peer, phone=conn.phone)
                conn.reassembler.clear()

    def admit(self, host: str) -> bool:
        """A new connection from ``host``: within the descriptor budget and the per-address
        cap?"""
        if self.gate is not None and not self.gate.admit():
            why = "no descriptor left"
            self.metrics.inc("fleetwatch_connections_refused_total", reason="descriptors")
        elif self.addresses.admit(host):
            return True
        else:
            why = f"{self.addresses.cap} already open from that address"
            self.metrics.inc("fleetwatch_connections_refused_total", reason="per_address")
        if self.refusal_log.take(time.monotonic()):
            log.warn("refused a connection from {host}: {why}", host=host, why=why)
        return False


class JT808Factory(protocol.ServerFactory):
    def __init__(self, service: IngestService) -> None:
        self.service = service

    def buildProtocol(self, addr: IAddress | None) -> JT808Protocol | None:
        host = str(getattr(addr, "host", ""))
        if not self.service.admit(host):
            return None  # Twisted closes the socket
        conn = JT808Protocol(self.service)
        conn.host = host
        return conn


class JT808Protocol(protocol.Protocol):
    """One terminal connection."""

    #: A TCP transport, set by the reactor before connectionMade (the ack fast path in
    #: :meth:`write` reads its buffers).
    transport: Any

    def __init__(self, service: IngestService) -> None:
        self.service = service
        self.metrics = service.metrics
        self.splitter = FrameSplitter()
        self.reassembler = Reassembler(
            timeout=service.reassembly_timeout,
            max_bytes=service.reassembly_bytes,
            budget=service.reassembly_budget,
        )
        self.profile = TerminalProfile(strict=True)
        self.vehicle: Vehicle | None = None
        self.phone = ""
        self.version = 2013
        self.protocol_version = 1
        self.auth_failures = 0
        self.connected_at = self.last_seen = time.monotonic()  # last_seen: last whole frame
        self.partial_since = 0.0  # when the frame now being received began (0: none)
        self.bad_input = 0
        self.host = ""  # source address, counted against the per-address cap
        self.peer = ""
        self._serial = 0
        self._backlog: deque[bytes] | None = None  # made when first needed (~700 B each)
        self._waiting = False  # a registration/authentication answer is pending
        self._held = False  # not read while the backlog is full
        self._closed = False
        self._queued: list[bytes] | None = None  # acks waiting for the end of the loop turn
        self.commands = PendingCommands()
        self.gnss: dict[str, Any] = {}  # quality of the latest 0x0900 GNSS detail data
        self.gnss_at = 0.0

    # -- connection ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self.service.connections.add(self)
        self.metrics.inc("fleetwatch_connections_total")
        log.info("connection from {peer}", peer=self.peer)
        if self.service.gate is not None:
            self.service.gate.opened()
        if self.service.paused:
            self.set_paused(True)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._closed = True
        service = self.service
        service.unbind(self)
        if self.host:
            service.addresses.release(self.host)
            self.host = ""
        if service.gate is not None:
            service.gate.closed()
        self.reassembler.clear()
        self.commands.fail_all("the terminal disconnected")
        if self.bad_input > BAD_INPUT_LOGGED:
            log.warn("{peer} ({phone}) sent {n} bad frames or chunks; {quiet} were not logged",
                     peer=self.peer, phone=self.phone, n=self.bad_input,
                     quiet=self.bad_input - BAD_INPUT_LOGGED)  # fmt: skip

    def expired(self, now: float) -> str:
        """Why this connection should be closed now ("" if it should not)."""
        service = self.service
        if self.vehicle is None and now - self.connected_at > service.pre_auth_timeout:
            return f"not authenticated within {service.pre_auth_timeout:g} s"
        if now - self.last_seen > service.idle_timeout:
            return "idle timeout"
        if (  # not while we ourselves stopped reading (backpressure, a full backlog)
            self.partial_since
            and not service.paused
            and not self._held
            and now - self.partial_since > service.frame_timeout
        ):
            return f"slow sender (a frame took over {service.frame_timeout:g} s)"
        return ""

    def bad(self, text: str, **fields: Any) -> None:
        """Log bad input: the first few in full, then only count them (a flood of garbage
        must not become a flood of log)."""
        self.bad_input += 1
        if self.bad_input <= BAD_INPUT_LOGGED:
            log.warn(text, peer=self.peer, phone=self.phone, **fields)
            if self.bad_input == BAD_INPUT_LOGGED:
                log.warn("{peer} ({phone}): further bad input is counted, not logged",
                         peer=self.peer, phone=self.phone)  # fmt: skip

    def close(self, why: str) -> None:
        if not self._closed:
            log.info("closing {peer} ({phone}): {why}", peer=self.peer, phone=self.phone, why=why)
            self.metrics.inc("fleetwatch_disconnects_total", reason=why.split(" (")[0])
            self._closed = True
            self.transport.loseConnection()

    def set_paused(self, on: bool) -> None:
        if on:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    # -- input -----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        splitter = self.splitter
        frames = splitter.feed(data)
        # A slow sender is timed per frame, not per byte. The splitter keeps a frame's closing
        # flag (it may open the next one): one byte held after a frame is no partial frame, or
        # every terminal quiet for frame_timeout between two frames was closed as "slow".
        partial = splitter.buffered > 1
        if frames or not partial:
            now = time.monotonic()
            if frames:
                self.last_seen = now
            self.partial_since = now if partial else 0.0
        elif not self.partial_since:
            self.partial_since = time.monotonic()
        if splitter.dropped:
            for dropped in splitter.take_dropped():
                self.metrics.inc("fleetwatch_decode_errors_total", kind=dropped.reason)
                self.bad(
                    "dropped {size} bytes ({reason}) from {peer}: {hex}",
                    size=dropped.size,
                    reason=dropped.reason,
                    hex=dropped.head.hex(),
                )
        if self._waiting:
            self._hold(frames)
            return
        for i, frame in enumerate(frames):
            self.handle_frame(frame)
            if self._waiting:
                self._hold(frames[i + 1 :])
                return

    def _hold(self, frames: list[bytes]) -> None:
        """Keep frames until the database has answered; stop reading past MAX_BACKLOG."""
        if self._backlog is None:
            self._backlog = deque()
        self._backlog.extend(frames)
        if len(self._backlog) > MAX_BACKLOG and not self._held:
            self._held = True
            self.transport.pauseProducing()

    def _resume_input(self) -> None:
        self._waiting = False
        backlog = self._backlog
        while backlog and not self._waiting and not self._closed:
            self.handle_frame(backlog.popleft())
        if self._held and not self._waiting and not self._closed:
            self._held = False
            if not self.service.paused:
                self.transport.resumeProducing()

    def handle_frame(self, frame: bytes) -> None:
        try:
            message = decode_frame(frame, profile=self.profile)
        except JT808Error as exc:
            self.metrics.inc("fleetwatch_decode_errors_total", kind=exc.kind)
            self.bad("bad frame from {peer} ({phone}): {error}; hex {hex}",
                     error=str(exc), hex=frame[:256].hex())  # fmt: skip
            if exc.header is not None and exc.header.msg_id not in NO_ACK_IDS:
                self._adopt_layout(exc.header)
                self.reply(exc.header, RESULT_MESSAGE_ERROR)
            return
        header = message.header
        key = self.service.frame_keys.get(header.msg_id)
        if key is None:  # ids we do not know share one label: a flood cannot make 65,536
            label = f"0x{header.msg_id:04X}" if header.msg_id in REGISTRY else "other"
            key = self.service.frame_keys[header.msg_id] = self.metrics.key(
                "fleetwatch_frames_total", msg_id=label
            )
        self.metrics.add(key)
        if message.problems:
            log.debug(
                "frame from {phone} with problems {problems}: {hex}",
                phone=self.phone,
                problems=message.problems,
                hex=frame.hex(),
            )
        self._adopt_layout(header)
        if self.vehicle is None and (header.pkg_total is not None or header.msg_id not in
                                     PRE_AUTH_IDS):  # fmt: skip
            # Nothing is held or acknowledged for a terminal we do not know yet.
            self.metrics.inc("fleetwatch_unauthenticated_frames_total")
            if header.msg_id not in NO_ACK_IDS:
                self.reply(header, RESULT_FAILED)
            return
        if header.pkg_total is not None:
            try:
                whole = self.reassembler.add(message, time.monotonic())
            except JT808Error as exc:
                self.metrics.inc("fleetwatch_decode_errors_total", kind=exc.kind)
                self.bad("subpackage from {peer} ({phone}) refused: {error}", error=str(exc))
                self.reply(header, RESULT_MESSAGE_ERROR)
                return
            if header.msg_id not in LOCATION_IDS:
                self.reply(header, RESULT_OK)  # parts of positions wait until they are durable
            if whole is None:
                return
            message = whole
        self.dispatch(message)

    def _adopt_layout(self, header: Header) -> None:
        self.version = header.version
        if header.protocol_version is not None:
            self.protocol_version = header.protocol_version
        if not self.phone or self.vehicle is None:  # answer each stranger as it names itself
            self.phone = header.phone

    # -- messages --------------------------------------------------------------------------

    def dispatch(self, message: Message) -> None:
        msg_id = message.header.msg_id
        if self.commands.by_serial and self.commands.match(message):
            self.metrics.inc("fleetwatch_command_replies_total")
        handler = self.HANDLERS.get(msg_id)
        if handler is not None:
            handler(self, message)
        elif msg_id in LOCATION_IDS:
            self.on_location(message)
        elif msg_id not in NO_ACK_IDS and not message.part_serials:  # parts were acked
            known = type(message.body).__name__ != "RawBody"
            self.reply(message.header, RESULT_OK if known else RESULT_UNSUPPORTED)

    def on_register(self, message: Message) -> None:
        """0x0100 → 0x8100. Refused without asking the database: a phone whose terminal is
        online and authenticated here (a registration never revokes a live session), and, under
        the ``open`` policy, registrations past the rate limit (not answered: the terminal
        retries after its own timeout)."""
        body = message.body
        assert isinstance(body, Register)
        service = self.service
        live = service.sessions.get(phone_key(message.phone))
        if live is not None and live is not self:
            self._answer_register(message, REGISTER_TERMINAL_TAKEN, "")
            return
        limit = service.registrations
        if limit is not None and not limit.allow(self.host, time.monotonic()):
            self.metrics.inc("fleetwatch_registrations_total", result="rate_limited")
            self.bad("registration from {peer} ({phone}) not answered: rate limit")
            return
        self._waiting = True
        d = aio(service.directory.register(message.phone, body, message.version))

        def answer(result: tuple[int, str]) -> None:
            self._answer_register(message, *result)

        d.addCallbacks(answer, self._internal_error, errbackArgs=(message,))
        d.addBoth(lambda _: self._resume_input())

    def _answer_register(self, message: Message, result: int, auth_code: str) -> None:
        self.metrics.inc("fleetwatch_registrations_total", result=str(result))
        if result:
            log.warn("registration of {phone} from {peer} refused (0x8100 result {result})",
                     phone=message.phone, peer=self.peer, result=result)  # fmt: skip
        else:
            log.info("terminal {phone} registered from {peer} (plate {plate})", phone=message.phone,
                     peer=self.peer, plate=getattr(message.body, "plate", None))  # fmt: skip
        self.send(RegisterResponse(reply_serial=message.serial, result=result, auth_code=auth_code))

    def on_authenticate(self, message: Message) -> None:
        body = message.body
        assert isinstance(body, Authenticate)
        self._waiting = True
        d = aio(self.service.directory.authenticate(message.phone, body.auth_code))

        def answer(vehicle: Vehicle | None) -> None:
            if vehicle is None:
                self.auth_failures += 1
                self.metrics.inc("fleetwatch_auth_failures_total")
                log.warn(
                    "authentication failed for {phone} from {peer}",
                    phone=message.phone,
                    peer=self.peer,
                )
                self.reply(message.header, RESULT_FAILED)
                if self.auth_failures >= self.service.max_auth_failures:
                    self.close("too many failed authentications")
                return
            self.vehicle = vehicle
            log.info("terminal {phone} authenticated from {peer}: vehicle {vehicle_id}",
                     phone=message.phone, peer=self.peer, vehicle_id=vehicle.id)  # fmt: skip
            self.phone = vehicle.phone
            self.profile = vehicle.profile
            self.service.bind(self)
            self.reply(message.header, RESULT_OK)
            if self.service.observer is not None:
                self._observe(self.service.observer.authenticated, vehicle)

        d.addCallbacks(answer, self._internal_error, errbackArgs=(message,))
        d.addBoth(lambda _: self._resume_input())

    def on_logout(self, message: Message) -> None:
        self.reply(message.header, RESULT_OK)
        if self.vehicle is not None and self.service.observer is not None:
            self._observe(self.service.observer.logout, self.vehicle)
        self.close("logout")

    def on_driver_identity(self, message: Message) -> None:
        """0x0702 (the driver's IC card in or out, or the answer to 0x8702): acked, and told
        to the rules, which count fatigue per driver: a card in (status 1, or the 2011 layout)
        names the driver; a card out (status 2) or an unreadable card leaves none."""
        self.reply(message.header, RESULT_OK)
        body = message.body
        if self.service.observer is not None and isinstance(body, DriverIdentity):
            assert self.vehicle is not None
            name = None
            if body.status in (1, None) and not body.read_result:
                name = (body.cert_code or "").strip() or (body.driver_name or "").strip()
            at = body.time.astimezone(UTC) if body.time is not None else datetime.now(UTC)
            self._observe(self.service.observer.driver, self.vehicle, name or None, at)

    def _observe(self, call: Callable[..., None], *args: Any) -> None:
        """A failing observer must never stop acks or the session: log it and go on."""
        try:
            call(*args)
        except Exception:
            log.failure("supervision observer failed ({phone})", phone=self.phone)

    def on_location(self, message: Message) -> None:
        assert self.vehicle is not None
        positions = positions_of(message, self.vehicle.id, datetime.now(UTC))
        flag_values(positions, self.service.limits)
        if self.gnss and time.monotonic() - self.gnss_at < GNSS_FRESH_S:
            for position in positions:
                if not position.batch:
                    position.extras.update(self.gnss)
        if not positions:  # an empty 0x0704 batch
            self.reply(message.header, RESULT_OK)
            return
        header = message.header
        started = time.monotonic()
        service = self.service

        def durable(outcome: str | BaseException) -> None:
            if isinstance(outcome, BaseException):
                # Not durable: no ack, so the terminal retransmits it.
                self.metrics.inc("fleetwatch_positions_unacked_total", len(positions))
                return
            self.metrics.add(service.k_positions[outcome], len(positions))
            service.ack_seconds.observe(time.monotonic() - started)
            for serial in message.part_serials or (header.serial,):
                frame = self._ack(header, RESULT_OK, serial)
                if frame is not None:
                    self.queue(frame)

        service.write(positions, durable)

    def on_transparent(self, message: Message) -> None:
        """0x0900: GNSS detail data (type 0x00) adds fix quality, HDOP and satellites to the
        vehicle's next positions; other pass-through types are only acknowledged."""
        body = message.body
        assert isinstance(body, Transparent)
        if body.data_type == Transparent.GNSS_DETAIL and body.nmea:
            detail = gnss_detail(body.nmea)
            self.gnss = {f"gnss_{k}": detail[k] for k in GNSS_QUALITY if k in detail}
            self.gnss_at = time.monotonic()
            if detail.get("errors"):
                self.metrics.inc("fleetwatch_decode_errors_total", kind="nmea")
        self.reply(message.header, RESULT_OK)

    def on_media(self, message: Message) -> None:
        """A complete multimedia upload: stored as a file with a row, then answered (0x8800)."""
        body = message.body
        assert isinstance(body, MediaData) and self.vehicle is not None
        answer = MediaUploadResponse(media_id=body.media_id, missing=[])
        if self.service.media is None:
            self.send(answer)
            return
        d = aio(self.service.media.save(self.vehicle.id, body))

        def saved(path: object) -> None:
            self.metrics.inc("fleetwatch_media_total")
            log.info(
                "media {media_id} from {phone} stored as {path}",
                media_id=body.media_id,
                phone=self.phone,
                path=str(path),
            )
            self.send(answer)

        d.addCallbacks(saved, self._internal_error, errbackArgs=(message,))

    def _internal_error(self, failure: Failure, message: Message) -> None:
        log.failure(
            "handling 0x{msg_id:04X} from {phone}",
            failure,
            msg_id=message.msg_id,
            phone=message.phone,
        )
        self.reply(message.header, RESULT_FAILED)

    HANDLERS: ClassVar[dict[int, Callable[[JT808Protocol, Message], None]]] = {
        0x0100: on_register,
        0x0102: on_authenticate,
        0x0003: on_logout,
        0x0702: on_driver_identity,
        0x0801: on_media,
        0x0900: on_transparent,
    }

    # -- output ----------------------------------------------------------------------------

    def next_serial(self) -> int:
        serial = self._serial
        self._serial = (serial + 1) & 0xFFFF
        return serial

    def send(self, body: Body) -> int:
        """Encode and write a platform message in the terminal's layout; returns its serial."""
        serial = self.next_serial()
        self.send_with_serial(body, serial)
        return serial

    def command(self, body: Body, timeout: float) -> tuple[int, Deferred[Message]]:
        """Send a command and expect its reply (matched by serial, see ``ingest.downlink``):
        the serial used, and the reply or a CommandError failure."""
        serial = self.next_serial()
        d = self.commands.expect(serial, body.MSG_ID, timeout)
        self.send_with_serial(body, serial)
        return serial, d

    def send_with_serial(self, body: Body, serial: int) -> None:
        if self._closed:
            return
        try:
            frame = encode_frame(
                body,
                phone=self.phone,
                serial=serial,
                version=self.version,
                protocol_version=self.protocol_version,
            )
        except JT808Error as exc:  # a phone that does not fit the layout a bad frame named
            self.bad("cannot answer {peer} ({phone}): {error}", error=str(exc))
            return
        self.write(frame)

    def write(self, data: bytes) -> None:
        """Send at once when nothing is queued, else queue behind it (order is kept).

        Twisted's ``write`` always buffers until the socket is reported writable: for the one
        small ack most terminal messages get, that is two epoll changes and a loop turn each
        (a fifth of the server's CPU in a profile of one-message-per-read load). Trying the send
        first is what asyncio's own transports do. Falls back to ``write`` if Twisted changes.
        """
        transport = self.transport
        queued = getattr(transport, "_tempDataBuffer", None)
        send = getattr(transport, "writeSomeData", None)
        if (
            send is None
            or queued is None
            or queued
            or transport.dataBuffer
            or (not transport.connected or transport.disconnecting)
        ):
            transport.write(data)
            return
        sent = send(data)
        if isinstance(sent, int) and sent < len(data):
            transport.write(data[sent:])

    def queue(self, data: bytes) -> None:
        """Send ``data`` at the end of this loop turn, in one ``send()`` with the rest queued
        for this connection meanwhile. A flush acknowledges every report it stored at once,
        and a terminal's reports of one read are in the same flush: at 15,000 positions/s a
        ``send()`` per ack was a third of a worker's time (sampled), a syscall each, and on
        loopback each also runs the receiver's TCP path."""
        queued = self._queued
        if queued is None:
            self._queued = [data]
            self.service.flush_soon(self)
        else:
            queued.append(data)

    def flush_queued(self) -> None:
        queued, self._queued = self._queued, None
        if queued and not self._closed:
            self.write(queued[0] if len(queued) == 1 else b"".join(queued))

    def _ack(self, header: Header, result: int, serial: int | None = None) -> bytes | None:
        """0x8001 for a terminal message (or for one part of it: ``serial``); None (logged)
        when the connection is closed or the terminal's phone does not fit its layout."""
        if self._closed:
            return None
        try:
            return encode_general_response(
                self.phone, self.next_serial(), header.serial if serial is None else serial,
                header.msg_id, result, self.version, self.protocol_version,
            )  # fmt: skip
        except JT808Error as exc:
            self.bad("cannot answer {peer} ({phone}): {error}", error=str(exc))
            return None

    def reply(self, header: Header, result: int, serial: int | None = None) -> None:
        """0x8001 for a terminal message (or for one part of it: ``serial``), sent now."""
        frame = self._ack(header, result, serial)
        if frame is not None:
            self.write(frame)

    def request_missing_parts(self, now: float) -> None:
        request, abandon = self.reassembler.due(now)
        for pending in request:
            self.metrics.inc("fleetwatch_subpackage_requests_total")
            for ids in resend_batches(pending.missing, self.version):  # 255 a request (2013)
                self.send(ResendSubpackages(orig_serial=pending.first_serial, ids=ids))
        for pending in abandon:
            self.metrics.inc("fleetwatch_subpackage_abandoned_total")
            log.warn(
                "gave up on 0x{msg_id:04X} from {phone}: {missing} of {total} parts missing",
                msg_id=pending.msg_id,
                phone=self.phone,
                missing=len(pending.missing),
                total=pending.total,
            )
