"""Command gateway benchmark (a script, not a test): what crossing to another worker costs.

    python -m loadtest.bench_gateway [--commands 500] [--concurrency 1,20] [--db URL]

Two gateways on their own connections to a durable PostGIS cluster started in a temp dir (or
``--db``): the holder's terminal end answers every command at once (no terminal, no network),
so the figures are the gateway's own cost: a ``commands`` row and NOTIFY out, claim, answer
and NOTIFY back, and the sender reading the outcome. Printed per concurrency: round trip p50
and p99 (ms) and commands per second; the local fast path for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg

from alerts.commands import ACCEPTED, Command, Reply, Text
from alerts.gateway import CommandGateway
from store.cluster import EmbeddedCluster
from store.migrations import migrate


class InstantTerminals:
    """A terminal end whose terminals answer "accepted" at once (the gateway alone is timed)."""

    def __init__(self, vehicles: set[int]) -> None:
        self.vehicles = vehicles
        self.on_session: Callable[[int, bool], None] | None = None

    def holds(self, vehicle_id: int) -> bool:
        return vehicle_id in self.vehicles

    async def execute(self, vehicle_id: int, command: Command, timeout: float) -> Reply:
        return Reply(ACCEPTED, datetime.now(UTC), 0)


async def _round_trips(
    gateway: CommandGateway, vehicle: int, count: int, concurrency: int
) -> tuple[list[float], float]:
    times: list[float] = []
    command = Text("基准测试")
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            started = time.perf_counter()
            reply = await gateway.send(vehicle, command, timeout=10.0)
            assert reply.result == ACCEPTED
            times.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return times, time.perf_counter() - started


def _report(label: str, times: list[float], wall: float) -> None:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"{label:<28} p50 {statistics.median(ordered) * 1000:7.2f} ms"
        f"  p99 {p99 * 1000:7.2f} ms  {len(times) / wall:8.0f} commands/s"
    )


async def run(url: str, count: int, concurrencies: list[int]) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        vehicle = await conn.fetchval(
            "INSERT INTO vehicles (plate, phone) VALUES ('BENCH-GW', '13999999999')"
            " ON CONFLICT (phone) DO UPDATE SET plate = excluded.plate RETURNING id"
        )
    finally:
        await conn.close()
    holder_pool = await asyncpg.create_pool(url, min_size=2, max_size=8)
    sender_pool = await asyncpg.create_pool(url, min_size=2, max_size=8)
    terminals = InstantTerminals(set())
    holder = CommandGateway(holder_pool, url, terminals)
    sender = CommandGateway(sender_pool, url)
    await holder.start()
    await sender.start()
    try:
        terminals.vehicles.add(vehicle)
        assert terminals.on_session is not None
        terminals.on_session(vehicle, True)
        await asyncio.sleep(0.5)  # the session row is written
        times, wall = await _round_trips(holder, vehicle, count, 1)
        _report("local fast path", times, wall)
        for concurrency in concurrencies:
            await _round_trips(sender, vehicle, min(count, 50), concurrency)  # warm up
            times, wall = await _round_trips(sender, vehicle, count, concurrency)
            _report(f"other worker, {concurrency} in flight", times, wall)
    finally:
        await sender.stop()
        await holder.stop()
        await sender_pool.close()
        await holder_pool.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commands", type=int, default=500)
    p.add_argument("--concurrency", default="1,20", help="comma-separated, e.g. 1,20")
    p.add_argument("--db", metavar="URL", help="an existing PostGIS database (else a temp one)")
    args = p.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.db:
        asyncio.run(run(args.db, args.commands, concurrencies))
        return
    cluster = EmbeddedCluster(tempfile.mkdtemp(prefix="fwbench-", dir="/tmp"), durable=True)
    try:
        cluster.start()
        asyncio.run(run(cluster.url, args.commands, concurrencies))
    finally:
        cluster.stop(mode="immediate")
        shutil.rmtree(cluster.data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
