"""Writer flush benchmark (a script, not a test): PostgreSQL's CPU per flush of the position writer.

    python -m loadtest.bench_flush [--rows 50,125,500,2000] [--flushes 400] [--vehicles 2000]
                                   [--interval 0.02] [--path auto|arrays|copy|both]
                                   [--last each|deferred|both] [--db URL]

Under paced load the ingest writer flushes small batches often (at 10,000 positions/s over two
workers, about 80 flushes a second of ~125 rows), so what PostgreSQL spends per flush, not per
row, decides how much of the machine the database takes. This times ``store.writer.insert_rows``
alone against a durable (fsync on) PostGIS cluster started in a temp dir (or ``--db``): rows
like a terminal's, to distinct vehicles with fix times moving forward, ``--interval`` seconds
apart. Printed per batch size: the backend's CPU per flush and per row (from /proc, so the
cluster must be local), this process's CPU per row, and the wall time of a flush (p50, p99).
``--last each`` moves ``last_positions`` in every flush (``import-nmea``, spool replay);
``deferred`` does what the ingest writer does: history only per flush, and each vehicle's newest
row once per second of flushes (that upsert's CPU is included, spread over the flushes).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import resource
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from loadtest.load_jt808 import proc_cpu
from store.cluster import EmbeddedCluster
from store.migrations import migrate
from store.partitions import ensure_partitions
from store.spool import Row
from store.writer import insert_rows, upsert_last_positions

_PATH = {None: "", True: " (arrays)", False: " (COPY)"}
_EXTRAS = '{"mileage_km":1234.5,"signal":28,"satellites":11}'


def backend_cpu(pid: int) -> float:
    """CPU seconds of a local PostgreSQL backend (the load script's /proc reader)."""
    sample = proc_cpu(pid)
    if sample is None:
        raise SystemExit(f"cannot read /proc/{pid}: the database must run on this machine")
    return sample[0]


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def add_vehicles(conn: asyncpg.Connection, count: int) -> list[int]:
    await conn.execute(
        "INSERT INTO vehicles (plate, class, phone) SELECT 'BENCH' || n, 'heavy_truck', "
        "'1390000' || lpad(n::text, 5, '0') FROM generate_series(1, $1) n "
        "ON CONFLICT (phone) DO NOTHING",
        count,
    )
    rows = await conn.fetch("SELECT id FROM vehicles WHERE plate LIKE 'BENCH%' ORDER BY id")
    return [r["id"] for r in rows]


class Batches:
    """Rows to distinct vehicles in turn, each vehicle's fix time one second further each time."""

    def __init__(self, vehicles: list[int]) -> None:
        self.vehicles = vehicles
        self.start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
        self.count = 0

    def next(self, n: int) -> list[Row]:
        rows: list[Row] = []
        now = datetime.now(UTC)
        for _ in range(n):
            k = self.count
            self.count += 1
            vid = self.vehicles[k % len(self.vehicles)]
            fix = self.start + timedelta(seconds=k // len(self.vehicles))
            lon = 116.3 + (k % 977) * 1e-4
            rows.append((
                vid, fix, now, lon, 39.9, 62.5, 90, 48, 0, 0x000C0003, True, k & 0xFFFF,
                False, "jt808", _EXTRAS,
            ))  # fmt: skip
        return rows


async def measure(
    conn: asyncpg.Connection,
    batches: Batches,
    rows: int,
    flushes: int,
    interval: float,
    by_arrays: bool | None,
    deferred: bool,
) -> str:
    backend = await conn.fetchval("SELECT pg_backend_pid()")
    for _ in range(5):  # warm up: statement cache, generic plan
        await insert_rows(conn, batches.next(rows), by_arrays)
    prepared = [batches.next(rows) for _ in range(flushes)]
    per_second = max(1, round(1 / interval)) if interval > 0 else 50
    latest: dict[int, Row] = {}
    walls = []
    pg0, me0 = backend_cpu(backend), own_cpu()
    for n, batch in enumerate(prepared, 1):
        started = time.perf_counter()
        await insert_rows(conn, batch, by_arrays, last=not deferred)
        walls.append(time.perf_counter() - started)
        if deferred:
            latest.update((row[0], row) for row in batch)  # fix times only move forward here
            if n % per_second == 0 or n == len(prepared):
                await upsert_last_positions(conn, list(latest.values()))
                latest.clear()
        if interval > 0:
            await asyncio.sleep(interval)
    pg = backend_cpu(backend) - pg0
    me = own_cpu() - me0
    walls.sort()
    total = rows * flushes
    return (
        f"{rows:>5} rows/flush{_PATH[by_arrays]}{', last deferred' if deferred else ''}: "
        f"postgres {1e3 * pg / flushes:6.2f} ms CPU per flush "
        f"({1e6 * pg / total:5.1f} µs/row); writer {1e6 * me / total:5.1f} µs/row; "
        f"flush wall p50 {1e3 * walls[len(walls) // 2]:6.2f} ms, "
        f"p99 {1e3 * walls[int(len(walls) * 0.99)]:6.2f} ms"
    )


async def run(
    url: str, sizes: list[int], flushes: int, vehicles: int, interval: float, path: str, last: str
) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        await ensure_partitions(conn, datetime.now(UTC).date())  # as serve does: days ahead
        batches = Batches(await add_vehicles(conn, vehicles))
        ways = {"auto": [None], "arrays": [True], "copy": [False], "both": [True, False]}[path]
        lasts = {"each": [False], "deferred": [True], "both": [False, True]}[last]
        for rows, by_arrays, deferred in itertools.product(sizes, ways, lasts):
            line = await measure(conn, batches, rows, flushes, interval, by_arrays, deferred)
            print(line, flush=True)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="50,125,500,2000", help="batch sizes, comma-separated")
    p.add_argument("--flushes", type=int, default=400)
    p.add_argument("--vehicles", type=int, default=2000)
    p.add_argument("--interval", type=float, default=0.02, help="seconds between flushes")
    p.add_argument(
        "--path",
        choices=("auto", "arrays", "copy", "both"),
        default="auto",
        help="how batches go in: as the writer chooses, or forced (both: one after the other)",
    )
    p.add_argument(
        "--last",
        choices=("each", "deferred", "both"),
        default="deferred",
        help="last positions in every flush, or once a second as the ingest writer does",
    )
    p.add_argument("--db", help="a local PostgreSQL+PostGIS database (default: a temp cluster)")
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.rows.split(",")]
    if a.db:
        asyncio.run(run(a.db, sizes, a.flushes, a.vehicles, a.interval, a.path, a.last))
        return
    cluster = EmbeddedCluster(tempfile.mkdtemp(prefix="fwbench-", dir="/tmp"), durable=True)
    try:
        cluster.start()
        asyncio.run(run(cluster.url, sizes, a.flushes, a.vehicles, a.interval, a.path, a.last))
    finally:
        cluster.stop(mode="fast")
        shutil.rmtree(cluster.data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
