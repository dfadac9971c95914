"""Lean load generator for the JT/T 808 ingest server (a script, not a test).

    python -m loadtest.lean --port 17808 --terminals 2000 --rate 10000 --duration 60 \\
        --server-pid PID --verify-db postgresql:///fleetwatch?host=/tmp/...

Why a second generator: :mod:`loadtest.load_jt808` (asyncio, a Python object per report)
costs 50-62 µs of CPU per position, so on a 2-core machine it takes the CPU the server needs
and the server looks slower than it is. This one aims at ≤ 10 µs per position:

* plain non-blocking sockets and one ``epoll`` per process (``--procs`` splits the terminals
  over processes, several 127.0.0.x source addresses as in load_jt808);
* registration and authentication use :class:`loadtest.terminal.SimTerminal` (the codec); after
  that each terminal's 0x0200 reports come from a few precomputed frames
  (:class:`ReportTemplate`, consecutive fixes of its route, played back and forth) by patching
  only the serial, the BCD fix time (one second per report, so the server's (vehicle, fix time)
  dedup never merges two) and the check code (XOR, patched incrementally); when a patched byte
  would need escaping the full framing (:func:`protocols.jt808.framing.wrap`) builds the frame;
* writes batched: ``--burst`` frames per ``send()`` per socket per tick; reads batched, and
  acks (0x8001) found with a fixed-size struct scan (the codec's splitter only when the bytes
  are anything else), matched by serial for the ack latency;
* paced at ``--rate`` positions/s overall (token bucket per process, ticks of ``--tick`` ms),
  or with ``--rate 0`` as fast as a window of ``--window`` un-acked reports per connection allows.

Reports (through load_jt808's summary): sent, acked, acked/s per 10 s, ack latency p50/p90/p99,
the generator's own CPU µs per position, the server's CPU and RSS (``--server-pid``, its
non-postgres children too) and PostgreSQL's, and with ``--verify-db`` the stored rows (counted,
then counted again after ``--recount`` seconds: spooled rows are replayed into the database).
No reconnects: a connection that drops is counted and its un-acked reports stay un-acked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import multiprocessing as mp
import os
import queue
import resource
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from math import log
from typing import Any

from loadtest.load_jt808 import (
    HIST_SCALE,
    HIST_SIZE,
    INTERVAL_NS,
    IP_BIND_ADDRESS_NO_PORT,
    Config,
    Sampler,
    Stats,
    add_run_args,
    bump,
    check_run_args,
    print_report,
    raise_nofile,
    start_after_stored,
    start_time,
    summary,
    verify_db,
    with_workers,
)
from loadtest.terminal import (
    MSG_AUTH,
    MSG_HEARTBEAT,
    MSG_LOCATION,
    MSG_PLATFORM_ACK,
    MSG_REGISTER_REPLY,
    FixClock,
    SimTerminal,
)
from protocols.jt808 import V2013, V2019, FrameSplitter, encode_frame, unescape
from protocols.jt808.framing import wrap
from protocols.jt808.terminal import Heartbeat

_FLAG = b"\x7e"
#: 2-byte big-endian serials; None where a byte would need escaping (0x7d, 0x7e).
_SERIAL: list[bytes | None] = [
    None if (s >> 8) in (0x7D, 0x7E) or (s & 0xFF) in (0x7D, 0x7E) else s.to_bytes(2, "big")
    for s in range(65536)
]
#: check code + closing flag; None where the check code needs escaping.
_CS_END: list[bytes | None] = [None if c in (0x7D, 0x7E) else bytes((c, 0x7E)) for c in range(256)]
#: 0x8001 on the wire, unescaped (fast path): msg id, reply serial, reply id, result.
_ACK_2013 = struct.Struct(">xH2x6x2xHHB2x")  # 20 bytes
_ACK_2019 = struct.Struct(">xH2x1x10x2xHHB2x")  # 25 bytes


class ReportTemplate:
    """One 0x0200 frame with everything fixed except the serial, the fix time and the check
    code. The constant parts are kept escaped for the wire; the BCD time never needs escaping
    (its nibbles are 0-9), the serial and the check code sometimes do: then :meth:`frame`
    falls back to the full framing of the raw payload (counted in :attr:`fallbacks`)."""

    __slots__ = ("_mid", "_pre", "_raw", "_tail", "_x0", "fallbacks")

    def __init__(self, frame: bytes) -> None:
        payload, clean = unescape(frame[1:-1])
        if not clean or frame[:1] != _FLAG or frame[-1:] != _FLAG:
            raise ValueError("not a complete, well-escaped frame")
        msg_id, attr = struct.unpack_from(">HH", payload)
        if msg_id != MSG_LOCATION or attr & 0x2000:
            raise ValueError(f"template must be a single 0x0200 frame, not {msg_id:#06x}")
        serial_at = (17 if attr & 0x4000 else 12) - 2
        time_at = serial_at + 2 + 22  # alarm, status, lat, lon, altitude, speed, heading
        if len(payload) < time_at + 6 + 1:
            raise ValueError("0x0200 body too short")
        body = payload[:-1]  # without the check code
        raw = (body[:serial_at], body[serial_at + 2 : time_at], body[time_at + 6 :])
        self._raw = raw
        self._pre = _FLAG + _escape(raw[0])
        self._mid = _escape(raw[1])
        self._tail = _escape(raw[2])
        x = 0
        for part in raw:
            for b in part:
                x ^= b
        self._x0 = x  # XOR of the constant bytes
        self.fallbacks = 0

    def frame(self, serial: int, when: bytes, when_xor: int) -> bytes:
        """The wire frame with ``serial`` (0-65535) and BCD[6] time ``when`` (XOR ``when_xor``)."""
        sb = _SERIAL[serial]
        end = _CS_END[self._x0 ^ (serial >> 8) ^ (serial & 0xFF) ^ when_xor]
        if sb is None or end is None:
            self.fallbacks += 1
            raw = self._raw
            return wrap(raw[0] + serial.to_bytes(2, "big") + raw[1] + when + raw[2])
        return b"".join((self._pre, sb, self._mid, when, self._tail, end))


def _escape(data: bytes) -> bytes:
    return data.replace(b"\x7d", b"\x7d\x01").replace(b"\x7e", b"\x7d\x02")


@dataclass(slots=True)
class Lean:
    """Options of this generator on top of load_jt808's :class:`Config`."""

    burst: int = 8  # frames per send() per socket
    tick_ms: float = 10.0
    templates: int = 16  # consecutive fixes per terminal, played back and forth
    #: the rate after each (start second, positions/s) step; empty: ``Config.rate`` throughout
    steps: tuple[tuple[float, float], ...] = ()
    heartbeat_s: float = 0.0  # each terminal sends 0x0002 this often (0: never)

    def rate_at(self, elapsed_s: float, rate: float) -> float:
        """Positions/s in total at ``elapsed_s`` into the run (``rate`` without steps)."""
        for start, step_rate in reversed(self.steps):
            if elapsed_s >= start:
                return step_rate
        return rate

    @classmethod
    def from_args(cls, p: argparse.ArgumentParser, a: argparse.Namespace) -> Lean:
        """From :func:`add_lean_args`' options (``p.error`` when one is out of range)."""
        if a.burst < 1 or a.tick <= 0:
            p.error("--burst must be ≥ 1, --tick > 0")
        if not 2 <= a.templates <= 1000:
            p.error("--templates must be 2..1000")
        return cls(burst=a.burst, tick_ms=a.tick, templates=a.templates)


class Conn:
    """One terminal's socket and counters (protocol state for the login is in ``term``)."""

    __slots__ = (
        "fd",
        "live",
        "pending",
        "serial",
        "sock",
        "step",
        "term",
        "ti",
        "tpls",
        "tries",
        "wbuf",
    )

    def __init__(self, term: SimTerminal) -> None:
        self.term = term
        self.sock: socket.socket | None = None
        self.fd = -1
        self.live = False
        self.pending: dict[int, int] = {}  # serial → sent at (monotonic ns)
        self.serial = 0
        self.step = 0  # fix time = start + step seconds
        self.ti = 0
        self.tpls: list[ReportTemplate] = []
        self.tries = 0  # handshakes started (a busy server may time out on one)
        self.wbuf = b""


class Worker:
    """The terminals of one process: setup (connect, register, authenticate), run, drain."""

    def __init__(
        self,
        cfg: Config,
        lean: Lean,
        first: int,
        count: int,
        feed: Callable[..., None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.feed = feed  # called once a second: (second, sent, acked, hist delta, open conns)
        self.lean = lean
        self.clock = FixClock(cfg.start)
        self.conns = [
            Conn(
                SimTerminal(
                    first + k,
                    cfg.phone(cfg.first_index + first + k),
                    self.clock,
                    version=V2019 if cfg.is_2019(first + k) else V2013,
                    plate=f"{cfg.plate_prefix}{cfg.first_index + first + k:05d}",
                )
            )
            for k in range(count)
        ]
        self.ep = select.epoll()
        self.by_fd: dict[int, Conn] = {}
        self.stats = Stats(terminals=count)
        self.sources = cfg.sources()
        self.procs = max(1, cfg.procs)
        self.go_ns = 0
        self.sends = 0
        self.fallbacks = 0

    # -- setup --------------------------------------------------------------------------------

    def _open(self, c: Conn) -> None:
        cfg = self.cfg
        sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
        sock.setblocking(False)
        source = self.sources[c.term.index % len(self.sources)]
        if source is not None:
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        err = sock.connect_ex((cfg.host, cfg.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(err, os.strerror(err))
        c.sock, c.fd = sock, sock.fileno()
        self.by_fd[c.fd] = c
        self.ep.register(c.fd, select.EPOLLOUT)

    def _close(self, c: Conn) -> None:
        if c.sock is not None:
            self.by_fd.pop(c.fd, None)
            with contextlib.suppress(OSError):
                self.ep.unregister(c.fd)
            c.sock.close()
        c.sock, c.fd, c.live = None, -1, False
        c.term.splitter = FrameSplitter()  # no partial frame of this link into the next one

    def _handshake(self, c: Conn, ev: int) -> bool | None:
        """One event of a connection being set up: True when authenticated, False on failure."""
        assert c.sock is not None
        term, st = c.term, self.stats
        if ev & select.EPOLLOUT:
            if c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                st.connect_errors += 1
                return False
            self.ep.modify(c.fd, select.EPOLLIN)
            c.sock.send(term.register_frame())
            return None
        try:
            data = c.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            return False
        for r in term.feed(data):
            if r.msg_id == MSG_REGISTER_REPLY:
                if r.result != 0 or not r.auth_code:
                    st.register_refused += 1
                    return False
                term.auth_code = r.auth_code
                c.sock.send(term.auth_frame())
            elif r.msg_id == MSG_PLATFORM_ACK and r.reply_id == MSG_AUTH:
                if r.result != 0:
                    st.auth_refused += 1
                    return False
                return True
        return None

    def setup(self) -> None:
        """Connect, register and authenticate every terminal, ``connect_concurrency`` at a
        time; then build each one's report templates."""
        cfg = self.cfg
        todo = list(reversed(self.conns))
        busy = 0
        t0 = time.monotonic()
        limit = max(1, cfg.connect_concurrency // self.procs)
        while (todo or busy) and time.monotonic() - t0 < cfg.setup_timeout:
            while todo and busy < limit:
                c = todo.pop()
                c.tries += 1
                try:
                    self._open(c)
                    busy += 1
                except OSError:
                    self.stats.connect_errors += 1
                    if c.tries < 3:
                        todo.insert(0, c)
            for fd, ev in self.ep.poll(0.05):
                c = self.by_fd[fd]
                done = self._handshake(c, ev)
                if done is None:
                    continue
                busy -= 1
                if done:
                    c.live = True
                    self.stats.authenticated += 1
                else:
                    self._close(c)
                    if c.tries < 3:
                        todo.insert(0, c)  # again, after the others
        for c in self.conns:
            if not c.live:
                self._close(c)
                continue
            # consecutive fixes of the route: the template frames themselves are never sent
            frames = [c.term.location_frame(0) for _ in range(max(2, self.lean.templates))]
            c.term.pending.clear()
            tpls = [ReportTemplate(f) for f in frames]
            c.tpls = tpls + tpls[-2:0:-1]  # back and forth: no jump at the wrap-around
            c.serial = c.term.serial
        self.stats.setup_failed = self.stats.terminals - self.stats.authenticated
        self.stats.setup_s = time.monotonic() - t0

    # -- reports ------------------------------------------------------------------------------

    def _send(self, c: Conn, n: int, now: int) -> int:
        """Send ``n`` reports of ``c`` in one ``send()``; returns how many went out."""
        if c.wbuf and not self._flush(c):
            return 0
        cache = self.clock._cache
        tpls, ti, step, serial, pending = c.tpls, c.ti, c.step, c.serial, c.pending
        if step + n >= len(cache):
            self.clock.bcd(step + n)
            cache = self.clock._cache
        out = []
        for _ in range(n):
            when, wx = cache[step]
            out.append(tpls[ti].frame(serial, when, wx))
            pending[serial] = now
            serial = (serial + 1) & 0xFFFF
            step += 1
            ti += 1
            if ti == len(tpls):
                ti = 0
        c.ti, c.step, c.serial = ti, step, serial
        c.wbuf = b"".join(out)
        self.stats.sent += n
        self.stats.msgs_location += n
        i = (now - self.go_ns) // INTERVAL_NS
        bump(self.stats.ivl_sent, i, n)
        self._flush(c)
        return n

    def _flush(self, c: Conn) -> bool:
        """Write what is buffered; False while some is left (the socket buffer is full)."""
        assert c.sock is not None
        self.sends += 1
        try:
            k = c.sock.send(c.wbuf)
        except BlockingIOError:
            return False
        except OSError:
            self._lost(c)
            return False
        c.wbuf = c.wbuf[k:] if k < len(c.wbuf) else b""
        return not c.wbuf

    def _lost(self, c: Conn) -> None:
        if c.live:
            self.stats.disconnects += 1
        self._close(c)

    def _read(self, c: Conn, now: int) -> None:
        """Read what arrived, match acks to pending reports by serial."""
        assert c.sock is not None
        try:
            data = c.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost(c)
            return
        st = self.stats
        term = c.term
        acks: list[tuple[int, int, int, int]]
        ack = _ACK_2019 if term.version == V2019 else _ACK_2013
        size = ack.size
        if (
            term.splitter.buffered <= 1  # at most a closing flag: no partial frame held
            and len(data) % size == 0
            and data.count(b"\x7e") == 2 * (len(data) // size)
            and b"\x7d" not in data
            and data[0] == 0x7E
            and data[-1] == 0x7E
        ):
            acks = list(ack.iter_unpack(data))
        else:
            acks = []
            for r in term.feed(data):
                acks.append((r.msg_id, r.reply_serial, r.reply_id, r.result))
        pending = c.pending
        hist = st.hist
        got = 0
        last_sent, bucket = -1, 0
        for msg_id, reply_serial, reply_id, result in acks:
            if msg_id != MSG_PLATFORM_ACK or reply_id != MSG_LOCATION:
                if msg_id == MSG_PLATFORM_ACK and reply_id == MSG_HEARTBEAT:
                    st.heartbeats_acked += 1
                else:
                    st.other_msgs += 1
                continue
            sent = pending.pop(reply_serial, None)
            if sent is None:
                st.unexpected_acks += 1
                continue
            if sent != last_sent:  # a burst's reports share their send time: one log() for all
                last_sent = sent
                lat = now - sent
                if lat > st.lat_max_ns:
                    st.lat_max_ns = lat
                i = int(log(lat if lat > 1 else 1) * HIST_SCALE)
                bucket = i if i < HIST_SIZE else HIST_SIZE - 1
            hist[bucket] += 1
            if result == 0:
                got += 1
            else:
                st.failed += 1
                st.results[result] = st.results.get(result, 0) + 1
        if got:
            st.acked += got
            st.last_ack_s = (now - self.go_ns) / 1e9
            bump(st.ivl_acked, (now - self.go_ns) // INTERVAL_NS, got)

    def _heartbeat(self, c: Conn) -> None:
        """One 0x0002 through the codec (a few hundred a second at most: no template)."""
        if c.wbuf and not self._flush(c):
            return
        frame = encode_frame(
            Heartbeat(), phone=c.term.phone, serial=c.serial, version=c.term.version
        )
        c.serial = (c.serial + 1) & 0xFFFF
        c.wbuf = frame
        self.stats.heartbeats += 1
        self._flush(c)

    def _second(self, second: int, last: list[int]) -> None:
        """Hand this second's counts to ``feed``: sent, acked, the latency histogram's growth
        (sparse: bucket → count) and the connections still open."""
        st = self.stats
        hist = st.hist
        delta = {i: n - last[i] for i, n in enumerate(hist) if n != last[i]}
        last[:] = hist
        sent, acked = st.sent - self._fed[0], st.acked - self._fed[1]
        self._fed = (st.sent, st.acked)
        assert self.feed is not None
        self.feed(second, sent, acked, delta, len(self.by_fd), st.heartbeats_acked)

    def run(self, sync: Callable[[str], None]) -> Stats:
        """Paced or windowed reports for ``duration`` s, then wait for the acks (drain)."""
        cfg, lean, st = self.cfg, self.lean, self.stats
        live = [c for c in self.conns if c.live]
        for c in live:
            self.ep.modify(c.fd, select.EPOLLIN)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        st.cpu_setup_s = ru0.ru_utime + ru0.ru_stime
        sync("go")
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        now = self.go_ns = time.monotonic_ns()
        end = now + int(cfg.duration * 1e9) if live else now  # nobody logged in: no run
        tick = int(lean.tick_ms * 1e6)
        rate = lean.rate_at(0.0, cfg.rate) / self.procs / 1e9  # positions per ns, this process
        paced = rate > 0 or bool(lean.steps)
        window, burst = cfg.window, lean.burst
        tokens, last, ring = 0.0, now, 0
        if not paced:
            for c in live:
                self._send(c, window, now)
        next_tick = now + tick
        by_fd = self.by_fd
        # heartbeats: every live terminal once per heartbeat_s, spread over that time
        hb_per_ns = len(live) / (lean.heartbeat_s * 1e9) if lean.heartbeat_s > 0 else 0.0
        hb_due, hb_ring = 0.0, 0
        next_second, last_hist = now + 1_000_000_000, list(st.hist)
        self._fed = (0, 0)
        while now < end:
            events = self.ep.poll(max(0.0, (next_tick - now) / 1e9))
            now = time.monotonic_ns()
            for fd, _ in events:
                c = by_fd.get(fd)
                if c is None:
                    continue
                self._read(c, now)
                if not paced and c.sock is not None:
                    room = window - len(c.pending)
                    if room >= burst:
                        self._send(c, room, now)
            now = time.monotonic_ns()
            if now < next_tick:
                continue
            if hb_per_ns and live:
                hb_due += (now - last) * hb_per_ns
                while hb_due >= 1.0:
                    hb_due -= 1.0
                    c = live[hb_ring]
                    hb_ring = hb_ring + 1 if hb_ring + 1 < len(live) else 0
                    if c.sock is not None:
                        self._heartbeat(c)
            if self.feed is not None and now >= next_second:
                self._second((next_second - self.go_ns) // 1_000_000_000 - 1, last_hist)
                next_second += 1_000_000_000
            next_tick = max(next_tick + tick, now + tick // 4)
            if lean.steps:
                rate = lean.rate_at((now - self.go_ns) / 1e9, cfg.rate) / self.procs / 1e9
            if rate <= 0 or not live:
                last = now
                continue
            # token bucket: at most half a second of debt, so a stalled server is not flooded
            tokens = min(tokens + (now - last) * rate, max(rate * 5e8, burst))
            last = now
            n_live = len(live)
            for _ in range(n_live):
                if tokens < burst:  # whole bursts only: the rest waits for the next tick
                    break
                c = live[ring]
                ring = ring + 1 if ring + 1 < n_live else 0
                if c.sock is None:
                    continue
                n = min(burst, window - len(c.pending))
                if n > 0:
                    tokens -= self._send(c, n, now)
        st.send_s = (now - self.go_ns) / 1e9
        drain_end = now + int(cfg.drain_timeout * 1e9)
        while now < drain_end and any(c.pending and c.sock is not None for c in live):
            events = self.ep.poll(0.05)
            now = time.monotonic_ns()
            for fd, _ in events:
                c = by_fd.get(fd)
                if c is not None:
                    self._read(c, now)
        st.drain_s = (now - self.go_ns) / 1e9 - st.send_s
        st.connected_end = sum(c.sock is not None for c in live)
        if self.feed is not None:
            self._second((now - self.go_ns) // 1_000_000_000, last_hist)
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        st.cpu_user_s = ru1.ru_utime - ru0.ru_utime
        st.cpu_sys_s = ru1.ru_stime - ru0.ru_stime
        sync("end")
        st.unacked = sum(len(c.pending) for c in live)
        st.fix_steps = max((c.step for c in live), default=0)
        st.decode_errors = sum(c.term.decode_errors for c in self.conns)
        self.fallbacks = sum(t.fallbacks for c in live for t in c.tpls[: len(c.tpls) // 2 + 1])
        for c in self.conns:
            self._close(c)
        return st


def run_worker(
    cfg: Config, lean: Lean, k: int, first: int, count: int, sync: Callable[[str], None],
    feed: Any = None,
) -> tuple[Stats, dict[str, int]]:  # fmt: skip
    """Process ``k``'s terminals; with ``feed`` (a queue) it gets ``(k, second, sent, acked,
    histogram delta, open connections, heartbeats acked)`` once a second."""
    raise_nofile(count)
    if cfg.cpus:
        os.sched_setaffinity(0, {cfg.cpus[k % len(cfg.cpus)]})
    put = None if feed is None else (lambda *v: feed.put((k, *v)))
    w = Worker(cfg, lean, first, count, put)
    w.setup()
    st = w.run(sync)
    return st, {"sends": w.sends, "fallbacks": w.fallbacks}


def _child(
    cfg: Config, lean: Lean, k: int, first: int, count: int, barrier: Any, out: Any, wait: float,
    feed: Any = None,
) -> None:  # fmt: skip
    try:
        st, extra = run_worker(cfg, lean, k, first, count, lambda _: barrier.wait(wait), feed)
        out.put(("ok", first, asdict(st), extra))
    except BaseException as exc:  # report, so the parent does not wait forever
        barrier.abort()
        out.put(("error", first, f"{type(exc).__name__}: {exc}", {}))
        raise


def run(
    cfg: Config, lean: Lean, server_pids: list[int], postgres_pid: int | None = None,
    feed: Any = None, sync: Callable[[str], None] | None = None,
) -> tuple[Stats, dict[str, int], dict[str, Any]]:  # fmt: skip
    """Run over ``cfg.procs`` processes (forked); merged stats, extra counters, /proc samples.
    ``feed``: a multiprocessing queue for per-second counts (see :func:`run_worker`; the
    workers are then always child processes); ``sync`` is called with "go" and "end"."""
    sampler = Sampler(server_pids, postgres_pid)
    procs = max(1, min(cfg.procs, cfg.terminals))
    if procs == 1 and feed is None:
        st, extra = run_worker(cfg, lean, 0, 0, cfg.terminals, sampler)
        return st, extra, sampler.report()
    ctx = mp.get_context("fork")
    wait = cfg.setup_timeout + cfg.duration + cfg.drain_timeout + 60
    barrier = ctx.Barrier(procs + 1)
    out = ctx.Queue()
    children, first = [], 0
    for k in range(procs):
        count = cfg.terminals // procs + (1 if k < cfg.terminals % procs else 0)
        p = ctx.Process(
            target=_child,
            args=(cfg, lean, k, first, count, barrier, out, wait, feed),
            daemon=True,
        )
        p.start()
        children.append(p)
        first += count
    sampler.workers = {p.pid for p in children if p.pid}
    total, extra, errors = Stats(), {"sends": 0, "fallbacks": 0}, []
    try:
        for phase in ("go", "end"):
            barrier.wait(wait)
            sampler(phase)
            if sync is not None:
                sync(phase)
    except threading.BrokenBarrierError:
        errors.append("a worker failed")
    for _ in children:
        try:
            status, first, payload, more = out.get(timeout=wait)
        except queue.Empty:
            errors.append("a worker died without a report")
            break
        if status == "ok":
            total.merge(Stats(**payload))
            for key, v in more.items():
                extra[key] += v
        else:
            errors.append(f"worker for terminals from {first}: {payload}")
    for p in children:
        p.join(5)
    if errors:
        raise SystemExit("lean run failed: " + "; ".join(errors))
    return total, extra, sampler.report()


def add_lean_args(p: argparse.ArgumentParser) -> None:
    """This generator's own options (on top of :func:`add_run_args`)."""
    add = p.add_argument
    add("--burst", type=int, default=8, help="reports per send() per socket")
    add("--tick", type=float, default=10.0, help="pacing tick, ms")
    add("--templates", type=int, default=16, help="precomputed fixes per terminal")
    p.set_defaults(terminals=2000, window=32, rate=10000.0, phone_base=14600000000,
                   plate_prefix="测L")  # fmt: skip


def past_start(rate: float, duration: float, terminals: int) -> datetime:
    """One fix second per report: start in the past by the reports a terminal will send, so
    the fix times do not run ahead of the clock (the server flags fixes > 10 min ahead)."""
    per_terminal = (rate or 40000.0) * duration / terminals
    return datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=int(per_terminal) + 1)


def parse_args(argv: list[str] | None) -> tuple[Config, Lean, argparse.Namespace]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_args(p)
    add_lean_args(p)
    add = p.add_argument
    add("--recount", type=float, default=5.0, help="count again after this many s (spool)")
    a = p.parse_args(argv)
    check_run_args(p, a)
    lean = Lean.from_args(p, a)
    cfg = Config.from_args(a, start_time(a, past_start(a.rate, a.duration, a.terminals)))
    return cfg, lean, a


def main(argv: list[str] | None = None) -> int:
    cfg, lean, a = parse_args(argv)
    phones = cfg.phones()
    if a.verify_db and not a.start_time:
        asyncio.run(start_after_stored(cfg, a.verify_db))
    raise_nofile(0)
    try:
        st, extra, sampled = run(cfg, lean, with_workers(a.server_pid), a.postgres_pid)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    db = None
    if a.verify_db:
        db = asyncio.run(verify_db(a.verify_db, phones, cfg.start))
        if db["stored"] != st.acked and a.recount > 0:
            time.sleep(a.recount)  # spooled rows are replayed into the database meanwhile
            db = asyncio.run(verify_db(a.verify_db, phones, cfg.start))
    s = summary(cfg, st, sampled, db)
    s["mode"] += f", burst {lean.burst}, tick {lean.tick_ms:g} ms"
    s["latency_ms"]["p95"] = round(st.percentile(0.95), 3)
    s["per_10s_sent_per_s"] = [
        round(n / min(10.0, st.send_s - 10 * i), 1)
        for i, n in enumerate(st.ivl_sent)
        if st.send_s - 10 * i >= 1.0
    ]
    s["lean"] = (
        {**extra, "reports_per_send": round(st.sent / extra["sends"], 2)}
        if extra["sends"]
        else extra
    )
    print_report(s)
    print(
        f"lean: ack latency p95 {s['latency_ms']['p95']:.2f} ms; sent/s per 10 s "
        + ", ".join(f"{n:,.0f}" for n in s["per_10s_sent_per_s"])
        + f"; {extra['sends']:,} send() calls ({s['lean'].get('reports_per_send', 0)} reports"
        f" each), {extra['fallbacks']} frames via the full framing (escaping)",
        flush=True,
    )
    if a.json:
        print(json.dumps({"lean": s}, ensure_ascii=False, default=str), flush=True)
    ok = st.authenticated == st.terminals and st.acked > 0 and st.unacked == 0
    if db is not None:
        ok = ok and db["stored"] == st.acked and db["duplicates"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
