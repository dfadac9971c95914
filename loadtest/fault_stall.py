"""Ack latency and recovery through PostgreSQL faults, measured on a real ``fleetwatch serve``.

Starts serve on a fresh durable embedded cluster, a fleet of terminals reporting at a steady
rate, then: (1) freezes every PostgreSQL process (SIGSTOP) for ``--stall`` seconds, (2) kills
them all (SIGKILL) and lets serve start the cluster again. Prints, per phase, the acks and
their p50/p99/max latency (reports sent during the fault until the spool is drained), the time
from the fault's end (SIGCONT; the kill) until PostgreSQL is back and until the spool is empty,
and checks that every acknowledged position is stored exactly once.

    python -m loadtest.fault_stall --terminals 20 --rate 10 --stall 30

Loopback only; about ``stall + 25`` seconds. Needs the same setup as the tests (root or a
user that can run PostgreSQL). Uses ``tests.fault_harness`` (the fault-injection suite's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
import time
from pathlib import Path

from tests.fault_harness import (
    Fleet,
    Serve,
    check_exactly_once,
    make_template,
    percentile,
    postgres_pids,
    remove,
    signal_postgres,
    spool_files,
)


async def _until(predicate: object, timeout: float) -> float | None:
    """Seconds until ``predicate()`` holds (None if it did not within ``timeout``)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - began
        await asyncio.sleep(0.02)
    return None


async def _back(data: Path, killed: list[int], timeout: float) -> float | None:
    """Seconds until a new postmaster (the killed one may be listed for a moment) accepts a
    connection (None if not within ``timeout``)."""
    import asyncpg

    from store.cluster import EmbeddedCluster

    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if postgres_pids(data)[:1] not in ([], killed):
            try:
                conn = await asyncpg.connect(EmbeddedCluster.in_data_dir(data).url, timeout=1)
            except Exception:  # not yet: starting up, recovering, socket not there
                pass
            else:
                await conn.close()
                return time.monotonic() - began
        await asyncio.sleep(0.02)
    return None


def _summary(name: str, latencies: list[float], **extra: object) -> dict[str, object]:
    return {
        "phase": name,
        "acks": len(latencies),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "max_ms": round(max(latencies, default=float("nan")) * 1000, 1),
        **extra,
    }


async def measure(args: argparse.Namespace) -> list[dict[str, object]]:
    root = Path(tempfile.mkdtemp(prefix="fwl-", dir="/tmp"))
    root.chmod(0o755)
    results = []
    serve = None
    try:
        data = make_template(root)
        serve = Serve(data, workers=args.workers).start()
        await serve.ready()
        fleet = Fleet(serve.port, args.terminals, rate=args.rate, give_up=60.0)
        await fleet.login()
        fleet.start()
        await asyncio.sleep(args.warmup)
        t = time.monotonic()
        results.append(_summary("normal", fleet.record.latencies(since=t - args.warmup + 1)))

        stopped = time.monotonic()
        signal_postgres(data, signal.SIGSTOP)
        await asyncio.sleep(args.stall)
        signal_postgres(data, signal.SIGCONT)
        drained = await _until(lambda: not any(spool_files(data)), 120)
        results.append(_summary(
            f"SIGSTOP {args.stall:g} s", fleet.record.latencies(since=stopped),
            spool_empty_after_s=None if drained is None else round(drained, 2),
        ))  # fmt: skip

        await asyncio.sleep(2.0)
        killed = time.monotonic()
        old = signal_postgres(data, signal.SIGKILL)[:1]
        back = await _back(data, old, 120)
        drained = await _until(lambda: not any(spool_files(data)), 120)
        results.append(_summary(
            "SIGKILL", fleet.record.latencies(since=killed),
            postgres_back_after_s=None if back is None else round(back, 2),
            spool_empty_after_s=None if drained is None else round(time.monotonic() - killed, 2),
        ))  # fmt: skip
        await asyncio.sleep(1.0)
        await fleet.stop()
        from store.cluster import EmbeddedCluster

        rows = await check_exactly_once(EmbeddedCluster.in_data_dir(data).url, fleet.record)
        results.append({
            "phase": "total", "acked": len(fleet.record.acked), "stored": sum(rows.values()),
            "unanswered": fleet.record.unanswered, "reconnects": fleet.reconnects,
            "exactly_once": True,
        })  # fmt: skip
    finally:
        if serve is not None and serve.proc is not None:
            await serve.stop()
        if not args.keep:
            remove(root)
        else:
            print(f"data kept in {root}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terminals", type=int, default=20)
    parser.add_argument("--rate", type=float, default=10.0, help="reports per second each")
    parser.add_argument("--stall", type=float, default=30.0, help="seconds PostgreSQL is frozen")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=1, help="serve --workers")
    parser.add_argument("--keep", action="store_true", help="keep the data dir (and its log)")
    args = parser.parse_args()
    for row in asyncio.run(measure(args)):
        print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main()
