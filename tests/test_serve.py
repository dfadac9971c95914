"""``fleetwatch serve`` as a user runs it: a subprocess on its embedded PostGIS, then Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg
import pytest

from fleetwatch.demo_cmd import wait_for_port
from tests.aio import aio_test
from tests.terminal_client import Terminal, report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _value(metrics: str, series: str) -> int:
    """The value of one series (name with its labels) in a /metrics text; 0 if absent."""
    match = re.search(rf"^{re.escape(series)} (\d+)$", metrics, re.M)
    return int(match.group(1)) if match else 0


def _acked(metrics: str) -> int:
    """Positions acknowledged as durable: committed ("db") or spooled ("spool")."""
    return sum(
        _value(metrics, f'fleetwatch_positions_total{{outcome="{o}"}}') for o in ("db", "spool")
    )


def _stored(metrics: str) -> int:
    """Rows in the database: committed directly, moved there from the spool, or spooled and
    committed by their diverted flush after all."""
    return sum(
        _value(metrics, f"fleetwatch_{name}_total")
        for name in ("rows_written", "rows_replayed", "rows_stored_late")
    )


@pytest.mark.parametrize("workers", [1, 2])
@aio_test
async def test_serve_embedded_end_to_end_and_ctrl_c(short_tmp: Path, workers: int) -> None:
    jt808, http, nmea = _free_port(), _free_port(), _free_port()
    data = short_tmp / "data"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleetwatch.cli", "serve", "--data-dir", str(data),
        "--jt808-port", str(jt808), "--http-port", str(http), "--nmea-port", str(nmea),
        "--host", "127.0.0.1", "--log-format", "json", "--workers", str(workers),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        await wait_for_port(jt808, proc, 60)
        await asyncio.sleep(1.0 * (workers - 1))  # the other workers start listening too
        terminals = []
        for n in range(4):  # with several workers the kernel spreads these over them
            terminal = await Terminal.connect(jt808, f"1395555000{n}")
            await terminal.login(f"沪A5555{n}")
            for i in range(5):
                await terminal.send(report(i))
                assert (await terminal.receive()).body.result == 0
            terminals.append(terminal)
        # the other workers publish their metrics every second: wait for the sum (a loaded
        # machine may take a few rounds), then check every line of it
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            metrics = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics").read().decode()
            )
            if _acked(metrics) == 20 and _stored(metrics) >= 20:
                break
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.5)
        # every worker's, added up
        # durable in the database at once, or first in the fsynced spool when a flush missed its
        # deadline (a loaded machine); either way acknowledged, and all written in the end
        assert _acked(metrics) == 20
        assert "fleetwatch_terminals_authenticated 4" in metrics
        assert 'fleetwatch_ack_seconds_bucket{le="+Inf"} 20' in metrics
        assert "fleetwatch_ack_seconds_count 20" in metrics
        assert "# TYPE fleetwatch_writer_flush_seconds histogram" in metrics
        assert "# TYPE fleetwatch_rows_written_total counter\n" in metrics
        assert _stored(metrics) >= 20  # a diverted flush may commit too; the replay skips those
        # the dashboard on the same port: the page, and its API refusing an anonymous caller
        page = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{http}/").read().decode()
        )
        assert "FleetWatch 监控台" in page
        for path in ("vehicles", "alert-queue", "vehicles/1/panel"):  # the features are wired
            with pytest.raises(urllib.error.HTTPError) as refused:
                url = f"http://127.0.0.1:{http}/api/{path}"
                await asyncio.to_thread(urllib.request.urlopen, url)
            assert refused.value.code == 401, path
            assert "not logged in" in json.loads(refused.value.read())["error"]
        for terminal in terminals:
            await terminal.close()
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert all(p.stat().st_size == 0 for p in (data / "spool").rglob("*.spool"))
    # The cluster was stopped on exit: start it again (as the CLI does) and read the rows back.
    output = await asyncio.to_thread(_cli, "db", "status", "--data-dir", str(data))
    assert "0001" in output
    from store.cluster import EmbeddedCluster

    cluster = EmbeddedCluster.in_data_dir(data)
    assert not cluster.running
    await asyncio.to_thread(cluster.start)
    try:
        conn = await asyncpg.connect(cluster.url)
        assert await conn.fetchval("SELECT count(*) FROM positions") == 20
        await conn.close()
    finally:
        await asyncio.to_thread(cluster.stop)
    events = [json.loads(line) for line in stderr.decode().splitlines()]  # every line is JSON
    assert all({"ts", "level", "logger", "msg"} <= set(e) for e in events)
    assert sum("authenticated from" in e["msg"] for e in events) == 4


def _cli(*args: str) -> str:
    import contextlib
    import io

    from fleetwatch.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(args)) == 0
    return out.getvalue()


def test_tune_gc_freezes_start_up_objects_and_raises_thresholds() -> None:
    import gc

    from fleetwatch.serve import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
