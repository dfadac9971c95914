"""Real map tiles when the operator has them: an XYZ URL or a local MBTiles file.

The dashboard's default base map is offline (maps/basemap.py). ``fleetwatch serve --tiles``
adds raster tiles under it: an ``http(s)://.../{z}/{x}/{y}.png`` template the browser fetches
itself (that origin is then allowed by the page's CSP), or an MBTiles file (SQLite, tiles in TMS
row order) served by this server at ``/tiles/{z}/{x}/{y}``, so a control room without internet
still gets real tiles. ``--tiles-gcj02`` says the tiles are drawn in GCJ-02 (Chinese providers):
the page then shifts every marker and overlay WGS-84 → GCJ-02 for display; the data stays WGS-84.
``GET /api/basemap`` tells the page what to load.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from twisted.web.resource import Resource
from twisted.web.server import Request

from maps.web import ApiError

#: MBTiles ``format`` metadata → content type (raster only: Leaflet draws no vector tiles).
RASTER_TYPES = {"png": b"image/png", "jpg": b"image/jpeg", "jpeg": b"image/jpeg",
                "webp": b"image/webp"}  # fmt: skip
MAX_ZOOM = 22


class TilesError(ValueError):
    """A --tiles value that cannot be used (the message says why)."""


@dataclass(frozen=True)
class TileSource:
    """Where the page gets its tiles: ``url`` a Leaflet template (absolute, or ``tiles/...``
    on this server for an MBTiles ``file``); ``gcj02``: the tiles are drawn in GCJ-02."""

    url: str
    gcj02: bool = False
    file: Path | None = None
    content_type: bytes = b"image/png"
    max_zoom: int = 18
    attribution: str = ""

    @property
    def origin(self) -> str | None:
        """The remote origin the page loads tiles from (for its CSP), None for local tiles."""
        if self.file is not None:
            return None
        parts = urlparse(self.url.replace("{s}", "a"))
        return f"{parts.scheme}://{parts.netloc}"

    def to_json(self) -> dict[str, Any]:
        return {"tiles": self.url, "gcj02": self.gcj02, "max_zoom": self.max_zoom,
                "attribution": self.attribution}  # fmt: skip


def tile_source(spec: str, gcj02: bool = False) -> TileSource:
    """The source a ``--tiles`` value names: an XYZ URL template or an MBTiles file."""
    if spec.startswith(("http://", "https://")):
        missing = [p for p in ("{z}", "{x}", "{y}") if p not in spec]
        if missing:
            raise TilesError(f"{spec}: an XYZ URL needs {', '.join(missing)} in it")
        if not urlparse(spec).netloc:
            raise TilesError(f"{spec}: no host in the URL")
        return TileSource(url=spec, gcj02=gcj02)
    path = Path(spec)
    if not path.is_file():
        raise TilesError(f"{spec}: neither an http(s) URL template nor an MBTiles file")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            meta = dict(db.execute("SELECT name, value FROM metadata").fetchall())
            db.execute("SELECT 1 FROM tiles LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        raise TilesError(f"{spec}: not an MBTiles file ({exc})") from None
    fmt = str(meta.get("format", "png")).lower()
    if fmt not in RASTER_TYPES:
        raise TilesError(f"{spec}: tiles of format {fmt!r}; only raster tiles "
                         f"({', '.join(RASTER_TYPES)}) can be drawn")  # fmt: skip
    try:
        max_zoom = int(meta.get("maxzoom", 18))
    except ValueError:
        max_zoom = 18
    return TileSource(
        url="tiles/{z}/{x}/{y}", gcj02=gcj02, file=path, content_type=RASTER_TYPES[fmt],
        max_zoom=min(max(max_zoom, 0), MAX_ZOOM), attribution=str(meta.get("attribution", "")),
    )  # fmt: skip


class MBTilesResource(Resource):
    """``/tiles/{z}/{x}/{y}`` (an extension on ``y`` is allowed) from an MBTiles file.

    One read-only SQLite connection; a tile is one primary-key lookup (tens of microseconds),
    so it is read on the reactor's thread. A missing tile is a 404 (the page shows the base
    map there)."""

    isLeaf = True

    def __init__(self, source: TileSource) -> None:
        super().__init__()
        assert source.file is not None
        self.source = source
        self.db = sqlite3.connect(f"file:{source.file}?mode=ro", uri=True,
                                  check_same_thread=False)  # fmt: skip

    def render_GET(self, request: Request) -> bytes:
        parts = [p.decode("ascii", "replace") for p in request.postpath or []]
        try:
            z, x, y = self._address(parts)
        except ApiError as exc:
            request.setResponseCode(exc.status)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return exc.message.encode()
        row = self.db.execute(
            "SELECT tile_data FROM tiles WHERE zoom_level = ? AND tile_column = ? AND tile_row = ?",
            (z, x, (1 << z) - 1 - y),  # MBTiles rows count from the south (TMS)
        ).fetchone()
        if row is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"no such tile"
        request.setHeader(b"content-type", self.source.content_type)
        request.setHeader(b"cache-control", b"max-age=86400")
        return bytes(row[0])

    @staticmethod
    def _address(parts: list[str]) -> tuple[int, int, int]:
        if len(parts) != 3:
            raise ApiError(404, "tiles are at /tiles/{z}/{x}/{y}")
        try:
            z, x, y = int(parts[0]), int(parts[1]), int(parts[2].split(".", 1)[0])
        except ValueError:
            raise ApiError(400, "z, x and y must be integers") from None
        if not 0 <= z <= MAX_ZOOM or not (0 <= x < 1 << z and 0 <= y < 1 << z):
            raise ApiError(400, f"no tile {z}/{x}/{y}")
        return z, x, y


class BaseMapApi:
    """``GET /api/basemap``: the page's tile source (``tiles`` null: the offline map only)."""

    def __init__(self, api: Any, source: TileSource | None) -> None:
        self.api = api
        self.source = source

    def routes(self) -> dict[tuple[str, tuple[str, ...]], Any]:
        return {("GET", ("basemap",)): self.basemap}

    async def basemap(self, request: Request, _: list[str]) -> tuple[int, Any]:
        await self.api.user(request)
        if self.source is None:
            return 200, {"tiles": None, "gcj02": False, "max_zoom": 18, "attribution": ""}
        return 200, self.source.to_json()
