"""Fault injection against the real thing: ``fleetwatch serve`` subprocesses on their embedded
PostgreSQL (durable, as in production), terminals over TCP, and an independent record of what
the terminals were told.

Every check counts from :class:`Record`, filled only from the 0x8001 answers the terminals
received, and from the database afterwards: every acknowledged position stored exactly once,
and no position stored twice at all. Also used by ``loadtest/fault_stall.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from store.cluster import EmbeddedCluster
from tests.terminal_client import Terminal, report

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_template(directory: Path) -> Path:
    """A data directory with a created, migrated embedded cluster (stopped), to copy per run:
    initdb and PostGIS once instead of once per test."""
    data = directory / "data"
    subprocess.run(
        [sys.executable, "-m", "fleetwatch.cli", "db", "init", "--data-dir", str(data)],
        check=True, capture_output=True, cwd=REPO,
    )  # fmt: skip
    return data


def copy_data_dir(template: Path, target: Path) -> Path:
    """``cp -a``: keeps the cluster's owner (the server user when the tests run as root)."""
    subprocess.run(["cp", "-a", str(template), str(target)], check=True)
    return target


class Serve:
    """One ``fleetwatch serve`` process tree on a data directory, its log in a file."""

    def __init__(self, data: Path, *, workers: int = 1, extra: tuple[str, ...] = (),
                 port: int | None = None, http: int | None = None) -> None:  # fmt: skip
        self.data = data
        self.workers = workers
        self.extra = extra
        self.port = port or free_port()
        self.http = http or free_port()
        self.log = data.parent / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Serve:
        argv = [sys.executable, "-m", "fleetwatch.cli", "serve", "--data-dir", str(self.data),
                "--jt808-port", str(self.port), "--http-port", str(self.http),
                "--listen", "127.0.0.1", "--workers", str(self.workers), *unlimited(),
                *self.extra]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=log, cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        return self

    async def ready(self, timeout: float = 60.0) -> None:
        """Until every worker listens on the terminal port (one listening socket each)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}: {self.tail()}")
            if listening_sockets(self.port) >= self.workers:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"serve did not start within {timeout} s: {self.tail()}")

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def worker_pids(self) -> list[int]:
        """Worker 0's children that run ``serve`` (workers 1..N-1)."""
        assert self.proc is not None
        return [pid for pid in children(self.proc.pid) if b"serve" in cmdline(pid)]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    async def stop(self, timeout: float = 60.0) -> int:
        """Ctrl-C, as a user would; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return await asyncio.to_thread(self.proc.wait, timeout)


def unlimited() -> tuple[str, ...]:
    """No registration rate limit, where serve has one: every test terminal comes from
    127.0.0.1 and registers at once."""
    import argparse

    from fleetwatch.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction) and "serve" in action.choices:
            serve = action.choices["serve"]
            if "--registration-rate" in serve._option_string_actions:
                return ("--registration-rate", "0")
    return ()


def listening_sockets(port: int) -> int:
    """TCP sockets listening on ``port`` (IPv4), from /proc/net/tcp: with SO_REUSEPORT each
    worker has its own."""
    count = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def postgres_pids(data: Path) -> list[int]:
    """The postmaster and its children (backends, WAL writer, checkpointer, ...)."""
    pid = EmbeddedCluster.in_data_dir(data).pid
    return [] if pid is None else [pid, *children(pid)]


def signal_postgres(data: Path, sig: int) -> list[int]:
    """Send ``sig`` to every PostgreSQL process of the data dir's cluster; their pids."""
    pids = postgres_pids(data)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


@dataclass
class Record:
    """What the terminals were told: each 0x8001 for a location report, with its latency."""

    acked: dict[tuple[str, int], float] = field(default_factory=dict)  # (phone, serial) → s
    acks: list[tuple[float, float]] = field(default_factory=list)  # (when, latency)
    unanswered: int = 0  # reports that got no ack within ``give_up`` (refused or lost in a kill)
    refused: int = 0  # answered with a result other than 0

    def latencies(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        return sorted(lat for at, lat in self.acks if since <= at - lat <= until)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


class Fleet:
    """``n`` terminals, each sending location reports at ``rate`` per second with up to
    ``window`` unacknowledged, recording every ack; reconnecting (and authenticating with the
    code it got) when its connection drops, until stopped."""

    def __init__(self, port: int, n: int, *, prefix: str = "1391000", rate: float = 50.0,
                 window: int = 8, give_up: float = 2.0) -> None:  # fmt: skip
        self.port = port
        self.phones = [f"{prefix}{k:04d}" for k in range(n)]
        self.rate = rate
        self.window = window
        self.give_up = give_up
        self.record = Record()
        self.next_serial = dict.fromkeys(self.phones, 0)
        self.codes: dict[str, str] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.reconnects = 0

    async def login(self) -> None:
        for k, phone in enumerate(self.phones):
            terminal = await Terminal.connect(self.port, phone)
            self.codes[phone] = await terminal.login(f"沪F{phone[-4:]}{k % 10}")
            await terminal.close()

    def start(self) -> None:
        self._stop.clear()
        self._tasks = [asyncio.ensure_future(self._run(p)) for p in self.phones]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def run_for(self, seconds: float) -> None:
        self.start()
        await asyncio.sleep(seconds)
        await self.stop()

    async def _run(self, phone: str) -> None:
        while not self._stop.is_set():
            try:
                terminal = await Terminal.connect(self.port, phone)
                try:
                    await self._session(terminal, phone)
                finally:
                    await terminal.close()
            except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
                pass
            if not self._stop.is_set():
                self.reconnects += 1
                await asyncio.sleep(0.2)

    async def _session(self, terminal: Terminal, phone: str) -> None:
        from protocols.jt808 import Authenticate

        await terminal.send(Authenticate(auth_code=self.codes[phone]))
        answer = await terminal.receive(10)
        if answer.body.result != 0:
            raise ConnectionError(f"authentication refused: {answer}")
        outstanding: dict[int, float] = {}
        record = self.record
        period = 1.0 / self.rate
        reader = asyncio.ensure_future(self._acks(terminal, phone, outstanding))
        try:
            next_send = time.monotonic()
            while not self._stop.is_set() and not reader.done():
                now = time.monotonic()
                for serial, sent in list(outstanding.items()):
                    if now - sent > self.give_up:
                        del outstanding[serial]
                        record.unanswered += 1
                if len(outstanding) < self.window and now >= next_send:
                    serial = self.next_serial[phone]
                    self.next_serial[phone] = serial + 1
                    outstanding[serial] = time.monotonic()
                    await terminal.send(report(serial), serial=serial)
                    next_send += period
                    if next_send < now - 1:
                        next_send = now
                await asyncio.sleep(min(period, 0.01))
            drain_until = time.monotonic() + self.give_up  # stopping: the last acks may come
            while outstanding and not reader.done() and time.monotonic() < drain_until:
                await asyncio.sleep(0.01)
            if reader.done():
                reader.result()  # the connection's end, as an exception
        finally:
            reader.cancel()
            record.unanswered += len(outstanding)

    async def _acks(self, terminal: Terminal, phone: str, outstanding: dict[int, float]) -> None:
        record = self.record
        while True:
            message = await terminal.receive(3600)
            if message.msg_id != 0x8001 or message.body.reply_id != 0x0200:
                continue
            serial = message.body.reply_serial
            sent = outstanding.pop(serial, None)
            if message.body.result != 0:
                record.refused += 1
                continue
            now = time.monotonic()
            latency = now - sent if sent is not None else float("nan")
            record.acked[(phone, serial)] = latency
            if sent is not None:
                record.acks.append((now, latency))


async def streaming(serve: Serve, terminals: int, warm: float = 1.0, **options: float) -> Fleet:
    """Once ``serve`` is ready: ``terminals`` registered and streaming for ``warm`` seconds."""
    await serve.ready()
    fleet = Fleet(serve.port, terminals, **options)  # type: ignore[arg-type]
    await fleet.login()
    fleet.start()
    await asyncio.sleep(warm)
    return fleet


async def stored(url: str) -> dict[tuple[str, int], int]:
    """(phone, serial) → rows stored."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT v.phone, p.serial, count(*) AS n FROM positions p "
            "JOIN vehicles v ON v.id = p.vehicle_id GROUP BY v.phone, p.serial"
        )
    finally:
        await conn.close()
    return {(r["phone"], r["serial"]): r["n"] for r in rows}


async def check_exactly_once(url: str, record: Record) -> dict[tuple[str, int], int]:
    """Every acknowledged position stored once; nothing stored twice."""
    rows = await stored(url)
    lost = [key for key in record.acked if key not in rows]
    twice = {key: n for key, n in rows.items() if n != 1}
    assert not lost, f"{len(lost)} of {len(record.acked)} acknowledged positions lost: {lost[:5]}"
    assert not twice, f"stored more than once: {list(twice.items())[:5]}"
    return rows


def spool_files(data: Path) -> Iterator[Path]:
    return (p for p in (data / "spool").rglob("*.spool") if p.stat().st_size)


async def wait_until(predicate: object, timeout: float, what: str, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(step)
    raise AssertionError(f"not within {timeout} s: {what}")


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
