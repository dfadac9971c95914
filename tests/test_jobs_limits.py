"""Periodic jobs that survive a failing run (ingest.jobs) and the limits of ingest.limits."""

from __future__ import annotations

import asyncio
from datetime import date

import asyncpg

from ingest.jobs import every
from ingest.limits import ACCEPT_OVERSHOOT, AcceptGate, AddressCount, RegistrationLimit, TokenBucket
from protocols.jt808 import ResendSubpackages, encode_frame
from store.partitions import ensure_partitions, list_partitions
from tests.aio import aio, aio_test


@aio_test
async def test_a_job_that_raises_runs_again() -> None:
    """The failure that used to end the sweep: a 0x8003 for 299 parts in a 2013 frame."""
    runs: list[int] = []

    def sweep() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            encode_frame(ResendSubpackages(orig_serial=1, ids=list(range(2, 301))),
                         phone="13900000001", serial=1)  # fmt: skip

    loop = every(0.05, sweep, "the sweep")
    try:
        for _ in range(100):
            if len(runs) >= 3:
                break
            await asyncio.sleep(0.05)
        assert len(runs) >= 3 and loop.failures == 1  # type: ignore[attr-defined]
        assert loop.running
    finally:
        loop.stop()


@aio_test
async def test_partition_maintenance_survives_a_locked_database(db_url: str) -> None:
    """A partition run that fails (the table locked past lock_timeout) is logged, and the next
    run, once the lock is gone, creates the partitions."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2,
                                     server_settings={"lock_timeout": "100ms"})  # fmt: skip
    blocker = await asyncpg.connect(db_url)
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute("LOCK TABLE positions IN ACCESS EXCLUSIVE MODE")
    day = date(2031, 3, 1)

    async def maintain() -> None:
        async with pool.acquire() as conn:
            await ensure_partitions(conn, day, ahead_days=1, behind_days=0)

    loop = every(0.1, lambda: aio(maintain()), "partition maintenance", now=True)
    try:
        for _ in range(100):
            if loop.failures >= 2:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.05)
        assert loop.failures >= 2 and loop.running  # type: ignore[attr-defined]
        await tx.rollback()
        names: set[str] = set()
        for _ in range(100):
            async with pool.acquire() as conn:
                names = {p.name for p in await list_partitions(conn)}
            if {"positions_20310301", "positions_20310302"} <= names:
                break
            await asyncio.sleep(0.05)
        assert {"positions_20310301", "positions_20310302"} <= names
    finally:
        loop.stop()
        await blocker.close()
        await pool.close()


def test_token_bucket_and_registration_limit() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)
    limit = RegistrationLimit(per_address=1.0, total=3.0, burst=2.0)
    assert [limit.allow("10.0.0.1", 0.0) for _ in range(3)] == [True, True, False]
    assert limit.allow("10.0.0.2", 0.0)  # another address has its own bucket...
    assert not limit.allow("10.0.0.3", 0.0)  # ...but all share the total (a burst of 3)
    assert limit.allow("10.0.0.1", 1.0)


def test_address_count_and_accept_gate() -> None:
    count = AddressCount(cap=2)
    assert [count.admit("a") for _ in range(3)] == [True, True, False]
    count.release("a")
    assert count.admit("a") and not count.admit("a")
    assert AddressCount(cap=0).admit("a")

    class Port:
        reading = True

        def stopReading(self) -> None:
            self.reading = False

        def startReading(self) -> None:
            self.reading = True

    gate = AcceptGate(capacity=2)
    port = Port()
    gate.ports.append(port)
    gate.opened()
    assert port.reading
    gate.opened()
    assert not port.reading and gate.pauses == 1
    gate.closed()
    assert port.reading
    for _ in range(ACCEPT_OVERSHOOT + 1):  # one accept batch past the capacity...
        gate.opened()
    assert not gate.admit()  # ...and the rest of it is closed rather than run out of files
    gate.closed()
    assert gate.admit() and not port.reading
