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
import time
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


# ---------------------------------------------------------------------- the benchmark

PASSWORD = "bench-replay-password"


def _api_calls(port: int, path: str, runs: int) -> list[tuple[float, int]]:
    """Log in over HTTP, then GET ``path`` ``runs`` times: (seconds, body bytes) each."""
    import http.client
    import json as json_

    def request(method: str, url: str, cookies: dict[str, str], body: Any = None) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}
        if body is not None:
            headers |= {"Content-Type": "application/json", "X-CSRF-Token": cookies["fw_csrf"]}
        conn.request(method, url, json_.dumps(body) if body is not None else None, headers)
        reply = conn.getresponse()
        raw = reply.read()
        for line in reply.headers.get_all("Set-Cookie") or []:
            name, _, rest = line.partition("=")
            cookies[name] = rest.split(";", 1)[0]
        conn.close()
        if reply.status != 200:
            raise RuntimeError(f"{method} {url}: {reply.status} {raw[:200]!r}")
        return raw

    cookies: dict[str, str] = {}
    request("GET", "/api/session", cookies)
    request("POST", "/api/login", cookies, {"username": "bench", "password": PASSWORD})
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        raw = request("GET", path, cookies)
        out.append((time.perf_counter() - started, len(raw)))
    return out


def _browser(url: str, vehicle_id: int, start: str, end: str, runs: int, shot: str) -> list[Any]:
    """Open the replay ``runs`` times: (page's data-load-ms, wall seconds click to drawn,
    page's data-fetch-ms)."""
    import shutil

    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768}, locale="zh-CN")
            page.set_default_timeout(60_000)
            page.goto(url)
            page.wait_for_selector("body[data-state=login]")
            page.fill("#username", "bench")
            page.fill("#password", PASSWORD)
            page.click("#login-submit")
            page.wait_for_selector("body[data-state=ready]")
            page.click("#replay-open")
            page.select_option("#replay-vehicle", str(vehicle_id))
            page.fill("#replay-from", start)
            page.fill("#replay-to", end)
            panel = page.locator("#replay")
            for _ in range(runs):
                page.click("#replay-close")
                page.click("#replay-open")
                started = time.perf_counter()
                page.click("#replay-load")
                expect(panel).to_have_attribute("data-state", "ready", timeout=60_000)
                wall = time.perf_counter() - started
                fetch_ms = int(panel.get_attribute("data-fetch-ms") or 0)
                out.append((int(panel.get_attribute("data-load-ms") or 0), wall, fetch_ms))
            page.screenshot(path=shot)
        finally:
            browser.close()
    return out


async def _backend_cpu(
    conn: Any, vehicle_id: int, start: datetime, end: datetime, runs: int
) -> str:
    """CPU seconds of the PostgreSQL backend (/proc/PID/stat, 10 ms ticks) for the three
    statements, and their wall clock: on a loaded machine the CPU is what one call costs."""
    import os
    import statistics

    from store import tracks

    pid = await conn.fetchval("SELECT pg_backend_pid()")

    def cpu() -> float:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    cpus, walls = [], []
    for _ in range(runs):
        before, started = cpu(), time.perf_counter()
        await tracks.track(conn, vehicle_id, start, end, 5.0, 5000)
        await tracks.stops(conn, vehicle_id, start, end, 300)
        await tracks.alerts(conn, vehicle_id, start, end, 1000)
        walls.append(time.perf_counter() - started)
        cpus.append(cpu() - before)
    cpu_ms, wall_ms = statistics.median(cpus) * 1000, statistics.median(walls) * 1000
    return (
        f"PostgreSQL backend, track + stops + alerts one after the other: CPU median"
        f" {cpu_ms:.0f} ms, wall median {wall_ms:.0f} ms over {runs}"
    )


async def _bench(args: Any) -> None:
    import asyncio
    import statistics
    import tempfile
    from datetime import UTC

    import asyncpg
    from twisted.internet import reactor
    from twisted.web.server import Site

    from maps.api import Api
    from maps.tracks import TrackApi
    from maps.web import dashboard_root
    from store import tracks
    from store.cluster import EmbeddedCluster
    from store.migrations import migrate
    from store.partitions import create_partition
    from store.users import add_user, hash_password

    work = tempfile.mkdtemp(prefix="fwbr-", dir="/tmp")
    cluster = EmbeddedCluster(work, durable=False)
    await asyncio.to_thread(cluster.start)
    try:
        pool = await asyncpg.create_pool(cluster.url, min_size=1, max_size=4)
        async with pool.acquire() as conn:
            await migrate(conn)
            await conn.execute("INSERT INTO companies (name) VALUES ('bench')")
            vid = await conn.fetchval(
                "INSERT INTO vehicles (plate, company_id, phone) SELECT '京A99999', id, '1'"
                " FROM companies RETURNING id"
            )
            await add_user(conn, "bench", "dispatcher", hash_password(PASSWORD), "bench")
            # 00:00 Beijing time two days ago (16:00 UTC the day before), for --hours
            today = datetime.now(UTC).replace(hour=16, minute=0, second=0, microsecond=0)
            beijing_midnight = today - timedelta(days=2)
            end = beijing_midnight + timedelta(hours=args.hours)
            day = beijing_midnight.date()
            while day <= end.date():
                await create_partition(conn, day)
                day += timedelta(days=1)
            fixes = synthetic_track(beijing_midnight, args.hours * 3600, args.seed)
            started = time.perf_counter()
            await insert_track(conn, vid, fixes)
            # a fleet around it: 200 other vehicles at one fix per 30 s (the index must matter)
            await conn.execute(
                "INSERT INTO positions (vehicle_id, fix_time, received_time, geom)"
                " SELECT 10000 + v, $1::timestamptz + s * interval '30 seconds', $1,"
                "        ST_SetSRID(ST_MakePoint(116, 40), 4326)"
                " FROM generate_series(1, 200) v, generate_series(0, $2::int) s",
                beijing_midnight,
                args.hours * 120 - 1,
            )
            await conn.execute("VACUUM ANALYZE positions")
            print(f"inserted {len(fixes)} fixes (+ {200 * args.hours * 120} of 200 other"
                  f" vehicles) in {time.perf_counter() - started:.1f} s")  # fmt: skip
            print("plan of the fixes' scan:\n  " + (await tracks.explain(
                conn, vid, beijing_midnight, end)).replace("\n", "\n  "))  # fmt: skip
            print(await _backend_cpu(conn, vid, beijing_midnight, end, args.runs))
        api = Api(pool)
        port = reactor.listenTCP(0, Site(dashboard_root(api.resource(TrackApi(api)))),  # type: ignore[attr-defined]
                                 interface="127.0.0.1")  # fmt: skip
        number = port.getHost().port
        query = (f"from={beijing_midnight.isoformat().replace('+', '%2B')}"
                 f"&to={end.isoformat().replace('+', '%2B')}")  # fmt: skip
        calls = await asyncio.to_thread(
            _api_calls, number, f"/api/vehicles/{vid}/track?{query}", args.runs + 1
        )
        first, warm = calls[0], calls[1:]
        seconds = [c[0] for c in warm]
        median = statistics.median(seconds) * 1000
        print(f"API GET track ({args.hours} h, {len(fixes)} fixes): first {first[0] * 1000:.0f}"
              f" ms, warm median {median:.0f} ms, max {max(seconds) * 1000:.0f} ms over"
              f" {len(warm)}; {first[1] / 1024:.0f} KiB JSON")  # fmt: skip
        if not args.no_browser:
            beijing = beijing_midnight + timedelta(hours=8)
            start_s = beijing.strftime("%Y-%m-%dT%H:%M")
            end_s = (beijing + timedelta(hours=args.hours)).strftime("%Y-%m-%dT%H:%M")
            shot = f"{work}-replay.png"
            opened = await asyncio.to_thread(
                _browser, f"http://127.0.0.1:{number}/", vid, start_s, end_s, args.runs, shot
            )
            page_ms = [o[0] for o in opened]
            walls = [o[1] * 1000 for o in opened]
            fetches = [o[2] for o in opened]
            print(f"browser: request to answer parsed (page) median"
                  f" {statistics.median(fetches):.0f} ms, max {max(fetches)} ms")  # fmt: skip
            print(f"browser: request to drawn (page) median {statistics.median(page_ms):.0f} ms,"
                  f" max {max(page_ms)} ms; click to drawn (wall) median"
                  f" {statistics.median(walls):.0f} ms, max {max(walls):.0f} ms over {len(opened)};"
                  f" screenshot {shot}")  # fmt: skip
        await port.stopListening().asFuture(asyncio.get_running_loop())
        await pool.close()
    finally:
        await asyncio.to_thread(cluster.stop, "immediate")
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    import argparse
    import asyncio

    from twisted.internet import asyncioreactor

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args(argv)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    failure: list[Any] = []
    done = Deferred.fromFuture(asyncio.ensure_future(_bench(args)))
    done.addErrback(lambda f: failure.append(f))
    done.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if failure:
        failure[0].raiseException()


if __name__ == "__main__":
    main()
