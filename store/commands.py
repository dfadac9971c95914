"""The SQL of the command gateway: who holds which terminal, and the cross-process mailbox.

See migration 0008 and :mod:`alerts.gateway` for the design. Commands and replies are plain
JSON here (the store does not know what a command means); times are the database's clock, so
a sender and a holder on different hosts agree on deadlines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from geo.plates import normalise_plate

log = logging.getLogger(__name__)

Db = asyncpg.Pool | asyncpg.Connection

#: application_name of a gateway's listening connection: how a live holder is recognised.
APPLICATION_PREFIX = "fleetwatch-gateway "


def application_name(worker: str) -> str:
    return APPLICATION_PREFIX + worker


def request_channel(worker: str) -> str:
    """The channel a holding process listens on for commands to execute."""
    return f"fleetwatch_cmd_{worker}"


def reply_channel(worker: str) -> str:
    """The channel a sending process listens on for the answers to its commands."""
    return f"fleetwatch_reply_{worker}"


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# ---------------------------------------------------------------------- listening


class Listener:
    """A dedicated connection LISTENing on some channels, named after its worker (so others
    can see it is alive), reconnecting with a growing pause if it drops. ``on_connect`` runs
    after every (re)connection: NOTIFYs sent while it was down are lost, so the owner looks
    at the table instead."""

    def __init__(
        self,
        url: str,
        worker: str,
        channels: Mapping[str, Callable[[str], None]],
        on_connect: Callable[[], Awaitable[None]] | None = None,
        application: str | None = None,
    ) -> None:
        self.url = url
        self.worker = worker
        #: Only a gateway's connection may carry its key's name: that is how holders are found.
        self.application = application or application_name(worker)
        self.channels = dict(channels)
        self.on_connect = on_connect
        self.conn: asyncpg.Connection | None = None
        self._closed = False
        self._reconnecting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._connect()

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """Also listen on ``channel`` (now if connected, and after every reconnection)."""
        self.channels[channel] = callback
        if self.conn is not None:
            await self.conn.add_listener(channel, _relay(callback))

    async def _connect(self) -> None:
        conn = await asyncpg.connect(
            self.url, server_settings={"application_name": self.application}
        )
        for channel, callback in self.channels.items():
            await conn.add_listener(channel, _relay(callback))
        conn.add_termination_listener(self._lost)
        self.conn = conn
        if self.on_connect is not None:
            await self.on_connect()

    def _lost(self, conn: Any) -> None:
        if self._closed or conn is not self.conn:
            return
        log.warning("listener %s lost its connection; reconnecting", self.application)
        self.conn = None
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        pause = 0.2
        while not self._closed:
            try:
                await self._connect()
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("listener reconnect failed (%s); again in %.1f s", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def close(self) -> None:
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self.conn is not None:
            await self.conn.close()
            self.conn = None


def _relay(callback: Callable[[str], None]) -> Callable[..., None]:
    def relay(conn: Any, pid: int, channel: str, payload: str) -> None:
        callback(payload)

    return relay


# ---------------------------------------------------------------------- sessions


async def open_session(db: Db, vehicle_id: int, worker: str) -> None:
    """This worker now holds the vehicle's terminal (a reconnect elsewhere takes it over)."""
    await record_sessions(db, worker, [vehicle_id], [])


async def record_sessions(
    db: Db, worker: str, connected: Sequence[int], disconnected: Sequence[int]
) -> None:
    """This worker now holds the ``connected`` vehicles' terminals (taking them over from any
    other) and no longer the ``disconnected`` ones (rows another worker took are left alone):
    one statement for a burst of logins (a restart reconnects thousands at once)."""
    await db.execute(
        "WITH gone AS (DELETE FROM terminal_holders WHERE worker = $1"
        " AND vehicle_id = ANY($3::integer[]))"
        " INSERT INTO terminal_holders (vehicle_id, worker)"
        " SELECT v, $1 FROM unnest($2::integer[]) AS v"
        " ON CONFLICT (vehicle_id) DO UPDATE SET worker = excluded.worker,"
        " connected_at = excluded.connected_at",
        worker, list(connected), list(disconnected),
    )  # fmt: skip


async def clear_sessions(db: Db, worker: str | None = None) -> int:
    """Forget one worker's sessions (``None``: those of every process not listening any more,
    the leftovers of a kill -9); how many."""
    if worker is not None:
        status = await db.execute("DELETE FROM terminal_holders WHERE worker = $1", worker)
    else:
        status = await db.execute(
            "DELETE FROM terminal_holders s WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a"
            " WHERE a.application_name = $1 || s.worker)",
            APPLICATION_PREFIX,
        )
    return int(status.split()[-1])


async def holder(db: Db, vehicle_id: int) -> str | None:
    """The live worker holding the vehicle's terminal, or None (not connected anywhere)."""
    worker = await db.fetchval(
        "SELECT s.worker FROM terminal_holders s WHERE s.vehicle_id = $1 AND EXISTS"
        " (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = $2 || s.worker)",
        vehicle_id, APPLICATION_PREFIX,
    )  # fmt: skip
    return str(worker) if worker is not None else None


async def vehicle_id_by_plate(db: Db, plate: str) -> int | None:
    """The vehicle with this plate (in its canonical form, ``geo.plates``; any plate colour)."""
    value = await db.fetchval(
        "SELECT id FROM vehicles WHERE plate = $1 ORDER BY id LIMIT 1", normalise_plate(plate)
    )
    return int(value) if value is not None else None


# ---------------------------------------------------------------------- the mailbox


async def request(
    db: Db,
    command_id: uuid.UUID,
    vehicle_id: int,
    worker: str,
    reply_to: str,
    command: dict[str, Any],
    timeout_s: float,
    requested_by: str | None = None,
) -> None:
    """Post a command for ``worker`` and wake it (one statement: the row and the NOTIFY are
    committed together, so the holder never hears of a row it cannot read)."""
    await db.execute(
        "WITH posted AS (INSERT INTO commands (id, vehicle_id, worker, reply_channel, command,"
        " requested_by, deadline) VALUES ($1, $2, $3, $4, $5::jsonb, $6,"
        " now() + make_interval(secs => $7)) RETURNING id)"
        " SELECT pg_notify($8, id::text) FROM posted",
        command_id, vehicle_id, worker, reply_to, json.dumps(command, ensure_ascii=False),
        requested_by, timeout_s, request_channel(worker),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Claimed:
    """A command this worker took on: what, for whom, and how long it may take."""

    id: uuid.UUID
    vehicle_id: int
    command: dict[str, Any]
    seconds_left: float


async def claim(db: Db, command_id: uuid.UUID, worker: str) -> Claimed | None:
    """Take a pending command addressed to this worker (None: taken, expired or not ours)."""
    row = await db.fetchrow(
        "UPDATE commands SET status = 'running' WHERE id = $1 AND worker = $2"
        " AND status = 'pending' AND deadline > now()"
        " RETURNING vehicle_id, command::text AS command,"
        " extract(epoch FROM deadline - now())::float8 AS left_s",
        command_id, worker,
    )  # fmt: skip
    if row is None:
        return None
    return Claimed(command_id, row["vehicle_id"], _json(row["command"]), row["left_s"])


async def pending(db: Db, worker: str) -> list[uuid.UUID]:
    """Commands addressed to this worker not yet claimed (a NOTIFY missed while reconnecting)."""
    rows = await db.fetch(
        "SELECT id FROM commands WHERE worker = $1 AND status = 'pending' AND deadline > now()"
        " ORDER BY requested_at",
        worker,
    )
    return [r["id"] for r in rows]


async def answer(db: Db, command_id: uuid.UUID, result: str, reply: dict[str, Any]) -> bool:
    """Record the outcome of a claimed command and wake its sender; False if the sender has
    given up on it already (its row says timeout)."""
    notified = await db.fetchval(
        "WITH done AS (UPDATE commands SET status = 'done', result = $2, reply = $3::jsonb,"
        " answered_at = now() WHERE id = $1 AND status = 'running'"
        " RETURNING id, reply_channel)"
        " SELECT count(pg_notify(reply_channel, id::text)) FROM done",
        command_id, result, json.dumps(reply, ensure_ascii=False),
    )  # fmt: skip
    return bool(notified)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A finished command: the result and the reply's JSON."""

    result: str
    reply: dict[str, Any] | None
    answered_at: datetime | None


async def outcome(db: Db, command_id: uuid.UUID) -> Outcome | None:
    """The command's outcome if it is finished, else None."""
    row = await db.fetchrow(
        "SELECT result, reply::text AS reply, answered_at FROM commands"
        " WHERE id = $1 AND status = 'done'",
        command_id,
    )
    if row is None:
        return None
    return Outcome(row["result"], _json(row["reply"]), row["answered_at"])


async def give_up(db: Db, command_id: uuid.UUID) -> Outcome | None:
    """The sender stops waiting: an unfinished command is finished as a timeout (a late
    answer is then refused by :func:`answer`). Returns the outcome it had if it was done."""
    row = await db.fetchrow(
        "UPDATE commands SET status = 'done', result = 'timeout', answered_at = now()"
        " WHERE id = $1 AND status <> 'done' RETURNING id",
        command_id,
    )
    return None if row is not None else await outcome(db, command_id)


async def prune(db: Db, before: datetime) -> int:
    """Delete the records of commands requested before ``before``; how many."""
    status = await db.execute("DELETE FROM commands WHERE requested_at < $1", before)
    return int(status.split()[-1])


__all__ = [
    "APPLICATION_PREFIX",
    "Claimed",
    "Listener",
    "Outcome",
    "answer",
    "application_name",
    "claim",
    "clear_sessions",
    "give_up",
    "holder",
    "open_session",
    "outcome",
    "pending",
    "prune",
    "record_sessions",
    "reply_channel",
    "request",
    "request_channel",
    "vehicle_id_by_plate",
]
