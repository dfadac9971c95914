"""``fleetwatch loadtest``: measure a FleetWatch server from outside and write a load report.

The command line is parsed in ``fleetwatch/loadtest_cmd.py``; everything else is here.

1. The server: its own ``fleetwatch serve --workers N`` on a fresh embedded PostGIS in a temp
   directory (stopped and removed at the end), or one already running (``--server``, ``--db``,
   ``--http``; it must provision unknown terminals: ``--policy open``, and not rate-limit
   registrations: ``--registration-rate 0 --max-per-address 0``).
2. A login ``loadtest`` (admin, fresh password) and a WebSocket client of ``/api/live`` on it.
3. The load: the lean generator (:mod:`loadtest.lean`, forked processes) either paced at a rate
   that climbs in steps (``--rate R --ramp STEP --step-seconds S``) and then holds R for
   ``--duration``, or ``--connections N`` terminals kept with heartbeats and a low rate.
4. Alert probes: a few more terminals that send an SOS (alarm bit 0) every ``--alert-every``
   seconds and clear it a second later; each SOS must open an alert. Timed: send → the alert
   row's ``created_at`` (position → alert) and ``created_at`` → its arrival on the socket
   (alert → browser).
5. Once a second the workers hand over their counts (sent, acked, latency histogram growth);
   progress goes to stderr every ``--interval`` s; /proc is sampled every second for the
   server's CPU per worker and RSS and PostgreSQL's CPU; ``/metrics`` is scraped before and
   after for the writer's flush histogram; the stored rows are counted in the database after.
6. The report: JSON + SVG chart under ``--out`` (named by date and mode) and a summary table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loadtest import lean as lean_mod
from loadtest.bench_live import login_terminal
from loadtest.load_jt808 import (
    Config,
    Stats,
    hist_percentile,
    loopback_address,
    postgres_cpu,
    proc_cpu,
    raise_nofile,
    start_after_stored,
    summary,
    verify_db,
    with_workers,
)
from loadtest.terminal import FixClock, SimTerminal

USER = "loadtest"
PROBE_PHONE_BASE = 14700000000
PROBE_PLATE = "测P"
SOS_BIT = 0x1  # JT/T 808 alarm word bit 0: emergency (SOS)
STATUS = 0x000C0003  # ACC on, positioned, GPS + BeiDou (as the simulated terminals)


class LoadError(Exception):
    """The run cannot start or go on (the message says why)."""


@dataclass
class Plan:
    """What to run (from the command line)."""

    mode: str  # "rate" or "connections"
    rate: float = 0.0  # the final (held) rate, positions/s
    ramp: float = 0.0  # step of the ramp, positions/s (0: no ramp)
    step_s: float = 30.0
    duration: float = 60.0  # the hold (rate) or the time connected (connections), s
    connections: int = 0
    heartbeat_s: float = 60.0
    terminals: int = 2000
    procs: int = 0  # 0: as many as the connections need
    workers: int = 2
    source_addrs: int = 8
    connect_concurrency: int = 200
    setup_timeout: float = 300.0
    alert_every: float = 5.0
    probes: int = 4
    interval: float = 5.0
    out: Path = Path("loadtest/reports")
    server: str | None = None  # HOST:PORT of a running server
    db: str | None = None
    http: str | None = None
    jt808_port: int = 0  # own server: 0 = a free port
    http_port: int = 0
    rules_config: str | None = None
    tag: str = ""

    def steps(self) -> list[tuple[float, float]]:
        """(start second, rate): the ramp's steps, then the held rate."""
        if self.mode != "rate":
            return [(0.0, self.rate)]
        out: list[tuple[float, float]] = []
        r = self.ramp
        while self.ramp > 0 and r < self.rate:
            out.append((len(out) * self.step_s, r))
            r += self.ramp
        out.append((len(out) * self.step_s, self.rate))
        return out

    def total_s(self) -> float:
        return self.steps()[-1][0] + self.duration

    def process_count(self, terminals: int) -> int:
        """Generator processes: ``--procs``, else enough for the open-file limit (20,000 here)."""
        if self.procs:
            return self.procs
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        return max(1, math.ceil(terminals / max(1000, hard - 2000)))


# -- the server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


class Server:
    """The server under test: started here (``start``) or already running (``attach``)."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.http_port = 0
        self.db_url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.work: Path | None = None
        self.pid: int | None = None  # the serve process (its workers are its children)
        self.postgres_pid: int | None = None
        self.external = False

    def start(self, plan: Plan) -> None:
        from store.cluster import EmbeddedCluster

        self.work = Path(tempfile.mkdtemp(prefix="fwload-", dir="/tmp"))  # short: socket paths
        self.work.chmod(0o755)  # as root, PostgreSQL runs as 'postgres': it must reach data/
        data = self.work / "data"
        self.port = plan.jt808_port or free_port()
        self.http_port = plan.http_port or free_port()
        command = [
            sys.executable, "-m", "fleetwatch.cli", "serve", "--data-dir", str(data),
            "--jt808-port", str(self.port), "--http-port", str(self.http_port),
            "--listen", "127.0.0.1", "--workers", str(plan.workers), "--policy", "open",
            "--registration-rate", "0", "--max-per-address", "0", "--pre-auth-timeout", "120",
            "--log-format", "json",
        ]  # fmt: skip
        if plan.rules_config:
            command += ["--rules-config", plan.rules_config]
        with open(self.work / "serve.log", "wb") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=log, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        self.pid = self.proc.pid
        deadline = time.monotonic() + 120
        while not (_port_open(self.http_port) and _port_open(self.port)):
            if self.proc.poll() is not None:
                raise LoadError(f"serve exited ({self.proc.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                raise LoadError(f"serve did not open its ports in 120 s: {self.log_tail()}")
            time.sleep(0.2)
        while len(self.server_pids()) < plan.workers and time.monotonic() < deadline:
            time.sleep(0.2)  # the other workers start after worker 0 migrated
        cluster = EmbeddedCluster.in_data_dir(data)
        self.db_url = cluster.url
        self.postgres_pid = cluster.pid

    def attach(self, plan: Plan) -> None:
        self.external = True
        host, _, port = (plan.server or "").rpartition(":")
        if not host or not port.isdigit():
            raise LoadError(f"--server {plan.server!r}: HOST:PORT")
        self.host, self.port = loopback_address(host), int(port)
        http = (plan.http or "").removeprefix("http://").rstrip("/")
        http_host, _, http_port = http.rpartition(":")
        if not http_port.isdigit():
            raise LoadError(f"--http {plan.http!r}: http://HOST:PORT of the dashboard")
        loopback_address(http_host or "127.0.0.1")
        self.http_port = int(http_port)
        self.db_url = plan.db or ""
        self.pid = _listener_pid(self.port)
        if not (_port_open(self.port, self.host) and _port_open(self.http_port)):
            raise LoadError(f"nothing listens on {plan.server} and {plan.http}")

    def server_pids(self) -> list[int]:
        return with_workers([self.pid]) if self.pid else []

    def log_tail(self) -> str:
        if self.work is None:
            return ""
        text = (self.work / "serve.log").read_text(errors="replace")
        return text[-1500:]

    def stop(self, timeout: float = 120.0) -> str:
        """Stop our serve (it flushes and stops its cluster) and remove its directory;
        what happened, with the time it took (a slow shutdown is worth knowing)."""
        if self.proc is None:
            return "external server left running"
        t0 = time.monotonic()
        outcome = "stopped"
        if self.proc.poll() is None:
            # SIGTERM, not SIGINT: started from a background job, serve inherits SIGINT
            # ignored, and then Twisted leaves it ignored
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                outcome = f"killed after {timeout:g} s"
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.work is not None:
            from store.cluster import EmbeddedCluster

            cluster = EmbeddedCluster.in_data_dir(self.work / "data")
            if cluster.running:  # serve did not stop it (killed): no orphan postmaster
                cluster.stop("immediate")
                outcome += ", its PostgreSQL stopped here"
            shutil.rmtree(self.work, ignore_errors=True)
        return f"serve {outcome} in {time.monotonic() - t0:.1f} s (exit {self.proc.returncode})"


def _listener_pid(port: int) -> int | None:
    """The ``fleetwatch serve`` listening on ``port`` (its first worker, whose children are the
    others), to sample an external server's CPU; None when it is not found."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{parts[9]}]")
    for name in os.listdir("/proc") if inodes else []:
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(f"/proc/{name}/fd/{fd}") in inodes
                   for fd in os.listdir(f"/proc/{name}/fd")):  # fmt: skip
                pid = int(name)
                while _is_serve(_parent(pid)):
                    pid = _parent(pid)
                return pid
    return None


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return int(data[data.rindex(b")") + 2 :].split()[1])


def _is_serve(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"serve" in argv and any(b"fleetwatch" in a for a in argv)


async def create_login(db_url: str) -> str:
    """The ``loadtest`` admin with a fresh password (created, or its password reset)."""
    import asyncpg

    from store.users import UserError, add_user, hash_password, set_password

    password = secrets.token_urlsafe(12)
    hashed = await asyncio.to_thread(hash_password, password)
    conn = await asyncpg.connect(db_url)
    try:
        try:
            await set_password(conn, USER, hashed)
        except UserError:
            await add_user(conn, USER, "admin", hashed)
    finally:
        await conn.close()
    return password


async def postmaster_pid(db_url: str) -> int | None:
    """The postmaster of a running database on this host: the parent of our backend."""
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        return _parent(int(await conn.fetchval("SELECT pg_backend_pid()")))  # while it lives
    except (OSError, ValueError):
        return None  # another host's, or not ours to read
    finally:
        await conn.close()


def scrape_flush(http_port: int) -> dict[str, float]:
    """The writer's flush histogram from /metrics: cumulative bucket counts by bound, sum."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=30).read()
    out: dict[str, float] = {}
    prefix = "fleetwatch_writer_flush_seconds"
    for line in text.decode().splitlines():
        if line.startswith(prefix + "_bucket{le="):
            out[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith((prefix + "_sum ", prefix + "_count ")):
            out[line.split(" ")[0].removeprefix(prefix + "_")] = float(line.rsplit(" ", 1)[1])
    return out


def flush_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The flushes of the run: count, mean, and per bucket (not cumulative) with its bound."""
    diff = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    count = int(diff.get("count", 0))
    bounds = sorted((k for k in diff if k not in ("sum", "count")), key=lambda k: float(k))
    buckets, below = {}, 0.0
    for bound in bounds:
        buckets[bound] = int(diff[bound] - below)
        below = diff[bound]
    return {
        "flushes": count,
        "mean_ms": round(diff.get("sum", 0.0) / count * 1000, 2) if count else None,
        "per_bucket_le_s": buckets,
    }


# -- alert probes and the live socket -----------------------------------------------------------


@dataclass
class ProbeLog:
    sent: dict[tuple[str, datetime], float] = field(default_factory=dict)  # SOS → wall time
    live: dict[int, tuple[float, dict[str, Any]]] = field(default_factory=dict)  # id → arrival
    errors: list[str] = field(default_factory=list)


class Probes:
    """``n`` terminals that raise an SOS in turn every ``every`` s and clear it 1 s later."""

    def __init__(self, host: str, port: int, n: int, every: float) -> None:
        self.host, self.port, self.every = host, port, every
        clock = FixClock(datetime.now(UTC))
        self.sims = [
            SimTerminal(i, str(PROBE_PHONE_BASE + i), clock, plate=f"{PROBE_PLATE}{i:05d}")
            for i in range(n)
        ]
        self.writers: list[asyncio.StreamWriter] = []
        self.last_fix: dict[int, datetime] = {}
        self.log = ProbeLog()
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def plates(self) -> list[str]:
        return [s.plate for s in self.sims]

    async def connect(self) -> None:
        for sim in self.sims:
            reader, writer = await asyncio.wait_for(login_terminal(self.port, sim, self.host), 60)
            self.writers.append(writer)
            self.tasks.append(asyncio.create_task(self._drain(reader)))

    @staticmethod
    async def _drain(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass

    def _report(self, k: int, alarm: int) -> tuple[bytes, datetime]:
        from protocols.jt808 import BEIJING, LocationReport, encode_frame

        sim = self.sims[k]
        fix = datetime.now(UTC).replace(microsecond=0)
        last = self.last_fix.get(k)
        if last is not None and fix <= last:
            fix = last + timedelta(seconds=1)
        self.last_fix[k] = fix
        body = LocationReport(
            alarm=alarm, status=STATUS, latitude=28.2 + k * 0.01, longitude=112.97,
            altitude_m=50, speed_kmh=20.0, heading=90, time=fix.astimezone(BEIJING),
        )  # fmt: skip
        frame = encode_frame(body, phone=sim.phone, serial=sim.next_serial(), version=sim.version)
        return frame, fix

    async def run(self, until: float) -> None:
        """SOS on, then off a second later, probe after probe, until ``until`` (monotonic)."""
        k = 0
        next_at = time.monotonic() + 1.0
        while next_at < until:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += self.every
            frame, fix = self._report(k, SOS_BIT)
            self.writers[k].write(frame)
            self.log.sent[(self.sims[k].plate, fix)] = time.time()
            await asyncio.sleep(1.0)
            self.writers[k].write(self._report(k, 0)[0])
            k = (k + 1) % len(self.sims)

    async def close(self) -> None:
        for w in self.writers:
            w.close()
        for t in self.tasks:
            t.cancel()


async def watch_live(http_port: int, password: str, log: ProbeLog, plates: set[str]) -> Any:
    """A logged-in /api/live client noting when each probe's alert first arrives."""
    from loadtest.ws_client import LiveClient, login

    cookie = await asyncio.to_thread(login, http_port, USER, password)
    client = await LiveClient.connect(http_port, cookie)
    await client.next("snapshot", timeout=120)

    async def read() -> None:
        while True:
            at, message = await client.messages.get()
            if message.get("type") != "alerts":
                continue
            for alert in message.get("alerts", []):
                if alert.get("plate") in plates and alert["id"] not in log.live:
                    log.live[alert["id"]] = (at, alert)

    task = asyncio.create_task(read())
    return client, task


#: How long the stored count may stand still before it is taken as final: acknowledged rows
#: in a worker's spool reach the database only as fast as the replay moves them.
SETTLE_S = 30.0


async def settled_count(
    db_url: str, phones: list[str], since: datetime, acked: int, limit_s: float = 900.0
) -> dict[str, int]:
    """The stored rows once every acknowledged one is in, or once the count stopped growing
    for :data:`SETTLE_S` (after a run past the knee, millions of acked rows may still be in
    the spools: counting once or twice a few seconds apart reported them missing)."""
    db = await verify_db(db_url, phones, since)
    began = last_growth = time.monotonic()
    while db["stored"] < acked and time.monotonic() - began < limit_s:
        await asyncio.sleep(5.0)
        again = await verify_db(db_url, phones, since)
        if again["stored"] > db["stored"]:
            last_growth = time.monotonic()
            print(f"loadtest: {again['stored']:,} of {acked:,} acknowledged rows stored "
                  "(the spools are being replayed)", file=sys.stderr)  # fmt: skip
        db = again
        if time.monotonic() - last_growth > SETTLE_S:
            break
    return db


async def stored_alerts(db_url: str, plates: list[str], since: datetime) -> list[dict[str, Any]]:
    import asyncpg

    from store.demo import fleet_alerts

    conn = await asyncpg.connect(db_url)
    try:
        return await fleet_alerts(conn, plates, since)
    finally:
        await conn.close()


def quantiles_ms(values: list[float]) -> dict[str, Any]:
    """p50/p95/p99/max of seconds, in ms (nearest rank), and n."""
    if not values:
        return {"n": 0}
    v = sorted(values)

    def q(p: float) -> float:
        return round(v[min(len(v) - 1, max(0, math.ceil(p * len(v)) - 1))] * 1000, 1)

    return {"n": len(v), "p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": q(1.0)}


def alert_timings(log: ProbeLog, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """Match each SOS sent with its alert (plate, start = the SOS's fix time) and time it."""
    by_key = {
        (a["plate"], a["start_time"].astimezone(UTC)): a
        for a in alerts
        if a["type"] == "terminal_alarm" and (a["details"] or {}).get("name") == "emergency"
    }
    to_alert, to_browser, end_to_end, missing = [], [], [], 0
    for (plate, fix), sent in log.sent.items():
        a = by_key.get((plate, fix))
        if a is None:
            missing += 1
            continue
        created = a["created_at"].timestamp()
        to_alert.append(created - sent)
        seen = log.live.get(a["id"])
        if seen is not None:
            to_browser.append(seen[0] - created)
            end_to_end.append(seen[0] - sent)
    return {
        "scheduled": len(log.sent),
        "stored": len(log.sent) - missing,
        "seen_live": len(to_browser),
        "position_to_alert_ms": quantiles_ms(to_alert),
        "alert_to_browser_ms": quantiles_ms(to_browser),
        "position_to_browser_ms": quantiles_ms(end_to_end),
        "errors": log.errors,
    }


# -- per-second collection and progress ---------------------------------------------------------


class Collector:
    """Drains the workers' per-second counts (a thread) and samples /proc once a second."""

    def __init__(self, feed: Any, server: Server, procs: int) -> None:
        self.feed = feed
        self.server = server
        self.lock = threading.Lock()
        self.seconds: dict[int, dict[str, Any]] = {}
        self.hist: dict[int, int] = {}  # all so far
        self.open: dict[int, int] = {}  # worker → open connections
        self.hb_acked: dict[int, int] = {}
        self.samples: list[dict[str, Any]] = []  # one per second: t, cpu per pid, rss, pg cpu
        self.go: float | None = None
        self.stop = threading.Event()
        self.procs = procs
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while not self.stop.is_set():
            try:
                k, sec, sent, acked, delta, open_conns, hb = self.feed.get(timeout=0.2)
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return
            with self.lock:
                row = self.seconds.setdefault(sec, {"sent": 0, "acked": 0, "hist": {}, "open": {}})
                row["open"][k] = open_conns
                row["sent"] += sent
                row["acked"] += acked
                for i, n in delta.items():
                    row["hist"][i] = row["hist"].get(i, 0) + n
                    self.hist[i] = self.hist.get(i, 0) + n
                self.open[k] = open_conns
                self.hb_acked[k] = hb

    def sample(self) -> dict[str, Any]:
        """CPU seconds and RSS of each server process, PostgreSQL's CPU seconds, now."""
        pids = self.server.server_pids()
        exclude = {os.getpid(), *pids}
        pg = postgres_cpu(exclude, self.server.postgres_pid) if self.server.postgres_pid else {}
        s = {
            "t": time.monotonic(),
            "server": {pid: proc_cpu(pid) for pid in pids},
            "pg": pg,
        }
        self.samples.append(s)
        return s

    def p99_so_far(self) -> float:
        with self.lock:
            return hist_percentile(sorted(self.hist.items()), 0.99)


def usage_between(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Server CPU % per worker, RSS (MB, sum) and PostgreSQL CPU % between two samples."""
    wall = b["t"] - a["t"]
    if wall <= 0:
        return {"server_cpu_pct": [], "rss_mb": 0.0, "pg_cpu_pct": 0.0}
    cpu, rss = [], 0
    for pid, now in b["server"].items():
        before = a["server"].get(pid)
        if now is None:
            continue
        rss += now[1]
        if before is not None:
            cpu.append(round(100 * (now[0] - before[0]) / wall, 1))
    return {
        "server_cpu_pct": cpu,
        "rss_mb": round(rss / 2**20, 1),
        # per process: a backend that exits takes its CPU seconds with it
        "pg_cpu_pct": round(
            100 * sum(cpu - a["pg"].get(pid, 0.0) for pid, cpu in b["pg"].items()) / wall, 1
        ),
    }


def rss_bytes(server: Server) -> int:
    return sum((proc_cpu(pid) or (0.0, 0))[1] for pid in server.server_pids())


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the run ----------------------------------------------------------------------------------


def _config(plan: Plan, server: Server, terminals: int, procs: int) -> tuple[Config, lean_mod.Lean]:
    rate = plan.rate
    steps = tuple(plan.steps()) if plan.mode == "rate" and len(plan.steps()) > 1 else ()
    cfg = Config(
        host=server.host, port=server.port, terminals=terminals, phone_base=14600000000,
        plate_prefix="测L", window=32 if plan.mode == "rate" else 4, rate=rate,
        duration=plan.total_s(), drain_timeout=15.0,
        connect_concurrency=plan.connect_concurrency, setup_timeout=plan.setup_timeout,
        source_addrs=plan.source_addrs, procs=procs,
        start=lean_mod.past_start(max(rate, 1.0), plan.total_s(), terminals),
    )  # fmt: skip
    burst = 8 if plan.mode == "rate" else 1
    heartbeat = plan.heartbeat_s if plan.mode == "connections" else 0.0
    return cfg, lean_mod.Lean(burst=burst, steps=steps, heartbeat_s=heartbeat)


async def run(plan: Plan) -> dict[str, Any]:
    """The whole run; the report (also written under ``plan.out``)."""
    raise_nofile(0)
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    server = Server()
    try:
        if plan.server:
            server.attach(plan)
            say(f"loadtest: server {plan.server} (pid {server.pid or 'not found: no CPU'})")
        else:
            say(f"loadtest: starting serve --workers {plan.workers} on a fresh embedded PostGIS")
            await asyncio.to_thread(server.start, plan)
            say(f"loadtest: serve pid {server.pid}, JT/T 808 port {server.port}, "
                f"HTTP port {server.http_port}, workers {server.server_pids()}, "
                f"data in {server.work}")  # fmt: skip
        report = await _measure(plan, server, started, load_before)
        js, svg = write_report(plan, report)  # before the server stops: that can take a while
        print(summary_table(report))
        print(f"report: {js}\nchart:  {svg}", flush=True)
    finally:
        say("loadtest: " + await asyncio.to_thread(server.stop))
    return report


async def _measure(
    plan: Plan, server: Server, started: datetime, load_before: tuple[float, float, float]
) -> dict[str, Any]:
    terminals = plan.connections if plan.mode == "connections" else plan.terminals
    procs = plan.process_count(terminals)
    cfg, lean = _config(plan, server, terminals, procs)
    phones = cfg.phones()
    if server.db_url:
        await start_after_stored(cfg, server.db_url)
    if server.db_url and server.postgres_pid is None:
        server.postgres_pid = await postmaster_pid(server.db_url)
    password = await create_login(server.db_url) if server.db_url else None
    probes = Probes(server.host, server.port, plan.probes, plan.alert_every)
    client = task = None
    try:
        if plan.probes:
            await probes.connect()
        if password is not None:
            client, task = await watch_live(
                server.http_port, password, probes.log, set(probes.plates)
            )
        flush0 = await asyncio.to_thread(scrape_flush, server.http_port)
        await asyncio.sleep(1.0)
        rss_idle = rss_bytes(server)
        feed = mp.get_context("fork").Queue()
        col = Collector(feed, server, procs)
        go = asyncio.Event()
        loop = asyncio.get_running_loop()
        marks: dict[str, float] = {}

        def sync(phase: str) -> None:
            marks[phase] = time.monotonic()
            if phase == "go":
                marks["rss_go"] = rss_bytes(server)
                loop.call_soon_threadsafe(go.set)

        say(f"loadtest: {terminals:,} terminals over {procs} generator process(es), "
            f"{cfg.source_addrs} source addresses; logging in")  # fmt: skip
        job = asyncio.ensure_future(
            asyncio.to_thread(
                lean_mod.run, cfg, lean, server.server_pids(), server.postgres_pid, feed, sync
            )
        )
        waiter = asyncio.ensure_future(go.wait())
        await asyncio.wait({job, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if job.done():
            waiter.cancel()
            job.result()  # raises the workers' error
            raise LoadError("the generator ended before its run started")
        say(f"loadtest: logged in; running {plan.total_s():g} s")
        probe_task = (
            asyncio.create_task(probes.run(time.monotonic() + plan.total_s() - 2))
            if plan.probes
            else None
        )
        first = last = col.sample()
        per_second: list[dict[str, Any]] = []
        next_progress = time.monotonic() + plan.interval
        t0 = marks["go"]
        while not job.done():
            await asyncio.wait({job}, timeout=1.0)
            s = col.sample()
            u = usage_between(last, s)
            last = s
            per_second.append({"t": round(s["t"] - t0, 1), **u})
            if time.monotonic() >= next_progress:
                next_progress += plan.interval
                _progress(plan, lean, cfg, col, s, first, t0)
        stats, extra, sampled = job.result()
        end_sample = col.sample()
        if probe_task is not None:
            probe_task.cancel()
        rss_end = rss_bytes(server)
        await asyncio.sleep(2.0)  # the last alerts reach the socket
        flush1 = await asyncio.to_thread(scrape_flush, server.http_port)
        col.stop.set()
        col.thread.join(2)
        db = None
        if server.db_url:
            db = await settled_count(server.db_url, phones, cfg.start, stats.acked)
        alerts = await stored_alerts(server.db_url, probes.plates, started) if server.db_url else []
    finally:
        if client is not None:
            await client.close()
        if task is not None:
            task.cancel()
        await probes.close()
    report = _report(
        plan, cfg, stats, extra, sampled, db, col, per_second, first, end_sample, marks,
        {"idle": rss_idle, "go": marks.get("rss_go", 0), "end": rss_end},
        flush_delta(flush0, flush1), alert_timings(probes.log, alerts), started, load_before,
        server,
    )  # fmt: skip
    return report


def _progress(
    plan: Plan, lean: lean_mod.Lean, cfg: Config, col: Collector, s: dict[str, Any],
    first: dict[str, Any], t0: float,
) -> None:  # fmt: skip
    t = s["t"] - t0
    with col.lock:
        span = max(1, round(plan.interval))
        recent = [col.seconds.get(i, {}) for i in range(max(0, int(t) - span), int(t))]
        sent = sum(r.get("sent", 0) for r in recent)
        acked = sum(r.get("acked", 0) for r in recent)
        total_acked = sum(r["acked"] for r in col.seconds.values())
        conns = sum(col.open.values())
    n = max(1, len(recent))
    u = usage_between(col.samples[-6] if len(col.samples) > 6 else first, s)
    cpu = "/".join(f"{c:.0f}" for c in u["server_cpu_pct"])
    target = lean.rate_at(t, cfg.rate)
    say(
        f"[{t:6.0f} s] target {target:,.0f}/s  sent {sent / n:,.0f}/s  acked {acked / n:,.0f}/s"
        f"  acked total {total_acked:,}  p99 so far {col.p99_so_far():,.1f} ms"
        f"  server CPU % {cpu}  RSS {u['rss_mb']:,.0f} MB  PG CPU {u['pg_cpu_pct']:.0f}%"
        + (f"  connected {conns:,}" if plan.mode == "connections" else "")
    )


def _steps(plan: Plan, col: Collector, end_s: float) -> list[dict[str, Any]]:
    """Per step of the ramp (and the hold): sent, acked, rates and ack latency."""
    steps = plan.steps()
    out = []
    for k, (start, rate) in enumerate(steps):
        stop = steps[k + 1][0] if k + 1 < len(steps) else math.inf
        rows = [r for sec, r in col.seconds.items() if start <= sec < stop]
        hist: dict[int, int] = {}
        for r in rows:
            for i, n in r["hist"].items():
                hist[i] = hist.get(i, 0) + n
        seconds = min(stop, end_s) - start
        pairs = sorted(hist.items())
        out.append({
            "rate": rate, "from_s": start, "seconds": round(seconds, 1),
            "sent": sum(r["sent"] for r in rows), "acked": sum(r["acked"] for r in rows),
            "sent_per_s": round(sum(r["sent"] for r in rows) / seconds, 1) if seconds else 0,
            "acked_per_s": round(sum(r["acked"] for r in rows) / seconds, 1) if seconds else 0,
            **{f"ack_{q}_ms": round(hist_percentile(pairs, v), 2)
               for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))},
        })  # fmt: skip
    return out


def _report(
    plan: Plan, cfg: Config, st: Stats, extra: dict[str, int], sampled: dict[str, Any],
    db: dict[str, Any] | None, col: Collector, per_second: list[dict[str, Any]],
    first: dict[str, Any], end: dict[str, Any], marks: dict[str, float], rss: dict[str, int],
    flush: dict[str, Any], alerts: dict[str, Any], started: datetime,
    load_before: tuple[float, float, float], server: Server,
) -> dict[str, Any]:  # fmt: skip
    gen = summary(cfg, st, sampled, db)
    run_s = end["t"] - marks["go"]
    seconds = []  # the workers' counts of each second, its p99, the /proc sample nearest its end
    for sec in sorted(col.seconds):
        r = col.seconds[sec]
        near = min(per_second, key=lambda p: abs(p["t"] - sec - 1), default={})
        seconds.append({
            "t": sec + 1, "target": lean_rate(plan, sec), "sent": r["sent"], "acked": r["acked"],
            "connected": sum(r["open"].values()),
            "ack_p99_ms": round(hist_percentile(sorted(r["hist"].items()), 0.99), 2),
            **{k: v for k, v in near.items() if k != "t"},
        })  # fmt: skip
    whole = usage_between(first, end)
    report: dict[str, Any] = {
        "mode": plan.mode,
        "started": started.isoformat(timespec="seconds"),
        "command": "fleetwatch loadtest "
        + " ".join(sys.argv[2:] if sys.argv[1:2] == ["loadtest"] else sys.argv[1:]),
        "host": {
            "cpus": os.cpu_count(),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
        },
        "plan": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(plan).items()},
        "server": {"external": server.external, "workers": len(server.server_pids()) or None},
        "sent": st.sent,
        "acked": st.acked,
        "failed": st.failed,
        "unacked": st.unacked,
        "stored": db["stored"] if db else None,
        "duplicates": db["duplicates"] if db else None,
        "exactly_once": bool(db and db["stored"] == st.acked and db["duplicates"] == 0),
        "setup_s": round(st.setup_s, 1),  # connect, register, authenticate every terminal
        "run_s": round(run_s, 1),
        "acked_per_s": round(st.acked / st.send_s, 1) if st.send_s else 0.0,
        "ack_latency_ms": {
            "p50": round(st.percentile(0.5), 2),
            "p95": round(st.percentile(0.95), 2),
            "p99": round(st.percentile(0.99), 2),
            "max": round(st.lat_max_ns / 1e6, 2),
        },
        "steps": _steps(plan, col, st.send_s),
        "alerts": alerts,
        "server_cpu_pct_per_worker": whole["server_cpu_pct"],
        "server_rss_mb": whole["rss_mb"],
        "postgres_cpu_pct": whole["pg_cpu_pct"],
        "writer_flush": flush,
        "loadgen": {"processes": cfg.procs, "cpu": gen["loadgen_cpu"], **extra},
        "per_second": seconds,
    }
    if plan.mode == "connections":
        connected = st.connected_end
        report["connections"] = {
            "requested": plan.connections,
            "authenticated": st.authenticated,
            "connected_at_end": connected,
            "disconnects": st.disconnects,
            "heartbeats_sent": st.heartbeats,
            "heartbeats_acked": st.heartbeats_acked,
            "rss_idle_mb": round(rss["idle"] / 2**20, 1),
            "rss_connected_mb": round(rss["go"] / 2**20, 1),
            "rss_end_mb": round(rss["end"] / 2**20, 1),
            "rss_per_connection_kb": (
                round((rss["go"] - rss["idle"]) / st.authenticated / 1024, 2)
                if st.authenticated
                else None
            ),
            # RSS keeps growing while they stay (buffers, session state): the end's view too
            "rss_per_connection_end_kb": (
                round((rss["end"] - rss["idle"]) / st.authenticated / 1024, 2)
                if st.authenticated
                else None
            ),
        }
    return report


def lean_rate(plan: Plan, second: float) -> float:
    """The target rate during ``second`` (its start)."""
    rate = plan.steps()[0][1]
    for start, step_rate in plan.steps():
        if second >= start:
            rate = step_rate
    return rate


def report_name(plan: Plan, started: datetime) -> str:
    what = f"rate{plan.rate:g}" if plan.mode == "rate" else f"connections{plan.connections}"
    tag = f"-{plan.tag}" if plan.tag else ""
    return f"{started:%Y%m%d-%H%M%S}-{what}{tag}"


def write_report(plan: Plan, report: dict[str, Any]) -> tuple[Path, Path]:
    from loadtest.chart import chart_svg

    plan.out.mkdir(parents=True, exist_ok=True)
    name = report_name(plan, datetime.fromisoformat(report["started"]))
    js, svg = plan.out / f"{name}.json", plan.out / f"{name}.svg"
    js.write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n")
    svg.write_text(chart_svg(report))
    return js, svg


def summary_table(report: dict[str, Any]) -> str:
    """The human summary (stdout)."""
    lat = report["ack_latency_ms"]
    al = report["alerts"]
    rows = [
        ("mode", report["mode"] + f" ({report['command']})"),
        (
            "load average before/after",
            f"{report['host']['load_before']} / {report['host']['load_after']}",
        ),
        (
            "sent / acked / stored",
            f"{report['sent']:,} / {report['acked']:,} / "
            f"{report['stored'] if report['stored'] is not None else '-':,}",
        ),
        (
            "duplicates, unacked, failed",
            f"{report['duplicates']}, {report['unacked']}, {report['failed']}",
        ),
        ("exactly once", "yes" if report["exactly_once"] else "NO"),
        ("acked/s over the run", f"{report['acked_per_s']:,.0f}"),
        (
            "ack ms p50/p95/p99/max",
            f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} / {lat['max']:.1f}",
        ),
    ]
    for s in report["steps"]:
        rows.append(
            (f"  step {s['rate']:,.0f}/s from {s['from_s']:g} s",
             f"acked {s['acked_per_s']:,.0f}/s, ack p50 {s['ack_p50_ms']:.1f} p95 "
             f"{s['ack_p95_ms']:.1f} p99 {s['ack_p99_ms']:.1f} max {s['ack_max_ms']:.1f} ms")
        )  # fmt: skip
    for name in ("position_to_alert_ms", "alert_to_browser_ms", "position_to_browser_ms"):
        q = al[name]
        rows.append(
            (name.replace("_ms", "").replace("_", " ") + " ms",
             f"p50 {q['p50']} p95 {q['p95']} p99 {q['p99']} max {q['max']} (n={q['n']})"
             if q["n"] else "none measured")
        )  # fmt: skip
    rows.append(("alerts scheduled/stored/live", f"{al['scheduled']}/{al['stored']}/"
                 f"{al['seen_live']}"))  # fmt: skip
    rows.append(("server CPU % per worker", str(report["server_cpu_pct_per_worker"])))
    rows.append(("server RSS MB", str(report["server_rss_mb"])))
    rows.append(("PostgreSQL CPU %", str(report["postgres_cpu_pct"])))
    fl = report["writer_flush"]
    rows.append(("writer flushes, mean ms", f"{fl['flushes']:,}, {fl['mean_ms']}"))
    gen = report["loadgen"]["cpu"]
    if report["mode"] == "rate":  # with --connections its CPU goes to heartbeats mostly
        rows.append(("generator µs/position", str(gen["us_per_position"])))
    c = report.get("connections")
    if c:
        rows += [
            ("connections requested/authenticated/at end",
             f"{c['requested']:,} / {c['authenticated']:,} / {c['connected_at_end']:,}"),
            ("heartbeats sent/acked", f"{c['heartbeats_sent']:,} / {c['heartbeats_acked']:,}"),
            ("server RSS idle → connected MB", f"{c['rss_idle_mb']} → {c['rss_connected_mb']}"),
            ("RSS per connection KB (all in / at end)",
             f"{c['rss_per_connection_kb']} / {c['rss_per_connection_end_kb']}"),
            ("setup (connect + register + auth) s", str(report["setup_s"])),
        ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(plan: Plan) -> int:
    """Run, write the report, print the summary; 0 when every acknowledged position was
    stored exactly once (and, with --connections, every terminal stayed connected)."""
    report = asyncio.run(run(plan))
    ok = report["acked"] > 0 and (report["exactly_once"] or report["stored"] is None)
    c = report.get("connections")
    if c:
        ok = ok and c["connected_at_end"] == c["requested"]
    return 0 if ok else 1
