"""``fleetwatch db init | migrate | status | url``: set up and inspect the database.

``init`` creates the embedded cluster under the data directory (or uses ``--db``), migrates the
schema and creates the position partitions around today; ``migrate`` does the last two on an
existing database, and is safe while ``fleetwatch serve`` runs (migrations take an advisory lock).
``url`` prints the libpq URL of a running embedded cluster, for ``psql "$(fleetwatch db url)"``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from fleetwatch import dbopts

if TYPE_CHECKING:
    import asyncpg

PROG = "fleetwatch db"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``db`` and its actions to the ``fleetwatch`` command line."""
    parser = subparsers.add_parser(
        "db",
        help="create, migrate and inspect the database (embedded PostgreSQL or --db URL)",
        description="Create, migrate and inspect the FleetWatch database. Without --db the "
        "embedded PostgreSQL+PostGIS cluster of the data directory is used: started for the "
        "command if it is not running, left alone if `fleetwatch serve` runs it.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    init = actions.add_parser(
        "init",
        help="create the embedded cluster (if needed), migrate, create partitions",
        description="Create the embedded PostgreSQL+PostGIS cluster under DIR/postgres (or use "
        "--db), apply the migrations and create the daily position partitions around today.",
    )
    dbopts.add_database_options(init)
    init.set_defaults(handler=lambda args: dbopts.run(PROG, _init, args))

    migrate = actions.add_parser(
        "migrate",
        help="apply pending migrations and create upcoming partitions",
        description="Apply the pending schema migrations (each in its own transaction) and "
        "create the daily position partitions around today.",
    )
    dbopts.add_database_options(migrate)
    migrate.set_defaults(handler=lambda args: dbopts.run(PROG, _migrate, args))

    status = actions.add_parser(
        "status",
        help="show applied and pending migrations and the position partitions",
    )
    dbopts.add_database_options(status)
    status.set_defaults(handler=lambda args: dbopts.run(PROG, _status, args))

    url = actions.add_parser(
        "url",
        help="print the libpq URL of the running embedded cluster",
        description="Print the URL of the running embedded cluster, e.g. for "
        'psql "$(fleetwatch db url --data-dir DIR)". Fails if it is not running.',
    )
    dbopts.add_database_options(url, url=False)
    url.set_defaults(handler=_url)


async def _migrate_and_partition(conn: asyncpg.Connection) -> None:
    from store.migrations import migrate, status
    from store.partitions import ensure_partitions

    applied = await migrate(conn)
    for migration in applied:
        print(f"applied {migration.label}")
    if not applied:
        done, _ = await status(conn)
        print(f"schema up to date ({done[-1].label if done else 'empty'})")
    created = await ensure_partitions(conn, datetime.now(UTC).date())
    if created:
        print(f"created {len(created)} partition(s): {created[0]} .. {created[-1]}")


async def _init(args: argparse.Namespace) -> int:
    async with dbopts.connect(args, create=True, require_schema=False) as conn:
        await _migrate_and_partition(conn)
    where = args.db if args.db else f"{args.data_dir}/postgres"
    print(f"database ready: {where}")
    return 0


async def _migrate(args: argparse.Namespace) -> int:
    async with dbopts.connect(args, require_schema=False) as conn:
        await _migrate_and_partition(conn)
    return 0


async def _status(args: argparse.Namespace) -> int:
    from store.migrations import available, status
    from store.partitions import DEFAULT_PARTITION, list_partitions

    async with dbopts.connect(args, require_schema=False) as conn:
        applied, pending = await status(conn)
        known = {m.version for m in available()}
        print("applied migrations:")
        for row in applied:
            note = "" if row.version in known else "  (unknown to this version of FleetWatch)"
            print(f"  {row.label}  {row.applied_at.isoformat(timespec='seconds')}{note}")
        if not applied:
            print("  (none)")
        print("pending migrations:")
        for migration in pending:
            print(f"  {migration.label}")
        if not pending:
            print("  (none)")
        print("position partitions:")
        if not await conn.fetchval("SELECT to_regclass('positions') IS NOT NULL"):
            print("  (no positions table yet)")
            return 0
        partitions = await list_partitions(conn)
        daily = [p for p in partitions if p.day is not None]
        if daily:
            print(f"  {len(daily)} daily: {daily[0].name} .. {daily[-1].name}")
        for p in partitions:
            if p.is_default:
                rows = await conn.fetchval(f"SELECT count(*) FROM {DEFAULT_PARTITION}")
                print(f"  {p.name}: {rows} row(s) outside the daily partitions")
            elif p.day is None:
                print(f"  {p.name} (not a daily partition)")
    return 0


def _url(args: argparse.Namespace) -> int:
    from store.cluster import ClusterError, EmbeddedCluster

    cluster = EmbeddedCluster.in_data_dir(args.data_dir)
    try:
        if not cluster.running:
            state = "is not running" if cluster.initialized else "does not exist"
            raise ClusterError(
                f"the embedded database in {args.data_dir} {state} (start it with "
                "`fleetwatch serve`; the other commands start it themselves when needed)"
            )
        print(cluster.url)
    except ClusterError as exc:
        print(f"{PROG} url: error: {exc}", file=sys.stderr)
        return 1
    return 0
