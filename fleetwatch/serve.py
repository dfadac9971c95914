"""``fleetwatch serve``: wire the store, the ingest servers and the HTTP endpoint together.

With no ``--db``, a private PostgreSQL+PostGIS cluster is started under ``--data-dir`` and
stopped on exit. Ctrl-C (or SIGTERM) stops accepting connections, flushes the writer so every
position already received is durable and acknowledged, then stops the database.
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import os
import secrets
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from fleetwatch.dbopts import DEFAULT_DATA_DIR
from ingest.values import DEFAULT_LIMITS, ValueLimits


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port (0-65535)")
    return value


def _rules_config(path: str) -> str:
    """The path, once it reads as a JSON object (a mistake shows at once, not after start-up)."""
    from alerts.supervision import load_config

    try:
        load_config(path)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # JSONDecodeError too
        raise argparse.ArgumentTypeError(f"{path}: not a JSON object ({exc})") from None
    return path


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the JT/T 808 and NMEA servers with their PostGIS store",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(DEFAULT_DATA_DIR),
        help="where the embedded database, spool and media live "
        "(default: $FLEETWATCH_DATA_DIR or ./data)",
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        help="use this PostgreSQL server (postgresql://...) instead of the embedded one",
    )
    parser.add_argument("--jt808-port", type=_port, default=6808, help="JT/T 808 TCP port")
    parser.add_argument("--nmea-port", type=_port, default=0, help="NMEA 0183 TCP port (0 = off)")
    parser.add_argument(
        "--http-port", type=_port, default=8080, help="HTTP port: the dashboard, its API, /metrics"
    )
    parser.add_argument(
        "--listen",
        "--host",
        dest="listen",
        metavar="ADDR",
        default="0.0.0.0",
        help="address the terminal ports (JT/T 808, NMEA) listen on (default: all interfaces)",
    )
    parser.add_argument(
        "--http-listen",
        metavar="ADDR",
        default="127.0.0.1",
        help="address the HTTP port (dashboard, /metrics) listens on "
        "(default: 127.0.0.1, this host only)",
    )
    parser.add_argument(
        "--secure-cookies",
        action="store_true",
        help="mark the dashboard's cookies Secure (browsers then send them over HTTPS only): "
        "use it when a TLS proxy serves the dashboard",
    )
    parser.add_argument(
        "--spool-budget-mb",
        type=_positive,
        default=2048,
        metavar="MB",
        help="disk each worker's spool may use while the database is away; at the budget new "
        "reports are not acknowledged (terminals send them again later) (default: 2048)",
    )
    parser.add_argument(
        "--policy",
        choices=("open", "known"),
        default="open",
        help="open: unknown terminals are provisioned into the unassigned pool "
        "on registration; known: only vehicles provisioned beforehand",
    )
    parser.add_argument(
        "--retention-days",
        type=int,
        default=190,
        help="days of track history to keep (at least 183)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text: classic lines; json: one flat object per line (ts, level, logger, msg, "
        "fields) for log shippers",
    )
    parser.add_argument(
        "--max-ahead",
        type=_positive_float,
        default=DEFAULT_LIMITS.max_ahead_s,
        metavar="SECONDS",
        help="a fix time further ahead of its arrival is stored flagged and never becomes the "
        "vehicle's last position (default: %(default)g)",
    )
    parser.add_argument(
        "--max-speed",
        type=_positive_float,
        default=DEFAULT_LIMITS.max_speed_kmh,
        metavar="KMH",
        help="reported speeds above this are flagged as implausible (default: %(default)g)",
    )
    parser.add_argument(
        "--rules-config",
        type=_rules_config,
        metavar="FILE",
        help="JSON: supervision rules, automatic actions, escalation and enforcement "
        "(see alerts/supervision.py; default: the regulations' values)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="ingest processes sharing the TCP ports (one Python process uses one core)",
    )
    parser.add_argument(
        "--tiles",
        metavar="URL|FILE.mbtiles",
        help="real map tiles under the offline base map: an XYZ template "
        "(https://host/{z}/{x}/{y}.png, fetched by the browser) or a raster MBTiles file "
        "(served at /tiles/{z}/{x}/{y}); default: the offline base map only",
    )
    parser.add_argument(
        "--tiles-gcj02",
        action="store_true",
        help="the --tiles are drawn in GCJ-02 (Chinese providers): the map shifts markers and "
        "overlays WGS-84 -> GCJ-02 for display",
    )
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    # The run all workers of one serve share (rule state: what an earlier run left is restored).
    parser.add_argument("--generation", default=None, help=argparse.SUPPRESS)
    guard = parser.add_argument_group("limits (see docs/decisions.md)")
    guard.add_argument(
        "--pre-auth-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="close connections not authenticated within S seconds (default 30)",
    )
    guard.add_argument(
        "--max-per-address",
        type=int,
        default=256,
        metavar="N",
        help="open connections per source address (0 = no cap; default 256)",
    )
    guard.add_argument("--registration-rate", type=float, default=20.0, metavar="N",
                       help="registrations a second under --policy open, N/10 per address "
                       "(0 = no limit; default 20)")  # fmt: skip
    parser.set_defaults(handler=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


#: The writer's statistics, as counters ``fleetwatch_<name>_total``.
WRITER_COUNTERS = {
    "writer_flushes": "writer flushes (one transaction, or one spool append)",
    "writer_flushes_diverted": "flushes not committed within the ack deadline, spooled instead",
    "rows_written": "rows committed directly",
    "rows_spooled": "rows acknowledged from the spool",
    "rows_replayed": "rows moved from the spool into the database",
    "rows_stored_late": "spooled rows not replayed: their diverted flush committed after all",
    "rows_refused": "rows neither committed nor spooled (spool full, values the database "
    "refuses): not acknowledged",
    "rows_rejected": "spooled rows the database refused on replay, set aside in rejected.jsonl",
    "db_failures": "failed database operations of the writer",
}


class Server:
    """Everything ``serve`` runs, started and stopped in order (inside the reactor)."""

    def __init__(self, args: argparse.Namespace, url: Callable[[], str]) -> None:
        self.args = args
        self.url = url  # read at each connect: a restarted embedded cluster may move its socket
        self.adopted: list[Any] = []  # writers replaying spools no live worker owns
        self.ports: list[Any] = []
        self.loops: list[Any] = []
        self.writer: Any = None
        self.pool: Any = None
        self.service: Any = None
        self.supervision: Any = None
        self.gateway: Any = None
        self.live: Any = None  # worker 0: the dashboard's live hub; others: the position relay
        self.gate = _accept_gate()
        self.tiles: Any = getattr(args, "tile_source", None)  # checked by run()

    async def start(self) -> None:
        import asyncpg
        from twisted.internet import reactor
        from twisted.web.server import Site

        from alerts.gateway import STATS as GATEWAY_STATS
        from alerts.gateway import CommandGateway
        from alerts.supervision import Supervision, load_config
        from fleetwatch.logs import say
        from ingest.auth_cache import AuthCache
        from ingest.directory import Directory
        from ingest.jt808_server import IngestService, JT808Factory
        from ingest.media import MediaStore
        from ingest.metrics import Metrics
        from ingest.metrics_resource import MetricsExchange, MetricsResource
        from ingest.positions import revive
        from maps.web import dashboard_root
        from store.migrations import migrate, wait_until_migrated
        from store.spool import Spool
        from store.writer import PositionWriter, refresh_last_positions

        args = self.args
        self.pool = await asyncpg.create_pool(min_size=1, max_size=8, connect=self.connect)
        if args.worker_index == 0:
            async with self.pool.acquire() as conn:
                await migrate(conn)
                await refresh_last_positions(conn)
            await self.maintain()
        else:  # worker 0 migrates meanwhile: nothing here may touch a table before it has
            async with self.pool.acquire() as conn:
                await wait_until_migrated(conn)
        metrics = Metrics()
        spool = Spool(
            args.data_dir / "spool" / f"worker-{args.worker_index}",
            budget_bytes=args.spool_budget_mb << 20,
        )
        flush_seconds = metrics.histogram(
            "fleetwatch_writer_flush_seconds", "duration of a writer flush (one transaction)"
        )
        self.writer = PositionWriter(self.connect, spool, on_flush=flush_seconds.observe)
        codes = AuthCache(args.data_dir / "run" / "auth", args.worker_index, args.workers)
        directory = Directory(self.pool, args.policy, cache=codes)
        limits = ValueLimits(args.max_ahead, args.max_speed)
        self.service = IngestService(
            directory, self.writer.write, metrics,
            media=MediaStore(args.data_dir / "media", self.pool),
            pre_auth_timeout=args.pre_auth_timeout, max_per_address=args.max_per_address,
            registration_rate=args.registration_rate, gate=self.gate, limits=limits,
        )  # fmt: skip
        self.gateway = gateway = CommandGateway(self.pool, self.url(), self.service.terminals)
        await gateway.start()
        for name, meaning in GATEWAY_STATS.items():
            metrics.gauge(
                f"fleetwatch_gateway_{name}", meaning,
                lambda name=name: gateway.stats[name],  # type: ignore[misc]
            )  # fmt: skip
        self.supervision = Supervision(
            self.pool, self.gateway, load_config(args.rules_config),
            metrics=metrics, worker_index=args.worker_index, generation=args.generation,
            revive=revive,
        )  # fmt: skip
        self.service.observer = self.supervision
        self.writer.subscribe(self.supervision.durable)
        await self.supervision.start()
        self.writer.start()
        writer = self.writer
        metrics.gauge(
            "fleetwatch_writer_queue_rows",
            "positions waiting to be durable",
            lambda: writer.queue_depth,
        )
        metrics.gauge("fleetwatch_spool_bytes", "bytes in the spool", lambda: spool.bytes)
        metrics.gauge(
            "fleetwatch_writer_last_flush_seconds",
            "duration of the last flush",
            lambda: writer.stats.last_flush_s,
        )
        for name, help_text in WRITER_COUNTERS.items():
            metrics.counter(
                f"fleetwatch_{name}_total", help_text, partial(getattr, writer.stats, name)
            )

        self.ports.append(self.listen(args.jt808_port, JT808Factory(self.service)))
        self.gate.watch(self.ports[-1])
        services = [self.service]
        if args.nmea_port:
            from ingest.nmea_server import NmeaFactory, NmeaService, find_vehicle_id

            async def lookup(identifier: str) -> int | None:
                return await find_vehicle_id(self.pool, identifier)

            nmea = NmeaService(lookup, self.writer.submit, metrics, limits=limits)
            services.append(nmea)
            nmea.gate = self.gate
            self.ports.append(self.listen(args.nmea_port, NmeaFactory(nmea)))
            self.gate.watch(self.ports[-1])

        def pressure(on: bool) -> None:
            for service in services:
                service.set_pressure(on)

        self.writer.on_pressure = pressure
        exchange = MetricsExchange(args.data_dir / "run" / "metrics", args.workers)
        if args.worker_index == 0:  # one /metrics, adding up every worker's
            tiles = self.tiles
            root = dashboard_root(
                await self.dashboard_api(metrics), tile_origin=tiles.origin if tiles else None
            )
            if tiles is not None and tiles.file is not None:
                from maps.tiles import MBTilesResource

                root.putChild(b"tiles", MBTilesResource(tiles))
            root.putChild(b"metrics", MetricsResource(metrics, exchange.others))
            site: Any = Site(root)  # a ServerFactory in all but its stubs
            self.ports.append(reactor.listenTCP(args.http_port, site, interface=args.http_listen))  # type: ignore[attr-defined]
        else:
            from maps.live import PositionRelay

            self.live = relay = PositionRelay(self.pool)  # positions to worker 0's live feed
            self.writer.subscribe(relay.durable)
            relay.start()
            metrics.counter(
                "fleetwatch_live_relayed_total",
                "positions sent to the dashboard's worker",
                lambda: relay.notified,
            )
            publish = partial(_publish, exchange, args.worker_index, metrics)
            self.every(1.0, publish, "metrics publication")
        self.every(2.0, lambda: self.service.sweep(_monotonic()), "the sweep")
        self.every(60.0, lambda: _aio(directory.refresh_cache()), "the auth-code cache check")
        if args.worker_index == 0:
            self.every(3600.0, lambda: _aio(self.maintain()), "partition maintenance")
            self.every(5.0, self.adopt_spools, "spool adoption", now=True)
        for port in self.ports:
            host = port.getHost()
            say(f"fleetwatch: listening on {host.host}:{host.port}")
        tune_gc()

    async def dashboard_api(self, metrics: Any) -> Any:
        """``/api``: the Api and its features, wired to this worker's gateway and rules, and
        the live feed (this writer's positions, the other workers', every alert change)."""
        from ingest.positions import ignition_of, status_names
        from maps.alarms import AlarmApi
        from maps.api import Api
        from maps.geofences import GeofenceApi
        from maps.live import STATS as LIVE_STATS
        from maps.live import LiveHub
        from maps.live_socket import LiveApi
        from maps.panel import PanelApi
        from maps.tiles import BaseMapApi
        from maps.tracks import TrackApi

        self.live = hub = LiveHub(self.pool, self.url())
        hub.ignition = ignition_of
        await hub.start()
        self.writer.subscribe(hub.durable)
        for name, meaning in LIVE_STATS.items():
            metrics.gauge(
                f"fleetwatch_live_{name}", meaning,
                lambda name=name: hub.stats[name],  # type: ignore[misc]
            )  # fmt: skip
        metrics.gauge("fleetwatch_live_sockets", "open live sockets", lambda: len(hub.clients))
        api = Api(
            self.pool, self.acknowledge, ignition=ignition_of,
            secure_cookies=self.args.secure_cookies,
        )  # fmt: skip
        return api.resource(
            GeofenceApi(api),
            BaseMapApi(api, self.tiles),
            AlarmApi(api, self.gateway),
            PanelApi(api, self.gateway, fences=self.supervision.index,
                     settings=self.supervision.settings, status_names=status_names),
            TrackApi(api),
            LiveApi(api, hub),
        )  # fmt: skip

    async def acknowledge(self, alert_id: int, by: str) -> Any:
        """The dashboard's acknowledgement: the supervision service's (a terminal alarm is
        confirmed to its terminal with 0x8203 at once)."""
        alert, _ = await self.supervision.acknowledge(alert_id, by)
        return alert

    def addresses(self) -> list[tuple[str, str]]:
        """(what, host:port) of every listening port, for the start-up banner."""
        out = []
        for port in self.ports:
            host = port.getHost()
            kind = type(port.factory).__name__.removesuffix("Factory").lower()
            if kind == "site":  # the dashboard and /metrics share the HTTP port
                out.append(("dashboard", f"http://{host.host}:{host.port}/"))
                out.append(("metrics", f"http://{host.host}:{host.port}/metrics"))
                continue
            name = {"jt808": "JT/T 808", "nmea": "NMEA"}.get(kind, kind)
            out.append((name, f"{host.host}:{host.port}"))
        return out

    def every(
        self, seconds: float, call: Callable[[], object], name: str, now: bool = False
    ) -> None:
        """Run ``call`` every ``seconds`` until stop (``ingest.jobs.every``: a failure is
        logged and the loop goes on)."""
        from ingest.jobs import every

        self.loops.append(every(seconds, call, name, now=now))

    async def connect(self, *_: Any, **kwargs: Any) -> Any:
        """A database connection to wherever the database is now (the pool's and writers')."""
        import asyncpg

        from store.cluster import ClusterError

        try:
            url = self.url()
        except ClusterError as exc:  # the embedded cluster is down (being restarted)
            raise ConnectionRefusedError(str(exc)) from None
        return await asyncpg.connect(url, **kwargs)

    def adopt_spools(self) -> None:
        """Replay every spool under the data dir that no live worker owns (left by a run with
        more workers, or by a worker that died): each gets a writer of its own, closed once
        its spool is empty. Runs at start and every few seconds in worker 0."""
        from store.spool import unowned_spools
        from store.writer import PositionWriter

        for writer in [w for w in self.adopted if w.spool.empty]:
            self.adopted.remove(writer)
            _aio(writer.close())
        keep = frozenset(f"worker-{k}" for k in range(self.args.workers))
        for spool in unowned_spools(self.args.data_dir / "spool", keep):
            _logger().info("replaying {dir}, which no worker owns", dir=str(spool.directory))
            writer = PositionWriter(self.connect, spool)
            writer.start()
            self.adopted.append(writer)

    def database_restarted(self) -> None:
        """The embedded cluster is back: drop dead pooled connections, replay at once."""
        if self.pool is not None:
            _aio(self.pool.expire_connections())
        for writer in (self.writer, *self.adopted):
            if writer is not None:
                writer.retry_now()

    def listen(self, port: int, factory: Any) -> Any:
        from twisted.internet import reactor

        from ingest.listen import listen_shared

        if self.args.workers > 1:
            return listen_shared(reactor, port, factory, self.args.listen)
        return reactor.listenTCP(port, factory, backlog=4096, interface=self.args.listen)  # type: ignore[attr-defined]

    async def maintain(self) -> None:
        """Partitions ahead of time, whole-partition retention, old command records."""
        from store import commands
        from store.partitions import drop_expired, ensure_partitions

        today = datetime.now(UTC).date()
        async with self.pool.acquire() as conn:
            await ensure_partitions(conn, today)
            await drop_expired(conn, today, self.args.retention_days)
            await commands.prune(conn, datetime.now(UTC) - COMMAND_RECORDS)

    async def stop(self) -> None:
        import asyncio

        from twisted.internet.defer import gatherResults

        for loop in self.loops:
            if loop.running:
                loop.stop()
        await _as_future(gatherResults([port.stopListening() for port in self.ports]))
        if self.writer is not None:
            await self.writer.close()  # acks for everything received go out before we close
        for writer in self.adopted:
            await writer.close()
        if self.supervision is not None:
            await self.supervision.stop()  # the alerts of those last positions are stored
        if self.live is not None:
            await self.live.stop()
        if self.gateway is not None:
            await self.gateway.stop()
        if self.service is not None:
            for conn in list(self.service.connections):
                conn.close("server shutting down")
        if self.pool is not None:
            try:  # lookups abandoned while the database froze may still hold connections
                await asyncio.wait_for(self.pool.close(), 5.0)
            except TimeoutError:
                self.pool.terminate()


def _publish(exchange: Any, index: int, metrics: Any) -> None:
    exchange.publish(index, metrics.snapshot())


def _logger() -> Any:
    from twisted.logger import Logger

    return Logger(namespace="fleetwatch.serve")


def _accept_gate() -> Any:
    """Raise the open-file limit as far as allowed and say how many terminals that holds."""
    from fleetwatch.logs import say
    from ingest.limits import AcceptGate, connection_capacity, raise_descriptor_limit

    before, after = raise_descriptor_limit()
    gate = AcceptGate(connection_capacity())
    say(f"fleetwatch: open-file limit {after} (was {before}): up to {gate.capacity} "
        "terminal connections", capacity=gate.capacity)  # fmt: skip
    return gate


def _monotonic() -> float:
    import time

    return time.monotonic()


def _aio(coro: Any) -> Any:
    from ingest.jt808_server import aio

    return aio(coro)


async def _as_future(d: Any) -> Any:
    import asyncio

    return await d.asFuture(asyncio.get_running_loop())


#: How long the records of commands sent between processes are kept.
COMMAND_RECORDS = timedelta(days=90)
#: Cyclic GC thresholds for a running server (Python's are 700, 10, 10).
GC_THRESHOLDS = (10_000, 50, 1_000)


def tune_gc() -> None:
    """Once started: freeze what start-up allocated and collect cycles less often.

    Almost everything the hot path allocates is freed by reference counting, but with Python's
    thresholds the collector still walked the long-lived heap (rule state, caches, asyncio and
    Twisted objects) so often that it cost ~25 µs per position: 17.7k -> 23.1k positions/s
    with 2 workers and the rules on (60 s runs of loadtest.load_jt808, this 2-core machine).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(args: argparse.Namespace) -> int:
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor
    from twisted.logger import LogLevel

    from fleetwatch import console
    from fleetwatch.logs import say, start_logging
    from fleetwatch.processes import ClusterWatch, ParentWatch, Workers, die_with_parent
    from ingest.metrics_resource import MetricsExchange
    from store.cluster import EmbeddedCluster

    start_logging(args.log_format)
    if args.worker_index > 0 and not die_with_parent(args.parent_pid):
        say("fleetwatch: the serve process that started this worker is gone")
        return 1
    try:
        console.prepare_data_dir(args.data_dir)
    except console.UsageProblem as exc:
        say(f"fleetwatch serve: error: {exc}", level=LogLevel.critical)
        return 1
    args.tile_source = None
    if args.tiles and args.worker_index == 0:
        from maps.tiles import TilesError, tile_source

        try:
            args.tile_source = tile_source(args.tiles, args.tiles_gcj02)
        except TilesError as exc:
            say(f"fleetwatch serve: error: --tiles {exc}", level=LogLevel.critical)
            return 1
    elif args.tiles_gcj02 and not args.tiles:
        say("fleetwatch serve: error: --tiles-gcj02 needs --tiles", level=LogLevel.critical)
        return 1
    if args.worker_index == 0:
        lock = open(args.data_dir / "serve.lock", "w")  # noqa: SIM115 - held until exit
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(
                f"fleetwatch serve: error: another 'fleetwatch serve' uses {args.data_dir}: "
                "stop it first, or give this one its own --data-dir",
                level=LogLevel.critical,
            )
            return 1
    cluster = None
    if args.db is not None:

        def url() -> str:
            return str(args.db)
    else:
        cluster = EmbeddedCluster.in_data_dir(args.data_dir)
        if args.worker_index == 0:
            try:
                cluster.start()
            except Exception as exc:
                say(f"fleetwatch serve: error: {console.describe(exc)}", level=LogLevel.critical)
                return 1

        def url() -> str:
            return cluster.url  # where it listens now (the socket may move on a restart)

    if args.generation is None:
        args.generation = secrets.token_hex(6)
    server = Server(args, url)
    workers = None
    if args.worker_index == 0:
        MetricsExchange(args.data_dir / "run" / "metrics", args.workers).clear()
        workers = Workers(args.workers, partial(_worker_command, args))
        workers.start()
        reactor.callWhenRunning(server.every, 0.5, workers.check, "worker supervision")  # type: ignore[attr-defined]
        if cluster is not None:
            watch = ClusterWatch(cluster, server.database_restarted)
            reactor.callWhenRunning(server.every, 1.0, watch.check, "the PostgreSQL watch")  # type: ignore[attr-defined]
    else:
        parent = ParentWatch(args.parent_pid, lambda: reactor.callLater(0, _stop_reactor, reactor))  # type: ignore[attr-defined]
        reactor.callWhenRunning(server.every, 1.0, parent.check, "the parent watch")  # type: ignore[attr-defined]
        if cluster is not None:  # worker 0 restarts it; this one only notices it is back
            back = ClusterWatch(cluster, server.database_restarted, restart=False)
            reactor.callWhenRunning(server.every, 1.0, back.check, "the PostgreSQL watch")  # type: ignore[attr-defined]
    status = {"code": 0}

    def started_failed(failure: Any) -> None:
        problem = console.describe(failure.value, args.db)
        say(f"fleetwatch serve: error: {problem}", level=LogLevel.critical, error=problem)
        console.debug_traceback(failure.value)
        status["code"] = 1
        reactor.stop()  # type: ignore[attr-defined]

    def started(_: object) -> None:
        if args.worker_index == 0:
            console.announce(args.data_dir, url(), cluster is not None, server.addresses())

    reactor.callWhenRunning(lambda: _aio(server.start()).addCallbacks(started, started_failed))  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger("before", "shutdown", lambda: _aio(server.stop()))  # type: ignore[attr-defined]
    if workers is not None:
        reactor.addSystemEventTrigger("during", "shutdown", workers.stop)  # type: ignore[attr-defined]
    try:
        reactor.run()  # type: ignore[attr-defined]
    finally:
        if workers is not None:
            workers.stop()
        if cluster is not None and args.worker_index == 0:
            cluster.stop()
    return status["code"]


def _worker_command(args: argparse.Namespace, index: int) -> list[str]:
    """Worker ``index``: the same server on the same ports (SO_REUSEPORT) and database."""
    command = [
        sys.executable, "-m", "fleetwatch.cli", "serve",
        "--data-dir", str(args.data_dir), "--jt808-port", str(args.jt808_port),
        "--nmea-port", str(args.nmea_port), "--listen", args.listen, "--policy", args.policy,
        "--log-format", args.log_format, "--workers", str(args.workers),
        "--max-ahead", str(args.max_ahead), "--max-speed", str(args.max_speed),
        "--spool-budget-mb", str(args.spool_budget_mb), "--worker-index", str(index),
        "--parent-pid", str(os.getpid()), "--generation", args.generation,
        "--pre-auth-timeout", str(args.pre_auth_timeout),
        "--max-per-address", str(args.max_per_address),
        "--registration-rate", str(args.registration_rate),
    ]  # fmt: skip
    if args.db:
        command += ["--db", args.db]
    if args.rules_config:
        command += ["--rules-config", args.rules_config]
    return command


def _stop_reactor(reactor: Any) -> None:
    if reactor.running:
        reactor.stop()
