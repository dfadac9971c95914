"""Track replay benchmark (a script, not a test): a 24-hour 1 Hz track opened in the replay.

    python -m loadtest.bench_replay [--hours 24] [--runs 5] [--seed 1] [--no-browser]

Starts an embedded PostgreSQL+PostGIS (store.cluster) in a temporary directory, creates the
daily partitions, inserts one vehicle's track at 1 Hz (86,400 fixes for 24 h: drives of 20-90
minutes at 0-110 km/h on a wandering heading, stops of 2-40 minutes, GNSS noise of ~2 m), serves
the dashboard on 127.0.0.1 and measures:

* the API call (``GET /api/vehicles/{id}/track``, HTTP on loopback, JSON included), warm, median
  and max of ``--runs``;
* the plan of the fixes' scan (EXPLAIN: which index, how many partitions);
* the browser: Debian's chromium (playwright, ``executable_path``) logs in, opens the replay for
  that range and waits until the track is drawn (``#replay[data-state=ready]``); the page's own
  timing (``data-load-ms``: request start to the polyline and chart drawn) and the wall clock
  from the click.

:func:`synthetic_track` and :func:`insert_track` are also the tests' track.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from typing import Any

#: Where the synthetic vehicle starts (Beijing, Tiananmen).
ORIGIN = (116.3975, 39.9087)


def synthetic_track(
    start: datetime, seconds: int, seed: int = 1, origin: tuple[float, float] = ORIGIN
) -> list[tuple[datetime, float, float, float, int]]:
    """One fix a second: (time, lon, lat, km/h, heading), alternating drives and stops."""
    rng = random.Random(seed)
    lon, lat = origin
    heading = rng.uniform(0, 360)
    speed = 0.0
    out = []
    phase_end, driving, target = 0, False, 0.0
    for t in range(seconds):
        if t >= phase_end:
            driving = not driving
            phase_end = t + (rng.randint(1200, 5400) if driving else rng.randint(120, 2400))
        if driving:
            if rng.random() < 0.01:
                target = rng.uniform(20, 110)
            speed += max(-2.0, min(2.0, target - speed)) * 0.5
            heading = (heading + rng.gauss(0, 1.5)) % 360
        else:
            speed = max(0.0, speed - 5.0)
        metres = speed / 3.6
        lat += metres * math.cos(math.radians(heading)) / 111_320
        lon += metres * math.sin(math.radians(heading)) / (111_320 * math.cos(math.radians(lat)))
        noise_lon = rng.gauss(0, 2) / (111_320 * math.cos(math.radians(lat)))
        noise_lat = rng.gauss(0, 2) / 111_320
        moment = start + timedelta(seconds=t)
        out.append((moment, lon + noise_lon, lat + noise_lat, round(speed, 1), int(heading)))
    return out


async def insert_track(
    conn: Any, vehicle_id: int, fixes: list[tuple[datetime, float, float, float, int]]
) -> None:
    """Insert the fixes as ``positions`` rows (in batches: one statement per 20,000)."""
    for i in range(0, len(fixes), 20_000):
        chunk = fixes[i : i + 20_000]
        await conn.execute(
            """INSERT INTO positions (vehicle_id, fix_time, received_time, geom, speed_kmh,
                                      heading, serial)
               SELECT $1, t, t, ST_SetSRID(ST_MakePoint(x, y), 4326), s, h, n
               FROM unnest($2::timestamptz[], $3::float8[], $4::float8[], $5::real[],
                           $6::smallint[]) WITH ORDINALITY AS f(t, x, y, s, h, n)""",
            vehicle_id,
            [f[0] for f in chunk],
            [f[1] for f in chunk],
            [f[2] for f in chunk],
            [f[3] for f in chunk],
            [f[4] for f in chunk],
        )
