"""The dashboard's twisted.web tree: ``/`` the single-page app (maps/static), ``/api/...`` JSON.

:func:`dashboard_root` returns the root resource; ``fleetwatch serve`` adds ``/metrics`` to it
and serves it on its HTTP port. Handlers are asyncio coroutines (asyncpg) bridged to
twisted.web once, in :class:`JsonResource`: each returns ``(status, body)`` or raises
:class:`ApiError`, and every error, 4xx or 5xx, is a JSON ``{"error": message}``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.static import File

STATIC_DIR = Path(__file__).parent / "static"
#: Request bodies beyond this are refused (413): the API's bodies are a few hundred bytes.
MAX_BODY = 64 * 1024
_log = Logger(namespace="fleetwatch.maps")


class ApiError(Exception):
    """An HTTP error answered as ``{"error": message}`` with this status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


Handler = Callable[[Request, list[str]], Coroutine[Any, Any, tuple[int, Any]]]
#: The body of a handler that took the connection over (a WebSocket): nothing more is written.
UPGRADED = object()


@dataclass(frozen=True, slots=True)
class RawBody:
    """A handler's body that is not JSON (a GPX or HTML export): sent as it is, with its type
    and headers (e.g. Content-Disposition); errors stay JSON."""

    content: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


class JsonResource(Resource):
    """A leaf that routes ``/api/<path>`` to ``routes[(method, pattern)]`` coroutines.

    A pattern is a tuple of path segments, ``"{}"`` matching any one segment (passed to the
    handler as its ``args``). Unknown path: 404; known path, other method: 405 with Allow.
    """

    isLeaf = True

    def __init__(self, routes: dict[tuple[str, tuple[str, ...]], Handler]) -> None:
        super().__init__()
        self.routes = routes

    def render(self, request: Request) -> int:  # type: ignore[override]
        done: list[bool] = []
        request.notifyFinish().addBoth(lambda _: done.append(True))
        d = Deferred.fromFuture(asyncio.ensure_future(self._answer(request)))
        d.addCallback(lambda answer: self._write(request, done, *answer))
        d.addErrback(lambda f: _log.failure("dashboard API: {uri}", f, uri=request.uri))
        return NOT_DONE_YET

    async def _answer(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        try:
            handler, args = self._route(request)
            status, body = await handler(request, args)
            return status, body, {}
        except ApiError as exc:
            return exc.status, {"error": exc.message}, exc.headers
        except Exception:
            _log.failure("dashboard API {method} {uri}", method=request.method, uri=request.uri)
            return 500, {"error": "internal error (logged on the server)"}, {}

    def _route(self, request: Request) -> tuple[Handler, list[str]]:
        path = [p.decode("utf-8", "replace") for p in request.postpath or []]
        if path and path[-1] == "":
            path.pop()
        method = (request.method or b"").decode("ascii", "replace")
        allowed = []
        for (verb, pattern), handler in self.routes.items():
            if len(pattern) != len(path):
                continue
            if all(p == "{}" or p == s for p, s in zip(pattern, path, strict=True)):
                if verb == method:
                    return handler, [s for p, s in zip(pattern, path, strict=True) if p == "{}"]
                allowed.append(verb)
        if allowed:
            raise ApiError(405, f"{method} not allowed here; use {', '.join(allowed)}",
                           {"Allow": ", ".join(allowed)})  # fmt: skip
        raise ApiError(404, f"no API endpoint /api/{'/'.join(path)}")

    @staticmethod
    def _write(
        request: Request, done: list[bool], status: int, body: Any, headers: dict[str, str]
    ) -> None:
        if done or body is UPGRADED:  # the client went away meanwhile, or is a WebSocket now
            return
        request.setResponseCode(status)
        kind = body.content_type if isinstance(body, RawBody) else "application/json; charset=utf-8"
        request.setHeader(b"content-type", kind.encode())
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if isinstance(body, RawBody):
            headers = {**headers, **body.headers}
        for name, value in headers.items():
            request.setHeader(name.encode(), value.encode())
        if isinstance(body, RawBody):
            request.write(body.content)
        else:
            request.write(json.dumps(body, ensure_ascii=False).encode())
        request.finish()


def json_body(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The request's JSON object body (413 beyond ``limit`` bytes); 415 unless sent as
    application/json, 400 if not JSON.

    Requiring the JSON content type also means a cross-site HTML form cannot post here."""
    kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if kind != b"application/json":
        raise ApiError(415, "send the body as application/json")
    assert request.content is not None
    raw = request.content.read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, f"body larger than {limit} bytes")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


def int_arg(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """Query parameter ``name`` as an integer in [low, high]; 400 otherwise."""
    values = (request.args or {}).get(name.encode())
    if not values:
        return default
    text = values[0].decode("utf-8", "replace")
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name}={text!r}: not an integer") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name}={value}: must be between {low} and {high}")
    return value


def str_arg(request: Request, name: str) -> str | None:
    values = (request.args or {}).get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


#: The page's own origin only: no inline script, no framing (the acknowledge button must not be
#: clickable through another site's frame), nothing fetched from elsewhere.
PAGE_HEADERS = {
    b"content-security-policy": b"default-src 'self'; img-src 'self' data:; "
    b"style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; "
    b"form-action 'self'",
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
}


class StaticFiles(File):
    """maps/static without directory listings, with :data:`PAGE_HEADERS`."""

    def render(self, request: Request) -> bytes | int:  # type: ignore[override]
        for name, value in PAGE_HEADERS.items():
            request.setHeader(name, value)
        return super().render(request)

    def directoryListing(self) -> IResource:
        return notFound("Not Found", "No directory listings here.")


def dashboard_root(api: Resource, static_dir: Path = STATIC_DIR) -> Resource:
    """``/`` (index.html and the app's files) with ``/api`` under it."""
    root = StaticFiles(str(static_dir))
    root.putChild(b"api", api)
    return root


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run CPU-heavy work (argon2) off the reactor's thread."""
    return await asyncio.to_thread(fn, *args)
