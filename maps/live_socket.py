"""``GET /api/live``: the dashboard's WebSocket (``twisted.web.websocket``), one per tab.

The upgrade is an API route like any other, so refusals are the API's JSON 4xx: 403 unless the
``Origin`` is the page's own (a page of another site could otherwise open a socket with the
dispatcher's cookie: cross-site WebSocket hijacking, which SameSite cookies do not stop on every
browser), 401 without a live session, 426 for a plain GET. Once open, the server speaks and the
client only listens (commands and acknowledgements go over REST, with their CSRF check):

* ``{"type": "snapshot", "vehicles": FeatureCollection, "alerts": [...]}`` first;
* ``{"type": "vehicles", "features": [...]}`` position deltas, each vehicle at most once a second;
* ``{"type": "alerts", "alerts": [...]}`` alerts created or changed, at once;
* ``{"type": "keepalive"}`` every ``keepalive`` seconds, with a WebSocket ping: a socket whose
  pong does not come back by the next one is dropped.

A client that cannot keep up is dropped rather than buffered for: messages are held while the
connection's send buffer is full (TCP backpressure, as ``pauseProducing``), and the socket is
aborted once that lasts ``slow_after`` seconds or holds ``max_held`` bytes. Its page reconnects
and starts again from a fresh snapshot, which is smaller than the backlog it would have had.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.websocket import WebSocketResource, WebSocketTransport
from zope.interface import implementer

from maps.api import SESSION_COOKIE, Api, Routes
from maps.live import LiveHub
from maps.web import UPGRADED, ApiError
from store.users import Scope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    keepalive: float = 20.0  # seconds between pings (and keepalive messages)
    slow_after: float = 10.0  # seconds a socket may stay unable to take more
    max_held: int = 4 << 20  # bytes held for a socket meanwhile


KEEPALIVE = '{"type":"keepalive"}'


def check_origin(request: Request) -> None:
    """403 unless the request's Origin is the host it was sent to (same scheme-less host:port)."""
    origin = (request.getHeader(b"origin") or b"").decode("ascii", "replace")
    host = (request.getHeader(b"host") or b"").decode("ascii", "replace").lower()
    if not origin:
        raise ApiError(403, "Origin header missing: the live feed is for the dashboard's own page")
    if urlsplit(origin).netloc.lower() != host:
        raise ApiError(403, f"Origin {origin!r} is not this site's ({host!r})")


class LiveApi:
    """The ``live`` route (a feature for :meth:`Api.resource`)."""

    def __init__(self, api: Api, hub: LiveHub, limits: Limits | None = None) -> None:
        self.api = api
        self.hub = hub
        self.limits = limits or Limits()

    def routes(self) -> Routes:
        return {("GET", ("live",)): self.open}

    async def open(self, request: Request, _: list[str]) -> tuple[int, Any]:
        check_origin(request)
        session = await self.api.user(request)
        if (request.getHeader(b"upgrade") or b"").lower() != b"websocket":
            raise ApiError(426, "the live feed is a WebSocket: send Upgrade: websocket",
                           {"Upgrade": "websocket"})  # fmt: skip
        token = request.getCookie(SESSION_COOKIE)
        assert token is not None  # user() found its session
        socket = LiveSocket(self.hub, session.user.scope, token.decode("ascii"), self.limits)
        answer = WebSocketResource(_Factory(socket)).render_GET(request)
        if answer is not NOT_DONE_YET:
            raise ApiError(400, "WebSocket handshake refused (Sec-WebSocket-Key/Version?)")
        request.registerProducer(socket, True)  # the send buffer's pause/resume reach the socket
        return 101, UPGRADED


class _Factory:
    def __init__(self, socket: LiveSocket) -> None:
        self.socket = socket

    def buildProtocol(self, request: Request) -> LiveSocket:
        return self.socket


@implementer(IPushProducer)
class LiveSocket:
    """One open socket: a ``WebSocketProtocol`` for Twisted, a ``maps.live.Client`` for the hub."""

    def __init__(self, hub: LiveHub, scope: Scope, token: str, limits: Limits) -> None:
        self.hub = hub
        self.scope = scope
        self.token = token
        self.limits = limits
        self.transport: WebSocketTransport | None = None
        self.ready = False  # the snapshot is out; before that, deltas are held
        self.closed = False
        self.paused_since: float | None = None
        self.held: deque[str] = deque()
        self.held_bytes = 0
        self.last_ping = self.last_pong = time.monotonic()
        self._start_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ WebSocketProtocol

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self.transport = transport

    def negotiationFinished(self) -> None:
        self.hub.join(self)  # deltas from now on are held until the snapshot is out
        self._start_task = asyncio.get_running_loop().create_task(self._snapshot())

    async def _snapshot(self) -> None:
        try:
            text = await self.hub.snapshot(self.scope)
        except Exception:
            log.exception("live feed: the snapshot failed")
            self.close(1011, "snapshot failed")
            return
        if self.closed or self.transport is None:
            return
        self.transport.sendTextMessage(text)
        self.ready = True
        self._flush()

    def pongReceived(self, payload: bytes) -> None:
        self.last_pong = time.monotonic()

    def textMessageReceived(self, message: str) -> None:
        """The client has nothing to say here (it uses REST); ignored."""

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        """As :meth:`textMessageReceived`."""

    def connectionLost(self, reason: Failure) -> None:
        self.closed = True
        self.held.clear()
        self.hub.leave(self)

    # ------------------------------------------------------------------ the hub's side

    def send(self, text: str) -> None:
        if self.closed:
            return
        if self.ready and self.paused_since is None and not self.held:
            assert self.transport is not None
            self.transport.sendTextMessage(text)
            return
        self.held.append(text)
        self.held_bytes += len(text)
        if self.held_bytes > self.limits.max_held:
            self._drop(f"{self.held_bytes} bytes waiting")

    def check(self, now: float) -> None:
        """Called every tick: drop a stalled or silent socket, ping a live one."""
        if self.closed:
            return
        if self.paused_since is not None and now - self.paused_since > self.limits.slow_after:
            self._drop(f"unable to take more for {now - self.paused_since:.0f} s")
        elif now - self.last_ping >= self.limits.keepalive:
            if self.last_pong < self.last_ping:
                self._drop(f"no pong within {self.limits.keepalive:g} s")
                return
            assert self.transport is not None
            self.last_ping = now
            self.transport.ping(b"fw")
            self.send(KEEPALIVE)

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.hub.leave(self)
        if self.transport is not None:
            self.transport.loseConnection(code)

    def _drop(self, why: str) -> None:
        """Abort (no closing handshake: the socket takes nothing any more)."""
        log.info("live feed: dropped a socket (%s): %s", self.scope, why)
        self.hub.dropped()
        self.closed = True
        self.held.clear()
        self.hub.leave(self)
        tcp = getattr(self.transport, "transport", None)
        if tcp is not None:
            tcp.abortConnection()

    def _flush(self) -> None:
        assert self.transport is not None
        while self.held and self.paused_since is None and not self.closed:
            text = self.held.popleft()
            self.held_bytes -= len(text)
            self.transport.sendTextMessage(text)

    # ------------------------------------------------------------------ IPushProducer

    def pauseProducing(self) -> None:
        if self.paused_since is None:
            self.paused_since = time.monotonic()

    def resumeProducing(self) -> None:
        self.paused_since = None
        if self.ready and not self.closed:
            self._flush()

    def stopProducing(self) -> None:
        self.closed = True
