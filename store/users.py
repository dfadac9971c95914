"""The dashboard's users, their roles and sessions (migration 0011), and the scope each role sees.

Passwords are hashed with argon2id (argon2-cffi's defaults: 64 MiB, 3 passes), a memory-hard KDF,
so a stolen ``users`` table costs an attacker real memory per guess. Hashing takes tens of
milliseconds: callers inside the reactor run :func:`hash_password` and :func:`verify_password` in
a thread. A session cookie's token is random (256 bits) and only its SHA-256 is stored.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
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
    """What a user may see, as the parameters of :data:`SCOPE_SQL`.

    ``company_id`` None means every company; ``unassigned`` adds the vehicles of no company (the
    pool terminals registered into under the "open" policy), which only admins see.
    """

    company_id: int | None
    unassigned: bool

    @property
    def params(self) -> tuple[int | None, bool]:
        return (self.company_id, self.unassigned)

    def allows(self, company_id: int | None, lon: float | None, lat: float | None) -> bool:
        """:func:`scope_sql` in memory, for what is filtered without a query (the live feed's
        deltas): whether a vehicle of ``company_id`` at (lon, lat) is in scope. The position
        does not matter yet (it will for a supervisor's assigned area)."""
        if self.company_id is not None:
            return company_id == self.company_id
        return company_id is not None or self.unassigned


def scope_sql(vehicle: str, first: int) -> str:
    """The condition "vehicle ``vehicle`` (an alias) is in the scope given as parameters
    ``$first`` (company) and ``$first+1`` (unassigned)": every scoped query ANDs this in."""
    c, u = f"${first}::integer", f"${first + 1}::boolean"
    return (
        f"({vehicle}.company_id = {c} OR ({c} IS NULL"
        f" AND ({vehicle}.company_id IS NOT NULL OR {u})))"
    )


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    role: str
    company_id: int | None
    company: str | None
    disabled: bool

    @property
    def scope(self) -> Scope:
        if self.role == "dispatcher":
            return Scope(self.company_id, False)
        return Scope(None, self.role == "admin")  # supervisor: every company (areas: later)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "role": self.role,
            "company_id": self.company_id,
            "company": self.company,
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
SELECT u.id, u.username, u.role, u.company_id, c.name AS company, u.disabled
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
               c.name AS company, u.disabled
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
