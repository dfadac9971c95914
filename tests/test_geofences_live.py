"""A fence drawn in the dashboard reaches the running server without a restart: the rules judge
it and the connected terminal gets it as an area push, over real TCP and PostGIS.

The supervision's periodic fence poll is set to an hour here, so only the table's NOTIFY
(migration 0013) can bring the change in time.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from store.alerts import AlertStore
from tests.aio import aio_test
from tests.dashboard_harness import VEHICLES, dashboard
from tests.supervision_harness import Vehicle, eventually, fix, running_supervision

SET_CIRCLE_AREAS = 0x8600
DELETE_CIRCLE_AREAS = 0x8601
M_PER_DEG_LON = 85_390.0  # at 39.9 N


@aio_test
async def test_a_fence_created_through_the_api_raises_an_entry_alarm_without_restart(
    db_url: str, short_tmp: Path
) -> None:
    async with (
        running_supervision(db_url, short_tmp, fence_interval=3600.0) as (ingest, supervision),
        dashboard(db_url) as dash,
    ):
        plate = "京A10002"
        phone = f"1380000{[v[0] for v in VEHICLES].index(plate):04d}"
        car = await Vehicle.online(ingest.port, phone, plate)
        await car.quiet(1.0)  # the enforcement template pushed at authentication
        assert not [m for m in car.received if m.msg_id == SET_CIRCLE_AREAS]
        reloads = supervision.stats.fence_reloads

        dispatcher = await dash.logged_in("disp_a")
        centre = (116.50, 39.90)
        started = time.monotonic()
        reply = await dispatcher.request(
            "POST",
            "/api/geofences",
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": list(centre)},
                "properties": {"name": "危化品禁行区", "kind": "forbidden", "radius": 500},
            },
        )
        assert reply.status == 201, reply.body
        fence_id = reply.body["id"]

        async def reloaded() -> bool:
            return supervision.stats.fence_reloads > reloads

        await eventually(reloaded, timeout=3.0)
        latency = time.monotonic() - started
        assert latency < 3.0  # the poll would have taken an hour
        print(f"API 201 -> fences reloaded: {latency * 1000:.0f} ms")
        (push,) = await car.commands(SET_CIRCLE_AREAS)  # the new area, to the live terminal
        assert [a.area_id for a in push.body.areas] == [fence_id]

        # drive east through the fence: 1 km west of its centre to 1 km east, 30 km/h
        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=300)
        for i in range(25):
            lon = centre[0] + (-1000 + i * 83) / M_PER_DEG_LON
            await car.send(fix(t0 + timedelta(seconds=10 * i), lon, centre[1], speed=30.0))

        async def entered() -> list:
            return await AlertStore(ingest.pool).list(type="forbidden_zone")

        (alert,) = await eventually(entered)
        assert alert.vehicle_id == dash.seeded.vehicles[plate]
        assert alert.details["fence_id"] == fence_id
        assert alert.details["fence_name"] == "危化品禁行区"

        # deleting it in the dashboard takes the area off the terminal, still without restart
        gone = await dispatcher.request("DELETE", f"/api/geofences/{fence_id}")
        assert gone.status == 200
        (removal,) = await car.commands(DELETE_CIRCLE_AREAS)
        # its id, or none left at all: an empty list deletes every circle area (JT/T 808)
        assert list(removal.body.ids) in ([fence_id], [])
        assert supervision.index.fences == {}
        await car.close()
