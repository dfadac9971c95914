"""Area pushes in JT/T 808: the platform's area descriptions (``alerts.enforcement``) as
0x8600-0x8607 messages.

What is JT/T 808 here: the attribute word (alarm flags, time and speed bits, hemisphere), the
schedule's wire form (daily hours as a date-less digit string, date ranges in Beijing time),
coordinates as magnitudes, and one message per frame: polygons and routes are simplified until
their message fits (moving the boundary by at most the area's ``max_shift_m``), a circle or
rectangle list loses areas from its end until it fits (logged). A polygon or route that cannot
fit is refused (``ValueError``), which the gateway reports as an invalid command.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime, time
from typing import Any

from shapely.geometry import LineString, Polygon

from alerts.commands import DeleteAreas, SetAreas
from geo.calendar import BEIJING
from protocols.jt808 import V2019, Body, encode_body
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

log = logging.getLogger(__name__)

#: Area alarm names (``alerts.enforcement``) -> attribute bits of 0x8600-0x8606.
ALARM_FLAGS = {"enter_driver": 0x04, "enter_platform": 0x08, "exit_driver": 0x10,
               "exit_platform": 0x20}  # fmt: skip
#: Largest body in one frame (JT/T 808: 10 bits of length); 2019 bodies are the longer.
MAX_BODY = 1023
_DELETE = {
    "circle": DeleteCircleAreas,
    "rectangle": DeleteRectangleAreas,
    "polygon": DeletePolygonAreas,
    "route": DeleteRoutes,
}


def area_body(command: SetAreas | DeleteAreas) -> Body:
    """The message that says an area command."""
    if isinstance(command, DeleteAreas):
        cls = _DELETE.get(command.shape)
        if cls is None:
            raise ValueError(f"no JT/T 808 area shape {command.shape!r}")
        return cls(ids=list(command.ids))
    areas = command.areas
    if command.shape == "circle":
        return _trim(SetCircleAreas(action=ACTION_REPLACE, areas=[_circle(a) for a in areas]))
    if command.shape == "rectangle":
        return _trim(SetRectangleAreas(action=ACTION_REPLACE, areas=[_rectangle(a) for a in areas]))
    if len(areas) != 1:
        raise ValueError(f"a {command.shape} goes one per message, not {len(areas)}")
    if command.shape == "polygon":
        return _polygon(areas[0])
    if command.shape == "route":
        return _route(areas[0])
    raise ValueError(f"no JT/T 808 area shape {command.shape!r}")


def _attr(area: dict[str, Any], lon: float, lat: float) -> int:
    attr = 0
    for name in area.get("alarms", ()):
        if name not in ALARM_FLAGS:
            raise ValueError(f"no JT/T 808 area alarm {name!r}")
        attr |= ALARM_FLAGS[name]
    if area.get("daily") or area.get("dates"):
        attr |= BY_TIME
    if area.get("speed_limit_kmh") is not None:
        attr |= SPEED_LIMIT
    return attr | (ATTR_SOUTH if lat < 0 else 0) | (ATTR_WEST if lon < 0 else 0)


def _when(area: dict[str, Any]) -> tuple[Any, Any]:
    """(start, end) as the wire says them: daily hours as "000000HHMMSS", a date range as
    Beijing times from the first day's 00:00:00 to the last day's 23:59:59."""
    daily = area.get("daily")
    if daily:
        return tuple(_clock(time.fromisoformat(t)) for t in daily)  # type: ignore[return-value]
    dates = area.get("dates")
    if dates:
        first, last = (date.fromisoformat(d) for d in dates)
        return (datetime.combine(first, time(0), BEIJING),
                datetime.combine(last, time(23, 59, 59), BEIJING))  # fmt: skip
    return None, None


def _clock(at: time) -> str:
    """Daily time as the protocol writes it: year, month and day zero (every day)."""
    return f"000000{at.hour:02d}{at.minute:02d}{at.second:02d}"


def _speed(area: dict[str, Any]) -> tuple[Any, Any, Any]:
    if area.get("speed_limit_kmh") is None:
        return None, None, None
    overspeed = area.get("overspeed_s")
    return (
        area["speed_limit_kmh"],
        min(255, overspeed) if overspeed is not None else None,
        area.get("night_speed_limit_kmh"),
    )


def _deg(value: float) -> float:
    """A coordinate as the wire carries it: magnitude, millionths of a degree."""
    return round(abs(value), 6)


def _fits(body: Body) -> bool:
    return len(encode_body(body, V2019)) <= MAX_BODY


def _circle(area: dict[str, Any]) -> CircleArea:
    lon, lat = area["center"]
    start, end = _when(area)
    limit, over, night = _speed(area)
    return CircleArea(
        area_id=area["id"], attr=_attr(area, lon, lat), latitude=_deg(lat), longitude=_deg(lon),
        radius_m=round(area["radius_m"]), start=start, end=end, max_speed_kmh=limit,
        overspeed_s=over, night_max_speed_kmh=night, name=area.get("name"),
    )  # fmt: skip


def _rectangle(area: dict[str, Any]) -> RectangleArea:
    west, south, east, north = area["bounds"]
    start, end = _when(area)
    limit, over, night = _speed(area)
    return RectangleArea(
        area_id=area["id"], attr=_attr(area, west, north), top_lat=_deg(north),
        left_lon=_deg(west), bottom_lat=_deg(south), right_lon=_deg(east), start=start,
        end=end, max_speed_kmh=limit, overspeed_s=over, night_max_speed_kmh=night,
        name=area.get("name"),
    )  # fmt: skip


def _trim(body: Any) -> Any:
    """Drop areas from the end of a circle/rectangle list until the message fits a frame."""
    while body.areas and not _fits(body):
        dropped = body.areas.pop()
        log.warning("area %s left out: no room left in the message", dropped.area_id)
    return body


def _max_shift(metres: float) -> float:
    """How far (degrees) simplifying may move a boundary: at least 10 m."""
    return max(metres, 10.0) / 111_320


def _fitted(
    shape: Any,
    build: Callable[[Any], Body | None],
    area: dict[str, Any],
    what: str,
    preserve_topology: bool,
) -> Any:
    """The message ``build`` makes of ``shape``, simplified (moving it by at most the area's
    ``max_shift_m``) until the message fits one frame; ValueError if it cannot."""
    geometry = shape
    tolerance = 1e-5
    while (body := build(geometry)) is not None:
        if _fits(body):
            return body
        if tolerance > _max_shift(area.get("max_shift_m", 0.0)):
            break
        geometry = shape.simplify(tolerance, preserve_topology=preserve_topology)
        tolerance *= 2
    raise ValueError(f"{what} {area['id']}: too large for one message")


def _polygon(area: dict[str, Any]) -> SetPolygonArea:
    """One polygon (its outer ring), simplified until the message fits one frame."""
    start, end = _when(area)
    limit, over, night = _speed(area)

    def build(geometry: Any) -> SetPolygonArea | None:
        ring = list(geometry.exterior.coords)[:-1]
        if len(ring) < 3:
            return None
        west, _, _, north = geometry.bounds
        return SetPolygonArea(
            area_id=area["id"], attr=_attr(area, west, north), start=start, end=end,
            max_speed_kmh=limit, overspeed_s=over,
            vertices=[Vertex(latitude=_deg(y), longitude=_deg(x)) for x, y in ring],
            night_max_speed_kmh=night, name=area.get("name"),
        )  # fmt: skip

    return _fitted(Polygon(area["ring"]), build, area, "polygon", preserve_topology=True)


def _route(area: dict[str, Any]) -> SetRoute:
    """A route (one segment per turning point), simplified until the message fits."""
    width = max(1, min(255, round(area["width_m"])))  # the wire's width is one byte
    start, end = _when(area)
    limit, over, night = _speed(area)

    def build(line: Any) -> SetRoute | None:
        coords = list(line.coords)
        if len(coords) < 2:
            return None
        x0, y0 = coords[0]
        return SetRoute(
            route_id=area["id"], attr=_attr(area, x0, y0), start=start, end=end,
            points=[
                RoutePoint(
                    point_id=i + 1, segment_id=i + 1, latitude=_deg(y), longitude=_deg(x),
                    width_m=width, segment_attr=SEGMENT_SPEED_LIMIT if limit else 0,
                    max_speed_kmh=limit, overspeed_s=over, night_max_speed_kmh=night,
                )
                for i, (x, y) in enumerate(coords)
            ],
            name=area.get("name"),
        )  # fmt: skip

    return _fitted(LineString(area["line"]), build, area, "route", preserve_topology=False)


__all__ = ["ALARM_FLAGS", "MAX_BODY", "area_body"]
