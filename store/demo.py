"""The demo's data: vehicles, users and geofences put in idempotently, and what the demo reads
back (the fleet's newest fix, the alerts its check compares).

``fleetwatch demo`` passes the values (the simulator's fleet, the demo fences and logins);
this module only holds the SQL, through the provisioning, user and geofence functions where
they exist. Running it twice adds nothing twice: vehicles and companies are matched by plate
and name, fences by name; users that exist get the new password (the demo prints fresh ones at
every start, and never a fixed default).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from geo.fences import Geofence
from store import geofences
from store.users import add_user, set_password
from store.vehicles import NewVehicle, add_vehicle, company_id

if TYPE_CHECKING:
    import asyncpg


@dataclass(frozen=True, slots=True)
class Seeded:
    vehicles_added: int
    vehicles_kept: int
    users_added: int
    users_reset: int
    fences: geofences.SaveResult


async def seed(
    conn: asyncpg.Connection,
    vehicles: Sequence[NewVehicle],
    users: Iterable[tuple[str, str, str | None, str]],
    fences: Sequence[Geofence],
) -> Seeded:
    """Add the vehicles not there yet (by plate), the users (name, role, company, password
    hash; an existing one gets the new hash) and the fences (by name)."""
    known = {
        r["plate"]
        for r in await conn.fetch(
            "SELECT plate FROM vehicles WHERE plate = ANY($1::text[])", [v.plate for v in vehicles]
        )
    }
    added = 0
    for vehicle in vehicles:
        if vehicle.plate not in known:
            await add_vehicle(conn, vehicle)
            added += 1
    users_added = users_reset = 0
    for name, role, company, password_hash in users:
        if company:  # a dispatcher's company, even with none of its vehicles in a small fleet
            await company_id(conn, company)
        if await conn.fetchval("SELECT 1 FROM users WHERE username = $1", name):
            await set_password(conn, name, password_hash)
            users_reset += 1
        else:
            await add_user(conn, name, role, password_hash, company)
            users_added += 1
    saved = await geofences.save(conn, fences)
    return Seeded(added, len(vehicles) - added, users_added, users_reset, saved)


async def newest_fix(conn: asyncpg.Connection, plates: Sequence[str]) -> datetime | None:
    """The newest fix time stored for any of these vehicles (a new run starts after it, so
    its time-lapse never replays fixes behind what the rules have already judged)."""
    return await conn.fetchval(
        "SELECT max(p.fix_time) FROM last_positions p JOIN vehicles v ON v.id = p.vehicle_id"
        " WHERE v.plate = ANY($1::text[])",
        list(plates),
    )


async def fleet_alerts(
    conn: asyncpg.Connection, plates: Sequence[str], since: datetime
) -> list[dict[str, Any]]:
    """The alerts of these vehicles created since ``since``, as plain values (oldest first)."""
    rows = await conn.fetch(
        """SELECT a.id, v.plate, a.type, a.start_time, a.end_time, a.created_at, a.status,
                  a.late, a.details::text AS details
           FROM alerts a JOIN vehicles v ON v.id = a.vehicle_id
           WHERE v.plate = ANY($1::text[]) AND a.created_at >= $2
           ORDER BY a.created_at, a.id""",
        list(plates),
        since,
    )
    import json

    return [{**dict(r.items()), "details": json.loads(r["details"] or "{}")} for r in rows]
