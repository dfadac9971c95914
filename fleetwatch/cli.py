"""The ``fleetwatch`` command line: one argparse parser and a registry of subcommands.

Each subcommand lives in its own module and exposes ``register(subparsers)``, which adds its
parser and sets ``handler`` (``argparse.Namespace -> exit status``) as a default. This file only
lists those modules, so later subcommands (``serve``, ``db``, ``vehicles``, ``simulate``) are one
line each here. Subcommand modules keep heavy imports (twisted, asyncpg) inside their handlers,
so ``--help`` and ``fleetwatch decode`` start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from fleetwatch import (
    alerts_cmd,
    console,
    db_cmd,
    decode,
    demo_cmd,
    geofences_cmd,
    import_nmea,
    loadtest_cmd,
    send_cmd,
    serve,
    users_cmd,
    vehicles_cmd,
)

#: ``register`` functions of the subcommands, in the order ``--help`` lists them.
SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    serve.register,
    decode.register,
    db_cmd.register,
    vehicles_cmd.register,
    geofences_cmd.register,
    import_nmea.register,
    alerts_cmd.register,
    alerts_cmd.register_watchlist,
    send_cmd.register,
    users_cmd.register,
    demo_cmd.register,
    loadtest_cmd.register,
)


class _Version(argparse.Action):
    """``--version``, looked up only when asked for (package metadata costs ~50 ms)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"fleetwatch {console.version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The whole parser tree (also used by tests and docs to render ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="fleetwatch",
        description="FleetWatch: JT/T 808 vehicle monitoring platform.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand and return its exit status (the console script exits with it).
    Whatever a command did not handle becomes one line and status 1, never a traceback."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2); argparse has printed why
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`fleetwatch decode ... | head`): stop quietly, and point stdout
        # at /dev/null so the interpreter's final flush does not print a traceback either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:
        prog = f"fleetwatch {_command_name(argv)}".rstrip()
        return console.fail(prog, exc, getattr(args, "db", None))


def _command_name(argv: list[str] | None) -> str:
    words = sys.argv[1:] if argv is None else argv
    return next((w for w in words if not w.startswith("-")), "")


if __name__ == "__main__":
    sys.exit(main())
