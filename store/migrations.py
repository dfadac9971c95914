"""Versioned schema migrations: ``store/migrations/NNNN_name.sql``, applied in order, once.

Each file runs in its own transaction and is recorded in ``schema_migrations`` in that same
transaction, so a failed migration leaves nothing behind and is retried next time. A session
advisory lock serialises :func:`migrate` across processes (``fleetwatch serve`` starting while an
operator runs ``fleetwatch db migrate``): the second one waits, then finds nothing pending.
The SQL files ship as package data and are read with :mod:`importlib.resources`, so migrating
works from an installed wheel, not only from a checkout.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

#: ``pg_advisory_lock`` key of the migration lock (any fixed bigint; this one spells "FWmigr").
LOCK_KEY = 0x46_57_6D_69_67_72
FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migration files are inconsistent, or one failed (the message names it)."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file of ``store/migrations``."""

    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    """One row of ``schema_migrations``."""

    version: int
    name: str
    applied_at: datetime

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def available(package: str = "store", folder: str = "migrations") -> list[Migration]:
    """The migrations shipped with this code, by version (duplicate versions are an error)."""
    found: dict[int, Migration] = {}
    for entry in resources.files(package).joinpath(folder).iterdir():
        match = FILE_PATTERN.match(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"two migrations with version {version:04d}: "
                f"{found[version].label}.sql and {entry.name}"
            )
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def _applied(conn: asyncpg.Connection) -> list[AppliedMigration]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return []
    rows = await conn.fetch(
        "SELECT version, name, applied_at FROM schema_migrations ORDER BY version"
    )
    return [AppliedMigration(r["version"], r["name"], r["applied_at"]) for r in rows]


async def status(
    conn: asyncpg.Connection, migrations: list[Migration] | None = None
) -> tuple[list[AppliedMigration], list[Migration]]:
    """(applied, pending). Applied rows may include versions this code does not know (a newer
    release migrated the database); pending are the known ones not applied yet, in order."""
    migrations = available() if migrations is None else migrations
    applied = await _applied(conn)
    done = {m.version for m in applied}
    return applied, [m for m in migrations if m.version not in done]


async def wait_until_migrated(
    conn: asyncpg.Connection, timeout: float = 120.0, poll: float = 0.2
) -> None:
    """Wait for another process to apply this code's migrations (``serve --workers N``:
    worker 0 migrates while the others start); MigrationError if that takes over ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        _, pending = await status(conn)
        if not pending:
            return
        if loop.time() > deadline:
            names = ", ".join(m.label for m in pending)
            raise MigrationError(f"the schema was not migrated within {timeout:g} s: {names}")
        await asyncio.sleep(poll)


async def migrate(
    conn: asyncpg.Connection, migrations: list[Migration] | None = None
) -> list[Migration]:
    """Apply the pending migrations in version order; return those this call applied.

    Idempotent, and safe to run from several processes at once (advisory lock). Must not be
    called inside a transaction: each migration commits on its own.
    """
    migrations = available() if migrations is None else migrations
    if conn.is_in_transaction():
        raise MigrationError("migrate() needs a connection outside a transaction")
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(CREATE_TABLE)
        _, pending = await status(conn, migrations)
        done: list[Migration] = []
        for migration in pending:
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
            except Exception as exc:
                raise MigrationError(
                    f"migration {migration.label}.sql failed: {type(exc).__name__}: {exc}"
                ) from exc
            done.append(migration)
        return done
    finally:
        if not conn.is_closed():  # a lost connection has released the lock already
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
