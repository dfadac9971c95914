"""The dashboard's REST API (described in docs/openapi.yaml): session, vehicles, alerts.

Authentication is a session cookie (``fw_session``: random, HttpOnly, SameSite=Strict, its
SHA-256 in the ``sessions`` table). Every state-changing request (POST) carries the CSRF token
twice, as the ``fw_csrf`` cookie and the ``X-CSRF-Token`` header, and once logged in the token
must also be the session's own: a page of another site can neither read the cookie nor set
the header. Scoping is not done here: every read and change goes through store.dashboard,
whose SQL takes the user's scope.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Protocol

from twisted.web.server import Request

from alerts.lifecycle import LifecycleError
from maps.limits import LoginLimiter
from maps.web import ApiError, Handler, JsonResource, in_thread, int_arg, json_body, str_arg
from store import dashboard, users
from store.alerts import AlertError, AlertNotFound, AlertStore

SESSION_COOKIE = b"fw_session"
CSRF_COOKIE = b"fw_csrf"
CSRF_HEADER = b"x-csrf-token"
SESSION_LIFETIME = timedelta(hours=12)  # a control-room shift and then some
MAX_PAGE = 2000

Routes = dict[tuple[str, tuple[str, ...]], Handler]


class Feature(Protocol):
    """A group of endpoints in a module of its own; it authenticates through :meth:`Api.user`."""

    def routes(self) -> Routes: ...


#: Acknowledge alert ``id`` as ``by`` (serve passes the supervision service's, which also
#: confirms a terminal alarm to its terminal with 0x8203).
Acknowledge = Callable[[int, str], Awaitable[Any]]


class Api:
    """The endpoints over an asyncpg pool."""

    def __init__(
        self, pool: Any, acknowledge: Acknowledge | None = None,
        limiter: LoginLimiter | None = None, clock: Callable[[], float] = time.monotonic,
        secure_cookies: bool = False,
    ) -> None:  # fmt: skip
        self.pool = pool
        self.alerts = AlertStore(pool)
        self.acknowledge = acknowledge or self.alerts.acknowledge
        self.limiter = limiter or LoginLimiter()
        self.clock = clock
        self.secure = secure_cookies

    def resource(self, *features: Feature) -> JsonResource:
        """The ``/api`` resource: these endpoints and each feature's (tracks, geofences, ...)."""
        routes: Routes = {
            ("GET", ("session",)): self.get_session,
            ("POST", ("login",)): self.login,
            ("POST", ("logout",)): self.logout,
            ("GET", ("vehicles",)): self.vehicles,
            ("GET", ("alerts",)): self.list_alerts,
            ("POST", ("alerts", "{}", "ack")): self.ack,
        }
        for feature in features:
            routes.update(feature.routes())
        return JsonResource(routes)

    # ------------------------------------------------------------------ plumbing

    def _cookie(self, request: Request, name: bytes, value: str, http_only: bool, age: int) -> None:
        request.addCookie(
            name, value.encode(), path=b"/", max_age=str(age).encode(), httpOnly=http_only,
            secure=self.secure, sameSite="strict",
        )  # fmt: skip

    async def _session(self, request: Request) -> users.Session | None:
        token = request.getCookie(SESSION_COOKIE)
        if not token:
            return None
        async with self.pool.acquire() as conn:
            return await users.session(conn, token.decode("ascii", "replace"))

    async def user(self, request: Request, change: bool = False) -> users.Session:
        """The logged-in session (401 if none); for a change, the CSRF token checked (403)."""
        found = await self._session(request)
        if found is None:
            raise ApiError(401, "not logged in (or the session expired)")
        if change:
            self._check_csrf(request, found.csrf)
        return found

    @staticmethod
    def _check_csrf(request: Request, expected: str | None = None) -> None:
        header = request.getHeader(CSRF_HEADER) or b""
        cookie = request.getCookie(CSRF_COOKIE) or b""
        if not header or not cookie:
            raise ApiError(
                403, "CSRF token missing: send the fw_csrf cookie's value as X-CSRF-Token"
            )
        if not hmac.compare_digest(header, cookie) or (
            expected is not None and not hmac.compare_digest(header, expected.encode())
        ):
            raise ApiError(403, "CSRF token does not match")

    # ------------------------------------------------------------------ session

    async def get_session(self, request: Request, _: list[str]) -> tuple[int, Any]:
        """Who is logged in (or null), and a CSRF token for the login form."""
        found = await self._session(request)
        if found is not None:
            csrf = found.csrf
        else:
            existing = request.getCookie(CSRF_COOKIE)
            csrf = existing.decode("ascii", "replace") if existing else secrets.token_urlsafe(32)
        self._cookie(request, CSRF_COOKIE, csrf, False, int(SESSION_LIFETIME.total_seconds()))
        return 200, {"user": found.user.to_json() if found else None, "csrf": csrf}

    async def login(self, request: Request, _: list[str]) -> tuple[int, Any]:
        self._check_csrf(request)
        body = json_body(request)
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not username or len(username) > 64:
            raise ApiError(400, "username: a non-empty string of at most 64 characters")
        if not isinstance(password, str) or not password or len(password) > 1024:
            raise ApiError(400, "password: a non-empty string of at most 1024 characters")
        address = request.getClientAddress().host or "?"  # type: ignore[attr-defined]
        wait = self.limiter.retry_after(username, address, self.clock())
        if wait > 0:
            raise ApiError(429, f"too many failed logins; try again in {int(wait) + 1} s",
                           {"Retry-After": str(int(wait) + 1)})  # fmt: skip
        async with self.pool.acquire() as conn:
            found = await users.password_of(conn, username)
        ok = await in_thread(users.verify_password, found[1] if found else None, password)
        if not ok or found is None:
            self.limiter.failed(username, address, self.clock())
            raise ApiError(401, "wrong user name or password (or the user is disabled)")
        self.limiter.succeeded(username, address)
        async with self.pool.acquire() as conn:
            token, csrf = await users.open_session(conn, found[0], SESSION_LIFETIME, address)
            session = await users.session(conn, token)
        assert session is not None
        age = int(SESSION_LIFETIME.total_seconds())
        self._cookie(request, SESSION_COOKIE, token, True, age)
        self._cookie(request, CSRF_COOKIE, csrf, False, age)
        return 200, {"user": session.user.to_json(), "csrf": csrf}

    async def logout(self, request: Request, _: list[str]) -> tuple[int, Any]:
        await self.user(request, change=True)
        token = request.getCookie(SESSION_COOKIE)
        assert token is not None  # user() found its session
        async with self.pool.acquire() as conn:
            await users.close_session(conn, token.decode("ascii", "replace"))
        self._cookie(request, SESSION_COOKIE, "", True, 0)
        return 200, {"user": None}

    # ------------------------------------------------------------------ reads

    async def vehicles(self, request: Request, _: list[str]) -> tuple[int, Any]:
        """Vehicles in scope as an RFC 7946 FeatureCollection (Point of the last fix, or a
        null geometry before the first); ``next_after`` is the ``after`` of the next page."""
        session = await self.user(request)
        limit = int_arg(request, "limit", 500, 1, MAX_PAGE)
        after = int_arg(request, "after", 0, 0, 2**31 - 1)
        assert limit is not None and after is not None
        async with self.pool.acquire() as conn:
            rows = await dashboard.vehicles(conn, session.user.scope, after, limit)
        features = [vehicle_feature(row) for row in rows]
        return 200, {
            "type": "FeatureCollection",
            "features": features,
            "next_after": rows[-1]["id"] if len(rows) == limit else None,
        }

    async def list_alerts(self, request: Request, _: list[str]) -> tuple[int, Any]:
        session = await self.user(request)
        limit = int_arg(request, "limit", 100, 1, MAX_PAGE)
        before = int_arg(request, "before", None, 1, 2**63 - 1)
        status = str_arg(request, "status")
        assert limit is not None
        try:
            async with self.pool.acquire() as conn:
                found = await dashboard.alerts(conn, session.user.scope, status, before, limit)
        except AlertError as exc:
            raise ApiError(400, str(exc)) from None
        return 200, {
            "alerts": [a.to_json() for a in found],
            "next_before": found[-1].id if len(found) == limit else None,
        }

    # ------------------------------------------------------------------ changes

    async def ack(self, request: Request, args: list[str]) -> tuple[int, Any]:
        session = await self.user(request, change=True)
        try:
            alert_id = int(args[0])
        except ValueError:
            raise ApiError(400, f"alert id {args[0]!r}: not an integer") from None
        async with self.pool.acquire() as conn:
            visible = await dashboard.alert_in_scope(conn, session.user.scope, alert_id)
        if not visible:  # another company's alert is as absent as a missing one
            raise ApiError(404, f"no alert {alert_id}")
        try:
            result = await self.acknowledge(alert_id, session.user.username)
        except AlertNotFound:
            raise ApiError(404, f"no alert {alert_id}") from None
        except (
            AlertError,
            LifecycleError,
        ) as exc:  # e.g. already acknowledged: the lifecycle says why
            raise ApiError(409, str(exc)) from None
        alert = result[0] if isinstance(result, tuple) else result
        return 200, {"alert": alert.to_json()}


def vehicle_feature(row: dict[str, Any]) -> dict[str, Any]:
    """A vehicle as an RFC 7946 Feature (REST and the live feed alike)."""
    geometry = (
        {"type": "Point", "coordinates": [row["lon"], row["lat"]]}
        if row["lon"] is not None
        else None
    )
    fix = row["fix_time"]
    return {
        "type": "Feature",
        "id": row["id"],
        "geometry": geometry,
        "properties": {
            "plate": row["plate"],
            "plate_color": row["plate_color"],
            "class": row["class"],
            "company_id": row["company_id"],
            "company": row["company"],
            "online": row["online"],
            "fix_time": fix.isoformat() if fix is not None else None,
            "speed_kmh": row["speed_kmh"],
            "heading": row["heading"],
            "valid": row["valid"],
        },
    }
