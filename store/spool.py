"""A local, fsynced spool of position batches for when the database is away or slow.

The writer appends a batch here (and the terminal is acknowledged) when it cannot commit it to
PostgreSQL in time, and replays the spool into the database, oldest first, when it can again.
Replaying is idempotent (the insert ignores rows it already has), so a crash between a replayed
batch's commit and the spool's cleanup, or a flush that committed after the writer had given up
on it and spooled its rows, only offers those rows once more.

Ownership: a spool directory is locked (``flock`` on ``.lock``) by the one process that owns it,
for as long as it is open; the kernel drops the lock when that process dies, however it dies.
So two processes never append to or replay the same spool, and a spool whose owner is gone can
be taken over (:func:`unowned_spools`).

Budget: ``budget_bytes`` caps the spool's size on disk; an append that would exceed it raises
:class:`SpoolFull` and the batch is not acknowledged (the terminal sends it again later).

Format: segment files ``NNNNNNNN.spool`` holding records ``length u32 | crc32 u32 | payload``,
the payload a JSON array of rows. A torn last record (crash during a write, never acknowledged)
ends its segment. Only one segment is appended to (the active one); replay reads the others
(:meth:`Spool.seal` closes the active one), so a segment is never removed under an append.
"""

from __future__ import annotations

import contextlib
import fcntl
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
#: The smallest segment, whatever the budget (a segment holds at least a few batches).
MIN_SEGMENT_BYTES = 256 << 10
LOCK_FILE = ".lock"

Row = tuple[Any, ...]


class SpoolLocked(RuntimeError):
    """Another live process owns this spool directory."""


class SpoolFull(OSError):
    """Appending would take the spool past its disk budget: the batch is not durable."""


def _encode(rows: list[Row]) -> bytes:
    return json.dumps(
        [[v.isoformat() if isinstance(v, datetime) else v for v in row] for row in rows],
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def _try_lock(directory: Path) -> int | None:
    """An fd holding the directory's exclusive lock (our pid written in it), or None."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Spool:
    """Append-only segments in a directory; :meth:`batches` yields what is left, in order."""

    def __init__(
        self, directory: Path, segment_bytes: int = SEGMENT_BYTES, budget_bytes: int | None = None
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = _try_lock(self.directory)
        if lock is None:
            with contextlib.suppress(OSError):
                owner = (self.directory / LOCK_FILE).read_text().strip() or "?"
            raise SpoolLocked(f"the spool {self.directory} is owned by another process ({owner})")
        self._lock_fd: int | None = lock
        self.budget_bytes = budget_bytes
        if budget_bytes is not None:
            segment_bytes = max(MIN_SEGMENT_BYTES, min(segment_bytes, budget_bytes // 8))
        self.segment_bytes = segment_bytes
        self._active: Path | None = None
        self._fd: int | None = None
        self._size = 0
        # Segments opened by this process: path -> (generation, batches appended). Names are
        # reused once every segment is gone; generations never are, so a batch's token
        # (:meth:`append`) cannot name a batch of a later segment with the same name.
        self._opened = 0
        self._generations: dict[Path, list[int]] = {}
        self._bytes = sum(p.stat().st_size for p in self.segments())

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob("*.spool"))

    @property
    def bytes(self) -> int:
        """Bytes on disk in the segments (kept as a count: read on every flush)."""
        return self._bytes

    @property
    def empty(self) -> bool:
        return self._bytes == 0

    def append(self, rows: list[Row]) -> tuple[int, int]:
        """Write one batch and fsync it: once this returns, the batch survives a crash.
        Raises :class:`SpoolFull` (nothing written) past the budget. Returns the batch's
        token, (segment generation, 1-based index in the segment), for :meth:`token`."""
        payload = _encode(rows)
        record = _RECORD.pack(len(payload), zlib.crc32(payload)) + payload
        if self.budget_bytes is not None and self._bytes + len(record) > self.budget_bytes:
            raise SpoolFull(
                f"spool {self.directory} at its budget ({self._bytes} of {self.budget_bytes} bytes)"
            )
        if self._fd is None or self._size >= self.segment_bytes:
            self._open_next()
        assert self._fd is not None
        try:
            os.write(self._fd, record)
            os.fsync(self._fd)
        except OSError:
            # A partial record would hide every later one: start the next batch in a new segment.
            self._bytes += self._size_of_active() - self._size
            self._close_active()
            raise
        self._size += len(record)
        self._bytes += len(record)
        assert self._active is not None
        opened = self._generations[self._active]
        opened[1] += 1
        return opened[0], opened[1]

    def generation(self, segment: Path) -> int | None:
        """The generation of a segment this process opened (None for older ones): with a
        batch's index in :meth:`read` order it gives the token :meth:`append` returned."""
        opened = self._generations.get(segment)
        return opened[0] if opened is not None else None

    def live(self, generation: int) -> bool:
        """Whether the segment of that generation is still on disk."""
        return any(g == generation for g, _ in self._generations.values())

    def _size_of_active(self) -> int:
        try:
            return self._active.stat().st_size if self._active is not None else self._size
        except OSError:
            return self._size

    def _open_next(self) -> None:
        self._close_active()
        segments = self.segments()
        number = int(segments[-1].stem) + 1 if segments else 1
        self._active = self.directory / f"{number:08d}.spool"
        self._fd = os.open(self._active, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        self._opened += 1
        self._generations[self._active] = [self._opened, 0]
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

    def seal(self) -> bool:
        """Stop appending to the active segment (the next batch starts a new one); False if
        there was none."""
        active = self._active is not None
        self._close_active()
        return active

    def sealed(self) -> list[Path]:
        """The segments not being appended to, oldest first (what replay may read and remove)."""
        return [s for s in self.segments() if s != self._active]

    def read(self, segment: Path) -> Iterator[list[list[Any]]]:
        """The batches (rows) of one segment, in order. Times come back as strings."""
        data = segment.read_bytes()
        pos = 0
        while pos + _RECORD.size <= len(data):
            length, crc = _RECORD.unpack_from(data, pos)
            payload = data[pos + _RECORD.size : pos + _RECORD.size + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                break  # torn tail of a crashed write: it was never acknowledged
            yield json.loads(payload)
            pos += _RECORD.size + length

    def batches(self) -> Iterator[tuple[Path, list[list[Any]]]]:
        """(segment, rows) for every stored batch, oldest first."""
        for segment in self.segments():
            for rows in self.read(segment):
                yield segment, rows

    @property
    def rejected(self) -> Path:
        """Where rows the database refused are set aside (JSON lines, for the operator)."""
        return self.directory / "rejected.jsonl"

    def reject(self, row: Row) -> None:
        """Set aside a spooled row the database refuses (it was acknowledged: keep it), fsynced
        before its segment can be removed."""
        with open(self.rejected, "ab") as f:
            f.write(_encode([row])[1:-1] + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def remove(self, segment: Path) -> None:
        """Drop a segment whose batches are all in the database."""
        if segment == self._active:
            self._close_active()
        self._generations.pop(segment, None)
        try:
            size = segment.stat().st_size
        except FileNotFoundError:
            return
        segment.unlink()
        self._bytes = max(0, self._bytes - size)

    def close(self) -> None:
        """Close the active segment and give up ownership (the lock)."""
        self._close_active()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def unowned_spools(root: Path, keep: frozenset[str] = frozenset()) -> Iterator[Spool]:
    """Every spool directory under ``root`` that holds batches and that no live process owns
    (except the names in ``keep``), opened (so locked) by the caller: spools of workers that no
    longer exist after a restart with fewer workers, or whose owner died without a successor."""
    if not root.is_dir():
        return
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in keep):
        if not any(s.stat().st_size for s in directory.glob("*.spool")):
            continue
        try:
            yield Spool(directory)
        except SpoolLocked:
            continue
