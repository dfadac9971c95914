"""Daily partitions of ``positions``: created ahead, rows rescued from default, retention."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta, timezone

import asyncpg
import pytest

from geo.position import Position
from store.partitions import (
    DEFAULT_PARTITION,
    create_partition,
    drop_expired,
    ensure_partitions,
    list_partitions,
    partition_day,
    partition_name,
    partition_range,
)
from tests.aio import aio_test

BEIJING = timezone(timedelta(hours=8))


@asynccontextmanager
async def connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


def fix(when: datetime, vehicle_id: int = 1, serial: int = 0) -> Position:
    return Position(
        vehicle_id=vehicle_id,
        fix_time=when,
        received_time=datetime(2030, 1, 1, tzinfo=UTC),
        lon=116.397,
        lat=39.909,
        speed_kmh=42.5,
        serial=serial,
    )


async def insert(conn: asyncpg.Connection, *positions: Position) -> None:
    await conn.executemany(
        """
        INSERT INTO positions (vehicle_id, fix_time, received_time, geom, speed_kmh, serial)
        VALUES ($1, $2, $3, ST_SetSRID(ST_MakePoint($4, $5), 4326), $6, $7)
        """,
        [
            (p.vehicle_id, p.fix_time, p.received_time, p.lon, p.lat, p.speed_kmh, p.serial)
            for p in positions
        ],
    )


async def home(conn: asyncpg.Connection, when: datetime) -> list[str]:
    """Which partition(s) hold the rows with this fix time."""
    rows = await conn.fetch(
        "SELECT tableoid::regclass::text AS part FROM positions WHERE fix_time = $1", when
    )
    return [r["part"] for r in rows]


def test_names_and_ranges_are_derived_from_the_day() -> None:
    day = date(2030, 2, 28)
    assert partition_name(day) == "positions_20300228"
    assert partition_day("positions_20300228") == day
    assert partition_day(DEFAULT_PARTITION) is None
    assert partition_day("positions_20301399") is None
    assert partition_range(day) == (
        datetime(2030, 2, 28, tzinfo=UTC),
        datetime(2030, 3, 1, tzinfo=UTC),
    )


@aio_test
async def test_partitions_are_created_ahead_and_behind(db_url: str) -> None:
    today = date(2030, 1, 10)
    async with connection(db_url) as conn:
        created = await ensure_partitions(conn, today, ahead_days=3, behind_days=1)
        assert created == [partition_name(date(2030, 1, d)) for d in range(9, 14)]
        daily = [p.day for p in await list_partitions(conn) if not p.is_default]
        assert daily == [date(2030, 1, d) for d in range(9, 14)]
        assert await ensure_partitions(conn, today, ahead_days=3, behind_days=1) == []
        # The next day only adds the new last day.
        assert await ensure_partitions(conn, today + timedelta(days=1), 3, 1) == [
            "positions_20300114"
        ]

        # Routing follows UTC days: 07:00 Beijing time on the 12th is still the 11th in UTC.
        inside = datetime(2030, 1, 12, 7, 0, tzinfo=BEIJING)
        midnight = datetime(2030, 1, 13, tzinfo=UTC)
        beyond = datetime(2030, 1, 20, 12, 0, tzinfo=UTC)
        await insert(conn, fix(inside), fix(midnight), fix(beyond))
        assert await home(conn, inside) == ["positions_20300111"]
        assert await home(conn, midnight) == ["positions_20300113"]
        assert await home(conn, beyond) == [DEFAULT_PARTITION]

        # The new partitions carry the parent's indexes, so retransmissions are still removed.
        indexes = await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'positions_20300111'"
        )
        assert any("UNIQUE" in r["indexdef"] for r in indexes)
        assert any("brin" in r["indexdef"] for r in indexes)
        status = await conn.execute(
            """
            INSERT INTO positions (vehicle_id, fix_time, received_time, geom, serial)
            VALUES (1, $1, now(), ST_SetSRID(ST_MakePoint(116, 39), 4326), 0)
            ON CONFLICT DO NOTHING
            """,
            inside,
        )
        assert status == "INSERT 0 0"


@aio_test
async def test_rows_in_default_move_into_a_new_partition(db_url: str) -> None:
    day = date(2030, 3, 1)
    unset_clock = datetime(2011, 1, 1, 8, 0, tzinfo=UTC)
    async with connection(db_url) as conn:
        that_day = [
            fix(datetime(2030, 3, 1, h, m, tzinfo=UTC), serial=m) for h in (0, 23) for m in (0, 59)
        ]
        next_day = fix(datetime(2030, 3, 2, tzinfo=UTC))
        await insert(conn, *that_day, next_day, fix(unset_clock))
        parts = [await home(conn, p.fix_time) for p in that_day]
        assert parts == [[DEFAULT_PARTITION]] * 4

        made, moved = await create_partition(conn, day)
        assert (made, moved) == (True, 4)
        assert [await home(conn, p.fix_time) for p in that_day] == [["positions_20300301"]] * 4
        # Rows of other days stay where they were, nothing lost, nothing doubled.
        assert await home(conn, next_day.fix_time) == [DEFAULT_PARTITION]
        assert await home(conn, unset_clock) == [DEFAULT_PARTITION]
        assert await conn.fetchval("SELECT count(*) FROM positions") == 6
        row = await conn.fetchrow(
            "SELECT speed_kmh, ST_X(geom) AS lon, ST_SRID(geom) AS srid FROM positions_20300301"
            " LIMIT 1"
        )
        assert (row["speed_kmh"], row["lon"], row["srid"]) == (42.5, 116.397, 4326)

        # Through ensure_partitions too (the next day's row moves when its partition is made).
        assert "positions_20300302" in await ensure_partitions(conn, day, 1, 0)
        assert await home(conn, next_day.fix_time) == ["positions_20300302"]
        assert await create_partition(conn, day) == (False, 0)


@aio_test
async def test_unset_clock_fix_from_2011_is_kept_in_default(db_url: str) -> None:
    today = datetime.now(UTC).date()
    old = fix(datetime(2011, 6, 30, 16, 0, tzinfo=UTC), vehicle_id=7)
    async with connection(db_url) as conn:
        await ensure_partitions(conn, today)
        await insert(conn, old)
        assert await home(conn, old.fix_time) == [DEFAULT_PARTITION]
        await ensure_partitions(conn, today + timedelta(days=1))
        assert await drop_expired(conn, today) == []
        assert await home(conn, old.fix_time) == [DEFAULT_PARTITION]


@aio_test
async def test_retention_drops_only_old_daily_partitions(db_url: str) -> None:
    today = date(2031, 1, 1)
    cutoff = today - timedelta(days=190)  # 2030-06-25
    days = [cutoff - timedelta(days=2), cutoff - timedelta(days=1), cutoff, today]
    async with connection(db_url) as conn:
        for day in days:
            await create_partition(conn, day)
        kept_fix = fix(datetime.combine(cutoff, datetime.min.time(), tzinfo=UTC))
        await insert(
            conn,
            fix(datetime(2011, 1, 1, tzinfo=UTC)),
            kept_fix,
            fix(datetime(2030, 6, 23, 12, tzinfo=UTC)),
        )

        dropped = await drop_expired(conn, today)
        assert dropped == ["positions_20300623", "positions_20300624"]
        names = [p.name for p in await list_partitions(conn)]
        assert names == ["positions_20300625", "positions_20310101", DEFAULT_PARTITION]
        assert await home(conn, kept_fix.fix_time) == ["positions_20300625"]
        assert await conn.fetchval(f"SELECT count(*) FROM {DEFAULT_PARTITION}") == 1
        assert await drop_expired(conn, today) == []

        with pytest.raises(ValueError, match="six months"):
            await drop_expired(conn, today, retention_days=30)
        assert len(await list_partitions(conn)) == 3


async def _reloptions(conn: asyncpg.Connection, name: str) -> list[str]:
    return list(
        await conn.fetchval("SELECT reloptions FROM pg_class WHERE relname = $1", name) or []
    )


@aio_test
async def test_autovacuum_is_off_while_a_day_is_written_and_back_once_it_is_over(
    db_url: str,
) -> None:
    """Today's and later partitions take every live insert without autovacuum passes; the
    partition of a closed day gets autovacuum back, and autovacuum then really processes it
    (visibility map, freezing, planner statistics), while last_positions keeps migration
    0005's settings."""
    today = date(2030, 5, 10)
    off = "autovacuum_enabled=false"
    async with connection(db_url) as conn:
        await ensure_partitions(conn, today, ahead_days=1, behind_days=1)
        assert await _reloptions(conn, "positions_20300509") == []  # closed day: default
        assert await _reloptions(conn, "positions_20300510") == [off]
        assert await _reloptions(conn, "positions_20300511") == [off]
        assert off not in await _reloptions(conn, DEFAULT_PARTITION)

        # A day's worth of rows (enough to pass autovacuum's insert and analyse thresholds)
        # in today's partition and in tomorrow's.
        for day in (10, 11):
            start = datetime(2030, 5, day, tzinfo=UTC)
            await insert(conn, *(fix(start + timedelta(seconds=s)) for s in range(1500)))

        # The next day: the 10th is closed, the 11th is today, the 12th is new.
        assert await ensure_partitions(conn, today + timedelta(days=1), 1, 1) == [
            "positions_20300512"
        ]
        assert await _reloptions(conn, "positions_20300510") == []
        assert await _reloptions(conn, "positions_20300511") == [off]
        assert await _reloptions(conn, "positions_20300512") == [off]
        options = await _reloptions(conn, "last_positions")
        assert "autovacuum_vacuum_threshold=5000" in options and off not in options

        # An operator's (or an older version's) partition is brought into line as well.
        await conn.execute("ALTER TABLE positions_20300512 RESET (autovacuum_enabled)")
        await ensure_partitions(conn, today + timedelta(days=1), 1, 1)
        assert await _reloptions(conn, "positions_20300512") == [off]

        # Autovacuum (naptime 5 s in the embedded cluster) now vacuums and analyses the
        # closed day from the inserts counted while it was off; the open day stays untouched.
        deadline = asyncio.get_running_loop().time() + 90
        stats = """
            SELECT relname, last_autovacuum IS NOT NULL AS vacuumed,
                   last_autoanalyze IS NOT NULL AS analysed
            FROM pg_stat_user_tables WHERE relname IN ('positions_20300510', 'positions_20300511')
        """
        while True:
            state = {r["relname"]: (r["vacuumed"], r["analysed"]) for r in await conn.fetch(stats)}
            if state.get("positions_20300510") == (True, True):
                break
            assert asyncio.get_running_loop().time() < deadline, state
            await asyncio.sleep(1)
        assert state["positions_20300511"] == (False, False)
        assert (
            await conn.fetchval(
                "SELECT reltuples FROM pg_class WHERE relname = 'positions_20300510'"
            )
            == 1500
        )
