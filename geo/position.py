"""The normalised position fix that flows from ingest to the store, the rules and the map.

Platform units only (converted at the protocol edge): WGS-84 degrees, UTC, km/h, metres.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: Where a position came from.
SOURCE_JT808, SOURCE_NMEA, SOURCE_IMPORT = "jt808", "nmea", "import"


@dataclass(slots=True)
class Position:
    """One fix of one vehicle.

    ``serial`` is the terminal's frame serial (with ``vehicle_id`` and ``fix_time`` the key that
    removes retransmitted duplicates). ``batch`` marks fixes from 0x0704 uploads (``late`` is
    decided by the rules: fix time behind the vehicle's newest). ``valid`` is the terminal's
    "positioned" status bit: an invalid fix carries the last known or a zero coordinate.
    """

    vehicle_id: int
    fix_time: datetime  # aware, UTC
    received_time: datetime  # aware, UTC
    lon: float
    lat: float
    speed_kmh: float = 0.0
    heading: int = 0
    altitude_m: int = 0
    alarm: int = 0
    status: int = 0
    valid: bool = True
    serial: int = 0
    batch: bool = False
    source: str = SOURCE_JT808
    extras: dict[str, Any] = field(default_factory=dict)
