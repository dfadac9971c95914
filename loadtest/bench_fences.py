"""Geofence index benchmark (a script, not a test): µs per classify and per crossing.

    python -m loadtest.bench_fences [--fences 10000] [--points 200000] [--seed 1]

10,000 fences over a province-sized area (4.5° x 3.5°, about 430 x 390 km; 60 % clustered
around five cities, 40 % anywhere): circles of 100 m to 2 km, rectangles, star-shaped polygons
and corridors of 2 to 30 km. Points: uniform over the area, vehicle tracks (a fix every 10 s
at 30-90 km/h, turning now and then), and points placed inside fences. Each set is classified
twice: the first pass fills the lazily built grid cells (cold), the second is the steady state
of a fleet driving the same roads (warm). Crossing is timed on consecutive track fixes (10 s
apart) and on sparse ones (2 minutes apart).
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import resource
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from shapely.geometry import LineString, Point, Polygon, box

from alerts.geofence_rule import GeofenceRule
from alerts.model import Fix, VehicleInfo
from geo.fences import Geofence
from geo.geodesy import destination, metres_per_degree
from geo.index import FenceIndex
from geo.position import Position

WEST, SOUTH, EAST, NORTH = 118.0, 27.5, 122.5, 31.0
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
CITIES = [(120.16, 30.27), (121.55, 29.87), (120.70, 28.00), (119.65, 29.08), (120.58, 30.01)]


def _anchor(rng: random.Random) -> tuple[float, float]:
    if rng.random() < 0.6:
        lon, lat = rng.choice(CITIES)
        return (
            min(max(rng.gauss(lon, 0.15), WEST), EAST),
            min(max(rng.gauss(lat, 0.15), SOUTH), NORTH),
        )
    return rng.uniform(WEST, EAST), rng.uniform(SOUTH, NORTH)


def make_fences(n: int, rng: random.Random) -> list[Geofence]:
    fences = []
    for fid in range(1, n + 1):
        lon, lat = _anchor(rng)
        kx, ky = metres_per_degree(lat)
        roll = rng.random()
        size = math.exp(rng.uniform(math.log(100), math.log(2000)))
        if roll < 0.55:
            fence = Geofence(fid, f"c{fid}", "zone", "circle", Point(lon, lat), radius_m=size)
        elif roll < 0.70:
            w, h = size * rng.uniform(0.5, 2) / kx, size * rng.uniform(0.5, 2) / ky
            geometry = box(lon - w, lat - h, lon + w, lat + h)
            fence = Geofence(fid, f"r{fid}", "forbidden", "rectangle", geometry)
        elif roll < 0.90:
            k = rng.randint(5, 12)
            ring = []
            for i in range(k):
                a = 2 * math.pi * i / k
                r = size * rng.uniform(0.5, 1.0)
                ring.append((lon + r * math.cos(a) / kx, lat + r * math.sin(a) / ky))
            fence = Geofence(fid, f"p{fid}", "zone", "polygon", Polygon(ring))
        else:
            points = [(lon, lat)]
            heading = rng.uniform(0, 360)
            for _ in range(rng.randint(2, 7)):
                heading += rng.uniform(-40, 40)
                points.append(destination(*points[-1], heading, rng.uniform(1000, 4000)))
            width = rng.uniform(30, 200)
            fence = Geofence(
                fid, f"k{fid}", "speed_limit", "corridor", LineString(points),
                width_m=width, speed_limit_kmh=80,
            )  # fmt: skip
        fences.append(fence)
    return fences


def uniform_points(n: int, rng: random.Random) -> list[tuple[float, float]]:
    return [(rng.uniform(WEST, EAST), rng.uniform(SOUTH, NORTH)) for _ in range(n)]


def tracks(n: int, rng: random.Random, step_s: float = 10.0) -> list[list[tuple[float, float]]]:
    """Vehicle tracks of ``n`` fixes in all, 200 fixes per vehicle."""
    out = []
    for _ in range(max(1, n // 200)):
        lon, lat = _anchor(rng)
        heading, speed = rng.uniform(0, 360), rng.uniform(30, 90)
        track = [(lon, lat)]
        for _ in range(199):
            if rng.random() < 0.05:
                heading += rng.uniform(-90, 90)
            lon, lat = destination(lon, lat, heading, speed / 3.6 * step_s)
            track.append((lon, lat))
        out.append(track)
    return out


def inside_points(
    fences: Sequence[Geofence], n: int, rng: random.Random
) -> list[tuple[float, float]]:
    out = []
    for _ in range(n):
        fence = rng.choice(fences)
        lon, lat = fence.centre
        if fence.shape == "corridor":
            lon, lat = fence.geometry.interpolate(rng.random(), normalized=True).coords[0]
        out.append((lon + rng.gauss(0, 0.001), lat + rng.gauss(0, 0.001)))
    return out


def timed(fn: Callable[[float, float], object], points: Sequence[tuple[float, float]]) -> float:
    start = time.perf_counter()
    for lon, lat in points:
        fn(lon, lat)
    return (time.perf_counter() - start) / len(points) * 1e6


def timed_segments(
    fn: Callable[..., object],
    segments: Sequence[tuple[Any, ...]],
) -> float:
    start = time.perf_counter()
    for segment in segments:
        fn(*segment)
    return (time.perf_counter() - start) / len(segments) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fences", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--cell-deg", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)

    fences = make_fences(args.fences, rng)
    shapes = Counter(f.shape for f in fences)
    start = time.perf_counter()
    index = FenceIndex(fences, cell_deg=args.cell_deg)
    build = time.perf_counter() - start
    print(f"{len(fences)} fences ({dict(shapes)}), cell {args.cell_deg}°")
    print(f"build (compile + STRtree): {build:.2f} s")
    start = time.perf_counter()
    index.rebuild([*fences[:-1], fences[-1]])
    reused = time.perf_counter() - start
    print(f"rebuild with the same fences (compiled shapes reused): {reused:.3f} s")

    n = args.points
    sets = {
        "uniform": uniform_points(n, rng),
        "tracks": [p for t in tracks(n, rng) for p in t],
        "in fences": inside_points(fences, n // 4, rng),
    }
    print(f"\nclassify, µs per call (one core, Python loop; {n:,} points per set):")
    for name, points in sets.items():
        cold = timed(index.classify, points)
        warm = timed(index.classify, points)
        hits = Counter(min(len(index.classify(*p)), 3) for p in points)
        share = ", ".join(
            f"{k if k < 3 else '3+'}: {hits[k] / len(points):.0%}" for k in sorted(hits)
        )
        print(f"  {name:<10} cold {cold:6.2f}   warm {warm:6.2f}   fences per point {share}")
    stats = index.stats()
    print(f"  grid: {stats['cells']:,} cells filled, {stats['entries_per_cell']:.2f} fences/cell")

    track_list = tracks(n, rng)
    dense = [(*a, *b) for t in track_list for a, b in itertools.pairwise(t)]
    sparse = [(*a, *b) for t in track_list for a, b in zip(t[::12], t[12::12], strict=False)]
    print("\ncrossing (all fences the segment meets) and crossed_between (what the rule calls:")
    print("fences skipped over, both ends outside), µs per call:")
    for name, segments in (("10 s apart", dense), ("2 min apart", sparse)):
        cold = timed_segments(index.crossing, segments)
        warm = timed_segments(index.crossing, segments)
        found = sum(1 for s in segments if index.crossing(*s))
        with_classes = [
            (*s, index.classify(s[0], s[1]), index.classify(s[2], s[3])) for s in segments
        ]
        between = timed_segments(index.crossed_between, with_classes)
        skipped = sum(1 for s in with_classes if index.crossed_between(*s))
        print(
            f"  {name:<12} crossing cold {cold:6.2f} warm {warm:6.2f} "
            f"({found / len(segments):.0%} meet a fence)   "
            f"crossed_between {between:5.2f} ({skipped / len(segments):.1%} skip one)"
        )
    # The rule on top: what GeofenceRule.feed adds per fix (Fix built beforehand, as the
    # engine does with its one classify).
    vehicle_tracks = tracks(n, rng)
    fixes = []
    for vid, track in enumerate(vehicle_tracks, 1):
        vehicle = VehicleInfo(id=vid)
        for k, (lon, lat) in enumerate(track):
            t = T0 + timedelta(seconds=10 * k)
            position = Position(vid, t, t, lon, lat, speed_kmh=60.0)
            fixes.append(Fix(position, vehicle, fences=index.classify(lon, lat)))
    fixes.sort(key=lambda f: f.position.fix_time)
    timings = []
    for _ in range(2):  # the first pass also fills cells next to the tracks; then warm
        rule = GeofenceRule(index)
        start = time.perf_counter()
        events = 0
        for fix in fixes:
            events += len(rule.feed(fix))
        timings.append((time.perf_counter() - start) / len(fixes) * 1e6)
    print(
        f"\nGeofenceRule.feed, µs per fix: cold {timings[0]:.2f}  warm {timings[1]:.2f} "
        f"({len(vehicle_tracks)} vehicles, {len(fixes):,} fixes 10 s apart, {events:,} events)"
    )
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
