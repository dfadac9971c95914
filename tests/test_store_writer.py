"""``store.writer``: both ways a batch goes in (arrays, COPY) store the same thing; the writer
defers and coalesces last-position updates, and a start-up refresh mends what a crash lost."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from geo.position import Position
from store.spool import Spool
from store.writer import (
    ARRAY_ROWS,
    PositionWriter,
    insert_rows,
    position_row,
    refresh_last_positions,
)
from tests.aio import aio_test

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


async def _vehicles(conn: asyncpg.Connection, n: int) -> list[int]:
    rows = await conn.fetch(
        "INSERT INTO vehicles (plate, phone) SELECT 'W' || k, '1380000' || lpad(k::text, 4, '0') "
        "FROM generate_series(1, $1) k RETURNING id",
        n,
    )
    return [r["id"] for r in rows]


def _fix(vid: int, second: int, serial: int, *, batch: bool = False, **extras: object) -> Position:
    return Position(
        vehicle_id=vid, fix_time=T0 + timedelta(seconds=second), received_time=T0,
        lon=116.0 + second / 1000, lat=39.5, speed_kmh=50.0 + second, heading=90,
        altitude_m=40, alarm_word=1 if second == 30 else 0, status_word=3, valid=True,
        serial=serial,
        batch=batch, extras=dict(extras),
    )  # fmt: skip


@pytest.mark.parametrize("by_arrays", [True, False], ids=["arrays", "copy"])
@aio_test
async def test_dedupe_late_flags_and_last_positions(db_url: str, by_arrays: bool) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        a, b = await _vehicles(conn, 2)
        first = [_fix(a, 10, 1, satellites=9), _fix(a, 30, 2), _fix(b, 5, 7, batch=True)]
        await insert_rows(conn, [position_row(p) for p in first], by_arrays)
        second = [
            _fix(a, 30, 2),  # a retransmission: dropped
            _fix(a, 20, 3),  # behind a's newest fix: late, and last_positions keeps 30 s
            _fix(b, 6, 8),  # b moves forward
        ]
        await insert_rows(conn, [position_row(p) for p in second], by_arrays)
        rows = await conn.fetch(
            "SELECT vehicle_id, extract(epoch FROM fix_time - $1)::int AS s, serial, late, batch,"
            " ST_X(geom) AS lon, speed_kmh, alarm, extras FROM positions ORDER BY vehicle_id, s",
            T0,
        )
        assert [(r["vehicle_id"], r["s"], r["serial"], r["late"], r["batch"]) for r in rows] == [
            (a, 10, 1, False, False),
            (a, 20, 3, True, False),
            (a, 30, 2, False, False),
            (b, 5, 7, True, True),  # a batch (0x0704) row is late data by definition
            (b, 6, 8, False, False),
        ]
        assert rows[0]["lon"] == pytest.approx(116.01)
        assert rows[0]["extras"] == '{"satellites": 9}'
        assert rows[2]["alarm"] == 1 and rows[2]["speed_kmh"] == 80.0
        last = await conn.fetch(
            "SELECT vehicle_id, extract(epoch FROM fix_time - $1)::int AS s, ST_X(geom) AS lon "
            "FROM last_positions ORDER BY vehicle_id",
            T0,
        )
        assert [(r["vehicle_id"], r["s"]) for r in last] == [(a, 30), (b, 6)]
        assert last[0]["lon"] == pytest.approx(116.03)
    finally:
        await conn.close()


@aio_test
async def test_small_batches_go_as_arrays_and_large_ones_by_copy(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        (vid,) = await _vehicles(conn, 1)
        staged = "SELECT to_regclass('pg_temp.positions_in') IS NOT NULL"
        small = [position_row(_fix(vid, s, s)) for s in range(ARRAY_ROWS)]
        await insert_rows(conn, small)
        assert not await conn.fetchval(staged)  # no staging table: one statement over arrays
        large = [position_row(_fix(vid, s, s)) for s in range(ARRAY_ROWS, 2 * ARRAY_ROWS + 1)]
        await insert_rows(conn, large)
        assert await conn.fetchval(staged)
        assert await conn.fetchval("SELECT count(*) FROM positions_in") == 0  # emptied
        assert await conn.fetchval("SELECT count(*) FROM positions") == 2 * ARRAY_ROWS + 1
    finally:
        await conn.close()


async def _last(conn: asyncpg.Connection) -> list[tuple[int, int]]:
    rows = await conn.fetch(
        "SELECT vehicle_id, extract(epoch FROM fix_time - $1)::int AS s FROM last_positions "
        "ORDER BY vehicle_id",
        T0,
    )
    return [(r["vehicle_id"], r["s"]) for r in rows]


async def _await_last(conn: asyncpg.Connection, vehicles: int) -> list[tuple[int, int]]:
    """The last positions once ``vehicles`` rows are there (or after 3 s)."""
    deadline = time.monotonic() + 3
    while len(last := await _last(conn)) < vehicles and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return last


async def _count_last_writes(conn: asyncpg.Connection, each: str) -> None:
    """Count writes to ``last_positions`` in ``lp_writes``, FOR EACH ``each`` (ROW, STATEMENT;
    an upsert statement fires both INSERT and UPDATE statement triggers, so INSERT alone)."""
    events = "INSERT OR UPDATE" if each == "ROW" else "INSERT"
    await conn.execute(f"""
        CREATE TABLE lp_writes (n integer);
        CREATE FUNCTION count_lp() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN INSERT INTO lp_writes VALUES (1); RETURN NULL; END $$;
        CREATE TRIGGER lp_count AFTER {events} ON last_positions
            FOR EACH {each} EXECUTE FUNCTION count_lp();
    """)  # fmt: skip


@pytest.mark.parametrize("by_arrays", [True, False], ids=["arrays", "copy"])
@aio_test
async def test_known_late_marks_rows_last_positions_miss(db_url: str, by_arrays: bool) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        (a,) = await _vehicles(conn, 1)
        await insert_rows(conn, [position_row(_fix(a, 30, 1))], by_arrays, last=False)
        rows = [position_row(_fix(a, s, s)) for s in (20, 21, 40)]
        await insert_rows(conn, rows, by_arrays, last=False, known_late=[True, False, False])
        late = await conn.fetch("SELECT serial, late FROM positions ORDER BY serial")
        # 21 is behind 30 too, but nothing says so: last=False left last_positions empty
        assert [(r["serial"], r["late"]) for r in late] == [(1, False), (20, True), (21, False),
                                                            (40, False)]  # fmt: skip
        assert await _last(conn) == []
    finally:
        await conn.close()


@aio_test
async def test_writer_flags_late_fixes_before_and_after_last_positions_move(
    db_url: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(db_url)
    writer = PositionWriter(lambda: asyncpg.connect(db_url), Spool(tmp_path / "spool"),
                            max_age=0.001, last_interval=0.3)  # fmt: skip
    writer.start()
    try:
        (a,) = await _vehicles(conn, 1)
        assert await writer.submit([_fix(a, 30, 1)]) == "db"
        assert await writer.submit([_fix(a, 20, 2)]) == "db"  # the writer still holds 30
        assert await _await_last(conn, 1) == [(a, 30)]
        assert await writer.submit([_fix(a, 25, 3), _fix(a, 31, 4)]) == "db"  # 25: by the table
        late = await conn.fetch("SELECT serial, late FROM positions ORDER BY serial")
        assert [(r["serial"], r["late"]) for r in late] == [(1, False), (2, True), (3, True),
                                                            (4, False)]  # fmt: skip
    finally:
        await writer.close()
        await conn.close()


@aio_test
async def test_writer_coalesces_last_positions(db_url: str, tmp_path: Path) -> None:
    """Five flushes of one vehicle: the history has all five at once, ``last_positions`` moves
    once, to the newest, within ``last_interval``; nothing is written for it before."""
    conn = await asyncpg.connect(db_url)
    await _count_last_writes(conn, "ROW")
    writer = PositionWriter(lambda: asyncpg.connect(db_url), Spool(tmp_path / "spool"),
                            max_age=0.001, last_interval=0.5)  # fmt: skip
    writer.start()
    try:
        a, b = await _vehicles(conn, 2)
        started = time.monotonic()
        for k in range(5):  # one flush each: every submit waits for the one before
            assert await writer.submit([_fix(a, 10 + k, k), _fix(b, 5 - k, k)]) == "db"
        assert await conn.fetchval("SELECT count(*) FROM positions") == 10
        if time.monotonic() - started < 0.4:  # still inside the interval: nothing yet
            assert await _last(conn) == []
        assert await _await_last(conn, 2) == [(a, 14), (b, 5)]
        assert await conn.fetchval("SELECT count(*) FROM lp_writes") == 2  # one per vehicle
        assert await writer.submit([_fix(a, 15, 9)]) == "db"
    finally:
        await writer.close()  # writes what it still holds
        try:
            assert await _last(conn) == [(a, 15), (b, 5)]
            assert await conn.fetchval("SELECT count(*) FROM lp_writes") == 3
        finally:
            await conn.close()


@aio_test
async def test_refresh_brings_lagging_last_positions_up_to_the_history(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        a, b, c = await _vehicles(conn, 3)
        await insert_rows(conn, [position_row(_fix(v, 10, 1)) for v in (a, b)])
        # stored after the last positions moved (a crash lost the writer's deferred update)
        await insert_rows(conn, [position_row(_fix(a, 20, 2)), position_row(_fix(c, 7, 1)),
                                 position_row(_fix(b, 9, 2))], last=False)  # fmt: skip
        await insert_rows(conn, [position_row(_fix(c, 2, 5))], last=False)  # older than 7: late
        assert await refresh_last_positions(conn, T0) == "INSERT 0 2"  # a and c; b is newest
        assert await _last(conn) == [(a, 20), (b, 10), (c, 7)]
        assert await refresh_last_positions(conn, T0) == "INSERT 0 0"
        # only the history since ``since`` is looked at
        await insert_rows(conn, [position_row(_fix(b, 30, 3))], last=False)
        assert await refresh_last_positions(conn, T0 + timedelta(seconds=31)) == "INSERT 0 0"
        assert await _last(conn) == [(a, 20), (b, 10), (c, 7)]
    finally:
        await conn.close()


@pytest.mark.parametrize("when", ["due", "closing"])
@aio_test
async def test_writer_moves_last_positions_in_chunks(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """Five vehicles, two per statement: three statements, when due and when the writer closes."""
    monkeypatch.setattr("store.writer.LAST_CHUNK", 2)
    conn = await asyncpg.connect(db_url)
    await _count_last_writes(conn, "STATEMENT")
    writer = PositionWriter(lambda: asyncpg.connect(db_url), Spool(tmp_path / "spool"),
                            max_age=0.001, last_interval=0.1 if when == "due" else 60)  # fmt: skip
    writer.start()
    try:
        vehicles = await _vehicles(conn, 5)
        assert await writer.submit([_fix(v, 10, 1) for v in vehicles]) == "db"
        if when == "closing":
            await writer.close()
        assert await _await_last(conn, 5) == [(v, 10) for v in vehicles]
        assert await conn.fetchval("SELECT count(*) FROM lp_writes") == 3  # 2 + 2 + 1
    finally:
        await writer.close()
        await conn.close()


@aio_test
async def test_the_durable_feed_publishes_each_batch_once_after_its_acks(
    db_url: str, tmp_path: Path
) -> None:
    """Committed and spooled batches reach the subscribers once, each vehicle's fixes in
    fix-time order, after their submitters were told; the spool's replay into the database
    publishes nothing again."""
    conn = await asyncpg.connect(db_url)
    try:
        a, b = await _vehicles(conn, 2)
    finally:
        await conn.close()
    told: list[str] = []
    published: list[list[Position]] = []

    def subscriber(positions: list[Position]) -> None:
        told.append("published")
        published.append(list(positions))

    async def unreachable() -> asyncpg.Connection:
        raise OSError("database away")

    def group(positions: list[Position]) -> asyncio.Future[str]:
        future = writer.submit(positions)
        future.add_done_callback(lambda _: told.append("acked"))
        return future

    spool = tmp_path / "spool"
    writer = PositionWriter(unreachable, Spool(spool), max_age=0.05)
    writer.subscribe(subscriber)
    writer.start()
    try:
        spooled = [_fix(a, 20, 1), _fix(a, 10, 2), _fix(b, 5, 3)]  # a's out of order
        assert await group(spooled) == "spool"
        await asyncio.sleep(0.05)
    finally:
        await writer.close()
    assert told == ["acked", "published"]
    (first,) = published
    assert [(p.vehicle_id, p.serial) for p in first if p.vehicle_id == a] == [(a, 2), (a, 1)]
    assert sorted(p.serial for p in first) == [1, 2, 3]

    writer = PositionWriter(lambda: asyncpg.connect(db_url), Spool(spool), max_age=0.05)
    writer.subscribe(subscriber)
    writer.start()
    try:
        results = await asyncio.gather(group([_fix(a, 30, 4)]), group([_fix(b, 6, 5)]))
        await asyncio.sleep(0.1)
        assert writer.spool.empty and writer.stats.rows_replayed >= 3  # the new ones may queue
    finally:
        await writer.close()
    assert set(results) <= {"db", "spool"}
    assert sorted(p.serial for batch in published[1:] for p in batch) == [4, 5]  # not 1-3 again
    assert told[2:4] == ["acked", "acked"] and told[4:] == ["published"] * (len(told) - 4)
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM positions") == 5
    finally:
        await conn.close()
