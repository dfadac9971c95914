"""The batched position writer: one statement per batch into PostGIS, or the spool when the
database is away.

Positions are submitted in small groups (one per terminal message) and become durable together,
group-commit style: whatever arrives while a flush runs goes in the next flush, so batches grow
with the load; a burst reaching an idle writer waits at most ``max_age`` (or ``batch_rows``). A
flush of up to ``ARRAY_ROWS`` rows (what paced load produces) is one round trip: a prepared
INSERT whose parameters are one binary array per column (``unnest``); it builds the points,
drops retransmitted duplicates on (vehicle, fix time, serial) and flags late fixes, as one
implicit transaction (or as part of the caller's, for ``import-nmea``, which also moves the
last-position table in the same statement). The writer moves ``last_positions`` separately, once
per ``last_interval`` (1 s) with each vehicle's newest row: at 10,000 positions/s from 2,000
vehicles that is a fifth of the updates, and the update (a GiST entry moved, never HOT) was half
of PostgreSQL's CPU per flush. Round trips are what a flush costs under load: each waits for a
turn of a loop that is busy reading sockets. A larger batch goes by COPY into a session temp
table and the same statement reading from it (two round trips, but less CPU per row on both
sides); for a small batch that path costs PostgreSQL a third more: ``python -m
loadtest.bench_flush``. Every submission is told ``"db"`` or ``"spool"`` once its rows survive a
crash; only then may the terminal be acked.

While the spool holds anything, new batches go to the spool too (so the database receives them
in order) and the spool is replayed oldest first whenever the database answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg

from geo.flags import NOT_CURRENT, moves_last
from geo.position import Position
from store.spool import Row, Spool

log = logging.getLogger(__name__)

COLUMNS = (
    "vehicle_id", "fix_time", "received_time", "lon", "lat", "speed_kmh", "heading",
    "altitude_m", "alarm", "status", "valid", "serial", "batch", "source", "extras",
)  # fmt: skip
_TIMES = (1, 2)

#: The column types, in ``COLUMNS`` order (of the staging table, and of the arrays).
_TYPES = (
    "integer", "timestamptz", "timestamptz", "float8", "float8", "real", "smallint", "integer",
    "bigint", "bigint", "boolean", "integer", "boolean", "text", "jsonb",
)  # fmt: skip

#: Batches up to this many rows go as arrays, larger ones by COPY (``loadtest.bench_flush``).
ARRAY_ROWS = 300
#: Last positions written per statement (the rest wait for the writer's next turn).
LAST_CHUNK = 250

_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS positions_in (
    {", ".join(f"{c} {t}" for c, t in zip(COLUMNS, _TYPES, strict=True))}, known_late boolean
);
TRUNCATE positions_in
"""


_LAST = ("vehicle_id", "fix_time", "received_time", "geom", "speed_kmh", "heading",
         "altitude_m", "alarm", "status", "valid", "extras")  # fmt: skip

#: An upsert into ``last_positions`` that only ever moves a vehicle's row forward in fix time.
_FORWARD = f"""
ON CONFLICT (vehicle_id) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in _LAST[1:])}
WHERE last_positions.fix_time < excluded.fix_time
"""

#: Rows that may be a last position: none flagged with a time or place that cannot be true
#: (``geo.flags``): a fix dated 2099 must not hold the map (and "late") for good.
_CURRENT = f"NOT coalesce(extras ?| array{list(NOT_CURRENT)}, false)"

#: The newest row per vehicle of the rows named ``i`` moves ``last_positions`` forward (never back).
_UPSERT_LAST = f"""
INSERT INTO last_positions ({", ".join(_LAST)})
SELECT DISTINCT ON (vehicle_id) vehicle_id, fix_time, received_time,
       ST_SetSRID(ST_MakePoint(lon, lat), 4326), speed_kmh, heading, altitude_m, alarm, status,
       valid, extras
FROM i WHERE {_CURRENT} ORDER BY vehicle_id, fix_time DESC{_FORWARD}"""


def _move(source: str, *, last: bool) -> str:
    """The statement moving a batch from ``source`` (rows in ``COLUMNS`` order, then
    ``known_late``) into the history, without retransmitted duplicates, and (``last``) the
    last-position table forward. A fix is late when it is behind the vehicle's last position
    (looked up by key: a join would scan the whole table when the batch is small) or the writer
    knows it is behind a newer stored fix that the last positions do not show yet
    (``known_late``). All parts of a statement see the snapshot from before it, so rows of one
    batch are not late for each other. (``EXISTS`` over the history instead probes every
    partition from the fix's day on, the future ones included: nine index scans a row.)"""
    rows = f"WITH i ({', '.join(COLUMNS)}, known_late) AS ({source})"
    history = """
    INSERT INTO positions (vehicle_id, fix_time, received_time, geom, speed_kmh, heading,
                           altitude_m, alarm, status, valid, serial, batch, late, source, extras)
    SELECT i.vehicle_id, i.fix_time, i.received_time,
           ST_SetSRID(ST_MakePoint(i.lon, i.lat), 4326), i.speed_kmh, i.heading, i.altitude_m,
           i.alarm, i.status, i.valid, i.serial, i.batch,
           i.batch OR coalesce(i.known_late, false) OR coalesce(i.fix_time < (
               SELECT lp.fix_time FROM last_positions lp WHERE lp.vehicle_id = i.vehicle_id
           ), false), i.source, i.extras
    FROM i
    ON CONFLICT DO NOTHING"""
    if not last:
        return rows + history
    return f"{rows},\nhistory AS ({history}\n){_UPSERT_LAST}"


_UNNEST = "SELECT * FROM unnest({})".format(
    ", ".join(f"${n}::{t}[]" for n, t in enumerate((*_TYPES, "boolean"), 1))
)
_STAGED = "SELECT * FROM positions_in"
_STAGED_COLUMNS = (*COLUMNS, "known_late")
#: (as arrays?, last positions too?) → the statement. Small batches: one prepared statement
#: over one binary array per column. Large batches, after a COPY into the staging table: one
#: simple query, one transaction (or part of the caller's), which also empties the staging table.
_INSERT = {
    (True, True): _move(_UNNEST, last=True),
    (True, False): _move(_UNNEST, last=False),
    (False, True): _move(_STAGED, last=True) + ";\nTRUNCATE positions_in",
    (False, False): _move(_STAGED, last=False) + ";\nTRUNCATE positions_in",
}
#: Last positions alone, from arrays (the writer's deferred, coalesced updates).
_LAST_FROM_ARRAYS = f"WITH i ({', '.join(COLUMNS)}, known_late) AS ({_UNNEST}){_UPSERT_LAST}"

#: Since a crash, the newest stored fix of a vehicle may be newer than its last position (the
#: writer defers those updates): one index probe per vehicle into the partitions since $1.
_REFRESH_LAST = f"""
INSERT INTO last_positions ({", ".join(_LAST)})
SELECT p.*
FROM vehicles v
CROSS JOIN LATERAL (
    SELECT {", ".join(_LAST)} FROM positions
    WHERE vehicle_id = v.id AND fix_time >= $1 AND {_CURRENT} ORDER BY fix_time DESC LIMIT 1
) p
LEFT JOIN last_positions lp ON lp.vehicle_id = v.id
WHERE lp.fix_time IS NULL OR lp.fix_time < p.fix_time{_FORWARD}"""

#: Connections whose session already has the staging table.
_staged: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()


#: One encoder for every row: json.dumps with options builds a new encoder per call.
_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def position_row(p: Position) -> Row:
    return (
        p.vehicle_id, p.fix_time, p.received_time, p.lon, p.lat, p.speed_kmh, p.heading,
        p.altitude_m, p.alarm, p.status, p.valid, p.serial, p.batch, p.source,
        _to_json(p.extras) if p.extras else None,
    )  # fmt: skip


_EXTRAS = COLUMNS.index("extras")
#: Text that every flag of ``NOT_CURRENT`` begins with, as a key in a row's extras JSON.
_FLAG_HINTS = tuple(sorted({f'"{flag.split("_")[0]}_' for flag in NOT_CURRENT}))


def _current(row: Row) -> bool:
    """:func:`geo.flags.moves_last` for a row (extras as JSON text), which is parsed only when
    it may hold a flag: two substring searches a row, ~0.1 µs (a regex took 0.9)."""
    extras = row[_EXTRAS]
    if extras is not None:
        for hint in _FLAG_HINTS:
            if hint in extras:
                return moves_last(json.loads(extras))
    return True


def _revive(row: list[Any]) -> Row:
    """A spooled row (JSON) back to COPY-ready values."""
    for i in _TIMES:
        row[i] = datetime.fromisoformat(row[i])
    return tuple(row)


async def insert_rows(
    conn: asyncpg.Connection,
    rows: Sequence[Row],
    by_arrays: bool | None = None,
    *,
    last: bool = True,
    known_late: Sequence[bool] | None = None,
) -> None:
    """Insert without duplicates and (``last``) update last positions, atomically.
    ``known_late`` (one flag per row) marks rows the caller knows are late.

    A small batch (``by_arrays``; by default up to :data:`ARRAY_ROWS` rows) is one round trip:
    a statement prepared once per connection (asyncpg's statement cache), so PostgreSQL neither
    parses nor plans it per flush, which halves its CPU for a batch of a hundred rows. A large
    batch goes by COPY into a session temp table and one query moving it: two round trips,
    but cheaper per row on both sides (asyncpg encodes records for COPY in half the time it
    takes for arrays). A failure may leave rows in the staging table: the writer then drops the
    connection, and with it the temp table; a caller inside its own transaction rolls it back.
    """
    if not rows:
        return
    arrays = by_arrays if by_arrays is not None else len(rows) <= ARRAY_ROWS
    if arrays:
        await conn.execute(_INSERT[True, last], *zip(*rows, strict=True), known_late)
        return
    if conn not in _staged:
        await conn.execute(_STAGING)
        _staged.add(conn)
    if known_late is None:
        await conn.copy_records_to_table("positions_in", records=rows, columns=COLUMNS)
    else:
        records = [(*row, flag) for row, flag in zip(rows, known_late, strict=True)]
        await conn.copy_records_to_table("positions_in", records=records, columns=_STAGED_COLUMNS)
    await conn.execute(_INSERT[False, last])


async def upsert_last_positions(conn: asyncpg.Connection, rows: Sequence[Row]) -> None:
    """Move the last positions forward to the newest of ``rows`` per vehicle (never back)."""
    if rows:
        await conn.execute(_LAST_FROM_ARRAYS, *zip(*rows, strict=True), None)


async def refresh_last_positions(conn: asyncpg.Connection, since: datetime | None = None) -> str:
    """Bring last positions up to the newest stored fix since ``since`` (default: a day ago),
    for every vehicle whose last position lags behind: a crash loses the writer's deferred
    updates of the last ``last_interval``. Run at start-up; returns the command status."""
    if since is None:
        since = datetime.now(UTC) - timedelta(days=1)
    return await conn.execute(_REFRESH_LAST, since)


@dataclass
class WriterStats:
    rows_submitted: int = 0
    rows_written: int = 0  # committed to the database directly
    rows_spooled: int = 0
    rows_replayed: int = 0  # moved from the spool into the database
    flushes: int = 0
    db_failures: int = 0
    last_flush_s: float = 0.0


#: Called once the rows are durable ("db" or "spool"), or with the exception that kept them
#: from being so (then nothing may be acknowledged).
Done = Callable[[str | BaseException], None]


class PositionWriter:
    """Collects positions, flushes them in batches, and tells each submitter when it is safe.

    It runs as a task of the server's loop. (A writer thread with its own loop was tried: under
    load the two threads fought over the GIL and p99 ack latency got four times worse.) Several
    ingest processes (``serve --workers``) are how FleetWatch uses more than one core.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        spool: Spool,
        *,
        batch_rows: int = 2000,
        max_age: float = 0.02,
        last_interval: float = 1.0,
        db_timeout: float = 5.0,
        retry_interval: float = 1.0,
        high_water: int = 50_000,
        low_water: int = 10_000,
        on_pressure: Callable[[bool], None] | None = None,
        on_flush: Callable[[float], None] | None = None,
    ) -> None:
        self._connect = connect
        self._task: asyncio.Task[None] | None = None
        self.spool = spool
        self.batch_rows = batch_rows
        self.max_age = max_age
        self.last_interval = last_interval
        self.db_timeout = db_timeout
        self.retry_interval = retry_interval
        self.high_water = high_water
        self.low_water = low_water
        self.on_pressure = on_pressure
        self.on_flush = on_flush  # gets each flush's duration in seconds (for a histogram)
        self.stats = WriterStats()
        self._conn: asyncpg.Connection | None = None
        self._pending: list[tuple[Sequence[Position], Done]] = []
        self._pending_rows = 0
        self._queued = 0  # rows written and not yet reported back
        self._oldest = 0.0
        self._wake: asyncio.Event | None = None
        self._closing = False
        self._pressed = False
        self._next_db_try = 0.0
        self._done_batches: dict[Path, int] = {}  # spool segment -> batches already replayed
        self._latest: dict[int, Row] = {}  # vehicle → newest row stored, not yet a last position
        self._latest_due = 0.0

    @property
    def queue_depth(self) -> int:
        """Rows submitted and not yet durable."""
        return self._queued

    def start(self) -> None:
        """Start the writer as a task of the running loop."""
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def write(self, positions: Sequence[Position], done: Done) -> None:
        """Queue positions; ``done`` is called (in the caller's loop) once they are durable."""
        if self._closing or self._task is None:
            done(RuntimeError("the position writer is closed"))
            return
        n = len(positions)
        self._queued += n
        self.stats.rows_submitted += n
        first = not self._pending
        if first:
            self._oldest = time.monotonic()
        self._pending.append((positions, done))
        self._pending_rows += n
        if first or self._pending_rows >= self.batch_rows:
            self._wake_up()
        self._check_pressure()

    def submit(self, positions: Sequence[Position]) -> asyncio.Future[str]:
        """:meth:`write` as a future: it resolves to "db" or "spool" once the rows are durable."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def done(outcome: str | BaseException) -> None:
            if future.done():
                return
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        self.write(positions, done)
        return future

    async def close(self) -> None:
        """Flush what is queued, then stop."""
        if self._task is not None:
            if not self._closing:
                self._closing = True
                self._wake_up()
            await asyncio.shield(self._task)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        self.spool.close()

    def _wake_up(self) -> None:
        assert self._wake is not None
        self._wake.set()

    def _report(
        self, batch: list[tuple[Sequence[Position], Done]], outcome: str | BaseException, rows: int
    ) -> None:
        """In the caller's loop: tell every submitter of a flushed batch."""
        self._queued -= rows
        for _, done in batch:
            done(outcome)
        self._check_pressure()

    def _check_pressure(self) -> None:
        depth = self._queued
        if not self._pressed and depth >= self.high_water:
            self._pressed = True
        elif self._pressed and depth <= self.low_water:
            self._pressed = False
        else:
            return
        if self.on_pressure is not None:
            self.on_pressure(self._pressed)

    async def _run(self) -> None:
        """Group commit: while a flush runs, new positions gather and go in the next one, so
        batches grow with the load by themselves. Only a burst arriving at an idle writer waits
        (at most ``max_age``, or until ``batch_rows``) for company."""
        assert self._wake is not None
        wake = self._wake
        while True:
            if self._latest:  # sleep no longer than until the last positions are due
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self._latest_due - time.monotonic())
            else:
                await wake.wait()
            wake.clear()
            if self._pending and self._pending_rows < self.batch_rows and not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.max_age)
                wake.clear()
            while self._pending:
                await self._flush()
            if self._latest and (self._closing or time.monotonic() >= self._latest_due):
                await self._write_latest()
            if self._closing:
                while self._latest and await self._write_latest():
                    pass  # all of them, a chunk at a time
                await self._replay(force=True)
                if not self._pending:
                    return
                continue
            if not self.spool.empty:
                await self._replay()
                if not self.spool.empty and not self._pending:
                    # Nothing new to write: keep trying to drain the spool in the background.
                    await asyncio.sleep(self.retry_interval)
                    wake.set()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._pending_rows = 0
        rows = [position_row(p) for positions, _ in batch for p in positions]
        started = time.monotonic()
        outcome: str | BaseException = "spool"
        try:
            write = partial(insert_rows, rows=rows, last=False, known_late=self._behind(rows))
            if self.spool.empty and await self._try_db(write):
                outcome = "db"
                self.stats.rows_written += len(rows)
                self._hold_latest(rows)
            else:
                self.spool.append(rows)
                self.stats.rows_spooled += len(rows)
        except OSError as exc:  # the spool could not be written either: nothing is acked
            log.error("spool write failed, %d rows not acknowledged: %s", len(rows), exc)
            outcome = exc
        finally:
            self.stats.flushes += 1
            self.stats.last_flush_s = took = time.monotonic() - started
            if self.on_flush is not None:
                self.on_flush(took)
            self._report(batch, outcome, len(rows))

    def _behind(self, rows: Sequence[Row]) -> list[bool] | None:
        """Which rows are behind a fix stored since the last positions were last moved."""
        latest = self._latest
        if not latest:
            return None
        return [(held := latest.get(row[0])) is not None and row[1] < held[1] for row in rows]

    def _hold_latest(self, rows: Sequence[Row]) -> None:
        """Keep each vehicle's newest stored row (of those that may be current) for the next
        last-position update."""
        latest = self._latest
        if not latest:
            self._latest_due = time.monotonic() + self.last_interval
        for row in rows:
            if not _current(row):
                continue
            held = latest.get(row[0])
            if held is None or held[1] < row[1]:
                latest[row[0]] = row

    async def _write_latest(self) -> bool:
        """Last positions, coalesced: a vehicle reporting every 0.2 s moves its row (and the
        GiST entry) once per ``last_interval`` instead of five times, the dearest part of a
        flush for PostgreSQL. At most ``LAST_CHUNK`` rows per statement, so a flush waits
        for a few milliseconds of this at a time, not for the whole fleet. The history rows are
        already durable, so a failure only delays this (and a crash is mended at start-up by
        :func:`refresh_last_positions`)."""
        latest = self._latest
        if len(latest) <= LAST_CHUNK:
            rows = list(latest.values())
            self._latest = {}
        else:
            rows = [latest.pop(vid) for vid in list(itertools.islice(latest, LAST_CHUNK))]
        if await self._try_db(partial(upsert_last_positions, rows=rows)):
            return True
        self._hold_latest(rows)
        self._latest_due = self._next_db_try
        return False

    async def _try_db(self, write: Callable[[asyncpg.Connection], Awaitable[None]]) -> bool:
        """Run ``write`` on the writer's connection (connecting first if need be); on failure,
        drop the connection and stay away for ``retry_interval``."""
        if time.monotonic() < self._next_db_try:
            return False
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncio.wait_for(self._connect(), self.db_timeout)
            await asyncio.wait_for(write(self._conn), self.db_timeout)
            return True
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.stats.db_failures += 1
            self._next_db_try = time.monotonic() + self.retry_interval
            log.warning(
                "database write failed (%s: %s); spooling positions, next try in %.1f s",
                type(exc).__name__, exc, self.retry_interval,
            )  # fmt: skip
            await self._drop_connection()
            return False

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def _replay(self, force: bool = False) -> None:
        """Move spooled batches into the database, oldest first; stop at the first failure,
        or when new positions have waited long enough (they keep their place behind)."""
        if not force and time.monotonic() < self._next_db_try:
            return
        current = None
        index = 0
        for segment, rows in self.spool.batches():
            if segment != current:
                if current is not None:
                    self._done_batches.pop(current, None)
                    self.spool.remove(current)
                current, index = segment, 0
            index += 1
            if index <= self._done_batches.get(segment, 0):
                continue  # replayed before (this process); the segment is still being drained
            if (
                not force
                and self._pending
                and (
                    self._pending_rows >= self.batch_rows
                    or time.monotonic() - self._oldest >= self.max_age
                )
            ):
                return
            revived = [_revive(r) for r in rows]
            write = partial(insert_rows, rows=revived, known_late=self._behind(revived))
            if not await self._try_db(write):
                return
            self._done_batches[segment] = index
            self.stats.rows_replayed += len(rows)
        if current is not None:
            self._done_batches.pop(current, None)
            self.spool.remove(current)
