"""The Beijing calendar and the vehicle classes, each defined once (geo/) and agreeing with
what they mirror: the regulations' clock and the database's ``vehicle_class`` enum."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from geo.calendar import BEIJING, day_start, is_night, second_of_day
from geo.classes import VEHICLE_CLASSES
from tests.aio import aio_test


def _t(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_beijing_days_and_nights() -> None:
    # 2026-11-22 15:59:59Z is 23:59:59 in Beijing: still the 22nd there, and night.
    late = _t("2026-11-22T15:59:59+00:00")
    assert day_start(late) == _t("2026-11-22T00:00:00+08:00")
    assert second_of_day(late) == 86399 and is_night(late)
    # One second later the Beijing day turns; 05:59:59 is night, 06:00 and 21:59:59 are not.
    assert day_start(late + 1) == _t("2026-11-23T00:00:00+08:00")
    assert is_night(_t("2026-11-23T05:59:59+08:00"))
    assert not is_night(_t("2026-11-23T06:00:00+08:00"))
    assert not is_night(_t("2026-11-23T21:59:59+08:00"))
    assert is_night(_t("2026-11-23T22:00:00+08:00"))
    noon = datetime(2026, 11, 23, 4, 0, tzinfo=UTC).astimezone(BEIJING)
    assert (noon.hour, noon.utcoffset().total_seconds()) == (12, 28800)  # type: ignore[union-attr]


@aio_test
async def test_vehicle_classes_are_the_database_enum(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        enum = await conn.fetchval("SELECT enum_range(NULL::vehicle_class)::text[]")
    finally:
        await conn.close()
    assert tuple(enum) == VEHICLE_CLASSES
