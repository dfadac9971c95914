"""Schema migrations on a real database: fresh, idempotent, status, failure, concurrency."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from store.migrations import (
    Migration,
    MigrationError,
    available,
    migrate,
    status,
    wait_until_migrated,
)
from tests.aio import aio_test

SHIPPED = available()
LABELS = [m.label for m in SHIPPED]
NEXT = SHIPPED[-1].version + 1  # what a newer release would add
EXTRA = Migration(NEXT, "extra", "CREATE TABLE extra (x integer); INSERT INTO extra VALUES (1);")


def test_available_reads_the_packaged_sql_files() -> None:
    migrations = available()
    assert [m.label for m in migrations][:1] == ["0001_initial"]
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)
    assert "CREATE TABLE positions" in migrations[0].sql


@aio_test
async def test_fresh_migrate_applies_all_then_nothing(bare_db_url: str) -> None:
    conn = await asyncpg.connect(bare_db_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('vehicles')") is None
        applied = await migrate(conn)
        assert [m.label for m in applied] == [m.label for m in available()]
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert {"vehicles", "companies", "positions", "positions_default", "last_positions"} <= (
            tables
        )
        rows = await conn.fetch("SELECT version, name, applied_at FROM schema_migrations")
        assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in SHIPPED]
        assert rows[0]["name"] == "initial"
        assert rows[0]["applied_at"] is not None

        assert await migrate(conn) == []  # idempotent
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(SHIPPED)
    finally:
        await conn.close()


@aio_test
async def test_status_before_and_after(bare_db_url: str) -> None:
    conn = await asyncpg.connect(bare_db_url)
    try:
        applied, pending = await status(conn)
        assert applied == []
        assert [m.label for m in pending] == LABELS

        await migrate(conn)
        applied, pending = await status(conn)
        assert [a.label for a in applied] == LABELS
        assert pending == []

        # A newer release adds a migration: only it is pending, and only it is applied.
        newer = [*available(), EXTRA]
        applied, pending = await status(conn, newer)
        assert [m.label for m in pending] == [EXTRA.label]
        assert [m.label for m in await migrate(conn, newer)] == [EXTRA.label]
        assert await conn.fetchval("SELECT count(*) FROM extra") == 1
        assert (await status(conn, newer))[1] == []
    finally:
        await conn.close()


@aio_test
async def test_failed_migration_leaves_nothing_behind(bare_db_url: str) -> None:
    broken = Migration(NEXT, "broken", "CREATE TABLE half_done (x integer); SELECT 1 / 0;")
    conn = await asyncpg.connect(bare_db_url)
    try:
        with pytest.raises(MigrationError, match=broken.label):
            await migrate(conn, [*available(), broken])
        # The shipped ones committed each on its own; the broken one rolled back entirely.
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        applied, pending = await status(conn, [*available(), broken])
        assert [a.label for a in applied] == LABELS
        assert [m.version for m in pending] == [NEXT]
        # The advisory lock was released: another connection can migrate at once.
        other = await asyncpg.connect(bare_db_url)
        try:
            done = await asyncio.wait_for(migrate(other, [*available(), EXTRA]), 5)
            assert [m.version for m in done] == [NEXT]
        finally:
            await other.close()
    finally:
        await conn.close()


@aio_test
async def test_concurrent_migrate_applies_once(bare_db_url: str) -> None:
    slow = Migration(NEXT, "slow", "SELECT pg_sleep(0.3); CREATE TABLE slow_one (x integer);")
    migrations = [*available(), slow]
    first, second = await asyncpg.connect(bare_db_url), await asyncpg.connect(bare_db_url)
    try:
        results = await asyncio.gather(migrate(first, migrations), migrate(second, migrations))
        # One connection did everything, the other waited on the lock and found nothing to do.
        assert sorted(len(r) for r in results) == [0, len(SHIPPED) + 1]
        assert await first.fetchval("SELECT count(*) FROM schema_migrations") == len(SHIPPED) + 1
    finally:
        await first.close()
        await second.close()


@aio_test
async def test_migrate_refuses_an_open_transaction(bare_db_url: str) -> None:
    conn = await asyncpg.connect(bare_db_url)
    try:
        async with conn.transaction():
            with pytest.raises(MigrationError, match="outside a transaction"):
                await migrate(conn)
    finally:
        await conn.close()


@aio_test
async def test_session_template_is_migrated(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        assert (await status(conn))[1] == []
    finally:
        await conn.close()


@aio_test
async def test_last_positions_is_vacuumed_by_dead_row_count(db_url: str) -> None:
    """Migration 0005: a fixed dead-row threshold, not 20% of a small, constantly updated table."""
    conn = await asyncpg.connect(db_url)
    try:
        options = await conn.fetchval(
            "SELECT reloptions FROM pg_class WHERE oid = 'last_positions'::regclass"
        )
    finally:
        await conn.close()
    assert "autovacuum_vacuum_scale_factor=0" in options
    assert "autovacuum_vacuum_cost_delay=0" in options


@aio_test
async def test_a_worker_waits_for_the_migrating_one(bare_db_url: str) -> None:
    """``serve --workers N``: workers 1.. wait until worker 0 has migrated (they once started
    on a schema without the gateway's tables and died)."""
    waiter, migrator = await asyncpg.connect(bare_db_url), await asyncpg.connect(bare_db_url)
    try:
        with pytest.raises(MigrationError, match=r"not migrated within 0\.3 s: 0001_initial"):
            await wait_until_migrated(waiter, timeout=0.3)
        waiting = asyncio.ensure_future(wait_until_migrated(waiter, timeout=30))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await migrate(migrator)
        await asyncio.wait_for(waiting, 5)
        assert await waiter.fetchval("SELECT to_regclass('commands') IS NOT NULL")
    finally:
        await waiter.close()
        await migrator.close()
