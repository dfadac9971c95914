"""Geofences: an area with a purpose (zone, forbidden zone, speed limit, route, hazard), when it
is in force (time windows in Beijing time) and which vehicles it concerns.

A *hazard* fence marks a stretch where school buses must slow to a crawl (校车安全管理条例 Art.
35: 20 km/h at school gates, through villages, over level crossings, on sharp curves and narrow
bridges): the speeding rule applies the class's ``hazard_kmh`` there (20 for school buses, none
for other classes) and the fence's own ``speed_limit_kmh`` to everyone it applies to. Like a
speed-limit fence it only sets a limit: entering and leaving it are not recorded.
``properties["hazard"]`` may say what the hazard is (school_gate, village, level_crossing, ...).

Geometry is WGS-84 lon/lat: a Point plus ``radius_m`` for a circle, a Polygon for a rectangle
(axis-aligned) or a polygon, a LineString plus ``width_m`` (the full width, half on each side)
for a corridor. Sizes are metres. ``margin_m`` is the boundary band in which a position does
not change the inside/outside state (GPS jitter); ``min_time_s`` is how long a vehicle must be
on the new side before the change counts. Both are what keep a parked vehicle from flapping.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

import shapely
from shapely.geometry import LineString, Point, Polygon

from geo.calendar import BEIJING

ZONE, FORBIDDEN, SPEED_LIMIT, ROUTE, HAZARD = "zone", "forbidden", "speed_limit", "route", "hazard"
KINDS = (ZONE, FORBIDDEN, SPEED_LIMIT, ROUTE, HAZARD)
#: Kinds that only set a speed limit (no entry/exit records of their own).
LIMIT_KINDS = (SPEED_LIMIT, HAZARD)
CIRCLE, RECTANGLE, POLYGON, CORRIDOR = "circle", "rectangle", "polygon", "corridor"
SHAPES = (CIRCLE, RECTANGLE, POLYGON, CORRIDOR)

DEFAULT_MARGIN_M = 20.0
DEFAULT_MIN_TIME_S = 30.0


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """When a fence is in force, in Beijing time.

    ``days``: ISO weekdays (1 = Monday .. 7 = Sunday), empty = every day. ``start``/``end``:
    daily hours [start, end); ``end <= start`` runs past midnight (22:00-06:00), and then the
    day that counts is the one the window began on; ``start == end`` is the whole day; None =
    all day. ``start_date``/``end_date``: an inclusive date range (either may be open).
    """

    days: frozenset[int] = frozenset()
    start: time | None = None
    end: time | None = None
    start_date: date | None = None
    end_date: date | None = None

    def __post_init__(self) -> None:
        if (self.start is None) != (self.end is None):
            raise ValueError("a daily window needs both 'from' and 'to'")
        if any(d not in range(1, 8) for d in self.days):
            raise ValueError(f"days {sorted(self.days)}: ISO weekdays 1 (Monday) to 7 (Sunday)")
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")

    def contains(self, local: datetime) -> bool:
        """Whether the window covers ``local`` (a Beijing-time datetime)."""
        day = local.date()
        if self.start_date and day < self.start_date:
            return False
        if self.end_date and day > self.end_date:
            return False
        days = self.days
        if self.start is None or self.end is None or self.start == self.end:
            return not days or local.isoweekday() in days
        now = local.time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= now < self.end and (not days or local.isoweekday() in days)
        if now >= self.start:  # evening part of an overnight window: began today
            return not days or local.isoweekday() in days
        if now < self.end:  # morning part: began yesterday
            return not days or (local.isoweekday() - 2) % 7 + 1 in days
        return False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.days:
            out["days"] = sorted(self.days)
        if self.start is not None and self.end is not None:
            out["from"] = self.start.strftime("%H:%M")
            out["to"] = (
                "24:00"
                if self.end == time(0) and self.start != time(0)
                else (self.end.strftime("%H:%M"))
            )
        if self.start_date:
            out["start_date"] = self.start_date.isoformat()
        if self.end_date:
            out["end_date"] = self.end_date.isoformat()
        return out

    @classmethod
    def from_json(cls, value: Any) -> TimeWindow:
        """Parse ``{"days"?, "from": "HH:MM", "to": "HH:MM"}`` and/or ``{"start_date",
        "end_date"}`` (ISO dates); raises ValueError saying what is wrong."""
        if not isinstance(value, Mapping):
            raise ValueError(f"a window is an object, not {value!r}")
        unknown = set(value) - {"days", "from", "to", "start_date", "end_date"}
        if unknown:
            raise ValueError(f"unknown window member(s) {', '.join(sorted(unknown))}")
        if not value:
            raise ValueError("an empty window")
        days = value.get("days") or []
        if not isinstance(days, list):
            raise ValueError(f"days {days!r}: a list of weekdays")
        return cls(
            days=frozenset(_weekday(d) for d in days),
            start=_clock(value["from"]) if "from" in value else None,
            end=_clock(value["to"]) if "to" in value else None,
            start_date=_date(value.get("start_date")),
            end_date=_date(value.get("end_date")),
        )


_WEEKDAYS = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7}


def _weekday(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"weekday {value!r}: 1-7 or mon..sun")
    if isinstance(value, int) and 1 <= value <= 7:
        return value
    if isinstance(value, str) and value[:3].lower() in _WEEKDAYS:
        return _WEEKDAYS[value[:3].lower()]
    raise ValueError(f"weekday {value!r}: 1-7 or mon..sun")


def _clock(value: Any) -> time:
    if isinstance(value, str) and value.strip() == "24:00":
        return time(0)
    try:
        hours, minutes = str(value).strip().split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise ValueError(f"time {value!r}: HH:MM (00:00 to 24:00)") from None


def _date(value: Any) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"date {value!r}: YYYY-MM-DD") from None


@dataclass(frozen=True, slots=True)
class AppliesTo:
    """Which vehicles a fence concerns. Each non-empty set narrows it (a vehicle must match
    all of them: "hazmat trucks of company 3"); all empty = every vehicle."""

    classes: frozenset[str] = frozenset()
    vehicle_ids: frozenset[int] = frozenset()
    company_ids: frozenset[int] = frozenset()

    def matches(self, vehicle_class: str, vehicle_id: int, company_id: int | None) -> bool:
        if self.classes and vehicle_class not in self.classes:
            return False
        if self.vehicle_ids and vehicle_id not in self.vehicle_ids:
            return False
        return not self.company_ids or company_id in self.company_ids

    @property
    def everyone(self) -> bool:
        return not (self.classes or self.vehicle_ids or self.company_ids)

    def to_json(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        if self.classes:
            out["classes"] = sorted(self.classes)
        if self.vehicle_ids:
            out["vehicles"] = sorted(self.vehicle_ids)
        if self.company_ids:
            out["companies"] = sorted(self.company_ids)
        return out


@dataclass
class Geofence:
    """One fence. ``properties`` keeps the GeoJSON properties it came with (including any the
    platform does not interpret) so an export gives them back."""

    id: int
    name: str
    kind: str
    shape: str
    geometry: shapely.Geometry
    radius_m: float | None = None
    width_m: float | None = None
    speed_limit_kmh: float | None = None
    expressway: bool | None = None  # None: True for speed-limit corridors, else False
    windows: tuple[TimeWindow, ...] = ()
    applies_to: AppliesTo = field(default_factory=AppliesTo)
    margin_m: float = DEFAULT_MARGIN_M
    min_time_s: float = DEFAULT_MIN_TIME_S
    max_dwell_s: float | None = None
    watched: bool = False
    properties: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.expressway is None:
            self.expressway = self.kind == SPEED_LIMIT and self.shape == CORRIDOR
        self.windows = tuple(self.windows)
        problem = self._problem()
        if problem:
            raise ValueError(f"geofence {self.id} ({self.name!r}): {problem}")

    def _problem(self) -> str | None:
        if not isinstance(self.name, str) or not self.name.strip():
            return "a name is required"
        if self.kind not in KINDS:
            return f"kind {self.kind!r}: one of {', '.join(KINDS)}"
        if self.shape not in SHAPES:
            return f"shape {self.shape!r}: one of {', '.join(SHAPES)}"
        expected = {CIRCLE: Point, RECTANGLE: Polygon, POLYGON: Polygon, CORRIDOR: LineString}
        if not isinstance(self.geometry, expected[self.shape]):
            return f"a {self.shape} needs a {expected[self.shape].__name__} geometry"
        if self.geometry.is_empty:
            return "empty geometry"
        coords = shapely.get_coordinates(self.geometry)
        if not (
            ((coords[:, 0] >= -180) & (coords[:, 0] <= 180)).all()
            and ((coords[:, 1] >= -90) & (coords[:, 1] <= 90)).all()
        ):
            return "coordinates outside lon -180..180 / lat -90..90"
        if self.shape == CIRCLE and not _positive(self.radius_m):
            return "a circle needs a radius in metres > 0"
        if self.shape == CORRIDOR:
            if not _positive(self.width_m):
                return "a corridor needs a width in metres > 0"
            if self.geometry.length == 0:
                return "a corridor needs a line of non-zero length"
        if self.shape in (RECTANGLE, POLYGON) and not self.geometry.is_valid:
            return f"invalid polygon ({shapely.is_valid_reason(self.geometry)})"
        if self.shape == RECTANGLE:
            x0, y0, x1, y1 = self.geometry.bounds
            if not (x1 > x0 and y1 > y0) or not math.isclose(
                self.geometry.area, (x1 - x0) * (y1 - y0), rel_tol=1e-9
            ):
                return "a rectangle must be an axis-aligned box (west, south, east, north)"
        if self.kind == SPEED_LIMIT and not _positive(self.speed_limit_kmh):
            return "a speed-limit fence needs speed_limit (km/h) > 0"
        if self.speed_limit_kmh is not None and not _positive(self.speed_limit_kmh):
            return "speed_limit must be > 0 km/h"
        if not (_finite(self.margin_m) and self.margin_m >= 0):
            return "margin_m must be >= 0"
        if not (_finite(self.min_time_s) and self.min_time_s >= 0):
            return "min_time_s must be >= 0"
        if self.max_dwell_s is not None and not _positive(self.max_dwell_s):
            return "max_dwell_s must be > 0 seconds"
        return None

    @property
    def centre(self) -> tuple[float, float]:
        """A representative lon/lat (the circle's centre, else the bounding box's centre)."""
        x0, y0, x1, y1 = self.geometry.bounds
        return (x0 + x1) / 2, (y0 + y1) / 2

    def active(self, at: datetime) -> bool:
        """Whether the fence is in force at ``at`` (any of its windows, Beijing time)."""
        if not self.windows:
            return True
        local = at.astimezone(BEIJING)
        return any(window.contains(local) for window in self.windows)

    def applies(self, vehicle_class: str, vehicle_id: int, company_id: int | None) -> bool:
        """Whether the fence concerns this vehicle."""
        return self.applies_to.matches(vehicle_class, vehicle_id, company_id)

    def fingerprint(self) -> tuple[Any, ...]:
        """What the index's compiled shapes depend on (unchanged fingerprint: reuse them)."""
        return (
            self.shape,
            shapely.to_wkb(self.geometry),
            self.radius_m,
            self.width_m,
            self.margin_m,
        )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _finite(value) and value > 0


def unique_ids(fences: Iterable[Geofence]) -> dict[int, Geofence]:
    """Fences by id; two fences with one id are an error."""
    out: dict[int, Geofence] = {}
    for fence in fences:
        if fence.id in out:
            raise ValueError(f"two geofences with id {fence.id}")
        out[fence.id] = fence
    return out
