"""Rule state snapshots in PostgreSQL (``rule_state``, migration 0007) and the positions to
replay over them: the SQL of :mod:`alerts.snapshots`.

A worker *claims* a vehicle when it starts judging it and reads its snapshot in the same
statement; only the owner's snapshots are written (a refused one tells the worker that another
process took the vehicle over). The replay reads, per vehicle, the stored positions after the
newest fix the snapshot covers, by the ``(vehicle_id, fix_time)`` index, in fix-time order.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from geo.position import Position
from store.writer import STORED, stored_position

Db = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A vehicle's saved rule state (None: claimed but never saved) and its newest fix time."""

    vehicle_id: int
    state: dict[str, Any] | None
    newest: datetime | None


@asynccontextmanager
async def _connection(db: Db) -> AsyncIterator[Any]:  # a Connection or a pool's proxy
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


def _snapshots(rows: Sequence[asyncpg.Record]) -> list[Snapshot]:
    return [Snapshot(r[0], json.loads(r[1]) if r[1] is not None else None, r[2]) for r in rows]


async def claim(db: Db, vehicle_ids: Sequence[int], owner: str) -> list[Snapshot]:
    """Make ``owner`` the process judging these vehicles; their snapshots as they were. Ids
    with no vehicle are left out."""
    rows = await db.fetch(
        """
        INSERT INTO rule_state AS rs (vehicle_id, owner)
        SELECT id, $2 FROM vehicles WHERE id = ANY ($1::integer[])
        ON CONFLICT (vehicle_id) DO UPDATE SET owner = excluded.owner,
                                               claimed_at = clock_timestamp()
        RETURNING rs.vehicle_id, rs.state::text, rs.newest
        """,
        list(vehicle_ids),
        owner,
    )
    return _snapshots(rows)


async def claim_left(db: Db, owner: str, generation: str, recent: timedelta) -> list[Snapshot]:
    """Start-up: claim every vehicle whose owner is not of this run (``generation``: the
    prefix of all the owners of this ``serve``), i.e. of a process that is gone, saved or not,
    and every vehicle that reported within ``recent`` but was never claimed (a crash between
    storing its first positions and judging them)."""
    rows = await db.fetch(
        """
        WITH left_over AS (
            UPDATE rule_state AS rs SET owner = $1, claimed_at = clock_timestamp()
            WHERE NOT starts_with(owner, $2)
            RETURNING rs.vehicle_id, rs.state::text AS state, rs.newest
        ), unjudged AS (
            INSERT INTO rule_state (vehicle_id, owner)
            SELECT lp.vehicle_id, $1 FROM last_positions lp
            WHERE lp.received_time > now() - $3::interval
              AND NOT EXISTS (SELECT 1 FROM rule_state rs WHERE rs.vehicle_id = lp.vehicle_id)
            ON CONFLICT (vehicle_id) DO NOTHING
            RETURNING vehicle_id, NULL::text AS state, NULL::timestamptz AS newest
        )
        SELECT * FROM left_over UNION ALL SELECT * FROM unjudged
        """,
        owner,
        generation,
        recent,
    )
    return _snapshots(rows)


async def save(
    db: Db, owner: str, snapshots: Sequence[tuple[int, str, datetime | None]]
) -> set[int]:
    """Write (vehicle id, state as JSON text, newest fix time) snapshots in one statement;
    returns the ids *not* written because another process owns them now."""
    if not snapshots:
        return set()
    ids, states, newest = zip(*snapshots, strict=True)
    rows = await db.fetch(
        """
        INSERT INTO rule_state AS rs (vehicle_id, state, newest, saved_at, owner)
        SELECT u.vehicle_id, u.state::jsonb, u.newest, clock_timestamp(), $4
        FROM unnest($1::integer[], $2::text[], $3::timestamptz[]) AS u (vehicle_id, state, newest)
        JOIN vehicles v ON v.id = u.vehicle_id
        ON CONFLICT (vehicle_id) DO UPDATE SET
            state = excluded.state, newest = excluded.newest, saved_at = excluded.saved_at
        WHERE rs.owner = excluded.owner
        RETURNING rs.vehicle_id
        """,
        list(ids),
        list(states),
        list(newest),
        owner,
    )
    written = {r[0] for r in rows}
    return {vid for vid in ids if vid not in written}


async def now(db: Db) -> datetime:
    return await db.fetchval("SELECT clock_timestamp()")


async def claimed_by_others(
    db: Db, owner: str, since: datetime, overlap: timedelta = timedelta(seconds=10)
) -> tuple[list[int], datetime]:
    """Vehicles another process claimed after ``since`` (looking ``overlap`` further back,
    for claims committed out of order), and the ``since`` for the next look."""
    rows = await db.fetch(
        "SELECT vehicle_id, claimed_at FROM rule_state WHERE claimed_at > $1 AND owner <> $2",
        since - overlap,
        owner,
    )
    latest = max((r[1] for r in rows), default=since)
    return [r[0] for r in rows], max(latest, since)


async def positions_after(
    db: Db,
    starts: Sequence[tuple[int, datetime | None]],
    window: timedelta,
    limit: int = 100_000,
) -> dict[int, list[Position]]:
    """Per vehicle, its stored positions after the given fix time, oldest first (at most
    ``limit``). None (no snapshot): the last ``window`` of its track before its last position,
    a rebuild from the track."""
    if not starts:
        return {}
    ids, after = zip(*starts, strict=True)
    async with _connection(db) as conn, conn.transaction():
        # JIT compiling this plan (its estimate is far above jit_above_cost) took 100 ms of
        # the 150 it ran for 1,000 vehicles.
        await conn.execute("SET LOCAL jit = off")
        rows = await conn.fetch(
            f"""
            SELECT {STORED}
            FROM unnest($1::integer[], $2::timestamptz[]) AS s (vehicle_id, after)
            CROSS JOIN LATERAL (
                SELECT * FROM positions p
                WHERE p.vehicle_id = s.vehicle_id
                  AND p.fix_time > coalesce(s.after, (
                      SELECT lp.fix_time - $3::interval FROM last_positions lp
                      WHERE lp.vehicle_id = s.vehicle_id))
                ORDER BY p.fix_time
                LIMIT $4
            ) p
            """,
            list(ids),
            list(after),
            window,
            limit,
        )
    out: dict[int, list[Position]] = {}
    for r in rows:
        position = stored_position(r)
        out.setdefault(position.vehicle_id, []).append(position)
    return out
