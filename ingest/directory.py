"""Who a terminal is: registration (0x0100), authentication (0x0102) and the vehicle it reports for.

Policies: ``open`` (the default) provisions unknown terminals from their registration into an
unassigned pool (``provisioned = false``, no company) that only admins see; ``known`` accepts
only vehicles provisioned beforehand (``fleetwatch vehicles add/import``), for production.
Authenticated terminals are cached by phone, so the location hot path never queries.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import tzinfo
from zoneinfo import ZoneInfo

import asyncpg

from geo.plates import normalise_plate
from protocols.jt808 import BEIJING, Register, TerminalProfile
from protocols.jt808.platform import (
    REGISTER_NO_TERMINAL,
    REGISTER_NO_VEHICLE,
    REGISTER_OK,
    REGISTER_VEHICLE_TAKEN,
)

POLICY_OPEN, POLICY_KNOWN = "open", "known"


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

    def __init__(self, pool: asyncpg.Pool, policy: str = POLICY_OPEN) -> None:
        if policy not in (POLICY_OPEN, POLICY_KNOWN):
            raise ValueError(f"unknown registration policy {policy!r} (open or known)")
        self.pool = pool
        self.policy = policy

    async def find(self, phone: str) -> Vehicle | None:
        row = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM vehicles WHERE phone = $1", phone_key(phone)
        )
        return Vehicle(*row) if row else None

    async def register(self, phone: str, reg: Register, version: int) -> tuple[int, str]:
        """Answer a registration: (0x8100 result, auth code). A terminal that registers again
        (after a reset) gets a fresh code; its old one stops working."""
        phone = phone_key(phone)
        plate = normalise_plate(reg.plate) or None
        async with self.pool.acquire() as conn, conn.transaction():
            vehicle = await conn.fetchrow("SELECT id, plate FROM vehicles WHERE phone = $1", phone)
            owner = None
            if plate is not None:
                owner = await conn.fetchrow(
                    "SELECT id, phone FROM vehicles WHERE plate = $1 AND plate_color = $2",
                    plate, reg.plate_color,
                )  # fmt: skip
                if owner is not None and owner["phone"] not in (None, phone):
                    return REGISTER_VEHICLE_TAKEN, ""
            if vehicle is None:
                if self.policy == POLICY_KNOWN:
                    if owner is None:
                        return REGISTER_NO_TERMINAL, ""
                    vehicle_id = owner["id"]  # provisioned by plate, terminal not yet bound
                elif owner is not None:
                    vehicle_id = owner["id"]
                else:
                    vehicle_id = await conn.fetchval(
                        "INSERT INTO vehicles (plate, plate_color, phone, provisioned)"
                        " VALUES ($1, $2, $3, false) RETURNING id",
                        plate, reg.plate_color, phone,
                    )  # fmt: skip
            else:
                vehicle_id = vehicle["id"]
                if self.policy == POLICY_KNOWN and plate and vehicle["plate"] not in (None, plate):
                    return REGISTER_NO_VEHICLE, ""
            code = secrets.token_hex(8)
            await conn.execute(
                """UPDATE vehicles SET phone = $2, auth_code = $3, protocol_version = $4,
                       manufacturer = $5, terminal_model = $6, terminal_id = $7, province = $8,
                       city = $9, plate = coalesce(plate, $10), updated_at = now()
                   WHERE id = $1""",
                vehicle_id, phone, code, version, reg.manufacturer, reg.model, reg.terminal_id,
                reg.province, reg.city, plate,
            )  # fmt: skip
        return REGISTER_OK, code

    async def authenticate(self, phone: str, code: str) -> Vehicle | None:
        """The vehicle whose terminal holds this auth code, or None."""
        vehicle = await self.find(phone)
        if vehicle is None or not vehicle.auth_code:
            return None
        if not secrets.compare_digest(vehicle.auth_code.encode(), code.strip("\x00 ").encode()):
            return None
        return vehicle
