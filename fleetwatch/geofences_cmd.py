"""``fleetwatch geofences import | list``: load geofences from GeoJSON, show them.

``import`` is all or nothing: every bad feature is reported as ``FILE: feature N: problem``
and nothing is written. Fences are matched on their name, so re-importing an edited file
updates them in place (their ids, which alerts refer to, stay). ``--replace`` also deletes the
stored fences the file does not have. ``list --json`` prints a GeoJSON FeatureCollection (the
fences' ids as Feature ids) that can be edited and imported again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fleetwatch import dbopts

if TYPE_CHECKING:  # shapely and pyproj load only when a command runs
    from geo.fences import Geofence

PROG = "fleetwatch geofences"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``geofences`` and its actions to the ``fleetwatch`` command line."""
    parser = subparsers.add_parser(
        "geofences",
        help="server-side geofences (import a GeoJSON file, list)",
        description="Geofences the supervision rules apply: zones, forbidden zones, "
        "speed-limit areas and route corridors.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    imp = actions.add_parser(
        "import",
        help="import geofences from a GeoJSON file (all or nothing)",
        description="Import a GeoJSON (RFC 7946) FeatureCollection: a circle is a Point with a "
        "'radius' property (metres), a corridor a LineString with a 'width' (metres), a "
        "rectangle a Polygon with shape 'rectangle' (or a bbox), anything else a polygon. "
        "Properties: name (required, unique), kind (zone, forbidden, speed_limit, route), "
        "speed_limit, expressway, windows, applies_to, margin_m, min_time_s, max_dwell_s, "
        "watched. A crs naming EPSG:4490 means CGCS2000 coordinates. Fences with a stored "
        "name are updated in place; nothing is imported if any feature is wrong.",
    )
    imp.add_argument("file", type=Path, metavar="FILE.geojson")
    imp.add_argument(
        "--replace",
        action="store_true",
        help="also delete the stored geofences that the file does not have",
    )
    dbopts.add_database_options(imp)
    imp.set_defaults(handler=lambda args: dbopts.run(PROG, _import, args))

    lst = actions.add_parser("list", help="list the geofences")
    lst.add_argument(
        "--json", action="store_true", help="print a GeoJSON FeatureCollection (re-importable)"
    )
    dbopts.add_database_options(lst)
    lst.set_defaults(handler=lambda args: dbopts.run(PROG, _list, args))


async def _import(args: argparse.Namespace) -> int:
    from geo.geojson_io import GeoJSONError, read_fences
    from store import geofences

    if not args.file.is_file():
        raise dbopts.CommandError(dbopts.not_a_file(args.file))
    try:
        fences = read_fences(args.file)
    except GeoJSONError as exc:
        for index, problem in exc.errors:
            where = f"feature {index}: " if index is not None else ""
            print(f"{args.file}: {where}{problem}", file=sys.stderr)
        print(f"{PROG} import: {len(exc.errors)} error(s), nothing imported", file=sys.stderr)
        return 1
    async with dbopts.connect(args) as conn:
        result = await geofences.save(conn, fences, replace=args.replace)
    parts = [f"{result.added} added", f"{result.updated} updated"]
    if result.unchanged:
        parts.append(f"{result.unchanged} unchanged")
    if args.replace:
        parts.append(f"{result.deleted} deleted")
    print(f"imported {len(fences)} geofence(s) from {args.file} ({', '.join(parts)})")
    return 0


async def _list(args: argparse.Namespace) -> int:
    from geo.geojson_io import dumps
    from store import geofences

    async with dbopts.connect(args) as conn:
        fences = await geofences.load(conn)
    if args.json:
        print(dumps(fences))
        return 0
    for fence in fences:
        print(f"{fence.id:>6}  {_describe(fence)}")
    if not fences:
        print("no geofences", file=sys.stderr)
    return 0


def _describe(fence: Geofence) -> str:
    from geo.fences import CIRCLE, CORRIDOR

    size = ""
    if fence.shape == CIRCLE:
        size = f" r={fence.radius_m:g} m"
    elif fence.shape == CORRIDOR:
        size = f" width {fence.width_m:g} m"
    parts = [fence.name, f"{fence.kind} {fence.shape}{size}"]
    if fence.speed_limit_kmh is not None:
        road = " (expressway)" if fence.expressway else ""
        parts.append(f"limit {fence.speed_limit_kmh:g} km/h{road}")
    if fence.windows:
        parts.append("windows " + "; ".join(_window(w.to_json()) for w in fence.windows))
    if not fence.applies_to.everyone:
        scope = fence.applies_to.to_json().items()
        parts.append("applies to " + ", ".join(f"{k} {','.join(map(str, v))}" for k, v in scope))
    if fence.max_dwell_s is not None:
        parts.append(f"max dwell {fence.max_dwell_s:g} s")
    if fence.watched:
        parts.append("watched")
    return ", ".join(parts)


def _window(window: dict[str, object]) -> str:
    text = []
    if "days" in window:
        text.append("days " + ",".join(map(str, window["days"])))  # type: ignore[call-overload]
    if "from" in window:
        text.append(f"{window['from']}-{window['to']}")
    if "start_date" in window or "end_date" in window:
        text.append(f"{window.get('start_date', '...')}..{window.get('end_date', '...')}")
    return " ".join(text)
