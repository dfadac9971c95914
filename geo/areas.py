"""A supervisor's area (a district, a road section) from GeoJSON: one MultiPolygon, WGS-84.

Accepted: a Polygon or MultiPolygon geometry, a Feature of one, or a FeatureCollection whose
polygons are merged (a district given as its parts). Coordinates must be lon/lat degrees;
anything else (a point, a line, a self-intersecting ring) is refused with a message, because a
wrong area silently hides vehicles from the person supervising them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, Polygon, shape

_POLYGONS = ("Polygon", "MultiPolygon")


class AreaError(ValueError):
    """The GeoJSON is not a usable area (the message says why)."""


def _geometries(data: Any) -> list[dict[str, Any]]:
    if not isinstance(data, dict):
        raise AreaError("an area must be a GeoJSON object")
    kind = data.get("type")
    if kind == "FeatureCollection":
        out = []
        for feature in data.get("features") or []:
            out.extend(_geometries(feature))
        return out
    if kind == "Feature":
        return _geometries(data.get("geometry"))
    if kind in _POLYGONS:
        return [data]
    raise AreaError(f"an area must be polygons, not {kind!r}")


def area_from_geojson(data: Any) -> MultiPolygon:
    """The area the GeoJSON (parsed) describes, as one valid MultiPolygon."""
    parts = _geometries(data)
    if not parts:
        raise AreaError("the GeoJSON holds no polygon")
    polygons: list[Polygon] = []
    for part in parts:
        try:
            geometry = shape(part)
        except (ValueError, TypeError, AttributeError, IndexError) as exc:
            raise AreaError(f"unreadable {part.get('type')}: {exc}") from None
        if geometry.is_empty:
            raise AreaError("an empty polygon")
        if not geometry.is_valid:
            reason = shapely.is_valid_reason(geometry)
            raise AreaError(f"not a valid polygon: {reason}")
        minx, miny, maxx, maxy = geometry.bounds
        if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
            raise AreaError("coordinates must be longitude, latitude in degrees (WGS-84)")
        polygons.extend(getattr(geometry, "geoms", [geometry]))
    merged = shapely.union_all(polygons)
    if isinstance(merged, Polygon):
        merged = MultiPolygon([merged])
    if not isinstance(merged, MultiPolygon):  # pragma: no cover - union of polygons
        raise AreaError("the polygons do not make an area")
    return merged


def read_area(path: Path | str) -> MultiPolygon:
    """:func:`area_from_geojson` of a file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AreaError(f"{path}: {exc}") from None
    return area_from_geojson(data)


def area_geojson(area: MultiPolygon) -> str:
    """The area as GeoJSON geometry text (what the store keeps and the scope carries)."""
    return shapely.to_geojson(area)
