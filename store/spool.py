"""A local, fsynced spool of position batches for when the database is away or slow.

The writer appends a batch here (and the terminal is acknowledged) when it cannot commit it to
PostgreSQL in time, and replays the spool into the database, oldest first, when it can again.
Replaying is idempotent (the insert ignores rows it already has), so a crash between a replayed
batch's commit and the spool's cleanup only replays that batch once more.

Format: segment files ``NNNNNNNN.spool`` holding records ``length u32 | crc32 u32 | payload``,
the payload a JSON array of rows. A torn last record (crash during a write, never acknowledged)
ends its segment.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

_RECORD = struct.Struct(">II")
SEGMENT_BYTES = 64 << 20

Row = tuple[Any, ...]


def _encode(rows: list[Row]) -> bytes:
    return json.dumps(
        [[v.isoformat() if isinstance(v, datetime) else v for v in row] for row in rows],
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


class Spool:
    """Append-only segments in a directory; :meth:`batches` yields what is left, in order."""

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._active: Path | None = None
        self._fd: int | None = None
        self._size = 0

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob("*.spool"))

    @property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.segments())

    @property
    def empty(self) -> bool:
        return not any(p.stat().st_size for p in self.segments())

    def append(self, rows: list[Row]) -> None:
        """Write one batch and fsync it: once this returns, the batch survives a crash."""
        payload = _encode(rows)
        if self._fd is None or self._size >= self.segment_bytes:
            self._open_next()
        assert self._fd is not None
        record = _RECORD.pack(len(payload), zlib.crc32(payload)) + payload
        os.write(self._fd, record)
        os.fsync(self._fd)
        self._size += len(record)

    def _open_next(self) -> None:
        self._close_active()
        segments = self.segments()
        number = int(segments[-1].stem) + 1 if segments else 1
        self._active = self.directory / f"{number:08d}.spool"
        self._fd = os.open(self._active, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new file's name must survive a crash too
        finally:
            os.close(dir_fd)

    def _close_active(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._active = None

    def batches(self) -> Iterator[tuple[Path, list[list[Any]]]]:
        """(segment, rows) for every stored batch, oldest first. Times come back as strings."""
        for segment in self.segments():
            data = segment.read_bytes()
            pos = 0
            while pos + _RECORD.size <= len(data):
                length, crc = _RECORD.unpack_from(data, pos)
                payload = data[pos + _RECORD.size : pos + _RECORD.size + length]
                if len(payload) < length or zlib.crc32(payload) != crc:
                    break  # torn tail of a crashed write: it was never acknowledged
                yield segment, json.loads(payload)
                pos += _RECORD.size + length

    def remove(self, segment: Path) -> None:
        """Drop a segment whose batches are all in the database."""
        if segment == self._active:
            self._close_active()
        segment.unlink(missing_ok=True)

    def close(self) -> None:
        self._close_active()
