"""Distances, local metric frames and datum conversions for the geofence code.

* Reported distances are geodesics on WGS-84 (``pyproj.Geod``).
* Fence shapes with sizes in metres (a circle's radius, a corridor's width, a margin) are built
  in an azimuthal equidistant projection centred on the fence (:class:`LocalFrame`) and brought
  back to lon/lat: at fence scale (tens of km) that plane is metric to well under a metre.
* The hot paths use :func:`metres_per_degree` (the ellipsoid's radii of curvature at a latitude):
  an equirectangular approximation good to centimetres over a few kilometres.
* CGCS2000 (EPSG:4490) input is transformed to WGS-84. The two realisations differ by
  centimetres, so PROJ's transformation is a ballpark identity; going through it keeps the
  datum explicit and lets a grid-based transformation take over where one is installed.
* GCJ-02 (the "Mars" offset Chinese web maps such as AutoNavi and Tencent use) is for display
  only: positions, fences and rules stay WGS-84, and only a map layer drawn on GCJ-02 tiles
  converts at the edge.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import shapely
from pyproj import Geod, Transformer

#: WGS-84 ellipsoid (semi-major axis in metres, first eccentricity squared).
WGS84_A = 6378137.0
WGS84_E2 = 6.69437999014e-3
GEOD = Geod(ellps="WGS84")

# --------------------------------------------------------------------------- distances


def distance_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Geodesic distance in metres between two WGS-84 points."""
    return float(GEOD.inv(lon1, lat1, lon2, lat2)[2])


def destination(lon: float, lat: float, azimuth_deg: float, distance: float) -> tuple[float, float]:
    """The point ``distance`` metres from (lon, lat) along ``azimuth_deg`` (from north)."""
    lon2, lat2, _ = GEOD.fwd(lon, lat, azimuth_deg, distance)
    return float(lon2), float(lat2)


def metres_per_degree(lat: float) -> tuple[float, float]:
    """(metres per degree of longitude, metres per degree of latitude) at ``lat`` on WGS-84."""
    phi = math.radians(lat)
    w = 1.0 - WGS84_E2 * math.sin(phi) ** 2
    n = WGS84_A / math.sqrt(w)  # prime vertical radius of curvature
    m = WGS84_A * (1.0 - WGS84_E2) / (w * math.sqrt(w))  # meridional radius of curvature
    return math.radians(1.0) * n * math.cos(phi), math.radians(1.0) * m


# --------------------------------------------------------------------------- local frames


@lru_cache(maxsize=4096)
def _aeqd(lon0: float, lat0: float) -> Transformer:
    # A pipeline string is ~100x cheaper to build than a CRS pair (0.06 ms vs 15 ms).
    return Transformer.from_pipeline(
        "+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad "
        f"+step +proj=aeqd +lat_0={lat0!r} +lon_0={lon0!r} +ellps=WGS84"
    )


class LocalFrame:
    """An azimuthal equidistant plane (metres) centred on (lon0, lat0).

    Distances from the centre are exact and the scale error elsewhere is about (d/R)²/6
    (3e-7 at 10 km, 3e-5 at 100 km), so buffering in it is metric at any fence's scale.
    """

    def __init__(self, lon0: float, lat0: float) -> None:
        # Rounded so that nearby fences share one cached transformer (0.01° is ~1 km: no
        # measurable change in scale).
        self.lon0, self.lat0 = round(lon0, 2), round(lat0, 2)
        self._transformer = _aeqd(self.lon0, self.lat0)

    @classmethod
    def around(cls, geometry: shapely.Geometry) -> LocalFrame:
        """A frame centred on a geometry's bounding box."""
        x0, y0, x1, y1 = shapely.bounds(geometry)
        return cls((x0 + x1) / 2, (y0 + y1) / 2)

    def to_local(self, geometry: shapely.Geometry) -> shapely.Geometry:
        return shapely.transform(geometry, self._forward)

    def to_lonlat(self, geometry: shapely.Geometry) -> shapely.Geometry:
        return shapely.transform(geometry, self._inverse)

    def _forward(self, coords: np.ndarray) -> np.ndarray:
        x, y = self._transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack((x, y))

    def _inverse(self, coords: np.ndarray) -> np.ndarray:
        x, y = self._transformer.transform(coords[:, 0], coords[:, 1], direction="INVERSE")
        return np.column_stack((x, y))


# --------------------------------------------------------------------------- CGCS2000


@lru_cache(maxsize=1)
def _cgcs2000_to_wgs84() -> Transformer:
    return Transformer.from_crs("EPSG:4490", "EPSG:4326", always_xy=True)


def cgcs2000_to_wgs84(lon: float, lat: float) -> tuple[float, float]:
    """A CGCS2000 (EPSG:4490) lon/lat as WGS-84."""
    x, y = _cgcs2000_to_wgs84().transform(lon, lat)
    return float(x), float(y)


def cgcs2000_geometry_to_wgs84(geometry: shapely.Geometry) -> shapely.Geometry:
    """A shapely geometry in CGCS2000 lon/lat, transformed to WGS-84."""
    transformer = _cgcs2000_to_wgs84()

    def convert(coords: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack((x, y))

    return shapely.transform(geometry, convert)


# --------------------------------------------------------------------------- GCJ-02 (display)

# GCJ-02 is defined on the Krasovsky 1940 ellipsoid with a published polynomial-and-sine
# obfuscation of the offset; it applies only inside China.
_KRASOVSKY_A = 6378245.0
_KRASOVSKY_E2 = 0.00669342162296594323


def in_china(lon: float, lat: float) -> bool:
    """The rough box where map providers apply the GCJ-02 offset (none outside it)."""
    return 72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271


def _offset(lon: float, lat: float) -> tuple[float, float]:
    """The GCJ-02 offset (degrees) to add to a WGS-84 point inside China."""
    x, y = lon - 105.0, lat - 35.0
    pi = math.pi
    waves = (20.0 * math.sin(6.0 * x * pi) + 20.0 * math.sin(2.0 * x * pi)) * 2.0 / 3.0
    d_lat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    d_lat += waves
    d_lat += (20.0 * math.sin(y * pi) + 40.0 * math.sin(y / 3.0 * pi)) * 2.0 / 3.0
    d_lat += (160.0 * math.sin(y / 12.0 * pi) + 320.0 * math.sin(y * pi / 30.0)) * 2.0 / 3.0
    d_lon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    d_lon += waves
    d_lon += (20.0 * math.sin(x * pi) + 40.0 * math.sin(x / 3.0 * pi)) * 2.0 / 3.0
    d_lon += (150.0 * math.sin(x / 12.0 * pi) + 300.0 * math.sin(x / 30.0 * pi)) * 2.0 / 3.0
    phi = math.radians(lat)
    w = 1.0 - _KRASOVSKY_E2 * math.sin(phi) ** 2
    m = _KRASOVSKY_A * (1.0 - _KRASOVSKY_E2) / (w * math.sqrt(w))
    n = _KRASOVSKY_A / math.sqrt(w)
    return (
        d_lon * 180.0 / (n * math.cos(phi) * pi),
        d_lat * 180.0 / (m * pi),
    )


def wgs84_to_gcj02(lon: float, lat: float) -> tuple[float, float]:
    """A WGS-84 point as GCJ-02 (for drawing on GCJ-02 tiles); unchanged outside China."""
    if not in_china(lon, lat):
        return lon, lat
    d_lon, d_lat = _offset(lon, lat)
    return lon + d_lon, lat + d_lat


def gcj02_to_wgs84(lon: float, lat: float, tolerance_deg: float = 1e-9) -> tuple[float, float]:
    """The inverse of :func:`wgs84_to_gcj02` (a fixed-point iteration; ~1e-9° after a few
    steps), e.g. for a fence an operator drew on a GCJ-02 map."""
    if not in_china(lon, lat):
        return lon, lat
    w_lon, w_lat = lon, lat
    for _ in range(30):
        g_lon, g_lat = wgs84_to_gcj02(w_lon, w_lat)
        e_lon, e_lat = g_lon - lon, g_lat - lat
        w_lon, w_lat = w_lon - e_lon, w_lat - e_lat
        if abs(e_lon) < tolerance_deg and abs(e_lat) < tolerance_deg:
            break
    return w_lon, w_lat
