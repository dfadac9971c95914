"""A real dashboard server for tests: twisted.web on 127.0.0.1 over a fresh migrated database,
seeded with two companies (A and B), their vehicles, last positions, open alerts and users.

Requests go through :class:`Client` (http.client in a worker thread, because the server runs
on the test's own event loop), which keeps cookies the way a browser does.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from twisted.internet import reactor
from twisted.web.server import Site

from ingest.positions import ignition_of, status_names
from maps.alarms import AlarmApi
from maps.api import Api
from maps.geofences import GeofenceApi
from maps.limits import LoginLimiter
from maps.live import LiveHub
from maps.live_socket import Limits, LiveApi
from maps.panel import PanelApi
from maps.tiles import BaseMapApi, MBTilesResource, TileSource
from maps.tracks import TrackApi
from maps.web import dashboard_root
from store.users import add_user, hash_password
from tests.aio import deferred

PASSWORD = "correct horse battery"
#: (plate, company, lon, lat, online) of the seeded vehicles.
VEHICLES = [
    ("京A10001", "A", 116.40, 39.90, True),
    ("京A10002", "A", 116.45, 39.92, False),
    ("京A10003", "A", None, None, False),  # provisioned, never reported
    ("沪B20001", "B", 121.47, 31.23, True),
    ("沪B20002", "B", 121.50, 31.25, False),
]


@functools.cache
def password_hash() -> str:
    """One argon2 hash for every seeded user (hashing is deliberately slow)."""
    return hash_password(PASSWORD)


@dataclass
class Seeded:
    companies: dict[str, int] = field(default_factory=dict)
    vehicles: dict[str, int] = field(default_factory=dict)  # plate -> id
    alerts: dict[str, int] = field(default_factory=dict)  # plate -> open alert id
    unassigned: int = 0  # a vehicle of no company (the open-policy pool)


async def seed(conn: asyncpg.Connection) -> Seeded:
    out = Seeded()
    for name in ("A", "B"):
        out.companies[name] = await conn.fetchval(
            "INSERT INTO companies (name) VALUES ($1) RETURNING id", f"公司{name}"
        )
    for n, (plate, company, lon, lat, online) in enumerate(VEHICLES):
        vid = await conn.fetchval(
            "INSERT INTO vehicles (plate, plate_color, class, company_id, phone)"
            " VALUES ($1, 2, 'coach', $2, $3) RETURNING id",
            plate,
            out.companies[company],
            f"1380000{n:04d}",
        )
        out.vehicles[plate] = vid
        if lon is not None:
            await conn.execute(
                "INSERT INTO last_positions (vehicle_id, fix_time, received_time, geom, speed_kmh)"
                " VALUES ($1, now(), now(), ST_SetSRID(ST_MakePoint($2, $3), 4326), 42)",
                vid,
                lon,
                lat,
            )
        if online:
            await conn.execute(
                "INSERT INTO terminal_holders (vehicle_id, worker) VALUES ($1, 'test')", vid
            )
        if lon is not None:
            out.alerts[plate] = await conn.fetchval(
                "INSERT INTO alerts (vehicle_id, type, key, severity, start_time)"
                " VALUES ($1, 'speeding', 'speeding', 2, now() - interval '5 minutes')"
                " RETURNING id",
                vid,
            )
    out.unassigned = await conn.fetchval(
        "INSERT INTO vehicles (plate, provisioned, phone) VALUES ('粤C30001', false, '139')"
        " RETURNING id"
    )
    await conn.execute(
        "INSERT INTO last_positions (vehicle_id, fix_time, received_time, geom)"
        " VALUES ($1, now(), now(), ST_SetSRID(ST_MakePoint(113.26, 23.13), 4326))",
        out.unassigned,
    )
    hashed = await asyncio.to_thread(password_hash)
    await add_user(conn, "disp_a", "dispatcher", hashed, "公司A")
    await add_user(conn, "disp_b", "dispatcher", hashed, "公司B")
    await add_user(conn, "super", "supervisor", hashed)
    await add_user(conn, "admin", "admin", hashed)
    return out


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]
    cookies: list[str]


class Client:
    """A browser-like client of the dashboard: keeps cookies, sends the CSRF header if asked."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            if self.cookies:
                headers = {
                    "Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()),
                    **headers,
                }
            conn.request(method, path, body=body, headers=headers)
            reply = conn.getresponse()
            raw = reply.read()
            set_cookies = reply.headers.get_all("Set-Cookie") or []
        finally:
            conn.close()
        for line in set_cookies:
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in line:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        kind = reply.headers.get("Content-Type", "")
        parsed = json.loads(raw) if kind.startswith("application/json") else raw
        return Response(reply.status, parsed, dict(reply.headers.items()), set_cookies)

    async def request(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        *,
        csrf: bool = True,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        headers = dict(headers or {})
        body = raw
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        if csrf and method != "GET" and "fw_csrf" in self.cookies:
            headers.setdefault("X-CSRF-Token", self.cookies["fw_csrf"])
        return await asyncio.to_thread(self._request, method, path, body, headers)

    async def get(self, path: str) -> Response:
        return await self.request("GET", path)

    async def login(self, username: str, password: str = PASSWORD) -> Response:
        await self.get("/api/session")  # the CSRF cookie, as the page does first
        return await self.request(
            "POST", "/api/login", {"username": username, "password": password}
        )


@dataclass
class Dashboard:
    port: int
    url: str
    pool: Any
    seeded: Seeded
    api: Api
    hub: LiveHub  # the live feed: subscribe hub.durable to a writer to see its positions

    def client(self) -> Client:
        return Client(self.port)

    async def logged_in(self, username: str) -> Client:
        client = self.client()
        reply = await client.login(username)
        assert reply.status == 200, reply.body
        return client


@asynccontextmanager
async def dashboard(
    db_url: str,
    limiter: LoginLimiter | None = None,
    gateway: Any = None,
    live: Limits | None = None,
    tiles: TileSource | None = None,
    secure_cookies: bool = False,
) -> AsyncIterator[Dashboard]:
    """The seeded database served on a free 127.0.0.1 port for the duration; ``gateway``
    (a running CommandGateway) lets the alarm queue and the vehicle panel send commands;
    ``live``: the live sockets' limits; ``tiles``: as ``serve --tiles``; ``secure_cookies``: as
    ``serve --secure-cookies``."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    hub = LiveHub(pool, db_url)
    hub.ignition = ignition_of
    try:
        async with pool.acquire() as conn:
            seeded = await seed(conn)
        api = Api(pool, limiter=limiter, ignition=ignition_of, secure_cookies=secure_cookies)
        await hub.start()
        features = (
            GeofenceApi(api),
            AlarmApi(api, gateway, command_timeout=5.0),
            PanelApi(api, gateway, status_names=status_names, command_timeout=5.0),
            TrackApi(api),
            LiveApi(api, hub, live),
            BaseMapApi(api, tiles),
        )
        root = dashboard_root(api.resource(*features), tile_origin=tiles.origin if tiles else None)
        if tiles is not None and tiles.file is not None:
            root.putChild(b"tiles", MBTilesResource(tiles))
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")  # type: ignore[attr-defined]
        try:
            number = port.getHost().port
            yield Dashboard(number, f"http://127.0.0.1:{number}/", pool, seeded, api, hub)
        finally:
            await deferred(port.stopListening())
    finally:
        await hub.stop()
        await pool.close()


#: (plate, class, online, (speed, status word, valid) of the last fix or None, alert status or
#: None, expected map state, expected ignition) of extra vehicles: one per map state and class.
STATE_CASES = [
    ("京A20001", "police", True, (42.0, 0b11, True), None, "moving", True),
    ("京A20002", "school_bus", True, (0.0, 0b11, True), None, "idle", True),
    ("京A20003", "coach", True, (2.0, 0b10, True), "acknowledged", "parked", False),  # drift
    ("京A20004", "heavy_truck", False, (0.0, 0b11, True), "closed", "offline", True),
    ("京A20005", "hazmat", True, (0.0, 0b01, False), None, "nofix", True),  # invalid fix
    ("京A20006", "other", True, None, None, "nofix", None),  # connected, nothing reported yet
    ("京A20007", "hazmat", False, (55.0, 0b11, True), "open", "alarm", True),  # beats offline
]


async def add_state_vehicles(conn: asyncpg.Connection, company: int) -> dict[str, int]:
    """Add :data:`STATE_CASES` to ``company`` (heading 90, 0.02° apart east of 117 E, 39 N);
    returns plate -> id."""
    ids = {}
    for n, (plate, cls, online, fix, alert, *_) in enumerate(STATE_CASES):
        vid = ids[plate] = await conn.fetchval(
            "INSERT INTO vehicles (plate, plate_color, class, company_id, phone)"
            " VALUES ($1, 2, $2, $3, $4) RETURNING id", plate, cls, company, f"1370000{n:04d}",
        )  # fmt: skip
        if fix is not None:
            await conn.execute(
                "INSERT INTO last_positions (vehicle_id, fix_time, received_time, geom,"
                " speed_kmh, heading, status, valid) VALUES ($1, now(), now() - interval '1 s',"
                " ST_SetSRID(ST_MakePoint($5, 39), 4326), $2, 90, $3, $4)",
                vid, *fix, 117 + 0.02 * n,
            )  # fmt: skip
        if online:
            await conn.execute(
                "INSERT INTO terminal_holders (vehicle_id, worker) VALUES ($1, 't')", vid
            )
        if alert is not None:
            await conn.execute(
                "INSERT INTO alerts (vehicle_id, type, key, severity, start_time, status,"
                " acknowledged_by, acknowledged_at, closed_by, closed_at) VALUES ($1, 'sos',"
                " 'sos', 1, now(), $2, 'x', now(), CASE WHEN $2 = 'closed' THEN 'x' END,"
                " CASE WHEN $2 = 'closed' THEN now() END)", vid, alert,
            )  # fmt: skip
    return ids
