"""Multimedia uploads (0x0801, reassembled from subpackages) stored as files with a row."""

from __future__ import annotations

import os
from datetime import UTC
from pathlib import Path

import asyncpg

from protocols.jt808 import MediaData

EXTENSIONS = {0: "jpg", 1: "tif", 2: "mp3", 3: "wav", 4: "wmv"}


class MediaStore:
    """Files under ``root/<vehicle id>/``; the ``media`` table records where and when."""

    def __init__(self, root: Path, pool: asyncpg.Pool) -> None:
        self.root = Path(root)
        self.pool = pool

    async def save(self, vehicle_id: int, media: MediaData) -> Path:
        """Write the file (fsynced) and its row; a re-upload of the same id replaces both."""
        ext = EXTENSIONS.get(media.media_format, "bin")
        relative = Path(str(vehicle_id)) / f"{media.media_id}.{ext}"
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".part")
        with open(tmp, "wb") as f:
            f.write(media.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        where = media.location
        fix_time = where.time.astimezone(UTC) if where is not None and where.time else None
        await self.pool.execute(
            """INSERT INTO media (vehicle_id, media_id, media_type, media_format, event, channel,
                                  fix_time, geom, path, size)
               VALUES ($1, $2, $3, $4, $5, $6, $7,
                       CASE WHEN $8::float8 IS NULL THEN NULL
                            ELSE ST_SetSRID(ST_MakePoint($8, $9), 4326) END, $10, $11)
               ON CONFLICT (vehicle_id, media_id) DO UPDATE SET
                   media_type = excluded.media_type, media_format = excluded.media_format,
                   event = excluded.event, channel = excluded.channel,
                   fix_time = excluded.fix_time, geom = excluded.geom, path = excluded.path,
                   size = excluded.size, received_at = now()""",
            vehicle_id, media.media_id, media.media_type, media.media_format, media.event,
            media.channel, fix_time, where.longitude if where else None,
            where.latitude if where else None, str(relative), len(media.data),
        )  # fmt: skip
        return path
