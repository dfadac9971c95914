"""Shared fixtures: one real PostgreSQL+PostGIS cluster for the session, a fresh database per test.

The cluster is an :class:`store.cluster.EmbeddedCluster` (the same code ``fleetwatch serve``
uses) in a short /tmp directory, non-durable for speed. Databases are cloned from templates
(``CREATE DATABASE ... TEMPLATE``, a file copy taking tens of milliseconds), so each test gets
its own schema without paying for PostGIS or the migrations again:

* ``fleetwatch_bare``: PostGIS only (for migration tests),
* ``fleetwatch_template``: migrated to the latest schema (everything else).

Async tests use :func:`tests.aio.aio_test` (see tests/aio.py for why).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from store.cluster import DATABASE, EmbeddedCluster
from store.migrations import migrate
from tests.aio import run_sync

BARE_TEMPLATE = "fleetwatch_bare"
MIGRATED_TEMPLATE = "fleetwatch_template"
_numbers = itertools.count(1)


async def _prepare_templates(cluster: EmbeddedCluster) -> None:
    admin = await asyncpg.connect(cluster.url_for("postgres"))
    try:
        await admin.execute(f"CREATE DATABASE {BARE_TEMPLATE} TEMPLATE {DATABASE}")
        conn = await asyncpg.connect(cluster.url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        await admin.execute(f"CREATE DATABASE {MIGRATED_TEMPLATE} TEMPLATE {DATABASE}")
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[EmbeddedCluster]:
    """The session's cluster; its ``fleetwatch`` database is migrated. Do not stop it."""
    # A short path under /tmp: pytest's tmp_path can exceed the 107-byte socket path limit.
    cluster = EmbeddedCluster(tempfile.mkdtemp(prefix="fwt-", dir="/tmp"), durable=False)
    try:
        cluster.start()
        run_sync(_prepare_templates(cluster))
        yield cluster
    finally:
        cluster.stop(mode="immediate")
        shutil.rmtree(cluster.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(pg_cluster: EmbeddedCluster) -> str:
    """URL of the session's migrated ``fleetwatch`` database (shared: treat as read-only)."""
    return pg_cluster.url


def _database(cluster: EmbeddedCluster, template: str) -> Iterator[str]:
    name = f"test_{next(_numbers)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(cluster.url_for("postgres"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    run_sync(admin(f"CREATE DATABASE {name} TEMPLATE {template}"))
    try:
        yield cluster.url_for(name)
    finally:
        run_sync(admin(f"DROP DATABASE {name} WITH (FORCE)"))


@pytest.fixture
def db_url(pg_cluster: EmbeddedCluster) -> Iterator[str]:
    """URL of a fresh, migrated database of this test's own."""
    yield from _database(pg_cluster, MIGRATED_TEMPLATE)


@pytest.fixture
def bare_db_url(pg_cluster: EmbeddedCluster) -> Iterator[str]:
    """URL of a fresh database with PostGIS but no migrations applied."""
    yield from _database(pg_cluster, BARE_TEMPLATE)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short-named temporary directory under /tmp (clusters need short socket paths)."""
    path = Path(tempfile.mkdtemp(prefix="fwt-", dir="/tmp"))
    path.chmod(0o755)  # traversable by the server user when the tests run as root
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
