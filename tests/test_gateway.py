"""The command gateway across processes' boundaries, in one process: a sending gateway and a
holding gateway on their own real asyncpg connections (LISTEN/NOTIFY through PostgreSQL), the
holder's terminal a real JT/T 808 client on a real socket of a real ingest server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from alerts.commands import (
    ACCEPTED,
    INVALID,
    OFFLINE,
    TIMEOUT,
    UNSUPPORTED,
    CommandFailed,
    QueryPosition,
    SetParameters,
    Text,
    Track,
)
from alerts.gateway import CommandGateway
from protocols.jt808 import LocationQueryReply, Message, TerminalGeneralResponse
from store import commands as mailbox
from tests.aio import aio_test
from tests.ingest_harness import Ingest, running_ingest
from tests.supervision_harness import eventually
from tests.terminal_client import Terminal, report


@contextlib.asynccontextmanager
async def _gateways(
    db_url: str, workdir: Path
) -> AsyncIterator[tuple[Ingest, CommandGateway, CommandGateway]]:
    """(ingest, holder, sender): the holder is the gateway of the ingest service's terminals;
    the sender holds none (like ``fleetwatch send`` or another worker)."""
    async with running_ingest(db_url, workdir) as ingest:
        holder = CommandGateway(ingest.pool, db_url, ingest.service.terminals, timeout=5.0)
        await holder.start()
        sender_pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
        sender = CommandGateway(sender_pool, db_url, timeout=5.0)
        await sender.start()
        try:
            yield ingest, holder, sender
        finally:
            await sender.stop()
            await sender_pool.close()
            await holder.stop()


async def _online(ingest: Ingest, phone: str, plate: str) -> tuple[Terminal, int]:
    terminal = await Terminal.connect(ingest.port, phone)
    await terminal.login(plate)
    vehicle_id = int(await ingest.pool.fetchval("SELECT id FROM vehicles WHERE plate = $1", plate))

    async def registered() -> bool:
        return await mailbox.holder(ingest.pool, vehicle_id) is not None

    await eventually(registered)
    return terminal, vehicle_id


async def _answer(terminal: Terminal, msg_id: int, result: int = 0) -> Message:
    command = await terminal.receive()
    assert command.msg_id == msg_id, command
    await terminal.send(
        TerminalGeneralResponse(reply_serial=command.serial, reply_id=msg_id, result=result)
    )
    return command


@aio_test
async def test_text_and_track_reach_a_terminal_held_by_another_gateway(
    db_url: str, short_tmp: Path
) -> None:
    async with _gateways(db_url, short_tmp) as (ingest, holder, sender):
        terminal, vid = await _online(ingest, "13900000301", "沪A00301")
        assert holder.holds(vid) and not sender.holds(vid)
        sent = asyncio.ensure_future(
            sender.send(vid, Text("请减速慢行", display=False), requested_by="值班员")
        )
        command = await _answer(terminal, 0x8300)
        assert (command.body.text, command.body.flag) == ("请减速慢行", 0x08)  # TTS only
        reply = await sent
        assert (reply.result, reply.serial) == (ACCEPTED, command.serial)
        assert (sender.stats["remote"], holder.stats["executed"]) == (1, 1)
        row = await ingest.pool.fetchrow(
            "SELECT worker, status, result, requested_by, command->>'kind' AS kind FROM commands"
        )
        assert dict(row) == {"worker": holder.key, "status": "done", "result": "accepted",
                             "requested_by": "值班员", "kind": "text"}  # fmt: skip

        tracked = asyncio.ensure_future(sender.send(vid, Track(interval_s=10, duration_s=300)))
        command = await _answer(terminal, 0x8202, result=3)
        assert (command.body.interval_s, command.body.validity_s) == (10, 300)
        assert (await tracked).result == UNSUPPORTED  # the terminal's verdict, passed back
        await terminal.close()


@aio_test
async def test_position_query_brings_the_terminals_answer_back(
    db_url: str, short_tmp: Path
) -> None:
    async with _gateways(db_url, short_tmp) as (ingest, _, sender):
        terminal, vid = await _online(ingest, "13900000302", "沪A00302")
        asked = asyncio.ensure_future(sender.send(vid, QueryPosition()))
        command = await terminal.receive()
        assert command.msg_id == 0x8201
        where = report(7, lat=31.25, lon=121.45)
        await terminal.send(LocationQueryReply(reply_serial=command.serial, location=where))
        reply = await asked
        assert reply.result == ACCEPTED and reply.position is not None
        position = reply.position
        assert (position["lat"], position["lon"], position["speed_kmh"]) == (
            where.latitude, 121.45, 40.0,
        )  # fmt: skip
        assert position["fix_time"] == "2026-11-22T01:00:07+00:00"  # Beijing 09:00:07 in UTC
        assert position["valid"] and position["ignition"]
        await terminal.close()


@aio_test
async def test_offline_stale_holder_timeout_and_invalid_are_clear_failures(
    db_url: str, short_tmp: Path
) -> None:
    async with _gateways(db_url, short_tmp) as (ingest, holder, sender):
        vid = int(await ingest.pool.fetchval(
            "INSERT INTO vehicles (plate, phone) VALUES ('沪A00303', '13900000303') RETURNING id"
        ))  # fmt: skip
        started = time.monotonic()
        with pytest.raises(CommandFailed) as info:
            await sender.send(vid, Text("hi"))
        assert info.value.reason == OFFLINE and time.monotonic() - started < 1.0

        # A holder left by a killed process (its listening connection is gone): offline too.
        await mailbox.open_session(ingest.pool, vid, "0123456789abcdef")
        with pytest.raises(CommandFailed) as info:
            await sender.send(vid, Text("hi"))
        assert info.value.reason == OFFLINE
        assert await mailbox.clear_sessions(ingest.pool) == 1  # what a starting server does

        # Connected, but it never answers: a timeout for the sender, recorded as such.
        terminal, held = await _online(ingest, "13900000304", "沪A00304")
        started = time.monotonic()
        with pytest.raises(CommandFailed) as info:
            await asyncio.gather(sender.send(held, Text("hi"), timeout=0.5), terminal.receive())
        assert info.value.reason == TIMEOUT and 0.5 <= time.monotonic() - started < 3.0
        assert await ingest.pool.fetchval("SELECT result FROM commands") == TIMEOUT

        # A parameter the terminal's protocol has no id for is refused by its end, not sent.
        with pytest.raises(CommandFailed) as info:
            await sender.send(held, SetParameters({"no_such_setting": 1}))
        assert info.value.reason == INVALID and "no_such_setting" in info.value.detail
        assert await terminal.nothing_within(0.3)

        # The terminal goes: its holder row goes with it.
        await terminal.close()

        async def released() -> bool:
            return await mailbox.holder(ingest.pool, held) is None

        await eventually(released)
        assert not holder.holds(held)


@aio_test
async def test_a_holder_whose_listener_dropped_reconnects_and_executes(
    db_url: str, short_tmp: Path
) -> None:
    async with _gateways(db_url, short_tmp) as (ingest, holder, sender):
        terminal, vid = await _online(ingest, "13900000305", "沪A00305")
        assert holder.listener.conn is not None
        dropped = holder.listener.conn.get_server_pid()
        await ingest.pool.execute("SELECT pg_terminate_backend($1)", dropped)

        async def back() -> bool:
            conn = holder.listener.conn
            return conn is not None and conn.get_server_pid() != dropped

        await eventually(back)
        sent = asyncio.ensure_future(sender.send(vid, Text("恢复")))
        await _answer(terminal, 0x8300)
        assert (await sent).result == ACCEPTED
        await terminal.close()


@aio_test
async def test_a_request_posted_while_the_holder_was_deaf_is_found_on_reconnect(
    db_url: str, short_tmp: Path
) -> None:
    """A NOTIFY sent while the holder's listener is down is lost; the row is not."""
    async with _gateways(db_url, short_tmp) as (ingest, holder, _):
        terminal, vid = await _online(ingest, "13900000306", "沪A00306")
        import uuid

        from alerts.commands import command_to_json

        command_id = uuid.uuid4()
        await mailbox.request(
            ingest.pool, command_id, vid, holder.key, "nobody_listens",
            command_to_json(Text("补发")), 5.0,
        )  # fmt: skip
        await holder._connected()  # what the listener runs after a reconnection
        await _answer(terminal, 0x8300)

        async def done() -> mailbox.Outcome | None:
            return await mailbox.outcome(ingest.pool, command_id)

        assert (await eventually(done)).result == ACCEPTED
        await terminal.close()


@aio_test
async def test_a_terminal_moving_to_another_worker_is_routed_there(
    db_url: str, short_tmp: Path
) -> None:
    """Two ingest services with their gateways (two workers): the terminal reconnects to the
    second before the first notices it is gone; commands follow it, and the first worker's
    late goodbye does not unregister it."""
    async with (
        _gateways(db_url, short_tmp / "a") as (first, first_gw, sender),
        running_ingest(db_url, short_tmp / "b") as second,
    ):
        second_gw = CommandGateway(second.pool, db_url, second.service.terminals)
        await second_gw.start()
        try:
            old, vid = await _online(first, "13900000307", "沪A00307")
            assert await mailbox.holder(first.pool, vid) == first_gw.key
            moved = await Terminal.connect(second.port, "13900000307")
            await moved.login("沪A00307")

            async def on_second() -> bool:
                return await mailbox.holder(first.pool, vid) == second_gw.key

            await eventually(on_second)
            await old.close()  # the first worker's unbind comes after the move

            async def first_let_go() -> bool:
                return not first_gw.holds(vid)

            await eventually(first_let_go)
            await asyncio.sleep(0.2)  # its session write, if it were wrong, lands by now
            assert await mailbox.holder(first.pool, vid) == second_gw.key
            sent = asyncio.ensure_future(sender.send(vid, Text("跟随")))
            await _answer(moved, 0x8300)
            assert (await sent).result == ACCEPTED
            assert second_gw.stats["executed"] == 1 and first_gw.stats["executed"] == 0
            await moved.close()
        finally:
            await second_gw.stop()
