"""Daily partitions of ``positions`` on ``fix_time`` (UTC days), created ahead, dropped by age.

A partition's name and range follow from its day (``positions_20250131`` holds
``[2025-01-31 00:00Z, 2025-02-01 00:00Z)``): nothing about them is stored, so code, operators
and ``\\d+ positions`` can never disagree. Fixes outside every partition (terminals with unset
clocks report 2000 or 2011; a late partition job) land in ``positions_default``. When a partition
is created for a day the default partition already holds rows of, those rows are moved into it
in the same transaction, so nothing is lost and the default partition does not keep growing.
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


async def create_partition(conn: asyncpg.Connection, day: date) -> tuple[bool, int]:
    """Create the partition of ``day`` unless it exists: (created, rows moved from default).

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
    crash midway leaves whole partitions only.
    """
    if ahead_days < 0 or behind_days < 0:
        raise ValueError("ahead_days and behind_days must not be negative")
    existing = {p.name for p in await list_partitions(conn)}
    created = []
    for offset in range(-behind_days, ahead_days + 1):
        day = today + timedelta(days=offset)
        if partition_name(day) in existing:
            continue
        made, _ = await create_partition(conn, day)
        if made:
            created.append(partition_name(day))
    return created


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
