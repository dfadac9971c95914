"""``fleetwatch demo [check]``: FleetWatch at work with one command.

``demo`` starts the embedded PostGIS in ``--data-dir`` (default ./demo-data), seeds demo
companies, vehicles, logins (fresh passwords printed at every start) and geofences, starts
``fleetwatch serve`` on it, and drives a simulated fleet of Changsha vehicles
(``loadtest.fleet``) against it over TCP: the last ``--hours`` of driving played in about
``--minutes``, then live, with scripted violations whose alarms it writes to
``DIR/expected-alarms.json``. Ctrl-C (or SIGTERM) logs the terminals out and stops the server
and the database. ``demo check`` compares those expected alarms with the alerts table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetwatch import dbopts
from fleetwatch.serve import _port

PROG = "fleetwatch demo"
EXPECTED = "expected-alarms.json"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the server with a simulated fleet and demo logins (check: expected alarms)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument(
        "action",
        nargs="?",
        choices=("run", "check"),
        default="run",
        help="run (default) or check the expected alarms against the alerts",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("demo-data"),
        metavar="DIR",
        help="the demo's data directory (default: ./demo-data)",
    )
    parser.add_argument(
        "--vehicles",
        type=int,
        default=200,
        metavar="N",
        help="simulated vehicles (default 200; 7 or more include every scripted violation)",
    )
    parser.add_argument(
        "--hours",
        type=float,
        default=24.0,
        metavar="H",
        help="time-lapse: hours of past driving to play first (default 24; 0: live only)",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        metavar="M",
        help="play those hours in about M minutes (default 10)",
    )
    parser.add_argument("--jt808-port", type=_port, default=6808, help="JT/T 808 TCP port")
    parser.add_argument("--http-port", type=_port, default=8080, help="dashboard port")
    parser.add_argument("--seed", type=int, default=1, help="the fleet's plans (default 1)")
    parser.add_argument(
        "--rules-config", metavar="FILE", help="passed to serve (e.g. a shorter offline_s)"
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=60.0,
        metavar="S",
        help="terminal heartbeat interval, wall seconds (default 60)",
    )
    parser.add_argument(
        "--progress",
        type=float,
        default=30.0,
        metavar="S",
        help="print the fleet's progress every S seconds (default 30)",
    )
    parser.set_defaults(handler=run, db=None)


def run(args: argparse.Namespace) -> int:
    if args.action == "check":
        return dbopts.run(f"{PROG} check", _check, args)
    if args.vehicles < 1 or args.hours < 0 or args.minutes <= 0:
        print(f"{PROG}: error: --vehicles >= 1, --hours >= 0, --minutes > 0", file=sys.stderr)
        return 2
    from fleetwatch import console

    try:
        console.prepare_data_dir(args.data_dir)
    except console.UsageProblem as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_demo(args))
    except asyncio.CancelledError:  # Ctrl-C before the fleet ran; everything is stopped
        return 130
    except DemoError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


class DemoError(Exception):
    """The demo cannot go on (what to do is in the message)."""


def _say(text: str) -> None:
    print(text, flush=True)


def _offline_s(path: str | None) -> float:
    from alerts.supervision import load_config

    rules = load_config(path).get("rules") or {}
    return float(rules.get("offline_s", 600.0))


async def _seed(url: str, args: argparse.Namespace, fleet: list[Any]) -> tuple[dict[str, str], Any]:
    """Migrate, seed; the logins' fresh passwords and the fleet's newest stored fix."""
    import asyncpg

    from geo.geojson_io import parse_fences
    from loadtest.fleet.city import demo_fences
    from loadtest.fleet.plan import USERS
    from store import demo
    from store.migrations import migrate
    from store.users import hash_password
    from store.vehicles import new_vehicle

    passwords = {name: secrets.token_urlsafe(9) for name, _, _ in USERS}
    hashes = await asyncio.gather(
        *(asyncio.to_thread(hash_password, passwords[name]) for name, _, _ in USERS)
    )
    vehicles = [
        new_vehicle(v.plate, v.vehicle_class, v.company, v.phone, plate_color=v.plate_color)
        for v in fleet
    ]
    users = [
        (name, role, company, h) for (name, role, company), h in zip(USERS, hashes, strict=True)
    ]
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        seeded = await demo.seed(conn, vehicles, users, parse_fences(demo_fences()))
        newest = await demo.newest_fix(conn, [v.plate for v in vehicles])
    finally:
        await conn.close()
    _say(
        f"  seeded: {seeded.vehicles_added} vehicles added ({seeded.vehicles_kept} there "
        f"already), {seeded.users_added + seeded.users_reset} logins, "
        f"{seeded.fences.added} fences added ({seeded.fences.unchanged + seeded.fences.updated} "
        "there already)"
    )
    return passwords, newest


async def wait_for_port(port: int, proc: asyncio.subprocess.Process, timeout: float) -> None:
    """Until ``proc`` (a ``fleetwatch serve``) accepts on 127.0.0.1:``port``; DemoError if it
    exits first or the port stays closed (the tests that start serve use it too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise DemoError(f"fleetwatch serve exited with status {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise DemoError(f"port {port} did not open within {timeout:g} s")


async def _demo(args: argparse.Namespace) -> int:
    from loadtest.fleet.check import expectations
    from loadtest.fleet.city import RoadNetwork
    from loadtest.fleet.plan import TimeLapse, build_fleet, build_scenario
    from loadtest.fleet.sim import Fleet
    from store.cluster import EmbeddedCluster

    data: Path = args.data_dir
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    setup = asyncio.current_task()
    serve: asyncio.subprocess.Process | None = None
    fleet_sim: Fleet | None = None
    log = None

    def interrupted() -> None:  # while setting up: abandon it (the cleanup below still runs)
        if not stop.is_set() and setup is not None and fleet_sim is None:
            setup.cancel()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted)
    _say(f"FleetWatch demo in {data.absolute()}")
    cluster = EmbeddedCluster.in_data_dir(data)
    _say("  starting PostgreSQL + PostGIS (the first time creates it: a few seconds)")
    try:
        await asyncio.to_thread(cluster.start)
        fleet = build_fleet(args.vehicles, args.seed)
        passwords, newest = await _seed(cluster.url, args, fleet)
        command = [
            sys.executable,
            "-m",
            "fleetwatch.cli",
            "serve",
            "--data-dir",
            str(data),
            "--jt808-port",
            str(args.jt808_port),
            "--http-port",
            str(args.http_port),
            "--listen",
            "127.0.0.1",
            "--policy",
            "known",
        ]
        if args.rules_config:
            command += ["--rules-config", args.rules_config]
        log = open(data / "serve.log", "ab")  # noqa: SIM115 - closed in finally
        serve = await asyncio.create_subprocess_exec(
            *command,
            stdout=log,
            stderr=log,
            start_new_session=True,  # Ctrl-C is ours to relay
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        await wait_for_port(args.http_port, serve, 60)
        await wait_for_port(args.jt808_port, serve, 30)

        now = time.time()
        start = now - args.hours * 3600
        if newest is not None:  # a second run: never replay behind what was judged
            start = max(start, newest.timestamp() + 60)
        speed = 1.0 + max(now - start, 0) / (args.minutes * 60)
        clock = TimeLapse(start, speed, now)
        offline_s = _offline_s(args.rules_config)
        scenario = build_scenario(
            fleet, RoadNetwork(), clock, offline_s=offline_s, live=True, seed=args.seed
        )
        document = expectations(fleet, scenario, clock, now, offline_s)
        (data / EXPECTED).write_text(json.dumps(document, ensure_ascii=False, indent=1))
        _banner(args, passwords, clock, scenario, len(fleet))
        fleet_sim = Fleet(
            fleet,
            clock,
            scenario,
            ("127.0.0.1", args.jt808_port),
            seed=args.seed,
            heartbeat_s=args.heartbeat,
        )
        await fleet_sim.start(ramp_s=min(10.0, 0.03 * len(fleet)))
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), args.progress)
            except TimeoutError:
                _say(fleet_sim.progress())
            if serve.returncode is not None:
                _say(f"{PROG}: fleetwatch serve exited ({serve.returncode}): see {data}/serve.log")
                break
        _say("stopping: the terminals log out, then the server and the database stop")
        return 0
    finally:
        if fleet_sim is not None:
            await fleet_sim.stop()
            _say(fleet_sim.progress())
        if serve is not None and serve.returncode is None:
            serve.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(serve.wait(), 60)
            except TimeoutError:
                serve.kill()
                await serve.wait()
        if log is not None:
            log.close()
        await asyncio.to_thread(cluster.stop)
        _say("stopped")


def _banner(
    args: argparse.Namespace, passwords: dict[str, str], clock: Any, scenario: Any, count: int
) -> None:
    from loadtest.fleet.plan import BEIJING, USERS

    url = f"http://127.0.0.1:{args.http_port}/"
    lines = [
        "",
        f"  dashboard   {url}",
        f"  JT/T 808    127.0.0.1:{args.jt808_port} ({count} simulated vehicles, Changsha)",
        "  logins (new passwords at every start):",
        *(
            f"    {name:<18} {passwords[name]:<14} {role}" + (f", {company}" if company else "")
            for name, role, company in USERS
        ),
    ]
    if clock.catch_up > clock.wall0:
        start = datetime.fromtimestamp(clock.start, BEIJING)
        minutes = (clock.catch_up - clock.wall0) / 60
        lines.append(
            f"  time-lapse  from {start:%Y-%m-%d %H:%M} Beijing time, x{clock.speed:.0f}: "
            f"live in {minutes:.1f} min"
        )
    else:
        lines.append("  live (no time-lapse: nothing to replay)")
    lines.append(
        f"  expected alarms: {len(scenario.expected)} in "
        f"{args.data_dir / EXPECTED}"
        + (f"; skipped: {'; '.join(scenario.skipped)}" if scenario.skipped else "")
    )
    lines.append(f"  check them:     fleetwatch demo check --data-dir {args.data_dir}")
    lines.append("  stop with Ctrl-C")
    _say("\n".join(lines) + "\n")


async def _check(args: argparse.Namespace) -> int:
    from loadtest.fleet.check import compare
    from store.demo import fleet_alerts

    path = args.data_dir / EXPECTED
    if not path.is_file():
        raise dbopts.CommandError(f"{path}: no such file (run `fleetwatch demo` first)")
    document = json.loads(path.read_text())
    plates = [v["plate"] for v in document["vehicles"]]
    async with dbopts.connect(args) as conn:
        alerts = await fleet_alerts(conn, plates, datetime.fromisoformat(document["run_started"]))
    outcome = compare(document, alerts, datetime.now(UTC))
    print(outcome.report())
    return 0 if outcome.ok else 1
