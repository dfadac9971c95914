"""Who a terminal is: registration (0x0100), authentication (0x0102) and the vehicle it reports for.

Policies: ``open`` (the default) provisions unknown terminals from their registration into an
unassigned pool (``provisioned = false``, no company) that only admins see; ``known`` accepts
only vehicles provisioned beforehand (``fleetwatch vehicles add/import``), for production.
Authenticated terminals are cached by phone, so the location hot path never queries.

A vehicle is bound to the terminal that registered it (manufacturer and terminal id): another
terminal cannot take it over by registering with its phone or plate, and a registration never
replaces a code in use. ``fleetwatch vehicles unbind`` releases a vehicle for a new terminal.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import tzinfo
from zoneinfo import ZoneInfo

import asyncpg

from geo.plates import normalise_plate
from ingest.auth_cache import AuthCache
from protocols.jt808 import BEIJING, Register, TerminalProfile
from protocols.jt808.platform import (
    REGISTER_NO_TERMINAL,
    REGISTER_NO_VEHICLE,
    REGISTER_OK,
    REGISTER_TERMINAL_TAKEN,
    REGISTER_VEHICLE_TAKEN,
)
from store import vehicles as store_vehicles
from store.vehicles import TerminalRegistration, bind_terminal

POLICY_OPEN, POLICY_KNOWN = "open", "known"
#: What a database that is away or stalled raises (or times out with).
DB_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

log = logging.getLogger(__name__)

_RESULTS = {
    store_vehicles.BOUND: REGISTER_OK,
    store_vehicles.VEHICLE_TAKEN: REGISTER_VEHICLE_TAKEN,
    store_vehicles.TERMINAL_TAKEN: REGISTER_TERMINAL_TAKEN,
    store_vehicles.NO_VEHICLE: REGISTER_NO_VEHICLE,
    store_vehicles.NO_TERMINAL: REGISTER_NO_TERMINAL,
}


def registration_text(value: str, limit: int) -> str | None:
    """A registration string as stored, or None if it is not text. NUL padding (either side)
    and spaces are trimmed; a NUL inside, another control character, a byte that is not GBK
    (decoded as U+FFFD) or more than ``limit`` characters make it unusable."""
    value = value.strip("\x00 ")
    if len(value) > limit or "\ufffd" in value:
        return None
    if any(unicodedata.category(c) == "Cc" for c in value):
        return None
    return value


def phone_key(phone: str) -> str:
    """A terminal's phone as stored in ``vehicles.phone``: without its BCD left padding.

    Unlike ``store.vehicles.normalise_phone`` (for what people type), it validates nothing: it
    keys whatever a terminal sends, hex digits of a binary IMEI included."""
    return phone.lstrip("0") or "0"


@dataclass(frozen=True, slots=True)
class Vehicle:
    id: int
    phone: str
    plate: str | None
    auth_code: str | None
    forced_version: int | None = None
    clock_tz: str | None = None
    provisioned: bool = True

    @property
    def profile(self) -> TerminalProfile:
        """Decoding overrides for terminals that lie about their version or clock."""
        tz: tzinfo = ZoneInfo(self.clock_tz) if self.clock_tz else BEIJING
        return TerminalProfile(version=self.forced_version, tz=tz)


_COLUMNS = "id, phone, plate, auth_code, forced_version, clock_tz, provisioned"


class Directory:
    """Registration and authentication against the ``vehicles`` table."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        policy: str = POLICY_OPEN,
        *,
        db_timeout: float = 1.0,
        cache: AuthCache | None = None,
    ) -> None:
        if policy not in (POLICY_OPEN, POLICY_KNOWN):
            raise ValueError(f"unknown registration policy {policy!r} (open or known)")
        self.pool = pool
        self.policy = policy
        self.db_timeout = db_timeout
        #: While the database is away (dead, restarting, stalled), terminals that authenticated
        #: before still authenticate from here.
        self.cache = cache if cache is not None else AuthCache()

    async def find(self, phone: str) -> Vehicle | None:
        row = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM vehicles WHERE phone = $1", phone_key(phone)
        )
        return Vehicle(*row) if row else None

    async def register(self, phone: str, reg: Register, version: int) -> tuple[int, str]:
        """Answer a registration: (0x8100 result, auth code); see ``store.vehicles.bind_terminal``
        for who gets a code. Strings that are not text (NUL bytes inside, control characters,
        undecodable bytes) are refused with a result code, never stored."""
        plate = registration_text(reg.plate, 20)
        if plate is None:
            return REGISTER_NO_VEHICLE, ""
        texts = [registration_text(t, 30) for t in (reg.manufacturer, reg.model, reg.terminal_id)]
        manufacturer, model, terminal_id = texts
        if manufacturer is None or model is None or not terminal_id:
            return REGISTER_NO_TERMINAL, ""
        registration = TerminalRegistration(
            phone=phone_key(phone), manufacturer=manufacturer, model=model,
            terminal_id=terminal_id, plate=normalise_plate(plate) or None,
            plate_color=reg.plate_color, province=reg.province, city=reg.city,
            protocol_version=version,
        )  # fmt: skip
        async with self.pool.acquire() as conn:
            outcome, code = await bind_terminal(
                conn, registration, secrets.token_hex(8), create=self.policy == POLICY_OPEN
            )
        if code:  # the old code must not work from the cache either
            self.cache.new_code(registration.phone, code)
        return _RESULTS[outcome], code

    async def authenticate(self, phone: str, code: str) -> Vehicle | None:
        """The vehicle whose terminal holds this auth code, or None. When the database does not
        answer within ``db_timeout``, a terminal that authenticated before is checked against
        the code it used then (anything else re-raises: the terminal is not told "wrong code")."""
        lookup = asyncio.ensure_future(self.find(phone))
        try:
            # Not wait_for: a cancelled pool query waits for its cancel request to reach the
            # server before the connection is released, which a frozen server never answers.
            await asyncio.wait([lookup], timeout=self.db_timeout)
            if not lookup.done():
                lookup.cancel()  # finishes in the background, whenever the server lets it
                lookup.add_done_callback(lambda t: t.cancelled() or t.exception())
                raise TimeoutError(f"no answer within {self.db_timeout} s")
            vehicle = lookup.result()
        except DB_UNAVAILABLE as exc:
            vehicle = self.cache.get(phone_key(phone))
            if vehicle is None:
                raise
            log.warning("database unavailable (%s); %s authenticated from the cache",
                        type(exc).__name__, phone)  # fmt: skip
        else:
            cached = self.cache.peek(phone_key(phone))
            if cached is not None and (vehicle is None or vehicle.auth_code != cached.auth_code):
                self.cache.forget(phone_key(phone))  # the database says otherwise now
        if vehicle is None or not vehicle.auth_code:
            return None
        if not secrets.compare_digest(vehicle.auth_code.encode(), code.strip("\x00 ").encode()):
            return None
        self.cache.remember(vehicle)
        return vehicle

    async def refresh_cache(self) -> int:
        """Forget cached codes the database no longer has (an operator unbound the terminal
        with ``fleetwatch vehicles unbind``, from another process): run every minute or so,
        so that such a terminal cannot authenticate from the cache in a later outage.
        Returns how many were forgotten."""
        keys = self.cache.keys()
        if not keys:
            return 0
        rows = await self.pool.fetch(
            "SELECT phone, auth_code FROM vehicles WHERE phone = ANY($1::text[])", keys
        )
        codes = {r["phone"]: r["auth_code"] for r in rows}
        stale = [k for k in keys if (held := self.cache.peek(k)) and codes.get(k) != held.auth_code]
        for key in stale:
            self.cache.forget(key)
        return len(stale)
