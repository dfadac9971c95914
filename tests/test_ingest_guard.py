"""Faults and attacks against the JT808 server (real server, real sockets, real PostGIS):
poisoned subpackages, takeover attempts, slow senders, floods of connections, registrations and
bad frames, NUL bytes in registrations. Each asserts the refusal and that a legitimate terminal
keeps working. Descriptor exhaustion is in test_serve_limits.py (it needs a subprocess)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import globalLogPublisher

from protocols.jt808 import (
    Authenticate,
    Heartbeat,
    MediaData,
    Register,
    encode_frame,
    encode_frames,
)
from protocols.jt808.framing import unescape, wrap
from tests.aio import aio_test
from tests.ingest_harness import Ingest, running_ingest
from tests.terminal_client import Terminal, report


def registration(plate: str, terminal_id: str = "T0001", maker: str = "FWTST") -> Register:
    return Register(province=31, city=115, manufacturer=maker, model="T-1",
                    terminal_id=terminal_id, plate_color=2, plate=plate)  # fmt: skip


def media(size: int) -> MediaData:
    return MediaData(media_id=7, media_type=0, media_format=0, event=1, channel=1,
                     location=report(0), data=bytes(i % 251 for i in range(size)))  # fmt: skip


def poisoned_parts(phone: str, parts: int = 300) -> list[bytes]:
    """A 0x0801 announcing ``parts`` parts (as in the probe that stopped the sweep)."""
    frames = encode_frames(media(parts * 8 - 36), phone=phone, serial=100, max_body=8)
    assert len(frames) == parts
    return frames


def patched(frame: bytes, at: int, data: bytes) -> bytes:
    """``frame`` with the unescaped bytes at ``at`` (0 = the message id) replaced by ``data``,
    its check code recomputed: frames no encoder would write."""
    payload = bytearray(unescape(frame[1:-1])[0][:-1])
    payload[at : at + len(data)] = data
    return wrap(bytes(payload))


@contextlib.contextmanager
def log_events() -> Iterator[list[dict[str, Any]]]:
    """Every Twisted log event emitted inside the block."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def texts(events: list[dict[str, Any]]) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events]


async def check_legitimate(ingest: Ingest, phone: str, plate: str) -> None:
    """A terminal that logs in and gets a report acknowledged and stored."""
    terminal = await Terminal.connect(ingest.port, phone)
    await terminal.login(plate)
    serial = await terminal.send(report(1))
    ack = await terminal.receive()
    assert (ack.msg_id, ack.body.reply_serial, ack.body.result) == (0x8001, serial, 0)
    assert await ingest.pool.fetchval(
        "SELECT count(*) FROM positions p JOIN vehicles v ON v.id = p.vehicle_id"
        " WHERE v.phone = $1", phone.lstrip("0"),
    ) == 1  # fmt: skip
    await terminal.close()


# ------------------------------------------------------------------- subpackages


@aio_test
async def test_subpackages_before_authentication_are_neither_acked_nor_held(
    db_url: str, short_tmp: Path
) -> None:
    async with running_ingest(db_url, short_tmp) as ingest:
        attacker = await Terminal.connect(ingest.port, "13911110001")
        for part in poisoned_parts("13911110001")[:20]:
            await attacker.send_raw(part)
        batch = encode_frames(media(3000), phone="13911110001", serial=1, max_body=512)
        await attacker.send_raw(batch[0])  # media parts: no 0x8800 and no ack either
        assert await attacker.nothing_within(0.5)
        # Any other subpackaged message, even of a pre-auth id: refused, not held.
        for msg_id in (0x0200, 0x0002):
            await attacker.send_raw(patched(batch[1], 0, msg_id.to_bytes(2, "big")))
            nack = await attacker.receive()
            assert (nack.body.reply_id, nack.body.result) == (msg_id, 1)
        (conn,) = ingest.service.connections
        assert not conn.reassembler.pending and ingest.service.reassembly_budget.used == 0
        assert ingest.metrics.value("fleetwatch_unauthenticated_frames_total") == 23
        await check_legitimate(ingest, "13911110002", "沪A11002")


@aio_test
async def test_poisoned_subpackage_after_authentication_is_rerequested_in_fitting_requests(
    db_url: str, short_tmp: Path
) -> None:
    """300 parts announced, one sent: the missing 299 are asked for in requests of at most 255
    (the 2013 count is a byte), then dropped; the sweep keeps closing connections after it."""
    async with running_ingest(db_url, short_tmp, reassembly_timeout=0.3,
                              pre_auth_timeout=1.0) as ingest:  # fmt: skip
        terminal = await Terminal.connect(ingest.port, "13911110003")
        await terminal.login("沪A11003")
        await terminal.send_raw(poisoned_parts("13911110003")[0])
        assert (await terminal.receive()).body.result == 0  # the part is acknowledged
        assert ingest.service.reassembly_budget.used > 0
        first, second = await terminal.receive(3), await terminal.receive(3)
        assert (first.msg_id, second.msg_id) == (0x8003, 0x8003)
        assert first.body.ids == list(range(2, 257)) and second.body.ids == list(range(257, 301))
        assert first.body.orig_serial == second.body.orig_serial == 100
        for _ in range(2 * 2):  # two more of the default 3 requests, then it is given up
            await terminal.receive(3)
        for _ in range(50):
            if ingest.metrics.value("fleetwatch_subpackage_abandoned_total"):
                break
            await asyncio.sleep(0.1)
        assert ingest.metrics.value("fleetwatch_subpackage_abandoned_total") == 1
        assert ingest.service.reassembly_budget.used == 0
        # The sweep is alive: a silent connection is closed by the pre-auth timeout.
        silent = await Terminal.connect(ingest.port, "13911110004")
        assert await silent.closed_by_server(5)
        serial = await terminal.send(report(2))
        assert (await terminal.receive()).body.reply_serial == serial


@aio_test
async def test_reassembly_is_bounded_per_connection(db_url: str, short_tmp: Path) -> None:
    async with running_ingest(db_url, short_tmp, reassembly_bytes=4000) as ingest:
        terminal = await Terminal.connect(ingest.port, "13911110005")
        await terminal.login("沪A11005")
        parts = encode_frames(media(9000), phone="13911110005", serial=200, max_body=1000)
        results = []
        for part in parts[:5]:
            await terminal.send_raw(part)
            results.append((await terminal.receive()).body.result)
        assert results == [0, 0, 0, 2, 0]  # the 4th passes 4000 bytes: the message is dropped
        (conn,) = [c for c in ingest.service.connections if c.vehicle is not None]
        assert conn.reassembler.bytes <= 4000
        await check_legitimate(ingest, "13911110006", "沪A11006")


# ------------------------------------------------------------------- takeover


async def _provision(ingest: Ingest, phone: str, plate: str) -> None:
    await ingest.pool.execute(
        "INSERT INTO vehicles (plate, plate_color, phone, class) VALUES ($1, 2, $2, 'coach')",
        plate, phone,
    )  # fmt: skip


async def _identity(ingest: Ingest, phone: str) -> tuple[Any, ...]:
    row = await ingest.pool.fetchrow(
        "SELECT manufacturer, terminal_id, auth_code, plate FROM vehicles WHERE phone = $1", phone
    )
    return tuple(row)


@pytest.mark.parametrize("policy", ["known", "open"])
@aio_test
async def test_takeover_attempts_are_refused_and_the_real_terminal_keeps_working(
    db_url: str, short_tmp: Path, policy: str
) -> None:
    async with running_ingest(db_url, short_tmp, policy=policy) as ingest:
        phone, plate = "13922220001", "沪A22001"
        if policy == "known":
            await _provision(ingest, phone, plate)
        real = await Terminal.connect(ingest.port, phone)
        code = await real.login(plate)
        before = await _identity(ingest, phone)
        attacker = await Terminal.connect(ingest.port, phone)
        # Online: even the identical identity gets no code (the live session is never touched).
        for body in (registration(""), registration(plate), registration(plate, "EVIL01"),
                     registration("", "T0001", "OTHER")):  # fmt: skip
            await attacker.send(body)
            answer = await attacker.receive()
            assert (answer.msg_id, answer.body.result, answer.body.auth_code) == (0x8100, 3, "")
        other_phone = await Terminal.connect(ingest.port, "13922229999")
        await other_phone.send(registration(plate, "EVIL02"))
        assert (await other_phone.receive()).body.result == 1  # vehicle already registered
        await attacker.send(Authenticate(auth_code="0" * 16))
        assert (await attacker.receive()).body.result == 1
        serial = await real.send(report(0))  # the real terminal was neither closed nor revoked
        assert (await real.receive()).body.reply_serial == serial
        assert await _identity(ingest, phone) == before
        await real.close()
        await asyncio.sleep(0.2)
        # Offline: another terminal id is still refused; the same terminal gets its own code.
        await attacker.send(registration("", "EVIL01"))
        assert (await attacker.receive()).body.result == 3
        await attacker.send(registration(plate))
        again = await attacker.receive()
        assert (again.body.result, again.body.auth_code) == (0, code)
        assert await _identity(ingest, phone) == before
        count = await ingest.pool.fetchval("SELECT count(*) FROM vehicles")
        assert count == 1


@aio_test
async def test_unbind_lets_a_new_terminal_register(
    db_url: str, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fleetwatch.cli import main

    async with running_ingest(db_url, short_tmp, policy="known") as ingest:
        phone, plate = "13922220002", "沪A22002"
        await _provision(ingest, phone, plate)
        old = await Terminal.connect(ingest.port, phone)
        old_code = await old.login(plate)
        await old.close()
        new = await Terminal.connect(ingest.port, phone)
        await new.send(registration(plate, "NEW001"))
        assert (await new.receive()).body.result == 3
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["vehicles", "list", "--db", db_url]) == 0
        assert "terminal FWTST/T0001" in capsys.readouterr().out
        status = await asyncio.to_thread(main, ["vehicles", "unbind", plate, "--db", db_url])
        assert status == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert "unbound vehicle" in out and "terminal FWTST" not in out
        await new.send(registration(plate, "NEW001"))
        answer = await new.receive()
        assert answer.body.result == 0 and answer.body.auth_code != old_code
        assert (await _identity(ingest, phone))[:2] == ("FWTST", "NEW001")
        stale = await Terminal.connect(ingest.port, phone)
        await stale.send(Authenticate(auth_code=old_code))
        assert (await stale.receive()).body.result == 1  # the old terminal's code is gone
        missing = await asyncio.to_thread(main, ["vehicles", "unbind", "沪X00000", "--db", db_url])
        assert missing == 1 and "no vehicle with plate" in capsys.readouterr().err


# ------------------------------------------------------------------- odd registrations


@aio_test
async def test_nul_bytes_and_odd_strings_in_registration_get_a_proper_answer(
    db_url: str, short_tmp: Path
) -> None:
    async with running_ingest(db_url, short_tmp) as ingest:
        terminal = await Terminal.connect(ingest.port, "13933330001")
        cases = [
            (registration("沪A\x0033001"), 2),  # NUL inside the plate
            (registration("沪A33\x01001"), 2),  # a control character
            (registration("沪A33001", "T\x00\x00X1"), 4),  # NUL inside the terminal id
            (registration("沪A33001", "\x00\x00\x00"), 4),  # no terminal id at all
            (registration("沪A33001", "T0001", "FW\x07T"), 4),  # a bell in the maker
        ]
        with log_events() as events:
            for body, result in cases:
                await terminal.send(body)
                answer = await terminal.receive()
                assert (answer.msg_id, answer.body.result, answer.body.auth_code) == (
                    0x8100, result, ""
                )  # fmt: skip
            frame = encode_frame(registration("沪A33001"), phone="13933330001", serial=50)
            plate_at = 12 + 2 + 2 + 5 + 20 + 7 + 1  # header, province, city, maker, model, id
            await terminal.send_raw(patched(frame, plate_at, b"\xff\x20"))  # not GBK
            assert (await terminal.receive()).body.result == 2
        assert not [e for e in events if e.get("log_failure") is not None]
        assert await ingest.pool.fetchval("SELECT count(*) FROM vehicles") == 0
        await terminal.send(registration("沪A33001\x00\x00\x00"))  # NUL padding is fine
        answer = await terminal.receive()
        assert answer.body.result == 0
        assert await ingest.pool.fetchval("SELECT plate FROM vehicles") == "沪A33001"


# ------------------------------------------------------------------- slow and silent


@aio_test
async def test_slow_senders_and_silent_connections_are_closed(db_url: str, short_tmp: Path) -> None:
    async with running_ingest(db_url, short_tmp, frame_timeout=0.6, idle_timeout=1.2,
                              pre_auth_timeout=30) as ingest:  # fmt: skip
        legit = await Terminal.connect(ingest.port, "13944440001")
        await legit.login("沪A44001")
        trickle = await Terminal.connect(ingest.port, "13944440002")
        frame = encode_frame(Heartbeat(), phone="13944440002", serial=1)
        garbage = await Terminal.connect(ingest.port, "13944440003")
        closed: dict[str, float] = {}
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(40):  # 4 s: one byte every 0.1 s, heartbeats every 0.3 s
            for name, conn, data in (("trickle", trickle, frame[i % len(frame):][:1]),
                                     ("garbage", garbage, b"\x00")):  # fmt: skip
                if name not in closed:
                    try:
                        await conn.send_raw(data)
                    except ConnectionError:
                        closed[name] = loop.time() - start
            if i % 3 == 0:
                await legit.send(Heartbeat())
                assert (await legit.receive()).body.result == 0
            await asyncio.sleep(0.1)
            if len(closed) == 2:
                break
        for name, conn in (("trickle", trickle), ("garbage", garbage)):
            if name not in closed:
                assert await conn.closed_by_server(0.5), name
        reasons = ingest.metrics.counters
        assert reasons[("fleetwatch_disconnects_total", (("reason", "slow sender"),))] == 1
        assert reasons[("fleetwatch_disconnects_total", (("reason", "idle timeout"),))] == 1
        serial = await legit.send(report(3))
        assert (await legit.receive()).body.reply_serial == serial


@aio_test
async def test_unauthenticated_connections_are_closed_after_the_pre_auth_timeout(
    db_url: str, short_tmp: Path
) -> None:
    async with running_ingest(db_url, short_tmp, pre_auth_timeout=0.8) as ingest:
        lurker = await Terminal.connect(ingest.port, "13944440004")
        loop = asyncio.get_running_loop()
        start = loop.time()
        with contextlib.suppress(ConnectionError):
            for _ in range(30):  # heartbeats do not make it authenticated
                await lurker.send(Heartbeat())
                await lurker.receive(1)
                await asyncio.sleep(0.1)
        assert 0.7 < loop.time() - start < 2.5
        await check_legitimate(ingest, "13944440005", "沪A44005")


# ------------------------------------------------------------------- floods


async def _connect_from(port: int, source: str) -> tuple[asyncio.StreamReader, Any]:
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


@aio_test
async def test_connections_per_source_address_are_capped(db_url: str, short_tmp: Path) -> None:
    async with running_ingest(db_url, short_tmp, max_per_address=3) as ingest:
        held = [await _connect_from(ingest.port, "127.0.0.5") for _ in range(3)]
        reader, writer = await _connect_from(ingest.port, "127.0.0.5")
        assert await asyncio.wait_for(reader.read(100), 2) == b""  # closed at once
        writer.close()
        ok_reader, ok_writer = await _connect_from(ingest.port, "127.0.0.6")
        ok_writer.write(encode_frame(Heartbeat(), phone="13955550001", serial=1))
        assert (await asyncio.wait_for(ok_reader.read(100), 2))[:3] == b"\x7e\x80\x01"
        ok_writer.close()
        assert ingest.metrics.value("fleetwatch_connections_refused_total",
                                    reason="per_address") == 1  # fmt: skip
        held[0][1].close()
        await asyncio.sleep(0.2)  # the slot frees when the connection closes
        reader, writer = await _connect_from(ingest.port, "127.0.0.5")
        writer.write(encode_frame(Heartbeat(), phone="13955550002", serial=1))
        assert (await asyncio.wait_for(reader.read(100), 2))[:3] == b"\x7e\x80\x01"
        for _, w in [*held[1:], (reader, writer)]:
            w.close()


@aio_test
async def test_registrations_are_rate_limited_under_open(db_url: str, short_tmp: Path) -> None:
    async with running_ingest(db_url, short_tmp, registration_rate=20) as ingest:
        flood = await Terminal.connect(ingest.port, "0")
        for i in range(120):  # new vehicles as fast as the socket takes them
            flood.phone = f"1396666{i:04d}"
            await flood.send(registration(f"沪B{i:05d}"))
        answers = []
        with contextlib.suppress(TimeoutError):
            while True:
                answers.append(await flood.receive(1.0))
        assert 45 <= len(answers) <= 60  # a burst of 50 from one address, 2 a second after
        assert await ingest.pool.fetchval("SELECT count(*) FROM vehicles") == len(answers)
        assert ingest.metrics.value("fleetwatch_registrations_total",
                                    result="rate_limited") == 120 - len(answers)  # fmt: skip
        other = await _connect_from(ingest.port, "127.0.0.7")  # another address still may
        other[1].write(encode_frame(registration("沪C00001"), phone="13966669999", serial=1))
        assert (await asyncio.wait_for(other[0].read(100), 2))[:3] == b"\x7e\x81\x00"
        other[1].close()


@aio_test
async def test_bad_frame_logging_is_rate_limited(db_url: str, short_tmp: Path) -> None:
    async with running_ingest(db_url, short_tmp) as ingest:
        terminal = await Terminal.connect(ingest.port, "13977770001")
        good = encode_frame(Heartbeat(), phone="13977770001", serial=1)
        bad = good[:-2] + bytes([good[-2] ^ 0x55]) + good[-1:]
        with log_events() as events:
            await terminal.send_raw(bad * 500)
            for _ in range(500):
                await terminal.receive()  # each one is answered "message error"
            await terminal.close()
            await asyncio.sleep(0.2)
        lines = texts(events)
        assert len([t for t in lines if "bad frame from" in t]) == 5
        assert any("500 bad frames or chunks; 495 were not logged" in t for t in lines)
        assert len(lines) < 20
        assert ingest.metrics.value("fleetwatch_decode_errors_total", kind="checksum") == 500


@aio_test
async def test_a_stranger_switching_layouts_is_answered_in_each(
    db_url: str, short_tmp: Path
) -> None:
    """Random bytes between flags name a 2019 (20-digit phone) and then a 2013 header: the
    answer to the second used to be encoded with the first's phone, raised, and dropped the
    connection with a critical traceback."""
    from protocols.jt808 import V2019

    async with running_ingest(db_url, short_tmp) as ingest:
        terminal = await Terminal.connect(ingest.port, "13900000000")
        with log_events() as events:
            await terminal.send_raw(encode_frame(Heartbeat(), phone="98765432109876543210",
                                                 serial=1, version=V2019))  # fmt: skip
            first = await terminal.receive()
            await terminal.send_raw(encode_frame(Heartbeat(), phone="13900000010", serial=2))
            second = await terminal.receive()
        assert (first.version, first.phone, first.body.result) == (V2019, "98765432109876543210", 0)
        assert (second.version, second.phone, second.body.result) == (2013, "013900000010", 0)
        assert not [e for e in events if e.get("log_failure") is not None]


@aio_test
async def test_frames_waiting_for_the_database_are_bounded_then_all_answered(
    db_url: str, short_tmp: Path
) -> None:
    """While a registration waits for the database the connection is not read past a small
    backlog (a client cannot queue unbounded frames behind a slow answer); nothing is lost."""
    import asyncpg

    async with running_ingest(db_url, short_tmp) as ingest:
        blocker = await asyncpg.connect(db_url)
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE vehicles IN ACCESS EXCLUSIVE MODE")
        terminal = await Terminal.connect(ingest.port, "13999990001")
        await terminal.send(registration("沪A99001"))
        await asyncio.sleep(0.2)  # the registration is waiting for its lock
        serials = [await terminal.send(Heartbeat()) for _ in range(300)]
        await asyncio.sleep(0.3)
        (conn,) = ingest.service.connections
        assert conn._waiting and conn._held and 64 < len(conn._backlog) <= 300
        await tx.rollback()
        await blocker.close()
        assert (await terminal.receive()).msg_id == 0x8100
        acks = [await terminal.receive() for _ in serials]
        assert [a.body.reply_serial for a in acks] == serials
        assert not conn._held
