"""The one way to reach a vehicle's terminal: ``await gateway.send(vehicle_id, command)``.

With ``serve --workers N`` a terminal is connected to one worker process, picked by the kernel
(SO_REUSEPORT), while the alert that wants to text its driver, the dispatcher's confirmation and
``fleetwatch send`` may be anywhere. So:

* **Local fast path**: if this process holds the terminal (``terminals.holds``), the command goes
  straight to the :class:`TerminalEnd` (``ingest/``), no database involved.
* **Another process holds it**: ``terminal_holders`` says which one (each process registers
  the terminals it holds under its gateway key). The sender writes a ``commands`` row and
  NOTIFYs the holder's channel in one statement; the holder claims the row (at most once),
  executes the command, writes the answer and NOTIFYs the sender's channel.
* **Nobody holds it** (no session row, or its process has no listening connection any more:
  killed): :class:`~alerts.commands.CommandFailed` ``offline`` at once. No answer by the
  deadline: ``timeout``. Commands are never queued for later: a text read to a driver hours
  late, or a door locked then, is worse than a clear failure the dispatcher can retry.

Why a table plus NOTIFY rather than NOTIFY alone: the payload limit (8 kB) does not fit every
area push, a NOTIFY lost while a listener reconnects is found again in the table, claiming a
row makes execution at-most-once, and the rows are the record of what was asked by whom.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from alerts.commands import (
    ANSWERS,
    FAILURES,
    INVALID,
    OFFLINE,
    TIMEOUT,
    Command,
    CommandFailed,
    Reply,
    command_from_json,
    command_to_json,
)
from store import commands as mailbox

log = logging.getLogger(__name__)

#: How long a sender waits past the deadline for the holder's answer to arrive.
GRACE_S = 1.0
#: Tries to record a batch of terminal sessions before giving up on it.
SESSION_ATTEMPTS = 5
#: The gateway's counters (``CommandGateway.stats``, served on /metrics) and what they count.
STATS = {
    "local": "commands to terminals held by this process",
    "remote": "commands to terminals held by another process",
    "executed": "commands executed here for another process",
    "offline": "commands refused at once: the terminal is connected nowhere",
    "timeouts": "commands to another process that got no answer in time",
}


class TerminalEnd(Protocol):
    """The terminals of this process (``ingest.downlink.TerminalEnd`` for JT/T 808): it says
    the platform commands in the terminal's protocol, and tells the gateway (``on_session``,
    vehicle id and connected or not) when a terminal comes or goes."""

    on_session: Callable[[int, bool], None] | None

    def holds(self, vehicle_id: int) -> bool: ...

    async def execute(self, vehicle_id: int, command: Command, timeout: float) -> Reply: ...


class CommandGateway:
    """``send`` from anywhere; with ``terminals``, also the end that executes commands sent by
    other processes to the terminals held here. ``db`` (a pool, or the one connection of a
    short-lived command) runs the mailbox queries; ``url`` opens the listening connection."""

    def __init__(
        self,
        db: Any,
        url: str,
        terminals: TerminalEnd | None = None,
        *,
        timeout: float = 30.0,
        key: str | None = None,
    ) -> None:
        self.db = db
        self.url = url
        self.terminals = terminals
        self.timeout = timeout
        self.key = key or uuid.uuid4().hex[:16]
        self.reply_channel = mailbox.reply_channel(self.key)
        self._waiting: dict[uuid.UUID, asyncio.Future[None]] = {}
        self._sessions: deque[tuple[int, bool]] = deque()
        self._session_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        channels = {self.reply_channel: self._replied}
        if terminals is not None:
            channels[mailbox.request_channel(self.key)] = self._requested
        self.listener = mailbox.Listener(url, self.key, channels, self._connected)
        self.stats = dict.fromkeys(STATS, 0)

    async def start(self) -> None:
        """Listen (the holder's liveness is this connection), then take terminal sessions."""
        await self.listener.start()
        if self.terminals is not None:
            removed = await mailbox.clear_sessions(self.db)  # left by killed processes
            if removed:
                log.info("gateway: forgot %d sessions of processes that are gone", removed)
            self.terminals.on_session = self._session_changed

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """Relay NOTIFYs on ``channel`` to ``callback`` over the gateway's listening connection
        (one connection per process, not one per subscriber)."""
        await self.listener.listen(channel, callback)

    async def stop(self) -> None:
        if self.terminals is not None:
            self.terminals.on_session = None
        if self._session_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._session_task, 5.0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2.0)
        with contextlib.suppress(Exception):
            if self.terminals is not None:
                await mailbox.clear_sessions(self.db, self.key)
        await self.listener.close()

    # ------------------------------------------------------------------ sending

    def holds(self, vehicle_id: int) -> bool:
        """Whether the vehicle's terminal is connected to this process (jobs that any worker
        could do, such as confirming an acknowledged alarm, are done by its holder)."""
        return self.terminals is not None and self.terminals.holds(vehicle_id)

    async def send(
        self,
        vehicle_id: int,
        command: Command,
        *,
        timeout: float | None = None,
        requested_by: str | None = None,
    ) -> Reply:
        """The terminal's answer to ``command``; CommandFailed if it gave none."""
        timeout = self.timeout if timeout is None else timeout
        if self.terminals is not None and self.terminals.holds(vehicle_id):
            self.stats["local"] += 1
            return await self.terminals.execute(vehicle_id, command, timeout)
        worker = await mailbox.holder(self.db, vehicle_id)
        if worker is None or worker == self.key:  # ours but gone: it has just disconnected
            self.stats["offline"] += 1
            raise CommandFailed(OFFLINE, f"vehicle {vehicle_id}: its terminal is not connected")
        self.stats["remote"] += 1
        command_id = uuid.uuid4()
        answered = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = answered
        try:
            await mailbox.request(
                self.db, command_id, vehicle_id, worker, self.reply_channel,
                command_to_json(command), timeout, requested_by,
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answered, timeout + GRACE_S)
            outcome = await mailbox.outcome(self.db, command_id)
            if outcome is None:
                outcome = await mailbox.give_up(self.db, command_id)
        finally:
            self._waiting.pop(command_id, None)
        if outcome is None:
            self.stats["timeouts"] += 1
            raise CommandFailed(
                TIMEOUT, f"vehicle {vehicle_id}: no answer within {timeout:g} s (worker {worker})"
            )
        reply = outcome.reply or {}
        if outcome.result in FAILURES:
            raise CommandFailed(outcome.result, str(reply.get("detail") or outcome.result))
        return Reply.from_json(reply)

    def _replied(self, payload: str) -> None:
        with contextlib.suppress(ValueError):
            answered = self._waiting.get(uuid.UUID(payload))
            if answered is not None and not answered.done():
                answered.set_result(None)

    async def _connected(self) -> None:
        """After a (re)connection: answers and requests announced meanwhile are in the table."""
        for answered in self._waiting.values():
            if not answered.done():
                answered.set_result(None)  # its sender reads the row (or keeps the deadline)
        if self.terminals is not None:
            for command_id in await mailbox.pending(self.db, self.key):
                self._spawn(self._execute(command_id))

    # ------------------------------------------------------------------ executing

    def _requested(self, payload: str) -> None:
        try:
            command_id = uuid.UUID(payload)
        except ValueError:
            log.warning("gateway: ignored a request notification %r", payload)
            return
        self._spawn(self._execute(command_id))

    async def _execute(self, command_id: uuid.UUID) -> None:
        assert self.terminals is not None
        claimed = await mailbox.claim(self.db, command_id, self.key)
        if claimed is None:
            return
        self.stats["executed"] += 1
        try:
            command = command_from_json(claimed.command)
            reply = await self.terminals.execute(
                claimed.vehicle_id, command, max(0.1, claimed.seconds_left)
            )
        except ValueError as exc:
            await mailbox.answer(self.db, command_id, INVALID, {"detail": str(exc)})
        except CommandFailed as exc:
            await mailbox.answer(self.db, command_id, exc.reason, {"detail": exc.detail})
        else:
            assert reply.result in ANSWERS, reply
            await mailbox.answer(self.db, command_id, reply.result, reply.to_json())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway task failed", exc_info=task.exception())

    # ------------------------------------------------------------------ sessions

    def _session_changed(self, vehicle_id: int, connected: bool) -> None:
        """Called by the terminal end: recorded in order, off the caller's path."""
        self._sessions.append((vehicle_id, connected))
        if self._session_task is None or self._session_task.done():
            self._session_task = asyncio.get_running_loop().create_task(self._record_sessions())

    async def _record_sessions(self) -> None:
        """Write what changed since the last write, in one statement (the last word about a
        vehicle wins); on failure, try again shortly (a holder nobody knows is "offline"), a
        few times: the next connection of the terminal records it again anyway."""
        failures = 0
        while self._sessions:
            latest: dict[int, bool] = {}
            while self._sessions:
                vehicle_id, connected = self._sessions.popleft()
                latest[vehicle_id] = connected
            up = [v for v, connected in latest.items() if connected]
            down = [v for v, connected in latest.items() if not connected]
            try:
                await mailbox.record_sessions(self.db, self.key, up, down)
                failures = 0
            except Exception:
                failures += 1
                log.exception("gateway: recording %d terminal sessions failed", len(latest))
                if failures < SESSION_ATTEMPTS:
                    self._sessions.extendleft((v, c) for v, c in reversed(latest.items()))
                    await asyncio.sleep(1.0)


__all__ = ["GRACE_S", "STATS", "CommandGateway", "TerminalEnd"]
