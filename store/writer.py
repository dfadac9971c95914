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

The durable feed: each flushed batch (committed or spooled) is published once to the
subscribers (:meth:`PositionWriter.subscribe`: the rules, the live map), one loop turn after its
submitters were told, so a subscriber's work never delays an ack; each vehicle's positions in
fix-time order. Spooled rows are not published again when the spool is replayed.

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
from operator import attrgetter
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
#: Spooled rows replayed per statement: small enough that a flush waiting behind one keeps its
#: ack deadline while the drain and live traffic share the connection.
REPLAY_ROWS = 500
#: A replay statement makes flushes skip the database only once it has run this long (a
#: stall); a shorter one is just a turn the flush waits for.
REPLAY_PATIENCE = 1.0
#: What a flush may take per row on top of the ack deadline before it is spooled instead
#: (PostgreSQL spends ~20-40 µs a row on a durable COPY, ``loadtest.bench_flush``).
ROW_SECONDS = 50e-6

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
        p.altitude_m, p.alarm_word, p.status_word, p.valid, p.serial, p.batch, p.source,
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


#: The stored columns :func:`stored_position` reads back (``p``: the positions table).
STORED = (
    "p.vehicle_id, p.fix_time, p.received_time, ST_X(p.geom) AS lon, ST_Y(p.geom) AS lat,"
    " p.speed_kmh, p.heading, p.altitude_m, p.alarm, p.status, p.valid, p.serial, p.batch,"
    " p.source, p.extras::text AS extras"
)


def stored_position(r: Any) -> Position:
    """A stored row (selected as :data:`STORED`) back as a Position. The table keeps the
    source's raw words, not ``ignition`` and ``alarms``: the source's edge revives those
    (``ingest.positions.revive`` for JT/T 808)."""
    return Position(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], valid=r[10], serial=r[11],
        batch=r[12], source=r[13], extras=json.loads(r[14]) if r[14] else {},
        alarm_word=r[8], status_word=r[9],
    )  # fmt: skip


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
    rows_refused: int = 0  # neither committed nor spooled (spool full, bad values): not acked
    rows_rejected: int = 0  # spooled (acked), then refused by the database: set aside
    writer_flushes: int = 0
    writer_flushes_diverted: int = 0  # no commit within ack_deadline: spooled instead
    rows_stored_late: int = 0  # spooled, then committed by the diverted statement: not replayed
    db_failures: int = 0
    last_flush_s: float = 0.0


#: Called once the rows are durable ("db" or "spool"), or with the exception that kept them
#: from being so (then nothing may be acknowledged).
Done = Callable[[str | BaseException], None]
#: A subscriber of the durable feed: each durable batch once, each vehicle's part in fix-time
#: order. Called on the writer's loop; it must be quick and must not block.
Subscriber = Callable[[list[Position]], None]

_fix_time = attrgetter("fix_time")

_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
#: What a flush that was not even tried (spool not empty, backoff, stuck) counts as.
_NOT_TRIED = ConnectionError("the database was not tried")
_BACKING_OFF = ConnectionError("backing off after a failure")


def _refused(failure: BaseException | None) -> bool:
    """The database answered, and refused the rows themselves: a value it cannot store
    (SQLSTATE class 22, e.g. a NUL character in JSON) or a constraint (23). Trying the same
    rows again cannot help; every other failure (connection, timeout, shutdown) can."""
    sqlstate = getattr(failure, "sqlstate", None) or ""
    return isinstance(failure, asyncpg.PostgresError) and sqlstate[:2] in ("22", "23")


class _LateCommit:
    """A flush diverted to the spool whose statement went on running. If the statement commits,
    the spooled copy is already in the database: the replay skips it (under CPU starvation every
    flush is diverted, and replaying rows that were committed anyway kept the writer there) and
    the rows' last positions are taken from here instead. Either event may come first."""

    __slots__ = ("committed", "rows", "token", "writer")

    def __init__(self, writer: PositionWriter, rows: list[Row]) -> None:
        self.writer = writer
        self.rows = rows
        self.token: tuple[int, int] | None = None
        self.committed = False

    def finished(self, op: asyncio.Task[BaseException | None]) -> None:
        if not op.cancelled() and op.result() is None:
            self.committed = True
            self._settle()

    def spooled(self, token: tuple[int, int]) -> None:
        self.token = token
        self._settle()

    def _settle(self) -> None:
        w = self.writer
        if self.committed and self.token is not None and w.spool.live(self.token[0]):
            w._stored_late.add(self.token)
            w._hold_latest(self.rows)


class PositionWriter:
    """Collects positions, flushes them in batches, and tells each submitter when it is safe.

    It runs as a task of the server's loop. (A writer thread with its own loop was tried: under
    load the two threads fought over the GIL and p99 ack latency got four times worse.) Several
    ingest processes (``serve --workers``) are how FleetWatch uses more than one core.

    The database never holds an ack back for long: a flush that has not committed within
    ``ack_deadline`` is spooled (fsynced) and acknowledged from there. Its statement may still
    commit later; the spool replay then finds those rows already stored (the insert ignores
    duplicates on vehicle, fix time and serial), so nothing is stored twice. Every database
    operation runs under one lock on the writer's one connection; spool replay and last-position
    updates run as background tasks, so neither a stalled nor a dead database ever blocks the
    flush loop, which only ever waits for the deadline or an fsync. Failures back off
    exponentially from ``retry_interval`` to ``max_retry_interval``; :meth:`retry_now` (after
    the embedded cluster was restarted) cuts the wait short.
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
        ack_deadline: float = 0.15,
        retry_interval: float = 0.25,
        max_retry_interval: float = 2.0,
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
        self.ack_deadline = ack_deadline
        self.retry_interval = retry_interval
        self.max_retry_interval = max(max_retry_interval, retry_interval)
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
        self._retry: asyncio.Event | None = None
        self._db_lock: asyncio.Lock | None = None
        self._op_since = 0.0  # when the running database operation started (0: none runs)
        self._op_patience = ack_deadline  # how long the running operation may take unsuspected
        self._closing = False
        self._pressed = False
        self._failures = 0  # database failures in a row (for the backoff)
        self._next_db_try = 0.0
        self._drain: asyncio.Task[None] | None = None
        self._moving: asyncio.Task[bool] | None = None  # a last-position update
        self._strays: set[asyncio.Task[BaseException | None]] = set()  # given up on, running
        self._done_batches: dict[Path, int] = {}  # spool segment -> batches already replayed
        # spooled batches whose diverted statement committed after all: (generation, index)
        self._stored_late: set[tuple[int, int]] = set()
        self._latest: dict[int, Row] = {}  # vehicle → newest row stored, not yet a last position
        self._latest_due = 0.0
        self._subscribers: list[Subscriber] = []
        self._unpublished: list[list[Position]] = []

    @property
    def queue_depth(self) -> int:
        """Rows submitted and not yet durable."""
        return self._queued

    def start(self) -> None:
        """Start the writer as a task of the running loop; a spool left by an earlier run is
        replayed at once (no new traffic needed)."""
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        self._retry = asyncio.Event()
        self._db_lock = asyncio.Lock()
        self._task = asyncio.get_running_loop().create_task(self._run())
        if not self.spool.empty:
            self._wake.set()

    def retry_now(self) -> None:
        """The database is back (e.g. restarted): try it now instead of after the backoff."""
        self._next_db_try = 0.0
        self._failures = 0
        if self._retry is not None:
            self._retry.set()
        if self._wake is not None:
            self._wake.set()

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

    def subscribe(self, subscriber: Subscriber) -> None:
        """Receive every durable batch from now on (the durable feed)."""
        self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(subscriber)

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
                if self._retry is not None:
                    self._retry.set()
            await asyncio.shield(self._task)
        if self._conn is not None:
            try:  # a frozen server never acknowledges a polite goodbye
                await asyncio.wait_for(self._conn.close(), 2.0)
            except _DB_ERRORS:
                self._conn.terminate()
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
        if self._subscribers and not isinstance(outcome, BaseException):
            self._publish(batch)  # the durable feed, after the acks
        self._check_pressure()

    def _publish(self, batch: list[tuple[Sequence[Position], Done]]) -> None:
        """Hand a durable batch to the subscribers on the next loop turn: the acks of this
        flush are out by then, and a busy turn of rules work never sits between a flush and
        its acks. Batches published in one turn are delivered in order."""
        if not self._unpublished:
            asyncio.get_running_loop().call_soon(self._deliver)
        self._unpublished.append([p for positions, _ in batch for p in positions])

    def _deliver(self) -> None:
        batches, self._unpublished = self._unpublished, []
        for positions in batches:
            # A stable sort on fix time keeps each vehicle's part in fix-time order (0x0704
            # batches, a retransmission behind newer fixes); nearly sorted input costs ~n.
            positions.sort(key=_fix_time)
            for subscriber in list(self._subscribers):
                try:
                    subscriber(positions)
                except Exception:
                    log.exception("durable-feed subscriber failed (%d positions)", len(positions))

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
            if self._latest and self._moving is None:  # wake up when last positions are due
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
            if self._closing:
                await self._finish()
                if not self._pending:
                    return
                continue
            if self._latest and self._moving is None and time.monotonic() >= self._latest_due:
                self._moving = asyncio.get_running_loop().create_task(self._write_latest())
                self._moving.add_done_callback(self._moved)
            if not self.spool.empty and self._drain is None:
                self._drain = asyncio.get_running_loop().create_task(self._drain_spool())

    def _moved(self, task: asyncio.Task[bool]) -> None:
        self._moving = None
        if self._wake is not None:
            self._wake.set()  # the next chunk may be due already

    async def _finish(self) -> None:
        """Closing: the running background work, every held last position, one more replay."""
        if self._drain is not None:
            await asyncio.wait([self._drain])
        if self._moving is not None:
            await asyncio.wait([self._moving])
        self._next_db_try = 0.0  # one last try, whatever the backoff
        while self._latest and await self._write_latest():
            pass  # all of them, a chunk at a time
        await self._replay()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._pending_rows = 0
        rows = [position_row(p) for positions, _ in batch for p in positions]
        started = time.monotonic()
        outcome: str | BaseException = RuntimeError("the flush was interrupted")
        try:
            # A healthy database takes new rows even while the drain replays older spooled
            # ones (their statements interleave on the one connection): sending every flush
            # behind a non-empty spool kept a writer under steady load in spool mode for good
            # (2 workers at 18k/s: all 1.6M positions acked from the spool, replay minutes
            # behind, and the disk budget would eventually refuse reports).
            # The deadline grows with the batch: under saturation group commit makes batches
            # of thousands of rows that a healthy database needs more than 150 ms for, and
            # diverting those sent the whole stream to the spool (a stall still diverts a
            # small batch within ~150 ms).
            deadline = self.ack_deadline + len(rows) * ROW_SECONDS
            left = started + deadline - time.monotonic()
            failure: BaseException | None = _NOT_TRIED
            late = _LateCommit(self, rows)
            if left > 0 and self._healthy(time.monotonic()):
                write = partial(insert_rows, rows=rows, last=False, known_late=self._behind(rows))
                failure = await self._db_within(write, left, patience=deadline, late=late)
            if failure is None:
                outcome = "db"
                self.stats.rows_written += len(rows)
                self._hold_latest(rows)
            elif _refused(failure):
                outcome = "split"  # some submission's rows cannot be stored: find which
                await self._refuse_or_split(batch, failure)
            else:
                late.spooled(self.spool.append(rows))
                self.stats.rows_spooled += len(rows)
                outcome = "spool"
        except OSError as exc:  # the spool is full or failing: nothing is acked
            log.error("spool write failed, %d rows not acknowledged: %s", len(rows), exc)
            self.stats.rows_refused += len(rows)
            outcome = exc
        except Exception as exc:  # a bug: nothing is acked, and the writer goes on
            log.exception("flush failed, %d rows not acknowledged", len(rows))
            self.stats.rows_refused += len(rows)
            outcome = exc
        finally:
            self.stats.writer_flushes += 1
            self.stats.last_flush_s = took = time.monotonic() - started
            if self.on_flush is not None:
                self.on_flush(took)
            if outcome != "split":
                self._report(batch, outcome, len(rows))

    async def _split(self, batch: list[tuple[Sequence[Position], Done]]) -> None:
        """The database refused a flush for what is in it (a value it cannot store): store
        each half on its own, down to single submissions, so that one terminal's bad report
        is refused (not acknowledged; logged with its rows) and nobody else's is held back."""
        rows = [position_row(p) for positions, _ in batch for p in positions]
        failure = await self._db(partial(insert_rows, rows=rows, last=False,
                                         known_late=self._behind(rows)))  # fmt: skip
        if failure is None:
            self.stats.rows_written += len(rows)
            self._hold_latest(rows)
            self._report(batch, "db", len(rows))
        elif not _refused(failure):
            outcome: str | BaseException = "spool"
            try:
                self.spool.append(rows)
                self.stats.rows_spooled += len(rows)
            except OSError as exc:
                self.stats.rows_refused += len(rows)
                outcome = exc
            self._report(batch, outcome, len(rows))
        else:
            await self._refuse_or_split(batch, failure)

    async def _refuse_or_split(
        self, batch: list[tuple[Sequence[Position], Done]], failure: BaseException
    ) -> None:
        if len(batch) == 1:
            rows = [position_row(p) for p in batch[0][0]]
            log.error("rows refused by the database, not acknowledged (%s): %s", failure, rows)
            self.stats.rows_refused += len(rows)
            self._report(batch, failure, len(rows))
            return
        middle = len(batch) // 2
        await self._split(batch[:middle])
        await self._split(batch[middle:])

    def _healthy(self, now: float) -> bool:
        """Whether the database looks worth trying: no backoff, no operation stuck past the
        deadline."""
        stuck = self._op_since and now - self._op_since > self._op_patience
        return now >= self._next_db_try and not stuck

    async def _db_within(
        self,
        write: Callable[[asyncpg.Connection], Awaitable[None]],
        deadline: float,
        patience: float | None = None,
        late: _LateCommit | None = None,
    ) -> BaseException | None:
        """:meth:`_db` if it finishes within ``deadline`` (else a TimeoutError). Past it, an
        operation still waiting for the connection is cancelled (it never reached the
        database); one already running is left to finish or time out on its own (see the
        class docstring for why that is safe), and ``late`` hears if it committed."""
        began: list[bool] = []
        op = asyncio.get_running_loop().create_task(self._db(write, began, patience))
        try:
            return await asyncio.wait_for(asyncio.shield(op), deadline)
        except TimeoutError as exc:
            self.stats.writer_flushes_diverted += 1
            if began:
                self._strays.add(op)
                op.add_done_callback(self._strays.discard)
                if late is not None:
                    op.add_done_callback(late.finished)
            else:
                op.cancel()
            return exc

    async def _db(
        self,
        write: Callable[[asyncpg.Connection], Awaitable[None]],
        began: list[bool] | None = None,
        patience: float | None = None,
    ) -> BaseException | None:
        """Run ``write`` on the writer's connection (connecting first if need be), one
        operation at a time; None if it succeeded, else why not. Until ``patience`` (default
        the ack deadline) has passed, a running operation does not make flushes skip the
        database (:meth:`_healthy`). On failure the connection is
        dropped (a failed COPY may leave rows in its staging table) and, unless the database
        refused the rows themselves (:func:`_refused`: it is answering), the writer backs off."""
        assert self._db_lock is not None
        async with self._db_lock:
            if time.monotonic() < self._next_db_try:
                return _BACKING_OFF
            if began is not None:
                began.append(True)
            self._op_since = time.monotonic()
            self._op_patience = self.ack_deadline if patience is None else patience
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncio.wait_for(self._connect(), self.db_timeout)
                await asyncio.wait_for(write(self._conn), self.db_timeout)
                self._failures = 0
                return None
            except _DB_ERRORS as exc:
                self.stats.db_failures += 1
                self._drop_connection()
                if _refused(exc):
                    return exc
                self._failures += 1
                wait = min(self.retry_interval * 2 ** (self._failures - 1), self.max_retry_interval)
                self._next_db_try = time.monotonic() + wait
                log.warning(
                    "database write failed (%s: %s); spooling positions, next try in %.2f s",
                    type(exc).__name__, exc, wait,
                )  # fmt: skip
                return exc
            finally:
                self._op_since = 0.0

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

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
        if await self._db(partial(upsert_last_positions, rows=rows)) is None:
            return True
        self._hold_latest(rows)
        self._latest_due = max(self._next_db_try, time.monotonic() + self.retry_interval)
        return False

    async def _drain_spool(self) -> None:
        """In the background: replay the spool until it is empty, waiting out each backoff
        (or until :meth:`retry_now`); new batches keep going to the spool meanwhile."""
        assert self._retry is not None
        try:
            while not self.spool.empty and not self._closing:
                wait = self._next_db_try - time.monotonic()
                if wait > 0:
                    self._retry.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._retry.wait(), wait)
                    continue
                await self._replay()
        finally:
            self._drain = None
            if self._wake is not None:
                self._wake.set()

    async def _replay(self) -> bool:
        """Move spooled batches into the database, oldest first, up to ``REPLAY_ROWS`` rows per
        statement (a spool holds many small flushes); stop at the first failure. Reads only
        sealed segments; when those are done, seals the active one and goes on."""
        while True:
            if self._strays:
                # They hold the one connection, so nothing could be replayed before they end;
                # waiting here lets those that commit mark their spooled copies first.
                await asyncio.wait(list(self._strays))
            sealed = self.spool.sealed()
            if not sealed:
                if self.spool.empty or not self.spool.seal():
                    return True
                continue
            for segment in sealed:
                done = self._done_batches.get(segment, 0)
                generation = self.spool.generation(segment)
                group: list[Row] = []
                index = 0
                for rows in self.spool.read(segment):
                    index += 1
                    if index <= done:
                        continue  # replayed before; the segment's later batches were not
                    if (generation, index) in self._stored_late:
                        self._stored_late.discard((generation, index))
                        self.stats.rows_stored_late += len(rows)
                        continue  # its diverted statement committed it after all
                    group.extend(_revive(r) for r in rows)
                    if len(group) >= REPLAY_ROWS:
                        if not await self._replay_rows(group):
                            return False
                        self._done_batches[segment] = index
                        group = []
                if group and not await self._replay_rows(group):
                    return False
                self._done_batches.pop(segment, None)
                self._stored_late = {t for t in self._stored_late if t[0] != generation}
                self.spool.remove(segment)

    async def _replay_rows(self, rows: list[Row]) -> bool:
        """Replay ``rows``; False if the database is away. Rows it refuses (acknowledged long
        ago, so they must not be lost either) are found by halving and set aside with
        :meth:`Spool.reject`, so one bad row never blocks the spool behind it."""
        write = partial(insert_rows, rows=rows, known_late=self._behind(rows))
        failure = await self._db(write, patience=REPLAY_PATIENCE)
        if failure is None:
            self.stats.rows_replayed += len(rows)
            return True
        if not _refused(failure):
            return False
        if len(rows) == 1:
            log.error("spooled row refused by the database, set aside in %s (%s): %s",
                      self.spool.rejected, failure, rows[0])  # fmt: skip
            self.spool.reject(rows[0])
            self.stats.rows_rejected += 1
            return True
        middle = len(rows) // 2
        return await self._replay_rows(rows[:middle]) and await self._replay_rows(rows[middle:])
