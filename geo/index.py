"""Which fences a position is in: ``FenceIndex.classify(lon, lat)`` on the ingest hot path.

Every fence is compiled once (:func:`_compile`) into an *outer* area (the fence grown by its
margin) and an *inner* area (shrunk by it), built in a metric plane centred on the fence. A
position is 1 inside the inner area, 0 in the band between the two (it may be either side of
the edge: the band never changes a vehicle's state), and absent outside the outer area.

Speed comes from a grid of cells (``cell_deg``, ~500 m), filled lazily: the first position in a
cell queries an STRtree of the outer areas with the cell's box, and each fence found is reduced
to what the cell needs: a constant (the whole cell is inner, or all band), a circle or box test
in plain arithmetic, or, for a polygon or corridor whose edge crosses the cell, the edges inside
the cell and the state of one reference point, so that a position's state is the reference's
flipped once per edge crossed on the way to it (a point-in-polygon test over a handful of edges,
no GEOS call). Later positions in the cell cost a dict lookup plus those cheap tests.
The index is immutable between :meth:`FenceIndex.rebuild` calls, which bump ``version``.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from shapely.geometry import LineString, box

from geo.fences import CIRCLE, CORRIDOR, RECTANGLE, Geofence, unique_ids
from geo.geodesy import LocalFrame, metres_per_degree

#: Cell kinds of an entry in a grid cell: ``(fence_id, kind, data)``.
_CONST, _CIRC, _RECT, _EDGES, _SHAPELY = 0, 1, 2, 3, 4
#: Lon/lat segments are densified to this step before projecting, so that straight lines in
#: lon/lat and straight lines in the metric plane differ by millimetres.
_DENSIFY_DEG = 0.005
_QUAD_SEGS = 8  # buffer arcs: 32 segments per circle, <= 0.5% of the buffer distance off
_EDGE_LIMIT = 48  # more edges than this in one cell: let GEOS test the point instead
_bisect_left, _bisect_right = bisect.bisect_left, bisect.bisect_right
_floor = math.floor  # (a module global: one lookup less per call on the hot paths)


@dataclass(slots=True)
class _Compiled:
    """A fence reduced to what the index tests (lon/lat geometries, metric parameters)."""

    fence_id: int
    fingerprint: tuple[Any, ...]
    shape: str
    search: shapely.Geometry  # what the STRtree holds: a superset of the outer area
    outer: shapely.Geometry | None  # the fence grown by its margin (None for circles)
    inner: shapely.Geometry | None  # shrunk by its margin (None: the band covers it all)
    area: shapely.Geometry | None  # the fence itself (polygons and corridors)
    bounds: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # of the area
    # Circle: centre, metres per degree at the centre and the latitude correction of the
    # longitude scale, squared radii of the inner and outer circles.
    cx: float = 0.0
    cy: float = 0.0
    kx: float = 0.0
    kxt: float = 0.0
    ky: float = 0.0
    radius: float = 0.0
    margin: float = 0.0


def _densify(geometry: shapely.Geometry) -> shapely.Geometry:
    return shapely.segmentize(geometry, _DENSIFY_DEG)


def _compile(fence: Geofence) -> _Compiled:
    frame = LocalFrame(*fence.centre)
    m = float(fence.margin_m)
    kx, ky = metres_per_degree(fence.centre[1])
    common: dict[str, Any] = {
        "fence_id": fence.id,
        "fingerprint": fence.fingerprint(),
        "shape": fence.shape,
        "margin": m,
        "kx": kx,
        "ky": ky,
    }
    if fence.shape == CIRCLE:
        r = float(fence.radius_m or 0.0)
        cx, cy = fence.geometry.x, fence.geometry.y
        kx, ky = metres_per_degree(cy)
        # The 64-gon is inscribed: grow it so that it covers the true circle, plus a metre.
        # (Classify and crossing test circles in arithmetic; the polygons of outer() and
        # inner() are made on demand.)
        grown = (r + m) / math.cos(math.pi / 64) + 1.0
        search = frame.to_lonlat(frame.to_local(fence.geometry).buffer(grown, quad_segs=16))
        slack_x, slack_y = (r * 1.01 + 1.0) / kx, (r * 1.01 + 1.0) / ky
        return _Compiled(
            **{**common, "kx": kx, "ky": ky},
            search=search,
            outer=None,
            inner=None,
            area=None,
            bounds=(cx - slack_x, cy - slack_y, cx + slack_x, cy + slack_y),
            cx=cx,
            cy=cy,
            kxt=kx * math.tan(math.radians(cy)) * math.pi / 360.0,
            radius=r,
        )
    if fence.shape == RECTANGLE:
        local = frame.to_local(_densify(fence.geometry))
        outer = frame.to_lonlat(local.buffer(m, quad_segs=_QUAD_SEGS))
        search = frame.to_lonlat(local.buffer(m + 1.0, quad_segs=_QUAD_SEGS))
        inner = _inner_box(fence.geometry.bounds, m, kx, ky)
        shapely.prepare(fence.geometry)
        return _Compiled(
            **common,
            search=search,
            outer=outer,
            inner=inner,
            area=fence.geometry,
            bounds=fence.geometry.bounds,
        )
    if fence.shape == CORRIDOR:
        local = frame.to_local(_densify(fence.geometry))
        half = float(fence.width_m or 0.0) / 2.0
        area = frame.to_lonlat(local.buffer(half, quad_segs=_QUAD_SEGS))
        outer = frame.to_lonlat(local.buffer(half + m, quad_segs=_QUAD_SEGS))
        inner_local = local.buffer(half - m, quad_segs=_QUAD_SEGS) if half > m else None
    else:  # polygon
        local = frame.to_local(_densify(fence.geometry))
        area = fence.geometry
        outer = frame.to_lonlat(local.buffer(m, quad_segs=_QUAD_SEGS)) if m else area
        inner_local = local.buffer(-m, quad_segs=_QUAD_SEGS) if m else local
    inner = None
    if inner_local is not None and not inner_local.is_empty:
        inner = area if inner_local is local else frame.to_lonlat(inner_local)
    for geometry in (outer, inner, area):
        if geometry is not None:
            shapely.prepare(geometry)
    return _Compiled(
        **common, search=outer, outer=outer, inner=inner, area=area, bounds=area.bounds
    )


def _circle_polygon(fence: Geofence, radius: float) -> shapely.Geometry:
    frame = LocalFrame(*fence.centre)
    return frame.to_lonlat(frame.to_local(fence.geometry).buffer(radius, quad_segs=16))


def _inner_box(
    bounds: tuple[float, float, float, float], m: float, kx: float, ky: float
) -> shapely.Geometry | None:
    x0, y0, x1, y1 = bounds
    dx, dy = m / kx, m / ky
    if x1 - x0 <= 2 * dx or y1 - y0 <= 2 * dy:
        return None
    return box(x0 + dx, y0 + dy, x1 - dx, y1 - dy)


class FenceIndex:
    """The fences of the platform, indexed for ``classify`` and ``crossing``.

    ``fences``: by id. ``version``: bumped by every :meth:`rebuild`, so holders of per-fence
    state can notice a change. ``cell_deg``: grid cell size; ``max_cells``: memoised cells kept
    before the memo is dropped and refilled (bounds memory on fleets that roam everywhere).
    """

    def __init__(
        self,
        fences: Iterable[Geofence] = (),
        cell_deg: float = 0.005,
        max_cells: int = 1_000_000,
    ) -> None:
        self.fences: dict[int, Geofence] = {}
        self.version = 0
        self.cell_deg = cell_deg
        self.max_cells = max_cells
        self._inv = 1.0 / cell_deg
        self._compiled: dict[int, _Compiled] = {}
        self._cells: dict[tuple[int, int], tuple[tuple[int, int, Any], ...]] = {}
        #: Per filled cell, its entries that are not constant, with their fence's bounds:
        #: ``(fence_id, kind, data, west, south, east, north)``. Only these can have been
        #: skipped over by a segment inside the cell (see :meth:`crossed_between`).
        self._open: dict[tuple[int, int], tuple[tuple[Any, ...], ...]] = {}
        #: What classify reads, one lookup per position: per filled cell whose entries are all
        #: constant (or that has none), its classification, one dict per cell shared by every
        #: position in it (see :meth:`classify` on what that identity means); per other cell,
        #: its entries (as ``_cells``).
        self._fixed: dict[tuple[int, int], Any] = {}
        self._order: list[_Compiled] = []
        self._tree = shapely.STRtree([])
        self._min_margin = 0.0
        self.rebuild(fences)

    # ------------------------------------------------------------------ building

    def rebuild(self, fences: Iterable[Geofence]) -> None:
        """Replace the fences. Shapes of fences whose geometry, sizes and margin did not
        change are reused, so editing one fence of 10,000 costs one compile plus the tree."""
        by_id = unique_ids(fences)
        compiled: dict[int, _Compiled] = {}
        for fid, fence in by_id.items():
            old = self._compiled.get(fid)
            fingerprint = fence.fingerprint()
            compiled[fid] = old if old and old.fingerprint == fingerprint else _compile(fence)
        self.fences = by_id
        self._compiled = compiled
        self._order = list(compiled.values())
        self._tree = shapely.STRtree([c.search for c in self._order])
        self._cells = {}
        self._open = {}
        self._fixed = {}
        self._min_margin = min((f.margin_m for f in by_id.values()), default=0.0)
        self.version += 1

    def outer(self, fence_id: int) -> shapely.Geometry:
        """The fence grown by its margin (lon/lat): beyond it a position is "outside"."""
        c = self._compiled[fence_id]
        if c.shape == CIRCLE:
            return _circle_polygon(self.fences[fence_id], c.radius + c.margin)
        return c.outer

    def inner(self, fence_id: int) -> shapely.Geometry | None:
        """The fence shrunk by its margin (lon/lat; None when the band covers it)."""
        c = self._compiled[fence_id]
        if c.shape == CIRCLE:
            r = c.radius - c.margin
            return _circle_polygon(self.fences[fence_id], r) if r > 0 else None
        return c.inner

    # ------------------------------------------------------------------ classify

    def classify(self, lon: float, lat: float) -> dict[int, int]:
        """Fence id -> 1 (inside beyond the margin) or 0 (within the margin of the edge);
        fences not in the result are outside beyond their margin.

        The result is the caller's to read, not to change: in a cell whose fences all give one
        value wherever the position is in it (most cells, empty ones included), every
        position gets the cell's one dict. So the same dict object for two positions means
        both are in one such cell, which :meth:`crossed_between` uses (nothing can have been
        skipped over there). Each cell has a dict of its own, and a rebuild makes new ones.
        """
        if not self.fences:
            return {}
        inv = self._inv
        key = (_floor(lon * inv), _floor(lat * inv))
        entries = self._fixed.get(key)
        if entries is None:
            self._fill(key)
            entries = self._fixed[key]
        if entries.__class__ is dict:
            return entries  # type: ignore[no-any-return]
        out: dict[int, int] = {}
        for fid, kind, data in entries:
            if kind == _CONST:
                out[fid] = data
            elif kind == _CIRC:
                cx, cy, kx, kxt, ky, r_in2, r_out2 = data
                dy = (lat - cy) * ky
                dx = (lon - cx) * (kx - kxt * (lat - cy))
                d2 = dx * dx + dy * dy
                if d2 <= r_out2:
                    out[fid] = 1 if d2 < r_in2 else 0
            elif kind == _RECT:
                w, s, e, n, iw, is_, ie, in_, kx, ky, m2 = data
                if iw < lon < ie and is_ < lat < in_:
                    out[fid] = 1
                else:
                    dx = (w - lon if lon < w else lon - e if lon > e else 0.0) * kx
                    dy = (s - lat if lat < s else lat - n if lat > n else 0.0) * ky
                    if dx * dx + dy * dy <= m2:
                        out[fid] = 0
            elif kind == _EDGES:
                _, rx, outer, inner = data
                if _inside(outer, rx, lon, lat):
                    out[fid] = 1 if _inside(inner, rx, lon, lat) else 0
            else:  # _SHAPELY: a cell with too many edges for the Python test
                outer, inner = data
                if shapely.contains_xy(outer, lon, lat):
                    inside = inner is not None and shapely.contains_xy(inner, lon, lat)
                    out[fid] = 1 if inside else 0
        return out

    def _fill(self, key: tuple[int, int]) -> tuple[tuple[int, int, Any], ...]:
        if len(self._cells) >= self.max_cells:
            self._cells.clear()
            self._open.clear()
            self._fixed.clear()
        s = self.cell_deg
        x0, y0 = key[0] * s, key[1] * s
        x1, y1 = x0 + s, y0 + s
        cell = box(x0, y0, x1, y1)
        entries = []
        for i in self._tree.query(cell, predicate="intersects"):
            entry = self._entry(self._order[i], cell, x0, y0, x1, y1)
            if entry is not None:
                entries.append(entry)
        result = tuple(sorted(entries, key=lambda e: e[0]))
        self._cells[key] = result
        compiled = self._compiled
        open_ = self._open[key] = tuple(
            (fid, kind, data, *compiled[fid].bounds) for fid, kind, data in result if kind != _CONST
        )
        self._fixed[key] = {fid: data for fid, _, data in result} if not open_ else result
        return result

    def _entry(
        self, c: _Compiled, cell: shapely.Geometry, x0: float, y0: float, x1: float, y1: float
    ) -> tuple[int, int, Any] | None:
        fid = c.fence_id
        if c.shape == CIRCLE:
            return self._circle_entry(c, x0, y0, x1, y1)
        if c.shape == RECTANGLE:
            if c.inner is not None:
                iw, is_, ie, in_ = c.inner.bounds
                if iw < x0 and x1 < ie and is_ < y0 and y1 < in_:
                    return (fid, _CONST, 1)
            else:
                iw, is_, ie, in_ = (0.0, 0.0, 0.0, 0.0)
            w, s, e, n = c.area.bounds
            m = c.margin
            return (fid, _RECT, (w, s, e, n, iw, is_, ie, in_, c.kx, c.ky, m * m))
        if c.inner is not None and c.inner.contains(cell):
            return (fid, _CONST, 1)
        if not c.outer.intersects(cell):
            return None
        if c.outer.contains(cell) and (c.inner is None or not c.inner.intersects(cell)):
            return (fid, _CONST, 0)
        # The reference point: inside the cell, away from its corners and centre lines, so
        # that it is unlikely to sit exactly on an edge.
        s = self.cell_deg
        rx, ry = x0 + s * 0.5123457, y0 + s * 0.4876543
        grown = box(x0 - s * 1e-6, y0 - s * 1e-6, x1 + s * 1e-6, y1 + s * 1e-6)
        o_edges = _edges_in(c.outer, grown)
        i_edges = _edges_in(c.inner, grown) if c.inner is not None else ()
        if len(o_edges) + len(i_edges) > _EDGE_LIMIT:
            return (fid, _SHAPELY, (c.outer, c.inner))
        o_ref = bool(shapely.contains_xy(c.outer, rx, ry))
        i_ref = c.inner is not None and bool(shapely.contains_xy(c.inner, rx, ry))
        outer = _parity(o_ref, o_edges, rx, ry)
        return (fid, _EDGES, (o_edges, rx, outer, _parity(i_ref, i_edges, rx, ry)))

    def _circle_entry(
        self, c: _Compiled, x0: float, y0: float, x1: float, y1: float
    ) -> tuple[int, int, Any] | None:
        fid, r, m = c.fence_id, c.radius, c.margin
        # Nearest point and farthest corner of the cell from the centre, in metres (the same
        # approximation as the per-position test, with a metre of slack either way).
        near = self._circle_distance(c, min(max(c.cx, x0), x1), min(max(c.cy, y0), y1))
        far = max(self._circle_distance(c, x, y) for x in (x0, x1) for y in (y0, y1))
        if near > r + m + 1.0:
            return None
        if far < r - m - 1.0:
            return (fid, _CONST, 1)
        if near > r - m + 1.0 and far < r + m - 1.0:
            return (fid, _CONST, 0)
        r_in = max(r - m, 0.0)
        return (
            fid,
            _CIRC,
            (c.cx, c.cy, c.kx, c.kxt, c.ky, r_in * r_in if r > m else -1.0, (r + m) ** 2),
        )

    @staticmethod
    def _circle_distance(c: _Compiled, lon: float, lat: float) -> float:
        dy = (lat - c.cy) * c.ky
        dx = (lon - c.cx) * (c.kx - c.kxt * (lat - c.cy))
        return math.hypot(dx, dy)

    # ------------------------------------------------------------------ crossing

    def crossing(self, lon1: float, lat1: float, lon2: float, lat2: float) -> list[int]:
        """Ids of the fences whose area the straight segment between two positions passes
        through (sorted)."""
        if lon1 == lon2 and lat1 == lat2:
            return [fid for fid, v in self.classify(lon1, lat1).items() if v == 1]
        compiled = self._compiled
        return [
            fid
            for fid in sorted(self._segment_candidates(lon1, lat1, lon2, lat2))
            if self._hits(compiled[fid], lon1, lat1, lon2, lat2)
        ]

    def crossed_between(
        self,
        lon1: float,
        lat1: float,
        lon2: float,
        lat2: float,
        before: dict[int, int],
        after: dict[int, int],
    ) -> list[int]:
        """The fences a sparse track skipped over: outside beyond the margin at both ends
        (absent from ``before`` and ``after``, the two positions' :meth:`classify`), yet the
        segment between them passes through the fence's area (sorted ids).

        The rules call this for every pair of consecutive fixes, so it is cheap when nothing can
        have been skipped: both ends more than a margin away from an area means the segment is
        longer than twice that margin, which a fix every few seconds never is.
        """
        if before is after or (lon1 == lon2 and lat1 == lat2):
            # One cell whose entries are all constant (see classify), or a standing vehicle:
            # nothing can have been skipped over.
            return []
        inv = self._inv
        ix1, iy1 = _floor(lon1 * inv), _floor(lat1 * inv)
        ix2, iy2 = _floor(lon2 * inv), _floor(lat2 * inv)
        open_ = self._open
        if ix1 != ix2 or iy1 != iy2:
            dx, dy = ix2 - ix1, iy2 - iy1
            if -1 <= dx <= 1 and -1 <= dy <= 1:
                # Neighbouring cells (most segments that leave a cell): the segment lies in
                # these two, or the 2 x 2 block for a diagonal step. Most have no entry that
                # survives the cheap rejections, so look for one before the full search.
                keys = ((ix1, iy1), (ix2, iy2)) if not (dx and dy) else (
                    (ix1, iy1), (ix2, iy2), (ix1, iy2), (ix2, iy1),
                )  # fmt: skip
                for key in keys:
                    candidates = open_.get(key)
                    if candidates is None:
                        self._fill(key)
                        candidates = open_[key]
                    for fid, _, _, w, s, e, n in candidates:
                        if not (
                            fid in before
                            or fid in after
                            or (lon1 < w and lon2 < w)
                            or (lon1 > e and lon2 > e)
                            or (lat1 < s and lat2 < s)
                            or (lat1 > n and lat2 > n)
                        ):
                            break
                    else:
                        continue
                    break  # a candidate: the full search below
                else:
                    return []
            return self._crossed_in_block(ix1, iy1, ix2, iy2, lon1, lat1, lon2, lat2, before, after)
        # The usual case, both ends in one cell. A constant entry is in ``after`` whatever the
        # position in the cell, so only the cell's other entries can have been skipped over,
        # and each fence has one entry: its outer edges there tell whether the segment
        # entered the outer area, with no GEOS call.
        candidates = open_.get((ix1, iy1))
        if candidates is None:
            self._fill((ix1, iy1))
            candidates = open_[ix1, iy1]
        if not candidates:
            return []
        hits: list[int] = []
        length = -1.0
        for fid, kind, data, w, s, e, n in candidates:
            if (
                fid in before
                or fid in after
                or (lon1 < w and lon2 < w)
                or (lon1 > e and lon2 > e)
                or (lat1 < s and lat2 < s)
                or (lat1 > n and lat2 > n)
                or (kind == _EDGES and not _crosses_any(data[0], lon1, lat1, lon2, lat2))
            ):
                continue
            if length < 0.0:
                length = _length_bound(lon1, lat1, lon2, lat2)
            c = self._compiled[fid]
            if (
                length > 2 * self._min_margin
                and length > 2 * c.margin
                and self._hits(c, lon1, lat1, lon2, lat2)
            ):
                hits.append(fid)
        return hits

    def _crossed_in_block(
        self,
        ix1: int,
        iy1: int,
        ix2: int,
        iy2: int,
        lon1: float,
        lat1: float,
        lon2: float,
        lat2: float,
        before: dict[int, int],
        after: dict[int, int],
    ) -> list[int]:
        """:meth:`crossed_between` for a segment whose ends are in different cells."""
        # Per candidate fence, its non-constant entries in the cells the segment lies in (a
        # constant entry tells nothing: a fence with only those there is not entered), after
        # cheap rejections (the bounding box first, before any trigonometry); for a long
        # segment, the STRtree's candidates with no entries.
        found: dict[int, list[tuple[int, Any]]] = {}
        x0, x1 = (ix1, ix2) if ix1 <= ix2 else (ix2, ix1)
        y0, y1 = (iy1, iy2) if iy1 <= iy2 else (iy2, iy1)
        if (x1 - x0 + 1) * (y1 - y0 + 1) > 16:
            for fid in self._segment_candidates(lon1, lat1, lon2, lat2):
                if fid not in before and fid not in after:
                    found[fid] = []
        else:
            open_ = self._open
            for ix in range(x0, x1 + 1):
                for iy in range(y0, y1 + 1):
                    candidates = open_.get((ix, iy))
                    if candidates is None:
                        self._fill((ix, iy))
                        candidates = open_[ix, iy]
                    for fid, kind, data, w, s, e, n in candidates:
                        if (
                            fid in before
                            or fid in after
                            or (lon1 < w and lon2 < w)
                            or (lon1 > e and lon2 > e)
                            or (lat1 < s and lat2 < s)
                            or (lat1 > n and lat2 > n)
                        ):
                            continue
                        parts = found.get(fid)
                        if parts is None:
                            found[fid] = [(kind, data)]
                        else:
                            parts.append((kind, data))
        if not found:
            return []
        length = _length_bound(lon1, lat1, lon2, lat2)
        if length <= 2 * self._min_margin:
            return []
        compiled = self._compiled
        hits = []
        for fid, parts in found.items():
            c = compiled[fid]
            if length <= 2 * c.margin:
                continue
            if (
                parts
                and all(kind == _EDGES for kind, _ in parts)
                and not any(_crosses_any(data[0], lon1, lat1, lon2, lat2) for _, data in parts)
            ):
                # The segment lies in these cells, both ends outside the outer area, and it
                # crosses none of the outer boundary's edges there: it never enters it.
                continue
            if self._hits(c, lon1, lat1, lon2, lat2):
                hits.append(fid)
        hits.sort()
        return hits

    def _block(self, ix1: int, iy1: int, ix2: int, iy2: int) -> list[tuple[int, int, Any]] | None:
        """The entries of the cells from (ix1, iy1) to (ix2, iy2), which hold a segment
        between those cells (None if that is more than 4 x 4 cells)."""
        if ix1 > ix2:
            ix1, ix2 = ix2, ix1
        if iy1 > iy2:
            iy1, iy2 = iy2, iy1
        if (ix2 - ix1 + 1) * (iy2 - iy1 + 1) > 16:
            return None
        cells = self._cells
        out: list[tuple[int, int, Any]] = []
        for ix in range(ix1, ix2 + 1):
            for iy in range(iy1, iy2 + 1):
                entries = cells.get((ix, iy))
                if entries is None:
                    entries = self._fill((ix, iy))
                out.extend(entries)
        return out

    def _segment_candidates(self, lon1: float, lat1: float, lon2: float, lat2: float) -> set[int]:
        """Fences that may meet the segment: from the grid for a short one (the block of cells
        around its ends holds every fence it can touch), else from the STRtree."""
        inv = self._inv
        block = self._block(
            math.floor(lon1 * inv),
            math.floor(lat1 * inv),
            math.floor(lon2 * inv),
            math.floor(lat2 * inv),
        )
        if block is not None:
            return {fid for fid, _, _ in block}
        line = LineString([(lon1, lat1), (lon2, lat2)])
        return {self._order[i].fence_id for i in self._tree.query(line, predicate="intersects")}

    def _hits(self, c: _Compiled, lon1: float, lat1: float, lon2: float, lat2: float) -> bool:
        """Whether the segment meets the fence's area (bounding boxes first, then exact)."""
        w, s, e, n = c.bounds
        if (
            (lon1 < w and lon2 < w)
            or (lon1 > e and lon2 > e)
            or (lat1 < s and lat2 < s)
            or (lat1 > n and lat2 > n)
        ):
            return False
        if c.shape == CIRCLE:
            return self._circle_fractions(c, lon1, lat1, lon2, lat2) is not None
        if c.shape == RECTANGLE:
            return _meets_box(w, s, e, n, lon1, lat1, lon2, lat2)
        return bool(c.area.intersects(LineString([(lon1, lat1), (lon2, lat2)])))

    def crossing_fractions(
        self, fence_id: int, lon1: float, lat1: float, lon2: float, lat2: float
    ) -> tuple[float, float] | None:
        """Where the segment enters and leaves the fence's area, as fractions of its length
        (0 = first point, 1 = second), or None if it misses it. Used to time a crossing."""
        c = self._compiled[fence_id]
        if c.shape == CIRCLE:
            return self._circle_fractions(c, lon1, lat1, lon2, lat2)
        if lon1 == lon2 and lat1 == lat2:
            inside = shapely.contains_xy(c.area, lon1, lat1)
            return (0.0, 1.0) if inside else None
        line = LineString([(lon1, lat1), (lon2, lat2)])
        if not c.area.intersects(line):
            return None
        part = c.area.intersection(line)
        coords = shapely.get_coordinates(part)
        if len(coords) == 0:
            return None
        fractions = line.project(shapely.points(coords), normalized=True)
        return float(np.min(fractions)), float(np.max(fractions))

    @staticmethod
    def _circle_fractions(
        c: _Compiled, lon1: float, lat1: float, lon2: float, lat2: float
    ) -> tuple[float, float] | None:
        # In the circle's local metric plane: |p1 + t (p2 - p1)|² = r², 0 <= t <= 1.
        kx = c.kx - c.kxt * ((lat1 + lat2) / 2 - c.cy)
        x1, y1 = (lon1 - c.cx) * kx, (lat1 - c.cy) * c.ky
        x2, y2 = (lon2 - c.cx) * kx, (lat2 - c.cy) * c.ky
        dx, dy = x2 - x1, y2 - y1
        a = dx * dx + dy * dy
        b = 2 * (x1 * dx + y1 * dy)
        cc = x1 * x1 + y1 * y1 - c.radius * c.radius
        if a == 0:
            return (0.0, 1.0) if cc <= 0 else None
        disc = b * b - 4 * a * cc
        if disc < 0:
            return None
        root = math.sqrt(disc)
        t1, t2 = (-b - root) / (2 * a), (-b + root) / (2 * a)
        if t2 < 0 or t1 > 1:
            return None
        return max(t1, 0.0), min(t2, 1.0)

    # ------------------------------------------------------------------ introspection

    def stats(self) -> dict[str, float]:
        """Memo size and the mean number of fences per filled cell (for benchmarks)."""
        cells = self._cells
        entries = sum(len(e) for e in cells.values())
        return {
            "fences": len(self.fences),
            "cells": len(cells),
            "entries_per_cell": entries / len(cells) if cells else 0.0,
        }


def _edges_in(geometry: shapely.Geometry, cell: shapely.Geometry) -> tuple[tuple[float, ...], ...]:
    """The boundary edges of ``geometry`` clipped to ``cell``: (ax, ay, bx, by, ex, ey)."""
    clipped = shapely.intersection(geometry.boundary, cell)
    edges = []
    for part in shapely.get_parts(clipped):
        if part.geom_type == "Point":
            continue
        if part.geom_type == "GeometryCollection" or part.geom_type.startswith("Multi"):
            lines = shapely.get_parts(part)
        else:
            lines = [part]
        for line in lines:
            if line.geom_type not in ("LineString", "LinearRing"):
                continue
            coords = shapely.get_coordinates(line)
            for (ax, ay), (bx, by) in itertools.pairwise(coords):
                if ax == bx and ay == by:
                    continue
                ax, ay, bx, by = float(ax), float(ay), float(bx), float(by)
                edges.append((ax, ay, bx, by, bx - ax, by - ay))
    return tuple(edges)


def _length_bound(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """The segment's length in metres, a little over (the shortcuts that use it only skip
    segments too short to have passed through a fence's margin on both sides)."""
    k = 111_000.0
    dx = (lon2 - lon1) * k * math.cos(math.radians(lat1))
    dy = (lat2 - lat1) * k
    return math.sqrt(dx * dx + dy * dy) * 1.01


def _crosses_any(
    edges: tuple[tuple[float, ...], ...], x1: float, y1: float, x2: float, y2: float
) -> bool:
    """Whether the segment (x1, y1)-(x2, y2) crosses any of the edges."""
    dx, dy = x2 - x1, y2 - y1
    for ax, ay, bx, by, ex, ey in edges:
        if (dx * (ay - y1) - dy * (ax - x1) > 0) != (dx * (by - y1) - dy * (bx - x1) > 0) and (
            ex * (y1 - ay) - ey * (x1 - ax) > 0
        ) != (ex * (y2 - ay) - ey * (x2 - ax) > 0):
            return True
    return False


def _meets_box(
    w: float, s: float, e: float, n: float, x1: float, y1: float, x2: float, y2: float
) -> bool:
    """Whether the segment meets the box (Liang-Barsky clipping)."""
    t0, t1 = 0.0, 1.0
    dx, dy = x2 - x1, y2 - y1
    for p, q in ((-dx, x1 - w), (dx, e - x1), (-dy, y1 - s), (dy, n - y1)):
        if p == 0:
            if q < 0:
                return False
        elif p < 0:
            t0 = max(t0, q / p)
        else:
            t1 = min(t1, q / p)
        if t0 > t1:
            return False
    return True


_Parity = tuple[bool, list[float], int, list[float], list[tuple[tuple[float, float, float], ...]]]


def _parity(
    ref_inside: bool, edges: tuple[tuple[float, ...], ...], rx: float, ry: float
) -> _Parity:
    """What :func:`_inside` needs of one boundary in one cell, whose reference point r is
    ``ref_inside``: the sorted latitudes where the boundary crosses the meridian of r, how
    many of them are below r, and the edges that are not horizontal cut into latitude bands:
    the sorted distinct end latitudes of those edges, and per band between two of them the
    edges that straddle it, as (ax, ay, dx/dy). An edge straddles a latitude y when
    min(ay, by) <= y < max(ay, by), the same for every y of a band ``[ys[i-1], ys[i])``, so
    a position's latitude picks its band's few edges by bisection instead of testing all."""
    ys = sorted(
        ay + (rx - ax) * ey / ex for ax, ay, bx, by, ex, ey in edges if (ax > rx) != (bx > rx)
    )
    slanted = [
        (min(ay, by), max(ay, by), (ax, ay, ex / ey))
        for ax, ay, bx, by, ex, ey in edges
        if ay != by
    ]
    breaks = sorted({y for lo, hi, _ in slanted for y in (lo, hi)})
    bands: list[tuple[tuple[float, float, float], ...]] = [()]  # below the lowest end
    for lo_band, hi_band in itertools.pairwise(breaks):
        bands.append(tuple(e for lo, hi, e in slanted if lo <= lo_band and hi >= hi_band))
    bands.append(())  # at or above the highest end
    return ref_inside, ys, bisect.bisect_left(ys, ry), breaks, bands


def _inside(parity: _Parity, rx: float, qx: float, qy: float) -> bool:
    """Whether q is inside, by the parity of the boundary crossings on the way from the
    reference point r (both in one cell, as are the edges): along r's meridian to q's
    latitude (a bisection in the sorted crossings), then along that parallel to q (only
    the edges that straddle it can be crossed: those of q's latitude band)."""
    ref_inside, ys, below, breaks, bands = parity
    inside = ref_inside != bool((_bisect_left(ys, qy) - below) & 1)
    for ax, ay, slope in bands[_bisect_right(breaks, qy)]:
        x = ax + (qy - ay) * slope
        if (x > qx) != (x > rx):
            inside = not inside
    return inside
