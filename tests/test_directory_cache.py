"""Known terminals authenticate from the directory's cache while the database is away, also on
another worker than the one they authenticated on before; a code the database dropped (the
operator unbound the terminal) does not work from the cache either."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from ingest.auth_cache import AuthCache
from ingest.directory import Directory
from protocols.jt808 import Register
from store.vehicles import unbind_terminal
from tests.aio import aio_test

REG = Register(province=31, city=115, manufacturer="FWTST", model="T-1", terminal_id="T0001",
               plate_color=2, plate="沪C30001")  # fmt: skip
PHONE = "013930000001"


@pytest.mark.parametrize("where", ["same worker", "other worker"])
@aio_test
async def test_cache_answers_only_when_the_database_does_not(
    db_url: str, tmp_path: Path, where: str
) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    first_worker = Directory(pool, db_timeout=0.5, cache=AuthCache(tmp_path, 0, 2))
    other_pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    second_worker = Directory(other_pool, db_timeout=0.5, cache=AuthCache(tmp_path, 1, 2))
    asked = first_worker if where == "same worker" else second_worker
    try:
        result, first = await first_worker.register(PHONE, REG, 2013)
        assert result == 0
        assert await first_worker.authenticate(PHONE, first) is not None  # cached now
        async with pool.acquire() as conn:  # the operator swaps the terminal
            assert await unbind_terminal(conn, "沪C30001", 2) is not None
        result, second = await first_worker.register(PHONE, REG, 2013)  # the new one registers
        assert result == 0 and second != first
        assert await asked.authenticate("13930000002", "whatever") is None  # unknown: DB says so
    finally:
        await pool.close()  # the database is now unreachable for both directories
        await other_pool.close()
    assert await asked.authenticate(PHONE, first) is None  # replaced by the new code
    vehicle = await asked.authenticate(PHONE, second)
    assert vehicle is not None and vehicle.plate == "沪C30001"
    with pytest.raises(asyncpg.InterfaceError):  # never seen: no answer rather than "wrong code"
        await asked.authenticate("13930000002", "whatever")


@aio_test
async def test_a_code_the_operator_dropped_is_forgotten(db_url: str, tmp_path: Path) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    directory = Directory(pool, db_timeout=0.5, cache=AuthCache(tmp_path, 0, 2))
    other = Directory(pool, db_timeout=0.5, cache=AuthCache(tmp_path, 1, 2))
    try:
        result, code = await directory.register(PHONE, REG, 2013)
        assert result == 0 and await directory.authenticate(PHONE, code) is not None
        assert await directory.refresh_cache() == 0  # the database still has that code
        async with pool.acquire() as conn:  # `fleetwatch vehicles unbind`, another process
            await unbind_terminal(conn, "沪C30001", 2)
        assert await directory.refresh_cache() == 1
    finally:
        await pool.close()
    for asked in (directory, other):  # the other worker learns it from the shared file
        with pytest.raises(asyncpg.InterfaceError):
            await asked.authenticate(PHONE, code)
