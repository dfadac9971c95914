"""A fake JT/T 808 platform that acknowledges everything at once (for load-generator tests).

    python -m loadtest.ack_server --port 0            # prints "listening on 127.0.0.1:PORT"
    python -m loadtest.ack_server --port 7611 --verify

Answers 0x0100 with 0x8100 (result 0, an auth code) and every other frame with 0x8001
(result 0) in the header layout the terminal used; closes the connection after a logout.
Frames are parsed minimally (header only, no check-code test). ``--verify`` also decodes every
frame with the codec and counts decode errors and repeated (phone, fix time, serial) positions,
which the real server would store once. Statistics go to stderr every ``--stats`` seconds and
at exit (SIGINT/SIGTERM). ``--drop-every N`` drops the connection instead of acking every Nth
location frame, to exercise reconnects and retransmission. Loopback only, like the load
generator.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import struct
import sys
import time

from loadtest.load_jt808 import loopback_address
from loadtest.terminal import wrap_fast
from protocols.jt808 import (
    BatchLocation,
    FrameSplitter,
    JT808Error,
    LocationReport,
    decode_frame,
)

_HDR = struct.Struct(">HH")


class Counters:
    """What all connections of the server share."""

    def __init__(self) -> None:
        self.connections = 0
        self.frames = 0
        self.positions = 0
        self.bad_frames = 0
        self.duplicates = 0
        self.dropped = 0  # location frames answered by closing the connection
        self.location_frames = 0
        self.seen: dict[str, set[tuple[object, int]]] = {}
        self.open: set[AckProtocol] = set()


class AckProtocol(asyncio.Protocol):
    """One connection: split frames, answer each one."""

    def __init__(self, counters: Counters, verify: bool, drop_every: int = 0) -> None:
        self.c = counters
        self.verify = verify
        self.drop_every = drop_every
        self.splitter = FrameSplitter()
        self.serial = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.c.connections += 1
        self.c.open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.c.open.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        c = self.c
        out = []
        close = False
        for frame in self.splitter.feed(data):
            payload = frame[1:-1]
            if b"\x7d" in payload:
                payload = payload.replace(b"\x7d\x02", b"\x7e").replace(b"\x7d\x01", b"\x7d")
            if len(payload) < 13:
                c.bad_frames += 1
                continue
            c.frames += 1
            if self.verify:
                self._verify(frame)
            msg_id, attr = _HDR.unpack_from(payload, 0)
            hlen = 17 if attr & 0x4000 else 12
            head = payload[4 : hlen - 2]  # [protocol version] + phone, echoed back
            serial = payload[hlen - 2 : hlen]
            mine = self.serial
            self.serial = (mine + 1) & 0xFFFF
            if msg_id == 0x0100:
                code = b"AC" + payload[hlen - 4 : hlen - 2].hex().encode()
                body = serial + b"\x00" + code
                reply_id = 0x8100
            else:
                body = serial + msg_id.to_bytes(2) + b"\x00"
                reply_id = 0x8001
                if msg_id == 0x0200:
                    c.positions += 1
                elif msg_id == 0x0704:
                    c.positions += int.from_bytes(payload[hlen : hlen + 2], "big")
                elif msg_id == 0x0003:
                    close = True
                if self.drop_every and msg_id in (0x0200, 0x0704):
                    c.location_frames += 1
                    if c.location_frames % self.drop_every == 0:
                        c.dropped += 1
                        if self.transport is not None:  # as if the link broke before the ack
                            self.transport.write(b"".join(out))
                            self.transport.close()
                            self.transport = None
                        return
            attr_out = len(body) | (attr & 0x4000)
            out.append(wrap_fast(_HDR.pack(reply_id, attr_out) + head + mine.to_bytes(2) + body))
        if self.splitter.dropped:
            c.bad_frames += len(self.splitter.take_dropped())
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
            if close:
                self.transport.close()

    def _verify(self, frame: bytes) -> None:
        c = self.c
        try:
            message = decode_frame(frame)
        except JT808Error:
            c.bad_frames += 1
            return
        body = message.body
        reports: list[LocationReport] = []
        if isinstance(body, LocationReport):
            reports = [body]
        elif isinstance(body, BatchLocation):
            reports = body.items
            if body.problems:
                c.bad_frames += 1
        if message.problems:
            c.bad_frames += 1
        seen = c.seen.setdefault(message.phone.lstrip("0"), set())
        for report in reports:
            key = (report.time, message.serial)
            if key in seen:
                c.duplicates += 1
            seen.add(key)


def _stats_line(c: Counters, started: float, cpu0: float, last: list[float]) -> str:
    now = time.monotonic()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime - cpu0
    frames, t = last
    rate = (c.frames - frames) / (now - t) if now > t else 0.0
    last[:] = [c.frames, now]
    extra = f", {c.duplicates} duplicates" if c.seen else ""
    if c.dropped:
        extra += f", {c.dropped} dropped"
    return (
        f"ack_server pid {os.getpid()}: {c.connections} connections, {c.frames:,} frames"
        f" ({rate:,.0f}/s now), {c.positions:,} positions, {c.bad_frames} bad frames{extra};"
        f" cpu {cpu:.2f} s in {now - started:.1f} s"
    )


async def serve(sock: socket.socket, verify: bool, stats_every: float, drop_every: int) -> None:
    loop = asyncio.get_running_loop()
    counters = Counters()
    server = await loop.create_server(lambda: AckProtocol(counters, verify, drop_every), sock=sock)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = ru.ru_utime + ru.ru_stime
    last = [0.0, started]
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), stats_every or None)
        except TimeoutError:
            print(_stats_line(counters, started, cpu0, last), file=sys.stderr, flush=True)
    server.close()
    for conn in list(counters.open):  # nothing is read (or acked) after the final count
        if conn.transport is not None:
            conn.transport.abort()
    print(_stats_line(counters, started, cpu0, last), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="loopback only")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    p.add_argument("--backlog", type=int, default=4096)
    p.add_argument("--verify", action="store_true", help="decode every frame, find duplicates")
    p.add_argument("--stats", type=float, default=10.0, help="seconds between stats (0: off)")
    p.add_argument("--drop-every", type=int, default=0, help="drop the link at every Nth report")
    a = p.parse_args(argv)
    try:
        host = loopback_address(a.host)
    except ValueError as exc:
        p.error(str(exc))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, a.port))
    sock.listen(a.backlog)
    port = sock.getsockname()[1]
    print(f"listening on {host}:{port} (pid {os.getpid()})", flush=True)
    asyncio.run(serve(sock, a.verify, a.stats, a.drop_every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
