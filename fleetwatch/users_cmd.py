"""``fleetwatch users add | list | passwd | disable``: the dashboard's users.

There is no default user and no default password: the first admin is made with ``users add``.
A password is read from the terminal (asked twice) or, with ``--password-stdin``, from the
first line of standard input (for scripts); never from the command line, where ``ps`` and the
shell history would show it.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fleetwatch import dbopts
from store.users import ROLES, User

PROG = "fleetwatch users"
T = TypeVar("T")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``users`` and its actions to the ``fleetwatch`` command line."""
    parser = subparsers.add_parser(
        "users",
        help="the dashboard's users (add, list, passwd, disable)",
        description="The dashboard's users. Roles: admin (everything), supervisor (every "
        "company, or only the vehicles inside an area), dispatcher (one company's vehicles "
        "and alerts).",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="add a user (asks for the password)")
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--company", metavar="NAME", help="the dispatcher's company (required)")
    _area_options(add)
    _password_option(add)
    dbopts.add_database_options(add)
    add.set_defaults(handler=lambda args: dbopts.run(PROG, _add, args))

    lst = actions.add_parser("list", help="list users")
    lst.add_argument("--json", action="store_true", help="print JSON")
    dbopts.add_database_options(lst)
    lst.set_defaults(handler=lambda args: dbopts.run(PROG, _list, args))

    pw = actions.add_parser("passwd", help="set a user's password (ends its sessions)")
    pw.add_argument("username")
    _password_option(pw)
    dbopts.add_database_options(pw)
    pw.set_defaults(handler=lambda args: dbopts.run(PROG, _passwd, args))

    area = actions.add_parser(
        "area",
        help="limit a supervisor to an area (GeoJSON polygons), or --clear it",
        description="A supervisor with an area sees only the vehicles whose last position is "
        "inside it (a district, a road section).",
    )
    area.add_argument("username")
    _area_options(area)
    area.add_argument("--clear", action="store_true", help="take the area away (sees all)")
    dbopts.add_database_options(area)
    area.set_defaults(handler=lambda args: dbopts.run(PROG, _area, args))

    off = actions.add_parser("disable", help="disable a user (ends its sessions; kept for audit)")
    off.add_argument("username")
    dbopts.add_database_options(off)
    off.set_defaults(handler=lambda args: dbopts.run(PROG, _disable, args))


def _password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of asking",
    )


def _area_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--area", metavar="FILE", help="GeoJSON polygon(s), WGS-84 lon/lat (supervisors only)"
    )
    parser.add_argument("--area-name", metavar="NAME", help="what the area is called")


def _read_area(args: argparse.Namespace) -> str | None:
    from geo.areas import AreaError, area_geojson, read_area

    if not args.area:
        return None
    try:
        return area_geojson(read_area(args.area))
    except AreaError as exc:
        raise dbopts.CommandError(f"--area: {exc}") from None


def _password_hash(args: argparse.Namespace) -> str:
    from store.users import UserError, hash_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise dbopts.CommandError("the passwords differ")
    try:
        return hash_password(password)
    except UserError as exc:
        raise dbopts.CommandError(str(exc)) from None


async def _add(args: argparse.Namespace) -> int:
    from store.users import add_user, set_area

    if args.role == "dispatcher" and not args.company:
        raise dbopts.CommandError("a dispatcher needs --company NAME")
    if args.area and args.role != "supervisor":
        raise dbopts.CommandError("only a supervisor has an --area")
    area = _read_area(args)
    hashed = _password_hash(args)
    user = await _change(args, add_user, args.username, args.role, hashed, args.company)
    if area is not None:
        user = await _change(args, set_area, args.username, area, args.area_name)
    print(f"added user {user.id}: {_describe(user)}")
    return 0


async def _list(args: argparse.Namespace) -> int:
    from store.users import list_users

    async with dbopts.connect(args) as conn:
        found = await list_users(conn)
    if args.json:
        print(json.dumps([{**u.to_json(), "disabled": u.disabled} for u in found],
                         ensure_ascii=False, indent=2))  # fmt: skip
        return 0
    for user in found:
        print(f"{user.id:>5}  {_describe(user)}")
    if not found:
        print("no users: add the first admin with `fleetwatch users add NAME --role admin`",
              file=sys.stderr)  # fmt: skip
    return 0


async def _passwd(args: argparse.Namespace) -> int:
    from store.users import set_password

    await _change(args, set_password, args.username, _password_hash(args))
    print(f"password of {args.username} changed; its sessions ended")
    return 0


async def _area(args: argparse.Namespace) -> int:
    from store.users import set_area

    if bool(args.area) == bool(args.clear):
        raise dbopts.CommandError("give either --area FILE or --clear")
    user = await _change(args, set_area, args.username, _read_area(args), args.area_name)
    print(f"user {_describe(user)}; its sessions see the new scope now")
    return 0


async def _disable(args: argparse.Namespace) -> int:
    from store.users import disable_user

    await _change(args, disable_user, args.username)
    print(f"user {args.username} disabled; its sessions ended")
    return 0


async def _change(args: argparse.Namespace, change: Callable[..., Awaitable[T]], *values: Any) -> T:
    """Run one store.users change on the command's database; its UserError is the message."""
    from store.users import UserError

    async with dbopts.connect(args) as conn:
        try:
            return await change(conn, *values)
        except UserError as exc:
            raise dbopts.CommandError(str(exc)) from None


def _describe(user: User) -> str:
    parts = [user.username, user.role]
    if user.company:
        parts.append(f"company {user.company}")
    if user.area:
        parts.append(f"area {user.area_name or '(unnamed)'}")
    if user.disabled:
        parts.append("DISABLED")
    return ", ".join(parts)
