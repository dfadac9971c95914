"""Rules engine benchmark (a script, not a test): µs per position through ``RulesEngine.feed``.

    python -m loadtest.bench_rules [--vehicles 5000] [--fences 10000] [--steps 60]
                                   [--interval 10] [--seed 1] [--profile]

10,000 fences over a province-sized area (``loadtest.bench_fences.make_fences``: circles,
rectangles, polygons and speed-limit corridors, 60% around five cities) and 5,000 vehicles of
mixed classes driving there: each vehicle starts near a city or anywhere, drives at a speed that
wanders around its class's cruising speed, turns now and then, stops for a while now and then
(ACC off), and one in ten follows a speed-limit corridor (an expressway) end to end and back.
One fix per vehicle per step, ``--interval`` seconds apart; 1% of fixes are invalid, a few
carry alarm bits, a few vehicles have a driver signed in, one in fifty plates is watchlisted.

The positions are generated first; only the ``feed`` loop is timed (``engine.tick`` once per step,
apart). Two passes over the same positions, each with a fresh engine: the first also fills the
fence index's lazily built grid cells (cold index), the second finds them filled (warm index:
the steady state of a fleet driving roads it drove before), repeated ``--repeat`` times with
the best reported (the machine is shared: the best run is the one least disturbed).
``--profile`` runs the warm pass under cProfile and prints the top functions; ``--without RULE``
replaces a rule by a no-op to see its share. The CPU time of the feed loop is printed beside
the wall time: on a shared machine it is the steadier figure.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import math
import pstats
import random
import resource
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from alerts.engine import RulesEngine
from alerts.model import COACH, HAZMAT, HEAVY_TRUCK, OTHER, POLICE, SCHOOL_BUS, VehicleInfo
from fleetwatch.serve import GC_THRESHOLDS
from geo.geodesy import metres_per_degree
from geo.index import FenceIndex
from geo.position import Position
from ingest.positions import alarm_set
from loadtest.bench_fences import CITIES, EAST, NORTH, SOUTH, WEST, make_fences

CLASSES = [(HEAVY_TRUCK, 0.4), (COACH, 0.15), (SCHOOL_BUS, 0.1), (HAZMAT, 0.1), (OTHER, 0.2),
           (POLICE, 0.05)]  # fmt: skip
CRUISE = {HEAVY_TRUCK: 70, COACH: 85, SCHOOL_BUS: 50, HAZMAT: 60, OTHER: 60, POLICE: 70}


class Mover:
    """One synthetic vehicle: where it is, how fast, and what it does next."""

    def __init__(self, vid: int, rng: random.Random, corridors: list) -> None:
        self.vid = vid
        self.rng = rng
        r = rng.random()
        acc = 0.0
        klass = OTHER
        for klass, share in CLASSES:  # noqa: B007 (the loop picks it)
            acc += share
            if r < acc:
                break
        self.info = VehicleInfo(
            id=vid,
            plate=f"浙A{vid:05d}",
            vehicle_class=klass,
            company_id=vid % 50,
            long_distance=klass == COACH and rng.random() < 0.3,
        )
        self.cruise = CRUISE[klass]
        self.speed = rng.uniform(0, self.cruise)
        self.stopped = 0  # steps left standing still
        self.path: list[tuple[float, float]] | None = None
        if corridors and rng.random() < 0.1:
            line = rng.choice(corridors).geometry
            self.path = [(float(x), float(y)) for x, y in line.coords]
            self.leg = 0
            self.lon, self.lat = self.path[0]
        elif rng.random() < 0.6:
            lon, lat = rng.choice(CITIES)
            self.lon = min(max(rng.gauss(lon, 0.15), WEST), EAST)
            self.lat = min(max(rng.gauss(lat, 0.15), SOUTH), NORTH)
        else:
            self.lon, self.lat = rng.uniform(WEST, EAST), rng.uniform(SOUTH, NORTH)
        self.heading = rng.uniform(0, 2 * math.pi)
        self.serial = 0

    def step(self, t: datetime, dt: float) -> Position:
        rng = self.rng
        if self.stopped:
            self.stopped -= 1
            speed = 0.0
        elif rng.random() < 0.003:
            self.stopped = rng.randint(3, 150)
            speed = 0.0
        else:
            self.speed = min(max(self.speed + rng.gauss(0, 4), 5.0), self.cruise * 1.35)
            speed = self.speed
        if speed:
            d = speed / 3.6 * dt
            kx, ky = metres_per_degree(self.lat)
            if self.path is not None:
                tx, ty = self.path[self.leg + 1]
                dx, dy = (tx - self.lon) * kx, (ty - self.lat) * ky
                rest = math.hypot(dx, dy)
                if rest <= d:
                    self.lon, self.lat = tx, ty
                    self.leg += 1
                    if self.leg == len(self.path) - 1:
                        self.path.reverse()
                        self.leg = 0
                else:
                    self.lon += dx / rest * d / kx
                    self.lat += dy / rest * d / ky
            else:
                if rng.random() < 0.05:
                    self.heading += rng.gauss(0, 0.8)
                self.lon += math.sin(self.heading) * d / kx
                self.lat += math.cos(self.heading) * d / ky
                if not (WEST < self.lon < EAST and SOUTH < self.lat < NORTH):
                    self.heading += math.pi
        self.serial += 1
        valid = rng.random() >= 0.01
        alarm = 0
        if rng.random() < 0.002:
            alarm = 1 << rng.choice((0, 1, 2, 5, 7, 29))
        return Position(
            vehicle_id=self.vid,
            fix_time=t,
            received_time=t + timedelta(milliseconds=300),
            lon=self.lon,
            lat=self.lat,
            speed_kmh=round(speed, 1),
            heading=int(math.degrees(self.heading)) % 360,
            ignition=not (speed == 0 and self.stopped),
            alarms=alarm_set(alarm),
            valid=valid,
            serial=self.serial,
        )


class _Nothing:
    """A rule that does nothing, in the place of the one named ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def step(self, fix: object, out: list) -> None:
        pass

    def tick(self, now: object, out: list) -> None:
        pass

    def export(self, vehicle_id: int) -> None:
        return None

    def restore(self, vehicle_id: int, state: object) -> None:
        pass


def _time_state(engine: RulesEngine, vids: list[int]) -> None:
    """Export every vehicle's rule state as JSON text and import it into a new engine: what a
    snapshot of the whole fleet and a restore after a restart cost in the rules (the database
    side is the store's)."""
    t0 = time.perf_counter()
    texts = {vid: json.dumps(engine.export_state(vid)) for vid in vids}
    t1 = time.perf_counter()
    other = RulesEngine(engine.index, engine.settings)
    for vid, text in texts.items():
        state = json.loads(text)
        if state is not None:
            other.import_state(vid, state)
    t2 = time.perf_counter()
    size = sum(len(t) for t in texts.values())
    n = len(vids)
    print(
        f"state: export+JSON {n / (t1 - t0):,.0f} vehicles/s, JSON+import {n / (t2 - t1):,.0f} "
        f"vehicles/s, {size / n:,.0f} bytes per vehicle"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vehicles", type=int, default=5000)
    ap.add_argument("--fences", type=int, default=10000)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="warm passes; the best is reported")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument(
        "--state",
        action="store_true",
        help="also time export_state -> JSON -> import_state of every vehicle after the run",
    )
    ap.add_argument(
        "--without",
        action="append",
        default=[],
        choices=("geofence", "speeding", "fatigue", "terminal", "offline", "watchlist"),
        help="replace a rule by a no-op, to see what it costs (repeatable)",
    )
    args = ap.parse_args()

    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    fences = make_fences(args.fences, rng)
    index = FenceIndex(fences)
    corridors = [f for f in fences if f.shape == "corridor"]
    build_s = time.perf_counter() - t0
    kinds = Counter(f.kind for f in fences)
    print(f"fences: {len(fences)} {dict(kinds)}, index built in {build_s:.2f} s")

    movers = [Mover(vid, rng, corridors) for vid in range(1, args.vehicles + 1)]
    print("vehicles:", dict(Counter(m.info.vehicle_class for m in movers)))
    if args.without:
        print("without:", ", ".join(args.without))
    start = datetime(2024, 5, 6, 1, 0, tzinfo=UTC)  # 09:00 Beijing
    t0 = time.perf_counter()
    steps = []
    for k in range(args.steps):
        at = start + timedelta(seconds=k * args.interval)
        steps.append((at, [m.step(at, args.interval) for m in movers]))
    print(f"generated {args.steps} x {len(movers)} positions in {time.perf_counter() - t0:.1f} s")

    infos = {m.vid: m.info for m in movers}

    def new_engine() -> RulesEngine:
        engine = RulesEngine(index)
        for name in args.without:
            engine.replace(_Nothing(name))
        engine.set_watchlist({m.info.plate: "bench" for m in movers[::50] if m.info.plate})
        for m in movers[::20]:
            engine.driver(m.vid, f"D{m.vid}", start)
        return engine

    def run(engine: RulesEngine) -> tuple[float, float, int, Counter, float]:
        feed = engine.feed
        n = 0
        kinds: Counter = Counter()
        feed_s = tick_s = cpu_s = 0.0
        for at, positions in steps:
            a = time.perf_counter()
            c = time.process_time()
            for p in positions:
                for e in feed(p, infos[p.vehicle_id]):
                    kinds[e.type, e.phase] += 1
            cpu_s += time.process_time() - c
            b = time.perf_counter()
            for e in engine.tick(at + timedelta(seconds=args.interval)):
                kinds[e.type, e.phase] += 1
            tick_s += time.perf_counter() - b
            feed_s += b - a
            n += len(positions)
        return feed_s, tick_s, n, kinds, cpu_s

    # The pre-generated positions are not the engine's: keep the collector from rescanning them
    # (a server holds a few positions at a time, not the whole run). GC stays on for the rest.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)  # as `fleetwatch serve` runs the rules
    cold = run(new_engine())
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    passes_engine: list[RulesEngine] = []

    def fresh() -> RulesEngine:
        passes_engine[:] = [new_engine()]
        return passes_engine[0]

    passes = [run(fresh()) for _ in range(1 if prof else max(1, args.repeat))]
    if prof:
        prof.disable()
    warm = min(passes, key=lambda r: r[0])
    if args.state:
        _time_state(passes_engine[-1], list(infos))
    if len(passes) > 1:
        print("warm passes:", ", ".join(f"{r[0] / r[2] * 1e6:.1f}" for r in passes), "µs/position")

    for name, (feed_s, tick_s, n, _, cpu_s) in (("cold index", cold), ("warm index", warm)):
        print(
            f"{name}: {n} positions in {feed_s:.2f} s: {feed_s / n * 1e6:.1f} µs/position "
            f"({cpu_s / n * 1e6:.1f} µs of CPU), {n / feed_s:,.0f} positions/s; "
            f"tick {tick_s / len(steps) * 1e6:.0f} µs per call"
        )
    print("events per pass:", ", ".join(f"{k[0]}/{k[1]} {v}" for k, v in sorted(warm[3].items())))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"index: {index.stats()}, max RSS {rss} MB")
    if prof:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(30)
        print(out.getvalue())


if __name__ == "__main__":
    main()
