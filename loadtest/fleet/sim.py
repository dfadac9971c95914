"""The fleet's terminals over real TCP (asyncio, one process for a few hundred).

Each :class:`Vehicle` behaves like a terminal: it registers (0x0100) once, authenticates
(0x0102) on every connection, reports (0x0200) every 30 s of its clock while the ignition is on
and every 5 minutes parked, sends a heartbeat (0x0002) when it has sent nothing for a while,
keeps the fixes it takes in a tunnel and sends them as a blind-area batch (0x0704, type 1) when
it comes out, and answers the platform: 0x8300 text, 0x8103 parameters, 0x8203 alarm
confirmation (which clears its SOS) and area pushes 0x8600-0x8607 with a general response
(0x0001); 0x8201 with its position (0x0201); 0x8202 temporary tracking with an ack, then
reports at the asked interval. Anything else is answered "unsupported". It reconnects when the
server goes away and logs out (0x0003) when stopped, so a stopped simulator leaves no vehicle
to go "offline"; the scripted silent one just drops its connection.

Frames come from :class:`loadtest.terminal.SimTerminal` (identity, serials, session frames)
and the codec (``protocols.jt808``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from loadtest.fleet.city import RoadNetwork
from loadtest.fleet.plan import BEIJING, Plan, Scenario, TimeLapse, VehicleSpec
from loadtest.terminal import MAX_BATCH, FixClock, SimTerminal
from protocols.jt808 import (
    V2013,
    V2019,
    BatchLocation,
    FrameSplitter,
    JT808Error,
    LocationQueryReply,
    LocationReport,
    Message,
    decode_frame,
    encode_items,
)
from protocols.jt808.terminal import Heartbeat

REGISTER_REPLY, PLATFORM_ACK, AUTH = 0x8100, 0x8001, 0x0102
LOCATION, BATCH, QUERY_REPLY = 0x0200, 0x0704, 0x0201
#: Platform commands answered with "done" (0x0001 result 0), by name for the statistics.
ANSWERED = {
    0x8300: "text",
    0x8103: "parameters",
    0x8202: "tracking",
    0x8203: "alarm confirmation",
    0x8600: "circles",
    0x8601: "delete circles",
    0x8602: "rectangles",
    0x8603: "delete rectangles",
    0x8604: "polygon",
    0x8605: "delete polygons",
    0x8606: "route",
    0x8607: "delete routes",
    0x8201: "position query",
}
#: Platform messages that are no command (nothing to answer).
NOT_COMMANDS = frozenset({PLATFORM_ACK, REGISTER_REPLY, 0x8003, 0x8004})
SOS_BIT = 1


@dataclass
class Stats:
    """What the fleet did, for the progress line and the tests."""

    online: int = 0
    registrations: int = 0
    connects: int = 0
    positions_sent: int = 0
    positions_acked: int = 0
    batches: int = 0
    heartbeats: int = 0
    heartbeats_acked: int = 0
    logouts: int = 0
    decode_errors: int = 0
    refused: int = 0
    commands: Counter[str] = field(default_factory=Counter)
    texts: list[tuple[str, str]] = field(default_factory=list)  # (plate, text)


class FleetTerminal(SimTerminal):
    """The load generator's terminal (identity, serials, registration and auth frames) plus
    frames of any codec body."""

    def frame(self, body: Any) -> bytes:
        return self._encode(body)


class Vehicle:
    """One terminal on one vehicle: :meth:`run` until cancelled (then it logs out)."""

    def __init__(
        self,
        plan: Plan,
        clock: TimeLapse,
        stats: Stats,
        address: tuple[str, int],
        *,
        report_s: float = 30.0,
        parked_s: float = 300.0,
        heartbeat_s: float = 60.0,
    ) -> None:
        spec = plan.spec
        self.spec, self.plan, self.clock, self.stats = spec, plan, clock, stats
        self.script = plan.script
        self.address = address
        self.report_s, self.parked_s, self.heartbeat_s = report_s, parked_s, heartbeat_s
        version = V2019 if spec.version == 2019 else V2013
        dummy = FixClock(datetime.fromtimestamp(0, UTC))  # the template reports are not used
        self.term = FleetTerminal(spec.index, spec.phone, dummy, version=version, plate=spec.plate)
        self.writer: asyncio.StreamWriter | None = None
        self.waiters: dict[tuple[int, int], asyncio.Future[Message]] = {}
        self.pending: dict[int, int] = {}  # serial → positions in the frame
        self.next_t: float | None = None
        self.last_sent = 0.0
        self.mileage_km = 10_000.0 + spec.index * 37.5
        self.last_t: float | None = None
        self.blind: list[LocationReport] = []
        self.sos_cleared: set[tuple[float, float]] = set()
        self.track_interval = 0.0
        self.track_until = 0.0
        self.silent = False
        self.online = False

    # ------------------------------------------------------------------ session

    async def run(self) -> None:
        backoff = 1.0
        while not self.silent:
            try:
                await self._session()
                backoff = 1.0
            except (OSError, ConnectionError, TimeoutError, JT808Error):
                if self.silent:
                    return
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 15.0)

    async def _session(self) -> None:
        reader, writer = await asyncio.open_connection(*self.address)
        self.writer = writer
        self.stats.connects += 1
        reading = asyncio.ensure_future(self._read(reader))
        try:
            await self._login()
            self.online = True
            self.stats.online += 1
            reporting = asyncio.ensure_future(self._report_loop())
            try:
                done, _ = await asyncio.wait(
                    {reading, reporting}, return_when=asyncio.FIRST_COMPLETED
                )
            except asyncio.CancelledError:  # stopped: log out, as a terminal switched off
                reporting.cancel()
                await self._logout()
                raise
            for task in (reading, reporting):
                if task not in done:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            for task in done:
                task.result()  # raises why it ended
        finally:
            if self.online:
                self.online = False
                self.stats.online -= 1
            reading.cancel()
            writer.close()
            self.writer = None

    async def _login(self) -> None:
        term = self.term
        if not term.auth_code:
            self._send(term.register_frame(province=43, city=100))  # Hunan, Changsha
            reply = _any((await self._wait(REGISTER_REPLY, 0, 10.0)).body)
            if reply.result != 0:
                self.stats.refused += 1
                raise ConnectionError(
                    f"{self.spec.plate}: registration refused ({reply.body.result})"
                )
            term.auth_code = reply.auth_code
            self.stats.registrations += 1
        self._send(term.auth_frame())
        ack = _any((await self._wait(PLATFORM_ACK, AUTH, 10.0)).body)
        if ack.result != 0:
            term.auth_code = ""  # register again next time
            self.stats.refused += 1
            raise ConnectionError(f"{self.spec.plate}: authentication refused")

    async def _wait(self, msg_id: int, reply_id: int, timeout: float) -> Message:
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.waiters[(msg_id, reply_id)] = future
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self.waiters.pop((msg_id, reply_id), None)

    async def _logout(self) -> None:
        """Wait (2 s at most) for the acks of what was sent, then log out and wait for that
        ack too: a terminal that logged out is not expected to report (no "offline")."""
        writer = self.writer
        if writer is None or self.silent or writer.is_closing():
            return
        with contextlib.suppress(Exception):
            deadline = time.monotonic() + 2.0
            while self.pending and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            self._send(self.term.logout_frame())
            await self._wait(PLATFORM_ACK, 0x0003, 2.0)
            self.stats.logouts += 1

    def _send(self, frame: bytes) -> None:
        if self.writer is not None:  # None: the connection has just ended
            self.writer.write(frame)
            self.last_sent = time.time()

    # ------------------------------------------------------------------ reports

    async def _report_loop(self) -> None:
        clock = self.clock
        if self.next_t is None:  # from the window's start, however late this connects
            self.next_t = clock.start
        while True:
            t = self.next_t
            silent_at = self.script.silent_at
            if silent_at is not None and t >= silent_at:
                self.silent = True  # a power cut: the connection just drops, no logout
                if self.writer is not None:
                    self.writer.transport.abort()
                return
            # Wait for the report's time (re-read: a tracking request brings it forward).
            while (now := time.time()) < (due := clock.wall(self.next_t)):
                beat = self.last_sent + self.heartbeat_s
                if beat <= now:
                    self._send(self.term.frame(Heartbeat()))
                    self.stats.heartbeats += 1
                    continue
                await asyncio.sleep(min(due, beat, now + 1.0) - now)
            t = self.next_t
            self._report(t)
            self.next_t = self._next(t)
            if self.writer is not None:
                await self.writer.drain()

    def _next(self, t: float) -> float:
        if self.track_interval and t < self.track_until:
            return t + self.track_interval
        if self.plan.state(t).acc:
            return t + self.report_s
        return max(t + 1.0, min(t + self.parked_s, self.plan.next_wake(t)))

    def location(self, t: float) -> LocationReport:
        """The report at fix time ``t`` (epoch seconds)."""
        st = self.plan.state(t)
        if self.last_t is not None and t > self.last_t:
            self.mileage_km += st.speed_kmh * (t - self.last_t) / 3600
        self.last_t = t
        alarm = 0
        for window in self.script.sos:
            if window[0] <= t < window[1] and window not in self.sos_cleared:
                alarm |= SOS_BIT
        return LocationReport(
            alarm=alarm,
            status=(1 if st.acc else 0) | 2,  # ACC, positioned
            latitude=round(st.lat, 6),
            longitude=round(st.lon, 6),
            altitude_m=45,
            speed_kmh=round(st.speed_kmh, 1),
            heading=st.heading,
            time=datetime.fromtimestamp(int(t), UTC),
            items=encode_items({"mileage_km": round(self.mileage_km, 1), "satellites": 14}),
        )

    def _report(self, t: float) -> None:
        report = self.location(t)
        if self.script.in_tunnel(t):
            self.blind.append(report)
            return
        while self.blind:  # out of the tunnel: what it kept, as blind-area batches
            items, self.blind = self.blind[:MAX_BATCH], self.blind[MAX_BATCH:]
            self._send_position(BatchLocation(batch_type=1, items=items), len(items))
            self.stats.batches += 1
        self._send_position(report, 1)

    def _send_position(self, body: Any, count: int) -> None:
        self.pending[self.term.serial] = count  # the serial the frame is about to take
        self._send(self.term.frame(body))
        self.stats.positions_sent += count

    # ------------------------------------------------------------------ platform messages

    async def _read(self, reader: asyncio.StreamReader) -> None:
        splitter = FrameSplitter()
        while True:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            for frame in splitter.feed(data):
                try:
                    message = decode_frame(frame)
                except JT808Error:
                    self.stats.decode_errors += 1
                    continue
                self._on_message(message)

    def _on_message(self, message: Message) -> None:
        msg_id, body = message.msg_id, _any(message.body)
        if msg_id == PLATFORM_ACK:
            reply_id = body.reply_id
            if reply_id in (LOCATION, BATCH):
                self.stats.positions_acked += self.pending.pop(body.reply_serial, 0)
            elif reply_id == 0x0002:
                self.stats.heartbeats_acked += 1
            self._resolve((PLATFORM_ACK, reply_id), message)
            return
        if msg_id == REGISTER_REPLY:
            self._resolve((REGISTER_REPLY, 0), message)
            return
        if msg_id in NOT_COMMANDS:
            return
        name = ANSWERED.get(msg_id)
        if name is None:
            self.stats.commands["unsupported"] += 1
            self._send(self.term.general_response_frame(message.serial, msg_id, 3))
            return
        self.stats.commands[name] += 1
        now = self.clock.now()
        if msg_id == 0x8201:
            reply = LocationQueryReply(reply_serial=message.serial, location=self.location(now))
            self._send(self.term.frame(reply))
            return
        if msg_id == 0x8300:
            self.stats.texts.append((self.spec.plate, body.text))
        elif msg_id == 0x8202:
            self.track_interval = float(body.interval_s)
            self.track_until = now + body.validity_s if body.interval_s else 0.0
            if body.interval_s:
                self.next_t = min(self.next_t or now, now + body.interval_s)
        elif msg_id == 0x8203 and body.alarm_type & SOS_BIT:
            self.sos_cleared.update(w for w in self.script.sos if w[0] <= now)
        self._send(self.term.general_response_frame(message.serial, msg_id, 0))

    def _resolve(self, key: tuple[int, int], message: Message) -> None:
        future = self.waiters.get(key)
        if future is not None and not future.done():
            future.set_result(message)


def _any(body: Any) -> Any:
    """A decoded body, whose type its message id says (``Message.body`` is typed ``Body``)."""
    return body


class Fleet:
    """The simulated fleet: :meth:`start` connects every vehicle (spread over ``ramp_s``),
    :meth:`stop` logs them out."""

    def __init__(
        self,
        specs: list[VehicleSpec],
        clock: TimeLapse,
        scenario: Scenario,
        address: tuple[str, int],
        *,
        seed: int = 1,
        **timing: float,
    ) -> None:
        net = RoadNetwork()
        self.clock = clock
        self.stats = Stats()
        self.vehicles = [
            Vehicle(
                Plan(
                    spec,
                    net,
                    clock.start,
                    seed,
                    scenario.timelines.get(spec.index),
                    scenario.scripts.get(spec.index),
                ),
                clock,
                self.stats,
                address,
                **timing,
            )
            for spec in specs
        ]
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, ramp_s: float = 2.0) -> None:
        gap = ramp_s / max(len(self.vehicles), 1)
        for vehicle in self.vehicles:
            self.tasks.append(asyncio.ensure_future(vehicle.run()))
            await asyncio.sleep(gap)

    async def wait_online(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.stats.online < count:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def caught_up(self, t: float, timeout: float) -> bool:
        """Wait until every vehicle has reported up to fix time ``t`` (or went silent)."""
        deadline = time.monotonic() + timeout
        while not all(v.silent or (v.next_t or 0.0) >= t for v in self.vehicles):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    def progress(self) -> str:
        s, clock = self.stats, self.clock
        sim = datetime.fromtimestamp(clock.now(), tz=UTC).astimezone(BEIJING)
        left = clock.catch_up - time.time()
        mode = f"time-lapse x{clock.speed:g}, live in {left / 60:.1f} min" if left > 0 else "live"
        return (
            f"fleet: {sim:%m-%d %H:%M} Beijing ({mode}); {s.online}/{len(self.vehicles)} "
            f"online; positions {s.positions_acked:,} acked of {s.positions_sent:,}; "
            f"blind-area batches {s.batches}; commands answered {sum(s.commands.values())}"
        )
