"""Geofence values (time windows, applies-to, validation), GeoJSON in and out, geodesy."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time
from typing import Any

import pytest
import shapely
from shapely.geometry import LineString, Point, Polygon, box

from alerts.model import COACH, HAZMAT, SCHOOL_BUS
from geo.fences import AppliesTo, Geofence, TimeWindow
from geo.geodesy import (
    GEOD,
    LocalFrame,
    cgcs2000_geometry_to_wgs84,
    cgcs2000_to_wgs84,
    distance_m,
    gcj02_to_wgs84,
    metres_per_degree,
    wgs84_to_gcj02,
)
from geo.geojson_io import GeoJSONError, dumps, parse_fences, read_fences
from protocols.jt808 import BEIJING


def bj(*args: int) -> datetime:
    return datetime(*args, tzinfo=BEIJING)  # type: ignore[misc]


# ----------------------------------------------------------------------------- windows


def test_daily_window() -> None:
    w = TimeWindow(start=time(7), end=time(9, 30))
    assert w.contains(bj(2026, 3, 2, 7, 0))
    assert w.contains(bj(2026, 3, 2, 9, 29))
    assert not w.contains(bj(2026, 3, 2, 9, 30))
    assert not w.contains(bj(2026, 3, 2, 6, 59))


def test_overnight_window_belongs_to_the_day_it_starts() -> None:
    """Monday 22:00 to Tuesday 06:00: Tuesday 03:00 is in it, Monday 03:00 (Sunday night's
    window) is not."""
    w = TimeWindow(days=frozenset({1}), start=time(22), end=time(6))
    assert w.contains(bj(2026, 3, 2, 22, 0))  # Monday
    assert w.contains(bj(2026, 3, 3, 3, 0))  # Tuesday early
    assert not w.contains(bj(2026, 3, 2, 3, 0))  # Monday early: Sunday's window
    assert not w.contains(bj(2026, 3, 3, 22, 30))  # Tuesday evening
    assert not w.contains(bj(2026, 3, 2, 12, 0))
    sunday = TimeWindow(days=frozenset({7}), start=time(22), end=time(6))
    assert sunday.contains(bj(2026, 3, 2, 3, 0))  # Monday 03:00 is Sunday night's


def test_date_range_and_whole_days() -> None:
    w = TimeWindow(start_date=date(2027, 1, 20), end_date=date(2027, 2, 28))
    assert w.contains(bj(2027, 1, 20, 0, 0)) and w.contains(bj(2027, 2, 28, 23, 59))
    assert not w.contains(bj(2027, 3, 1, 0, 0)) and not w.contains(bj(2027, 1, 19, 23, 59))
    weekend = TimeWindow(days=frozenset({6, 7}))
    assert weekend.contains(bj(2026, 3, 7, 12, 0)) and not weekend.contains(bj(2026, 3, 6, 12))
    assert TimeWindow(start=time(0), end=time(0)).contains(bj(2026, 3, 6, 12))  # 24 h


def test_window_json() -> None:
    parsed = TimeWindow.from_json({"days": ["Mon", 5], "from": "22:00", "to": "24:00"})
    assert parsed == TimeWindow(days=frozenset({1, 5}), start=time(22), end=time(0))
    assert parsed.to_json() == {"days": [1, 5], "from": "22:00", "to": "24:00"}
    assert parsed.contains(bj(2026, 3, 2, 23, 59)) and not parsed.contains(bj(2026, 3, 3, 0, 1))
    for bad, message in (
        ({"from": "22:00"}, "both"),
        ({"from": "7", "to": "9:00"}, "HH:MM"),
        ({"days": [8]}, "weekday"),
        ({"start_date": "2027-02-30"}, "YYYY-MM-DD"),
        ({"start_date": "2027-02-01", "end_date": "2027-01-01"}, "before"),
        ({"hours": 3}, "unknown"),
        ({}, "empty"),
    ):
        with pytest.raises(ValueError, match=message):
            TimeWindow.from_json(bad)


def test_active_uses_beijing_time() -> None:
    fence = Geofence(1, "n", "forbidden", "circle", Point(121, 31), radius_m=100,
                     windows=(TimeWindow(start=time(22), end=time(6)),))  # fmt: skip
    assert fence.active(datetime(2026, 3, 2, 14, 30, tzinfo=UTC))  # 22:30 Beijing
    assert not fence.active(datetime(2026, 3, 2, 22, 30, tzinfo=UTC))  # 06:30 Beijing
    assert Geofence(2, "x", "zone", "circle", Point(121, 31), radius_m=1).active(
        datetime(2026, 3, 2, 22, 30, tzinfo=UTC)
    )


def test_applies_to_each_given_set_narrows() -> None:
    everyone = AppliesTo()
    assert everyone.everyone and everyone.matches(COACH, 1, None)
    hazmat_of_3 = AppliesTo(classes=frozenset({HAZMAT}), company_ids=frozenset({3}))
    assert hazmat_of_3.matches(HAZMAT, 9, 3)
    assert not hazmat_of_3.matches(HAZMAT, 9, 4)
    assert not hazmat_of_3.matches(COACH, 9, 3)
    assert not hazmat_of_3.matches(HAZMAT, 9, None)
    two = AppliesTo(vehicle_ids=frozenset({5, 6}))
    assert two.matches(SCHOOL_BUS, 5, None) and not two.matches(SCHOOL_BUS, 7, None)


def test_geofence_validation() -> None:
    def make(**kw: Any) -> Geofence:
        args = {"id": 1, "name": "f", "kind": "zone", "shape": "circle",
                "geometry": Point(121, 31), "radius_m": 100.0, **kw}  # fmt: skip
        return Geofence(**args)

    assert make().expressway is False
    line = LineString([(121, 31), (121.1, 31)])
    corridor = make(kind="speed_limit", shape="corridor", geometry=line, radius_m=None,
                    width_m=50.0, speed_limit_kmh=80.0)  # fmt: skip
    assert corridor.expressway is True
    for kw, message in (
        ({"name": " "}, "name"),
        ({"kind": "parking"}, "kind"),
        ({"shape": "polygon"}, "Polygon geometry"),
        ({"radius_m": 0}, "radius"),
        ({"kind": "speed_limit"}, "speed_limit"),
        ({"margin_m": -1}, "margin_m"),
        ({"min_time_s": float("nan")}, "min_time_s"),
        ({"max_dwell_s": 0}, "max_dwell_s"),
        ({"geometry": Point(200, 31)}, "outside"),
        ({"shape": "rectangle", "geometry": Polygon([(0, 0), (1, 0), (1, 1)])}, "axis-aligned"),
        ({"shape": "corridor", "geometry": LineString([(1, 1), (1, 1)]), "width_m": 9}, "length"),
    ):
        with pytest.raises(ValueError, match=message):
            make(**kw)


# ----------------------------------------------------------------------------- GeoJSON

SAMPLE: dict[str, Any] = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [121.5, 31.2]},
            "properties": {"name": "校区", "radius": 300, "max_dwell_s": 1800, "x_color": "red"},
        },
        {
            "type": "Feature",
            "id": 40,
            "bbox": [121.40, 31.10, 121.45, 31.15],
            "geometry": None,
            "properties": {
                "name": "夜间禁行",
                "kind": "forbidden",
                "windows": [{"from": "22:00", "to": "06:00"}],
                "applies_to": {"classes": ["hazmat"], "companies": [3]},
            },
        },
        {
            "type": "Feature",
            "geometry": {
                "type": "LineString",
                "coordinates": [[121.0, 31.0, 4.0], [121.1, 31.05, 5.0], [121.2, 31.05, 3.0]],
            },
            "properties": {"name": "G60", "kind": "speed_limit", "width": 60, "speed_limit": 100},
        },
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [
                    [[121.6, 31.0], [121.7, 31.0], [121.7, 31.1], [121.6, 31.1], [121.6, 31.0]]
                ],
            },
            "properties": {"name": "box", "shape": "rectangle", "watched": True, "margin_m": 5},
        },
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[121.8, 31.0], [121.9, 31.0], [121.85, 31.1], [121.8, 31.0]]],
            },
            "properties": {
                "name": "route area",
                "kind": "route",
                "min_time_s": 60,
                "applies_to": {"vehicles": [7, 8]},
            },
        },
    ],
}


def test_parse_every_shape() -> None:
    circle, rect, corridor, box_, triangle = parse_fences(SAMPLE)
    assert (circle.id, circle.shape, circle.radius_m, circle.max_dwell_s) == (
        1,
        "circle",
        300,
        1800,
    )
    assert circle.properties == {"x_color": "red"}
    assert (rect.id, rect.shape, rect.kind) == (40, "rectangle", "forbidden")
    assert rect.geometry.bounds == (121.40, 31.10, 121.45, 31.15)
    assert rect.windows == (TimeWindow(start=time(22), end=time(6)),)
    assert rect.applies_to == AppliesTo(frozenset({"hazmat"}), frozenset(), frozenset({3}))
    assert (corridor.shape, corridor.width_m, corridor.speed_limit_kmh) == ("corridor", 60, 100)
    assert corridor.expressway is True and not corridor.geometry.has_z
    assert (box_.shape, box_.watched, box_.margin_m, box_.min_time_s) == ("rectangle", True, 5, 30)
    assert (triangle.shape, triangle.kind, triangle.min_time_s) == ("polygon", "route", 60)
    assert triangle.applies_to.vehicle_ids == frozenset({7, 8})


def test_round_trip_is_rfc7946() -> None:
    fences = parse_fences(SAMPLE)
    text = dumps(fences)
    out = json.loads(text)
    assert out["type"] == "FeatureCollection" and "crs" not in out
    assert [f["id"] for f in out["features"]] == [1, 40, 3, 4, 5]
    assert "校区" in text  # not \\u-escaped
    rect = out["features"][1]
    assert rect["bbox"] == [121.40, 31.10, 121.45, 31.15]
    assert rect["properties"]["shape"] == "rectangle"
    for feature in out["features"]:
        if feature["geometry"]["type"] == "Polygon":  # exterior rings counter-clockwise
            assert shapely.Polygon(feature["geometry"]["coordinates"][0]).exterior.is_ccw
    again = parse_fences(text)
    for a, b in zip(fences, again, strict=True):
        assert (a.id, a.name, a.kind, a.shape, a.radius_m, a.width_m, a.speed_limit_kmh) == (
            b.id, b.name, b.kind, b.shape, b.radius_m, b.width_m, b.speed_limit_kmh,
        )  # fmt: skip
        assert (a.windows, a.applies_to, a.margin_m, a.min_time_s, a.max_dwell_s, a.watched) == (
            b.windows, b.applies_to, b.margin_m, b.min_time_s, b.max_dwell_s, b.watched,
        )  # fmt: skip
        assert a.properties == b.properties and a.expressway == b.expressway
        assert a.geometry.equals(b.geometry)
    assert dumps(again) == text


def test_every_problem_is_reported_with_its_feature() -> None:
    def feature(geometry: Any, **props: Any) -> dict[str, Any]:
        return {"type": "Feature", "geometry": geometry, "properties": props}

    point = {"type": "Point", "coordinates": [121, 31]}
    bad = {
        "type": "FeatureCollection",
        "features": [
            feature(point, name="ok", radius=10),
            feature(point, name="no radius"),
            feature({"type": "Point", "coordinates": [121]}, name="short", radius=1),
            feature(point, radius=5),
            feature({"type": "MultiPoint", "coordinates": [[121, 31]]}, name="multi"),
            feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]},
                    name="bow tie"),
            feature(point, name="ok", radius=10),
            feature(point, name="w", radius=10, windows=[{"from": "25:00", "to": "01:00"}]),
            feature(point, name="a", radius=10, applies_to={"classes": ["taxi"]}),
            feature({"type": "LineString", "coordinates": [[121, 31], [121.1, 31]]}, name="l"),
            feature(point, name="k", radius=10, kind="parking"),
            feature(point, name="s", radius="10"),
            "not a feature",
        ],
    }  # fmt: skip
    with pytest.raises(GeoJSONError) as caught:
        parse_fences(bad)
    errors = dict(caught.value.errors)
    assert sorted(errors) == list(range(1, 13))
    assert "radius" in errors[1]
    assert "2 or 3 values" in errors[2]
    assert "name" in errors[3]
    assert "MultiPoint" in errors[4]
    assert "Self-intersection" in errors[5]
    assert "name 'ok' is also feature 0's" in errors[6]
    assert "windows[0]" in errors[7] and "25:00" in errors[7]
    assert "taxi" in errors[8]
    assert "width" in errors[9]
    assert "parking" in errors[10]
    assert "a number" in errors[11]
    assert "not a Feature" in errors[12]
    assert str(caught.value).startswith("feature 1: a Point is a circle")
    assert isinstance(caught.value, ValueError)


def test_not_a_feature_collection_or_not_json(tmp_path: Any) -> None:
    with pytest.raises(GeoJSONError, match="FeatureCollection"):
        parse_fences({"type": "Feature"})
    with pytest.raises(GeoJSONError, match="not JSON"):
        parse_fences("{")
    path = tmp_path / "x.geojson"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(GeoJSONError, match="UTF-8"):
        read_fences(path)


def test_cgcs2000_input() -> None:
    """A 2008-style crs naming EPSG:4490 marks CGCS2000 coordinates: transformed to WGS-84
    (the datums agree to centimetres, so the numbers barely move); other crs are refused."""
    fc = {**SAMPLE, "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::4490"}}}
    fences = parse_fences(fc)
    assert fences[0].geometry.distance(Point(121.5, 31.2)) < 1e-6
    for name in ("EPSG:4490", "CGCS2000", "urn:ogc:def:crs:OGC:1.3:CRS84", "EPSG:4326"):
        parse_fences({**SAMPLE, "crs": {"type": "name", "properties": {"name": name}}})
    with pytest.raises(GeoJSONError, match="EPSG:3857"):
        parse_fences({**SAMPLE, "crs": {"type": "name", "properties": {"name": "EPSG:3857"}}})
    assert cgcs2000_to_wgs84(121.5, 31.2) == pytest.approx((121.5, 31.2), abs=1e-6)
    line = cgcs2000_geometry_to_wgs84(LineString([(121, 31), (122, 32)]))
    assert (
        line.geom_type == "LineString"
        and line.hausdorff_distance(LineString([(121, 31), (122, 32)])) < 1e-6
    )


# ----------------------------------------------------------------------------- geodesy


def test_distances_and_local_scale() -> None:
    assert distance_m(0, 0, 1, 0) == pytest.approx(111319.49, abs=0.01)  # 1° on the equator
    kx, ky = metres_per_degree(40.0)
    east = GEOD.inv(116.0, 40.0, 116.01, 40.0)[2]
    north = GEOD.inv(116.0, 40.0, 116.0, 40.01)[2]
    assert kx * 0.01 == pytest.approx(east, rel=1e-6)
    assert ky * 0.01 == pytest.approx(north, rel=1e-6)


def test_local_frame_buffers_in_metres() -> None:
    frame = LocalFrame(116.39, 39.91)
    centre = Point(116.40, 39.92)  # off the frame's centre, as fences sharing a frame are
    ring = frame.to_lonlat(frame.to_local(centre).buffer(1000.0, quad_segs=16))
    coords = shapely.get_coordinates(ring)
    n = len(coords)
    _, _, dist = GEOD.inv([centre.x] * n, [centre.y] * n, coords[:, 0], coords[:, 1])
    assert abs(dist - 1000.0).max() < 0.05
    back = frame.to_lonlat(frame.to_local(box(116.3, 39.8, 116.5, 40.0)))
    assert back.equals_exact(box(116.3, 39.8, 116.5, 40.0), 1e-9)


def test_gcj02_for_display() -> None:
    # A reference pair published with the open-source eviltransform library (Shanghai).
    lon, lat = wgs84_to_gcj02(121.5272106, 31.1774276)
    assert lon == pytest.approx(121.531541859215, abs=1e-9)
    assert lat == pytest.approx(31.17530398364597, abs=1e-9)
    # The inverse recovers WGS-84 to well under a metre, and the offset is some hundreds of m.
    for wgs in ((116.391, 39.907), (113.264, 23.129), (87.617, 43.793)):
        gcj = wgs84_to_gcj02(*wgs)
        assert 50 < distance_m(*wgs, *gcj) < 1000
        assert distance_m(*wgs, *gcj02_to_wgs84(*gcj)) < 0.01
    assert wgs84_to_gcj02(2.35, 48.85) == (2.35, 48.85)  # outside China: unchanged
    assert gcj02_to_wgs84(2.35, 48.85) == (2.35, 48.85)
