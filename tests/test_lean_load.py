"""The lean load generator (loadtest/lean.py): its patched frames are what the codec would
encode, and against a real ``fleetwatch serve`` every acknowledged report is stored once."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest

from loadtest import lean
from loadtest.terminal import FixClock, SimTerminal
from protocols.jt808 import BEIJING, V2013, V2019, decode_frame, encode_frame


def _codec_frame(template_frame: bytes, serial: int, when: datetime, version: int) -> bytes:
    """What the codec encodes for the template's report with another serial and fix time."""
    msg = decode_frame(template_frame)
    body = dataclasses.replace(msg.body, time=when)  # type: ignore[type-var]
    return encode_frame(body, phone=msg.header.phone, serial=serial, version=version)


@pytest.mark.parametrize("version", [V2013, V2019])
def test_patched_frames_decode_and_equal_the_codec(version: int) -> None:
    clock = FixClock(datetime(2026, 3, 4, 5, 6, 7, tzinfo=BEIJING))
    term = SimTerminal(3, "14600000003", clock, version=version)
    template_frame = term.location_frame(0)
    tpl = lean.ReportTemplate(template_frame)
    # every high byte, the escaped values in both bytes, and a spread of the rest
    serials = sorted({*range(0, 65536, 251), 0x007D, 0x007E, 0x7D00, 0x7E7E, 0x7D7E, 65535})
    for k, serial in enumerate(serials):
        when, when_xor = clock.bcd(1000 + k)
        got = tpl.frame(serial, when, when_xor)
        msg = decode_frame(got)
        assert msg.checksum_ok and not msg.problems
        assert msg.header.serial == serial
        assert msg.body.time == clock.time(1000 + k)  # type: ignore[attr-defined]
        assert got == _codec_frame(template_frame, serial, clock.time(1000 + k), version)


def test_escaping_falls_back_to_the_full_framing() -> None:
    clock = FixClock(datetime(2026, 3, 4, 5, 6, 7, tzinfo=BEIJING))
    tpl_frame = SimTerminal(5, "14600000005", clock).location_frame(0)
    tpl = lean.ReportTemplate(tpl_frame)
    when, when_xor = clock.bcd(0)
    assert tpl.frame(0x0102, when, when_xor).count(0x7D) == tpl_frame.count(0x7D)
    assert tpl.fallbacks == 0
    # a serial byte to escape
    got = tpl.frame(0x017E, when, when_xor)
    assert tpl.fallbacks == 1 and b"\x7d\x02" in got
    assert decode_frame(got).header.serial == 0x017E
    # a check code to escape: find a serial whose patched check code is 0x7d or 0x7e
    hits = 0
    for serial in range(0x0100, 0x0400):
        before = tpl.fallbacks
        got = tpl.frame(serial, when, when_xor)
        if tpl.fallbacks > before and _CLEAN(serial):
            hits += 1
            assert got[-3] == 0x7D and got[-2] in (0x01, 0x02)  # the escaped check code
            assert got == _codec_frame(tpl_frame, serial, clock.time(0), V2013)
    assert hits >= 4  # 2 of 256 check codes, over 768 serials
    with pytest.raises(ValueError, match="0x0200"):
        lean.ReportTemplate(SimTerminal(5, "14600000005", clock).register_frame())


def _CLEAN(serial: int) -> bool:
    return not {serial >> 8, serial & 0xFF} & {0x7D, 0x7E}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"fleetwatch serve exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"port {port} did not open within {timeout} s")


def test_lean_against_serve_every_ack_stored_once(short_tmp: Path) -> None:
    from store.cluster import EmbeddedCluster

    jt808, http = _free_port(), _free_port()
    data = short_tmp / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetwatch.cli", "serve", "--data-dir", str(data),
         "--jt808-port", str(jt808), "--http-port", str(http), "--host", "127.0.0.1",
         "--registration-rate", "0", "--max-per-address", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        _wait_for_port(jt808, proc, 60)
        url = EmbeddedCluster.in_data_dir(data).url
        run = subprocess.run(
            [sys.executable, "-m", "loadtest.lean", "--port", str(jt808), "--terminals", "6",
             "--procs", "2", "--rate", "60", "--duration", "3", "--burst", "2",
             "--v2019-share", "0.5", "--server-pid", str(proc.pid), "--verify-db", url,
             "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        out = run.stdout
        assert run.returncode == 0, out + run.stderr
        assert "6 terminals, 6 authenticated" in out
        sent = int(out.split("positions: sent ")[1].split()[0].replace(",", ""))
        assert 150 <= sent <= 190, out  # 60/s for 3 s
        assert f"acked {sent:,}  failed 0  unacked 0" in out
        assert "stored exactly once" in out
        assert f"server pid {proc.pid}:" in out
        report = json.loads(out.splitlines()[-1])["lean"]
        assert report["sent"] == report["acked"] == report["db"]["stored"] == sent
        assert report["db"]["duplicates"] == 0 and report["unacked"] == 0
        assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p95"]
        assert report["latency_ms"]["p95"] <= report["latency_ms"]["p99"] < 5000
        assert report["loadgen_cpu"]["us_per_position"] > 0

        async def count() -> tuple[int, int]:
            conn = await asyncpg.connect(url)
            try:
                row = await conn.fetchrow(
                    "SELECT count(*), count(DISTINCT (vehicle_id, fix_time)) FROM positions"
                )
                assert row is not None
                return int(row[0]), int(row[1])
            finally:
                await conn.close()

        # independently of the generator's check (in a thread: the test runner's loop runs)
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(asyncio.run, count()).result() == (sent, sent)
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()[-2000:]
