"""``fleetwatch loadtest``: measure the server from outside and write a load report.

Starts ``serve --workers N`` on a fresh embedded PostGIS in a temp directory (or uses a
running one: ``--server --db --http``), then either ramps the position rate in steps up to
``--rate`` and holds it, or opens ``--connections`` terminals kept alive with heartbeats.
Measures sent / acknowledged / stored, ack latency per step, position → alert and alert →
browser latency, server and PostgreSQL CPU, RSS and the writer's flush times; writes a JSON
report and an SVG chart under ``--out``. The logic is in ``loadtest/loadrun.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "fleetwatch loadtest"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "loadtest",
        help="measure the server under load (rate ramp or connections) and write a report",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--rate", type=float, metavar="R", help="positions/s to reach and hold")
    what.add_argument("--connections", type=int, metavar="N", help="terminals to keep connected")
    p.add_argument(
        "--ramp",
        type=float,
        default=0.0,
        metavar="STEP",
        help="climb to --rate in steps of STEP positions/s (default: no ramp)",
    )
    p.add_argument(
        "--step-seconds",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds per ramp step (default 30)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to hold --rate, or to keep the connections (default 60)",
    )
    p.add_argument(
        "--terminals", type=int, default=2000, help="terminals sending at --rate (default 2000)"
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=60.0,
        metavar="S",
        help="--connections: each terminal's heartbeat interval (default 60)",
    )
    p.add_argument(
        "--position-rate",
        type=float,
        default=None,
        metavar="R",
        help="--connections: positions/s in total (default: one per terminal a minute)",
    )
    p.add_argument("--workers", type=int, default=2, help="serve --workers (own server)")
    p.add_argument(
        "--procs",
        type=int,
        default=0,
        help="generator processes (default: enough for the open-file limit)",
    )
    p.add_argument("--source-addrs", type=int, default=8, help="127.0.0.2.. source addresses")
    p.add_argument("--connect-concurrency", type=int, default=200, help="handshakes in flight")
    p.add_argument(
        "--alert-every",
        type=float,
        default=5.0,
        metavar="S",
        help="an SOS probe every S seconds (default 5)",
    )
    p.add_argument("--probes", type=int, default=4, help="alert probe terminals (0: none)")
    p.add_argument(
        "--interval",
        type=float,
        default=5.0,
        metavar="S",
        help="progress on stderr every S seconds (default 5)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("loadtest/reports"),
        metavar="DIR",
        help="where the JSON report and SVG chart go (default loadtest/reports)",
    )
    p.add_argument("--tag", default="", help="appended to the report's name")
    p.add_argument("--rules-config", metavar="FILE", help="passed to serve (own server)")
    p.add_argument("--jt808-port", type=int, default=0, help="own server's port (0: free)")
    p.add_argument("--http-port", type=int, default=0, help="own server's HTTP port (0: free)")
    ext = p.add_argument_group("an already running server (all three)")
    ext.add_argument("--server", metavar="HOST:PORT", help="its JT/T 808 address (loopback)")
    ext.add_argument("--db", metavar="URL", help="its database (stored rows, the login)")
    ext.add_argument("--http", metavar="URL", help="its dashboard, http://127.0.0.1:PORT")
    p.set_defaults(handler=run)  # fmt: skip


def _problem(a: argparse.Namespace) -> str | None:
    if a.rate is not None and a.rate <= 0:
        return "--rate must be > 0"
    if a.connections is not None and a.connections < 1:
        return "--connections must be ≥ 1"
    if a.ramp < 0 or a.step_seconds <= 0 or a.duration <= 0 or a.heartbeat <= 0:
        return "--ramp ≥ 0; --step-seconds, --duration, --heartbeat > 0"
    if min(a.terminals, a.workers, a.source_addrs, a.connect_concurrency) < 1 or a.procs < 0:
        return "--terminals, --workers, --source-addrs, --connect-concurrency must be ≥ 1"
    if a.alert_every <= 1 or a.probes < 0 or a.interval <= 0:
        return "--alert-every > 1, --probes ≥ 0, --interval > 0"
    if any((a.server, a.db, a.http)) and not all((a.server, a.db, a.http)):
        return "--server, --db and --http go together"
    return None


def run(args: argparse.Namespace) -> int:
    problem = _problem(args)
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    from loadtest.loadrun import LoadError, Plan, main

    connections = args.connections or 0
    rate = args.rate if args.rate is not None else args.position_rate
    if rate is None:
        rate = connections / 60.0
    plan = Plan(
        mode="connections" if connections else "rate", rate=rate, ramp=args.ramp,
        step_s=args.step_seconds, duration=args.duration, connections=connections,
        heartbeat_s=args.heartbeat, terminals=args.terminals, procs=args.procs,
        workers=args.workers, source_addrs=args.source_addrs,
        connect_concurrency=args.connect_concurrency, alert_every=args.alert_every,
        probes=args.probes, interval=args.interval, out=args.out, server=args.server,
        db=args.db, http=args.http, jt808_port=args.jt808_port, http_port=args.http_port,
        rules_config=args.rules_config, tag=args.tag,
    )  # fmt: skip
    try:
        return main(plan)
    except (LoadError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
