"""Probe ``fleetwatch serve``'s limits from outside (a script, not a test; loopback only).

    python -m loadtest.probe_guard idle --connections 10000      # RSS per idle connection
    python -m loadtest.probe_guard idle --connections 30000      # how many it holds at most
    python -m loadtest.probe_guard flood --frames 200000         # RSS and log after bad input

Starts its own ``fleetwatch serve`` (embedded cluster in a temporary data directory, or
``--db URL``) with its log going to a file, then:

* ``idle``: opens connections that never send anything, from 127.0.0.2.. source addresses
  (``IP_BIND_ADDRESS_NO_PORT``, at most 200 per address, the server caps 256), in two client
  processes (each has its own descriptor limit); reports how many the server holds (its
  ``fleetwatch_terminals_connected``) and its RSS growth per 10,000.
* ``flood``: ``--conns`` connections send ``--frames`` bad frames between them (bad check
  codes, unknown message ids, a 0x0801 announcing 300 parts, registrations with NUL bytes,
  garbage between flags), reading whatever comes back; reports the server's RSS before, right
  after and 5 s after, and the bytes and lines of log the flood produced.

Every run is bounded (``--max-seconds``, default 60) and the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from loadtest.load_jt808 import IP_BIND_ADDRESS_NO_PORT
from protocols.jt808 import (
    BEIJING,
    Heartbeat,
    LocationReport,
    MediaData,
    Register,
    encode_frame,
    encode_frames,
)
from protocols.jt808.framing import wrap

PER_ADDRESS = 200


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A ``fleetwatch serve`` subprocess whose stderr goes to a file."""

    def __init__(self, args: argparse.Namespace, extra: list[str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fwprobe-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.port, self.http = free_port(), free_port()
        self.log = self.dir / "serve.log"
        command = [sys.executable, "-m", "fleetwatch.cli", "serve", "--data-dir",
                   str(self.dir / "data"), "--jt808-port", str(self.port), "--http-port",
                   str(self.http), "--host", "127.0.0.1", *extra]  # fmt: skip
        if args.db:
            command += ["--db", args.db]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                     stderr=self.log.open("wb"))  # fmt: skip
        deadline = time.monotonic() + 90
        while f"listening on 127.0.0.1:{self.port}" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics").read().decode()
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)


# -- idle ---------------------------------------------------------------------------------


async def _hold(port: int, first: int, count: int, seconds: float, out: mp.Queue) -> None:
    loop = asyncio.get_running_loop()
    socks = []
    errors = 0
    for k in range(count):
        n = first + k
        source = f"127.{1 + n // (PER_ADDRESS * 250)}.{(n // PER_ADDRESS) % 250 + 2}.1"
        sock = socket.socket()
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        try:
            sock.bind((source, 0))
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 5)
        except (OSError, TimeoutError):
            sock.close()
            errors += 1
            if errors > 50:
                break
            continue
        socks.append(sock)
    out.put(("opened", len(socks), errors))
    await asyncio.sleep(seconds)
    for sock in socks:
        sock.close()


def _holder(port: int, first: int, count: int, seconds: float, out: mp.Queue) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_hold(port, first, min(count, hard - 50), seconds, out))


def idle(args: argparse.Namespace) -> dict[str, object]:
    server = Server(args, ["--pre-auth-timeout", str(args.max_seconds + 60)])
    try:
        time.sleep(2.0)
        base = rss_kb(server.proc.pid)
        out: mp.Queue = mp.Queue()
        halves = [args.connections // 2, args.connections - args.connections // 2]
        procs = [mp.Process(target=_holder, args=(server.port, i * halves[0], n,
                                                  args.hold_seconds, out))
                 for i, n in enumerate(halves) if n]  # fmt: skip
        started = time.monotonic()
        for p in procs:
            p.start()
        opened = [out.get(timeout=args.max_seconds) for _ in procs]
        connect_s = time.monotonic() - started
        time.sleep(2.0)
        held = int(server.metric("fleetwatch_terminals_connected"))
        rss = rss_kb(server.proc.pid)
        for p in procs:
            p.join(args.hold_seconds + 30)
        time.sleep(2.0)
        after = rss_kb(server.proc.pid)
        capacity = re.search(r"up to (\d+) terminal", server.log.read_text())
        return {
            "asked": args.connections,
            "client_opened": sum(o[1] for o in opened),
            "client_errors": sum(o[2] for o in opened),
            "server_capacity": int(capacity.group(1)) if capacity else None,
            "server_held": held,
            "connect_seconds": round(connect_s, 1),
            "rss_base_mb": round(base / 1024, 1),
            "rss_held_mb": round(rss / 1024, 1),
            "kb_per_connection": round((rss - base) / max(held, 1), 2),
            "mb_per_10000": round((rss - base) / max(held, 1) * 10_000 / 1024, 1),
            "rss_after_close_mb": round(after / 1024, 1),
        }
    finally:
        server.stop()


# -- flood --------------------------------------------------------------------------------


def bad_frames(phone: str, rng: random.Random) -> list[bytes]:
    """The bad input kinds for one connection, 600 frames (each a complete frame)."""
    good = encode_frame(Heartbeat(), phone=phone, serial=rng.randrange(65536))
    bad_check = good[:-2] + bytes([good[-2] ^ 0x5A]) + good[-1:]
    where = LocationReport(status=0, latitude=31.2, longitude=121.5,
                           time=datetime(2026, 11, 22, 9, 0, tzinfo=BEIJING))  # fmt: skip
    media = MediaData(media_id=1, media_type=0, media_format=0, event=1, channel=1,
                      location=where, data=b"\x00" * (300 * 8 - 36))  # fmt: skip
    poisoned = encode_frames(media, phone=phone, serial=100, max_body=8)
    nul = encode_frame(Register(province=0, city=0, manufacturer="X\x00Y", model="m",
                                terminal_id="T\x00\x001", plate_color=2, plate="沪A\x00\x01"),
                       phone=phone, serial=1)  # fmt: skip
    frames = list(poisoned)
    for _ in range(75):
        unknown = wrap(rng.randrange(0x0F00, 0xFFFF).to_bytes(2, "big") + good[3:-2])
        garbage = b"\x7e" + rng.randbytes(40).replace(b"\x7e", b"\x00") + b"\x7e"
        frames += [bad_check, unknown, nul, garbage]
    rng.shuffle(frames)
    return frames


async def _flood(port: int, conns: int, frames: int, deadline: float) -> tuple[int, int]:
    """Send the bad frames; returns (frames sent, connections the server closed early)."""
    per_conn = frames // conns
    sent = dropped = 0

    async def one(k: int) -> None:
        nonlocal sent, dropped
        rng = random.Random(k)
        kinds = bad_frames(f"1390{k:07d}", rng)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        drain = asyncio.ensure_future(_discard(reader))
        try:
            for i in range(per_conn):
                if time.monotonic() > deadline:
                    break
                writer.write(kinds[i % len(kinds)])
                sent += 1
                if i % 100 == 99:
                    await writer.drain()
            await writer.drain()
        except OSError:  # ConnectionError included: the server closed it
            dropped += 1
        writer.close()
        drain.cancel()

    await asyncio.gather(*(one(k) for k in range(conns)))
    return sent, dropped


async def _discard(reader: asyncio.StreamReader) -> None:
    try:
        while await reader.read(65536):
            pass
    except OSError:
        pass


def flood(args: argparse.Namespace) -> dict[str, object]:
    server = Server(args, [])
    try:
        time.sleep(2.0)
        base, log_base = rss_kb(server.proc.pid), server.log.stat().st_size
        lines_base = server.log.read_bytes().count(b"\n")
        started = time.monotonic()
        sent, dropped = asyncio.run(_flood(server.port, args.conns, args.frames,
                                  started + args.max_seconds))  # fmt: skip
        while server.metric("fleetwatch_terminals_connected") and time.monotonic() < started + (
            args.max_seconds
        ):  # the server has read everything once the client's connections are gone
            time.sleep(0.1)
        took = time.monotonic() - started
        right_after = rss_kb(server.proc.pid)
        time.sleep(5.0)
        later = rss_kb(server.proc.pid)
        log = server.log.read_bytes()
        return {
            "frames_sent": sent,
            "connections_closed_by_server": dropped,
            "seconds": round(took, 1),
            "rss_before_mb": round(base / 1024, 1),
            "rss_right_after_mb": round(right_after / 1024, 1),
            "rss_5s_after_mb": round(later / 1024, 1),
            "log_bytes": len(log) - log_base,
            "log_lines": log.count(b"\n") - lines_base,
            "tracebacks": log.count(b"Traceback"),
            "first_traceback": log[log.find(b"Traceback") - 300 :][:1500].decode(errors="replace")
            if b"Traceback" in log
            else None,
            "server_alive": server.proc.poll() is None,
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("idle", "flood"))
    parser.add_argument("--db", help="PostgreSQL URL (default: an embedded cluster)")
    parser.add_argument("--connections", type=int, default=10_000, help="idle: how many")
    parser.add_argument("--hold-seconds", type=float, default=5.0, help="idle: hold them")
    parser.add_argument("--frames", type=int, default=200_000, help="flood: bad frames")
    parser.add_argument("--conns", type=int, default=50, help="flood: connections")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="bound of a run")
    args = parser.parse_args()
    if args.connections > 40_000 or args.frames > 2_000_000:
        parser.error("bounded: at most 40,000 connections and 2,000,000 frames")
    result = idle(args) if args.mode == "idle" else flood(args)
    print(json.dumps(result, indent=2))
    os._exit(0)


if __name__ == "__main__":
    main()
