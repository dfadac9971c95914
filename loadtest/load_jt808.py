"""Load generator for the JT/T 808 ingest server (a script, not a test).

    python -m loadtest.load_jt808 --port 7611 --terminals 1000 --duration 60
    python -m loadtest.load_jt808 --port 7611 --rate 5000 --duration 60        # latency at 5k/s
    python -m loadtest.load_jt808 --port 7611 --count 100000 --verify-db postgresql:///fleetwatch

N terminals connect (loopback only, several 127.0.0.x source addresses bound with
IP_BIND_ADDRESS_NO_PORT, connects rate-limited), register (0x0100), authenticate (0x0102),
then send 0x0200 reports (some as 0x0704 batches) as fast as the acks allow with a window of
un-acked reports per connection, or paced at ``--rate`` positions/s (token bucket). At the end
they wait for outstanding acks, log out (0x0003) and close. Prints positions sent/acked/failed,
throughput (run and per 10 s), ack latency percentiles, reconnects, decode errors, and the CPU
time of the generator, the server (``--server-pid``) and the postgres processes
(``--postgres-pid`` restricts that to one cluster). ``--verify-db`` counts the stored rows
afterwards. ``--procs`` splits the terminals over worker processes, each with its own asyncio
loop; ``--cpus`` pins them (keep the generator and the server on different cores: on loopback,
wake-up affinity otherwise puts both on one core and they take turns).
Protocol state per terminal lives in :mod:`loadtest.terminal`; a fake server that acks at once
in :mod:`loadtest.ack_server`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import multiprocessing as mp
import os
import queue
import resource
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from loadtest.terminal import (
    MAX_BATCH,
    MSG_AUTH,
    MSG_BATCH,
    MSG_HEARTBEAT,
    MSG_LOCATION,
    MSG_LOGOUT,
    MSG_PLATFORM_ACK,
    MSG_REGISTER_REPLY,
    FixClock,
    SimTerminal,
    self_check,
)
from protocols.jt808 import V2013, V2019

MAX_DURATION = 3600.0
INTERVAL_NS = 10_000_000_000  # throughput is also reported per 10 s
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux value
_LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")

# Latency histogram: bucket i holds [1.01**i, 1.01**(i+1)) ns, so percentiles are within 1%.
HIST_SCALE = 1 / math.log(1.01)
HIST_SIZE = 2800  # up to ~1000 s
_log = math.log


# -- configuration ------------------------------------------------------------------------


def loopback_address(host: str) -> str:
    """The IP literal to connect to; refuses anything that is not 127.0.0.0/8 or ::1 (a rule
    of our workplace: load tests never leave the machine). ``localhost`` must resolve to
    loopback addresses only."""
    try:
        addrs = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ValueError(f"host {host!r} does not resolve: {exc}") from None
        addrs = {ipaddress.ip_address(info[4][0]) for info in infos}
    for addr in addrs:
        ok = addr in _LOOPBACK_V4 if addr.version == 4 else addr == ipaddress.ip_address("::1")
        if not ok:
            raise ValueError(f"refusing host {host!r} ({addr}): loopback only (127.0.0.0/8, ::1)")
    return str(min(addrs, key=lambda a: a.version))  # prefer IPv4


def check_db_url(url: str) -> None:
    """The DB for ``--verify-db`` must be local as well: a unix socket or a loopback host."""
    host = urlsplit(url).hostname
    if host and not host.startswith("/"):
        loopback_address(host)


@dataclass(slots=True)
class Config:
    host: str
    port: int
    terminals: int = 1000
    phone_base: int = 14500000000
    first_index: int = 0
    plate_prefix: str = "测A"
    v2019_share: float = 0.0
    window: int = 8
    rate: float = 0.0  # positions/s over all processes; 0 = as fast as the acks allow
    batch_share: float = 0.0
    batch_size: int = 10
    duration: float = 20.0
    count: int = 0  # positions over all terminals; 0 = until the duration ends
    drain_timeout: float = 10.0
    ack_timeout: float = 0.0  # retransmit a report un-acked this long; 0 = never
    connect_rate: float = 2000.0
    connect_concurrency: int = 200
    setup_timeout: float = 120.0
    source_addrs: int = 8
    procs: int = 1
    cpus: tuple[int, ...] = ()  # pin worker k to cpus[k % len(cpus)]
    start: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def phone(self, index: int) -> str:
        return str(self.phone_base + index)

    def phones(self) -> list[str]:
        """The run's phones as the server stores them (no leading zeros), for the DB checks."""
        return [self.phone(self.first_index + k).lstrip("0") for k in range(self.terminals)]

    @classmethod
    def from_args(cls, a: argparse.Namespace, start: datetime) -> Config:
        """The configuration from :func:`add_run_args`' options (checked by
        :func:`check_run_args`); options a generator does not offer keep their defaults."""
        names = {f.name for f in fields(cls)} - {"host", "start", "cpus", "procs"}
        given = {n: getattr(a, n) for n in names if getattr(a, n, None) is not None}
        cpus = tuple(int(c) for c in a.cpus.split(",") if c.strip())
        procs = min(a.procs, a.terminals)
        return cls(host=loopback_address(a.host), start=start, cpus=cpus, procs=procs, **given)

    def is_2019(self, index: int) -> bool:
        share = self.v2019_share
        return int((index + 1) * share) > int(index * share)

    def sources(self) -> list[str | None]:
        if ":" in self.host or self.source_addrs <= 0:
            return [None]
        return [f"127.0.0.{2 + k}" for k in range(min(self.source_addrs, 250))]


# -- statistics ---------------------------------------------------------------------------


@dataclass(slots=True)
class Stats:
    """Counters of one worker; :meth:`merge` adds another worker's."""

    terminals: int = 0
    authenticated: int = 0
    setup_failed: int = 0
    register_refused: int = 0
    auth_refused: int = 0
    connect_errors: int = 0
    disconnects: int = 0
    reconnects: int = 0
    msgs_location: int = 0
    msgs_batch: int = 0
    sent: int = 0  # positions
    acked: int = 0  # positions acked with result 0
    failed: int = 0  # positions acked with another result
    unacked: int = 0  # positions still pending at the end
    retransmits: int = 0
    unexpected_acks: int = 0
    other_msgs: int = 0
    decode_errors: int = 0
    logouts_acked: int = 0
    setup_s: float = 0.0
    send_s: float = 0.0
    drain_s: float = 0.0
    last_ack_s: float = 0.0
    cpu_user_s: float = 0.0  # run phase (go → end of drain)
    cpu_sys_s: float = 0.0
    cpu_setup_s: float = 0.0
    lat_max_ns: int = 0
    fix_steps: int = 0  # most fixes of one terminal (its last fix time is start + this - 1 s)
    heartbeats: int = 0  # 0x0002 sent (lean, --heartbeat)
    heartbeats_acked: int = 0
    connected_end: int = 0  # connections still open when the run ended (lean)
    hist: list[int] = field(default_factory=lambda: [0] * HIST_SIZE)
    ivl_sent: list[int] = field(default_factory=list)
    ivl_acked: list[int] = field(default_factory=list)
    results: dict[int, int] = field(default_factory=dict)

    def merge(self, other: Stats) -> None:
        for f in fields(self):
            name = f.name
            mine, theirs = getattr(self, name), getattr(other, name)
            if name in ("setup_s", "send_s", "drain_s", "last_ack_s", "lat_max_ns", "fix_steps"):
                setattr(self, name, max(mine, theirs))
            elif isinstance(mine, list):
                if len(mine) < len(theirs):
                    mine.extend([0] * (len(theirs) - len(mine)))
                for i, v in enumerate(theirs):
                    mine[i] += v
            elif isinstance(mine, dict):
                for k, v in theirs.items():
                    mine[k] = mine.get(k, 0) + v
            else:
                setattr(self, name, mine + theirs)

    def percentile(self, q: float) -> float:
        """Ack latency in ms at quantile ``q`` (0-1), from the histogram."""
        return hist_percentile(enumerate(self.hist), q, self.lat_max_ns)


def hist_percentile(
    buckets: Iterable[tuple[int, int]], q: float, max_ns: float = math.inf
) -> float:
    """Latency in ms at quantile ``q`` of (bucket, count) pairs in bucket order (the latency
    histogram, or a sparse part of it), at most ``max_ns``; 0 when empty."""
    pairs = [(i, n) for i, n in buckets if n]
    total = sum(n for _, n in pairs)
    if not total:
        return 0.0
    rank = q * total
    seen = 0
    for i, n in pairs:
        seen += n
        if seen >= rank:
            return min(math.exp((i + 0.5) / HIST_SCALE), max_ns) / 1e6
    return min(math.exp((pairs[-1][0] + 0.5) / HIST_SCALE), max_ns) / 1e6


def bump(series: list[int], index: int, n: int) -> None:
    """``series[index] += n``, growing the list as needed."""
    if index >= len(series):
        series.extend([0] * (index + 1 - len(series)))
    series[index] += n


# -- one terminal connection --------------------------------------------------------------


class Conn(asyncio.Protocol):
    """The asyncio side of one simulated terminal (the protocol state is in ``term``)."""

    def __init__(self, worker: Worker, term: SimTerminal, quota: int) -> None:
        self.w = worker
        self.term = term
        self.quota = quota  # positions still to send; -1 = unlimited
        self.transport: asyncio.Transport | None = None
        self.authed: asyncio.Future[bool] | None = None
        self.closed: asyncio.Future[None] | None = None
        self.live = False  # authenticated and allowed to send reports
        self.leaving = False  # logout sent or closing on purpose
        self.queued = False  # in the pacer's ready queue
        self.refused = False  # the platform refused the registration
        self.reconnecting = False
        self.reregistered = False  # registered on this connection (after a refused auth code)
        self.batched = 0
        self.total = 0

    # asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.reregistered = not self.term.auth_code
        term = self.term
        transport.write(term.auth_frame() if term.auth_code else term.register_frame())

    def connection_lost(self, exc: Exception | None) -> None:
        was_live = self.live
        self.transport = None
        self.live = False
        if self.authed is not None and not self.authed.done():
            self.authed.set_result(False)
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
        if was_live and not self.leaving:
            self.w.lost(self)

    def data_received(self, data: bytes) -> None:
        w = self.w
        now = time.monotonic_ns()
        pending = self.term.pending
        st = w.stats
        got = 0
        for r in self.term.feed(data):
            if r.msg_id == MSG_PLATFORM_ACK:
                rid = r.reply_id
                if rid in (MSG_LOCATION, MSG_BATCH):
                    p = pending.pop(r.reply_serial, None)
                    if p is None or p.msg_id != rid:
                        st.unexpected_acks += 1
                        continue
                    got += 1
                    lat = now - p.sent_ns
                    if lat > st.lat_max_ns:
                        st.lat_max_ns = lat
                    i = int(_log(lat if lat > 1 else 1) * HIST_SCALE)
                    st.hist[i if i < HIST_SIZE else HIST_SIZE - 1] += 1
                    if r.result == 0:
                        st.acked += p.positions
                        i = (now - w.go_ns) // INTERVAL_NS
                        acked = st.ivl_acked
                        if i < len(acked):
                            acked[i] += p.positions
                        else:
                            bump(acked, i, p.positions)
                    else:
                        st.failed += p.positions
                        st.results[r.result] = st.results.get(r.result, 0) + p.positions
                elif rid == MSG_AUTH:
                    self._auth_reply(r.result)
                elif rid == MSG_LOGOUT:
                    st.logouts_acked += 1
                    if self.transport is not None:
                        self.transport.close()
                elif rid != MSG_HEARTBEAT:
                    st.unexpected_acks += 1
            elif r.msg_id == MSG_REGISTER_REPLY:
                self._register_reply(r.result, r.auth_code)
            else:  # a platform command: answer it, as a terminal must
                st.other_msgs += 1
                if self.transport is not None:
                    self.transport.write(self.term.general_response_frame(r.serial, r.msg_id))
        if got:
            w.in_flight -= got
            w.last_ack_ns = now
            if self.live and w.sending:
                if w.paced:
                    if not self.queued and len(pending) < w.window and self.quota:
                        self.queued = True
                        w.ready.append(self)
                else:
                    self.fill(now)

    # session -------------------------------------------------------------------------------

    def _register_reply(self, result: int, code: str) -> None:
        if result != 0 or not code:
            self.w.stats.register_refused += 1
            self.refused = self.leaving = True
            if self.authed is not None and not self.authed.done():
                self.authed.set_result(False)
            if self.transport is not None:
                self.transport.close()
            return
        self.term.auth_code = code
        if self.transport is not None:
            self.transport.write(self.term.auth_frame())

    def _auth_reply(self, result: int) -> None:
        if result != 0:
            self.w.stats.auth_refused += 1
            if not self.reregistered and self.transport is not None:
                self.reregistered = True  # the code went stale: register again, once
                self.term.auth_code = ""
                self.transport.write(self.term.register_frame())
                return
            if self.authed is not None and not self.authed.done():
                self.authed.set_result(False)
            return
        if self.authed is not None and not self.authed.done():
            self.authed.set_result(True)

    # reports -------------------------------------------------------------------------------

    def take_frames(self, now: int, n: int) -> tuple[list[bytes], int]:
        """Build up to ``n`` report frames within the quota: 0x0200s, and 0x0704 batches
        often enough to keep ``--batch-share``. Returns the frames and the positions in them."""
        w = self.w
        term = self.term
        quota = self.quota
        size = w.batch_size
        frames: list[bytes] = []
        positions = batches = 0
        for _ in range(n):
            if not quota:
                break
            k = size if quota < 0 or quota >= size else quota
            if k > 1 and self.batched < w.batch_share * (self.total + k):
                frames.append(term.batch_frame(k, now))
                self.batched += k
                batches += 1
            else:
                k = 1
                frames.append(term.location_frame(now))
            self.total += k
            positions += k
            if quota > 0:
                quota -= k
        self.quota = quota
        st = w.stats
        st.msgs_batch += batches
        st.msgs_location += len(frames) - batches
        st.sent += positions
        bump(st.ivl_sent, (now - w.go_ns) // INTERVAL_NS, positions)
        w.in_flight += len(frames)
        return frames, positions

    def fill(self, now: int) -> None:
        """Unpaced mode: top the window up and write the new frames in one call."""
        room = self.w.window - len(self.term.pending)
        if room <= 0 or not self.quota or self.transport is None:
            return
        frames, _ = self.take_frames(now, room)
        if frames:
            self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def resend_pending(self, now: int) -> None:
        """After a reconnect: retransmit the un-acked reports (same serial and fix time, so
        the server's dedupe keeps each position once)."""
        term = self.term
        if not term.pending or self.transport is None:
            return
        old = sorted(term.pending.values(), key=lambda p: p.sent_ns)
        for p in old:
            term.pending[p.serial] = p._replace(sent_ns=now)
        self.w.stats.retransmits += len(old)
        self.transport.write(b"".join(p.frame for p in old))


# -- one worker process -------------------------------------------------------------------


class Worker:
    """Terminals ``first .. first + count - 1`` on one asyncio loop."""

    def __init__(
        self, cfg: Config, first: int, count: int, quota: int, sync: Callable[[str], None]
    ) -> None:
        self.cfg = cfg
        self.sync = sync
        self.stats = Stats(terminals=count)
        self.window = cfg.window
        self.batch_share = cfg.batch_share
        self.batch_size = min(cfg.batch_size, MAX_BATCH) if cfg.batch_share > 0 else 1
        self.paced = cfg.rate > 0
        self.sending = False
        self.running = False  # reconnect lost terminals
        self.in_flight = 0  # frames sent and not acked
        self.go_ns = self.last_ack_ns = time.monotonic_ns()
        self.ready: deque[Conn] = deque()
        self.sources = cfg.sources()
        self.family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        clock = FixClock(cfg.start)
        self.conns: list[Conn] = []
        for k in range(count):
            index = cfg.first_index + first + k
            term = SimTerminal(
                index,
                cfg.phone(index),
                clock,
                version=V2019 if cfg.is_2019(index) else V2013,
                plate=f"{cfg.plate_prefix}{index:05d}",
            )
            share = -1 if quota < 0 else quota // count + (1 if k < quota % count else 0)
            self.conns.append(Conn(self, term, share))
        self._gate: asyncio.Semaphore | None = None
        self._next_connect = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()

    # connecting ----------------------------------------------------------------------------

    async def _connect_slot(self) -> None:
        """Connect rate limit (per process: ``--connect-rate`` / procs)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self._next_connect)
        self._next_connect = slot + self.cfg.procs / self.cfg.connect_rate
        if slot > now:
            await asyncio.sleep(slot - now)

    async def open(self, conn: Conn, attempts: int = 5) -> bool:
        """Connect, register if needed, authenticate. A bounded number of handshakes run at a
        time, so the server's accept backlog is never overrun."""
        assert self._gate is not None
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        source = self.sources[conn.term.index % len(self.sources)]
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(min(0.5 * attempt, 5.0))
            async with self._gate:
                await self._connect_slot()
                sock = None
                try:
                    sock = socket.socket(self.family, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    if source is not None:
                        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                        sock.bind((source, 0))
                    await loop.sock_connect(sock, (cfg.host, cfg.port))
                    conn.authed = loop.create_future()
                    conn.closed = loop.create_future()
                    conn.leaving = False
                    await loop.create_connection(lambda: conn, sock=sock)
                except OSError:
                    if sock is not None:
                        sock.close()
                    self.stats.connect_errors += 1
                    continue
                except BaseException:  # cancelled (setup timeout): do not leak the socket
                    if sock is not None and conn.transport is None:
                        sock.close()
                    raise
                try:
                    ok = await asyncio.wait_for(asyncio.shield(conn.authed), 10.0)
                except TimeoutError:
                    ok = False
            if ok:
                return True
            if conn.transport is not None:
                conn.leaving = True
                conn.transport.close()
            if conn.refused:
                return False  # the platform refused the registration: retrying will not help
        return False

    def lost(self, conn: Conn) -> None:
        """A connection dropped without our asking: reconnect while the run lasts."""
        self.stats.disconnects += 1
        if self.running and not conn.reconnecting:
            conn.reconnecting = True
            task = asyncio.ensure_future(self._reconnect(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reconnect(self, conn: Conn) -> None:
        try:
            await self._reconnect_loop(conn)
        finally:
            conn.reconnecting = False

    async def _reconnect_loop(self, conn: Conn) -> None:
        while self.running:
            if await self.open(conn, attempts=1):
                self.stats.reconnects += 1
                conn.live = True
                now = time.monotonic_ns()
                conn.resend_pending(now)
                if self.sending:
                    if self.paced:
                        if not conn.queued:
                            conn.queued = True
                            self.ready.append(conn)
                    else:
                        conn.fill(now)
                return
            await asyncio.sleep(1.0)

    # phases ---------------------------------------------------------------------------------

    async def run(self) -> Stats:
        loop = asyncio.get_running_loop()
        cfg, st = self.cfg, self.stats
        self._gate = asyncio.Semaphore(max(1, cfg.connect_concurrency // cfg.procs))
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        opens = [asyncio.ensure_future(self.open(c)) for c in self.conns]
        done, _ = await asyncio.wait(opens, timeout=cfg.setup_timeout) if opens else ((), ())
        for conn, task in zip(self.conns, opens, strict=True):
            if task in done and not task.cancelled() and task.exception() is None and task.result():
                conn.live = True
                st.authenticated += 1
            else:
                task.cancel()
                conn.leaving = True
                if conn.transport is not None:
                    conn.transport.close()
        st.setup_failed = st.terminals - st.authenticated
        st.setup_s = time.monotonic() - t0

        await loop.run_in_executor(None, self.sync, "go")
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        st.cpu_setup_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        self.go_ns = go = time.monotonic_ns()
        self.sending = self.running = True
        live = [c for c in self.conns if c.live]
        sweeper = asyncio.ensure_future(self._sweep()) if cfg.ack_timeout > 0 else None
        if self.paced:
            for c in live:
                c.queued = True
                self.ready.append(c)
            pacer = asyncio.ensure_future(self._pace(cfg.rate / cfg.procs))
        else:
            pacer = None
            for c in live:
                c.fill(go)
        deadline = go + int(cfg.duration * 1e9) if live else go
        while time.monotonic_ns() < deadline:
            if cfg.count and self.in_flight == 0 and not any(c.quota for c in live):
                break
            await asyncio.sleep(0.02)
        self.sending = False
        if pacer is not None:
            pacer.cancel()
        end_send = time.monotonic_ns()
        st.send_s = (end_send - go) / 1e9
        drain_end = end_send + int(cfg.drain_timeout * 1e9)
        while self.in_flight > 0 and time.monotonic_ns() < drain_end:
            await asyncio.sleep(0.005)
        self.running = False
        if sweeper is not None:
            sweeper.cancel()
        st.drain_s = (time.monotonic_ns() - end_send) / 1e9
        cpu2 = resource.getrusage(resource.RUSAGE_SELF)
        st.cpu_user_s = cpu2.ru_utime - cpu1.ru_utime
        st.cpu_sys_s = cpu2.ru_stime - cpu1.ru_stime
        st.last_ack_s = max(0.0, (self.last_ack_ns - go) / 1e9)
        await loop.run_in_executor(None, self.sync, "end")

        await self._logout()
        for conn in self.conns:
            st.unacked += sum(p.positions for p in conn.term.pending.values())
            st.decode_errors += conn.term.decode_errors
            st.fix_steps = max(st.fix_steps, conn.term.fix_step)
        return st

    async def _logout(self, timeout: float = 5.0) -> None:
        closing = []
        for conn in self.conns:
            conn.leaving = True
            if conn.transport is not None and conn.closed is not None:
                conn.transport.write(conn.term.logout_frame())
                closing.append(conn.closed)
        if closing:
            await asyncio.wait(closing, timeout=timeout)
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)

    async def _pace(self, rate: float) -> None:
        """Token bucket over this process's terminals: round-robin over those whose window
        has room. At most 50 ms of tokens are kept, so a stall is not followed by a burst."""
        loop = asyncio.get_running_loop()
        ready = self.ready
        tokens = 0.0
        cap = max(1.0, rate * 0.05)
        last = loop.time()
        window = self.window
        while True:
            await asyncio.sleep(0.001)
            now = loop.time()
            tokens = min(cap, tokens + (now - last) * rate)
            last = now
            if tokens < 1 or not ready:
                continue
            now_ns = time.monotonic_ns()
            while tokens >= 1 and ready:
                conn = ready.popleft()
                conn.queued = False
                if not conn.live or conn.transport is None or not conn.quota:
                    continue
                pending = conn.term.pending
                if len(pending) >= window:
                    continue
                frames, positions = conn.take_frames(now_ns, 1)
                if frames:
                    conn.transport.write(frames[0])
                    tokens -= positions
                if len(pending) < window and conn.quota:
                    conn.queued = True
                    ready.append(conn)

    async def _sweep(self) -> None:
        """``--ack-timeout``: retransmit reports left un-acked too long (same frame bytes)."""
        timeout = int(self.cfg.ack_timeout * 1e9)
        while True:
            await asyncio.sleep(min(1.0, self.cfg.ack_timeout / 2))
            now = time.monotonic_ns()
            for conn in self.conns:
                pending = conn.term.pending
                if not pending or conn.transport is None or not conn.live:
                    continue
                late = [p for p in pending.values() if now - p.sent_ns > timeout]
                for p in late:
                    pending[p.serial] = p._replace(sent_ns=now)
                    conn.transport.write(p.frame)
                self.stats.retransmits += len(late)


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if need + 64 > hard:
        raise SystemExit(
            f"{need} connections in one process exceed the open-file limit {hard}: use --procs"
        )


def run_worker(
    cfg: Config, k: int, first: int, count: int, quota: int, sync: Callable[[str], None]
) -> Stats:
    """Worker ``k``: terminals ``first ..`` on a fresh asyncio loop in this process."""
    raise_nofile(count)
    if cfg.cpus:
        os.sched_setaffinity(0, {cfg.cpus[k % len(cfg.cpus)]})
    return asyncio.run(Worker(cfg, first, count, quota, sync).run())


def _worker_main(
    cfg: Config, k: int, first: int, count: int, quota: int, barrier: Any, out: Any, wait: float
) -> None:
    def sync(_: str) -> None:
        barrier.wait(wait)

    try:
        stats = run_worker(cfg, k, first, count, quota, sync)
        out.put(("ok", first, asdict(stats)))
    except BaseException as exc:  # report, so the parent does not wait forever
        barrier.abort()
        out.put(("error", first, f"{type(exc).__name__}: {exc}"))
        raise


# -- /proc sampling -----------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_cpu(pid: int) -> tuple[float, int] | None:
    """(user + system CPU seconds, RSS bytes) of a process from /proc/PID/stat, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    parts = data[data.rindex(b")") + 2 :].split()
    return (int(parts[11]) + int(parts[12])) / _TICK, int(parts[21]) * _PAGE


def proc_hwm(pid: int) -> int:
    """Peak RSS (VmHWM) in bytes, or 0."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
            pid = int(data[data.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError):
            break
    return pids


def _is_postgres(pid: int) -> bool:
    """argv[0] of ``pid`` names a postgres program (the postmaster or a ``postgres: ...``)."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return b"postgres" in f.read().split(b"\0", 1)[0]


def with_workers(pids: list[int]) -> list[int]:
    """``pids`` and their descendants that are not postgres: the ingest workers that
    ``serve --workers N`` spawns count as the server; its embedded cluster does not."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    data = f.read()
                parents[int(name)] = int(data[data.rindex(b")") + 2 :].split()[1])
            except (OSError, ValueError):
                continue
    out = list(pids)
    for pid in out:  # grows while it is walked: breadth first
        for child, parent in parents.items():
            if parent == pid and child not in out:
                try:
                    if not _is_postgres(child):
                        out.append(child)
                except OSError:
                    continue
    return out


def postgres_cpu(exclude: set[int], root: int | None = None) -> dict[int, float]:
    """CPU seconds of the postgres processes: those whose command line starts with a postgres
    program (argv[0] contains ``postgres``: the postmaster and its ``postgres: ...`` children),
    so a ``fleetwatch serve --db postgresql://`` or ``--verify-db`` argument does not count.
    With ``root`` (a postmaster pid), only that process and its children."""
    out: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        pid = int(name)
        try:
            if not _is_postgres(pid):
                continue
            if root is not None and pid != root:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    data = f.read()
                if int(data[data.rindex(b")") + 2 :].split()[1]) != root:
                    continue
        except (OSError, ValueError):
            continue
        sample = proc_cpu(pid)
        if sample is not None:
            out[pid] = sample[0]
    return out


class Sampler:
    """Server and postgres CPU at "go" and at "end" (end of the drain)."""

    def __init__(self, server_pids: list[int], postgres_pid: int | None = None) -> None:
        self.server_pids = server_pids
        self.postgres_pid = postgres_pid
        self.samples: dict[str, dict[str, Any]] = {}
        self.workers: set[int] = set()

    def __call__(self, phase: str) -> None:
        exclude = _ancestors() | self.workers | set(self.server_pids)
        self.samples[phase] = {
            "t": time.monotonic(),
            "server": {pid: proc_cpu(pid) for pid in self.server_pids},
            "postgres": postgres_cpu(exclude, self.postgres_pid),
        }

    def report(self) -> dict[str, Any]:
        go, end = self.samples.get("go"), self.samples.get("end")
        if go is None or end is None:
            return {}
        wall = end["t"] - go["t"]
        out: dict[str, Any] = {"wall_s": round(wall, 3), "server": {}}
        for pid in self.server_pids:
            a, b = go["server"].get(pid), end["server"].get(pid)
            if a is None or b is None:
                out["server"][pid] = None
                continue
            out["server"][pid] = {
                "cpu_s": round(b[0] - a[0], 2),
                "rss_mb": round(b[1] / 2**20, 1),
                "rss_peak_mb": round(proc_hwm(pid) / 2**20, 1),
            }
        pg_a, pg_b = go["postgres"], end["postgres"]
        out["postgres"] = {
            "processes": len(pg_b),
            "cpu_s": round(sum(cpu - pg_a.get(pid, 0.0) for pid, cpu in pg_b.items()), 2),
        }
        return out


# -- the run --------------------------------------------------------------------------------


def run(
    cfg: Config, server_pids: list[int], postgres_pid: int | None = None
) -> tuple[Stats, dict[str, Any]]:
    """Run the load over ``cfg.procs`` processes; returns merged stats and /proc samples."""
    sampler = Sampler(server_pids, postgres_pid)
    quota = cfg.count if cfg.count else -1
    procs = max(1, min(cfg.procs, cfg.terminals))
    if procs == 1:
        return run_worker(cfg, 0, 0, cfg.terminals, quota, sampler), sampler.report()

    ctx = mp.get_context("fork")
    wait = cfg.setup_timeout + cfg.duration + cfg.drain_timeout + 60
    barrier = ctx.Barrier(procs + 1)
    out = ctx.Queue()
    children = []
    first = 0
    for k in range(procs):
        count = cfg.terminals // procs + (1 if k < cfg.terminals % procs else 0)
        share = -1 if quota < 0 else quota // procs + (1 if k < quota % procs else 0)
        p = ctx.Process(
            target=_worker_main,
            args=(cfg, k, first, count, share, barrier, out, wait),
            daemon=True,
        )
        p.start()
        children.append(p)
        first += count
    sampler.workers = {p.pid for p in children if p.pid}
    total = Stats()
    errors = []
    try:
        for phase in ("go", "end"):
            barrier.wait(wait)
            sampler(phase)
    except threading.BrokenBarrierError:
        errors.append("a worker failed; see its message below")
    reported = 0
    while reported < len(children):
        try:
            status, first, payload = out.get(timeout=1.0)
        except queue.Empty:
            if any(p.is_alive() for p in children):
                continue
            errors.append(f"{len(children) - reported} worker(s) died without a report")
            break
        reported += 1
        if status == "ok":
            total.merge(Stats(**payload))
        else:
            errors.append(f"worker for terminals from {first}: {payload}")
    for p in children:
        p.join(5)
    if errors:
        raise SystemExit("load run failed: " + "; ".join(errors))
    return total, sampler.report()


# -- verification -------------------------------------------------------------------------


async def start_after_stored(cfg: Config, url: str) -> None:
    """Move ``cfg.start`` past the newest fix already stored for its terminals, so that a
    second run against the same database is not merged by the (vehicle, fix time) dedup."""
    newest = await newest_fix(url, cfg.phones())
    if newest is not None and newest >= cfg.start:
        cfg.start = (newest + timedelta(seconds=1)).astimezone(UTC).replace(microsecond=0)


async def newest_fix(url: str, phones: list[str]) -> datetime | None:
    """Newest stored fix of these terminals' vehicles (a new run starts after it)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(
            "SELECT max(p.fix_time) FROM positions p JOIN vehicles v ON v.id = p.vehicle_id"
            " WHERE v.phone = ANY($1::text[])",
            phones,
        )
    finally:
        await conn.close()


async def verify_db(url: str, phones: list[str], since: datetime) -> dict[str, int]:
    """Rows stored for the run's vehicles since ``since`` and (vehicle, fix, serial) duplicates."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            """SELECT count(*) AS stored,
                      count(*) - count(DISTINCT (p.vehicle_id, p.fix_time, p.serial)) AS duplicates,
                      count(DISTINCT p.vehicle_id) AS vehicles
                 FROM positions p JOIN vehicles v ON v.id = p.vehicle_id
                WHERE v.phone = ANY($1::text[]) AND p.fix_time >= $2""",
            phones,
            since,
        )
        known = await conn.fetchval(
            "SELECT count(*) FROM vehicles WHERE phone = ANY($1::text[])", phones
        )
    finally:
        await conn.close()
    return {**dict(row), "vehicles_known": known}


# -- report ---------------------------------------------------------------------------------


def summary(
    cfg: Config, st: Stats, procs: dict[str, Any], db: dict[str, Any] | None
) -> dict[str, Any]:
    run_s = max(st.send_s, st.last_ack_s)
    cpu = st.cpu_user_s + st.cpu_sys_s
    out: dict[str, Any] = {
        "target": f"{cfg.host}:{cfg.port}",
        "procs": cfg.procs,
        "terminals": st.terminals,
        "authenticated": st.authenticated,
        "setup_failed": st.setup_failed,
        "setup_s": round(st.setup_s, 3),
        "mode": f"paced {cfg.rate:g}/s" if cfg.rate > 0 else f"window {cfg.window}",
        "send_s": round(st.send_s, 3),
        "drain_s": round(st.drain_s, 3),
        "sent": st.sent,
        "acked": st.acked,
        "failed": st.failed,
        "failed_by_result": {str(k): v for k, v in sorted(st.results.items())},
        "unacked": st.unacked,
        "msgs_0200": st.msgs_location,
        "msgs_0704": st.msgs_batch,
        "throughput_per_s": round(st.acked / run_s, 1) if run_s else 0.0,
        "sent_per_s": round(st.sent / st.send_s, 1) if st.send_s else 0.0,
        # a tail shorter than 1 s is left out (too short for a rate; it is in the totals)
        "per_10s_acked_per_s": [
            round(n / min(10.0, run_s - 10 * i), 1)
            for i, n in enumerate(st.ivl_acked)
            if run_s - 10 * i >= 1.0
        ],
        "latency_ms": {
            "p50": round(st.percentile(0.50), 3),
            "p90": round(st.percentile(0.90), 3),
            "p99": round(st.percentile(0.99), 3),
            "max": round(st.lat_max_ns / 1e6, 3),
        },
        "reconnects": st.reconnects,
        "disconnects": st.disconnects,
        "connect_errors": st.connect_errors,
        "register_refused": st.register_refused,
        "auth_refused": st.auth_refused,
        "decode_errors": st.decode_errors,
        "unexpected_acks": st.unexpected_acks,
        "retransmits": st.retransmits,
        "platform_commands": st.other_msgs,
        "logouts_acked": st.logouts_acked,
        "loadgen_cpu": {
            "user_s": round(st.cpu_user_s, 2),
            "sys_s": round(st.cpu_sys_s, 2),
            "setup_s": round(st.cpu_setup_s, 2),
            "us_per_position": round(cpu / st.acked * 1e6, 2) if st.acked else None,
        },
        "fix_time_start": cfg.start.isoformat(),
        # the next run against the same database should start after this (--start-time)
        "fix_time_end": (cfg.start + timedelta(seconds=max(0, st.fix_steps - 1))).isoformat(),
    }
    if procs:
        out["procs_sampled"] = procs
    if db is not None:
        out["db"] = db
    return out


def print_report(s: dict[str, Any]) -> None:
    lat = s["latency_ms"]
    cpu = s["loadgen_cpu"]
    lines = [
        f"target {s['target']}: {s['terminals']} terminals, {s['authenticated']} authenticated"
        f" ({s['setup_failed']} failed) in {s['setup_s']:.2f} s; {s['procs']} proc(s), {s['mode']}",
        f"positions: sent {s['sent']:,}  acked {s['acked']:,}  failed {s['failed']:,}"
        f"  unacked {s['unacked']:,}   (0x0200 frames {s['msgs_0200']:,},"
        f" 0x0704 frames {s['msgs_0704']:,})",
        f"run: {s['send_s']:.2f} s sending + {s['drain_s']:.3f} s drain;"
        f" throughput {s['throughput_per_s']:,.0f} positions/s acked"
        f" ({s['sent_per_s']:,.0f}/s sent)",
        "per 10 s (acked/s): " + (", ".join(f"{n:,.0f}" for n in s["per_10s_acked_per_s"]) or "-"),
        f"ack latency ms: p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}"
        f"  max {lat['max']:.2f}",
        f"errors: decode {s['decode_errors']}, reconnects {s['reconnects']}"
        f" (disconnects {s['disconnects']}), connect errors {s['connect_errors']},"
        f" unexpected acks {s['unexpected_acks']}, retransmits {s['retransmits']},"
        f" registrations refused {s['register_refused']}, auth refused {s['auth_refused']}",
    ]
    if s["failed_by_result"]:
        lines.append(f"failed by result code: {s['failed_by_result']}")
    lines.append(
        f"fix times {s['fix_time_start']} .. {s['fix_time_end']} (1 s steps; a later run against"
        " the same database must start after the end: --start-time, or --verify-db does it)"
    )
    wall = s.get("procs_sampled", {}).get("wall_s") or (s["send_s"] + s["drain_s"])
    gen = cpu["user_s"] + cpu["sys_s"]
    per = f", {cpu['us_per_position']} µs/position" if cpu["us_per_position"] else ""
    lines.append(
        f"cpu over the run ({wall:.2f} s wall): load generator {gen:.2f} s"
        f" (user {cpu['user_s']:.2f}, sys {cpu['sys_s']:.2f}; {gen / wall:.0%} of a core{per};"
        f" setup {cpu['setup_s']:.2f} s)"
        if wall
        else "cpu: run too short to measure"
    )
    sampled = s.get("procs_sampled")
    if sampled:
        for pid, v in sampled["server"].items():
            if v is None:
                lines.append(f"  server pid {pid}: not found in /proc")
            else:
                lines.append(
                    f"  server pid {pid}: {v['cpu_s']:.2f} s ({v['cpu_s'] / wall:.0%} of a core),"
                    f" rss {v['rss_mb']} MB (peak {v['rss_peak_mb']} MB)"
                )
        pg = sampled["postgres"]
        lines.append(
            f"  postgres ({pg['processes']} processes): {pg['cpu_s']:.2f} s"
            f" ({pg['cpu_s'] / wall:.0%} of a core)"
        )
    db = s.get("db")
    if db is not None:
        verdict = (
            "stored exactly once"
            if db["stored"] == s["acked"] and db["duplicates"] == 0
            else "NOT verified: stored rows differ from acked positions"
        )
        lines.append(
            f"db: {db['stored']:,} rows for {db['vehicles']} vehicles since"
            f" {s['fix_time_start']}, {db['duplicates']} duplicates, acked {s['acked']:,}"
            f" → {verdict}"
        )
    print("\n".join(lines), flush=True)


# -- command line ---------------------------------------------------------------------------


def add_run_args(p: argparse.ArgumentParser, *, port_required: bool = True) -> None:
    """The options every generator of ours shares (load_jt808, lean, ``fleetwatch loadtest``);
    a generator changes a default with ``p.set_defaults`` and checks them with
    :func:`check_run_args`, then builds its :class:`Config` with :meth:`Config.from_args`."""
    add = p.add_argument
    add("--host", default="127.0.0.1", help="loopback only (127.0.0.0/8 or ::1)")
    add("--port", type=int, required=port_required)
    add("--terminals", type=int, default=1000)
    add("--phone-base", type=int, default=14500000000, help="phone of terminal 0")
    add("--plate-prefix", default="测A", help="plates are PREFIX + 5-digit index")
    add("--v2019-share", type=float, default=0.0, help="fraction of 2019-layout terminals")
    add("--window", type=int, default=8, help="un-acked reports per connection")
    add("--rate", type=float, default=0.0, help="positions/s in total (0: unpaced)")
    add("--duration", type=float, default=None, help=f"seconds (default 20, ≤ {MAX_DURATION:g})")
    add("--drain-timeout", type=float, default=10.0, help="wait for acks at the end, s")
    add("--setup-timeout", type=float, default=120.0)
    add("--connect-concurrency", type=int, default=200, help="handshakes in flight")
    add("--source-addrs", type=int, default=8, help="127.0.0.2.. source addresses")
    add("--procs", type=int, default=1, help="processes (terminals split over them)")
    add("--cpus", default="", help="pin process k to CPU k mod this list, e.g. 0 or 0,1")
    add("--start-time", default=None, help="first fix time, ISO")
    add("--server-pid", type=int, action="append", default=[],
        help="repeatable; its non-postgres children (serve --workers) count too")  # fmt: skip
    add("--postgres-pid", type=int, help="postmaster pid: count only its cluster's processes")
    add("--verify-db", metavar="URL", help="count stored rows afterwards (asyncpg)")
    add("--json", action="store_true", help="also print the summary as one JSON line")


def check_run_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """``p.error`` (exit 2) for a shared option out of range; fills ``a.duration``."""
    try:
        loopback_address(a.host)
        if a.verify_db:
            check_db_url(a.verify_db)
    except ValueError as exc:
        p.error(str(exc))
    a.duration = MAX_DURATION if a.duration is None and getattr(a, "count", 0) else a.duration
    a.duration = 20.0 if a.duration is None else a.duration
    if not 0 < a.duration <= MAX_DURATION:
        p.error(f"--duration must be in (0, {MAX_DURATION:g}]")
    if min(a.terminals, a.window, a.procs, a.connect_concurrency) < 1 or a.rate < 0:
        p.error("--terminals, --window, --procs, --connect-concurrency must be ≥ 1, --rate ≥ 0")
    if not 0 <= a.v2019_share <= 1:
        p.error("--v2019-share is a fraction between 0 and 1")
    if not 0 <= a.drain_timeout <= 600:
        p.error("--drain-timeout must be in [0, 600]")
    try:
        cpus = {int(c) for c in a.cpus.split(",") if c.strip()}
    except ValueError:
        p.error("--cpus is a comma-separated list of CPU numbers")
    if cpus - os.sched_getaffinity(0):
        p.error(f"--cpus: this process may only use CPUs {sorted(os.sched_getaffinity(0))}")


def start_time(a: argparse.Namespace, default: datetime) -> datetime:
    """``--start-time`` (naive means UTC), else ``default``."""
    if not a.start_time:
        return default
    start = datetime.fromisoformat(a.start_time)
    return start if start.tzinfo else start.replace(tzinfo=UTC)


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_args(p)
    p.add_argument("--first-index", type=int, default=0, help="index of the first terminal")
    p.add_argument("--batch-share", type=float, default=0.0, help="positions sent in 0x0704")
    p.add_argument("--batch-size", type=int, default=10, help=f"reports per 0x0704 (≤{MAX_BATCH})")
    p.add_argument("--count", type=int, default=0, help="positions in total (then stop)")
    p.add_argument("--ack-timeout", type=float, default=0.0, help="retransmit after (0: never)")
    p.add_argument("--connect-rate", type=float, default=2000.0, help="new connections/s")
    a = p.parse_args(argv)
    check_run_args(p, a)
    if a.count < 0 or not 0 <= a.batch_share <= 1:
        p.error("--count must be ≥ 0, --batch-share a fraction between 0 and 1")
    if not 1 <= a.batch_size <= MAX_BATCH:
        p.error(f"--batch-size must be 1..{MAX_BATCH}")
    if a.connect_rate <= 0:
        p.error("--connect-rate must be > 0")
    return Config.from_args(a, start_time(a, datetime.now(UTC).replace(microsecond=0))), a


def main(argv: list[str] | None = None) -> int:
    cfg, a = parse_args(argv)
    self_check()  # the packed frames must match the codec
    phones = cfg.phones()
    if a.verify_db and not a.start_time:
        asyncio.run(start_after_stored(cfg, a.verify_db))
    raise_nofile(0)
    try:
        stats, sampled = run(cfg, with_workers(a.server_pid), a.postgres_pid)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    db = asyncio.run(verify_db(a.verify_db, phones, cfg.start)) if a.verify_db else None
    s = summary(cfg, stats, sampled, db)
    print_report(s)
    if a.json:
        print(json.dumps({"load_jt808": s}, ensure_ascii=False, default=str), flush=True)
    ok = stats.authenticated > 0 and stats.acked > 0
    if db is not None:
        ok = ok and db["stored"] == stats.acked and db["duplicates"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
