"""Daily partitions of ``positions`` on ``fix_time`` (UTC days), created ahead, dropped by age.

A partition's name and range follow from its day (``positions_20250131`` holds
``[2025-01-31 00:00Z, 2025-02-01 00:00Z)``): nothing about them is stored, so code, operators
and ``\\d+ positions`` can never disagree. Fixes outside every partition (terminals with unset
clocks report 2000 or 2011; a late partition job) land in ``positions_default``. When a partition
is created for a day the default partition already holds rows of, those rows are moved into it
in the same transaction, so nothing is lost and the default partition does not keep growing.

Autovacuum is off on the partitions of today and later days, and back on (the server default)
once their day is over: ``ensure_partitions`` (start-up, then hourly) keeps it so. The day's
partition takes every live insert; with the embedded cluster's ``autovacuum_naptime=5s`` it was
vacuumed and analysed every few seconds (PostgreSQL 13+ vacuums insert-only tables too), and
from ~14,000 positions/s the slowest acks came in step with those passes (issue 13: p99 at
16,000/s 180-260 ms with it, 70 ms without). An insert-only partition has nothing to reclaim
while it is written. Once the day is closed, re-enabling is enough: the statistics collector
counted every insert meanwhile, so the next autovacuum round finds the partition past its
insert and analyse thresholds and sets its visibility map, freezes it and gathers planner
statistics (anti-wraparound vacuums run even while it is off). ``last_positions`` keeps its
own frequent autovacuum (migration 0005).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

PARENT = "positions"
DEFAULT_PARTITION = "positions_default"
NAME_PATTERN = re.compile(r"^positions_(\d{8})$")
#: Regulation: at least six months of track history (184 days is the longest six months).
MIN_RETENTION_DAYS = 184
#: ``pg_advisory_xact_lock`` key serialising partition changes between processes ("FWpart").
LOCK_KEY = 0x46_57_70_61_72_74


@dataclass(frozen=True, slots=True)
class Partition:
    """A partition of ``positions``: ``day`` is None for the default (and any foreign) one."""

    name: str
    day: date | None
    is_default: bool


def partition_name(day: date) -> str:
    return f"{PARENT}_{day:%Y%m%d}"


def partition_day(name: str) -> date | None:
    """The day a partition name stands for, or None if it is not a daily partition name."""
    match = NAME_PATTERN.match(name)
    if not match:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d").date()
    except ValueError:
        return None


def partition_range(day: date) -> tuple[datetime, datetime]:
    """``[day 00:00 UTC, next day 00:00 UTC)``."""
    start = datetime.combine(day, time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


def _literal(moment: datetime) -> str:
    """A timestamptz literal for partition bounds (DDL takes no parameters)."""
    return f"'{moment:%Y-%m-%d %H:%M:%S}+00'"


async def list_partitions(conn: asyncpg.Connection) -> list[Partition]:
    """The partitions of ``positions``, by name (the default partition last)."""
    rows = await conn.fetch(
        """
        SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' AS is_default
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = $1::regclass
        ORDER BY is_default, c.relname
        """,
        PARENT,
    )
    return [
        Partition(r["name"], None if r["is_default"] else partition_day(r["name"]), r["is_default"])
        for r in rows
    ]


async def _columns(conn: asyncpg.Connection) -> str:
    names = await conn.fetch(
        """
        SELECT quote_ident(attname) AS name FROM pg_attribute
        WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum
        """,
        PARENT,
    )
    return ", ".join(r["name"] for r in names)


#: Reloption that marks a partition still being written (see the module docstring).
AUTOVACUUM_OFF = "autovacuum_enabled=false"


async def create_partition(
    conn: asyncpg.Connection, day: date, *, open_day: bool = False
) -> tuple[bool, int]:
    """Create the partition of ``day`` unless it exists: (created, rows moved from default).
    ``open_day``: today's or a later day's, so autovacuum starts off.

    Builds a plain table, moves the default partition's rows of that day into it, then attaches
    it, all in one transaction. ``CREATE TABLE ... PARTITION OF`` would instead fail as soon as
    the default partition holds a row of that day. The default partition is locked first, so a
    concurrent insert of such a row waits for the commit and is then routed to the new partition.
    """
    name = partition_name(day)
    start, end = partition_range(day)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name):
            return False, 0
        await conn.execute(f"LOCK TABLE {DEFAULT_PARTITION} IN ACCESS EXCLUSIVE MODE")
        await conn.execute(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING ALL EXCLUDING INDEXES)")
        if open_day:
            await conn.execute(f"ALTER TABLE {name} SET ({AUTOVACUUM_OFF})")
        columns = await _columns(conn)
        moved = await conn.fetchval(
            f"""
            WITH moved AS (
                DELETE FROM {DEFAULT_PARTITION} WHERE fix_time >= $1 AND fix_time < $2
                RETURNING {columns}
            ), inserted AS (
                INSERT INTO {name} ({columns}) SELECT {columns} FROM moved RETURNING 1
            )
            SELECT count(*) FROM inserted
            """,
            start,
            end,
        )
        # Attaching builds the parent's indexes (dedupe btree, BRIN) on the new table.
        await conn.execute(
            f"ALTER TABLE {PARENT} ATTACH PARTITION {name} "
            f"FOR VALUES FROM ({_literal(start)}) TO ({_literal(end)})"
        )
    return True, moved


async def ensure_partitions(
    conn: asyncpg.Connection, today: date, ahead_days: int = 7, behind_days: int = 2
) -> list[str]:
    """Make sure the partitions of ``today - behind_days`` .. ``today + ahead_days`` exist.

    Returns the names created now. Run it at start-up and daily: ``ahead_days`` is the margin
    before fixes start landing in the default partition if the job stops; ``behind_days`` covers
    blind-area uploads (0x0704) of the last days. Each partition is its own transaction, so a
    crash midway leaves whole partitions only. Then sets autovacuum per partition
    (:func:`sync_autovacuum`).
    """
    if ahead_days < 0 or behind_days < 0:
        raise ValueError("ahead_days and behind_days must not be negative")
    existing = {p.name for p in await list_partitions(conn)}
    created = []
    for offset in range(-behind_days, ahead_days + 1):
        day = today + timedelta(days=offset)
        if partition_name(day) in existing:
            continue
        made, _ = await create_partition(conn, day, open_day=day >= today)
        if made:
            created.append(partition_name(day))
    await sync_autovacuum(conn, today)
    return created


async def sync_autovacuum(conn: asyncpg.Connection, today: date) -> dict[str, bool]:
    """Autovacuum off on the daily partitions of ``today`` and later, back to the server's
    default on older ones (their day is over: vacuum, freezing and statistics catch up in the
    next autovacuum round). Returns the partitions changed now → autovacuum on. Also brings
    partitions made before this rule into line. ``ALTER TABLE ... SET`` takes a lock that
    inserts do not wait for."""
    rows = await conn.fetch(
        """
        SELECT c.relname AS name, coalesce($2 = ANY (c.reloptions), false) AS off
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = $1::regclass
        ORDER BY c.relname
        """,
        PARENT,
        AUTOVACUUM_OFF,
    )
    changed: dict[str, bool] = {}
    for row in rows:
        day = partition_day(row["name"])
        if day is None:
            continue  # the default partition keeps the server's default
        name, off, want_off = row["name"], row["off"], day >= today
        if off == want_off:
            continue
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            if want_off:
                await conn.execute(f"ALTER TABLE {name} SET ({AUTOVACUUM_OFF})")
            else:
                await conn.execute(f"ALTER TABLE {name} RESET (autovacuum_enabled)")
        changed[name] = not want_off
    return changed


async def drop_expired(
    conn: asyncpg.Connection, today: date, retention_days: int = 190
) -> list[str]:
    """Drop the daily partitions whose whole day is older than ``retention_days`` before today.

    Never touches the default partition (its rows have no trustworthy day). Refuses a retention
    under six months, which the regulation forbids: a typo must not erase history.
    """
    if retention_days < MIN_RETENTION_DAYS:
        raise ValueError(
            f"retention_days={retention_days}: the regulation requires at least six months "
            f"({MIN_RETENTION_DAYS} days)"
        )
    cutoff = today - timedelta(days=retention_days)
    dropped = []
    for partition in await list_partitions(conn):
        if partition.is_default or partition.day is None or partition.day >= cutoff:
            continue
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            await conn.execute(f"DROP TABLE IF EXISTS {partition.name}")
        dropped.append(partition.name)
    return dropped
