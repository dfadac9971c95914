"""The JT808 server end to end: real sockets, real PostGIS."""

from __future__ import annotations

import asyncio
from datetime import UTC
from pathlib import Path

import asyncpg
import pytest

from protocols.jt808 import (
    V2019,
    Heartbeat,
    TerminalGeneralResponse,
    TextMessage,
    encode_frame,
)
from tests.aio import aio_test
from tests.ingest_harness import running_ingest
from tests.terminal_client import Terminal, report


async def _rows(pool: asyncpg.Pool, phone: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        """SELECT p.fix_time, p.serial, ST_X(p.geom) AS lon, ST_Y(p.geom) AS lat, p.speed_kmh,
                  p.extras, p.late
           FROM positions p JOIN vehicles v ON v.id = p.vehicle_id
           WHERE v.phone = $1 ORDER BY p.fix_time""",
        phone.lstrip("0"),
    )


@pytest.mark.parametrize("version", [2013, V2019])
@aio_test
async def test_register_authenticate_report(db_url: str, short_tmp: Path, version: int) -> None:
    async with running_ingest(db_url, short_tmp) as ingest:
        phone = "13912345678" if version == 2013 else "8613912345678"
        terminal = await Terminal.connect(ingest.port, phone, version)
        await terminal.login("沪A12345")
        for i in range(3):
            serial = await terminal.send(report(i))
            ack = await terminal.receive()
            assert ack.version == version
            assert (ack.msg_id, ack.body.reply_serial, ack.body.reply_id, ack.body.result) == (
                0x8001,
                serial,
                0x0200,
                0,
            )
        rows = await _rows(ingest.pool, phone)
        assert len(rows) == 3
        first = report(0)
        assert rows[0]["fix_time"] == first.time.astimezone(UTC)
        assert (rows[0]["lon"], rows[0]["lat"]) == pytest.approx((121.5, 31.2))
        assert rows[0]["speed_kmh"] == 40.0
        assert '"satellites": 12' in rows[0]["extras"]
        vehicle = await ingest.pool.fetchrow(
            "SELECT plate, provisioned, protocol_version FROM vehicles WHERE phone = $1",
            phone.lstrip("0"),
        )
        assert tuple(vehicle) == ("沪A12345", False, version)
        await terminal.close()


@aio_test
async def test_no_ack_before_the_row_exists(db_url: str, short_tmp: Path) -> None:
    # ack_deadline 10 s: no diversion to the spool (test_store_writer covers that path)
    async with running_ingest(db_url, short_tmp, max_age=0.05, db_timeout=10,
                              ack_deadline=10) as ingest:  # fmt: skip
        terminal = await Terminal.connect(ingest.port, "13900000001")
        await terminal.login("沪A00001")
        blocker = await asyncpg.connect(db_url)
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE positions IN ACCESS EXCLUSIVE MODE")
        await terminal.send(report(0))
        assert await terminal.nothing_within(1.5)  # the row cannot be written: no ack
        await tx.rollback()
        await blocker.close()
        ack = await terminal.receive()
        assert ack.msg_id == 0x8001 and ack.body.reply_id == 0x0200
        assert len(await _rows(ingest.pool, "13900000001")) == 1
        assert ingest.writer.stats.rows_spooled == 0


@aio_test
async def test_nothing_accepted_before_authentication(db_url: str, short_tmp: Path) -> None:
    async with running_ingest(db_url, short_tmp) as ingest:
        terminal = await Terminal.connect(ingest.port, "13900000002")
        await terminal.send(report(0))
        nack = await terminal.receive()
        assert (nack.body.reply_id, nack.body.result) == (0x0200, 1)
        await terminal.send(Heartbeat())  # heartbeats are fine before authentication
        assert (await terminal.receive()).body.result == 0
        assert await ingest.pool.fetchval("SELECT count(*) FROM positions") == 0


@aio_test
async def test_wrong_auth_code_is_refused_and_repeated_failures_close(
    db_url: str, short_tmp: Path
) -> None:
    from protocols.jt808 import Authenticate

    async with running_ingest(db_url, short_tmp, max_auth_failures=3) as ingest:
        terminal = await Terminal.connect(ingest.port, "13900000003")
        answer = await terminal.register("沪A00003")
        assert answer.body.result == 0
        for _ in range(2):
            await terminal.send(Authenticate(auth_code="not-the-code"))
            assert (await terminal.receive()).body.result == 1
        await terminal.send(report(0))
        assert (await terminal.receive()).body.result == 1  # still not authenticated
        await terminal.send(Authenticate(auth_code="still-wrong"))
        assert (await terminal.receive()).body.result == 1
        assert await terminal.closed_by_server()
        assert ingest.metrics.value("fleetwatch_auth_failures_total") == 3


@aio_test
async def test_unknown_terminal_refused_under_known_policy(db_url: str, short_tmp: Path) -> None:
    async with running_ingest(db_url, short_tmp, policy="known") as ingest:
        await ingest.pool.execute(
            "INSERT INTO vehicles (plate, plate_color, phone, class) "
            "VALUES ('沪A00004', 2, '13900000004', 'coach')"
        )
        stranger = await Terminal.connect(ingest.port, "13900000099")
        answer = await stranger.register("沪A99999")
        assert (answer.msg_id, answer.body.result, answer.body.auth_code) == (0x8100, 4, "")
        assert await ingest.pool.fetchval("SELECT count(*) FROM vehicles") == 1
        known = await Terminal.connect(ingest.port, "013900000004")
        await known.login("沪A00004")
        await known.send(report(0))
        assert (await known.receive()).body.result == 0
        taken = await Terminal.connect(ingest.port, "13900000005")
        assert (await taken.register("沪A00004")).body.result == 1  # plate bound to another


@aio_test
async def test_malformed_frames_are_answered_or_dropped_and_the_session_goes_on(
    db_url: str, short_tmp: Path
) -> None:
    async with running_ingest(db_url, short_tmp) as ingest:
        terminal = await Terminal.connect(ingest.port, "13900000006")
        await terminal.login("沪A00006")
        good = encode_frame(report(1), phone="13900000006", serial=77)
        bad_check = good[:-2] + bytes([good[-2] ^ 0xFF]) + good[-1:]
        await terminal.send_raw(b"\x7e\x01\x02\x7e")  # too short: dropped
        await terminal.send_raw(b"junk before a flag" + bad_check)  # answered "message error"
        nack = await terminal.receive()
        assert (nack.body.reply_serial, nack.body.result) == (77, 2)
        await terminal.send_raw(good)
        ack = await terminal.receive()
        assert (ack.body.reply_serial, ack.body.result) == (77, 0)
        assert len(await _rows(ingest.pool, "13900000006")) == 1
        assert ingest.metrics.value("fleetwatch_decode_errors_total", kind="checksum") == 1
        # The short frame, and the junk (between two flags, so it is read as a frame).
        assert ingest.metrics.value("fleetwatch_decode_errors_total", kind="header") == 2


@aio_test
async def test_retransmission_is_stored_once(db_url: str, short_tmp: Path) -> None:
    async with running_ingest(db_url, short_tmp) as ingest:
        terminal = await Terminal.connect(ingest.port, "13900000007")
        await terminal.login("沪A00007")
        for _ in range(3):
            await terminal.send(report(5), serial=500)
            assert (await terminal.receive()).body.result == 0
        assert len(await _rows(ingest.pool, "13900000007")) == 1


@aio_test
async def test_second_connection_replaces_the_first(db_url: str, short_tmp: Path) -> None:
    async with running_ingest(db_url, short_tmp) as ingest:
        first = await Terminal.connect(ingest.port, "13900000008")
        code = await first.login("沪A00008")
        from protocols.jt808 import Authenticate

        second = await Terminal.connect(ingest.port, "13900000008")
        await second.send(Authenticate(auth_code=code))
        assert (await second.receive()).body.result == 0
        assert await first.closed_by_server()
        await second.send(report(0))
        assert (await second.receive()).body.result == 0


@aio_test
async def test_text_message_round_trip(db_url: str, short_tmp: Path) -> None:
    """The terminal end says a platform Text as 0x8300 (TTS + display, 2019 notice type) in
    the terminal's layout, and the terminal's 0x0001 comes back as the reply."""
    from alerts.commands import ACCEPTED, Text

    async with running_ingest(db_url, short_tmp) as ingest:
        terminal = await Terminal.connect(ingest.port, "13900000009", version=V2019)
        await terminal.login("沪A00009")
        text = "您已连续驾驶3.5小时，请注意休息"
        end = ingest.service.terminals
        (vehicle,) = end.connections
        assert end.holds(vehicle)
        reply = asyncio.ensure_future(end.execute(vehicle, Text(text), 5.0))
        command = await terminal.receive()
        assert command.msg_id == 0x8300 and command.version == V2019
        assert command.body == TextMessage(flag=0x08 | 0x04, text_type=1, text=text)
        await terminal.send(
            TerminalGeneralResponse(reply_serial=command.serial, reply_id=0x8300, result=0)
        )
        answer = await reply
        assert (answer.result, answer.serial) == (ACCEPTED, command.serial)
        assert ingest.metrics.value("fleetwatch_command_replies_total") == 1


@aio_test
async def test_command_to_offline_terminal_fails_at_once(db_url: str, short_tmp: Path) -> None:
    from alerts.commands import OFFLINE, CommandFailed, Text

    async with running_ingest(db_url, short_tmp) as ingest:
        assert not ingest.service.terminals.holds(12345)
        with pytest.raises(CommandFailed) as info:
            await ingest.service.terminals.execute(12345, Text("hi"), 5.0)
        assert info.value.reason == OFFLINE


@aio_test
async def test_command_times_out_without_reply(db_url: str, short_tmp: Path) -> None:
    from alerts.commands import TIMEOUT, CommandFailed, Text

    async with running_ingest(db_url, short_tmp) as ingest:
        terminal = await Terminal.connect(ingest.port, "13900000010")
        await terminal.login("沪A00010")
        (vehicle,) = ingest.service.terminals.connections
        sent = asyncio.ensure_future(ingest.service.terminals.execute(vehicle, Text("hi"), 0.3))
        assert (await terminal.receive()).msg_id == 0x8300
        with pytest.raises(CommandFailed) as info:
            await sent
        assert info.value.reason == TIMEOUT


@aio_test
async def test_batch_upload_is_stored_and_flagged(db_url: str, short_tmp: Path) -> None:
    from protocols.jt808 import BatchLocation

    async with running_ingest(db_url, short_tmp) as ingest:
        terminal = await Terminal.connect(ingest.port, "13900000011")
        await terminal.login("沪A00011")
        await terminal.send(report(100))
        assert (await terminal.receive()).body.result == 0
        await terminal.send(BatchLocation(batch_type=1, items=[report(i) for i in range(10)]))
        ack = await terminal.receive()
        assert (ack.body.reply_id, ack.body.result) == (0x0704, 0)
        rows = await _rows(ingest.pool, "13900000011")
        assert len(rows) == 11
        assert [r["late"] for r in rows] == [True] * 10 + [False]


@aio_test
async def test_gnss_detail_adds_quality_to_the_next_positions(db_url: str, short_tmp: Path) -> None:
    from protocols.jt808 import Transparent

    def sentence(body: str) -> str:
        checksum = 0
        for char in body.encode():
            checksum ^= char
        return f"${body}*{checksum:02X}\r\n"

    nmea = sentence("GPGGA,012345.00,3112.0000,N,12130.0000,E,1,09,0.9,12.3,M,8.0,M,,") + sentence(
        "GPRMC,012345.00,A,3112.0000,N,12130.0000,E,21.6,90.0,221126,,,A"
    )
    async with running_ingest(db_url, short_tmp) as ingest:
        terminal = await Terminal.connect(ingest.port, "13900000012")
        await terminal.login("沪A00012")
        await terminal.send(Transparent(data_type=0, data=nmea.encode()))
        assert (await terminal.receive()).body.result == 0
        await terminal.send(report(0))
        assert (await terminal.receive()).body.result == 0
        extras = (await _rows(ingest.pool, "13900000012"))[0]["extras"]
        assert '"gnss_hdop": 0.9' in extras and '"gnss_satellites": 9' in extras


@aio_test
async def test_acks_of_one_flush_go_out_in_one_send(db_url: str, short_tmp: Path) -> None:
    """Reports that arrive together are stored in one flush; their acks (each its own 0x8001,
    in order) leave in one send() rather than one each."""
    async with running_ingest(db_url, short_tmp) as ingest:
        terminal = await Terminal.connect(ingest.port, "13900000031")
        await terminal.login("沪A00031")
        frames = [encode_frame(report(i), phone="13900000031", serial=100 + i) for i in range(8)]
        await terminal.send_raw(b"".join(frames))
        acks = [await terminal.receive() for _ in range(8)]
        assert [(a.body.reply_serial, a.body.reply_id, a.body.result) for a in acks] == [
            (100 + i, 0x0200, 0) for i in range(8)
        ]
        assert len(await _rows(ingest.pool, "13900000031")) == 8
        assert ingest.metrics.value("fleetwatch_queued_sends_total") == 1
        await terminal.close()
