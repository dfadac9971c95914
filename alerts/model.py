"""What the rules engine consumes and produces: the vehicle it judges, and alert events.

A rule reports an *episode* (one overspeed, one stay in a fence, one SOS) as events: ``open``
when it starts, ``update`` while it lasts and its figures change (max speed, duration), and
``close`` when it ends. ``key`` names the episode among the vehicle's open ones (type plus its
subject: a fence id, an alarm bit), so the store can match a close to its open.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

# The vehicle classes, re-exported for the rules (defined once, in geo.classes).
from geo.classes import COACH as COACH
from geo.classes import HAZMAT as HAZMAT
from geo.classes import HEAVY_TRUCK as HEAVY_TRUCK
from geo.classes import OTHER as OTHER
from geo.classes import POLICE as POLICE
from geo.classes import SCHOOL_BUS as SCHOOL_BUS
from geo.classes import VEHICLE_CLASSES as VEHICLE_CLASSES
from geo.position import Position

if TYPE_CHECKING:
    from alerts.settings import Profile

# Alert types.
SPEEDING = "speeding"
SPEEDING_WARNING = "speeding_warning"
FATIGUE_CONTINUOUS = "fatigue_continuous"  # > 4 h (coach at night: > 2 h) without a 20 min rest
FATIGUE_DAILY = "fatigue_daily"  # > 8 h of driving in any 24 h
FATIGUE_WEEKLY = "fatigue_weekly"  # a coach: > 44 h of driving in any 7 days
FATIGUE_WARNING = "fatigue_warning"  # pre-warning (3.5 h)
FATIGUE_ESCALATION = "fatigue_escalation"  # still driving 15 min after the pre-warning
NIGHT_DRIVING = "night_driving"  # long-distance coach moving 02:00-05:00
GEOFENCE_ENTER = "geofence_enter"
GEOFENCE_EXIT = "geofence_exit"
GEOFENCE_DWELL = "geofence_dwell"
FORBIDDEN_ZONE = "forbidden_zone"
ROUTE_DEVIATION = "route_deviation"
TERMINAL_ALARM = "terminal_alarm"  # one per alarm-word bit episode; details["bit"], ["name"]
OFFLINE = "offline"
NO_FIX = "no_fix"
WATCHLIST = "watchlist"
WATCHLIST_AREA = "watchlist_area"

ALERT_TYPES = (
    SPEEDING, SPEEDING_WARNING, FATIGUE_CONTINUOUS, FATIGUE_DAILY, FATIGUE_WEEKLY, FATIGUE_WARNING,
    FATIGUE_ESCALATION, NIGHT_DRIVING, GEOFENCE_ENTER, GEOFENCE_EXIT, GEOFENCE_DWELL,
    FORBIDDEN_ZONE, ROUTE_DEVIATION, TERMINAL_ALARM, OFFLINE, NO_FIX, WATCHLIST, WATCHLIST_AREA,
)  # fmt: skip

#: Instants that need no handling: recorded (the store closes them as it stores them), never
#: left open for a dispatcher.
RECORD_ONLY = frozenset({GEOFENCE_ENTER, GEOFENCE_EXIT, SPEEDING_WARNING})

# Severities: 1 is the most urgent (an SOS), 4 informational.
CRITICAL, HIGH, MEDIUM, LOW = 1, 2, 3, 4

Phase = Literal["open", "update", "close"]


@dataclass(frozen=True, slots=True)
class VehicleInfo:
    """The facts about a vehicle that rules depend on (from the ``vehicles`` table)."""

    id: int
    plate: str | None = None
    vehicle_class: str = OTHER
    company_id: int | None = None
    long_distance: bool = False  # a long-distance coach: the 02:00-05:00 rule applies
    overrides: dict[str, Any] = field(default_factory=dict)  # per-vehicle rule settings


@dataclass(slots=True)
class AlertEvent:
    """One step of an alert episode of one vehicle.

    ``start``/``end`` are fix times (UTC). ``late`` marks episodes found in late data (0x0704
    batches, fix times behind the vehicle's newest): recorded, never notified to the driver.
    ``driver`` is the identified driver (0x0702 IC card) when there is one. ``found``: the fix
    time of the report that revealed the event (None from the wall-clock tick); the start of a
    threshold crossing lies between two reports, so this is what says how fresh the news is.

    One incident is one alert: an incident that goes through stages (fatigue warning, then
    escalation, then alarm) is an ``open`` followed by ``update`` events of the later stage
    types under the same key and start (``at`` = when the stage was reached), and one
    ``close``. Types in :data:`RECORD_ONLY` are instants the store records closed.
    """

    phase: Phase
    type: str
    vehicle_id: int
    key: str
    start: datetime
    end: datetime | None = None
    severity: int = MEDIUM
    late: bool = False
    driver: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    found: datetime | None = None
    at: datetime | None = None  # when this step happened (fix time; None: start, or end)


@dataclass(slots=True)
class Fix:
    """One position as the rules see it, after the engine's hygiene checks.

    ``usable``: a valid fix, not (0, 0), no impossible jump from the previous usable fix; only
    usable fixes feed geofence and speeding rules. ``late``: from a 0x0704 batch or behind the
    vehicle's newest fix time. ``previous``: the vehicle's previous usable fix (for crossings
    between sparse fixes). ``fences``: ``FenceIndex.classify`` of this fix (empty when not
    usable): fence id -> 1 inside beyond its margin, 0 within its margin of the boundary.
    ``t``: the fix time in epoch seconds; ``behind``: older than the vehicle's newest fix (the
    rules' late lanes); ``has_fix``: good coordinates (no jump verdict); ``profile``: the
    vehicle's thresholds. The engine fills all of them, once per position.
    """

    position: Position
    vehicle: VehicleInfo
    late: bool = False
    usable: bool = True
    previous: Position | None = None
    fences: dict[int, int] = field(default_factory=dict)
    driver: str | None = None
    t: float = 0.0
    behind: bool = False
    has_fix: bool = True
    profile: Profile | None = None
