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

from geo.fences import Geofence
from geo.geojson_io import fence_from_feature, fence_geometry, fence_properties

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

#: Properties that live in their own columns (and are put back from them).
_COLUMNS = ("name", "kind", "shape")

_SELECT = """
SELECT id, name, kind, shape, ST_AsGeoJSON(geom) AS geometry, properties::text AS properties
FROM geofences
"""


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
            name, kind, shape, geometry, props = _row_values(fence)
            if name in existing:
                fid = existing[name]
                changed = await conn.fetchval(
                    """
                    UPDATE geofences SET kind = $2, shape = $3,
                        geom = ST_SetSRID(ST_GeomFromGeoJSON($4), 4326),
                        properties = $5::text::jsonb, updated_at = now()
                    WHERE id = $1 AND (
                        kind <> $2 OR shape <> $3
                        OR ST_AsEWKB(geom) <> ST_AsEWKB(ST_SetSRID(ST_GeomFromGeoJSON($4), 4326))
                        OR properties <> $5::text::jsonb)
                    RETURNING id
                    """,
                    fid, kind, shape, geometry, props,
                )  # fmt: skip
                if changed is None:
                    result.unchanged += 1
                else:
                    result.updated += 1
            else:
                fid = await conn.fetchval(
                    """
                    INSERT INTO geofences (name, kind, shape, geom, properties)
                    VALUES ($1, $2, $3, ST_SetSRID(ST_GeomFromGeoJSON($4), 4326), $5::text::jsonb)
                    RETURNING id
                    """,
                    name, kind, shape, geometry, props,
                )  # fmt: skip
                result.added += 1
            result.ids[name] = fid
        if replace:
            deleted = await conn.fetch(
                "DELETE FROM geofences WHERE NOT (name = ANY($1::text[])) RETURNING id", names
            )
            result.deleted = len(deleted)
    return result


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
            fences.append(fence_from_feature(_feature(row), row["id"]))
        except ValueError as exc:
            log.error("geofence %s (%r) skipped: %s", row["id"], row["name"], exc)
    return fences


async def get(db: asyncpg.Pool | asyncpg.Connection, fence_id: int) -> Geofence | None:
    async with _connection(db) as conn:
        row = await conn.fetchrow(_SELECT + " WHERE id = $1", fence_id)
    return fence_from_feature(_feature(row), row["id"]) if row else None


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
