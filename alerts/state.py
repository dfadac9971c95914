"""Rule state as JSON values: the few conversions every rule's ``export``/``restore`` needs.

Times are epoch seconds (floats), positions a small dict of what the rules read back from a
remembered fix (the anchor of the jump filter, the geofence rule's previous fix). Nothing here
knows a rule: each rule names its own fields.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from geo.position import Position


def ts(at: datetime | None) -> float | None:
    """A datetime as epoch seconds (None stays None)."""
    return None if at is None else at.timestamp()


def at(t: float | None) -> datetime | None:
    """Epoch seconds as an aware UTC datetime (None stays None)."""
    return None if t is None else datetime.fromtimestamp(t, UTC)


def when(t: float) -> datetime:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(t, UTC)


def dump_position(p: Position | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {
        "vid": p.vehicle_id,
        "t": p.fix_time.timestamp(),
        "r": p.received_time.timestamp(),
        "lon": p.lon,
        "lat": p.lat,
        "v": p.speed_kmh,
        "h": p.heading,
        "ok": p.valid,
    }


def load_position(d: dict[str, Any] | None) -> Position | None:
    if d is None:
        return None
    return Position(
        vehicle_id=int(d["vid"]),
        fix_time=datetime.fromtimestamp(d["t"], UTC),
        received_time=datetime.fromtimestamp(d["r"], UTC),
        lon=float(d["lon"]),
        lat=float(d["lat"]),
        speed_kmh=float(d["v"]),
        heading=int(d["h"]),
        valid=bool(d["ok"]),
    )
