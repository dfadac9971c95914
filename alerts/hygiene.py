"""Which fixes the position-based rules may trust.

A fix is *not usable* when:

* the terminal says it is not positioned (status bit 1 clear, which ingest turns into
  ``Position.valid`` False; only ``valid`` is read, so NMEA and imported fixes work the same):
  the coordinates are the last known or zero;
* it is at (0, 0) or outside lon/lat range, whatever the status says (a common terminal bug);
* it is an impossible jump: reaching it from the previous usable fix needs more than
  ``jump_kmh`` (250 km/h by default), after allowing ``jump_tolerance_m`` of GNSS scatter so
  that two close fixes a second apart are not a "jump".

Only usable fixes feed geofences and speeding. What the others take:

* offline: every report (it is about the link, received time);
* no-fix: a report is a fix unless it is invalid or (0, 0); a jump still is (the receiver works,
  the position is wrong);
* terminal alarms: every report (the alarm word does not depend on the fix);
* fatigue: every report's time, speed and ACC bit (the terminal's speed may come from the
  vehicle speed sensor, and a stop with a lost fix is still a stop).

A jump is judged against the previous *usable* fix, so one wild fix does not poison the next.
If the previous usable fix was itself the wrong one (or the vehicle really was carried away,
e.g. on a ferry with the terminal off), every later fix would be a jump; so after
``jump_reanchor`` consecutive fixes that agree with each other but not with the old anchor,
the latest of them is accepted and becomes the new anchor (the engine then gives it no
``previous``: there is no trustworthy segment to cross fences on). Late fixes (behind the
vehicle's newest) are judged in their own lane, against the previous usable late fix.

Distances use an equirectangular approximation (:func:`hop_m`: WGS-84 radii at the mean
latitude, within 0.1% of the geodesic for the few-kilometre hops a 250 km/h test is about,
~10x cheaper than ``pyproj.Geod.inv``; the per-fix :meth:`JumpFilter.judge` uses a sphere,
within 0.5%, which moves the 250 km/h line by about 1 km/h).
"""

from __future__ import annotations

import math

from geo.position import Position

INVALID, ZERO, JUMP = "invalid", "zero", "jump"
NO_FIX, REJECTED, OK, REANCHORED = -1, 0, 1, 2

_A = 6378137.0
_E2 = 6.69437999014e-3
_RAD = math.pi / 180.0
_HALF_RAD = _RAD / 2
_M_PER_DEG = 111_195.0  # a degree of the mean-radius sphere


def hop_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Approximate distance in metres between two nearby WGS-84 points."""
    phi = (lat1 + lat2) * 0.5 * _RAD
    s = math.sin(phi)
    w = 1.0 - _E2 * s * s
    n = _A / math.sqrt(w)
    dx = (lon2 - lon1) * _RAD * n * math.cos(phi)
    dy = (lat2 - lat1) * _RAD * n * (1.0 - _E2) / w
    return math.sqrt(dx * dx + dy * dy)


def bad_coordinates(p: Position) -> str | None:
    """INVALID or ZERO when the fix carries no position at all, else None."""
    if not p.valid:  # JT/T 808: status bit 1, decoded by ingest.positions
        return INVALID
    lon, lat = p.lon, p.lat
    if -1e-6 < lon < 1e-6 and -1e-6 < lat < 1e-6:
        return ZERO
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        return INVALID
    return None


class JumpFilter:
    """Per-lane jump state: the anchor (last usable fix) and a streak of rejected fixes."""

    __slots__ = ("anchor", "anchor_t", "streak", "streak_last", "streak_t")

    def __init__(self) -> None:
        self.anchor: Position | None = None
        self.anchor_t = 0.0
        self.streak = 0
        self.streak_last: Position | None = None
        self.streak_t = 0.0

    def judge(
        self, p: Position, t: float, max_kmh: float, tolerance_m: float, reanchor: int
    ) -> int:
        """The whole hygiene verdict for ``p`` (fix time ``t``, epoch seconds) in one call (the
        engine's hot path): NO_FIX for bad coordinates, else as :meth:`check`."""
        lon, lat = p.lon, p.lat
        if not p.valid or (-1e-6 < lon < 1e-6 and -1e-6 < lat < 1e-6):
            return NO_FIX
        if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
            return NO_FIX
        a = self.anchor
        if a is not None:
            # A cheaper hop than hop_m for the hot path (flat metres per degree at the latitude,
            # within 0.5% of the geodesic), compared squared: no square root.
            dx = (lon - a.lon) * _M_PER_DEG * math.cos((lat + a.lat) * _HALF_RAD)
            dy = (lat - a.lat) * _M_PER_DEG
            dt = t - self.anchor_t
            reach = max_kmh * (dt if dt >= 0.0 else -dt) / 3.6 + tolerance_m
            if dx * dx + dy * dy > reach * reach:
                return self._rejected(p, t, max_kmh, tolerance_m, reanchor)
        self.anchor, self.anchor_t = p, t
        if self.streak:
            self.streak, self.streak_last = 0, None
        return OK

    def check(
        self, p: Position, t: float, max_kmh: float, tolerance_m: float, reanchor: int
    ) -> int:
        """OK if ``p`` (fix time ``t``, epoch seconds) is consistent with the anchor, REANCHORED
        if it ends a streak of fixes that disagree with it, REJECTED (0) for a jump. An accepted
        fix becomes the anchor. Call only for fixes with good coordinates."""
        a = self.anchor
        if a is None or _plausible(a, self.anchor_t, p, t, max_kmh, tolerance_m):
            self.anchor, self.anchor_t, self.streak, self.streak_last = p, t, 0, None
            return OK
        return self._rejected(p, t, max_kmh, tolerance_m, reanchor)

    def _rejected(
        self, p: Position, t: float, max_kmh: float, tolerance_m: float, reanchor: int
    ) -> int:
        last = self.streak_last
        if last is not None and _plausible(last, self.streak_t, p, t, max_kmh, tolerance_m):
            self.streak += 1
        else:
            self.streak = 1
        self.streak_last, self.streak_t = p, t
        if self.streak >= reanchor:
            self.anchor, self.anchor_t, self.streak, self.streak_last = p, t, 0, None
            return REANCHORED
        return REJECTED


def _plausible(
    a: Position, ta: float, b: Position, tb: float, max_kmh: float, tolerance_m: float
) -> bool:
    excess = hop_m(a.lon, a.lat, b.lon, b.lat) - tolerance_m
    if excess <= 0.0:
        return True
    dt = abs(tb - ta)
    return dt > 0.0 and excess * 3.6 <= max_kmh * dt
