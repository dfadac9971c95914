"""The real ingest stack for tests: asyncpg pool, writer + spool, JT808 server on a free port."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from twisted.internet import reactor

from ingest.directory import Directory
from ingest.jobs import every
from ingest.jt808_server import IngestService, JT808Factory
from ingest.media import MediaStore
from ingest.metrics import Metrics
from store.spool import Spool
from store.writer import PositionWriter
from tests.aio import deferred


@dataclass
class Ingest:
    port: int
    pool: asyncpg.Pool
    writer: PositionWriter
    service: IngestService
    metrics: Metrics


@contextlib.asynccontextmanager
async def running_ingest(
    db_url: str, workdir: Path, *, policy: str = "open", **options: Any
) -> AsyncIterator[Ingest]:
    writer_opts = {
        k: options.pop(k)
        for k in list(options)
        if k
        in (
            "batch_rows",
            "max_age",
            "db_timeout",
            "retry_interval",
            "ack_deadline",
            "max_retry_interval",
        )
    }
    options.setdefault("registration_rate", 0)  # tests register freely unless they test it
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    writer = PositionWriter(
        lambda: asyncpg.connect(db_url), Spool(workdir / "spool"), **writer_opts
    )
    metrics = Metrics()
    service = IngestService(
        Directory(pool, policy),
        writer.write,
        metrics,
        media=MediaStore(workdir / "media", pool),
        **options,
    )
    writer.on_pressure = service.set_pressure
    writer.start()
    port = reactor.listenTCP(0, JT808Factory(service), interface="127.0.0.1")  # type: ignore[attr-defined]
    sweep = every(0.1, lambda: service.sweep(time.monotonic()), "the sweep")
    try:
        yield Ingest(port.getHost().port, pool, writer, service, metrics)
    finally:
        sweep.stop()
        await deferred(port.stopListening())
        for conn in list(service.connections):
            conn.transport.abortConnection()
        await writer.close()
        await pool.close()
