"""FenceIndex: classify against geodesic distances and against GEOS, crossings, rebuilds."""

from __future__ import annotations

import math
import random

import pytest
import shapely
from shapely.geometry import LineString, Point, Polygon, box

from geo.fences import Geofence
from geo.geodesy import GEOD, destination, distance_m, metres_per_degree
from geo.index import FenceIndex

CENTRE = (116.39, 39.91)  # Beijing: high enough for longitude scale to matter


def expected(distance_inside: float, margin: float, slack: float) -> int | str | None:
    """What classify should say for a point ``distance_inside`` metres inside the edge
    (negative: outside), or "either" within ``slack`` of a threshold."""
    if abs(distance_inside - margin) <= slack or abs(distance_inside + margin) <= slack:
        return "either"
    if distance_inside > margin:
        return 1
    if distance_inside >= -margin:
        return 0
    return None


@pytest.mark.parametrize("radius", [50.0, 300.0, 2000.0, 20000.0])
def test_circles_against_geodesic_distance(radius: float) -> None:
    """Points at known geodesic distances and random azimuths: the inside/band/outside
    thresholds hold to within 10 cm."""
    fence = Geofence(1, "c", "zone", "circle", Point(*CENTRE), radius_m=radius)
    index = FenceIndex([fence])
    rng = random.Random(radius)
    for _ in range(3000):
        d = rng.uniform(0, radius + 100)
        lon, lat = destination(*CENTRE, rng.uniform(0, 360), d)
        want = expected(radius - d, 20.0, 0.1)
        if want != "either":
            assert index.classify(lon, lat).get(1) == want, (d, radius)


def test_rectangle_against_geodesic_distance() -> None:
    kx, ky = metres_per_degree(CENTRE[1])
    w, s = CENTRE
    e, n = w + 1500 / kx, s + 1000 / ky
    index = FenceIndex([Geofence(2, "r", "zone", "rectangle", box(w, s, e, n))])
    mid_lat = (s + n) / 2
    for d in (-100, -20.5, -19.5, 0, 19.5, 20.5, 100, 400):
        lon, lat = destination(e, mid_lat, 270, d) if d >= 0 else destination(e, mid_lat, 90, -d)
        assert index.classify(lon, lat).get(2) == expected(d, 20, 0), d
        lon, lat = destination(w + 0.001, n, 180, d) if d >= 0 else destination(w + 0.001, n, 0, -d)
        assert index.classify(lon, lat).get(2) == expected(d, 20, 0), d
    # Off a corner the band is round: 15 m diagonally out is within 20 m, 25 m is not.
    assert index.classify(*destination(e, n, 45, 15)).get(2) == 0
    assert index.classify(*destination(e, n, 45, 25)).get(2) is None


def test_corridor_width_and_margin_in_metres() -> None:
    """A 5 km east-west corridor 100 m wide: 50 m each side, so inside beyond the margin closer
    than 30 m to the line and outside beyond 70 m."""
    kx, _ = metres_per_degree(CENTRE[1])
    line = LineString([CENTRE, (CENTRE[0] + 5000 / kx, CENTRE[1])])
    index = FenceIndex([Geofence(3, "k", "route", "corridor", line, width_m=100)])
    for x in (500.0, 2500.0, 4500.0):
        on_line = (CENTRE[0] + x / kx, CENTRE[1])
        for d in (0, 29.5, 30.5, 50, 69.5, 70.5, 200):
            for azimuth in (0, 180):
                point = destination(*on_line, azimuth, d)
                assert index.classify(*point).get(3) == expected(50 - d, 20, 0), (x, d)
    # Beyond the end: round cap.
    end = (CENTRE[0] + 5000 / kx, CENTRE[1])
    assert index.classify(*destination(*end, 90, 60)).get(3) == 0
    assert index.classify(*destination(*end, 90, 75)).get(3) is None


def test_polygons_agree_with_geos_everywhere() -> None:
    """The per-cell edge test against GEOS's contains on the outer and inner areas, over
    random points around polygons with holes, concave corridors and cells with many edges."""
    rng = random.Random(5)
    kx, ky = metres_per_degree(CENTRE[1])

    def star(lon: float, lat: float, size: float, k: int) -> Polygon:
        ring = []
        for i in range(k):
            a = 2 * math.pi * i / k
            r = size * (1.0 if i % 2 else 0.45)
            ring.append((lon + r * math.cos(a) / kx, lat + r * math.sin(a) / ky))
        return Polygon(ring)

    lon, lat = CENTRE
    holed = Polygon(
        star(lon, lat, 900, 14).exterior.coords, [star(lon, lat, 250, 10).exterior.coords[::-1]]
    )
    wiggle = LineString([(lon - 0.01 + i * 0.001, lat + 0.004 * (-1) ** i) for i in range(21)])
    dense = star(lon + 0.02, lat, 400, 2000)  # > 48 edges per cell: GEOS path
    fences = [
        Geofence(1, "holed", "zone", "polygon", holed),
        Geofence(2, "wiggle", "route", "corridor", wiggle, width_m=80),
        Geofence(3, "dense", "zone", "polygon", dense, margin_m=10),
        Geofence(4, "no margin", "zone", "polygon", star(lon - 0.015, lat - 0.01, 500, 9),
                 margin_m=0),
        # Big, with a band wider than a cell: whole cells inside, and whole cells in the band.
        Geofence(5, "wide band", "zone", "polygon", star(lon + 0.005, lat, 3000, 7),
                 margin_m=600),
    ]  # fmt: skip
    index = FenceIndex(fences)
    wrong = 0
    for _ in range(40000):
        x, y = rng.uniform(lon - 0.03, lon + 0.04), rng.uniform(lat - 0.02, lat + 0.02)
        got = index.classify(x, y)
        for fid in (1, 2, 3, 4, 5):
            outer, inner = index.outer(fid), index.inner(fid)
            want = None
            if shapely.contains_xy(outer, x, y):
                want = 1 if inner is not None and shapely.contains_xy(inner, x, y) else 0
            wrong += got.get(fid) != want
    assert wrong == 0
    # Every way a cell can hold a polygon was used: constant, edge list, GEOS.
    kinds = {kind for entries in index._cells.values() for _, kind, _ in entries}
    assert kinds == {0, 3, 4}


def test_polygon_margin_is_metric() -> None:
    """An axis-aligned square given as a polygon: the band is 20 m either side of each edge."""
    kx, ky = metres_per_degree(CENTRE[1])
    w, s = CENTRE
    square = box(w, s, w + 1000 / kx, s + 1000 / ky)
    index = FenceIndex([Geofence(5, "sq", "zone", "polygon", square)])
    mid = s + 500 / ky
    for d in (-25, -19, 0, 19, 21, 300):  # metres inside the west edge
        point = destination(w, mid, 90, d) if d >= 0 else destination(w, mid, 270, -d)
        assert index.classify(*point).get(5) == expected(d, 20, 0.5), d


def test_points_on_cell_boundaries() -> None:
    """Points exactly on grid lines (multiples of the cell size) are classified like others."""
    index = FenceIndex([Geofence(1, "c", "zone", "circle", Point(116.4, 39.9), radius_m=2000)])
    assert index.classify(116.4, 39.9) == {1: 1}
    assert index.classify(116.405, 39.905) == {1: 1}
    lon, lat = destination(116.4, 39.9, 90, 2000)
    assert index.classify(lon, lat) == {1: 0}


def test_several_fences_and_outside_all() -> None:
    fences = [
        Geofence(1, "a", "zone", "circle", Point(*CENTRE), radius_m=1000),
        Geofence(2, "b", "zone", "circle", Point(*CENTRE), radius_m=500),
        Geofence(3, "c", "zone", "circle", Point(CENTRE[0] + 0.5, CENTRE[1]), radius_m=500),
    ]
    index = FenceIndex(fences)
    assert index.classify(*CENTRE) == {1: 1, 2: 1}
    assert index.classify(*destination(*CENTRE, 0, 500)) == {1: 1, 2: 0}
    assert index.classify(CENTRE[0] + 0.25, CENTRE[1]) == {}
    assert index.classify(0.0, 0.0) == {}


def test_memo_limit_keeps_answers_right() -> None:
    index = FenceIndex(
        [Geofence(1, "c", "zone", "circle", Point(*CENTRE), radius_m=3000)], max_cells=3
    )
    rng = random.Random(2)
    for _ in range(2000):
        lon, lat = rng.uniform(CENTRE[0] - 0.05, CENTRE[0] + 0.05), rng.uniform(39.88, 39.94)
        d = distance_m(*CENTRE, lon, lat)
        want = expected(3000 - d, 20, 0.1)
        if want != "either":
            assert index.classify(lon, lat).get(1) == want
    assert index.stats()["cells"] <= 3


# ----------------------------------------------------------------------------- crossing


def test_crossing_a_circle_and_the_fractions() -> None:
    fence = Geofence(1, "c", "zone", "circle", Point(*CENTRE), radius_m=300)
    index = FenceIndex([fence])
    a, b = destination(*CENTRE, 270, 1000), destination(*CENTRE, 90, 1000)
    assert index.crossing(*a, *b) == [1]
    f_in, f_out = index.crossing_fractions(1, *a, *b)  # type: ignore[misc]
    assert f_in == pytest.approx(0.35, abs=1e-3) and f_out == pytest.approx(0.65, abs=1e-3)
    north = [destination(*p, 0, 310) for p in (a, b)]
    assert index.crossing(*north[0], *north[1]) == []
    assert index.crossing_fractions(1, *north[0], *north[1]) is None
    assert index.crossed_between(*a, *b, {}, {}) == [1]
    assert index.crossed_between(*a, *b, {1: 0}, {}) == []  # an end in the band: not skipped


def test_crossing_polygons_and_long_segments() -> None:
    kx, ky = metres_per_degree(CENTRE[1])
    lon, lat = CENTRE
    fences = [
        Geofence(1, "sq", "zone", "rectangle", box(lon, lat, lon + 200 / kx, lat + 200 / ky)),
        Geofence(2, "tri", "zone", "polygon",
                 Polygon([(lon + 0.3, lat), (lon + 0.31, lat), (lon + 0.305, lat + 0.01)])),
        Geofence(3, "road", "route", "corridor",
                 LineString([(lon + 0.6, lat - 0.1), (lon + 0.6, lat + 0.1)]), width_m=50),
    ]  # fmt: skip
    index = FenceIndex(fences)
    # 70 km segment (STRtree path) through all three.
    y = lat + 100 / ky
    assert index.crossing(lon - 0.1, y, lon + 0.7, lat + 0.002) == [1, 2, 3]
    # Short one through the square's corner only.
    a = destination(lon, lat, 225, 50)
    b = destination(lon + 200 / kx, lat + 200 / ky, 45, 50)
    assert index.crossing(*a, *b) == [1]
    # Grazing past the corridor's edge (40 m east of its axis, beyond the 25 m half-width).
    x = lon + 0.6 + 40 / kx
    assert index.crossing(x, lat - 0.01, x, lat + 0.01) == []
    assert index.crossing(x - 20 / kx, lat - 0.01, x - 20 / kx, lat + 0.01) == [3]
    # Both ends inside the square: it is "passed through" too (crossing() is geometric).
    inside = (lon + 100 / kx, lat + 100 / ky)
    assert index.crossing(*inside, *inside) == [1]


def test_crossed_between_skips_short_hops() -> None:
    """Both ends beyond a 20 m margin of an area: a hop shorter than 40 m cannot have passed
    through it (the shortcut must not hide real skips)."""
    fence = Geofence(1, "tiny", "zone", "circle", Point(*CENTRE), radius_m=1, margin_m=20)
    index = FenceIndex([fence])
    a, b = destination(*CENTRE, 270, 21), destination(*CENTRE, 90, 21)
    assert index.classify(*a) == {} and index.classify(*b) == {}
    assert index.crossed_between(*a, *b, {}, {}) == [1]
    c = destination(*CENTRE, 0, 21)
    assert index.crossed_between(*a, *c, {}, {}) == []


def test_one_dict_per_fixed_cell_and_skips_still_found() -> None:
    """classify gives every position in a cell whose entries are all constant that cell's one
    dict, and crossed_between (and the geofence rule) read that identity as "nothing skipped
    over". So positions in other cells, in an edge cell, or after a rebuild never share it,
    and a hop between two empty cells over a fence still finds it."""
    fence = Geofence(1, "tiny", "zone", "circle", Point(*CENTRE), radius_m=60, margin_m=5)
    index = FenceIndex([fence])
    s = index.cell_deg
    west = (math.floor(CENTRE[0] / s) - 3) * s, math.floor(CENTRE[1] / s) * s
    p, q = (west[0] + 0.2 * s, west[1] + 0.3 * s), (west[0] + 0.7 * s, west[1] + 0.6 * s)
    d = index.classify(*p)
    assert d == {} and index.classify(*q) is d  # one empty cell, one dict
    assert index.crossed_between(*p, *q, d, index.classify(*q)) == []
    a, b = destination(*CENTRE, 270, 1300), destination(*CENTRE, 90, 1300)
    da, db = index.classify(*a), index.classify(*b)
    assert da == db == {} and da is not db  # two empty cells: two dicts
    assert index.crossed_between(*a, *b, da, db) == [1]  # skipped over, found
    # the fence's own cell has a circle test: a new dict per position
    assert index.classify(*CENTRE) == {1: 1}
    assert index.classify(*CENTRE) is not index.classify(*CENTRE)
    index.rebuild([fence])  # same fences, new cells: a new dict
    assert index.classify(*p) is not d and index.classify(*p) == {}


# ----------------------------------------------------------------------------- rebuild


def test_rebuild_version_and_changes() -> None:
    a = Geofence(1, "a", "zone", "circle", Point(*CENTRE), radius_m=500)
    b = Geofence(2, "b", "zone", "circle", Point(CENTRE[0] + 0.1, CENTRE[1]), radius_m=500)
    index = FenceIndex([a, b])
    v = index.version
    assert index.classify(*CENTRE) == {1: 1}
    moved = Geofence(1, "a", "zone", "circle", Point(CENTRE[0] + 0.1, CENTRE[1]), radius_m=900)
    index.rebuild([moved, b])
    assert index.version == v + 1
    assert index.classify(*CENTRE) == {}
    assert index.classify(CENTRE[0] + 0.1, CENTRE[1]) == {1: 1, 2: 1}
    assert set(index.fences) == {1, 2}
    index.rebuild([b])
    assert index.classify(CENTRE[0] + 0.1, CENTRE[1]) == {2: 1}
    with pytest.raises(ValueError, match="two geofences with id 2"):
        index.rebuild([b, b])


def test_outer_and_inner_areas_are_metric() -> None:
    """The shapes the index builds in a local metric plane: every vertex of a circle's outer
    and inner areas is at radius ± margin from the centre, geodesically, to within 1 m."""
    index = FenceIndex([Geofence(1, "c", "zone", "circle", Point(*CENTRE), radius_m=5000)])
    for area, radius in ((index.outer(1), 5020), (index.inner(1), 4980)):
        coords = shapely.get_coordinates(area)
        n = len(coords)
        _, _, dist = GEOD.inv([CENTRE[0]] * n, [CENTRE[1]] * n, coords[:, 0], coords[:, 1])
        assert abs(dist - radius).max() < 1.0


def test_crossed_between_agrees_with_geos() -> None:
    """Random hops of 20 m to 3 km among circles, boxes, polygons and corridors: the fences
    reported are exactly those GEOS finds the segment meeting while both ends are outside."""
    rng = random.Random(11)
    lon, lat = CENTRE
    kx, ky = metres_per_degree(lat)
    fences = []
    for fid in range(1, 41):
        x, y = lon + rng.uniform(-0.03, 0.03), lat + rng.uniform(-0.03, 0.03)
        size = rng.uniform(30, 400)
        shape = fid % 4
        if shape == 0:
            fences.append(Geofence(fid, f"c{fid}", "zone", "circle", Point(x, y), radius_m=size))
        elif shape == 1:
            rect = box(x, y, x + size / kx, y + size * 0.6 / ky)
            fences.append(Geofence(fid, f"r{fid}", "zone", "rectangle", rect))
        elif shape == 2:
            ring = [
                (x + size * math.cos(a) / kx, y + size * 0.5 * math.sin(a) / ky)
                for a in (0, 1.3, 2.2, 3.5, 4.4, 5.6)
            ]
            fences.append(Geofence(fid, f"p{fid}", "zone", "polygon", Polygon(ring)))
        else:
            line = LineString([(x, y), (x + size * 3 / kx, y + size / ky)])
            fences.append(Geofence(fid, f"k{fid}", "route", "corridor", line, width_m=40))
    index = FenceIndex(fences)
    checked = 0
    for _ in range(6000):
        x1, y1 = lon + rng.uniform(-0.035, 0.035), lat + rng.uniform(-0.035, 0.035)
        x2, y2 = destination(x1, y1, rng.uniform(0, 360), rng.choice([20, 80, 300, 3000]))
        before, after = index.classify(x1, y1), index.classify(x2, y2)
        got = index.crossed_between(x1, y1, x2, y2, before, after)
        line = LineString([(x1, y1), (x2, y2)])
        want = []
        for f in fences:
            if f.id in before or f.id in after:
                continue
            if f.shape == "circle":
                meets = index.crossing_fractions(f.id, x1, y1, x2, y2) is not None
            elif f.shape == "corridor":
                meets = index._compiled[f.id].area.intersects(line)
            else:
                meets = f.geometry.intersects(line)
            if meets:
                want.append(f.id)
        assert got == want
        checked += bool(want)
    assert checked > 50
