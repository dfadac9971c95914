"""Geofences as GeoJSON (RFC 7946), in and out.

A file is a FeatureCollection; each Feature is one fence:

* circle: a Point with a ``radius`` property (metres);
* corridor: a LineString with a ``width`` property (metres, the full width);
* rectangle: a Polygon with ``shape: "rectangle"`` (an axis-aligned box), or a Feature whose
  ``bbox`` member is the box (with that Polygon or a null geometry);
* polygon: any other Polygon (holes allowed).

Properties: ``name`` (required), ``kind`` (zone | forbidden | speed_limit | route | hazard; default
zone), ``speed_limit`` (km/h), ``expressway``, ``windows`` (a list of ``{"days"?, "from":
"HH:MM", "to": "HH:MM"}`` and/or ``{"start_date", "end_date"}``, Beijing time), ``applies_to``
(``{"classes", "vehicles", "companies"}``: vehicle classes, vehicle ids, company ids),
``margin_m``, ``min_time_s``, ``max_dwell_s``, ``watched``, ``hazard`` (what a hazard fence
marks, read by the rules from the fence's properties). Kept and given back for people and
other tools: ``description``, the simplestyle styling (``title``, ``stroke``, ``fill``,
...) and any property named ``x_...``. Any other property is refused, naming the known ones:
a misspelt ``speedlimit`` silently dropped would switch a speed limit off. Coordinates are
WGS-84, except that a (pre-RFC 7946) ``crs`` member naming EPSG:4490 / CGCS2000 declares
CGCS2000 input, which is transformed. Output is always WGS-84 without ``crs``.

Bad input raises :class:`GeoJSONError` (a ValueError) listing every problem with the index of
its feature, so a file is fixed in one pass.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import geojson
import shapely
from shapely.geometry import box, mapping, shape

from geo.classes import VEHICLE_CLASSES
from geo.fences import (
    CIRCLE,
    CORRIDOR,
    DEFAULT_MARGIN_M,
    DEFAULT_MIN_TIME_S,
    KINDS,
    POLYGON,
    RECTANGLE,
    SPEED_LIMIT,
    ZONE,
    AppliesTo,
    Geofence,
    TimeWindow,
)
from geo.geodesy import cgcs2000_geometry_to_wgs84

#: Properties the platform interprets (everything else is passed through).
KNOWN_PROPERTIES = (
    "name", "kind", "shape", "radius", "width", "speed_limit", "expressway", "windows",
    "applies_to", "margin_m", "min_time_s", "max_dwell_s", "watched",
)  # fmt: skip
#: Properties the platform reads from ``Geofence.properties`` (kept there, not parsed here).
PASSED_PROPERTIES = ("hazard",)
#: Properties kept for people and other tools without being interpreted.
FREE_PROPERTIES = (
    "description", "title", "stroke", "stroke-width", "stroke-opacity", "fill", "fill-opacity",
    "marker-color", "marker-size", "marker-symbol",
)  # fmt: skip
FREE_PREFIX = "x_"
_PRECISION = 7  # decimal places of output coordinates (~1 cm)


class GeoJSONError(ValueError):
    """A geofence file was rejected; ``errors`` lists ``(feature index or None, problem)``."""

    def __init__(self, errors: list[tuple[int | None, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"feature {i}: {p}" if i is not None else p for i, p in errors))


# --------------------------------------------------------------------------- in


def read_fences(path: Path | str) -> list[Geofence]:
    """The fences of a GeoJSON file (see :func:`parse_fences`)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise GeoJSONError([(None, "not UTF-8 text")]) from None
    return parse_fences(text)


def parse_fences(data: str | bytes | Mapping[str, Any], first_id: int = 1) -> list[Geofence]:
    """Parse a FeatureCollection of fences.

    A Feature's integer ``id`` becomes the fence id; features without one are numbered from
    ``first_id`` by position. Raises :class:`GeoJSONError` with every problem found.
    """
    if isinstance(data, str | bytes):
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise GeoJSONError([(None, f"not JSON: {exc}")]) from None
    else:
        obj = data
    if not isinstance(obj, Mapping) or obj.get("type") != "FeatureCollection":
        raise GeoJSONError([(None, "a FeatureCollection is expected")])
    features = obj.get("features")
    if not isinstance(features, list):
        raise GeoJSONError([(None, "a FeatureCollection needs a 'features' list")])
    try:
        cgcs2000 = _crs_is_cgcs2000(obj.get("crs"))
    except ValueError as exc:
        raise GeoJSONError([(None, str(exc))]) from None
    errors: list[tuple[int | None, str]] = []
    fences: list[Geofence] = []
    seen_ids: dict[int, int] = {}
    seen_names: dict[str, int] = {}
    for i, feature in enumerate(features):
        fid = feature.get("id") if isinstance(feature, Mapping) else None
        if not isinstance(fid, int) or isinstance(fid, bool):
            fid = first_id + i
        try:
            fence = fence_from_feature(feature, fid, cgcs2000=cgcs2000)
        except ValueError as exc:
            errors.append((i, str(exc)))
            continue
        if fid in seen_ids:
            errors.append((i, f"id {fid} is also feature {seen_ids[fid]}'s"))
            continue
        if fence.name in seen_names:
            errors.append((i, f"name {fence.name!r} is also feature {seen_names[fence.name]}'s"))
            continue
        seen_ids[fid] = seen_names[fence.name] = i
        fences.append(fence)
    if errors:
        raise GeoJSONError(errors)
    return fences


def _crs_is_cgcs2000(crs: Any) -> bool:
    """Whether a GeoJSON 2008 ``crs`` member names CGCS2000 (None and WGS-84 names: no)."""
    if crs is None:
        return False
    name = crs.get("properties", {}).get("name") if isinstance(crs, Mapping) else None
    if not isinstance(name, str):
        raise ValueError(f"crs {crs!r}: only a named crs (EPSG:4490 or WGS-84) is understood")
    upper = name.upper().replace("::", ":")
    if "4490" in upper or "CGCS2000" in upper or "CGCS 2000" in upper:
        return True
    if upper.endswith(("CRS84", "EPSG:4326")):
        return False
    raise ValueError(f"crs {name!r}: coordinates must be WGS-84 or CGCS2000 (EPSG:4490)")


def fence_from_feature(feature: Any, fid: int, cgcs2000: bool = False) -> Geofence:
    """One fence from one GeoJSON Feature (a mapping); ValueError says what is wrong."""
    if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
        raise ValueError("not a Feature")
    props = feature.get("properties") or {}
    if not isinstance(props, Mapping):
        raise ValueError("properties must be an object")
    geometry, shape_name = _geometry(feature, props)
    if cgcs2000:
        geometry = cgcs2000_geometry_to_wgs84(geometry)
    name = props.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("property 'name' (a non-empty string) is required")
    where = f"{name!r}: "
    try:
        kind = str(props.get("kind", ZONE)).strip().lower().replace("-", "_")
        if kind not in KINDS:
            raise ValueError(f"kind {props.get('kind')!r}: one of {', '.join(KINDS)}")
        extra = {k: v for k, v in props.items() if k not in KNOWN_PROPERTIES}
        _refuse_unknown(extra)
        return Geofence(
            id=fid,
            name=name.strip(),
            kind=kind,
            shape=shape_name,
            geometry=geometry,
            radius_m=_number(props, "radius") if shape_name == CIRCLE else None,
            width_m=_number(props, "width") if shape_name == CORRIDOR else None,
            speed_limit_kmh=_number(props, "speed_limit", required=kind == SPEED_LIMIT),
            expressway=_bool(props, "expressway"),
            windows=_windows(props.get("windows")),
            applies_to=_applies_to(props.get("applies_to")),
            margin_m=_number_or(props, "margin_m", DEFAULT_MARGIN_M),
            min_time_s=_number_or(props, "min_time_s", DEFAULT_MIN_TIME_S),
            max_dwell_s=_number(props, "max_dwell_s"),
            watched=bool(_bool(props, "watched")),
            properties={**extra},
        )
    except ValueError as exc:
        message = str(exc)
        prefix = f"geofence {fid} ({name.strip()!r}): "
        raise ValueError(where + message.removeprefix(prefix)) from None


def _refuse_unknown(extra: Mapping[str, Any]) -> None:
    """ValueError for properties that are neither interpreted nor free (see the docstring)."""
    kept = (*PASSED_PROPERTIES, *FREE_PROPERTIES)
    unknown = [k for k in extra if k not in kept and not str(k).startswith(FREE_PREFIX)]
    if not unknown:
        return
    known = (*KNOWN_PROPERTIES, *PASSED_PROPERTIES)
    words = []
    for key in unknown:
        near = difflib.get_close_matches(str(key).lower(), known, n=1, cutoff=0.7)
        words.append(f"{key!r} (did you mean {near[0]!r}?)" if near else repr(key))
    raise ValueError(
        f"unknown propert{'y' if len(unknown) == 1 else 'ies'} {', '.join(words)}: known "
        f"properties are {', '.join(known)} (description, simplestyle styling and "
        f"names starting with {FREE_PREFIX!r} are kept uninterpreted)"
    )


def _geometry(feature: Mapping[str, Any], props: Mapping[str, Any]) -> tuple[Any, str]:
    """The feature's shapely geometry (2D) and which fence shape it is."""
    declared = props.get("shape")
    if declared is not None and declared not in (CIRCLE, RECTANGLE, POLYGON, CORRIDOR):
        raise ValueError(f"shape {declared!r}: one of circle, rectangle, polygon, corridor")
    bbox = feature.get("bbox")
    raw = feature.get("geometry")
    if raw is None:
        if bbox is None:
            raise ValueError("no geometry (a null geometry needs a bbox: a rectangle)")
        return _bbox(bbox), RECTANGLE
    if not isinstance(raw, Mapping):
        raise ValueError("geometry must be an object")
    try:
        obj = geojson.GeoJSON.to_instance(dict(raw), strict=True)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ValueError(f"geometry: {exc or type(exc).__name__}") from None
    problem = obj.errors() if hasattr(obj, "errors") else "unknown geometry"
    if problem:
        raise ValueError(f"geometry: {problem}")
    try:
        geometry = shape({**raw, "coordinates": _two_d(raw.get("coordinates"))})
    except (ValueError, TypeError, AttributeError, shapely.errors.GEOSException) as exc:
        raise ValueError(f"geometry: {exc}") from None
    kind = geometry.geom_type
    if kind == "Point":
        found = CIRCLE
        if "radius" not in props:
            raise ValueError("a Point is a circle: it needs a 'radius' property (metres)")
    elif kind == "LineString":
        found = CORRIDOR
        if "width" not in props:
            raise ValueError("a LineString is a corridor: it needs a 'width' property (metres)")
    elif kind == "Polygon":
        boxed = declared is None and bbox is not None and _is_box(geometry, bbox)
        found = RECTANGLE if declared == RECTANGLE or boxed else POLYGON
    else:
        raise ValueError(f"{kind} is not a fence shape (Point, LineString or Polygon)")
    if declared is not None and declared != found:
        raise ValueError(f"shape {declared!r} does not match a {kind} geometry")
    return geometry, found


def _two_d(coords: Any) -> Any:
    """Coordinates without altitudes (a position may carry one; fences are 2D)."""
    if isinstance(coords, list) and coords and isinstance(coords[0], int | float):
        return coords[:2]
    if isinstance(coords, list):
        return [_two_d(c) for c in coords]
    return coords


def _bbox(value: Any) -> Any:
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, int | float) and math.isfinite(v) for v in value)
    ):
        raise ValueError(f"bbox {value!r}: [west, south, east, north]")
    west, south, east, north = value
    if not (west < east and south < north):
        raise ValueError(f"bbox {value!r}: west < east and south < north")
    return box(west, south, east, north)


def _is_box(geometry: Any, bbox: Any) -> bool:
    try:
        expected = _bbox(bbox)
    except ValueError:
        return False
    return bool(geometry.equals(expected))


def _number(
    props: Mapping[str, Any], key: str, default: float | None = None, required: bool = False
) -> float | None:
    value = props.get(key)
    if value is None:
        if required:
            raise ValueError(f"property {key!r} (a number) is required")
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} {value!r}: a number")
    return float(value)


def _number_or(props: Mapping[str, Any], key: str, default: float) -> float:
    value = _number(props, key)
    return default if value is None else value


def _bool(props: Mapping[str, Any], key: str) -> bool | None:
    value = props.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise ValueError(f"{key} {value!r}: true or false")


def _windows(value: Any) -> tuple[TimeWindow, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("windows: a list of time windows")
    out = []
    for j, item in enumerate(value):
        try:
            out.append(TimeWindow.from_json(item))
        except ValueError as exc:
            raise ValueError(f"windows[{j}]: {exc}") from None
    return tuple(out)


def _applies_to(value: Any) -> AppliesTo:
    if value is None:
        return AppliesTo()
    if not isinstance(value, Mapping):
        raise ValueError("applies_to: an object with classes, vehicles, companies")
    unknown = set(value) - {"classes", "vehicles", "companies"}
    if unknown:
        raise ValueError(f"applies_to: unknown member(s) {', '.join(sorted(unknown))}")
    classes = value.get("classes") or []
    if not isinstance(classes, list) or any(c not in VEHICLE_CLASSES for c in classes):
        raise ValueError(f"applies_to.classes {classes!r}: from {', '.join(VEHICLE_CLASSES)}")
    ids = {}
    for key in ("vehicles", "companies"):
        items = value.get(key) or []
        if not isinstance(items, list) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in items
        ):
            raise ValueError(f"applies_to.{key} {items!r}: a list of ids (integers)")
        ids[key] = frozenset(items)
    return AppliesTo(frozenset(classes), ids["vehicles"], ids["companies"])


# --------------------------------------------------------------------------- out


def fence_properties(fence: Geofence) -> dict[str, Any]:
    """The GeoJSON properties of a fence (the ones it came with, updated from its fields)."""
    props = {k: v for k, v in fence.properties.items() if k not in KNOWN_PROPERTIES}
    props.update(name=fence.name, kind=fence.kind, shape=fence.shape)
    if fence.radius_m is not None:
        props["radius"] = fence.radius_m
    if fence.width_m is not None:
        props["width"] = fence.width_m
    if fence.speed_limit_kmh is not None:
        props["speed_limit"] = fence.speed_limit_kmh
    if fence.kind == SPEED_LIMIT or fence.expressway:
        props["expressway"] = fence.expressway
    if fence.windows:
        props["windows"] = [w.to_json() for w in fence.windows]
    if not fence.applies_to.everyone:
        props["applies_to"] = fence.applies_to.to_json()
    props["margin_m"] = fence.margin_m
    props["min_time_s"] = fence.min_time_s
    if fence.max_dwell_s is not None:
        props["max_dwell_s"] = fence.max_dwell_s
    if fence.watched:
        props["watched"] = True
    return props


def fence_geometry(fence: Geofence) -> dict[str, Any]:
    """The fence's geometry as a GeoJSON mapping (polygons counter-clockwise, RFC 7946 §3.1.6)."""
    geometry = fence.geometry
    if geometry.geom_type == "Polygon":
        geometry = shapely.orient_polygons(geometry)
    geometry = shapely.set_precision(geometry, 10.0**-_PRECISION, mode="pointwise")
    return json.loads(json.dumps(mapping(geometry)))


def fence_to_feature(fence: Geofence) -> geojson.Feature:
    """One fence as a GeoJSON Feature (its id is the fence id)."""
    feature = geojson.Feature(
        id=fence.id, geometry=fence_geometry(fence), properties=fence_properties(fence)
    )
    if fence.shape == RECTANGLE:
        feature["bbox"] = [round(v, _PRECISION) for v in fence.geometry.bounds]
    return feature


def to_feature_collection(fences: Iterable[Geofence]) -> geojson.FeatureCollection:
    return geojson.FeatureCollection([fence_to_feature(f) for f in fences])


def dumps(fences: Sequence[Geofence] | Iterable[Geofence], indent: int | None = 2) -> str:
    """A GeoJSON FeatureCollection of the fences (UTF-8 names kept as they are)."""
    return geojson.dumps(to_feature_collection(fences), ensure_ascii=False, indent=indent)
