"""The normalised position fix that flows from ingest to the store, the rules and the map.

Platform units only (converted at the protocol edge): WGS-84 degrees, UTC, km/h, metres.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: Where a position came from.
SOURCE_JT808, SOURCE_NMEA, SOURCE_IMPORT = "jt808", "nmea", "import"
#: No alarm raised (shared: most fixes carry none).
NO_ALARMS: frozenset[str] = frozenset()


@dataclass(slots=True)
class Position:
    """One fix of one vehicle, in platform terms.

    ``serial`` is the terminal's frame serial (with ``vehicle_id`` and ``fix_time`` the key that
    removes retransmitted duplicates). ``batch`` marks fixes from blind-area uploads (``late``
    is decided by the rules). ``valid``: the receiver had a fix (an invalid fix carries the
    last known or a zero coordinate). ``ignition``: the engine is on (True), off (False) or
    not reported (None). ``alarms``: the alarms the terminal reports raised, by platform name
    (``emergency``, ``collision``, ...). ``source``: where the fix came from.

    ``alarm_word``/``status_word`` are the raw JT/T 808 words, kept only so the store can
    write them to the ``positions`` columns of those names; no rule reads them (protocol
    words stop at ``ingest/``).
    """

    vehicle_id: int
    fix_time: datetime  # aware, UTC
    received_time: datetime  # aware, UTC
    lon: float
    lat: float
    speed_kmh: float = 0.0
    heading: int = 0
    altitude_m: int = 0
    ignition: bool | None = None
    alarms: frozenset[str] = NO_ALARMS
    valid: bool = True
    serial: int = 0
    batch: bool = False
    source: str = SOURCE_JT808
    extras: dict[str, Any] = field(default_factory=dict)
    alarm_word: int = 0
    status_word: int = 0
