"""``fleetwatch geofences import | list`` and ``store.geofences`` against a real PostGIS."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from fleetwatch.cli import main
from geo.geojson_io import parse_fences
from geo.index import FenceIndex
from store import geofences
from tests.aio import aio_test

FILE: dict[str, Any] = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [121.5, 31.2]},
            "properties": {
                "name": "校区",
                "radius": 300,
                "max_dwell_s": 1800,
                "description": "gate 2",
            },
        },
        {
            "type": "Feature",
            "bbox": [121.40, 31.10, 121.45, 31.15],
            "geometry": None,
            "properties": {
                "name": "夜间禁行",
                "kind": "forbidden",
                "windows": [{"days": [1, 2, 3, 4, 5], "from": "22:00", "to": "06:00"}],
                "applies_to": {"classes": ["hazmat"]},
            },
        },
        {
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": [[121.0, 31.0], [121.2, 31.05]]},
            "properties": {"name": "G60", "kind": "speed_limit", "width": 60, "speed_limit": 100},
        },
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[121.8, 31.0], [121.9, 31.0], [121.85, 31.1], [121.8, 31.0]]],
            },
            "properties": {"name": "depot", "watched": True},
        },
    ],
}


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


@aio_test
async def test_import_list_reimport_replace(
    capsys: pytest.CaptureFixture[str], db_url: str, tmp_path: Path
) -> None:
    path = write(tmp_path / "fences.geojson", FILE)
    status, out, err = await cli(capsys, "geofences", "import", str(path), "--db", db_url)
    assert status == 0, err
    assert out == f"imported 4 geofence(s) from {path} (4 added, 0 updated)\n"

    status, out, err = await cli(capsys, "geofences", "list", "--json", "--db", db_url)
    assert status == 0, err
    listed = json.loads(out)
    assert listed["type"] == "FeatureCollection"
    ids = {f["properties"]["name"]: f["id"] for f in listed["features"]}
    assert sorted(ids) == sorted(["校区", "夜间禁行", "G60", "depot"])
    by_name = {f["properties"]["name"]: f for f in listed["features"]}
    assert by_name["夜间禁行"]["bbox"] == [121.40, 31.10, 121.45, 31.15]
    assert by_name["夜间禁行"]["properties"]["windows"] == [
        {"days": [1, 2, 3, 4, 5], "from": "22:00", "to": "06:00"}
    ]
    assert by_name["校区"]["properties"]["description"] == "gate 2"
    assert by_name["G60"]["properties"]["expressway"] is True
    # What list prints imports again, unchanged.
    again = write(tmp_path / "listed.geojson", listed)
    status, out, err = await cli(capsys, "geofences", "import", str(again), "--db", db_url)
    assert status == 0, err
    assert "(0 added, 0 updated, 4 unchanged)" in out

    # Edit one fence and drop another: matched by name, ids kept; --replace deletes the rest.
    edited = copy.deepcopy(FILE)
    edited["features"][0]["properties"]["radius"] = 500
    del edited["features"][3]
    path2 = write(tmp_path / "edited.geojson", edited)
    status, out, err = await cli(capsys, "geofences", "import", str(path2), "--db", db_url)
    assert status == 0, err
    assert "(0 added, 1 updated, 2 unchanged)" in out
    status, out, err = await cli(
        capsys, "geofences", "import", str(path2), "--replace", "--db", db_url
    )
    assert status == 0, err
    assert "(0 added, 0 updated, 3 unchanged, 1 deleted)" in out
    status, out, err = await cli(capsys, "geofences", "list", "--json", "--db", db_url)
    after = {f["properties"]["name"]: f for f in json.loads(out)["features"]}
    assert sorted(after) == sorted(["校区", "夜间禁行", "G60"])
    assert after["校区"]["id"] == ids["校区"] and after["校区"]["properties"]["radius"] == 500

    status, out, err = await cli(capsys, "geofences", "list", "--db", db_url)
    assert status == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    assert f"{ids['校区']:>6}  校区, zone circle r=500 m, max dwell 1800 s" in lines
    assert any(
        "夜间禁行, forbidden rectangle, windows days 1,2,3,4,5 22:00-06:00, "
        "applies to classes hazmat" in line
        for line in lines
    )
    assert any("G60, speed_limit corridor width 60 m, limit 100 km/h (expressway)" in line
               for line in lines)  # fmt: skip


@aio_test
async def test_bad_file_is_rejected_whole(
    capsys: pytest.CaptureFixture[str], db_url: str, tmp_path: Path
) -> None:
    bad = copy.deepcopy(FILE)
    bad["features"][1]["properties"]["applies_to"] = {"classes": ["taxi"]}
    bad["features"][2]["properties"].pop("width")
    path = write(tmp_path / "bad.geojson", bad)
    status, out, err = await cli(capsys, "geofences", "import", str(path), "--db", db_url)
    assert (status, out) == (1, "")
    assert err.splitlines() == [
        f"{path}: feature 1: '夜间禁行': applies_to.classes ['taxi']: from police, school_bus, "
        "coach, heavy_truck, hazmat, other",
        f"{path}: feature 2: a LineString is a corridor: it needs a 'width' property (metres)",
        "fleetwatch geofences import: 2 error(s), nothing imported",
    ]
    status, out, err = await cli(capsys, "geofences", "list", "--db", db_url)
    assert (status, out, err) == (0, "", "no geofences\n")

    status, out, err = await cli(
        capsys, "geofences", "import", str(tmp_path / "missing.geojson"), "--db", db_url
    )
    assert status == 1 and "no such file" in err
    path.write_text("{not json", encoding="utf-8")
    status, out, err = await cli(capsys, "geofences", "import", str(path), "--db", db_url)
    assert status == 1 and f"{path}: not JSON" in err


@aio_test
async def test_store_round_trip_and_fingerprint(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        version = await geofences.fingerprint(conn)
        fences = parse_fences(FILE)
        result = await geofences.save(conn, fences)
        assert (result.added, result.updated, result.deleted) == (4, 0, 0)
        assert set(result.ids) == {f.name for f in fences}
        changed = await geofences.fingerprint(conn)
        assert changed != version

        rows = await conn.fetch(
            "SELECT name, shape, GeometryType(geom) AS type, ST_SRID(geom) AS srid,"
            " properties::text AS props FROM geofences ORDER BY id"
        )
        assert [(r["name"], r["shape"], r["type"], r["srid"]) for r in rows] == [
            ("校区", "circle", "POINT", 4326),
            ("夜间禁行", "rectangle", "POLYGON", 4326),
            ("G60", "corridor", "LINESTRING", 4326),
            ("depot", "polygon", "POLYGON", 4326),
        ]
        assert json.loads(rows[0]["props"])["radius"] == 300
        column_type = await conn.fetchval(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'geofences'::regclass AND attname = 'geom'"
        )
        assert column_type == "geometry(Geometry,4326)"

        loaded = await geofences.load(conn)
        assert [f.id for f in loaded] == sorted(result.ids.values())
        for a, b in zip(fences, loaded, strict=True):
            assert (a.name, a.kind, a.shape, a.radius_m, a.width_m, a.windows, a.applies_to) == (
                b.name, b.kind, b.shape, b.radius_m, b.width_m, b.windows, b.applies_to,
            )  # fmt: skip
            assert a.geometry.equals(b.geometry) and a.properties == b.properties
        one = await geofences.get(conn, result.ids["G60"])
        assert one is not None and one.speed_limit_kmh == 100

        # Saving the same again changes nothing, not even the fingerprint.
        same = await geofences.save(conn, fences)
        assert (same.added, same.updated, same.unchanged) == (0, 0, 4)
        assert await geofences.fingerprint(conn) == changed
        assert await geofences.delete(conn, ["depot"]) == 1
        assert await geofences.fingerprint(conn) != changed

        # The stored fences drive an index.
        index = FenceIndex(await geofences.load(conn))
        assert index.classify(121.5, 31.2) == {result.ids["校区"]: 1}

        # The database refuses a shape that does not match its geometry.
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO geofences (name, kind, shape, geom) VALUES"
                " ('x', 'zone', 'circle', ST_GeomFromText('LINESTRING(0 0, 1 1)', 4326))"
            )
    finally:
        await conn.close()
