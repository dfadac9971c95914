"""The map's tile sources (serve --tiles): validation, MBTiles over HTTP, /api/basemap, the CSP."""

from __future__ import annotations

import asyncio
import http.client
import subprocess
import sys
from pathlib import Path

import pytest

from maps.tiles import TilesError, tile_source
from tests.aio import aio_test
from tests.dashboard_harness import dashboard
from tests.mbtiles import make_mbtiles


def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, dict(reply.headers.items()), reply.read()
    finally:
        conn.close()


def test_tile_source_validation(tmp_path: Path) -> None:
    url = tile_source("https://tiles.example.cn/{z}/{x}/{y}.png", gcj02=True)
    assert url.origin == "https://tiles.example.cn" and url.gcj02 and url.file is None
    assert url.to_json()["tiles"] == "https://tiles.example.cn/{z}/{x}/{y}.png"
    with pytest.raises(TilesError, match=r"needs \{y\}"):
        tile_source("https://tiles.example.cn/{z}/{x}.png")
    with pytest.raises(TilesError, match="neither an http"):
        tile_source(str(tmp_path / "missing.mbtiles"))
    junk = tmp_path / "junk.mbtiles"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(TilesError, match="not an MBTiles file"):
        tile_source(str(junk))
    vector = tmp_path / "vector.mbtiles"
    make_mbtiles(vector, max_zoom=0, fmt="pbf")
    with pytest.raises(TilesError, match="only raster"):
        tile_source(str(vector))
    raster = tmp_path / "raster.mbtiles"
    make_mbtiles(raster, max_zoom=2)
    local = tile_source(str(raster))
    assert (local.url, local.origin, local.max_zoom, local.gcj02) == (
        "tiles/{z}/{x}/{y}",
        None,
        2,
        False,
    )


@aio_test
async def test_mbtiles_served_in_xyz_order_and_basemap_endpoint(
    db_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "t.mbtiles"
    tiles = make_mbtiles(path, max_zoom=3)
    async with dashboard(db_url, tiles=tile_source(str(path), gcj02=True)) as dash:
        for z, x, y in [(0, 0, 0), (3, 1, 6), (3, 6, 1), (2, 3, 0)]:
            status, headers, body = await asyncio.to_thread(
                _get, dash.port, f"/tiles/{z}/{x}/{y}.png"
            )
            assert status == 200 and headers["Content-Type"] == "image/png"
            assert body == tiles[(z, x, y)], (z, x, y)  # XYZ rows, not the file's TMS rows
        for path_, status_ in [("/tiles/4/0/0", 404), ("/tiles/3/8/0", 400), ("/tiles/a/b/c", 400),
                               ("/tiles/1/0", 404)]:  # fmt: skip
            status, _, _ = await asyncio.to_thread(_get, dash.port, path_)
            assert status == status_, path_
        client = dash.client()
        assert (await client.get("/api/basemap")).status == 401
        client = await dash.logged_in("disp_a")
        reply = await client.get("/api/basemap")
        assert reply.body == {"tiles": "tiles/{z}/{x}/{y}", "gcj02": True, "max_zoom": 3,
                              "attribution": "test tiles"}  # fmt: skip
        _, headers, _ = await asyncio.to_thread(_get, dash.port, "/")
        assert "img-src 'self' data:;" in headers["Content-Security-Policy"]


@aio_test
async def test_remote_tiles_allowed_by_the_page_csp_only_then(db_url: str) -> None:
    source = tile_source("https://tiles.example.cn/{z}/{x}/{y}.png")
    async with dashboard(db_url, tiles=source) as dash:
        _, headers, _ = await asyncio.to_thread(_get, dash.port, "/")
        assert (
            "img-src 'self' data: https://tiles.example.cn;" in headers["Content-Security-Policy"]
        )
        _, headers, _ = await asyncio.to_thread(_get, dash.port, "/app.js")
        assert "https://tiles.example.cn" in headers["Content-Security-Policy"]
        assert (await asyncio.to_thread(_get, dash.port, "/tiles/0/0/0"))[0] == 404
        client = await dash.logged_in("disp_b")
        assert (await client.get("/api/basemap")).body["tiles"] == source.url


@aio_test
async def test_without_tiles_the_basemap_is_offline_only(db_url: str) -> None:
    async with dashboard(db_url) as dash:
        client = await dash.logged_in("disp_b")
        assert (await client.get("/api/basemap")).body == {
            "tiles": None, "gcj02": False, "max_zoom": 18, "attribution": ""}  # fmt: skip


def test_serve_refuses_unusable_tiles_at_start(tmp_path: Path) -> None:
    """Before any database or port: a clear message and exit status 1."""
    fleetwatch = Path(sys.executable).with_name("fleetwatch")
    for args, words in [
        (["--tiles", str(tmp_path / "none.mbtiles")], "neither an http(s) URL template"),
        (["--tiles", "https://t.example.cn/{z}/{x}.png"], "needs {y}"),
        (["--tiles-gcj02"], "--tiles-gcj02 needs --tiles"),
    ]:
        done = subprocess.run(
            [str(fleetwatch), "serve", "--data-dir", str(tmp_path / "data"), *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1 and words in done.stdout + done.stderr, (args, done)
