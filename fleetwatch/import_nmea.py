"""``fleetwatch import-nmea FILE --plate P``: backfill a vehicle's track from an NMEA log file.

For tracks recorded while a vehicle was out of reach (a police car's AVL log, a tracker's SD
card). The file is streamed (it may be hundreds of MB; ``.gz`` is read as it is), its sentences
assembled into fixes by :class:`ingest.nmea.NmeaTrack`, and the fixes stored in batches with
the writer's own insert (:func:`store.writer.insert_rows`): one transaction per batch, rows
already stored (same vehicle, fix time and serial 0) skipped. So an interrupted import keeps
what it committed and can simply be run again. Imported rows have ``source = 'import'`` and,
being older than the vehicle's live position, ``late = true``: they feed reports, never live
alerts.

Bad lines never stop the import: they are counted and the first ``--max-errors`` are listed
with their line numbers in the summary. Progress (bytes read, fixes stored, rate) goes to
stderr when it is a terminal (``--progress``/``--no-progress`` to choose); the summary goes to
stdout.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, TextIO, cast

from fleetwatch import dbopts
from geo.position import SOURCE_IMPORT, Position
from ingest.nmea import MAX_SENTENCE, NmeaError, NmeaTrack, parse_sentence
from ingest.values import flag_values

if TYPE_CHECKING:
    import asyncpg

PROG = "fleetwatch import-nmea"

EPILOG = """\
examples:
  fleetwatch import-nmea avl-2025-03-01.nmea --plate 京A12345
  fleetwatch import-nmea track.log.gz --plate 13912345678 --db postgresql://fleet@db/fleetwatch

The file holds NMEA 0183 sentences, one per line, any talker (GP, GN, BD, GB, GL, ...): RMC is
needed (it has the date), GGA/GNS/GSA add altitude, satellites, HDOP and fix quality. Lines that
are not checksum-valid sentences are reported and skipped. Safe to run again: fixes already
stored are skipped (and counted as duplicates).

exit status: 0 when the file held fixes (stored now or before), 1 when it holds no NMEA
(empty, binary, CSV) or no fix at all, or on an error.
"""

_COUNT = "SELECT count(*) FROM positions WHERE vehicle_id = $1 AND fix_time BETWEEN $2 AND $3"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``import-nmea`` to the ``fleetwatch`` command line."""
    parser = subparsers.add_parser(
        "import-nmea",
        help="backfill a vehicle's track from an NMEA 0183 log file",
        description="Read NMEA 0183 sentences from FILE (plain or .gz), assemble them into\n"
        "fixes and store them as the vehicle's track (source 'import').",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="NMEA log file (.gz allowed)")
    parser.add_argument(
        "--plate",
        required=True,
        help="the vehicle: its plate (e.g. 京A12345) or its terminal phone",
    )
    parser.add_argument(
        "--batch",
        type=_positive,
        default=5000,
        metavar="N",
        help="fixes per database transaction (default: 5000)",
    )
    parser.add_argument(
        "--max-errors",
        type=int,
        default=20,
        metavar="N",
        help="bad lines to list in the summary; all are counted (default: 20)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )
    dbopts.add_database_options(parser)
    parser.set_defaults(handler=lambda args: dbopts.run(PROG, _command, args))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


# --------------------------------------------------------------------------- progress


class Progress:
    """A one-line progress bar redrawn in place (``\\r``), at most every ``interval`` s."""

    def __init__(
        self,
        total: int,
        stream: TextIO,
        *,
        width: int = 28,
        interval: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.stream = stream
        self.width = width
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self._last = float("-inf")
        self._drawn = 0

    def render(self, done: int, fixes: int) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        share = min(done / self.total, 1.0) if self.total else 1.0
        filled = int(share * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        rate = fixes / elapsed
        eta = ""
        if 0 < share < 1:
            eta = f"  ETA {_duration(elapsed * (1 - share) / share)}"
        return (
            f"[{bar}] {share * 100:5.1f}%  {_mib(done)}/{_mib(self.total)} MiB  "
            f"{fixes:,} fixes  {rate:,.0f}/s{eta}"
        )

    def update(self, done: int, fixes: int, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        text = self.render(done, fixes)
        pad = " " * max(self._drawn - len(text), 0)  # wipe the end of a longer previous line
        self.stream.write(f"\r{text}{pad}")
        self.stream.flush()
        self._drawn = len(text)

    def finish(self, done: int, fixes: int) -> None:
        self.update(done, fixes, force=True)
        self.stream.write("\n")
        self.stream.flush()


def _mib(size: int) -> str:
    return f"{size / (1 << 20):,.1f}"


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# --------------------------------------------------------------------------- import


@dataclass
class ImportResult:
    """What an import did (the summary)."""

    lines: int = 0
    size: int = 0  # bytes of the file as stored (compressed, for .gz)
    fixes: int = 0  # fixes assembled from the file
    stored: int = 0  # rows inserted
    duplicates: int = 0  # fixes already stored (an earlier import, or live data)
    no_fix: int = 0  # epochs without a usable position (receiver searching, no date yet)
    bad: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (line number, why)
    seconds: float = 0.0


def read_lines(stream: IO[bytes], limit: int = MAX_SENTENCE) -> Iterator[bytes | None]:
    """The file's lines without their end; ``None`` for a line longer than ``limit`` (skipped
    without ever holding it whole, so a binary file cannot exhaust memory)."""
    while True:
        chunk = stream.readline(limit + 2)  # room for the line, "\r\n" and nothing more
        if not chunk:
            return
        if len(chunk) == limit + 2 and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n"):  # skip the rest of it, piece by piece
                chunk = stream.readline(1 << 16)
            yield None
            continue
        line = chunk.rstrip(b"\r\n")
        yield line if len(line) <= limit else None


def _open(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """(the file as stored, for progress; the stream of its text)."""
    raw: IO[bytes] = path.open("rb")
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return raw, cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))  # reads like one
    return raw, raw


async def store_batch(conn: asyncpg.Connection, vehicle_id: int, positions: list[Position]) -> int:
    """Insert one batch in one transaction; the number of rows actually inserted.

    ``insert_rows`` skips rows already stored but does not say how many; counting the
    vehicle's rows in the batch's time range before and after, in the same transaction, does.
    """
    from store.writer import insert_rows, position_row

    times = [p.fix_time for p in positions]
    first, last = min(times), max(times)
    async with conn.transaction():
        before = await conn.fetchval(_COUNT, vehicle_id, first, last)
        await insert_rows(conn, [position_row(p) for p in positions])
        after = await conn.fetchval(_COUNT, vehicle_id, first, last)
    # A live insert for the same vehicle and time range, committed between the two counts,
    # would be counted too; never report more than the batch held.
    return min(int(after - before), len(positions))


async def import_file(
    conn: asyncpg.Connection,
    path: Path,
    vehicle_id: int,
    *,
    batch: int = 5000,
    max_errors: int = 20,
    progress: Progress | None = None,
) -> ImportResult:
    """Stream ``path`` into the vehicle's track; see the module docstring."""
    result = ImportResult(size=path.stat().st_size)
    started = time.monotonic()
    received = datetime.now(UTC)
    track = NmeaTrack(vehicle_id, source=SOURCE_IMPORT)
    pending: list[Position] = []
    raw, stream = _open(path)

    async def write() -> None:
        if pending:
            stored = await store_batch(conn, vehicle_id, pending)
            result.stored += stored
            result.duplicates += len(pending) - stored
            pending.clear()

    def bad(number: int, why: str) -> None:
        result.bad += 1
        if len(result.bad_lines) < max_errors:
            result.bad_lines.append((number, why))

    try:
        with raw, stream:
            for number, line in enumerate(read_lines(stream), 1):
                result.lines = number
                if line is None:
                    bad(number, f"syntax: longer than {MAX_SENTENCE} characters")
                    continue
                if not line.strip():
                    continue
                text = line.decode("utf-8", errors="replace")
                try:
                    fixes = track.feed(text, received)
                except NmeaError as exc:
                    bad(number, f"{exc}: {text[:80]}")
                    continue
                if fixes:
                    flag_values(fixes)
                    pending.extend(fixes)
                    result.fixes += len(fixes)
                    if len(pending) >= batch:
                        await write()
                if progress is not None and number % 512 == 0:
                    progress.update(raw.tell(), result.stored)
            fixes = track.flush()
            flag_values(fixes)
            pending.extend(fixes)
            result.fixes += len(fixes)
            await write()
    finally:
        result.no_fix = track.stats.no_fix + track.stats.undated
        result.seconds = time.monotonic() - started
        if progress is not None:
            progress.finish(result.size, result.stored)
    return result


#: How much of a file is read to decide whether it holds NMEA at all.
SNIFF_BYTES = 256 * 1024


def check_nmea(path: Path) -> None:
    """Refuse, before any database work, a file that cannot be an NMEA log: empty, or no
    checksum-valid sentence in its first :data:`SNIFF_BYTES` (a binary file, a CSV export)."""
    raw, stream = _open(path)
    with raw, stream:
        head = stream.read(SNIFF_BYTES)
    if not head.strip():
        raise dbopts.CommandError(f"{path} is empty: nothing to import")
    for line in head.splitlines():
        if line.lstrip().startswith(b"$") and len(line) <= MAX_SENTENCE + 8:
            try:
                parse_sentence(line.decode("ascii", errors="replace"))
                return
            except NmeaError:
                continue
    raise dbopts.CommandError(
        f"{path} holds no NMEA 0183 sentences (lines like $GPRMC,...*hh) in its first "
        f"{SNIFF_BYTES // 1024} KiB: is it a binary or CSV file? Nothing imported"
    )


def summary(result: ImportResult, path: Path, label: str) -> str:
    """The lines printed when the import is done."""
    rate = result.stored / result.seconds if result.seconds > 0 else 0.0
    lines = [
        f"{path}: {result.lines:,} lines, {_mib(result.size)} MiB, vehicle {label}",
        f"  fixes stored:        {result.stored:,}",
        f"  duplicates skipped:  {result.duplicates:,} (already stored)",
        f"  epochs without fix:  {result.no_fix:,}",
        f"  bad lines:           {result.bad:,}",
    ]
    lines += [f"    line {number}: {why}" for number, why in result.bad_lines]
    if result.bad > len(result.bad_lines):
        lines.append(f"    ... and {result.bad - len(result.bad_lines):,} more")
    lines.append(f"  time:                {result.seconds:.1f} s ({rate:,.0f} fixes/s)")
    return "\n".join(lines)


async def _command(args: argparse.Namespace) -> int:
    from ingest.nmea_server import find_vehicle_id

    path: Path = args.file
    try:
        with path.open("rb"):
            pass
    except OSError as exc:  # here, not later: dbopts.run would blame the database for it
        raise dbopts.CommandError(f"{path}: {exc.strerror or exc}") from None
    try:
        check_nmea(path)
    except (OSError, EOFError) as exc:  # a damaged .gz
        raise dbopts.CommandError(f"{path}: cannot read it: {exc}") from None
    async with dbopts.connect(args) as conn:
        vehicle_id = await find_vehicle_id(conn, args.plate)
        if vehicle_id is None:
            raise dbopts.CommandError(
                f"no vehicle {args.plate!r} (plate or terminal phone); add it with "
                "`fleetwatch vehicles add` first"
            )
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        progress = Progress(path.stat().st_size, sys.stderr) if show else None
        result = await import_file(
            conn,
            path,
            vehicle_id,
            batch=args.batch,
            max_errors=args.max_errors,
            progress=progress,
        )
    print(summary(result, path, f"{args.plate} (id {vehicle_id})"))
    if result.fixes == 0:
        print(f"{PROG}: error: no fixes in {path}: nothing imported", file=sys.stderr)
        return 1
    return 0
