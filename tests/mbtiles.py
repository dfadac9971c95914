"""A small raster MBTiles file for tests: solid-colour 256 px PNG tiles, made here (no data)."""

from __future__ import annotations

import sqlite3
import struct
import zlib
from pathlib import Path


def png(rgb: tuple[int, int, int], size: int = 256) -> bytes:
    """A valid PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\x00" + bytes(rgb) * size
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(row * size)) + chunk(b"IEND", b""))  # fmt: skip


def make_mbtiles(
    path: Path, max_zoom: int = 4, fmt: str = "png"
) -> dict[tuple[int, int, int], bytes]:
    """Every tile of zooms 0..max_zoom, each a colour of its own; returns {(z, x, y): bytes}
    with y in XYZ (north-first) order, while the file stores TMS rows as MBTiles does."""
    tiles = {}
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE metadata (name text, value text)")
        db.execute("CREATE TABLE tiles (zoom_level integer, tile_column integer,"
                   " tile_row integer, tile_data blob)")  # fmt: skip
        db.executemany("INSERT INTO metadata VALUES (?, ?)", [
            ("name", "test"), ("format", fmt), ("minzoom", "0"), ("maxzoom", str(max_zoom)),
            ("attribution", "test tiles"),
        ])  # fmt: skip
        for z in range(max_zoom + 1):
            for x in range(1 << z):
                for y in range(1 << z):
                    data = png((40 + 50 * z % 200, (x * 37) % 256, (y * 59) % 256), 256)
                    tiles[(z, x, y)] = data
                    db.execute("INSERT INTO tiles VALUES (?, ?, ?, ?)",
                               (z, x, (1 << z) - 1 - y, data))  # fmt: skip
    return tiles
