"""Known terminals authenticate from the directory's cache while the database is away."""

from __future__ import annotations

import asyncpg
import pytest

from ingest.directory import Directory
from protocols.jt808 import Register
from tests.aio import aio_test

REG = Register(province=31, city=115, manufacturer="FWTST", model="T-1", terminal_id="T0001",
               plate_color=2, plate="沪C30001")  # fmt: skip


@aio_test
async def test_cache_answers_only_when_the_database_does_not(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    directory = Directory(pool, db_timeout=0.5)
    try:
        result, first = await directory.register("013930000001", REG, 2013)
        assert result == 0
        assert await directory.authenticate("013930000001", first) is not None  # cached now
        result, second = await directory.register("013930000001", REG, 2013)  # a reset terminal
        assert result == 0 and second != first
        assert await directory.authenticate("13930000002", "whatever") is None  # unknown: DB says
    finally:
        await pool.close()  # the database is now unreachable for this directory
    assert await directory.authenticate("013930000001", first) is None  # replaced by the new code
    vehicle = await directory.authenticate("013930000001", second)
    assert vehicle is not None and vehicle.plate == "沪C30001"
    with pytest.raises(asyncpg.InterfaceError):  # never seen: no answer rather than "wrong code"
        await directory.authenticate("13930000002", "whatever")
