"""Vehicle provisioning: add one vehicle, import a CSV file, list them (asyncpg).

Input is normalised the way terminals report it, so provisioned vehicles match registrations:
the phone loses its leading zeros (a 2013 terminal sends ``013912345678``, a 2019 one
``00000000013912345678``, both mean ``13912345678``), plates take their canonical form
(``geo.plates``), VINs are checked.
A CSV import is all or nothing: every row is checked first (fields, duplicates inside the file
and against the database) and every problem is reported with its line number, so an operator
fixes the whole file in one pass instead of one error per attempt.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from geo.classes import VEHICLE_CLASSES
from geo.plates import normalise_plate

if TYPE_CHECKING:  # imported where used: the CLI imports this module to build its --help
    import asyncpg
    import asyncpg.pool

#: JT/T 697.7 plate colours (JT/T 808 register message): 0 means "not plated yet".
PLATE_COLORS = {0: "none", 1: "blue", 2: "yellow", 3: "black", 4: "white", 5: "green", 9: "other"}
#: The vehicles this platform supervises (coaches, trucks, hazmat, school buses) carry yellow
#: plates, so that is the default when a colour is not given.
DEFAULT_PLATE_COLOR = 2
CSV_COLUMNS = ("plate", "plate_color", "class", "company", "phone", "vin")
REQUIRED_CSV_COLUMNS = ("plate", "class", "company", "phone")
_VIN = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")  # ISO 3779: no I, O, Q
_PHONE_DIGITS = 20  # BCD[10] in the 2019 header


class VehicleError(ValueError):
    """A vehicle cannot be provisioned as given (the message says what to fix)."""


class CsvImportError(VehicleError):
    """A CSV import was rejected; ``errors`` lists ``(line, message)``; nothing was written."""

    def __init__(self, errors: list[tuple[int, str]]) -> None:
        self.errors = errors
        lines = "\n".join(f"  line {line}: {message}" for line, message in errors)
        super().__init__(f"{len(errors)} error(s), nothing imported:\n{lines}")


@dataclass(frozen=True, slots=True)
class NewVehicle:
    """A validated, normalised vehicle ready to insert."""

    plate: str
    plate_color: int
    vehicle_class: str
    company: str
    phone: str
    vin: str | None = None


def normalise_phone(phone: str) -> str:
    """The terminal phone as the platform keys it: digits only, leading zeros stripped."""
    digits = re.sub(r"[\s-]", "", phone)
    if not digits.isdigit() or not digits.isascii():
        raise VehicleError(f"phone {phone!r}: digits only")
    if len(digits) > _PHONE_DIGITS:
        raise VehicleError(f"phone {phone!r}: more than {_PHONE_DIGITS} digits")
    stripped = digits.lstrip("0")
    if not stripped:
        raise VehicleError(f"phone {phone!r}: no digits besides zeros")
    return stripped


def normalise_class(value: str) -> str:
    cls = value.strip().lower().replace("-", "_").replace(" ", "_")
    if cls not in VEHICLE_CLASSES:
        raise VehicleError(f"class {value!r}: one of {', '.join(VEHICLE_CLASSES)}")
    return cls


def parse_plate_color(value: str | int | None) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_PLATE_COLOR
    try:
        color = int(value)
    except ValueError:
        raise VehicleError(f"plate colour {value!r}: a number (JT/T 697.7 code)") from None
    if color not in PLATE_COLORS:
        codes = ", ".join(f"{k} {v}" for k, v in PLATE_COLORS.items())
        raise VehicleError(f"plate colour {value!r}: one of {codes}")
    return color


def new_vehicle(
    plate: str,
    vehicle_class: str,
    company: str,
    phone: str,
    plate_color: str | int | None = None,
    vin: str | None = None,
) -> NewVehicle:
    """Validate and normalise one vehicle (raises :class:`VehicleError` naming the field)."""
    plate_n = normalise_plate(plate)
    if not plate_n:
        raise VehicleError("plate: required")
    if len(plate_n) > 16:
        raise VehicleError(f"plate {plate!r}: longer than 16 characters")
    company_n = " ".join(company.split())
    if not company_n:
        raise VehicleError("company: required")
    vin_n = vin.strip().upper() if vin else ""
    if vin_n and not _VIN.match(vin_n):
        raise VehicleError(f"VIN {vin!r}: 17 characters, letters (no I, O, Q) and digits")
    color = parse_plate_color(plate_color)
    if color == 0:
        raise VehicleError("plate colour 0 means 'not plated', but a plate was given")
    return NewVehicle(
        plate=plate_n,
        plate_color=color,
        vehicle_class=normalise_class(vehicle_class),
        company=company_n,
        phone=normalise_phone(phone),
        vin=vin_n or None,
    )


# ---------------------------------------------------------------------- database


async def company_id(conn: asyncpg.Connection, name: str) -> int:
    """The id of company ``name``, creating it if missing (safe against a concurrent insert)."""
    return await conn.fetchval(
        """
        INSERT INTO companies (name) VALUES ($1)
        ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
        RETURNING id
        """,
        name,
    )


async def _conflicts(conn: asyncpg.Connection, vehicle: NewVehicle) -> list[str]:
    """Why ``vehicle`` clashes with a provisioned one (phone and plate are unique)."""
    rows = await conn.fetch(
        """
        SELECT id, plate, plate_color, phone FROM vehicles
        WHERE phone = $1 OR (plate = $2 AND plate_color = $3)
        """,
        vehicle.phone,
        vehicle.plate,
        vehicle.plate_color,
    )
    problems = []
    for row in rows:
        if row["phone"] == vehicle.phone:
            problems.append(
                f"phone {vehicle.phone} is already vehicle {row['id']} ({row['plate']})"
            )
        if row["plate"] == vehicle.plate and row["plate_color"] == vehicle.plate_color:
            problems.append(
                f"plate {vehicle.plate} (colour {vehicle.plate_color}) is already vehicle "
                f"{row['id']}"
            )
    return problems


async def _insert(conn: asyncpg.Connection, vehicle: NewVehicle) -> int:
    company = await company_id(conn, vehicle.company)
    return await conn.fetchval(
        """
        INSERT INTO vehicles (plate, plate_color, class, company_id, phone, vin, provisioned)
        VALUES ($1, $2, $3::vehicle_class, $4, $5, $6, true)
        RETURNING id
        """,
        vehicle.plate,
        vehicle.plate_color,
        vehicle.vehicle_class,
        company,
        vehicle.phone,
        vehicle.vin,
    )


async def add_vehicle(conn: asyncpg.Connection, vehicle: NewVehicle) -> dict[str, Any]:
    """Insert one vehicle (and its company if new); returns it as :func:`list_vehicles` does."""
    import asyncpg

    async with conn.transaction():
        problems = await _conflicts(conn, vehicle)
        if problems:
            raise VehicleError("; ".join(problems))
        try:
            vehicle_id = await _insert(conn, vehicle)
        except asyncpg.UniqueViolationError as exc:  # a concurrent add won the race
            raise VehicleError(f"already provisioned: {exc.detail or exc}") from None
    (row,) = await list_vehicles(conn, vehicle_id=vehicle_id)
    return row


def read_csv(
    source: TextIO | Iterable[str],
) -> tuple[list[tuple[int, NewVehicle]], list[tuple[int, str]]]:
    """Parse and validate a vehicles CSV: ``([(line, vehicle)], [(line, error)])``.

    The header row is required and names the columns (any order; ``plate_color`` and ``vin``
    may be left out). Line numbers are those of the file (a record's first line), blank lines
    are skipped, and duplicate phones or plates inside the file are errors too.
    """
    errors: list[tuple[int, str]] = []
    vehicles: list[tuple[int, NewVehicle]] = []
    header: list[str] | None = None
    seen_phone: dict[str, int] = {}
    seen_plate: dict[tuple[str, int], int] = {}
    for line, row in _records(source):
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip().lstrip("\ufeff").lower() for cell in row]
            unknown = [c for c in header if c not in CSV_COLUMNS]
            missing = [c for c in REQUIRED_CSV_COLUMNS if c not in header]
            if unknown or missing or len(set(header)) != len(header):
                problems = []
                if missing:
                    problems.append(f"missing column(s) {', '.join(missing)}")
                if unknown:
                    problems.append(f"unknown column(s) {', '.join(unknown)}")
                if len(set(header)) != len(header):
                    problems.append("a column appears twice")
                errors.append(
                    (line, f"header: {'; '.join(problems)} (expected: {', '.join(CSV_COLUMNS)})")
                )
                return [], errors
            continue
        if len(row) != len(header):
            errors.append((line, f"{len(row)} fields, the header has {len(header)}"))
            continue
        fields = dict(zip(header, row, strict=True))
        try:
            vehicle = new_vehicle(
                plate=fields["plate"],
                vehicle_class=fields["class"],
                company=fields["company"],
                phone=fields["phone"],
                plate_color=fields.get("plate_color"),
                vin=fields.get("vin"),
            )
        except VehicleError as exc:
            errors.append((line, str(exc)))
            continue
        if vehicle.phone in seen_phone:
            errors.append((line, f"phone {vehicle.phone} also on line {seen_phone[vehicle.phone]}"))
            continue
        plate_key = (vehicle.plate, vehicle.plate_color)
        if plate_key in seen_plate:
            errors.append((line, f"plate {vehicle.plate} also on line {seen_plate[plate_key]}"))
            continue
        seen_phone[vehicle.phone] = seen_plate[plate_key] = line
        vehicles.append((line, vehicle))
    if header is None:
        errors.append((1, f"empty file: a header row is required ({', '.join(CSV_COLUMNS)})"))
    return vehicles, errors


def _records(source: TextIO | Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """CSV records with the file line each starts on (a quoted field may span lines)."""
    reader = csv.reader(source)
    start = 1
    for row in reader:
        yield start, row
        start = reader.line_num + 1  # line_num: physical lines read so far


async def import_csv(conn: asyncpg.Connection, source: TextIO | Iterable[str] | Path) -> int:
    """Import a vehicles CSV in one transaction; returns the number of vehicles added.

    Raises :class:`CsvImportError` with every problem found (file and database) and writes
    nothing in that case.
    """
    import asyncpg

    if isinstance(source, Path):
        try:
            text = source.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CsvImportError(
                [(_line_of(source, exc.start), "not UTF-8 text (save the sheet as CSV UTF-8)")]
            ) from None
        source = io.StringIO(text, newline="")
    vehicles, errors = read_csv(source)
    async with conn.transaction():
        # Rows that are fine on their own are checked against the database even when others
        # are not, so one run reports everything.
        for line, vehicle in vehicles:
            errors.extend((line, problem) for problem in await _conflicts(conn, vehicle))
        if errors:
            raise CsvImportError(sorted(errors, key=lambda error: error[0]))
        for line, vehicle in vehicles:
            try:
                async with conn.transaction():
                    await _insert(conn, vehicle)
            except asyncpg.UniqueViolationError as exc:  # a concurrent add won the race
                errors.append((line, f"already provisioned: {exc.detail or exc}"))
        if errors:
            raise CsvImportError(errors)
    return len(vehicles)


def _line_of(path: Path, offset: int) -> int:
    """The 1-based line of byte ``offset`` in ``path``."""
    return path.read_bytes()[:offset].count(b"\n") + 1


async def list_vehicles(
    conn: asyncpg.Connection, vehicle_id: int | None = None
) -> list[dict[str, Any]]:
    """All vehicles (or one) as JSON-ready dicts, by id, with whether a worker holds the
    terminal's connection (``online``) and the last position (``lon``/``lat`` null before
    the first fix)."""
    rows = await conn.fetch(
        """
        SELECT v.id, v.plate, v.plate_color, v.class::text AS class, c.name AS company,
               v.phone, v.vin, v.provisioned, v.protocol_version, v.created_at,
               v.manufacturer, v.terminal_id, v.bound_at,
               h.vehicle_id IS NOT NULL AS online, ST_X(p.geom) AS lon, ST_Y(p.geom) AS lat,
               p.fix_time, p.received_time, p.speed_kmh, p.valid
        FROM vehicles v LEFT JOIN companies c ON c.id = v.company_id
        LEFT JOIN terminal_holders h ON h.vehicle_id = v.id
        LEFT JOIN last_positions p ON p.vehicle_id = v.id
        WHERE $1::integer IS NULL OR v.id = $1
        ORDER BY v.id
        """,
        vehicle_id,
    )
    return [
        {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()} for row in rows
    ]


async def vehicle_facts(
    db: asyncpg.Pool | asyncpg.Connection, vehicle_id: int
) -> dict[str, Any] | None:
    """What the rules need to know about a vehicle (id, plate, class, company_id, overrides
    as JSON text), or None if there is no such vehicle."""
    row = await db.fetchrow(f"{_FACTS} WHERE id = $1", vehicle_id)
    return dict(row) if row is not None else None


async def vehicles_facts(
    db: asyncpg.Pool | asyncpg.Connection, vehicle_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """:func:`vehicle_facts` of many vehicles in one query (those that exist)."""
    rows = await db.fetch(f"{_FACTS} WHERE id = ANY ($1::integer[])", list(vehicle_ids))
    return [dict(r) for r in rows]


_FACTS = (
    "SELECT id, plate, class::text AS class, company_id, overrides::text AS overrides FROM vehicles"
)


# ---------------------------------------------------------------------- terminal binding

#: Outcomes of :func:`bind_terminal` (ingest/ turns them into 0x8100 result codes).
BOUND, VEHICLE_TAKEN, TERMINAL_TAKEN, NO_VEHICLE, NO_TERMINAL = (
    "bound", "vehicle_taken", "terminal_taken", "no_vehicle", "no_terminal",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class TerminalRegistration:
    """What a terminal said about itself when it registered (strings already checked)."""

    phone: str  # as keyed in vehicles.phone
    manufacturer: str
    model: str
    terminal_id: str
    plate: str | None
    plate_color: int
    province: int
    city: int
    protocol_version: int


_BINDING = "id, plate, phone, manufacturer, terminal_id, auth_code, bound_at"


async def bind_terminal(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    reg: TerminalRegistration,
    new_code: str,
    *,
    create: bool,
) -> tuple[str, str]:
    """Bind the registering terminal to its vehicle: ``(outcome, auth code)``.

    * The plate belongs to a vehicle with another phone: ``VEHICLE_TAKEN``.
    * The phone's vehicle is bound to another terminal (manufacturer or terminal id differ):
      ``TERMINAL_TAKEN``; nothing about the vehicle changes.
    * The phone's vehicle is bound to this very terminal: ``BOUND`` with the code it already
      has (a terminal that lost its code gets it again; the code is never replaced, so a
      terminal online with it keeps working).
    * Not bound yet (provisioned, or unbound by an operator): bound now, with ``new_code``.
    * Unknown phone: the plate's vehicle if it has no phone yet, else a new unprovisioned
      vehicle if ``create`` (policy ``open``), else ``NO_TERMINAL``.
    """
    import asyncpg

    async with conn.transaction():
        vehicle = await conn.fetchrow(
            f"SELECT {_BINDING} FROM vehicles WHERE phone = $1 FOR UPDATE", reg.phone
        )
        owner = None
        if reg.plate is not None:
            owner = await conn.fetchrow(
                f"SELECT {_BINDING} FROM vehicles WHERE plate = $1 AND plate_color = $2"
                " FOR UPDATE",
                reg.plate, reg.plate_color,
            )  # fmt: skip
            if owner is not None and (
                owner["phone"] not in (None, reg.phone)
                or (owner["phone"] is None and owner["bound_at"] is not None)
            ):
                return VEHICLE_TAKEN, ""
        if vehicle is not None:
            if not create and reg.plate and vehicle["plate"] not in (None, reg.plate):
                return NO_VEHICLE, ""
            if vehicle["bound_at"] is not None:
                same = (vehicle["manufacturer"], vehicle["terminal_id"]) == (
                    reg.manufacturer, reg.terminal_id,
                )  # fmt: skip
                if not same:
                    return TERMINAL_TAKEN, ""
                if vehicle["auth_code"]:
                    return BOUND, vehicle["auth_code"]
            vehicle_id = vehicle["id"]
        elif owner is not None:
            vehicle_id = owner["id"]  # provisioned by plate, no terminal yet
        elif not create:
            return NO_TERMINAL, ""
        else:
            try:
                async with conn.transaction():
                    vehicle_id = await conn.fetchval(
                        "INSERT INTO vehicles (plate, plate_color, phone, provisioned)"
                        " VALUES ($1, $2, $3, false) RETURNING id",
                        reg.plate, reg.plate_color, reg.phone,
                    )  # fmt: skip
            except asyncpg.UniqueViolationError:  # a concurrent registration won the race
                return TERMINAL_TAKEN, ""
        await conn.execute(
            """UPDATE vehicles SET phone = $2, auth_code = $3, protocol_version = $4,
                   manufacturer = $5, terminal_model = $6, terminal_id = $7, province = $8,
                   city = $9, plate = coalesce(plate, $10), bound_at = now(), updated_at = now()
               WHERE id = $1""",
            vehicle_id, reg.phone, new_code, reg.protocol_version, reg.manufacturer, reg.model,
            reg.terminal_id, reg.province, reg.city, reg.plate,
        )  # fmt: skip
    return BOUND, new_code


async def unbind_terminal(
    conn: asyncpg.Connection, plate: str, plate_color: int, new_phone: str | None = None
) -> dict[str, Any] | None:
    """Forget the terminal bound to a vehicle (its auth code stops working; the next terminal
    to register with the vehicle's phone, or ``new_phone``, is bound). None: no such vehicle."""
    import asyncpg

    try:
        vehicle_id = await conn.fetchval(
            """UPDATE vehicles SET auth_code = NULL, bound_at = NULL, manufacturer = NULL,
                   terminal_model = NULL, terminal_id = NULL,
                   phone = coalesce($3, phone), updated_at = now()
               WHERE plate = $1 AND plate_color = $2 RETURNING id""",
            plate, plate_color, new_phone,
        )  # fmt: skip
    except asyncpg.UniqueViolationError:
        raise VehicleError(f"phone {new_phone} is already another vehicle's") from None
    if vehicle_id is None:
        return None
    (row,) = await list_vehicles(conn, vehicle_id=vehicle_id)
    return row
