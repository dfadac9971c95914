"""The dashboard's reads and changes, each limited to a :class:`store.users.Scope` in its SQL.

Tenant isolation lives here, in the WHERE clause of every statement, not in the web layer: a
dispatcher's request for another company's vehicle or alert finds nothing, exactly as if it did
not exist. Pagination is by key (``after`` a vehicle id, ``before`` an alert id), so a page costs
the same however deep it is and rows arriving meanwhile do not shift it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from store.alerts import ALERT_SELECT, Alert, AuditEntry, statuses
from store.users import Scope, scope_sql

#: A vehicle is online while a worker's command gateway holds its terminal (migration 0008).
_VEHICLES = f"""
SELECT v.id, v.plate, v.plate_color, v.class::text AS class, v.company_id,
       c.name AS company, h.vehicle_id IS NOT NULL AS online,
       ST_X(p.geom) AS lon, ST_Y(p.geom) AS lat, p.fix_time, p.speed_kmh, p.heading, p.valid
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


#: The alarm queue's views: what a dispatcher still has to do, what is handled but not closed,
#: and (supervisors) what was handled by a person and not reviewed yet.
QUEUE_VIEWS = ("pending", "handled", "review")
_QUEUE_WHERE = {
    "pending": "a.status IN ('open', 'acknowledged')",
    "handled": "a.status = 'handled'",
    "review": "a.status IN ('handled', 'closed') AND a.reviewed_at IS NULL"
    " AND (a.handled_by IS NOT NULL OR a.closed_by <> 'system')",
}
#: Most urgent first; within a severity the one waiting longest first (the queue is worked
#: from the top), except "review": the newest handling first.
_QUEUE_ORDER = {
    "pending": "a.severity, a.start_time, a.id",
    "handled": "a.severity, a.start_time, a.id",
    "review": "coalesce(a.closed_at, a.handled_at) DESC, a.id DESC",
}


async def alert_queue(conn: Any, scope: Scope, view: str, limit: int) -> list[Alert]:
    """The alarm queue of vehicles in scope (one of :data:`QUEUE_VIEWS`)."""
    if view not in QUEUE_VIEWS:
        raise ValueError(f"view {view!r}: one of {', '.join(QUEUE_VIEWS)}")
    rows = await conn.fetch(
        f"""{ALERT_SELECT}
        WHERE {scope_sql("v", 1)} AND {_QUEUE_WHERE[view]}
        ORDER BY {_QUEUE_ORDER[view]}
        LIMIT $3""",
        *scope.params, limit,
    )  # fmt: skip
    return [Alert.from_row(r) for r in rows]


async def alert(conn: Any, scope: Scope, alert_id: int) -> Alert | None:
    """One alert, if its vehicle is in scope."""
    row = await conn.fetchrow(
        f"{ALERT_SELECT} WHERE a.id = $3 AND {scope_sql('v', 1)}", *scope.params, alert_id
    )
    return Alert.from_row(row) if row else None


async def audit(conn: Any, scope: Scope, alert_id: int) -> list[AuditEntry]:
    """The audit trail of an alert in scope, oldest first (empty if not in scope)."""
    rows = await conn.fetch(
        f"""SELECT u.id, u.alert_id, u.at, u.actor, u.action, u.from_status, u.to_status,
                   u.details::text AS details
        FROM alert_audit u JOIN alerts a ON a.id = u.alert_id
        JOIN vehicles v ON v.id = a.vehicle_id
        WHERE u.alert_id = $3 AND {scope_sql("v", 1)}
        ORDER BY u.id""",
        *scope.params, alert_id,
    )  # fmt: skip
    return [AuditEntry(**{**dict(r.items()), "details": json.loads(r["details"])}) for r in rows]


_PANEL = f"""
SELECT v.id, v.plate, v.class::text AS class, v.company_id, c.name AS company,
       v.overrides::text AS overrides, h.vehicle_id IS NOT NULL AS online,
       ST_X(p.geom) AS lon, ST_Y(p.geom) AS lat, p.fix_time, p.received_time, p.speed_kmh,
       p.heading, p.valid, p.status,
       (SELECT a.driver FROM alerts a WHERE a.vehicle_id = v.id AND a.driver IS NOT NULL
        ORDER BY a.id DESC LIMIT 1) AS driver
FROM vehicles v
LEFT JOIN companies c ON c.id = v.company_id
LEFT JOIN last_positions p ON p.vehicle_id = v.id
LEFT JOIN terminal_holders h ON h.vehicle_id = v.id
WHERE v.id = $3 AND {scope_sql("v", 1)}
"""


async def vehicle_panel(conn: Any, scope: Scope, vehicle_id: int) -> dict[str, Any] | None:
    """What the vehicle panel shows of a vehicle in scope (None: no such vehicle in scope):
    the vehicle, its last position and raw status word, whether it is online, and the driver
    named by its newest alert that named one (the platform keeps no other record of it)."""
    row = await conn.fetchrow(_PANEL, *scope.params, vehicle_id)
    return dict(row.items()) if row else None


async def fixes_since(
    conn: Any, scope: Scope, vehicle_id: int, since: datetime
) -> list[tuple[datetime, float]]:
    """(fix time, speed) of a vehicle in scope since ``since``, in time order (for the
    driving time: a day at 1 Hz is 86,400 small rows)."""
    rows = await conn.fetch(
        f"""SELECT p.fix_time, p.speed_kmh FROM positions p JOIN vehicles v ON v.id = p.vehicle_id
        WHERE p.vehicle_id = $3 AND p.fix_time >= $4 AND p.fix_time <= now() + interval '5 min'
          AND p.valid AND {scope_sql("v", 1)}
        ORDER BY p.fix_time""",
        *scope.params, vehicle_id, since,
    )  # fmt: skip
    return [(r[0], float(r[1])) for r in rows]


async def vehicle_alerts(conn: Any, scope: Scope, vehicle_id: int, limit: int) -> list[Alert]:
    """The active (not closed) alerts of one vehicle in scope, most urgent first."""
    rows = await conn.fetch(
        f"""{ALERT_SELECT}
        WHERE a.vehicle_id = $3 AND a.status <> 'closed' AND {scope_sql("v", 1)}
        ORDER BY a.severity, a.start_time
        LIMIT $4""",
        *scope.params, vehicle_id, limit,
    )  # fmt: skip
    return [Alert.from_row(r) for r in rows]
