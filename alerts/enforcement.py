"""Terminal-side enforcement: the rules' thresholds and the server's geofences as JT/T 808
commands, so a terminal warns its driver by itself even when the platform cannot reach it.

* **Parameters** (0x8103): from the vehicle's rule profile (``alerts.settings``, class profile
  plus the vehicle's overrides): 0x0055 max speed (the class's expressway limit: the terminal
  does not know the road, so its cap is the highest legal speed, the platform judges the
  rest), 0x0056 overspeed duration, 0x0057 continuous driving, 0x0058 driving in 24 h, 0x0059
  minimum rest, 0x005B overspeed pre-warning margin (0.1 km/h), 0x005C fatigue pre-warning
  margin (s). 0x005A (max parking) and any other parameter come from configuration. A class
  exempt from speeding (police) gets no speed parameters; one without fatigue rules none of
  those.
* **Areas** (0x8600 circles, 0x8602 rectangles, 0x8604 polygons, 0x8606 routes): the fences
  that apply to the vehicle, with the kind's alarm flags (zone: entry and exit to the platform;
  forbidden: entry to driver and platform; route: exit to driver and platform; speed limit:
  the limit only), their speed limit (plus 2019's night limit from the class's night factor)
  and their time window when the protocol can say it (one window: daily hours, or a date
  range; fences whose windows it cannot express are skipped, not pushed as always active).
  Circles and rectangles go as one "replace all" message each; polygons and routes one message
  per fence, simplified until they fit one frame. Fences pushed before and no longer wanted
  are deleted (0x8601/0x8603/0x8605/0x8607).

Each command is an *item* (``params``, ``circles``, ``rectangles``, ``polygon:ID``,
``route:ID``) with the hash of its content; :func:`plan_pushes` leaves out items whose hash is
what the terminal last accepted, which is what makes a reconnect push nothing new.
Sans-I/O: values in, message bodies out (``alerts.supervision`` sends and records them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any

from alerts.model import VehicleInfo
from alerts.settings import Profile, RuleSettings
from geo.fences import CIRCLE, CORRIDOR, FORBIDDEN, KINDS, RECTANGLE, ROUTE, ZONE, Geofence
from protocols.jt808 import BEIJING, V2019, Body, Param, encode_body
from protocols.jt808.areas import (
    ACTION_REPLACE,
    ATTR_SOUTH,
    ATTR_WEST,
    BY_TIME,
    SEGMENT_SPEED_LIMIT,
    SPEED_LIMIT,
    CircleArea,
    DeleteCircleAreas,
    DeletePolygonAreas,
    DeleteRectangleAreas,
    DeleteRoutes,
    RectangleArea,
    RoutePoint,
    SetCircleAreas,
    SetPolygonArea,
    SetRectangleAreas,
    SetRoute,
    Vertex,
)
from protocols.jt808.params import PARAM_NAMES, PARAM_TYPES
from protocols.jt808.platform import SetParameters

#: Area attribute bits (JT/T 808 0x8600): alarms on entry/exit, to the driver or the platform.
ENTER_DRIVER, ENTER_PLATFORM, EXIT_DRIVER, EXIT_PLATFORM = 0x04, 0x08, 0x10, 0x20
KIND_FLAGS = {
    ZONE: ENTER_PLATFORM | EXIT_PLATFORM,
    FORBIDDEN: ENTER_DRIVER | ENTER_PLATFORM,
    ROUTE: EXIT_DRIVER | EXIT_PLATFORM,
}
#: Largest body in one frame (JT/T 808: 10 bits of length); 2019 bodies are the longer.
MAX_BODY = 1023
_PARAM_IDS = {name: pid for pid, name in PARAM_NAMES.items()}

_canonical = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode


def canonical_json(content: Any) -> str:
    """A JSON value in one canonical text (sorted keys, no spaces)."""
    return _canonical(content)


def content_hash(content: Any) -> str:
    """sha256 of a JSON value's canonical text: equal content, equal hash (what decides
    whether a terminal already holds a push)."""
    return hashlib.sha256(_canonical(content).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class EnforcementConfig:
    """What to push (``from_config`` of the ``enforcement`` section of the rules config)::

        {"on_authentication": true, "unprovisioned": false, "params": true, "areas": true,
         "kinds": ["zone", "forbidden", "speed_limit", "route"], "max_areas": 32,
         "extra_params": {"all": {"maximum_parking_s": 7200}, "coach": {"0x0029": 30}}}

    ``extra_params``: parameters added to (or overriding) the template, by name
    (``protocols.jt808.params.PARAM_NAMES``) or hex id, for all classes or one class. A fence
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
    extra_params: Mapping[str, Mapping[int, int | str]] = field(default_factory=dict)

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
        extra: dict[str, dict[int, int | str]] = {}
        for scope, params in (config.get("extra_params") or {}).items():
            extra[scope] = {_param_id(k): v for k, v in params.items()}
        return cls(
            on_authentication=bool(config.get("on_authentication", True)),
            unprovisioned=bool(config.get("unprovisioned", False)),
            params=bool(config.get("params", True)),
            areas=bool(config.get("areas", True)),
            kinds=kinds,
            max_areas=int(config.get("max_areas", 32)),
            extra_params=extra,
        )


def _param_id(key: str | int) -> int:
    if isinstance(key, int):
        pid = key
    elif key in _PARAM_IDS:
        pid = _PARAM_IDS[key]
    else:
        try:
            pid = int(key, 16) if key.lower().startswith("0x") else int(key)
        except ValueError:
            raise ValueError(f"enforcement: unknown parameter {key!r}") from None
    if pid not in PARAM_TYPES:
        raise ValueError(f"enforcement: parameter 0x{pid:04X} is not a JT/T 808 parameter")
    return pid


@dataclass(frozen=True, slots=True)
class PushItem:
    """One command of the enforcement push, named and hashed."""

    item: str
    body: Body
    content: dict[str, Any]
    hash: str

    @classmethod
    def of(cls, item: str, body: Body) -> PushItem:
        content = body.to_json()
        return cls(item, body, content, content_hash(content))


@dataclass(slots=True)
class Plan:
    """The commands to send, and the fences that could not be pushed (id, why)."""

    items: list[PushItem] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)


# ---------------------------------------------------------------------- parameters


def parameters(profile: Profile, extra: Mapping[int, int | str] | None = None) -> list[Param]:
    """The 0x0055-0x005C template of a rule profile (plus configured extras), by id."""
    values: dict[int, int | str] = {}
    limit = profile.expressway_kmh if profile.expressway_kmh is not None else profile.elsewhere_kmh
    if not profile.speed_exempt and limit is not None:
        values[0x0055] = round(limit)
        values[0x0056] = round(profile.min_over_s)
        values[0x005B] = round(profile.prewarn_margin_kmh * 10)
    if profile.fatigue:
        values[0x0057] = round(profile.continuous_s)
        values[0x0058] = round(profile.daily_s)
        values[0x0059] = round(profile.rest_s)
        values[0x005C] = max(0, round(profile.continuous_s - profile.prewarn_s))
    values.update(extra or {})
    return [Param(pid, values[pid]) for pid in sorted(values)]


# ---------------------------------------------------------------------- areas


def _schedule(fence: Geofence) -> tuple[int, datetime | str | None, datetime | str | None] | None:
    """(attr bit, start, end) for the fence's windows, or None if 0x8600-0x8606 cannot say
    them: one window, no weekdays, either daily hours or a date range."""
    if not fence.windows:
        return 0, None, None
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
        return BY_TIME, _clock(w.start), _clock(w.end)
    if dated:
        if w.start_date is None or w.end_date is None:
            return None  # an open-ended range has no wire form
        start = datetime.combine(w.start_date, time(0), BEIJING)
        end = datetime.combine(w.end_date, time(23, 59, 59), BEIJING)
        return BY_TIME, start, end
    return 0, None, None  # whole days


def _clock(at: time) -> str:
    """Daily time as the protocol writes it: year, month and day zero (every day)."""
    return f"000000{at.hour:02d}{at.minute:02d}{at.second:02d}"


def _speed(fence: Geofence, profile: Profile) -> tuple[int, int | None, int | None, int | None]:
    """(attr bit, limit, overspeed s, night limit) of a fence with a speed limit."""
    if fence.speed_limit_kmh is None:
        return 0, None, None, None
    limit = round(fence.speed_limit_kmh)
    return (
        SPEED_LIMIT,
        limit,
        min(255, round(profile.min_over_s)),
        round(fence.speed_limit_kmh * profile.night_factor),
    )


def _hemisphere(lon: float, lat: float) -> int:
    return (ATTR_SOUTH if lat < 0 else 0) | (ATTR_WEST if lon < 0 else 0)


def _deg(value: float) -> float:
    """A coordinate as the wire carries it: magnitude, millionths of a degree."""
    return round(abs(value), 6)


def _fits(body: Body) -> bool:
    return len(encode_body(body, V2019)) <= MAX_BODY


def _circle(fence: Geofence, attr: int, when: tuple[Any, Any], speed: tuple[Any, ...]) -> Any:
    point = fence.geometry
    assert fence.radius_m is not None
    return CircleArea(
        area_id=fence.id, attr=attr | _hemisphere(point.x, point.y), latitude=_deg(point.y),
        longitude=_deg(point.x), radius_m=round(fence.radius_m), start=when[0], end=when[1],
        max_speed_kmh=speed[0], overspeed_s=speed[1], night_max_speed_kmh=speed[2],
        name=fence.name,
    )  # fmt: skip


def _rectangle(fence: Geofence, attr: int, when: tuple[Any, Any], speed: tuple[Any, ...]) -> Any:
    west, south, east, north = fence.geometry.bounds
    return RectangleArea(
        area_id=fence.id, attr=attr | _hemisphere(west, north), top_lat=_deg(north),
        left_lon=_deg(west), bottom_lat=_deg(south), right_lon=_deg(east), start=when[0],
        end=when[1], max_speed_kmh=speed[0], overspeed_s=speed[1],
        night_max_speed_kmh=speed[2], name=fence.name,
    )  # fmt: skip


def _max_shift(metres: float) -> float:
    """How far (degrees) simplifying may move a boundary: its margin, at least 10 m."""
    return max(metres, 10.0) / 111_320


def _polygon(fence: Geofence, attr: int, when: tuple[Any, Any], speed: tuple[Any, ...]) -> Any:
    """One polygon (outer ring, simplified until the message fits one frame), or None if
    that would move its boundary by more than its margin."""
    geometry = fence.geometry
    tolerance = 1e-5
    while True:
        ring = list(geometry.exterior.coords)[:-1]
        if len(ring) < 3:
            return None
        west, _, _, north = geometry.bounds
        body = SetPolygonArea(
            area_id=fence.id, attr=attr | _hemisphere(west, north), start=when[0], end=when[1],
            max_speed_kmh=speed[0], overspeed_s=speed[1],
            vertices=[Vertex(latitude=_deg(y), longitude=_deg(x)) for x, y in ring],
            night_max_speed_kmh=speed[2], name=fence.name,
        )  # fmt: skip
        if _fits(body):
            return body
        if tolerance > _max_shift(fence.margin_m):
            return None
        geometry = fence.geometry.simplify(tolerance, preserve_topology=True)
        tolerance *= 2


def _route(fence: Geofence, attr: int, when: tuple[Any, Any], speed: tuple[Any, ...]) -> Any:
    """A corridor as a route (one segment per turning point), simplified to fit (moving the
    line by at most its margin or half its width), or None."""
    assert fence.width_m is not None
    width = max(1, min(255, round(fence.width_m)))  # the wire's width is one byte
    line = fence.geometry
    tolerance = 1e-5
    while True:
        coords = list(line.coords)
        if len(coords) < 2:
            return None
        x0, y0 = coords[0]
        body = SetRoute(
            route_id=fence.id, attr=attr | _hemisphere(x0, y0), start=when[0], end=when[1],
            points=[
                RoutePoint(
                    point_id=i + 1, segment_id=i + 1, latitude=_deg(y), longitude=_deg(x),
                    width_m=width, segment_attr=SEGMENT_SPEED_LIMIT if speed[0] else 0,
                    max_speed_kmh=speed[0], overspeed_s=speed[1], night_max_speed_kmh=speed[2],
                )
                for i, (x, y) in enumerate(coords)
            ],
            name=fence.name,
        )  # fmt: skip
        if _fits(body):
            return body
        if tolerance > _max_shift(max(fence.margin_m, fence.width_m / 2)):
            return None
        line = fence.geometry.simplify(tolerance, preserve_topology=False)
        tolerance *= 2


def _trim(body: Any, kind: str, skipped: list[tuple[int, str]]) -> Any:
    """Drop areas from the end of a circle/rectangle list until the message fits a frame."""
    while body.areas and not _fits(body):
        dropped = body.areas.pop()
        skipped.append((dropped.area_id, f"no room left in the {kind} message"))
    return body


def area_items(
    vehicle: VehicleInfo,
    profile: Profile,
    fences: Iterable[Geofence],
    config: EnforcementConfig,
) -> Plan:
    """The area commands for the fences that apply to this vehicle."""
    plan = Plan()
    circles: list[CircleArea] = []
    rectangles: list[RectangleArea] = []
    polygons: list[PushItem] = []
    routes: list[PushItem] = []
    for fence in sorted(fences, key=lambda f: f.id):
        if (
            fence.kind not in config.kinds
            or fence.properties.get("push") is False
            or not fence.applies(vehicle.vehicle_class, vehicle.id, vehicle.company_id)
        ):
            continue
        schedule = _schedule(fence)
        if schedule is None:
            plan.skipped.append((fence.id, "its time windows have no JT/T 808 form"))
            continue
        time_bit, start, end = schedule
        speed_bit, *speed = _speed(fence, profile)
        attr = time_bit | speed_bit | KIND_FLAGS.get(fence.kind, 0)
        when = (start, end)
        if fence.shape == CIRCLE:
            target: list[Any] = circles
            built = _circle(fence, attr, when, speed)
        elif fence.shape == RECTANGLE:
            target = rectangles
            built = _rectangle(fence, attr, when, speed)
        elif fence.shape == CORRIDOR:
            target = routes
            body = _route(fence, attr, when, speed)
            built = PushItem.of(f"route:{fence.id}", body) if body is not None else None
        else:
            target = polygons
            body = _polygon(fence, attr, when, speed)
            built = PushItem.of(f"polygon:{fence.id}", body) if body is not None else None
        if built is None:
            plan.skipped.append((fence.id, "too large for one message"))
        elif len(target) >= config.max_areas:
            plan.skipped.append((fence.id, f"more than {config.max_areas} of its shape"))
        else:
            target.append(built)
    if circles:
        body = _trim(SetCircleAreas(action=ACTION_REPLACE, areas=circles), "circle", plan.skipped)
        plan.items.append(PushItem.of("circles", body))
    if rectangles:
        body = _trim(
            SetRectangleAreas(action=ACTION_REPLACE, areas=rectangles), "rectangle", plan.skipped
        )
        plan.items.append(PushItem.of("rectangles", body))
    plan.items.extend(polygons)
    plan.items.extend(routes)
    return plan


def deletion(item: str) -> PushItem | None:
    """The command that removes an area item from the terminal (None: not an area item)."""
    if item == "circles":
        return PushItem.of(item, DeleteCircleAreas(ids=[]))
    if item == "rectangles":
        return PushItem.of(item, DeleteRectangleAreas(ids=[]))
    kind, _, number = item.partition(":")
    if not number.isdigit():
        return None
    if kind == "polygon":
        return PushItem.of(item, DeletePolygonAreas(ids=[int(number)]))
    if kind == "route":
        return PushItem.of(item, DeleteRoutes(ids=[int(number)]))
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
            wanted.items.append(PushItem.of("params", SetParameters(params=params)))
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
    for item, held in sorted(accepted.items()):
        if item in names:
            continue
        remove = deletion(item)
        if remove is not None and held != remove.hash:
            plan.items.append(remove)
    return plan


__all__ = [
    "KIND_FLAGS",
    "MAX_BODY",
    "EnforcementConfig",
    "Plan",
    "PushItem",
    "area_items",
    "canonical_json",
    "content_hash",
    "deletion",
    "parameters",
    "plan_pushes",
]
