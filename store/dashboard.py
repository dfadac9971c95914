"""The dashboard's reads and changes, each limited to a :class:`store.users.Scope` in its SQL.

Tenant isolation lives here, in the WHERE clause of every statement, not in the web layer: a
dispatcher's request for another company's vehicle or alert finds nothing, exactly as if it did
not exist. Pagination is by key (``after`` a vehicle id, ``before`` an alert id), so a page costs
the same however deep it is and rows arriving meanwhile do not shift it.
"""

from __future__ import annotations

from typing import Any

from store.alerts import ALERT_SELECT, Alert, statuses
from store.users import Scope, scope_sql

#: A vehicle is online while a worker's command gateway holds its terminal (migration 0008).
#: ``in_alarm``: an alert of it is still open (unacknowledged); the set of such vehicles is
#: read once per statement from the partial index of active alerts, not probed per vehicle.
#: ``status`` is the raw status word of the last fix (the web layer has it decoded by the
#: protocol's edge: the store does not read protocol bits).
_VEHICLES = f"""
SELECT v.id, v.plate, v.plate_color, v.class::text AS class, v.company_id,
       c.name AS company, h.vehicle_id IS NOT NULL AS online,
       ST_X(p.geom) AS lon, ST_Y(p.geom) AS lat, p.fix_time, p.received_time, p.speed_kmh,
       p.heading, p.valid, p.status,
       v.id IN (SELECT vehicle_id FROM alerts WHERE status = 'open') AS in_alarm
FROM vehicles v
LEFT JOIN companies c ON c.id = v.company_id
LEFT JOIN last_positions p ON p.vehicle_id = v.id
LEFT JOIN terminal_holders h ON h.vehicle_id = v.id
WHERE {scope_sql("v", 1)} AND v.id > $3
ORDER BY v.id
LIMIT $4
"""


async def vehicles(conn: Any, scope: Scope, after: int, limit: int) -> list[dict[str, Any]]:
    """Vehicles in scope with their last position (lon/lat None if none yet), by id."""
    rows = await conn.fetch(_VEHICLES, *scope.params, after, limit)
    return [dict(r.items()) for r in rows]


async def alerts(
    conn: Any, scope: Scope, status: str | None, before: int | None, limit: int
) -> list[Alert]:
    """Alerts of vehicles in scope, newest first (by id), optionally of one status or
    ``active``."""
    rows = await conn.fetch(
        f"""{ALERT_SELECT}
        WHERE {scope_sql("v", 1)}
          AND ($3::text[] IS NULL OR a.status = ANY ($3))
          AND ($4::bigint IS NULL OR a.id < $4)
        ORDER BY a.id DESC
        LIMIT $5""",
        *scope.params, statuses(status), before, limit,
    )  # fmt: skip
    return [Alert.from_row(r) for r in rows]


async def alert_in_scope(conn: Any, scope: Scope, alert_id: int) -> bool:
    """Whether this alert exists and its vehicle is in scope (checked before any change)."""
    found = await conn.fetchval(
        f"SELECT 1 FROM alerts a JOIN vehicles v ON v.id = a.vehicle_id"
        f" WHERE a.id = $3 AND {scope_sql('v', 1)}",
        *scope.params,
        alert_id,
    )
    return bool(found)
