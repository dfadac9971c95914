"""Terminal-side enforcement: parameter templates and areas (pure), and the push on
authentication end to end (real socket, real PostGIS)."""

from __future__ import annotations

import asyncio
import math
from datetime import date, time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from shapely.geometry import LineString, Point, Polygon, box

from alerts.commands import SetParameters
from alerts.enforcement import (
    EnforcementConfig,
    Plan,
    PushItem,
    content_hash,
    plan_pushes,
)
from alerts.model import COACH, HAZMAT, POLICE, SCHOOL_BUS, VehicleInfo
from alerts.settings import RuleSettings
from geo.fences import AppliesTo, Geofence, TimeWindow
from ingest.areas import ALARM_FLAGS
from ingest.downlink import to_body
from protocols.jt808 import V2019, Body, decode_frame, encode_frame
from protocols.jt808.areas import BY_TIME, SPEED_LIMIT
from store import pushes
from tests.aio import aio_test
from tests.supervision_harness import Vehicle, eventually, running_supervision

ENTER_DRIVER, ENTER_PLATFORM, EXIT_PLATFORM = (
    ALARM_FLAGS["enter_driver"], ALARM_FLAGS["enter_platform"], ALARM_FLAGS["exit_platform"],
)  # fmt: skip


def _body(item: PushItem) -> Any:
    """The JT/T 808 message the terminal end makes of a planned command."""
    body: Body = to_body(item.command)
    return body


def _params(plan: Plan) -> dict[int, int | str | bytes]:
    (item,) = [i for i in plan.items if i.item == "params"]
    return {p.id: p.value for p in _body(item).params}


def _items(plan: Plan) -> dict[str, Any]:
    return {i.item: _body(i) for i in plan.items}


SCHOOL = VehicleInfo(1, "沪A00001", vehicle_class=SCHOOL_BUS)
NIGHT_COACH = VehicleInfo(2, "沪A00002", vehicle_class=COACH, company_id=7)


def test_school_bus_template_from_its_class_profile() -> None:
    plan = plan_pushes(SCHOOL, RuleSettings(), [], {})
    assert [i.item for i in plan.items] == ["params"]
    assert _body(plan.items[0]).MSG_ID == 0x8103
    assert _params(plan) == {
        0x0055: 80,  # the class's expressway limit: the terminal's absolute cap
        0x0056: 10,
        0x0057: 4 * 3600,
        0x0058: 8 * 3600,
        0x0059: 20 * 60,
        0x005B: 50,  # 5 km/h pre-warning margin, in 0.1 km/h
        0x005C: 1800,  # pre-warning at 3.5 h of a 4 h limit
    }


def test_police_get_no_speed_parameters_and_overrides_apply() -> None:
    police = plan_pushes(VehicleInfo(3, vehicle_class=POLICE), RuleSettings(), [], {})
    assert set(_params(police)) == {0x0057, 0x0058, 0x0059, 0x005C}
    own = VehicleInfo(4, vehicle_class=HAZMAT, overrides={"expressway_kmh": 70, "rest_s": 1800})
    values = _params(plan_pushes(own, RuleSettings(), [], {}))
    assert (values[0x0055], values[0x0059]) == (70, 1800)
    settings = RuleSettings.from_dict({"classes": {"hazmat": {"min_over_s": 30}}})
    assert _params(plan_pushes(own, settings, [], {}))[0x0056] == 30


def test_extra_parameters_by_name_or_id_for_all_or_one_class() -> None:
    config = EnforcementConfig.from_config(
        {"extra_params": {"all": {"maximum_parking_s": 7200}, "coach": {"0x0029": 30}}}
    )
    coach = _params(plan_pushes(NIGHT_COACH, RuleSettings(), [], {}, config))
    school = _params(plan_pushes(SCHOOL, RuleSettings(), [], {}, config))
    assert (coach[0x005A], coach[0x0029]) == (7200, 30)
    assert school[0x005A] == 7200 and 0x0029 not in school
    with pytest.raises(ValueError, match="unknown parameter"):
        EnforcementConfig.from_config({"extra_params": {"all": {"No such!": 1}}})
    # A well-formed name the protocol does not know is refused where the push is said.
    with pytest.raises(ValueError, match="no JT/T 808 parameter 'no_such'"):
        to_body(SetParameters({"no_such": 1}))
    with pytest.raises(ValueError, match="unknown key"):
        EnforcementConfig.from_config({"pramas": True})


def _fences() -> list[Geofence]:
    ring = [
        (121.5 + 0.01 * math.cos(k / 300 * 2 * math.pi),
         31.2 + 0.01 * math.sin(k / 300 * 2 * math.pi))
        for k in range(300)
    ]  # fmt: skip
    return [
        Geofence(1, "校区", "zone", "circle", Point(121.5, 31.2), radius_m=300.4),
        Geofence(
            2, "夜间禁行", "forbidden", "rectangle", box(121.40, 31.10, 121.45, 31.15),
            windows=(TimeWindow(start=time(22), end=time(6)),),
        ),
        Geofence(3, "限速区", "speed_limit", "polygon", Polygon(ring), speed_limit_kmh=40),
        Geofence(
            4, "高速", "speed_limit", "corridor",
            LineString([(121.0, 31.0), (121.1, 31.05), (121.2, 31.05)]), width_m=60,
            speed_limit_kmh=100,
        ),
        Geofence(
            5, "春运", "zone", "circle", Point(121.6, 31.2), radius_m=500,
            windows=(TimeWindow(start_date=date(2027, 1, 20), end_date=date(2027, 2, 28)),),
        ),
        # Two windows: no JT/T 808 form, so it is skipped rather than pushed as always active.
        Geofence(
            6, "早晚", "forbidden", "circle", Point(121.7, 31.2), radius_m=200,
            windows=(TimeWindow(start=time(7), end=time(9)),
                     TimeWindow(start=time(17), end=time(19))),
        ),
        # Not for coaches.
        Geofence(7, "危化", "forbidden", "circle", Point(121.8, 31.2), radius_m=200,
                 applies_to=AppliesTo(classes=frozenset({HAZMAT}))),
        # Opted out of pushing.
        Geofence(8, "观察", "zone", "circle", Point(121.9, 31.2), radius_m=200,
                 properties={"push": False}),
    ]  # fmt: skip


def test_areas_for_a_coach_with_flags_limits_and_windows() -> None:
    plan = plan_pushes(NIGHT_COACH, RuleSettings(), _fences(), {})
    items = _items(plan)
    assert list(items) == ["params", "circles", "rectangles", "polygon:3", "route:4"]
    assert plan.skipped == [(6, "a terminal cannot hold its time windows")]
    circles = items["circles"]
    assert circles.MSG_ID == 0x8600 and circles.action == 0  # replace all
    assert [a.area_id for a in circles.areas] == [1, 5]
    school, spring = circles.areas
    assert (school.attr, school.radius_m, school.latitude, school.longitude) == (
        ENTER_PLATFORM | EXIT_PLATFORM, 300, 31.2, 121.5,
    )  # fmt: skip
    assert spring.attr == ENTER_PLATFORM | EXIT_PLATFORM | BY_TIME
    assert (spring.start.date(), spring.end.date()) == (date(2027, 1, 20), date(2027, 2, 28))
    (night,) = items["rectangles"].areas
    assert night.attr == ENTER_DRIVER | ENTER_PLATFORM | BY_TIME
    assert (night.start, night.end) == ("000000220000", "000000060000")  # every day 22-06
    assert (night.top_lat, night.left_lon, night.bottom_lat, night.right_lon) == (
        31.15, 121.40, 31.10, 121.45,
    )  # fmt: skip
    polygon = items["polygon:3"]
    assert polygon.MSG_ID == 0x8604 and polygon.attr == SPEED_LIMIT
    # 40 km/h, overspeed after 10 s, and 80% of it at night for a coach (2019 terminals).
    assert (polygon.max_speed_kmh, polygon.overspeed_s, polygon.night_max_speed_kmh) == (40, 10, 32)
    assert 3 <= len(polygon.vertices) < 300  # simplified to fit one frame
    route = items["route:4"]
    assert route.MSG_ID == 0x8606 and [p.point_id for p in route.points] == [1, 2, 3]
    assert {(p.width_m, p.max_speed_kmh, p.night_max_speed_kmh) for p in route.points} == {
        (60, 100, 80)
    }


@pytest.mark.parametrize("version", [2013, V2019])
def test_every_area_message_fits_one_frame_and_decodes(version: int) -> None:
    plan = plan_pushes(NIGHT_COACH, RuleSettings(), _fences(), {})
    for item in plan.items:
        body = _body(item)
        frame = encode_frame(body, phone="13900000001", serial=9, version=version)
        message = decode_frame(frame)
        assert message.header.pkg_total is None  # one frame, no subpackages
        assert message.msg_id == body.MSG_ID
        if version == V2019:
            assert message.body == body


def test_a_polygon_too_detailed_is_simplified_within_its_margin() -> None:
    ring = [
        (121.5 + 0.02 * math.cos(k / 2000 * 2 * math.pi),
         31.2 + 0.02 * math.sin(k / 2000 * 2 * math.pi))
        for k in range(2000)
    ]  # fmt: skip
    fence = Geofence(9, "大圆", "zone", "polygon", Polygon(ring))
    plan = plan_pushes(SCHOOL, RuleSettings(), [fence], {})
    body = _items(plan)["polygon:9"]
    assert 3 <= len(body.vertices) < 2000
    assert len(encode_frame(body, phone="1", serial=1, version=V2019)) < 1100
    pushed = Polygon([(v.longitude, v.latitude) for v in body.vertices])
    assert pushed.hausdorff_distance(fence.geometry) < 20 / 111_320  # within its 20 m margin
    # A zigzag that only a coarser shape would fit is refused, not distorted.
    zigzag = [(121 + 0.0005 * k, 31 + (0.001 if k % 2 else 0)) for k in range(400)]
    rough = Geofence(10, "锯齿", "zone", "polygon", Polygon([*zigzag, (121.2, 30.9), (121, 30.9)]))
    (item,) = plan_pushes(SCHOOL, RuleSettings(), [rough], {}).items[1:]
    with pytest.raises(ValueError, match="polygon 10: too large for one message"):
        _body(item)


def test_only_what_changed_is_pushed_again_and_removed_areas_are_deleted() -> None:
    settings = RuleSettings()
    fences = _fences()
    first = plan_pushes(NIGHT_COACH, settings, fences, {})
    accepted = {i.item: i.hash for i in first.items}
    assert plan_pushes(NIGHT_COACH, settings, fences, accepted).items == []
    # A fence moves: only its item goes again. The hash is of the content, not the object.
    moved = _fences()
    moved[2] = Geofence(3, "限速区", "speed_limit", "polygon", box(121.5, 31.2, 121.6, 31.3),
                        speed_limit_kmh=30)  # fmt: skip
    again = plan_pushes(NIGHT_COACH, settings, moved, accepted)
    assert [i.item for i in again.items] == ["polygon:3"]
    # The polygon and the circles go away: they are deleted from the terminal, once.
    gone = [f for f in fences if f.id not in (1, 3, 5)]
    deletions = plan_pushes(NIGHT_COACH, settings, gone, accepted)
    assert [(i.item, _body(i).MSG_ID, _body(i).ids) for i in deletions.items] == [
        ("circles", 0x8601, []),
        ("polygon:3", 0x8605, [3]),
    ]
    accepted.update({i.item: i.hash for i in deletions.items})
    assert plan_pushes(NIGHT_COACH, settings, gone, accepted).items == []
    # A template change (a per-class setting) is a params push only.
    stricter = RuleSettings.from_dict({"classes": {"coach": {"expressway_kmh": 90}}})
    assert [i.item for i in plan_pushes(NIGHT_COACH, stricter, fences, accepted).items] == [
        "params", "circles", "polygon:3",
    ]  # fmt: skip
    assert content_hash({"a": 1, "b": [2]}) == content_hash({"b": [2], "a": 1})


# ---------------------------------------------------------------------- pushed on authentication


async def _provision(pool: asyncpg.Pool, phone: str, plate: str, klass: str) -> int:
    vehicle_id = await pool.fetchval(
        "INSERT INTO vehicles (plate, plate_color, phone, class) VALUES ($1, 2, $2, $3)"
        " RETURNING id",
        plate, phone, klass,
    )  # fmt: skip
    return int(vehicle_id)


async def _pushes(pool: asyncpg.Pool, vehicle_id: int) -> list[pushes.Push]:
    return list(reversed(await pushes.history(pool, vehicle_id)))


@aio_test
async def test_template_pushed_on_authentication_recorded_and_not_repeated(
    db_url: str, short_tmp: Path
) -> None:
    async with running_supervision(db_url, short_tmp) as (ingest, supervision):
        vid = await _provision(ingest.pool, "13900000201", "沪A00201", "school_bus")
        bus = await Vehicle.online(ingest.port, "13900000201", "沪A00201")
        (command,) = await bus.commands(0x8103)
        assert {p.id: p.value for p in command.body.params} == {
            0x0055: 80, 0x0056: 10, 0x0057: 14400, 0x0058: 28800, 0x0059: 1200, 0x005B: 50,
            0x005C: 1800,
        }  # fmt: skip

        async def answered() -> list[pushes.Push]:
            return [p for p in await _pushes(ingest.pool, vid) if p.result]

        (push,) = await eventually(answered)
        assert (push.command, push.item, push.result, push.serial) == (
            "set_parameters", "params", "accepted", command.serial,
        )  # fmt: skip
        assert push.answered_at is not None and push.answered_at >= push.sent_at
        assert push.content["kind"] == "set_parameters"
        assert push.content["values"]["max_speed_kmh"] == 80
        await bus.close()

        # Reconnecting: the terminal holds this template already, nothing is sent.
        again = await Vehicle.online(ingest.port, "13900000201", "沪A00201")
        assert [m.msg_id for m in await again.quiet(0.8)] == []
        await again.close()

        # The vehicle's own overrides change: the next authentication pushes the new template.
        await ingest.pool.execute(
            """UPDATE vehicles SET overrides = '{"expressway_kmh": 70}' WHERE id = $1""", vid
        )
        third = await Vehicle.online(ingest.port, "13900000201", "沪A00201")
        (changed,) = await third.commands(0x8103)
        assert {p.id: p.value for p in changed.body.params}[0x0055] == 70
        await eventually(lambda: _all_answered(ingest.pool, vid, 2))

        # On demand, everything goes again even though it is unchanged.
        results, _ = await asyncio.gather(
            supervision.push_enforcement(vid, force=True), third.commands(0x8103, count=2)
        )
        assert results == [("params", "accepted")]
        assert [p.result for p in await _pushes(ingest.pool, vid)] == ["accepted"] * 3
        await third.close()


async def _all_answered(pool: asyncpg.Pool, vehicle_id: int, count: int) -> bool:
    rows = await _pushes(pool, vehicle_id)
    return len(rows) == count and all(p.result for p in rows)


@aio_test
async def test_refused_unsupported_and_unanswered_pushes_are_recorded_and_retried(
    db_url: str, short_tmp: Path
) -> None:
    async with running_supervision(db_url, short_tmp, command_timeout=0.5) as (ingest, _):
        vid = await _provision(ingest.pool, "13900000202", "沪A00202", "hazmat")
        old = await Vehicle.online(
            ingest.port,
            "13900000202",
            "沪A00202",
            answers={0x8103: 3},  # unsupported
        )
        await old.commands(0x8103)
        await eventually(lambda: _all_answered(ingest.pool, vid, 1))
        await old.close()
        mute = await Vehicle.online(
            ingest.port,
            "13900000202",
            "沪A00202",
            answers={0x8103: None},  # never answers
        )
        await mute.commands(0x8103)  # not accepted before: sent again
        await eventually(lambda: _all_answered(ingest.pool, vid, 2))
        await mute.close()
        refusing = await Vehicle.online(
            ingest.port,
            "13900000202",
            "沪A00202",
            answers={0x8103: 1},  # failed
        )
        await refusing.commands(0x8103)
        await eventually(lambda: _all_answered(ingest.pool, vid, 3))
        assert [(p.result, p.answered_at is None) for p in await _pushes(ingest.pool, vid)] == [
            ("unsupported", False), ("timeout", True), ("failed", False),
        ]  # fmt: skip
        await refusing.close()


@aio_test
async def test_server_geofences_pushed_as_areas_and_only_changes_again(
    db_url: str, short_tmp: Path
) -> None:
    from store import geofences

    async with running_supervision(db_url, short_tmp) as (ingest, supervision):
        vid = await _provision(ingest.pool, "13900000203", "沪A00203", "coach")
        saved = await geofences.save(
            ingest.pool,
            [
                Geofence(0, "客运站", "zone", "circle", Point(121.5, 31.2), radius_m=300),
                Geofence(0, "禁行区", "forbidden", "rectangle", box(121.4, 31.1, 121.45, 31.15)),
                Geofence(0, "限速区", "speed_limit", "polygon",
                         Polygon([(121.6, 31.2), (121.7, 31.2), (121.65, 31.3)]),
                         speed_limit_kmh=40),
            ],
        )  # fmt: skip
        ids = saved.ids
        await supervision.reload_fences()
        coach = await Vehicle.online(ingest.port, "13900000203", "沪A00203")
        for msg_id in (0x8103, 0x8600, 0x8602, 0x8604):
            await coach.commands(msg_id)
        (circles,) = await coach.commands(0x8600)
        assert [(a.area_id, a.radius_m) for a in circles.body.areas] == [(ids["客运站"], 300)]
        (polygon,) = await coach.commands(0x8604)
        assert (polygon.body.area_id, polygon.body.max_speed_kmh) == (ids["限速区"], 40)
        await eventually(lambda: _all_answered(ingest.pool, vid, 4))
        items = {p.item: p.result for p in await _pushes(ingest.pool, vid)}
        assert items == {
            "params": "accepted", "circles": "accepted", "rectangles": "accepted",
            f"polygon:{ids['限速区']}": "accepted",
        }  # fmt: skip
        await coach.close()

        # The circle grows and the polygon is gone: the next authentication sends only those.
        await geofences.save(
            ingest.pool,
            [
                Geofence(0, "客运站", "zone", "circle", Point(121.5, 31.2), radius_m=500),
                Geofence(0, "禁行区", "forbidden", "rectangle", box(121.4, 31.1, 121.45, 31.15)),
            ],
            replace=True,
        )
        await supervision.reload_fences()
        again = await Vehicle.online(ingest.port, "13900000203", "沪A00203")
        (grown,) = await again.commands(0x8600)
        assert [a.radius_m for a in grown.body.areas] == [500]
        (removed,) = await again.commands(0x8605)
        assert removed.body.ids == [ids["限速区"]]
        assert [m.msg_id for m in await again.quiet(0.5)] == []
        await eventually(lambda: _all_answered(ingest.pool, vid, 6))
        await again.close()


@aio_test
async def test_terminals_of_the_unassigned_pool_get_nothing_unless_configured(
    db_url: str, short_tmp: Path
) -> None:
    async with running_supervision(db_url, short_tmp) as (ingest, _):
        stranger = await Vehicle.online(ingest.port, "13900000204", "沪A00204")  # open policy
        assert [m.msg_id for m in await stranger.quiet(0.8)] == []
        await stranger.close()
    async with running_supervision(db_url, short_tmp, {"enforcement": {"unprovisioned": True}}) as (
        ingest,
        _,
    ):
        stranger = await Vehicle.online(ingest.port, "13900000204", "沪A00204")
        (command,) = await stranger.commands(0x8103)
        assert {p.id: p.value for p in command.body.params}[0x0055] == 100  # class "other"
        await stranger.close()


@aio_test
async def test_an_area_that_cannot_be_said_is_recorded_once_not_retried(
    db_url: str, short_tmp: Path
) -> None:
    """A polygon no JT/T 808 frame can hold is refused by the terminal end (never sent),
    recorded as invalid, and not tried again at every reconnection."""
    from store import geofences

    zigzag = [(121 + 0.0005 * k, 31 + (0.001 if k % 2 else 0)) for k in range(400)]
    rough = Polygon([*zigzag, (121.2, 30.9), (121, 30.9)])
    async with running_supervision(db_url, short_tmp) as (ingest, supervision):
        vid = await _provision(ingest.pool, "13900000205", "沪A00205", "coach")
        saved = await geofences.save(ingest.pool, [Geofence(0, "锯齿", "zone", "polygon", rough)])
        await supervision.reload_fences()
        coach = await Vehicle.online(ingest.port, "13900000205", "沪A00205")
        await coach.commands(0x8103)
        await eventually(lambda: _all_answered(ingest.pool, vid, 2))
        assert [m.msg_id for m in coach.received if m.msg_id != 0x8001] == [0x8103]
        results = {p.item: p.result for p in await _pushes(ingest.pool, vid)}
        assert results == {"params": "accepted", f"polygon:{saved.ids['锯齿']}": "invalid"}
        await coach.close()

        again = await Vehicle.online(ingest.port, "13900000205", "沪A00205")
        assert [m.msg_id for m in await again.quiet(0.8)] == []
        assert len(await _pushes(ingest.pool, vid)) == 2
        await again.close()
