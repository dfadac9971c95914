"""Terminal-side enforcement: the rules' thresholds and the server's geofences pushed to the
terminal, so it warns its driver by itself even when the platform cannot reach it.

* **Parameters** (:class:`~alerts.commands.SetParameters`, by platform name): from the
  vehicle's rule profile (``alerts.settings``, class profile plus the vehicle's overrides):
  ``max_speed_kmh`` (the class's expressway limit: the terminal does not know the road, so its
  cap is the highest legal speed, the platform judges the rest), ``overspeed_duration_s``,
  ``continuous_driving_limit_s``, ``daily_driving_limit_s``, ``minimum_rest_s``,
  ``overspeed_warning_margin_dkmh`` (0.1 km/h), ``fatigue_warning_margin_s``. Anything else
  (``maximum_parking_s``, ...) comes from configuration. A class exempt from speeding (police)
  gets no speed parameters; one without fatigue rules none of those.
* **Areas** (:class:`~alerts.commands.SetAreas`): the fences that apply to the vehicle, with
  the kind's alarms (zone: entry and exit to the platform; forbidden: entry to driver and
  platform; route: exit to driver and platform; speed limit: the limit only), their speed
  limit (plus the night limit from the class's night factor) and their time window when a
  terminal can hold it (one window: daily hours, or a date range; fences with other windows
  are skipped, not pushed as always active). Circles and rectangles go as one "replace all"
  command each; polygons and routes one command per fence. Fences pushed before and no longer
  wanted are deleted (:class:`~alerts.commands.DeleteAreas`).

Each command is an *item* (``params``, ``circles``, ``rectangles``, ``polygon:ID``,
``route:ID``) with the hash of its content; :func:`plan_pushes` leaves out items whose hash is
what the terminal last accepted, which is what makes a reconnect push nothing new.
Sans-I/O and protocol-free: values in, platform commands out (``alerts.supervision`` sends
them through the gateway; ``ingest/areas.py`` says them in JT/T 808, fitting them to frames).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import time
from typing import Any

from alerts.commands import (
    Command,
    DeleteAreas,
    SetAreas,
    SetParameters,
    canonical_json,
    command_to_json,
    content_hash,
)
from alerts.model import VehicleInfo
from alerts.settings import Profile, RuleSettings
from geo.fences import CIRCLE, CORRIDOR, FORBIDDEN, KINDS, RECTANGLE, ROUTE, ZONE, Geofence

#: The alarms each fence kind asks the terminal for (on entry/exit, to the driver/platform).
KIND_ALARMS = {
    ZONE: ("enter_platform", "exit_platform"),
    FORBIDDEN: ("enter_driver", "enter_platform"),
    ROUTE: ("exit_driver", "exit_platform"),
}
#: A parameter as configuration may name it: a platform name, or a hex id ("0x0029").
_PARAM_KEY = re.compile(r"^([a-z][a-z0-9_]*|0x[0-9a-fA-F]{1,8})$")


@dataclass(frozen=True, slots=True)
class EnforcementConfig:
    """What to push (``from_config`` of the ``enforcement`` section of the rules config)::

        {"on_authentication": true, "unprovisioned": false, "params": true, "areas": true,
         "kinds": ["zone", "forbidden", "speed_limit", "route"], "max_areas": 32,
         "extra_params": {"all": {"maximum_parking_s": 7200}, "coach": {"0x0029": 30}}}

    ``extra_params``: parameters added to (or overriding) the template, by platform name or
    hex id, for all classes or one class (a name the terminal's protocol does not know makes
    the push fail as invalid, and is logged). A fence
    whose GeoJSON properties say ``"push": false`` is never pushed. ``unprovisioned``: also
    push to terminals of the unassigned pool (registered under the ``open`` policy, not yet
    provisioned): off by default, since nobody has said yet which vehicle, class and company
    such a terminal belongs to, and it may be a device another platform manages.
    """

    on_authentication: bool = True
    unprovisioned: bool = False
    params: bool = True
    areas: bool = True
    kinds: frozenset[str] = frozenset(KINDS)
    max_areas: int = 32  # per area type: terminals hold few
    extra_params: Mapping[str, Mapping[str, int | str]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EnforcementConfig:
        known = {
            "on_authentication", "unprovisioned", "params", "areas", "kinds", "max_areas",
            "extra_params",
        }  # fmt: skip
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"enforcement: unknown key(s) {', '.join(sorted(unknown))}")
        kinds = frozenset(config.get("kinds", KINDS))
        if not kinds <= set(KINDS):
            raise ValueError(f"enforcement.kinds: from {', '.join(KINDS)}")
        extra: dict[str, dict[str, int | str]] = {}
        for scope, params in (config.get("extra_params") or {}).items():
            extra[scope] = {_param_key(k): v for k, v in params.items()}
        return cls(
            on_authentication=bool(config.get("on_authentication", True)),
            unprovisioned=bool(config.get("unprovisioned", False)),
            params=bool(config.get("params", True)),
            areas=bool(config.get("areas", True)),
            kinds=kinds,
            max_areas=int(config.get("max_areas", 32)),
            extra_params=extra,
        )


def _param_key(key: str) -> str:
    if not isinstance(key, str) or not _PARAM_KEY.match(key):
        raise ValueError(f"enforcement: unknown parameter {key!r} (a name or a hex id)")
    return key.lower() if key.startswith("0x") else key


@dataclass(frozen=True, slots=True)
class PushItem:
    """One command of the enforcement push, named and hashed."""

    item: str
    command: Command
    content: dict[str, Any]
    hash: str

    @classmethod
    def of(cls, item: str, command: Command) -> PushItem:
        content = command_to_json(command)
        return cls(item, command, content, content_hash(content))


@dataclass(slots=True)
class Plan:
    """The commands to send, and the fences that could not be pushed (id, why)."""

    items: list[PushItem] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)


# ---------------------------------------------------------------------- parameters


def parameters(
    profile: Profile, extra: Mapping[str, int | str] | None = None
) -> dict[str, int | str]:
    """The terminal's side of a rule profile (plus configured extras), by platform name."""
    values: dict[str, int | str] = {}
    limit = profile.expressway_kmh if profile.expressway_kmh is not None else profile.elsewhere_kmh
    if not profile.speed_exempt and limit is not None:
        values["max_speed_kmh"] = round(limit)
        values["overspeed_duration_s"] = round(profile.min_over_s)
        values["overspeed_warning_margin_dkmh"] = round(profile.prewarn_margin_kmh * 10)
    if profile.fatigue:
        values["continuous_driving_limit_s"] = round(profile.continuous_s)
        values["daily_driving_limit_s"] = round(profile.daily_s)
        values["minimum_rest_s"] = round(profile.rest_s)
        values["fatigue_warning_margin_s"] = max(0, round(profile.continuous_s - profile.prewarn_s))
    values.update(extra or {})
    return values


# ---------------------------------------------------------------------- areas


def _schedule(fence: Geofence) -> dict[str, Any] | None:
    """The fence's windows as a terminal can hold them (``daily`` hours or a ``dates`` range,
    or nothing: always), or None if it cannot: more than one window, weekdays, or both."""
    if not fence.windows:
        return {}
    if len(fence.windows) > 1:
        return None
    w = fence.windows[0]
    if w.days:
        return None
    daily = w.start is not None and w.end is not None and w.start != w.end
    dated = w.start_date is not None or w.end_date is not None
    if daily and dated:
        return None
    if daily:
        assert w.start is not None and w.end is not None
        return {"daily": [_clock(w.start), _clock(w.end)]}
    if dated:
        if w.start_date is None or w.end_date is None:
            return None  # an open-ended range cannot be held
        return {"dates": [w.start_date.isoformat(), w.end_date.isoformat()]}
    return {}  # whole days


def _clock(at: time) -> str:
    return at.replace(microsecond=0).isoformat()


def _speed(fence: Geofence, profile: Profile) -> dict[str, Any]:
    """Limit, overspeed duration and night limit of a fence with a speed limit."""
    if fence.speed_limit_kmh is None:
        return {}
    return {
        "speed_limit_kmh": round(fence.speed_limit_kmh),
        "overspeed_s": round(profile.min_over_s),
        "night_speed_limit_kmh": round(fence.speed_limit_kmh * profile.night_factor),
    }


def _coords(coords: Iterable[tuple[float, ...]]) -> list[list[float]]:
    return [[round(x, 7), round(y, 7)] for x, y, *_ in coords]


def area(fence: Geofence, profile: Profile) -> dict[str, Any] | None:
    """A fence as an area description (see :class:`~alerts.commands.SetAreas`), or None if a
    terminal cannot hold its time windows."""
    schedule = _schedule(fence)
    if schedule is None:
        return None
    out: dict[str, Any] = {"id": fence.id, "name": fence.name,
                           "alarms": list(KIND_ALARMS.get(fence.kind, ()))}  # fmt: skip
    out.update(schedule)
    out.update(_speed(fence, profile))
    geometry = fence.geometry
    if fence.shape == CIRCLE:
        assert fence.radius_m is not None
        out["center"] = [geometry.x, geometry.y]
        out["radius_m"] = round(fence.radius_m)
    elif fence.shape == RECTANGLE:
        out["bounds"] = list(geometry.bounds)
    elif fence.shape == CORRIDOR:
        assert fence.width_m is not None
        out["line"] = _coords(geometry.coords)
        out["width_m"] = fence.width_m
        out["max_shift_m"] = max(fence.margin_m, fence.width_m / 2)
    else:
        out["ring"] = _coords(geometry.exterior.coords)[:-1]
        out["max_shift_m"] = fence.margin_m
    return out


def area_items(
    vehicle: VehicleInfo,
    profile: Profile,
    fences: Iterable[Geofence],
    config: EnforcementConfig,
) -> Plan:
    """The area commands for the fences that apply to this vehicle."""
    plan = Plan()
    circles: list[dict[str, Any]] = []
    rectangles: list[dict[str, Any]] = []
    polygons: list[PushItem] = []
    routes: list[PushItem] = []
    for fence in sorted(fences, key=lambda f: f.id):
        if (
            fence.kind not in config.kinds
            or fence.properties.get("push") is False
            or not fence.applies(vehicle.vehicle_class, vehicle.id, vehicle.company_id)
        ):
            continue
        described = area(fence, profile)
        if described is None:
            plan.skipped.append((fence.id, "a terminal cannot hold its time windows"))
            continue
        target: list[Any]
        built: Any
        if fence.shape in (CIRCLE, RECTANGLE):
            target, built = (circles if fence.shape == CIRCLE else rectangles), described
        else:
            shape, target = ("route", routes) if fence.shape == CORRIDOR else ("polygon", polygons)
            built = PushItem.of(f"{shape}:{fence.id}", SetAreas(shape, [described]))
        if len(target) >= config.max_areas:
            plan.skipped.append((fence.id, f"more than {config.max_areas} of its shape"))
        else:
            target.append(built)
    if circles:
        plan.items.append(PushItem.of("circles", SetAreas("circle", circles)))
    if rectangles:
        plan.items.append(PushItem.of("rectangles", SetAreas("rectangle", rectangles)))
    plan.items.extend(polygons)
    plan.items.extend(routes)
    return plan


def deletion(item: str) -> PushItem | None:
    """The command that removes an area item from the terminal (None: not an area item)."""
    if item == "circles":
        return PushItem.of(item, DeleteAreas("circle"))
    if item == "rectangles":
        return PushItem.of(item, DeleteAreas("rectangle"))
    kind, _, number = item.partition(":")
    if not number.isdigit():
        return None
    if kind in ("polygon", "route"):
        return PushItem.of(item, DeleteAreas(kind, [int(number)]))
    return None


def plan_pushes(
    vehicle: VehicleInfo,
    settings: RuleSettings,
    fences: Iterable[Geofence],
    accepted: Mapping[str, str],
    config: EnforcementConfig | None = None,
) -> Plan:
    """What to push to this vehicle's terminal: the template items whose content differs from
    what it last accepted (``accepted``: item -> hash), and deletions of area items it holds
    that are no longer wanted."""
    config = config or EnforcementConfig()
    profile = settings.profile(vehicle)
    wanted = Plan()
    if config.params:
        extra = {**config.extra_params.get("all", {}),
                 **config.extra_params.get(vehicle.vehicle_class, {})}  # fmt: skip
        params = parameters(profile, extra)
        if params:
            wanted.items.append(PushItem.of("params", SetParameters(params)))
    if config.areas:
        areas = area_items(vehicle, profile, fences, config)
        wanted.items.extend(areas.items)
        wanted.skipped.extend(areas.skipped)
    plan = Plan(skipped=wanted.skipped)
    names = set()
    for item in wanted.items:
        names.add(item.item)
        if accepted.get(item.item) != item.hash:
            plan.items.append(item)
    for name, held in sorted(accepted.items()):
        if name in names:
            continue
        remove = deletion(name)
        if remove is not None and held != remove.hash:
            plan.items.append(remove)
    return plan


__all__ = [
    "KIND_ALARMS",
    "EnforcementConfig",
    "Plan",
    "PushItem",
    "area",
    "area_items",
    "canonical_json",
    "content_hash",
    "deletion",
    "parameters",
    "plan_pushes",
]
