"""Value flags a fix can carry in ``Position.extras`` (and so in the stored row's ``extras``).

Set at ingest (``ingest.values``), read by the store (which fixes may move the last position)
and by the rules (which fixes count as current). Flags rather than dropped data: the row is
kept as the terminal sent it, and anyone reading it sees why it was not trusted.

* ``time_invalid``: the terminal's time was not a time (unset clock, impossible BCD). The row's
  fix time is a stable stand-in before 1980 (see ``ingest.positions``), so a retransmission is
  the same row.
* ``time_ahead``: the fix time is further ahead of the receive time than the configured limit
  (a clock decades off): stored as sent, but it never moves the last position nor counts as
  the vehicle's newest fix.
* ``coords_invalid``: latitude outside ±90 or longitude outside ±180 (the fix is also invalid).
* ``speed_implausible``: a reported speed no road vehicle reaches (kept, not used for speeding).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TIME_INVALID = "time_invalid"
TIME_AHEAD = "time_ahead"
COORDS_INVALID = "coords_invalid"
SPEED_IMPLAUSIBLE = "speed_implausible"

#: Flags that keep a fix out of ``last_positions`` (the map) and out of "current".
NOT_CURRENT = (TIME_INVALID, TIME_AHEAD, COORDS_INVALID)
#: Flags that make the fix time unusable for ordering: the rules judge the fix at its arrival.
TIME_UNTRUSTED = (TIME_INVALID, TIME_AHEAD)


def moves_last(extras: Mapping[str, Any] | None) -> bool:
    """Whether a fix with these extras may become the vehicle's last position."""
    return not extras or not any(extras.get(flag) for flag in NOT_CURRENT)


def time_untrusted(extras: Mapping[str, Any] | None) -> bool:
    """Whether the fix time of a fix with these extras is not to be believed."""
    return bool(extras) and any(extras.get(flag) for flag in TIME_UNTRUSTED)  # type: ignore[union-attr]
