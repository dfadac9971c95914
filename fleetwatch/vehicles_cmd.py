"""``fleetwatch vehicles add | import | unbind | list``: provision vehicles and their terminals.

Terminals of provisioned vehicles may register under the "provisioned" policy; phones are
stored without leading zeros, the way the ingest side looks them up. ``import`` is all or
nothing and reports every bad row as ``FILE:LINE: message``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fleetwatch import dbopts
from geo.plates import normalise_plate
from store.vehicles import PLATE_COLORS, VEHICLE_CLASSES

PROG = "fleetwatch vehicles"
BEIJING = timezone(timedelta(hours=8), "Beijing")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``vehicles`` and its actions to the ``fleetwatch`` command line."""
    parser = subparsers.add_parser(
        "vehicles",
        help="provision vehicles (add one, import a CSV file, list)",
        description="Provision vehicles and their terminals.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="add one vehicle")
    add.add_argument("--plate", required=True, help="plate number, e.g. 京A12345")
    add.add_argument(
        "--class",
        dest="vehicle_class",
        required=True,
        choices=VEHICLE_CLASSES,
        help="vehicle class (decides which supervision rules apply)",
    )
    add.add_argument(
        "--company", required=True, metavar="NAME", help="operating company (created if new)"
    )
    add.add_argument(
        "--phone", required=True, help="terminal phone number (SIM); leading zeros are dropped"
    )
    add.add_argument(
        "--plate-color",
        type=int,
        metavar="N",
        help="plate colour code, JT/T 697.7: "
        + ", ".join(f"{k} {v}" for k, v in PLATE_COLORS.items() if k)
        + " (default: 2, yellow)",
    )
    add.add_argument("--vin", help="vehicle identification number (17 characters)")
    dbopts.add_database_options(add)
    add.set_defaults(handler=lambda args: dbopts.run(PROG, _add, args))

    imp = actions.add_parser(
        "import",
        help="import vehicles from a CSV file (all or nothing)",
        description="Import vehicles from a UTF-8 CSV file with a header row naming the columns "
        "plate, plate_color, class, company, phone, vin (plate_color and vin may be left out). "
        "Nothing is imported if any row is wrong; every problem is reported with its line.",
    )
    imp.add_argument("file", type=Path, metavar="FILE.csv")
    dbopts.add_database_options(imp)
    imp.set_defaults(handler=lambda args: dbopts.run(PROG, _import, args))

    unbind = actions.add_parser(
        "unbind",
        help="release a vehicle from its terminal (before fitting a new one)",
        description="Forget the terminal bound to a vehicle: its auth code stops working and the "
        "next terminal that registers with the vehicle's phone (or --phone) is bound to it. "
        "Until then another terminal's registration for this vehicle is refused.",
    )
    unbind.add_argument("plate", metavar="PLATE", help="plate number, e.g. 京A12345")
    unbind.add_argument("--plate-color", type=int, metavar="N", help="plate colour (default 2)")
    unbind.add_argument("--phone", help="the new terminal's phone, if its SIM is new too")
    dbopts.add_database_options(unbind)
    unbind.set_defaults(handler=lambda args: dbopts.run(PROG, _unbind, args))

    lst = actions.add_parser(
        "list", help="list the vehicles, online or not, with their last position"
    )
    lst.add_argument("--json", action="store_true", help="print a JSON array")
    dbopts.add_database_options(lst)
    lst.set_defaults(handler=lambda args: dbopts.run(PROG, _list, args))


async def _add(args: argparse.Namespace) -> int:
    from store.vehicles import VehicleError, add_vehicle, new_vehicle

    try:
        vehicle = new_vehicle(
            plate=args.plate,
            vehicle_class=args.vehicle_class,
            company=args.company,
            phone=args.phone,
            plate_color=args.plate_color,
            vin=args.vin,
        )
    except VehicleError as exc:
        raise dbopts.CommandError(str(exc)) from None
    async with dbopts.connect(args) as conn:
        try:
            row = await add_vehicle(conn, vehicle)
        except VehicleError as exc:
            raise dbopts.CommandError(str(exc)) from None
    print(f"added vehicle {row['id']}: {_describe(row)}")
    return 0


async def _import(args: argparse.Namespace) -> int:
    from store.vehicles import CsvImportError, import_csv

    if not args.file.is_file():
        raise dbopts.CommandError(dbopts.not_a_file(args.file))
    async with dbopts.connect(args) as conn:
        try:
            count = await import_csv(conn, args.file)
        except CsvImportError as exc:
            for line, message in exc.errors:
                print(f"{args.file}:{line}: {message}", file=sys.stderr)
            print(f"{PROG} import: {len(exc.errors)} error(s), nothing imported", file=sys.stderr)
            return 1
    print(f"imported {count} vehicle(s) from {args.file}")
    return 0


async def _unbind(args: argparse.Namespace) -> int:
    from store.vehicles import VehicleError, normalise_phone, parse_plate_color, unbind_terminal

    try:
        color = parse_plate_color(args.plate_color)
        phone = normalise_phone(args.phone) if args.phone else None
    except VehicleError as exc:
        raise dbopts.CommandError(str(exc)) from None
    plate = normalise_plate(args.plate)
    async with dbopts.connect(args) as conn:
        try:
            row = await unbind_terminal(conn, plate, color, phone)
        except VehicleError as exc:
            raise dbopts.CommandError(str(exc)) from None
    if row is None:
        raise dbopts.CommandError(f"no vehicle with plate {plate} (colour {color})")
    print(f"unbound vehicle {row['id']}: {_describe(row)}; the next terminal to register "
          f"with phone {row['phone']} is bound to it")  # fmt: skip
    return 0


async def _list(args: argparse.Namespace) -> int:
    from store.vehicles import list_vehicles

    async with dbopts.connect(args) as conn:
        rows = await list_vehicles(conn)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    for row in rows:
        print(f"{row['id']:>6}  {_describe(row)}; {_whereabouts(row)}")
    if not rows:
        print("no vehicles", file=sys.stderr)
    return 0


def _whereabouts(row: dict[str, Any]) -> str:
    """Online or not, and the last position with its time in Beijing time (the duty desk's)."""
    state = "online" if row["online"] else "offline"
    if row["lon"] is None:
        return f"{state}, no position yet"
    fix = datetime.fromisoformat(row["fix_time"]).astimezone(BEIJING)
    valid = "" if row["valid"] else " (no GNSS fix)"
    return (f"{state}, last position {row['lon']:.5f},{row['lat']:.5f}{valid} at "
            f"{fix:%Y-%m-%d %H:%M:%S} Beijing time, {row['speed_kmh']:.0f} km/h")  # fmt: skip


def _describe(row: dict[str, Any]) -> str:
    colour = PLATE_COLORS.get(row["plate_color"], str(row["plate_color"]))
    parts = [
        f"{row['plate'] or '(no plate)'} ({colour})",
        row["class"],
        f"phone {row['phone']}",
        f"company {row['company'] or '-'}",
    ]
    if row["vin"]:
        parts.append(f"VIN {row['vin']}")
    if row.get("bound_at"):
        parts.append(f"terminal {row['manufacturer']}/{row['terminal_id']}")
    if not row["provisioned"]:
        parts.append("NOT PROVISIONED")
    return ", ".join(parts)
