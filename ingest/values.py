"""Plausibility checks on fixes as they arrive (JT/T 808, NMEA, imports): flag, never drop.

A terminal's clock set decades ahead, a latitude of 95° or 6553 km/h are stored as sent, with a
flag from :mod:`geo.flags` saying why they are not trusted, so that one bad value cannot freeze a
vehicle on the map or make every later fix "late". Limits are configurable (``serve
--max-ahead``, ``--max-speed``). Cost: three comparisons per fix, on the ingest path before the
writer, so the flags travel in the row (and in the spool) with nothing recomputed later.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from geo.flags import COORDS_INVALID, SPEED_IMPLAUSIBLE, TIME_AHEAD
from geo.position import Position


@dataclass(frozen=True, slots=True)
class ValueLimits:
    """``max_ahead_s``: how far a fix time may be ahead of its receive time (clock skew and
    time zone slips of terminals stay well within 10 min); ``max_speed_kmh``: above this a
    reported speed is a glitch (no road vehicle, 250 km/h as the rules' jump filter)."""

    max_ahead_s: float = 600.0
    max_speed_kmh: float = 250.0

    def __post_init__(self) -> None:
        if self.max_ahead_s <= 0 or self.max_speed_kmh <= 0:
            raise ValueError("value limits must be positive")


DEFAULT_LIMITS = ValueLimits()


def flag_values(positions: Iterable[Position], limits: ValueLimits = DEFAULT_LIMITS) -> None:
    """Flag (in place) fixes whose time, coordinates or speed cannot be true. Out-of-range
    coordinates also make the fix invalid: nothing may draw or judge a point that is nowhere."""
    ahead = timedelta(seconds=limits.max_ahead_s)
    for p in positions:
        if p.fix_time - p.received_time > ahead:
            p.extras[TIME_AHEAD] = True
        if not (-90.0 <= p.lat <= 90.0 and -180.0 <= p.lon <= 180.0):
            p.extras[COORDS_INVALID] = True
            p.valid = False
        if p.speed_kmh > limits.max_speed_kmh:
            p.extras[SPEED_IMPLAUSIBLE] = True
