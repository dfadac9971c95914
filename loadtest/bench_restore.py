"""Rule-state restore benchmark (a script, not a test): how fast a worker gets its vehicles'
rule state back, from snapshots plus the positions after them, or rebuilt from the track.

    python -m loadtest.bench_restore [--vehicles 10000] [--track 60] [--tail 5] [--step 30]
                                     [--db URL]

Each vehicle drives ``--track`` fixes ``--step`` seconds apart into a durable PostGIS cluster
started in a temp dir (or ``--db``). A rules engine judges all but the last ``--tail`` fixes of
each; its state is saved (``alerts.snapshots.StateKeeper.save``), as a running server does.
Then, as a restarted worker 0: claim every snapshot left, import them, read the positions
stored after each snapshot and judge them (the restore after kill -9). Then the alternative:
no snapshots, the state rebuilt by judging the whole stored track again. Printed: time and
vehicles/s of each step, the engine's CPU per exported state, the average snapshot size.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from alerts.engine import RulesEngine
from alerts.model import HEAVY_TRUCK, VehicleInfo
from alerts.snapshots import StateKeeper
from geo.index import FenceIndex
from geo.position import Position
from loadtest.bench_flush import add_vehicles
from store.cluster import EmbeddedCluster
from store.migrations import migrate
from store.partitions import ensure_partitions
from store.writer import insert_rows, position_row


def track(vehicles: list[int], fixes: int, step: float) -> list[list[Position]]:
    """Per fix index, one position of every vehicle (60 km/h eastwards, ACC on)."""
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(seconds=fixes * step)
    out = []
    for k in range(fixes):
        at = start + timedelta(seconds=k * step)
        out.append([
            Position(
                vid, at, at + timedelta(seconds=1), 116.0 + (vid % 100) * 0.01 + k * step / 6e3,
                39.0 + (vid // 100) * 0.01, speed_kmh=60.0, heading=90, ignition=True,
                serial=k, status_word=0x3,
            )
            for vid in vehicles
        ])  # fmt: skip
    return out


def judge(engine: RulesEngine, infos: dict[int, VehicleInfo], positions: list[Position]) -> int:
    events = 0
    feed = engine.feed
    for p in positions:
        events += len(feed(p, infos[p.vehicle_id]))
    return events


async def replay_and_judge(
    keeper: StateKeeper,
    engine: RulesEngine,
    infos: dict[int, VehicleInfo],
    starts: dict[int, datetime | None],
) -> tuple[float, float, int]:
    """Read the positions to replay after ``starts`` and judge them: (read s, judge s, count)."""
    t0 = time.perf_counter()
    replay = await keeper.replay(starts)
    t1 = time.perf_counter()
    for positions in replay.values():
        judge(engine, infos, positions)
    return t1 - t0, time.perf_counter() - t1, sum(len(p) for p in replay.values())


def fresh(pool: asyncpg.Pool, generation: str) -> tuple[RulesEngine, StateKeeper]:
    engine = RulesEngine(FenceIndex([]))
    return engine, StateKeeper(pool, engine, generation=generation, worker=0)


def line(what: str, seconds: float, vehicles: int) -> str:
    return f"{what:<44} {seconds * 1e3:9.1f} ms  {vehicles / seconds:10,.0f} vehicles/s"


async def run(url: str, n: int, fixes: int, tail: int, step: float) -> None:
    pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            await ensure_partitions(conn, (datetime.now(UTC) - timedelta(days=1)).date())
            vehicles = await add_vehicles(conn, n)
            await conn.execute("TRUNCATE rule_state")
        infos = {vid: VehicleInfo(vid, f"BENCH{vid}", HEAVY_TRUCK) for vid in vehicles}
        rows = track(vehicles, fixes, step)
        started = time.perf_counter()
        conn = await asyncpg.connect(url)  # the writer's COPY path wants a plain connection
        try:
            for batch in rows:
                await insert_rows(conn, [position_row(p) for p in batch])
        finally:
            await conn.close()
        stored = len(vehicles) * fixes
        print(f"stored {stored:,} positions ({fixes} per vehicle, {step:g} s apart) "
              f"in {time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip

        engine, keeper = fresh(pool, "bench-a")
        for batch in rows[: fixes - tail]:
            judge(engine, infos, batch)
        engine.dirty()
        t = time.perf_counter()
        states = [engine.export_state(vid) for vid in vehicles]
        export_s = time.perf_counter() - t
        t = time.perf_counter()
        saved = await keeper.save(vehicles)
        t = time.perf_counter() - t
        size = await pool.fetchval("SELECT avg(pg_column_size(state))::int FROM rule_state")
        print(f"export_state: {1e6 * export_s / len(states):.1f} µs per vehicle; "
              f"snapshot {size} bytes (jsonb) on average", flush=True)  # fmt: skip
        print(line(f"save {saved:,} snapshots (export, JSON, write)", t, saved), flush=True)

        engine, keeper = fresh(pool, "bench-b")  # a restarted worker 0
        t0 = time.perf_counter()
        starts = await keeper.claim_left()
        claimed = time.perf_counter() - t0
        read, judged, replayed = await replay_and_judge(keeper, engine, infos, starts)
        print(line(f"claim + import {len(starts):,} snapshots", claimed, len(starts)))
        print(line(f"read the {replayed:,} positions after them", read, len(starts)))
        print(line("judge them", judged, len(starts)))
        total = claimed + read + judged
        print(line("restore from snapshots, total", total, len(starts)), flush=True)

        engine, keeper = fresh(pool, "bench-c")  # no snapshots: rebuild from the track
        keeper.rebuild_window = timedelta(seconds=fixes * step)
        read, judged, rebuilt = await replay_and_judge(
            keeper, engine, infos, dict.fromkeys(vehicles)
        )
        print(line(f"read {rebuilt:,} positions of the track", read, len(vehicles)))
        print(line("judge them", judged, len(vehicles)))
        print(line("rebuild from the track, total", read + judged, len(vehicles)), flush=True)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vehicles", type=int, default=10_000)
    p.add_argument("--track", type=int, default=60, help="fixes per vehicle")
    p.add_argument("--tail", type=int, default=5, help="fixes stored after the snapshot")
    p.add_argument("--step", type=float, default=30.0, help="seconds between fixes")
    p.add_argument("--db", help="a local PostgreSQL+PostGIS database (default: a temp cluster)")
    a = p.parse_args(argv)
    if not 0 < a.tail < a.track:
        p.error("--tail must be between 1 and --track - 1")
    if a.db:
        asyncio.run(run(a.db, a.vehicles, a.track, a.tail, a.step))
        return
    cluster = EmbeddedCluster(tempfile.mkdtemp(prefix="fwbench-", dir="/tmp"), durable=True)
    try:
        cluster.start()
        asyncio.run(run(cluster.url, a.vehicles, a.track, a.tail, a.step))
    finally:
        cluster.stop(mode="fast")
        shutil.rmtree(cluster.data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
