"""``fleetwatch serve`` at its descriptor limit (a subprocess with a small RLIMIT_NOFILE)."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import socket
import sys
from pathlib import Path

from protocols.jt808 import Heartbeat, encode_frame
from tests.aio import aio_test
from tests.terminal_client import Terminal, report
from tests.test_serve import _free_port

NOFILE = 250


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _small_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


async def _stderr_line(proc: asyncio.subprocess.Process, pattern: str, timeout: float) -> str:
    assert proc.stderr is not None
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            line = (await proc.stderr.readline()).decode()
            if not line:
                raise AssertionError(f"serve exited: {''.join(seen)[-2000:]}")
            seen.append(line)
            if re.search(pattern, line):
                return line


@aio_test
async def test_at_the_descriptor_limit_serve_stops_accepting_and_resumes(
    db_url: str, short_tmp: Path
) -> None:
    port, http = _free_port(), _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleetwatch.cli", "serve", "--db", db_url,
        "--data-dir", str(short_tmp / "data"), "--jt808-port", str(port),
        "--http-port", str(http), "--host", "127.0.0.1", "--pre-auth-timeout", "120",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_small_nofile,
    )  # fmt: skip
    held: list[socket.socket] = []
    try:
        line = await _stderr_line(proc, r"up to \d+ terminal connections", 60)
        capacity = int(re.search(r"up to (\d+)", line).group(1))  # type: ignore[union-attr]
        assert f"open-file limit {NOFILE}" in line and 0 < capacity < NOFILE
        await _stderr_line(proc, rf"listening on 127.0.0.1:{port}", 60)
        loop = asyncio.get_running_loop()
        for _ in range(NOFILE + 20):  # more than it may open: the rest wait in the backlog
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            held.append(sock)
        await asyncio.sleep(1.0)
        terminal = await Terminal.connect(port, "13988880001")
        await terminal.send(Heartbeat())
        assert await terminal.nothing_within(1.0)  # not accepted yet
        cpu = _cpu_seconds(proc.pid)
        await asyncio.sleep(1.5)
        assert _cpu_seconds(proc.pid) - cpu < 0.3  # paused, not spinning on accept()
        for sock in held[:capacity]:  # descriptors free up: the next ones waiting are taken
            sock.close()
        for sock in held[capacity : capacity + 10]:
            sock.send(encode_frame(Heartbeat(), phone="13988880002", serial=1))
            sock.setblocking(True)
            sock.settimeout(5)
            assert sock.recv(100)[:3] == b"\x7e\x80\x01"
        assert await terminal.nothing_within(0.5)  # still behind the others in the backlog
        for sock in held[capacity + 10 :]:
            sock.close()
        ack = await terminal.receive(5)
        assert (ack.msg_id, ack.body.reply_id, ack.body.result) == (0x8001, 0x0002, 0)
        await terminal.login("沪A88001")
        serial = await terminal.send(report(0))
        assert (await terminal.receive()).body.reply_serial == serial
        await terminal.close()
    finally:
        for sock in held:
            sock.close()
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert b"EMFILE" not in stderr and b"Too many open files" not in stderr
    assert b"refused a connection" not in stderr  # all waited; none was accepted and closed
