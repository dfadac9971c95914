"""Rule thresholds: one :class:`Profile` per vehicle class, defaults from the regulations.

Defaults (``../shared/docs/regulations.md`` 3.2 and 3.3):

* speed: school bus and hazmat 80 km/h on expressways, 60 elsewhere, a school bus 20 in hazard
  fences (school gates, villages, level crossings); coach 100 on expressways
  (the general limit for "other motor vehicles"), no class limit elsewhere, and at night
  (22:00-06:00 Beijing) 80% of whatever its day limit is; heavy trucks and others 100 on
  expressways and only posted (zone) limits elsewhere; police exempt unless configured.
* fatigue: 4 h continuous, a coach 2 h at night, 8 h in any 24 h, a coach 44 h in any 7 days,
  a rest is 20 min stopped, pre-warning at 3.5 h, escalation 15 min after it; long-distance
  coaches stop 02:00-05:00.
* offline and no-fix after 10 min; a jump implying over 250 km/h is not a fix.

Everything can be overridden from a dict, per class or for all classes, from the platform's
configuration (:meth:`RuleSettings.from_dict`), and per vehicle from ``vehicles.overrides``
(flat :class:`Profile` field names, see :meth:`RuleSettings.profile`). Durations are seconds,
speeds km/h.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

from alerts.model import COACH, HAZMAT, HEAVY_TRUCK, OTHER, POLICE, SCHOOL_BUS, VehicleInfo

HOUR = 3600.0
MINUTE = 60.0


@dataclass(frozen=True, slots=True)
class Profile:
    """What the speeding and fatigue rules apply to one vehicle."""

    # --- speeding
    speed_exempt: bool = False  # police cars
    expressway_kmh: float | None = 100.0  # class limit inside an expressway speed-limit fence
    elsewhere_kmh: float | None = None  # class limit anywhere else (None: posted limits only)
    night_factor: float = 1.0  # at night (22:00-06:00) the whole limit is multiplied by this
    min_over_s: float = 10.0  # above the limit this long before an episode starts
    min_under_s: float = 10.0  # back under the limit this long before it ends
    prewarn_margin_kmh: float = 5.0  # SPEEDING_WARNING within this much below the limit
    speed_gap_s: float = 120.0  # a longer gap between fixes ends a speeding run
    hazard_kmh: float | None = None  # class limit inside a hazard fence (school bus: 20)
    # --- fatigue
    fatigue: bool = True
    moving_kmh: float = 5.0  # faster than this is driving
    continuous_s: float = 4 * HOUR
    night_continuous_s: float | None = None  # coaches: 2 h when it is night
    daily_s: float = 8 * HOUR
    daily_window_s: float = 24 * HOUR
    weekly_s: float | None = None  # coaches: 44 h of driving in any 7 days
    weekly_window_s: float = 7 * 24 * HOUR
    rest_s: float = 20 * MINUTE
    prewarn_s: float = 3.5 * HOUR  # at night: night limit minus (continuous_s - prewarn_s)
    escalation_s: float = 15 * MINUTE
    night_ban: bool = False  # long-distance coaches (VehicleInfo.long_distance) only
    night_ban_min_s: float = 60.0  # driving in 02:00-05:00 this long before it is an alert
    hold_s: float = 300.0  # a fix's state holds this long; a longer silence is a stop
    use_acc: bool = True  # a stop with ACC on is no rest


_PROFILE_FIELDS = {f.name: f for f in fields(Profile)}

DEFAULT_CLASSES: dict[str, Profile] = {
    SCHOOL_BUS: Profile(expressway_kmh=80.0, elsewhere_kmh=60.0, hazard_kmh=20.0),
    HAZMAT: Profile(expressway_kmh=80.0, elsewhere_kmh=60.0),
    COACH: Profile(
        expressway_kmh=100.0,
        night_factor=0.8,
        night_continuous_s=2 * HOUR,
        night_ban=True,
        weekly_s=44 * HOUR,
    ),
    HEAVY_TRUCK: Profile(),
    OTHER: Profile(),
    # Police cars are small passenger cars (120 on expressways) when not exempt.
    POLICE: Profile(speed_exempt=True, expressway_kmh=120.0),
}


def _coerce(name: str, value: Any) -> Any:
    """A config value as the field's type (JSON gives ints for floats, strings for nothing)."""
    kind = _PROFILE_FIELDS[name].type
    if value is None:
        if "None" not in str(kind):
            raise ValueError(f"{name} may not be null")
        return None
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, not {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, not {value!r}")
    return float(value)


def _apply(profile: Profile, changes: dict[str, Any], strict: bool) -> Profile:
    known = {}
    for name, value in changes.items():
        if name not in _PROFILE_FIELDS:
            if strict:
                raise ValueError(f"unknown rule setting {name!r}")
            continue  # vehicles.overrides may hold settings of other parts
        try:
            known[name] = _coerce(name, value)
        except ValueError:
            if strict:
                raise
    return replace(profile, **known) if known else profile


@dataclass(slots=True)
class RuleSettings:
    """Global thresholds plus the class profiles."""

    offline_s: float = 10 * MINUTE  # no report (received time) this long: OFFLINE
    no_fix_s: float = 10 * MINUTE  # reporting without a valid fix this long: NO_FIX
    jump_kmh: float = 250.0  # implied speed from the previous usable fix over this: a jump
    jump_tolerance_m: float = 50.0  # GNSS scatter allowed on top of the implied speed
    jump_reanchor: int = 3  # this many consecutive fixes agreeing with each other end a jump
    late_idle_s: float = 30.0  # a late (blind-area) sequence idle this long is finished
    recent_s: float = 120.0  # a fix received more than this after its fix time is found late
    classes: dict[str, Profile] = field(default_factory=lambda: dict(DEFAULT_CLASSES))

    @classmethod
    def from_dict(cls, config: dict[str, Any] | None) -> RuleSettings:
        """Defaults plus ``config``::

            {"offline_s": 900, "all": {"min_over_s": 20},
             "classes": {"police": {"speed_exempt": false}, "coach": {"expressway_kmh": 90}}}

        Unknown names raise ValueError (a typo in a config file should not pass silently).
        """
        settings = cls()
        config = dict(config or {})
        common = config.pop("all", {}) or {}
        per_class = config.pop("classes", {}) or {}
        for name, value in config.items():
            if name == "classes" or name not in RuleSettings.__dataclass_fields__:
                raise ValueError(f"unknown rule setting {name!r}")
            expected = int if name == "jump_reanchor" else float
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, not {value!r}")
            setattr(settings, name, expected(value))
        classes = {k: _apply(p, common, strict=True) for k, p in DEFAULT_CLASSES.items()}
        for klass, changes in per_class.items():
            classes[klass] = _apply(classes.get(klass, classes[OTHER]), changes, strict=True)
        settings.classes = classes
        return settings

    def profile(self, vehicle: VehicleInfo) -> Profile:
        """The class profile with the vehicle's own overrides on top. Overrides come from the
        database, so unknown or ill-typed entries are skipped rather than raised on the ingest
        path."""
        base = self.classes.get(vehicle.vehicle_class) or self.classes[OTHER]
        return _apply(base, vehicle.overrides, strict=False) if vehicle.overrides else base


def as_dict(profile: Profile) -> dict[str, Any]:
    """A profile as plain values (for reports and the terminal parameter templates)."""
    return dataclasses.asdict(profile)
