"""``store.writer``: both ways a batch goes in (arrays, COPY) store the same thing; the writer
defers and coalesces last-position updates, and a start-up refresh mends what a crash lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from asyncpg.transaction import Transaction

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


async def _await_replayed(spool: Spool) -> None:
    """Until the spool is empty (or 10 s)."""
    deadline = time.monotonic() + 10
    while not spool.empty and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _stalled_writer(
    db_url: str, tmp_path: Path, **options: float
) -> AsyncIterator[tuple[asyncpg.Connection, PositionWriter, int, Transaction]]:
    """A warm writer (one row of vehicle ``a`` committed) with ``positions`` then locked by
    another transaction (``stall``: roll it back to let the writer's statements through)."""
    conn = await asyncpg.connect(db_url)
    writer = PositionWriter(lambda: asyncpg.connect(db_url), Spool(tmp_path / "spool"),
                            max_age=0.001, ack_deadline=0.1, **options)  # fmt: skip
    writer.start()
    locker = await asyncpg.connect(db_url)
    try:
        (a,) = await _vehicles(conn, 1)
        assert await writer.submit([_fix(a, 0, 0)]) == "db"  # connected and warm
        stall = locker.transaction()
        await stall.start()
        await locker.execute("LOCK TABLE positions IN ACCESS EXCLUSIVE MODE")
        yield conn, writer, a, stall
    finally:
        await writer.close()
        await locker.close()
        await conn.close()


@aio_test
async def test_stalled_flush_is_acked_from_the_spool_and_stored_once(
    db_url: str, tmp_path: Path
) -> None:
    """A real stall (another transaction holds ``positions`` locked): every flush is acked from
    the spool within the deadline; the first one's statement commits once the lock goes, and
    the replay of its spooled copy stores nothing twice."""
    async with _stalled_writer(db_url, tmp_path, retry_interval=0.05) as (conn, writer, a, stall):
        took = []
        for k in range(1, 21):
            started = time.monotonic()
            assert await writer.submit([_fix(a, k, k), _fix(a, k + 100, k + 100)]) == "spool"
            took.append(time.monotonic() - started)
        assert writer.stats.writer_flushes_diverted >= 1
        assert max(took) < 0.1 + 0.4  # the deadline, plus an fsync on a busy machine
        assert sorted(took)[len(took) // 2] < 0.05  # once stuck, flushes do not even wait
        await stall.rollback()  # the stalled statement goes on and commits
        await _await_replayed(writer.spool)
        assert writer.spool.empty
        rows = await conn.fetch("SELECT serial, count(*) AS n FROM positions GROUP BY serial")
        assert sorted(r["serial"] for r in rows) == [0, *range(1, 21), *range(101, 121)]
        assert {r["n"] for r in rows} == {1}
        # the first flush's statement committed once the lock went: its spooled copy is not
        # replayed; the other 19 flushes never reached the database and are
        assert writer.stats.rows_stored_late == 2
        assert writer.stats.rows_replayed == 38


@aio_test
async def test_a_diverted_flush_that_commits_late_is_not_replayed(
    db_url: str, tmp_path: Path
) -> None:
    """A flush diverted to the spool whose statement then commits: the replay skips its
    spooled copy (under CPU starvation replaying rows already stored kept the writer in spool
    mode), and its rows still move the vehicle's last position."""
    async with _stalled_writer(db_url, tmp_path, last_interval=0.05) as (conn, writer, a, stall):
        assert await writer.submit([_fix(a, 5, 5), _fix(a, 6, 6)]) == "spool"
        await asyncio.sleep(0.2)
        await stall.rollback()
        await _await_replayed(writer.spool)
        assert writer.stats.rows_stored_late == 2
        assert writer.stats.rows_replayed == 0
        rows = await conn.fetch("SELECT serial FROM positions ORDER BY serial")
        assert [r["serial"] for r in rows] == [0, 5, 6]
        for _ in range(100):
            last = await conn.fetchval(
                "SELECT fix_time FROM last_positions WHERE vehicle_id = $1", a
            )
            if last == T0 + timedelta(seconds=6):
                break
            await asyncio.sleep(0.05)
        assert last == T0 + timedelta(seconds=6)


@aio_test
async def test_spool_left_by_an_earlier_run_is_replayed_without_traffic(
    db_url: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        (a,) = await _vehicles(conn, 1)
        earlier = Spool(tmp_path / "spool")
        for k in range(3):
            earlier.append([position_row(_fix(a, 10 * k + j, 10 * k + j)) for j in range(10)])
        earlier.append([position_row(_fix(a, 0, 0))])  # a retransmission: stored once
        earlier.close()
        writer = PositionWriter(lambda: asyncpg.connect(db_url), Spool(tmp_path / "spool"))
        writer.start()
        try:
            await _await_replayed(writer.spool)
            assert await conn.fetchval("SELECT count(DISTINCT serial) FROM positions") == 30
            assert await conn.fetchval("SELECT count(*) FROM positions") == 30
            assert await _await_last(conn, 1) == [(a, 29)]
            assert list((tmp_path / "spool").glob("*.spool")) == []
        finally:
            await writer.close()
    finally:
        await conn.close()


@aio_test
async def test_full_spool_refuses_instead_of_acking(db_url: str, tmp_path: Path) -> None:
    """The database is unreachable and the spool at its budget: the submission fails (so the
    terminal is not acknowledged); what fitted is kept and replayed later."""
    spool = Spool(tmp_path / "spool", budget_bytes=2_000)
    url = {"now": "postgresql://nobody@127.0.0.1:9/none"}  # a port nobody listens on
    writer = PositionWriter(lambda: asyncpg.connect(url["now"]), spool, max_age=0.001,
                            retry_interval=0.05, max_retry_interval=0.1)  # fmt: skip
    writer.start()
    conn = await asyncpg.connect(db_url)
    try:
        (a,) = await _vehicles(conn, 1)
        outcomes = []
        for k in range(20):
            try:
                outcomes.append(await writer.submit([_fix(a, k, k)]))
            except OSError as exc:
                outcomes.append(type(exc).__name__)
        kept = outcomes.count("spool")
        assert 3 <= kept < 20 and outcomes[kept:] == ["SpoolFull"] * (20 - kept), outcomes
        assert spool.bytes <= 2_000 and writer.stats.rows_refused == 20 - kept
        url["now"] = db_url
        writer.retry_now()
        await _await_replayed(spool)
        assert await conn.fetchval("SELECT count(*) FROM positions") == kept
        assert await writer.submit([_fix(a, 50, 50)]) == "db"
    finally:
        await writer.close()
        await conn.close()


def test_spool_tokens_name_one_batch_even_when_segment_names_come_back(tmp_path: Path) -> None:
    """Once every segment is removed the next one reuses the first name; a token of the old
    segment (a late commit heard after it was replayed) must not name a batch of the new one."""
    spool = Spool(tmp_path / "spool")
    try:
        first = spool.append([["a"]])
        assert spool.append([["b"]]) == (first[0], 2)
        (segment,) = spool.segments()
        assert spool.generation(segment) == first[0]
        spool.seal()
        spool.remove(segment)
        assert not spool.live(first[0])
        again = spool.append([["c"]])
        assert spool.segments() == [segment]  # the same name again
        assert again[0] != first[0] and again[1] == 1
        assert spool.live(again[0]) and spool.generation(segment) == again[0]
    finally:
        spool.close()


def test_a_spool_has_one_owner(tmp_path: Path) -> None:
    from store.spool import SpoolLocked, unowned_spools

    first = Spool(tmp_path / "worker-0")
    first.append([(1, "2026-01-01T00:00:00+00:00")])
    with pytest.raises(SpoolLocked):
        Spool(tmp_path / "worker-0")
    orphan = Spool(tmp_path / "worker-3")
    orphan.append([(2, "2026-01-01T00:00:00+00:00")])
    orphan.close()
    Spool(tmp_path / "worker-4").close()  # empty: nothing to adopt
    adopted = list(unowned_spools(tmp_path))
    assert [s.directory.name for s in adopted] == ["worker-3"]  # worker-0 is owned
    first.close()
    adopted += list(unowned_spools(tmp_path, frozenset({"worker-3"})))
    assert [s.directory.name for s in adopted] == ["worker-3", "worker-0"]
    for spool in adopted:
        spool.close()


@aio_test
async def test_a_report_the_database_refuses_is_refused_alone(db_url: str, tmp_path: Path) -> None:
    """One submission with a value PostgreSQL cannot store (a NUL character in JSON, as a
    terminal's text field can carry) in a flush with others: only it is refused (not acked);
    the others are stored, and the writer neither backs off nor spools."""
    conn = await asyncpg.connect(db_url)
    writer = PositionWriter(lambda: asyncpg.connect(db_url), Spool(tmp_path / "spool"),
                            max_age=0.05)  # fmt: skip
    writer.start()
    try:
        vehicles = await _vehicles(conn, 5)
        bad = vehicles[3]
        futures = [writer.submit([_fix(v, 1, 1, note="A\x00B" if v == bad else "ok")])
                   for v in vehicles]  # fmt: skip
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert writer.stats.writer_flushes == 1  # one flush, split to find the bad one
        assert [r == "db" for r in results] == [True, True, True, False, True], results
        assert isinstance(results[3], asyncpg.PostgresError)
        stored = await conn.fetch("SELECT vehicle_id FROM positions ORDER BY vehicle_id")
        assert [r["vehicle_id"] for r in stored] == [v for v in vehicles if v != bad]
        assert writer.stats.rows_refused == 1
        assert await writer.submit([_fix(bad, 2, 2)]) == "db"  # no backoff
        assert writer.spool.empty
    finally:
        await writer.close()
        await conn.close()


@aio_test
async def test_a_spooled_row_the_database_refuses_is_set_aside(db_url: str, tmp_path: Path) -> None:
    """Spooled rows were acknowledged: one the database refuses must neither block the
    spool behind it nor be lost. It goes to rejected.jsonl; the rest is stored."""
    conn = await asyncpg.connect(db_url)
    try:
        a, b = await _vehicles(conn, 2)
        earlier = Spool(tmp_path / "spool")
        earlier.append([position_row(_fix(a, k, k)) for k in range(5)]
                       + [position_row(_fix(b, 1, 1, note="A\x00B"))])  # fmt: skip
        earlier.append([position_row(_fix(a, k, k)) for k in range(5, 10)])
        earlier.close()
        writer = PositionWriter(lambda: asyncpg.connect(db_url), Spool(tmp_path / "spool"))
        writer.start()
        try:
            await _await_replayed(writer.spool)
            assert writer.spool.empty
            assert await conn.fetchval("SELECT count(*) FROM positions WHERE vehicle_id = $1",
                                       a) == 10  # fmt: skip
            assert await conn.fetchval("SELECT count(*) FROM positions WHERE vehicle_id = $1",
                                       b) == 0  # fmt: skip
            assert writer.stats.rows_rejected == 1
            (line,) = writer.spool.rejected.read_text().splitlines()
            row = json.loads(line)
            assert row[0] == b and json.loads(row[-1]) == {"note": "A\x00B"}
        finally:
            await writer.close()
    finally:
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
