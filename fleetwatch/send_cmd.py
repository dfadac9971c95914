"""``fleetwatch send text | query | track PLATE ...``: a command to a vehicle's terminal through
the running server, and the terminal's answer.

The command goes through the command gateway (``alerts/gateway.py``) over the database, so it
reaches the terminal whichever ``serve`` worker holds its connection. Exit status: 0 the
terminal accepted (for ``query``: answered with its position), 1 no answer (offline, timeout),
unknown plate or a database problem, 3 the terminal answered but refused (failed, unsupported).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from fleetwatch import dbopts

PROG = "fleetwatch send"
REFUSED = 3


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "send",
        help="send a text, a position query or a tracking request to a vehicle's terminal",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    actions = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    text = actions.add_parser(
        "text",
        help="a message to the driver (display and/or read aloud)",
        description="Send a message to the driver. Without --tts or --display it is both "
        "shown and read aloud.",
    )
    _plate(text)
    text.add_argument("message", metavar="MESSAGE", help="the text")
    text.add_argument("--tts", action="store_true", help="read it aloud (TTS)")
    text.add_argument("--display", action="store_true", help="show it on the display")
    text.add_argument("--urgent", action="store_true", help="mark it urgent")
    _common(text, _text)

    query = actions.add_parser("query", help="ask the terminal where the vehicle is now")
    _plate(query)
    _common(query, _query)

    track = actions.add_parser(
        "track",
        help="ask the terminal to report every INTERVAL seconds for DURATION seconds",
        description="Temporary tracking: the terminal reports every INTERVAL seconds for "
        "DURATION seconds (--interval 0 stops it).",
    )
    _plate(track)
    track.add_argument("--interval", type=_seconds, required=True, metavar="S")
    track.add_argument("--duration", type=_seconds, required=True, metavar="S")
    _common(track, _track)


def _plate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plate", metavar="PLATE", help="the vehicle's plate, e.g. 沪A12345")


def _common(parser: argparse.ArgumentParser, build: Any) -> None:
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="wait this long (default 30)"
    )
    parser.add_argument("--by", metavar="NAME", help="who sends it (default: your user name)")
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")
    dbopts.add_database_options(parser)
    parser.set_defaults(handler=lambda args: dbopts.run(PROG, _send, args), build=build)


def _seconds(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: whole seconds expected") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: not negative")
    return number


def _text(args: argparse.Namespace) -> Any:
    from alerts.commands import Text

    both = not (args.tts or args.display)
    return Text(args.message, tts=args.tts or both, display=args.display or both,
                urgent=args.urgent)  # fmt: skip


def _query(args: argparse.Namespace) -> Any:
    from alerts.commands import QueryPosition

    return QueryPosition()


def _track(args: argparse.Namespace) -> Any:
    from alerts.commands import Track

    return Track(interval_s=args.interval, duration_s=args.duration)


async def _send(args: argparse.Namespace) -> int:
    from alerts.commands import ACCEPTED, CommandFailed
    from alerts.gateway import CommandGateway
    from store.commands import vehicle_id_by_plate

    try:
        command = args.build(args)
    except ValueError as exc:
        raise dbopts.CommandError(str(exc)) from None
    async with dbopts.connect_with_url(args) as (url, conn):
        vehicle_id = await vehicle_id_by_plate(conn, args.plate)
        if vehicle_id is None:
            raise dbopts.CommandError(f"unknown plate {args.plate!r}")
        gateway = CommandGateway(conn, url, timeout=args.timeout)
        await gateway.start()
        try:
            reply = await gateway.send(
                vehicle_id, command, requested_by=args.by or getpass.getuser()
            )
        except CommandFailed as failed:
            raise dbopts.CommandError(f"{args.plate}: {failed.reason}: {failed.detail}") from None
        finally:
            await gateway.stop()
    if args.json:
        print(json.dumps({"plate": args.plate, **reply.to_json()}, ensure_ascii=False))
    else:
        print(f"{args.plate}: {reply.result}" + _where(reply.position))
    if reply.result != ACCEPTED:
        print(f"{PROG}: {args.plate}: the terminal answered {reply.result}", file=sys.stderr)
        return REFUSED
    return 0


def _where(position: dict[str, Any] | None) -> str:
    if not position:
        return ""
    return (
        f" at {position['lat']:.6f},{position['lon']:.6f} {position['speed_kmh']:g} km/h"
        f" heading {position['heading']} fix {position['fix_time'] or '-'}"
        + ("" if position.get("valid") else " (no valid fix)")
    )
