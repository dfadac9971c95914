"""Geofences in PostGIS (asyncpg): save (add or update by name, optionally replacing the
whole set), load as :class:`~geo.fences.Geofence`, list as GeoJSON, and a cheap fingerprint.

A fence is identified by its name across imports: re-importing an edited file updates the
fences in place, so their ids, which alert keys (``forbidden_zone:{id}``) refer to, stay the
same. Geometries cross the wire as GeoJSON text and properties as JSON text, so this works
whatever codecs the pool's connections have. Validation is :mod:`geo.geojson_io`'s, on the way
in and on the way out (rows are turned back into Features and parsed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from geo.fences import AppliesTo, Geofence
from geo.geojson_io import fence_from_feature, fence_geometry, fence_properties
from store.users import Scope, scope_sql

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

#: Properties that live in their own columns (and are put back from them).
_COLUMNS = ("name", "kind", "shape")

_SELECT = """
SELECT id, name, kind, shape, ST_AsGeoJSON(geom) AS geometry, properties::text AS properties,
       company_id
FROM geofences
"""
#: The channel every change to the table is announced on (migration 0013).
CHANNEL = "fleetwatch_geofences"


@dataclass(slots=True)
class SaveResult:
    """What :func:`save` did; ``ids`` maps each saved fence's name to its database id."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    ids: dict[str, int] = field(default_factory=dict)


@asynccontextmanager
async def _connection(db: asyncpg.Pool | asyncpg.Connection) -> AsyncIterator[Any]:
    if hasattr(db, "acquire"):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


def _row_values(fence: Geofence) -> tuple[str, str, str, str, str]:
    props = {k: v for k, v in fence_properties(fence).items() if k not in _COLUMNS}
    return (
        fence.name,
        fence.kind,
        fence.shape,
        json.dumps(fence_geometry(fence)),
        json.dumps(props, ensure_ascii=False, sort_keys=True),
    )


async def save(
    db: asyncpg.Pool | asyncpg.Connection, fences: Iterable[Geofence], replace: bool = False
) -> SaveResult:
    """Add the fences, updating those whose name exists (ids of the given fences are ignored;
    the database assigns them). With ``replace``, fences not among them are deleted. One
    transaction; concurrent saves queue on a table lock."""
    fences = list(fences)
    names = [f.name for f in fences]
    if len(set(names)) != len(names):
        raise ValueError("two geofences with one name")
    result = SaveResult()
    async with _connection(db) as conn, conn.transaction():
        await conn.execute("LOCK TABLE geofences IN SHARE ROW EXCLUSIVE MODE")
        existing = {r["name"]: r["id"] for r in await conn.fetch("SELECT id, name FROM geofences")}
        for fence in fences:
            name = fence.name
            if name in existing:
                fid = existing[name]
                if await _update(conn, fid, fence):
                    result.updated += 1
                else:
                    result.unchanged += 1
            else:
                fid = await _insert(conn, fence)
                result.added += 1
            result.ids[name] = fid
        if replace:
            deleted = await conn.fetch(
                "DELETE FROM geofences WHERE NOT (name = ANY($1::text[])) RETURNING id", names
            )
            result.deleted = len(deleted)
    return result


async def _insert(conn: Any, fence: Geofence, owner: int | None = None) -> int:
    """Insert one fence (owned by company ``owner``, None: a platform fence); its id."""
    fid: int = await conn.fetchval(
        """
        INSERT INTO geofences (name, kind, shape, geom, properties, company_id)
        VALUES ($1, $2, $3, ST_SetSRID(ST_GeomFromGeoJSON($4), 4326), $5::text::jsonb, $6)
        RETURNING id
        """,
        *_row_values(fence), owner,
    )  # fmt: skip
    return fid


async def _update(
    conn: Any,
    fid: int,
    fence: Geofence,
    owner: int | None = None,
    set_owner: bool = False,
    editor: int | None = None,
) -> bool:
    """Update fence ``fid`` in place (its id stays: alert keys refer to it) if anything differs
    and company ``editor`` may edit it (None: anyone); whether it did. The owner changes only
    with ``set_owner`` (the CLI's imports keep it)."""
    changed = await conn.fetchval(
        f"""
        UPDATE geofences g SET name = $2, kind = $3, shape = $4,
            geom = ST_SetSRID(ST_GeomFromGeoJSON($5), 4326),
            properties = $6::text::jsonb, updated_at = now(),
            company_id = CASE WHEN $7::boolean THEN $8::integer ELSE g.company_id END
        WHERE g.id = $1 AND {editable_sql("g", 9)} AND (
            g.name <> $2 OR g.kind <> $3 OR g.shape <> $4
            OR ST_AsEWKB(g.geom) <> ST_AsEWKB(ST_SetSRID(ST_GeomFromGeoJSON($5), 4326))
            OR g.properties <> $6::text::jsonb
            OR ($7::boolean AND g.company_id IS DISTINCT FROM $8::integer))
        RETURNING id
        """,
        fid, *_row_values(fence), set_owner, owner, editor,
    )  # fmt: skip
    return changed is not None


async def replace_all(
    db: asyncpg.Pool | asyncpg.Connection, fences: Iterable[Geofence]
) -> SaveResult:
    """:func:`save` with ``replace``: afterwards the table holds exactly these fences."""
    return await save(db, fences, replace=True)


async def load(db: asyncpg.Pool | asyncpg.Connection) -> list[Geofence]:
    """Every stored fence, by id. A row that no longer parses (edited by hand) is logged and
    skipped rather than stopping the others from being enforced."""
    async with _connection(db) as conn:
        rows = await conn.fetch(_SELECT + " ORDER BY id")
    fences = []
    for row in rows:
        try:
            fences.append(_fence(row))
        except ValueError as exc:
            log.error("geofence %s (%r) skipped: %s", row["id"], row["name"], exc)
    return fences


async def get(db: asyncpg.Pool | asyncpg.Connection, fence_id: int) -> Geofence | None:
    async with _connection(db) as conn:
        row = await conn.fetchrow(_SELECT + " WHERE id = $1", fence_id)
    return _fence(row) if row else None


def _fence(row: Any) -> Geofence:
    """A row as the rules see it: a company's fence concerns only that company's vehicles,
    whatever its ``applies_to`` says (an owner cannot reach into another company's fleet)."""
    fence = fence_from_feature(_feature(row), row["id"])
    owner = row["company_id"]
    if owner is not None:
        wanted = fence.applies_to
        fence.applies_to = AppliesTo(wanted.classes, wanted.vehicle_ids, frozenset({owner}))
    return fence


async def delete(db: asyncpg.Pool | asyncpg.Connection, names: Iterable[str]) -> int:
    """Delete fences by name; how many were deleted."""
    async with _connection(db) as conn:
        rows = await conn.fetch(
            "DELETE FROM geofences WHERE name = ANY($1::text[]) RETURNING id", list(names)
        )
    return len(rows)


async def fingerprint(db: asyncpg.Pool | asyncpg.Connection) -> int:
    """A number that changes whenever any fence is added, changed or deleted."""
    async with _connection(db) as conn:
        return await conn.fetchval("SELECT version FROM geofences_version")


def _feature(row: Any) -> dict[str, Any]:
    props = json.loads(row["properties"])
    props.update(name=row["name"], kind=row["kind"], shape=row["shape"])
    return {
        "type": "Feature",
        "id": row["id"],
        "geometry": json.loads(row["geometry"]),
        "properties": props,
    }


# --------------------------------------------------------------------------- the dashboard's


class GeofenceError(ValueError):
    """A change refused for a reason the user can fix (the message says which)."""


class NameTaken(GeofenceError):
    """Another fence has this name (names are unique: imports match on them)."""


def visible_sql(fence: str, n: int) -> str:
    """ "Company ``$n`` (NULL: every company) sees fence ``fence``": its own fences and the
    platform's (which concern its vehicles too), never another company's."""
    return f"({fence}.company_id IS NULL OR ${n}::integer IS NULL OR {fence}.company_id = ${n})"


def editable_sql(fence: str, n: int) -> str:
    """ "Company ``$n`` (NULL: admins and supervisors, who edit all) may change ``fence``"."""
    return f"(${n}::integer IS NULL OR {fence}.company_id IS NOT DISTINCT FROM ${n})"


@dataclass(slots=True)
class Owned:
    """A fence as a dashboard user sees it: its owner (None: the platform's) and whether the
    user may change it."""

    fence: Geofence
    company_id: int | None
    editable: bool


def _owned(row: Any) -> Owned:
    return Owned(_fence(row), row["company_id"], row["editable"])


_SCOPED = (
    _SELECT.replace("company_id\n", f"company_id, {editable_sql('geofences', 1)} AS editable\n")
    + f" WHERE {visible_sql('geofences', 1)}"
)


async def scoped(conn: Any, scope: Scope) -> list[Owned]:
    """The fences the user sees, by id (a row that no longer parses is skipped, as in load)."""
    out = []
    for row in await conn.fetch(_SCOPED + " ORDER BY id", scope.company_id):
        try:
            out.append(_owned(row))
        except ValueError as exc:
            log.error("geofence %s (%r) skipped: %s", row["id"], row["name"], exc)
    return out


async def scoped_one(conn: Any, scope: Scope, fence_id: int) -> Owned | None:
    """One fence if the user sees it (another company's is as absent as a missing one)."""
    row = await conn.fetchrow(_SCOPED + " AND id = $2", scope.company_id, fence_id)
    return _owned(row) if row else None


@asynccontextmanager
async def _writing(conn: Any) -> AsyncIterator[None]:
    """A transaction whose constraint violations come out as :class:`GeofenceError`."""
    import asyncpg

    try:
        async with conn.transaction():
            yield
    except asyncpg.UniqueViolationError as exc:
        raise NameTaken("a geofence with this name exists already") from exc
    except asyncpg.ForeignKeyViolationError as exc:
        raise GeofenceError("no such company") from exc


async def create(conn: Any, fence: Geofence, owner: int | None) -> int:
    """Add a fence owned by ``owner`` (the caller has checked the user may); its id."""
    async with _writing(conn):
        return await _insert(conn, fence, owner)


async def update(
    conn: Any, scope: Scope, fence_id: int, fence: Geofence, owner: int | None
) -> bool:
    """Change a fence the user may edit (the condition is in the UPDATE itself); whether
    anything changed."""
    async with _writing(conn):
        return await _update(conn, fence_id, fence, owner, True, scope.company_id)


async def delete_one(conn: Any, scope: Scope, fence_id: int) -> bool:
    """Delete a fence the user may edit; whether it did."""
    found = await conn.fetchval(
        f"DELETE FROM geofences g WHERE g.id = $2 AND {editable_sql('g', 1)} RETURNING id",
        scope.company_id, fence_id,
    )  # fmt: skip
    return found is not None


async def import_owned(
    conn: Any, scope: Scope, fences: Iterable[tuple[Geofence, int | None]]
) -> SaveResult:
    """Add or update (by name) fences with their owners, all or nothing: a name held by a
    fence the user may not edit refuses the whole import (:class:`NameTaken`)."""
    result = SaveResult()
    async with _writing(conn):
        await conn.execute("LOCK TABLE geofences IN SHARE ROW EXCLUSIVE MODE")
        rows = await conn.fetch(
            f"SELECT id, name, {editable_sql('g', 1)} AS editable FROM geofences g",
            scope.company_id,
        )
        existing = {r["name"]: r for r in rows}
        for fence, owner in fences:
            row = existing.get(fence.name)
            if row is None:
                result.ids[fence.name] = await _insert(conn, fence, owner)
                result.added += 1
                continue
            if not row["editable"]:
                raise NameTaken(f"a geofence named {fence.name!r} exists and is not yours")
            if await _update(conn, row["id"], fence, owner, True, scope.company_id):
                result.updated += 1
            else:
                result.unchanged += 1
            result.ids[fence.name] = row["id"]
    return result


async def vehicles_outside(conn: Any, scope: Scope, ids: Iterable[int]) -> list[int]:
    """Those of ``ids`` that are no vehicle the user sees (a fence may only name those)."""
    wanted = sorted(set(ids))
    if not wanted:
        return []
    seen = await conn.fetch(
        f"SELECT v.id FROM vehicles v WHERE v.id = ANY($3::integer[]) AND {scope_sql('v', 1)}",
        *scope.params, wanted,
    )  # fmt: skip
    found = {r["id"] for r in seen}
    return [i for i in wanted if i not in found]
