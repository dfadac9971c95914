"""Areas and routes pushed to terminals (0x8600-0x8608), 2013 and 2019 forms.

Optional parts follow the attribute word: bit 0 adds a start and end time, bit 1 a speed
limit and overspeed duration (and, in 2019, a night speed limit); 2019 adds a name.
Coordinates are degrees (magnitudes; south/west are attribute bits 6/7, as on the wire).
"""

from __future__ import annotations

from dataclasses import dataclass, make_dataclass
from datetime import datetime

from .body import (
    DEGREES,
    U8,
    U16,
    U32,
    Body,
    Many,
    Struct,
    Text,
    Time,
    When,
    message,
    only_2019,
    wire,
)

BY_TIME, SPEED_LIMIT = 0x0001, 0x0002
ATTR_SOUTH, ATTR_WEST = 0x0040, 0x0080
ACTION_REPLACE, ACTION_APPEND, ACTION_MODIFY = 0, 1, 2

_SCHEDULE = Time(partial=True)  # "000000080000" (every day at 08:00) stays a digit string


@dataclass(slots=True, kw_only=True)
class CircleArea(Struct):
    area_id: int = wire(U32)
    attr: int = wire(U16)
    latitude: float = wire(DEGREES)
    longitude: float = wire(DEGREES)
    radius_m: int = wire(U32)
    start: datetime | str | None = wire(When("attr", BY_TIME, _SCHEDULE))
    end: datetime | str | None = wire(When("attr", BY_TIME, _SCHEDULE))
    max_speed_kmh: int | None = wire(When("attr", SPEED_LIMIT, U16))
    overspeed_s: int | None = wire(When("attr", SPEED_LIMIT, U8))
    night_max_speed_kmh: int | None = wire(When("attr", SPEED_LIMIT, only_2019(U16)))
    name: str | None = wire(only_2019(Text(prefix=2)))


@dataclass(slots=True, kw_only=True)
class RectangleArea(Struct):
    area_id: int = wire(U32)
    attr: int = wire(U16)
    top_lat: float = wire(DEGREES)
    left_lon: float = wire(DEGREES)
    bottom_lat: float = wire(DEGREES)
    right_lon: float = wire(DEGREES)
    start: datetime | str | None = wire(When("attr", BY_TIME, _SCHEDULE))
    end: datetime | str | None = wire(When("attr", BY_TIME, _SCHEDULE))
    max_speed_kmh: int | None = wire(When("attr", SPEED_LIMIT, U16))
    overspeed_s: int | None = wire(When("attr", SPEED_LIMIT, U8))
    night_max_speed_kmh: int | None = wire(When("attr", SPEED_LIMIT, only_2019(U16)))
    name: str | None = wire(only_2019(Text(prefix=2)))


@message(0x8600)
@dataclass(slots=True, kw_only=True)
class SetCircleAreas(Body):
    action: int = wire(U8)  # 0 replace all, 1 append, 2 modify
    areas: list[CircleArea] = wire(Many(CircleArea), factory=list)


@message(0x8602)
@dataclass(slots=True, kw_only=True)
class SetRectangleAreas(Body):
    action: int = wire(U8)
    areas: list[RectangleArea] = wire(Many(RectangleArea), factory=list)


@dataclass(slots=True, kw_only=True)
class Vertex(Struct):
    latitude: float = wire(DEGREES)
    longitude: float = wire(DEGREES)


@message(0x8604)
@dataclass(slots=True, kw_only=True)
class SetPolygonArea(Body):
    """One polygon per message."""

    area_id: int = wire(U32)
    attr: int = wire(U16)
    start: datetime | str | None = wire(When("attr", BY_TIME, _SCHEDULE))
    end: datetime | str | None = wire(When("attr", BY_TIME, _SCHEDULE))
    max_speed_kmh: int | None = wire(When("attr", SPEED_LIMIT, U16))
    overspeed_s: int | None = wire(When("attr", SPEED_LIMIT, U8))
    vertices: list[Vertex] = wire(Many(Vertex, count=U16), factory=list)
    night_max_speed_kmh: int | None = wire(When("attr", SPEED_LIMIT, only_2019(U16)))
    name: str | None = wire(only_2019(Text(prefix=2)))


SEGMENT_DRIVE_TIME, SEGMENT_SPEED_LIMIT = 0x01, 0x02


@dataclass(slots=True, kw_only=True)
class RoutePoint(Struct):
    """A turning point; the segment after it has a width and optional time and speed limits."""

    point_id: int = wire(U32)
    segment_id: int = wire(U32)
    latitude: float = wire(DEGREES)
    longitude: float = wire(DEGREES)
    width_m: int = wire(U8)
    segment_attr: int = wire(U8)
    too_long_s: int | None = wire(When("segment_attr", SEGMENT_DRIVE_TIME, U16))
    too_short_s: int | None = wire(When("segment_attr", SEGMENT_DRIVE_TIME, U16))
    max_speed_kmh: int | None = wire(When("segment_attr", SEGMENT_SPEED_LIMIT, U16))
    overspeed_s: int | None = wire(When("segment_attr", SEGMENT_SPEED_LIMIT, U8))
    night_max_speed_kmh: int | None = wire(
        When("segment_attr", SEGMENT_SPEED_LIMIT, only_2019(U16))
    )


@message(0x8606)
@dataclass(slots=True, kw_only=True)
class SetRoute(Body):
    route_id: int = wire(U32)
    attr: int = wire(U16)
    start: datetime | str | None = wire(When("attr", BY_TIME, _SCHEDULE))
    end: datetime | str | None = wire(When("attr", BY_TIME, _SCHEDULE))
    points: list[RoutePoint] = wire(Many(RoutePoint, count=U16), factory=list)
    name: str | None = wire(only_2019(Text(prefix=2)))


@dataclass(slots=True, kw_only=True)
class DeleteAreas(Body):
    """0x8601/0x8603/0x8605/0x8607: delete these ids (an empty list deletes all)."""

    ids: list[int] = wire(Many(U32, U8), factory=list)


def _delete_message(name: str, msg_id: int) -> type[DeleteAreas]:
    cls = make_dataclass(name, [], bases=(DeleteAreas,), slots=True, kw_only=True)
    cls.__module__ = __name__
    cls.__doc__ = f"0x{msg_id:04X}: {DeleteAreas.__doc__.split(': ', 1)[1]}"  # type: ignore[union-attr]
    return message(msg_id)(cls)  # type: ignore[return-value]


DeleteCircleAreas = _delete_message("DeleteCircleAreas", 0x8601)
DeleteRectangleAreas = _delete_message("DeleteRectangleAreas", 0x8603)
DeletePolygonAreas = _delete_message("DeletePolygonAreas", 0x8605)
DeleteRoutes = _delete_message("DeleteRoutes", 0x8607)


@message(0x8608)
@dataclass(slots=True, kw_only=True)
class QueryAreas(Body):
    """2019: ask which areas of a type the terminal holds (1 circle, 2 rectangle, 3 polygon,
    4 route); an empty id list asks for all."""

    area_type: int = wire(U8)
    ids: list[int] = wire(Many(U32, count=U32), factory=list)


__all__ = [
    "ACTION_APPEND",
    "ACTION_MODIFY",
    "ACTION_REPLACE",
    "ATTR_SOUTH",
    "ATTR_WEST",
    "BY_TIME",
    "SEGMENT_DRIVE_TIME",
    "SEGMENT_SPEED_LIMIT",
    "SPEED_LIMIT",
    "CircleArea",
    "DeleteAreas",
    "DeleteCircleAreas",
    "DeletePolygonAreas",
    "DeleteRectangleAreas",
    "DeleteRoutes",
    "QueryAreas",
    "RectangleArea",
    "RoutePoint",
    "SetCircleAreas",
    "SetPolygonArea",
    "SetRectangleAreas",
    "SetRoute",
    "Vertex",
]
