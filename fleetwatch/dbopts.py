"""``--data-dir DIR | --db URL`` for the commands that talk to the database, and how they connect.

With ``--db URL`` the command uses that server. Otherwise it uses the embedded cluster of the data
directory: if a server already runs there (``fleetwatch serve``), the command connects to it and
leaves it running; if not, the command starts it for its own duration and stops it afterwards.
asyncpg is imported only when a command runs, so ``fleetwatch --help`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg

#: The data directory when ``--data-dir`` is not given (``/data/`` is git-ignored).
DEFAULT_DATA_DIR = os.environ.get("FLEETWATCH_DATA_DIR", "data")


class CommandError(Exception):
    """A command cannot do its job for a reason the user can fix (printed without traceback)."""


def not_a_file(path: Path) -> str:
    """Why ``path`` cannot be read as an input file, in words."""
    return f"{path}: {'a directory, not a file' if path.is_dir() else 'no such file'}"


def add_database_options(parser: argparse.ArgumentParser, url: bool = True) -> None:
    """Add ``--data-dir`` (and, unless ``url`` is False, the alternative ``--db``)."""
    group = parser.add_mutually_exclusive_group() if url else parser
    group.add_argument(
        "--data-dir",
        type=Path,
        default=Path(DEFAULT_DATA_DIR),
        metavar="DIR",
        help="FleetWatch data directory; its embedded PostgreSQL is in DIR/postgres "
        "(default: $FLEETWATCH_DATA_DIR or ./data)",
    )
    if url:
        group.add_argument(
            "--db",
            metavar="URL",
            help="use this PostgreSQL+PostGIS server instead of the embedded one "
            "(libpq URL, e.g. postgresql://fleet@dbhost/fleetwatch)",
        )


@contextmanager
def database_url(args: argparse.Namespace, create: bool = False) -> Iterator[str]:
    """The URL to connect to; starts (and afterwards stops) the embedded cluster if needed.

    ``create`` allows creating the cluster (``db init``); other commands refuse a data directory
    without one, so a mistyped ``--data-dir`` does not silently get an empty database.
    """
    from store.cluster import EmbeddedCluster

    if getattr(args, "db", None):
        yield args.db
        return
    cluster = EmbeddedCluster.in_data_dir(args.data_dir)
    if not create and not cluster.initialized:
        raise CommandError(
            f"no database in {args.data_dir}: run `fleetwatch db init --data-dir {args.data_dir}`"
            " first (or pass --db URL)"
        )
    started = cluster.start()
    try:
        yield cluster.url
    finally:
        if started:
            cluster.stop()


@asynccontextmanager
async def connect(
    args: argparse.Namespace, create: bool = False, require_schema: bool = True
) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the command's database; with ``require_schema`` the schema must be
    migrated to this code's latest version (else the error says to run ``db migrate``)."""
    async with connect_with_url(args, create, require_schema) as (_, conn):
        yield conn


@asynccontextmanager
async def connect_with_url(
    args: argparse.Namespace, create: bool = False, require_schema: bool = True
) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    """:func:`connect`, also giving the URL (for a command that opens a second connection)."""
    import asyncpg

    from store.migrations import status

    with database_url(args, create=create) as url:
        conn = await asyncpg.connect(url)
        try:
            if require_schema:
                _, pending = await status(conn)
                if pending:
                    where = (
                        f"--db {args.db}"
                        if getattr(args, "db", None)
                        else (f"--data-dir {args.data_dir}")
                    )
                    raise CommandError(
                        f"the database schema is not up to date ({len(pending)} pending "
                        f"migration(s)): run `fleetwatch db migrate {where}`"
                    )
            yield url, conn
        finally:
            await conn.close()


def run(
    prog: str,
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
    args: argparse.Namespace,
) -> int:
    """Run an async command with ``asyncio.run``; expected failures become one stderr line
    and exit status 1 instead of a traceback."""
    import asyncpg

    from fleetwatch.console import describe

    try:
        return asyncio.run(command(args))
    except CommandError as exc:
        message = str(exc)
    except asyncpg.InterfaceError as exc:
        message = f"cannot talk to the database: {exc}"
    except Exception as exc:  # the user's kind (no database, port, file) or a bug: one line
        message = describe(exc, getattr(args, "db", None))
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 1
