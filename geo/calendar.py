"""The Beijing calendar the regulations count in: days start at Beijing midnight, night is
22:00-06:00 Beijing time (China keeps one zone, UTC+8, without daylight saving).

The platform stores UTC; rules that speak of "night", "the 02:00-05:00 ban" or "a day" convert
here, and only here. (The JT/T 808 codec has its own UTC+8 for the wire clock of terminals:
protocols/ imports nothing of ours.)
"""

from __future__ import annotations

from datetime import timedelta, timezone

BEIJING = timezone(timedelta(hours=8), "+08:00")
OFFSET_S = 8 * 3600.0
DAY_S = 86400.0
#: Night in the regulations: from 22:00 to 06:00 the next morning (hours, Beijing time).
NIGHT_START_H, NIGHT_END_H = 22, 6


def day_start(t: float) -> float:
    """Epoch seconds of the Beijing midnight starting the day of ``t`` (epoch seconds)."""
    return ((t + OFFSET_S) // DAY_S) * DAY_S - OFFSET_S


def second_of_day(t: float) -> float:
    """Seconds since the Beijing midnight before ``t``."""
    return (t + OFFSET_S) % DAY_S


def is_night(t: float) -> bool:
    """Whether ``t`` (epoch seconds) is at night (22:00-06:00 Beijing time)."""
    s = (t + OFFSET_S) % DAY_S
    return s >= NIGHT_START_H * 3600 or s < NIGHT_END_H * 3600


__all__ = [
    "BEIJING",
    "DAY_S",
    "NIGHT_END_H",
    "NIGHT_START_H",
    "OFFSET_S",
    "day_start",
    "is_night",
    "second_of_day",
]
