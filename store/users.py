"""The dashboard's users, their roles and sessions (migration 0011), and the scope each role sees.

Passwords are hashed with argon2id (argon2-cffi's defaults: 64 MiB, 3 passes), a memory-hard KDF,
so a stolen ``users`` table costs an attacker real memory per guess. Hashing takes tens of
milliseconds: callers inside the reactor run :func:`hash_password` and :func:`verify_password` in
a thread. A session cookie's token is random (256 bits) and only its SHA-256 is stored.
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import shapely
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("admin", "supervisor", "dispatcher")
MIN_PASSWORD = 8
_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified when the user does not exist, so a login takes as long either way."""
    return _hasher.hash(secrets.token_hex(16))


class UserError(ValueError):
    """A user cannot be created or changed as asked (the message says why)."""


@dataclass(frozen=True, slots=True)
class Scope:
    """What a user may see, as the two parameters of :func:`scope_sql`.

    ``company_id`` None means every company; ``unassigned`` adds the vehicles of no company (the
    pool terminals registered into under the "open" policy), which only admins see. ``area``
    (GeoJSON geometry text, WGS-84) limits the scope to vehicles whose last position is inside
    it (a supervisor of a district or a road section); a vehicle with no position is outside.
    """

    company_id: int | None
    unassigned: bool
    area: str | None = None

    @property
    def params(self) -> tuple[int | None, str | None]:
        """Always two values (callers number their own parameters after them): the company,
        and the rest as one JSON text (NULL when there is nothing more)."""
        if not self.unassigned and self.area is None:
            return (self.company_id, None)
        extra = f'{{"unassigned":{json.dumps(self.unassigned)}'
        extra += f',"area":{self.area}}}' if self.area is not None else "}"
        return (self.company_id, extra)

    def allows(self, company_id: int | None, lon: float | None, lat: float | None) -> bool:
        """In memory, what :func:`scope_sql` decides in SQL: is a vehicle of this company whose
        last position is (lon, lat) (None: none yet) in scope? For filtering pushed updates."""
        if self.company_id is not None:
            if company_id != self.company_id:
                return False
        elif company_id is None and not self.unassigned:
            return False
        if self.area is None:
            return True
        if lon is None or lat is None:
            return False
        return bool(shapely.intersects_xy(_prepared_area(self.area), lon, lat))


@functools.lru_cache(maxsize=64)
def _prepared_area(area: str) -> shapely.Geometry:
    """The area parsed and prepared once (a district has thousands of vertices)."""
    geometry = shapely.from_geojson(area)
    shapely.prepare(geometry)
    return geometry


def scope_sql(vehicle: str, first: int) -> str:
    """The condition "vehicle ``vehicle`` (an alias) is in the scope given as parameters
    ``$first`` (company) and ``$first+1`` (the rest, :attr:`Scope.params`)": every scoped query
    ANDs this in.

    The JSON is only ever read inside scalar sub-selects, which PostgreSQL evaluates once per
    statement whatever the plan (a district's polygon parsed per row took 13 s for 5,000
    vehicles in a generic plan); the last positions inside the area are found through their
    GiST index as one hashed sub-plan. Without an area the test folds away at plan time
    (``$first+1 IS NULL``), and it stays uncorrelated: a correlated EXISTS had put a
    worst-case estimate in every plan (cost ~167,000 against 645), which switched on JIT."""
    c, x = f"${first}::integer", f"${first + 1}::text"
    return (
        f"(({vehicle}.company_id = {c} OR ({c} IS NULL AND ({vehicle}.company_id IS NOT NULL"
        f" OR (SELECT coalesce(({x}::jsonb ->> 'unassigned')::boolean, false)))))"
        f" AND ({x} IS NULL OR (SELECT NOT ({x}::jsonb ? 'area')) OR {vehicle}.id IN ("
        f"SELECT scope_lp.vehicle_id FROM last_positions scope_lp WHERE ST_Covers("
        f"(SELECT ST_GeomFromGeoJSON({x}::jsonb ->> 'area')), scope_lp.geom))))"
    )


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    role: str
    company_id: int | None
    company: str | None
    disabled: bool
    area: str | None = None  # a supervisor's area, GeoJSON text (migration 0012)
    area_name: str | None = None

    @property
    def scope(self) -> Scope:
        if self.role == "dispatcher":
            return Scope(self.company_id, False)
        if self.role == "supervisor":  # every company, or those in the area
            return Scope(None, False, self.area)
        return Scope(None, True)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "role": self.role,
            "company_id": self.company_id,
            "company": self.company,
            "area_name": self.area_name if self.area else None,
            "has_area": self.area is not None,
        }


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    csrf: str
    expires_at: datetime


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password must have at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (None: no such user; checked all the same)."""
    try:
        return _hasher.verify(stored or _dummy_hash(), password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


_USER = """
SELECT u.id, u.username, u.role, u.company_id, c.name AS company, u.disabled,
       ST_AsGeoJSON(u.area) AS area, u.area_name
FROM users u LEFT JOIN companies c ON c.id = u.company_id
"""


async def add_user(
    conn: asyncpg.Connection, username: str, role: str, password_hash: str,
    company: str | None = None,
) -> User:  # fmt: skip
    """Create a user; a dispatcher needs an existing company."""
    if role not in ROLES:
        raise UserError(f"role {role!r}: one of {', '.join(ROLES)}")
    if role == "dispatcher" and not company:
        raise UserError("a dispatcher needs --company")
    company_id = None
    if company:
        company_id = await conn.fetchval("SELECT id FROM companies WHERE name = $1", company)
        if company_id is None:
            raise UserError(f"no company {company!r} (companies come with their vehicles)")
    if await conn.fetchval("SELECT 1 FROM users WHERE username = $1", username):
        raise UserError(f"user {username!r} exists already")
    try:
        user_id = await conn.fetchval(
            "INSERT INTO users (username, role, company_id, password_hash)"
            " VALUES ($1, $2, $3, $4) RETURNING id",
            username, role, company_id, password_hash,
        )  # fmt: skip
    except asyncpg.CheckViolationError:
        raise UserError(f"user name {username!r}: 1-64 letters, digits or _ . @ -") from None
    user = await get_user(conn, user_id)
    assert user is not None
    return user


async def get_user(conn: Any, user_id: int) -> User | None:
    row = await conn.fetchrow(f"{_USER} WHERE u.id = $1", user_id)
    return User(**dict(row.items())) if row else None


async def list_users(conn: asyncpg.Connection) -> list[User]:
    return [User(**dict(r.items())) for r in await conn.fetch(f"{_USER} ORDER BY u.username")]


async def set_password(conn: asyncpg.Connection, username: str, password_hash: str) -> None:
    """Change a password; the user's sessions end (whoever had it is logged out)."""
    async with conn.transaction():
        user_id = await conn.fetchval(
            "UPDATE users SET password_hash = $2, updated_at = now() WHERE username = $1"
            " RETURNING id",
            username, password_hash,
        )  # fmt: skip
        if user_id is None:
            raise UserError(f"no user {username!r}")
        await conn.execute("DELETE FROM sessions WHERE user_id = $1", user_id)


async def disable_user(conn: asyncpg.Connection, username: str) -> None:
    """Disable a user and end its sessions (kept, not deleted: alerts name who handled them)."""
    async with conn.transaction():
        user_id = await conn.fetchval(
            "UPDATE users SET disabled = true, updated_at = now() WHERE username = $1 RETURNING id",
            username,
        )
        if user_id is None:
            raise UserError(f"no user {username!r}")
        await conn.execute("DELETE FROM sessions WHERE user_id = $1", user_id)


async def set_area(
    conn: asyncpg.Connection, username: str, area: str | None, name: str | None = None
) -> User:
    """Give a supervisor an area (GeoJSON geometry text from :mod:`geo.areas`) or take it away
    (None): the user's sessions see the new scope at their next request."""
    row = await conn.fetchrow("SELECT id, role FROM users WHERE username = $1", username)
    if row is None:
        raise UserError(f"no user {username!r}")
    if area is not None and row["role"] != "supervisor":
        raise UserError(f"only a supervisor has an area ({username!r} is {row['role']})")
    await conn.execute(
        "UPDATE users SET area = ST_Multi(ST_GeomFromGeoJSON($2)), area_name = $3,"
        " updated_at = now() WHERE id = $1",
        row["id"], area, (name or "").strip() or None if area is not None else None,
    )  # fmt: skip
    user = await get_user(conn, row["id"])
    assert user is not None
    return user


async def password_of(conn: Any, username: str) -> tuple[int, str] | None:
    """(id, hash) of an enabled user, or None."""
    row = await conn.fetchrow(
        "SELECT id, password_hash FROM users WHERE username = $1 AND NOT disabled", username
    )
    return (row["id"], row["password_hash"]) if row else None


async def open_session(
    conn: Any, user_id: int, lifetime: timedelta, address: str | None
) -> tuple[str, str]:
    """A new session: its (cookie token, CSRF token). Expired sessions are swept meanwhile."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    await conn.execute("DELETE FROM sessions WHERE expires_at < now()")
    await conn.execute(
        "INSERT INTO sessions (token_sha256, user_id, csrf, address, expires_at)"
        " VALUES ($1, $2, $3, $4, now() + $5::interval)",
        token_digest(token), user_id, csrf, address, lifetime,
    )  # fmt: skip
    return token, csrf


async def session(conn: Any, token: str) -> Session | None:
    """The live session of this cookie token (not expired, user not disabled), or None."""
    row = await conn.fetchrow(
        """
        SELECT s.csrf, s.expires_at, u.id, u.username, u.role, u.company_id,
               c.name AS company, u.disabled, ST_AsGeoJSON(u.area) AS area, u.area_name
        FROM sessions s JOIN users u ON u.id = s.user_id
        LEFT JOIN companies c ON c.id = u.company_id
        WHERE s.token_sha256 = $1 AND s.expires_at > now() AND NOT u.disabled
        """,
        token_digest(token),
    )
    if row is None:
        return None
    values = dict(row.items())
    csrf, expires_at = values.pop("csrf"), values.pop("expires_at")
    return Session(User(**values), csrf, expires_at)


async def close_session(conn: Any, token: str) -> None:
    await conn.execute("DELETE FROM sessions WHERE token_sha256 = $1", token_digest(token))
