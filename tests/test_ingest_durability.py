"""Nothing acknowledged is lost: the database stopped mid-stream, subpackages re-requested."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg

from protocols.jt808 import MediaData, encode_frames
from store.cluster import EmbeddedCluster
from store.migrations import migrate
from tests.aio import aio_test
from tests.ingest_harness import running_ingest
from tests.terminal_client import Terminal, report

PHONE = "13912340000"


async def _stream(terminal: Terminal, indexes: range, window: int = 8) -> set[int]:
    """Send reports with up to ``window`` unacknowledged; return the acked serials."""
    acked: set[int] = set()
    sent: list[int] = []
    for i in indexes:
        sent.append(await terminal.send(report(i), serial=i))
        while len(sent) - len(acked) >= window:
            acked.add((await terminal.receive(10)).body.reply_serial)
    while len(acked) < len(sent):
        acked.add((await terminal.receive(10)).body.reply_serial)
    return acked


@aio_test
async def test_database_stopped_mid_stream_loses_nothing(short_tmp: Path) -> None:
    # Durable like production: a non-durable cluster loses its last commits on a crash.
    cluster = EmbeddedCluster(short_tmp / "pg", durable=True)
    await asyncio.to_thread(cluster.start)
    try:
        conn = await asyncpg.connect(cluster.url)
        await migrate(conn)
        await conn.close()
        async with running_ingest(
            cluster.url, short_tmp, max_age=0.02, db_timeout=1.0, retry_interval=0.2
        ) as ingest:
            terminal = await Terminal.connect(ingest.port, PHONE)
            await terminal.login("沪A40000")
            acked = await _stream(terminal, range(0, 100))
            await asyncio.to_thread(cluster.stop, "immediate")
            acked |= await _stream(terminal, range(100, 200))  # acked from the spool
            assert ingest.writer.stats.rows_spooled >= 100
            acked |= await _stream(terminal, range(150, 160))  # retransmissions while down
            await asyncio.to_thread(cluster.start)
            acked |= await _stream(terminal, range(200, 300))
            deadline = time.monotonic() + 30
            while not ingest.writer.spool.empty and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert ingest.writer.spool.empty, "the spool was not replayed"
            assert acked == set(range(300))
            rows = await ingest.pool.fetch(
                "SELECT serial, count(*) AS n FROM positions GROUP BY serial ORDER BY serial"
            )
            assert [r["serial"] for r in rows] == list(range(300))
            assert all(r["n"] == 1 for r in rows)
            assert ingest.writer.stats.rows_replayed >= 100
    finally:
        await asyncio.to_thread(cluster.stop, "immediate")


@aio_test
async def test_lost_subpackage_is_requested_and_completed(db_url: str, short_tmp: Path) -> None:
    media = MediaData(
        media_id=9001,
        media_type=0,
        media_format=0,
        event=1,
        channel=1,
        location=report(0),
        data=bytes(range(256)) * 12,
    )
    async with running_ingest(db_url, short_tmp, reassembly_timeout=0.3) as ingest:
        terminal = await Terminal.connect(ingest.port, PHONE)
        await terminal.login("沪A40001")
        parts = encode_frames(media, phone=PHONE, serial=1000, max_body=1000)
        assert len(parts) == 4
        for i in (0, 1, 3):
            await terminal.send_raw(parts[i])
            assert (await terminal.receive()).body.result == 0  # each part is acknowledged
        request = await terminal.receive(5)  # after the reassembly timeout
        assert request.msg_id == 0x8003
        assert (request.body.orig_serial, request.body.ids) == (1000, [3])
        await terminal.send_raw(parts[2])
        part_ack = await terminal.receive()
        assert (part_ack.msg_id, part_ack.body.reply_serial) == (0x8001, 1002)
        done = await terminal.receive()
        assert done.msg_id == 0x8800
        assert (done.body.media_id, done.body.missing) == (9001, [])
        row = await ingest.pool.fetchrow("SELECT path, size, media_format FROM media")
        assert (row["size"], row["media_format"]) == (len(media.data), 0)
        assert (short_tmp / "media" / row["path"]).read_bytes() == media.data


@aio_test
async def test_subpackaged_batch_is_acked_part_by_part_once_durable(
    db_url: str, short_tmp: Path
) -> None:
    from protocols.jt808 import BatchLocation

    batch = BatchLocation(batch_type=1, items=[report(i) for i in range(60)])
    async with running_ingest(db_url, short_tmp) as ingest:
        terminal = await Terminal.connect(ingest.port, PHONE)
        await terminal.login("沪A40002")
        parts = encode_frames(batch, phone=PHONE, serial=2000, max_body=1000)
        assert len(parts) >= 3
        for part in parts[:-1]:
            await terminal.send_raw(part)
        assert await terminal.nothing_within(0.5)  # nothing durable yet: no part is acked
        await terminal.send_raw(parts[-1])
        acks = [await terminal.receive() for _ in parts]
        assert [a.body.reply_serial for a in acks] == [2000 + i for i in range(len(parts))]
        assert {(a.body.reply_id, a.body.result) for a in acks} == {(0x0704, 0)}
        assert await ingest.pool.fetchval("SELECT count(*) FROM positions") == 60
