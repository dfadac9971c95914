"""The SQL of the dashboard's live feed: positions and alert changes carried between processes.

With ``serve --workers N`` only worker 0 serves the dashboard, while positions are stored by
whichever worker holds a terminal and alerts change anywhere (rules in every worker, dispatchers,
the alerts CLI). Two PostgreSQL channels carry them to worker 0:

* :data:`POSITIONS`: each other worker NOTIFYs its coalesced durable positions itself, as
  compact JSON arrays batched under the 8000-byte payload limit (:func:`notify`).
* :data:`ALERTS`: a statement-level trigger on ``alerts`` (migration 0014) NOTIFYs the ids of
  the rows a committed statement inserted or updated; the listener reads the rows
  (:func:`alerts_by_id`), so the payload stays small and the row read is the committed one.

NOTIFY is not durable: what is sent while worker 0's listener reconnects is lost. That is
acceptable for a live view (a position is superseded within seconds; a client that reconnects
gets a fresh snapshot), not for anything that must be acted on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from store.alerts import ALERT_SELECT, Alert

POSITIONS = "fleetwatch_live_positions"
ALERTS = "fleetwatch_alerts"  # the name is fixed in migration 0014's trigger
#: Largest payload :func:`notify` is given (PostgreSQL refuses 8000 bytes and more).
MAX_PAYLOAD = 7900


async def notify(db: Any, channel: str, payloads: Sequence[str]) -> None:
    """NOTIFY each payload on ``channel``, in one round trip (one implicit transaction)."""
    if payloads:
        await db.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", channel, payloads)


async def vehicle_cards(db: Any, vehicle_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """What a live delta says about a vehicle besides its position (the fields of
    ``GET /api/vehicles`` that do not move), its company and last stored position (lon, lat:
    None before the first) for scoping an alert of a vehicle not seen moving yet, by id."""
    rows = await db.fetch(
        """SELECT v.id, v.plate, v.plate_color, v.class::text AS class, v.company_id,
                  c.name AS company, ST_X(p.geom) AS lon, ST_Y(p.geom) AS lat
           FROM vehicles v LEFT JOIN companies c ON c.id = v.company_id
           LEFT JOIN last_positions p ON p.vehicle_id = v.id
           WHERE v.id = ANY ($1::integer[])""",
        list(vehicle_ids),
    )
    return {r["id"]: dict(r.items()) for r in rows}


async def alerts_by_id(db: Any, alert_ids: Iterable[int]) -> list[Alert]:
    """The alerts with these ids as they are now, oldest id first (deleted ones are absent)."""
    rows = await db.fetch(
        f"{ALERT_SELECT} WHERE a.id = ANY ($1::bigint[]) ORDER BY a.id", list(alert_ids)
    )
    return [Alert.from_row(r) for r in rows]
