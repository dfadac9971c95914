"""The dashboard's live feed: durable positions and alert changes, scoped, to every open socket.

Where updates come from (see store/live.py for the channels):

* In the process serving the dashboard (worker 0), :class:`LiveHub` subscribes to the writer's
  durable feed directly and LISTENs for the other workers' positions and for alert changes.
* In every other worker, :class:`PositionRelay` subscribes to that worker's durable feed and
  NOTIFYs the positions, coalesced to one per vehicle per second, in batches under the payload
  limit: at 5,000 vehicles reporting every 10 s that is a few notifications a second.

Positions are coalesced by :class:`Coalescer` (a vehicle's first position goes out at the next
tick, at most one a second after that, always the newest), so a terminal reporting at 10 Hz costs
the sockets what one at 1 Hz does. Alerts are never held back: each change read from the table is
sent at the next tick (0.1 s). Once per tick the hub encodes each feature once and builds one
message per distinct scope (all supervisors share one, each company's dispatchers one), so the
fan-out's cost grows with the scopes, not the sockets. Scoping is :meth:`Scope.allows` in memory,
the same rule as the SQL of ``store.dashboard`` that the snapshot is read with.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from geo.flags import moves_last
from geo.position import Position
from maps.api import vehicle_feature
from store import dashboard, live, users
from store.alerts import Alert
from store.commands import Listener
from store.users import Scope

log = logging.getLogger(__name__)

#: A vehicle's positions reach the sockets at most this often (seconds).
POSITION_INTERVAL = 1.0
#: How often the hub and the relays send what has gathered (seconds).
TICK = 0.1
#: A vehicle card (plate, company) is read again after this long: a vehicle may change company.
CARD_TTL = 60.0
#: The snapshot's vehicles are read in pages of this many; open alerts up to this many, newest.
SNAPSHOT_PAGE = 2000
SNAPSHOT_ALERTS = 500

V = TypeVar("V")
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Coalescer(Generic[V]):
    """At most one value per key per ``interval``: a key's first value is taken at once; values
    offered within the interval replace each other and the newest is taken when it ends."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._ready: dict[int, V] = {}
        self._held: dict[int, V] = {}
        self._due: list[tuple[float, int]] = []  # (when a held key may go, key), a heap
        self._sent: dict[int, float] = {}
        self._swept = 0.0

    def offer(self, key: int, value: V, now: float) -> None:
        if key in self._ready:
            self._ready[key] = value
        elif key in self._held:
            self._held[key] = value
        else:
            last = self._sent.get(key)
            if last is None or now - last >= self.interval:
                self._ready[key] = value
            else:
                self._held[key] = value
                heapq.heappush(self._due, (last + self.interval, key))

    def take(self, now: float) -> list[V]:
        """What may go now (the caller sends it; the interval counts from here)."""
        due = self._due
        while due and due[0][0] <= now:
            key = heapq.heappop(due)[1]
            self._ready[key] = self._held.pop(key)
        out = list(self._ready.values())
        sent = self._sent
        for key in self._ready:
            sent[key] = now
        self._ready = {}
        if now - self._swept > 10 * self.interval:  # forget keys that went quiet: bounded
            self._sent = {k: t for k, t in sent.items() if now - t < self.interval}
            self._swept = now
        return out

    def __len__(self) -> int:
        return len(self._ready) + len(self._held)


class Fix(NamedTuple):
    """A position as the live feed carries it: what the map shows, and when it became durable
    (epoch ms, so a client can measure stored → shown)."""

    vehicle_id: int
    lon: float
    lat: float
    speed_kmh: float
    heading: int
    fix_ms: int
    valid: bool
    durable_ms: int

    @classmethod
    def of(cls, p: Position, durable_ms: int) -> Fix:
        fix_ms = int(p.fix_time.timestamp() * 1000)
        return cls(p.vehicle_id, p.lon, p.lat, p.speed_kmh, p.heading, fix_ms, p.valid, durable_ms)

    def wire(self) -> str:
        """A compact JSON array (an f-string: a third of json's cost; ASCII only)."""
        return (
            f"[{self.vehicle_id},{self.lon:.6f},{self.lat:.6f},{self.speed_kmh:.1f},"
            f"{self.heading},{self.fix_ms},{int(self.valid)},{self.durable_ms}]"
        )

    @classmethod
    def from_wire(cls, item: list[Any]) -> Fix:
        vid, lon, lat, speed, heading, fix_ms, valid, durable_ms = item
        return cls(int(vid), float(lon), float(lat), float(speed), int(heading), int(fix_ms),
                   bool(valid), int(durable_ms))  # fmt: skip


def shown(p: Position) -> bool:
    """Whether a durable position moves the vehicle on the map: not a blind-area upload (an old
    fix) nor one flagged as never becoming the last position (a clock far ahead)."""
    return not p.batch and (not p.extras or moves_last(p.extras))


#: A position from this process's durable feed, with when it became durable (epoch ms).
Durable = tuple[Position, int]


def offer_all(
    coalescer: Coalescer[Fix | Durable], positions: list[Position], now: float | None = None
) -> None:
    """Offer a durable batch, stamped now. This runs for every position stored, so it only
    holds the position (a Fix costs a few µs to make: :func:`taken` makes those it sends)."""
    stamp, offer = int(time.time() * 1000), coalescer.offer
    now = time.monotonic() if now is None else now
    for p in positions:
        if shown(p):
            offer(p.vehicle_id, (p, stamp), now)


def taken(coalescer: Coalescer[Fix | Durable], now: float) -> list[Fix]:
    return [v if isinstance(v, Fix) else Fix.of(*v) for v in coalescer.take(now)]


def pack(items: Sequence[str], limit: int = live.MAX_PAYLOAD) -> list[str]:
    """JSON arrays of the already-encoded ASCII ``items``, each at most ``limit`` bytes."""
    out: list[str] = []
    part: list[str] = []
    size = 2
    for item in items:
        n = len(item) + 1  # wire() is ASCII
        if part and size + n > limit:
            out.append("[" + ",".join(part) + "]")
            part, size = [], 2
        part.append(item)
        size += n
    if part:
        out.append("[" + ",".join(part) + "]")
    return out


class _Ticker:
    """Call ``tick`` every ``interval`` on the running loop until stopped; a failing tick is
    logged and the next one runs (a database hiccup must not end the feed)."""

    def __init__(self, interval: float, tick: Callable[[], Awaitable[None]], name: str) -> None:
        self.interval, self.tick, self.name = interval, tick, name
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except Exception:
                log.exception("%s failed", self.name)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class PositionRelay:
    """In a worker that does not serve the dashboard: its durable positions, coalesced, to the
    one that does, over NOTIFY. Subscribe :meth:`durable` to the worker's writer."""

    def __init__(self, pool: Any, interval: float = POSITION_INTERVAL, tick: float = TICK) -> None:
        self.pool = pool
        self.coalescer: Coalescer[Fix | Durable] = Coalescer(interval)
        self.ticker = _Ticker(tick, self._tick, "live position relay")
        self.notified = 0  # positions sent

    def durable(self, positions: list[Position]) -> None:
        """The durable feed's subscriber, on the ingest path: the position itself is held (a
        Fix is made only of what is sent, at most one a vehicle a second)."""
        offer_all(self.coalescer, positions)

    def start(self) -> None:
        self.ticker.start()

    async def stop(self) -> None:
        await self.ticker.stop()

    async def _tick(self) -> None:
        fixes = taken(self.coalescer, time.monotonic())
        if fixes:
            await live.notify(self.pool, live.POSITIONS, pack([f.wire() for f in fixes]))
            self.notified += len(fixes)


class Client(Protocol):
    """An open live socket, as the hub sees it (``maps.live_socket.LiveSocket``)."""

    scope: Scope
    token: str

    def send(self, text: str) -> None: ...

    def check(self, now: float) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


#: The hub's counters (served on /metrics as ``fleetwatch_live_<name>``) and what they count.
STATS = {
    "positions_in": "positions offered to the live feed (this worker's and the others')",
    "deltas": "vehicle updates sent (one a vehicle a tick, before the fan-out)",
    "alerts": "alert changes sent (before the fan-out)",
    "messages": "messages written to sockets",
    "dropped": "sockets dropped: too slow, silent or logged out",
}


class LiveHub:
    """Worker 0's side: everything live, scoped, to the open sockets (see the module's doc)."""

    def __init__(
        self, pool: Any, url: str, *, interval: float = POSITION_INTERVAL, tick: float = TICK,
        session_check: float = 30.0,
    ) -> None:  # fmt: skip
        self.pool = pool
        self.coalescer: Coalescer[Fix | Durable] = Coalescer(interval)
        self.clients: set[Client] = set()
        self.stats = dict.fromkeys(STATS, 0)
        self._alert_ids: set[int] = set()
        self._cards: dict[int, dict[str, Any]] = {}
        self._card_time: dict[int, float] = {}
        self._where: dict[int, tuple[float, float]] = {}  # vehicle -> last (lon, lat) sent
        self._newest: dict[int, int] = {}  # vehicle -> newest fix time sent (ms)
        self.listener = Listener(
            url, "live",
            {live.POSITIONS: self._positions_notified, live.ALERTS: self._alerts_notified},
            application="fleetwatch-live",
        )  # fmt: skip
        self.ticker = _Ticker(tick, self._tick, "live feed")
        self.session_check = session_check
        self._checked = time.monotonic()

    async def start(self) -> None:
        await self.listener.start()
        self.ticker.start()

    async def stop(self) -> None:
        await self.ticker.stop()
        for client in list(self.clients):
            client.close(1001, "server shutting down")
        await self.listener.close()

    # ------------------------------------------------------------------ sources

    def durable(self, positions: list[Position]) -> None:
        """This worker's durable feed."""
        if self.clients:
            offer_all(self.coalescer, positions)
            self.stats["positions_in"] += len(positions)

    def _positions_notified(self, payload: str) -> None:
        if not self.clients:
            return
        try:
            items = json.loads(payload)
            fixes = [Fix.from_wire(item) for item in items]
        except (ValueError, TypeError):
            log.warning("live feed: ignored a position notification %.80r", payload)
            return
        now = time.monotonic()
        for fix in fixes:
            self.coalescer.offer(fix.vehicle_id, fix, now)
        self.stats["positions_in"] += len(fixes)

    def _alerts_notified(self, payload: str) -> None:
        if self.clients:
            with contextlib.suppress(ValueError):
                self._alert_ids.update(int(x) for x in payload.split(","))

    # ------------------------------------------------------------------ sockets

    async def snapshot(self, scope: Scope) -> str:
        """The ``snapshot`` message: vehicles in scope as ``GET /api/vehicles`` has them, and
        the active alerts (newest first), read with the scope in the SQL."""
        features: list[dict[str, Any]] = []
        async with self.pool.acquire() as conn:
            after = 0
            while True:
                rows = await dashboard.vehicles(conn, scope, after, SNAPSHOT_PAGE)
                features.extend(vehicle_feature(r) for r in rows)
                if len(rows) < SNAPSHOT_PAGE:
                    break
                after = rows[-1]["id"]
            found = await dashboard.alerts(conn, scope, "active", None, SNAPSHOT_ALERTS)
        return _encode({
            "type": "snapshot",
            "vehicles": {"type": "FeatureCollection", "features": features},
            "alerts": [a.to_json() for a in found],
            "at": datetime.now(UTC).isoformat(),
        })  # fmt: skip

    def join(self, client: Client) -> None:
        self.clients.add(client)

    def leave(self, client: Client) -> None:
        self.clients.discard(client)

    def dropped(self) -> None:
        self.stats["dropped"] += 1

    # ------------------------------------------------------------------ the tick

    async def _tick(self) -> None:
        now = time.monotonic()
        fixes = taken(self.coalescer, now)
        alert_ids, self._alert_ids = self._alert_ids, set()
        if self.clients and (fixes or alert_ids):
            await self._send(fixes, alert_ids, now)
        for client in list(self.clients):
            client.check(now)
        if now - self._checked >= self.session_check:
            self._checked = now
            await self._check_sessions()

    async def _send(self, fixes: list[Fix], alert_ids: set[int], now: float) -> None:
        changed: list[Alert] = []
        async with self.pool.acquire() as conn:
            if alert_ids:
                changed = await live.alerts_by_id(conn, alert_ids)
            wanted = {f.vehicle_id for f in fixes} | {a.vehicle_id for a in changed}
            stale = [v for v in wanted if now - self._card_time.get(v, -CARD_TTL) >= CARD_TTL]
            if stale:
                cards = await live.vehicle_cards(conn, stale)
                for v in stale:
                    self._card_time[v] = now
                for v, card in cards.items():
                    lon, lat = card.pop("lon"), card.pop("lat")
                    if lon is not None:
                        self._where.setdefault(v, (lon, lat))
                    self._cards[v] = card
        vehicles = self._features(fixes)
        alerts = [(a.vehicle_id, _encode(a.to_json())) for a in changed]
        self.stats["deltas"] += len(vehicles)
        self.stats["alerts"] += len(alerts)
        messages: dict[Scope, list[str]] = {}
        for client in list(self.clients):
            scope = client.scope
            if scope not in messages:
                messages[scope] = self._messages(scope, vehicles, alerts)
            for text in messages[scope]:
                client.send(text)
                self.stats["messages"] += 1

    def _features(self, fixes: list[Fix]) -> list[tuple[int | None, float, float, str]]:
        """(company, lon, lat, encoded feature) of each fix newer than what was sent."""
        out = []
        for f in fixes:
            card = self._cards.get(f.vehicle_id)
            if card is None or f.fix_ms < self._newest.get(f.vehicle_id, 0):
                continue  # a vehicle deleted meanwhile, or a fix older than the one shown
            self._newest[f.vehicle_id] = f.fix_ms
            self._where[f.vehicle_id] = (f.lon, f.lat)
            row = {
                **card, "online": True, "lon": f.lon, "lat": f.lat, "speed_kmh": f.speed_kmh,
                "heading": f.heading, "valid": f.valid,
                "fix_time": datetime.fromtimestamp(f.fix_ms / 1000, UTC),
            }  # fmt: skip
            feature = vehicle_feature(row)
            feature["properties"]["durable_ms"] = f.durable_ms
            out.append((card["company_id"], f.lon, f.lat, _encode(feature)))
        return out

    def _messages(
        self, scope: Scope, vehicles: list[tuple[int | None, float, float, str]],
        alerts: list[tuple[int, str]],
    ) -> list[str]:  # fmt: skip
        out = []
        mine = [text for company, lon, lat, text in vehicles if scope.allows(company, lon, lat)]
        if mine:
            out.append('{"type":"vehicles","features":[' + ",".join(mine) + "]}")
        shown_alerts = []
        for vehicle_id, text in alerts:
            card = self._cards.get(vehicle_id)
            lon, lat = self._where.get(vehicle_id, (None, None))
            if card is not None and scope.allows(card["company_id"], lon, lat):
                shown_alerts.append(text)
        if shown_alerts:
            out.append('{"type":"alerts","alerts":[' + ",".join(shown_alerts) + "]}")
        return out

    async def _check_sessions(self) -> None:
        """A socket outlives neither its session's logout nor its expiry (nor a disabled user)."""
        clients = list(self.clients)
        if not clients:
            return
        async with self.pool.acquire() as conn:
            for client in clients:
                if await users.session(conn, client.token) is None:
                    client.close(4001, "session ended")
                    self.dropped()
