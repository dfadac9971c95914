"""``fleetwatch send`` against a real ``fleetwatch serve --workers 2`` (subprocesses, embedded
PostGIS, terminals over TCP): the command reaches the terminal whichever worker holds it, and the
terminal's answer comes back to the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.request
from pathlib import Path

import asyncpg

from fleetwatch.demo_cmd import wait_for_port
from protocols.jt808 import LocationQueryReply, TerminalGeneralResponse
from store.cluster import EmbeddedCluster
from tests.aio import aio_test
from tests.terminal_client import Terminal, report
from tests.test_serve import _free_port

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


async def _cli(data: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleetwatch.cli", "send", *args, "--data-dir", str(data),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=ENV,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _holders(db: asyncpg.Connection) -> dict[str, str]:
    rows = await db.fetch(
        "SELECT v.plate, h.worker FROM terminal_holders h JOIN vehicles v ON v.id = h.vehicle_id"
    )
    return {r["plate"]: r["worker"] for r in rows}


@aio_test
async def test_send_text_query_and_track_through_serve_with_two_workers(short_tmp: Path) -> None:
    jt808, http = _free_port(), _free_port()
    data = short_tmp / "data"
    serve = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleetwatch.cli", "serve", "--data-dir", str(data),
        "--jt808-port", str(jt808), "--http-port", str(http), "--host", "127.0.0.1",
        "--workers", "2", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env=ENV,
    )  # fmt: skip
    terminals: dict[str, Terminal] = {}
    db = None
    try:
        await wait_for_port(jt808, serve, 60)
        db = await asyncpg.connect(EmbeddedCluster.in_data_dir(data).url)
        # Connect terminals until both workers hold at least one (the kernel picks the worker;
        # the second worker may still be starting when the first already listens).
        deadline = asyncio.get_running_loop().time() + 60
        for n in range(90):
            if n >= 10:
                await asyncio.sleep(0.5)
            if asyncio.get_running_loop().time() > deadline:
                break
            plate = f"沪B{n:05d}"
            terminal = await Terminal.connect(jt808, f"139000004{n:02d}")
            await terminal.login(plate)
            terminals[plate] = terminal
            for _ in range(100):
                if plate in await _holders(db):
                    break
                await asyncio.sleep(0.05)
            if len(set((await _holders(db)).values())) == 2:
                break
        holders = await _holders(db)
        assert len(set(holders.values())) == 2, holders  # both workers hold terminals

        # A text to a terminal of each worker: the CLI prints the terminal's answer.
        by_worker = {worker: plate for plate, worker in holders.items()}
        for plate in by_worker.values():
            terminal = terminals[plate]
            cli = asyncio.ensure_future(
                _cli(data, "text", plate, "请在前方服务区休息", "--tts", "--by", "值班员")
            )
            command = await terminal.receive(30)
            assert command.msg_id == 0x8300 and command.body.text == "请在前方服务区休息"
            assert command.body.flag == 0x08  # --tts alone: read aloud, not shown
            await terminal.send(
                TerminalGeneralResponse(reply_serial=command.serial, reply_id=0x8300, result=0)
            )
            status, out, err = await cli
            assert (status, out.strip()) == (0, f"{plate}: accepted"), err

        # Where is it: the terminal's 0x0201 comes back as a position.
        plate = next(iter(by_worker.values()))
        terminal = terminals[plate]
        cli = asyncio.ensure_future(_cli(data, "query", plate))
        command = await terminal.receive(30)
        assert command.msg_id == 0x8201
        await terminal.send(
            LocationQueryReply(reply_serial=command.serial, location=report(3, 31.3, 121.4))
        )
        status, out, err = await cli
        assert status == 0, err
        assert out.strip() == (
            f"{plate}: accepted at 31.300300,121.400000 40 km/h heading 90"
            " fix 2026-11-22T01:00:03+00:00"
        )

        # Temporary tracking, refused by the terminal: its answer, and exit status 3.
        plate = list(by_worker.values())[-1]
        terminal = terminals[plate]
        cli = asyncio.ensure_future(
            _cli(data, "track", plate, "--interval", "5", "--duration", "600", "--json")
        )
        command = await terminal.receive(30)
        assert (command.msg_id, command.body.interval_s, command.body.validity_s) == (
            0x8202, 5, 600,
        )  # fmt: skip
        await terminal.send(
            TerminalGeneralResponse(reply_serial=command.serial, reply_id=0x8202, result=1)
        )
        status, out, err = await cli
        assert (
            status == 3 and err.strip() == f"fleetwatch send: {plate}: the terminal answered failed"
        )
        answer = json.loads(out)
        assert (answer["plate"], answer["result"], answer["serial"]) == (
            plate, "failed", command.serial,
        )  # fmt: skip
        assert answer["position"] is None and answer["answered_at"]

        # Worker 0 serves /metrics: it executed the commands to the terminals it holds.
        metrics = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics").read().decode()
        )
        executed = [
            line for line in metrics.splitlines() if line.startswith("fleetwatch_gateway_executed ")
        ]
        assert len(executed) == 1 and float(executed[0].split()[1]) >= 1

        # No answer in time: a one-line error and exit status 1.
        status, out, err = await _cli(data, "text", plate, "hello", "--timeout", "1")
        assert status == 1 and out == ""
        assert err.strip().splitlines() == [err.strip()] and err.startswith(
            f"fleetwatch send: error: {plate}: timeout:"
        )
        assert (await terminal.receive(5)).msg_id == 0x8300  # it was delivered, not answered

        # Offline and unknown plates.
        await terminals.pop(plate).close()
        for _ in range(100):
            if plate not in await _holders(db):
                break
            await asyncio.sleep(0.05)
        status, _, err = await _cli(data, "query", plate)
        assert status == 1 and err.startswith(f"fleetwatch send: error: {plate}: offline:"), err
        status, _, err = await _cli(data, "query", "沪Z99999")
        assert (status, err.strip()) == (1, "fleetwatch send: error: unknown plate '沪Z99999'")

        rows = await db.fetch("SELECT result, requested_by FROM commands ORDER BY requested_at")
        assert [r["result"] for r in rows] == ["accepted", "accepted", "accepted", "failed",
                                               "timeout"]  # fmt: skip
        assert rows[0]["requested_by"] == "值班员"
    finally:
        for terminal in terminals.values():
            await terminal.close()
        if db is not None:
            await db.close()
        serve.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(serve.communicate(), 60)
        print(stderr.decode()[-4000:])  # shown by pytest if the test fails
    assert serve.returncode == 0, stderr.decode()[-2000:]
