"""A vehicle's track for replay and export: its positions over a time range, simplified in SQL.

A day at 1 Hz is 86,400 rows; sending them all to a browser costs seconds, so the line is
simplified where the rows are (Douglas-Peucker, ``ST_Simplify``) and only the kept vertices
leave the database, each with its own time and speed. The line is built as a LineStringM whose
M is the row's ordinal, so every kept vertex finds its row again; its x is multiplied by
cos(latitude) (of the first fix) first, which makes the tolerance mean the same distance
east-west as north-south.
If the tolerance keeps more than 90% of ``max_points`` vertices it grows by half until it does
not (a recursive CTE: only the tolerances needed are tried). Douglas-Peucker looks at the shape
only, so a burst of speeding on a straight road would vanish: the range is also cut into
``max_points / 10`` equal slices and each slice's fastest fix is kept, for the speed colours and
chart. The fixes are read through each day's partition's ``positions_dedupe`` index (vehicle_id,
fix_time, serial), pruned to the range's days; the vehicle's scope is checked first
(:func:`vehicle_in_scope`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from store.users import Scope, scope_sql

#: Metres per degree of latitude (the mean; the tolerance is a display tolerance, not a survey).
METRES_PER_DEGREE = 111_320.0
#: The simplifying statement is cancelled after this long (asyncpg's QueryCanceledError).
STATEMENT_TIMEOUT_MS = 20_000
#: A fix slower than this counts as standing still (GNSS drift shows 1-2 km/h when parked).
STILL_KMH = 3.0

#: The vehicle's fixes in [$2, $3): one per fix time (a retransmission with another serial is
#: the same fix), valid ones only (an invalid fix's position is the terminal's last guess).
_FIXES = """
SELECT DISTINCT ON (fix_time) fix_time, geom, speed_kmh, heading
FROM positions
WHERE vehicle_id = $1 AND fix_time >= $2 AND fix_time < $3 AND valid
ORDER BY fix_time, serial
"""

_SIMPLIFIED = f"""
WITH RECURSIVE fixes AS MATERIALIZED (
    SELECT row_number() OVER (ORDER BY fix_time) AS n, f.* FROM ({_FIXES}) f
), shape AS (
    SELECT ST_MakeLine(ST_MakePointM(ST_X(geom) * $7, ST_Y(geom), n) ORDER BY n) AS line,
           count(*) AS total
    FROM fixes
), fit (step, tolerance, line) AS (
    SELECT 0, $4::float8, ST_Simplify(line, $4::float8) FROM shape WHERE total > 1
    UNION ALL  -- from a tolerance of 0 the growth starts at ~1 cm; 60 steps reach ~10^8 m
    SELECT step + 1, greatest(tolerance * 1.5, 1e-7),
           ST_Simplify((SELECT line FROM shape), greatest(tolerance * 1.5, 1e-7))
    FROM fit WHERE ST_NPoints(line) > $5 AND step < 60
), chosen AS (
    SELECT tolerance, line FROM fit ORDER BY step DESC LIMIT 1
), kept AS (
    SELECT ST_M((ST_DumpPoints(line)).geom)::bigint AS n FROM chosen
    UNION  -- a single fix makes no line: keep it as it is
    SELECT n FROM fixes WHERE (SELECT total FROM shape) = 1
    UNION  -- the fastest fix of each of $6 equal slices: the max of speed (0.1 km/h) and n
    -- in one bigint, n in the low 24 bits (7 days at 1 Hz is 604,800 < 2^24): no sort
    SELECT max((round(speed_kmh * 10)::bigint << 24) | n) & 16777215 FROM fixes
    GROUP BY (n - 1) * $6 / (SELECT total FROM shape)
)
SELECT f.fix_time, ST_X(f.geom) AS lon, ST_Y(f.geom) AS lat, f.speed_kmh, f.heading,
       to_char(f.fix_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS iso,
       (SELECT total FROM shape) AS total,
       (SELECT tolerance FROM chosen) AS tolerance
FROM kept JOIN fixes f USING (n)
ORDER BY f.n
"""

#: The x scale of the line (cos of the first fix's latitude): a parameter, as a subquery of the
#: fixes beside them had the planner rescan all the fixes for each fix.
_FIRST_LATITUDE = """
SELECT ST_Y(geom) FROM positions
WHERE vehicle_id = $1 AND fix_time >= $2 AND fix_time < $3 AND valid
ORDER BY fix_time LIMIT 1
"""

_FULL = f"""
SELECT fix_time, ST_X(geom) AS lon, ST_Y(geom) AS lat, speed_kmh, heading,
       to_char(fix_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS iso
FROM ({_FIXES}) f
"""

#: Runs of standing still (gaps and islands: a run is the fixes between two moving ones), kept
#: when they last ``$4`` seconds or more. A parked vehicle that stops reporting and starts again
#: in the same place is one stop, its first still fix to its last.
_STOPS = f"""
WITH fixes AS (
    SELECT fix_time, geom, speed_kmh < {STILL_KMH} AS still,
           count(*) FILTER (WHERE speed_kmh >= {STILL_KMH}) OVER (ORDER BY fix_time) AS run
    FROM ({_FIXES}) f
)
SELECT min(fix_time) AS start_time, max(fix_time) AS end_time,
       avg(ST_X(geom)) AS lon, avg(ST_Y(geom)) AS lat
FROM fixes
WHERE still
GROUP BY run
HAVING extract(epoch FROM max(fix_time) - min(fix_time)) >= $4
ORDER BY 1
"""

#: The vehicle's alerts that started in the range, placed at its last fix up to their start.
_ALERTS = """
SELECT a.id, a.type, a.severity, a.status, a.start_time, a.end_time,
       ST_X(p.geom) AS lon, ST_Y(p.geom) AS lat
FROM alerts a
LEFT JOIN LATERAL (
    SELECT geom FROM positions
    WHERE vehicle_id = a.vehicle_id AND valid
      AND fix_time <= a.start_time AND fix_time >= $2
    ORDER BY fix_time DESC LIMIT 1
) p ON true
WHERE a.vehicle_id = $1 AND a.start_time >= $2 AND a.start_time < $3
ORDER BY a.start_time, a.id
LIMIT $4
"""


@dataclass(frozen=True, slots=True)
class Track:
    """The kept fixes (time, lon, lat, km/h, heading), out of ``total``, and the tolerance
    (metres) that kept them (None when not simplified); ``iso`` their times as ISO 8601 UTC to
    the second, formatted by the database (5,000 datetimes formatted in Python cost ~20 ms)."""

    points: list[tuple[datetime, float, float, float, int]]
    total: int
    tolerance_m: float | None
    iso: list[str]


async def vehicle_in_scope(conn: Any, scope: Scope, vehicle_id: int) -> dict[str, Any] | None:
    """The vehicle's id, plate and company, or None if it does not exist or is out of scope."""
    row = await conn.fetchrow(
        f"SELECT v.id, v.plate, c.name AS company FROM vehicles v"
        f" LEFT JOIN companies c ON c.id = v.company_id"
        f" WHERE v.id = $3 AND {scope_sql('v', 1)}",
        *scope.params,
        vehicle_id,
    )
    return dict(row.items()) if row else None


async def track(
    conn: Any,
    vehicle_id: int,
    start: datetime,
    end: datetime,
    tolerance_m: float | None,
    max_points: int = 5000,
) -> Track:
    """The fixes in [start, end); simplified to ``tolerance_m`` (grown until at most
    ``max_points`` are kept) unless ``tolerance_m`` is None: then every fix."""
    if tolerance_m is None:
        rows = await conn.fetch(_FULL, vehicle_id, start, end)
        points = [(r[0], r[1], r[2], r[3], r[4]) for r in rows]
        return Track(points, len(points), None, [r["iso"] for r in rows])
    degrees = tolerance_m / METRES_PER_DEGREE
    first = await conn.fetchval(_FIRST_LATITUDE, vehicle_id, start, end)
    if first is None:
        return Track([], 0, tolerance_m, [])
    peaks = max(1, max_points // 10)
    async with conn.transaction(readonly=True):
        # The planner's guess of the join (millions of rows) would have it JIT-compile the
        # statement first: 0.9 s measured on a 24 h track, for a query of ~0.4 s. And it would
        # sort all the fixes to merge-join the few kept ones: a hash join needs no sort.
        # A bound for any surprise (a week at 1 Hz is 604,800 fixes, ~3 s): no track query may
        # hold a connection of the shared pool for long.
        await conn.execute(
            "SET LOCAL jit = off; SET LOCAL enable_mergejoin = off;"
            f" SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"
        )
        rows = await conn.fetch(
            _SIMPLIFIED,
            vehicle_id,
            start,
            end,
            degrees,
            max(2, max_points - peaks),
            peaks,
            math.cos(math.radians(first)),
        )
    if not rows:
        return Track([], 0, tolerance_m, [])
    used = rows[0]["tolerance"]
    return Track(
        [(r[0], r[1], r[2], r[3], r[4]) for r in rows],
        rows[0]["total"],
        used * METRES_PER_DEGREE if used is not None else tolerance_m,
        [r["iso"] for r in rows],
    )


async def stops(
    conn: Any, vehicle_id: int, start: datetime, end: datetime, min_seconds: float
) -> list[dict[str, Any]]:
    """Where the vehicle stood still at least ``min_seconds`` (start, end, mean lon/lat)."""
    rows = await conn.fetch(_STOPS, vehicle_id, start, end, min_seconds)
    return [dict(r.items()) for r in rows]


async def alerts(
    conn: Any, vehicle_id: int, start: datetime, end: datetime, limit: int
) -> list[dict[str, Any]]:
    """The vehicle's alerts that started in the range, at most ``limit``, with where."""
    rows = await conn.fetch(_ALERTS, vehicle_id, start, end, limit)
    return [dict(r.items()) for r in rows]


async def explain(conn: Any, vehicle_id: int, start: datetime, end: datetime) -> str:
    """The plan of the fixes' scan (for the benchmark and the index test)."""
    rows = await conn.fetch(f"EXPLAIN {_FIXES}", vehicle_id, start, end)
    return "\n".join(r[0] for r in rows)
