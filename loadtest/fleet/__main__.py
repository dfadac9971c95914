"""``python -m loadtest.fleet``: the simulated fleet against a server that is already running.

``fleetwatch demo`` does everything (database, seed, server, fleet). This drives the fleet
alone, e.g. against ``fleetwatch serve`` on another data directory, and writes the alarms it
expects (compare them with ``fleetwatch demo check --data-dir DIR`` after copying the file to
``DIR/expected-alarms.json``). The vehicles must be provisioned with their classes for the
rules to apply (``fleetwatch demo`` seeds them; with ``serve --policy open`` unknown terminals
are provisioned without a class, and the class rules do not fire).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

from loadtest.fleet.check import expectations
from loadtest.fleet.city import RoadNetwork
from loadtest.fleet.plan import TimeLapse, build_fleet, build_scenario
from loadtest.fleet.sim import Fleet


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.fleet", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="the server (loopback only here)")
    parser.add_argument("--port", type=int, default=6808, help="its JT/T 808 port")
    parser.add_argument("--vehicles", type=int, default=200)
    parser.add_argument("--hours", type=float, default=24.0, help="time-lapse window (0: live)")
    parser.add_argument("--minutes", type=float, default=10.0, help="play it in M minutes")
    parser.add_argument("--duration", type=float, default=0, help="stop after S s (0: Ctrl-C)")
    parser.add_argument("--offline-s", type=float, default=600.0, help="the server's offline_s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--expected", type=Path, default=Path("expected-alarms.json"))
    args = parser.parse_args()
    asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> None:
    now = time.time()
    start = now - args.hours * 3600
    clock = TimeLapse(start, 1 + (now - start) / (args.minutes * 60), now)
    fleet = build_fleet(args.vehicles, args.seed)
    scenario = build_scenario(
        fleet, RoadNetwork(), clock, offline_s=args.offline_s, live=True, seed=args.seed
    )
    document = expectations(fleet, scenario, clock, now, args.offline_s)
    args.expected.write_text(json.dumps(document, ensure_ascii=False, indent=1))
    print(f"{len(scenario.expected)} expected alarms in {args.expected}", flush=True)
    sim = Fleet(fleet, clock, scenario, (args.host, args.port), seed=args.seed)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await sim.start(ramp_s=min(10.0, 0.03 * len(fleet)))
    deadline = time.monotonic() + args.duration if args.duration else None
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        left = 30.0 if deadline is None else min(30.0, max(deadline - time.monotonic(), 0.0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), left)
        print(sim.progress(), flush=True)
    await sim.stop()
    print(sim.progress(), flush=True)


if __name__ == "__main__":
    main()
