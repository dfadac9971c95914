"""The ingest stack of tests/ingest_harness.py with supervision attached, and a test terminal
that answers the platform's commands while it reports."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from alerts.gateway import CommandGateway
from alerts.supervision import Supervision
from ingest.positions import revive
from protocols.jt808 import BEIJING, LocationReport, Message, TerminalGeneralResponse
from tests.ingest_harness import Ingest, running_ingest
from tests.terminal_client import Terminal

T = TypeVar("T")

#: Fast timings for tests (seconds).
FAST = {
    "flush_interval": 0.05,
    "tick_interval": 0.2,
    "escalate_interval": 0.2,
    "confirm_interval": 0.2,
    "fence_interval": 0.3,
    "command_timeout": 2.0,
}


@contextlib.asynccontextmanager
async def running_supervision(
    db_url: str, workdir: Path, config: dict[str, Any] | None = None, **options: Any
) -> AsyncIterator[tuple[Ingest, Supervision]]:
    async with running_ingest(db_url, workdir) as ingest:
        gateway = CommandGateway(ingest.pool, db_url, ingest.service.terminals)
        await gateway.start()
        supervision = Supervision(
            ingest.pool,
            gateway,
            config,
            metrics=ingest.metrics,
            revive=revive,
            **{**FAST, **options},
        )
        ingest.service.observer = supervision
        ingest.writer.subscribe(supervision.durable)
        await supervision.start()
        try:
            yield ingest, supervision
        finally:
            ingest.writer.unsubscribe(supervision.durable)
            await supervision.stop()
            await gateway.stop()


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 5.0) -> T:
    """Poll ``check`` until it returns something truthy (returned), or fail after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        await asyncio.sleep(0.05)


def fix(
    at: datetime,
    lon: float,
    lat: float,
    speed: float = 60.0,
    *,
    alarm: int = 0,
    status: int = 0x3,
) -> LocationReport:
    """A 0x0200 body (status 0x3: ACC on, positioned)."""
    return LocationReport(
        alarm=alarm, status=status, latitude=round(lat, 6), longitude=round(lon, 6),
        speed_kmh=speed, heading=0, altitude_m=10, time=at.astimezone(BEIJING),
    )  # fmt: skip


@dataclass
class Vehicle:
    """A terminal that reports and answers commands (0x0001 with ``answers[msg_id]``, default
    0 = accepted; ``None`` = never answer). Everything the platform sent is in ``received``."""

    terminal: Terminal
    answers: dict[int, int | None] = field(default_factory=dict)
    received: list[Message] = field(default_factory=list)

    @classmethod
    async def online(cls, port: int, phone: str, plate: str, **kw: Any) -> Vehicle:
        vehicle = cls(await Terminal.connect(port, phone), **kw)
        await vehicle.terminal.login(plate)
        return vehicle

    async def _handle(self, message: Message) -> None:
        self.received.append(message)
        if message.msg_id == 0x8001:
            return
        result = self.answers.get(message.msg_id, 0)
        if result is not None:
            await self.terminal.send(
                TerminalGeneralResponse(
                    reply_serial=message.serial, reply_id=message.msg_id, result=result
                )
            )

    async def send(self, body: Any) -> int:
        """Send a message and wait for its 0x8001, answering commands meanwhile."""
        serial = await self.terminal.send(body)
        while True:
            message = await self.terminal.receive()
            await self._handle(message)
            if message.msg_id == 0x8001 and message.body.reply_serial == serial:
                assert message.body.result == 0, message
                return serial

    async def commands(self, msg_id: int, count: int = 1, timeout: float = 10.0) -> list[Message]:
        """Wait until ``count`` commands ``msg_id`` have arrived (answering them); all of them.
        The timeout is generous: on a loaded 2-core machine a push after authentication was
        seen to take over 5 s (it waits for the state save and the enforcement plan)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(found := [m for m in self.received if m.msg_id == msg_id]) < count:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(
                    f"{len(found)} of {count} 0x{msg_id:04X} within {timeout} s; got "
                    f"{[hex(m.msg_id) for m in self.received]}"
                )
            try:
                message = await self.terminal.receive(left)
            except TimeoutError:
                continue  # the assertion above says what did arrive
            await self._handle(message)
        return found

    async def quiet(self, seconds: float) -> list[Message]:
        """Answer whatever arrives within ``seconds``; what it was."""
        before = len(self.received)
        deadline = asyncio.get_running_loop().time() + seconds
        with contextlib.suppress(TimeoutError):
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                await self._handle(await self.terminal.receive(left))
        return self.received[before:]

    async def close(self) -> None:
        await self.terminal.close()
