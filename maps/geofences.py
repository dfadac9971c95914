"""The geofence editor's endpoints: list, get, create, update, delete, import and export, all
GeoJSON (RFC 7946; the fence format of :mod:`geo.geojson_io`).

Who may do what (the conditions are in store/geofences.py's SQL): admins and supervisors see
and edit every fence; a dispatcher sees its company's fences and the platform's (the
authority's forbidden zones and hazards concern its vehicles too) and edits only its
company's. A fence's owner is the Feature's foreign member ``company_id`` (null: a platform
fence); a dispatcher's fences are always its company's, and a company's fence concerns only
that company's vehicles, so ``applies_to`` may not name other companies or their vehicles.
Each answer's features carry ``editable`` so the page knows which to offer for editing.

Changes reach the rules and the terminals without a restart: the table's trigger NOTIFYs
(migration 0013) and every server's supervision reloads its fences and re-pushes the areas
(:meth:`alerts.supervision.Supervision.reload_fences`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import shapely

from geo.geojson_io import GeoJSONError, fence_from_feature, fence_to_feature, parse_fences
from maps.web import ApiError, json_body
from store import geofences

if TYPE_CHECKING:
    from twisted.web.server import Request

    from geo.fences import Geofence
    from maps.api import Api, Routes
    from store.users import Session

#: Vertices of one fence at most: a terminal holds far fewer, and a drawing with more is a
#: mistake (or an imported road network that belongs in a corridor of its own).
MAX_VERTICES = 1000
#: Fences in one import at most (a city's forbidden zones and school gates fit many times).
MAX_IMPORT = 2000
#: An import's body at most (2,000 fences of ~100 vertices).
MAX_IMPORT_BYTES = 8 << 20


class GeofenceApi:
    """``/api/geofences...`` over the :class:`~maps.api.Api`'s pool and sessions."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.pool = api.pool

    def routes(self) -> Routes:
        return {
            ("GET", ("geofences",)): self.list_fences,
            ("POST", ("geofences",)): self.create,
            ("GET", ("geofences", "export")): self.export,
            ("POST", ("geofences", "import")): self.import_,
            ("GET", ("geofences", "{}")): self.get,
            ("PUT", ("geofences", "{}")): self.update,
            ("DELETE", ("geofences", "{}")): self.delete,
        }

    # ------------------------------------------------------------------ reads

    async def list_fences(self, request: Request, _: list[str]) -> tuple[int, Any]:
        """The fences in scope as a FeatureCollection, by id."""
        session = await self.api.user(request)
        async with self.pool.acquire() as conn:
            found = await geofences.scoped(conn, session.user.scope)
        return 200, {"type": "FeatureCollection", "features": [_feature(o) for o in found]}

    async def get(self, request: Request, args: list[str]) -> tuple[int, Any]:
        session = await self.api.user(request)
        fence_id = _fence_id(args[0])
        async with self.pool.acquire() as conn:
            found = await geofences.scoped_one(conn, session.user.scope, fence_id)
        if found is None:
            raise ApiError(404, f"no geofence {fence_id}")
        return 200, _feature(found)

    async def export(self, request: Request, _: list[str]) -> tuple[int, Any]:
        """The fences in scope as a file to import elsewhere: no ids (an import matches on
        names) and no ``editable``; the owner stays."""
        session = await self.api.user(request)
        async with self.pool.acquire() as conn:
            found = await geofences.scoped(conn, session.user.scope)
        features = []
        for owned in found:
            feature = _feature(owned)
            del feature["id"], feature["editable"]
            features.append(feature)
        request.setHeader(b"content-disposition", b'attachment; filename="geofences.geojson"')
        return 200, {"type": "FeatureCollection", "features": features}

    # ------------------------------------------------------------------ changes

    async def create(self, request: Request, _: list[str]) -> tuple[int, Any]:
        session = await self.api.user(request, change=True)
        fence, owner = _parse(json_body(request), session)
        async with self.pool.acquire() as conn:
            await self._check_vehicles(conn, session, [fence])
            try:
                fence_id = await geofences.create(conn, fence, owner)
            except geofences.NameTaken as exc:
                raise ApiError(409, f"{fence.name!r}: {exc}") from None
            except geofences.GeofenceError as exc:
                raise ApiError(400, str(exc)) from None
            created = await geofences.scoped_one(conn, session.user.scope, fence_id)
        assert created is not None
        return 201, _feature(created)

    async def update(self, request: Request, args: list[str]) -> tuple[int, Any]:
        """Replace a fence (the whole Feature; its id stays, so its alerts stay its own)."""
        session = await self.api.user(request, change=True)
        fence_id = _fence_id(args[0])
        body = json_body(request)
        async with self.pool.acquire() as conn:
            await self._editable(conn, session, fence_id)
            fence, owner = _parse(body, session)
            await self._check_vehicles(conn, session, [fence])
            try:
                await geofences.update(conn, session.user.scope, fence_id, fence, owner)
            except geofences.NameTaken as exc:
                raise ApiError(409, f"{fence.name!r}: {exc}") from None
            except geofences.GeofenceError as exc:
                raise ApiError(400, str(exc)) from None
            found = await geofences.scoped_one(conn, session.user.scope, fence_id)
        if found is None:  # deleted meanwhile
            raise ApiError(404, f"no geofence {fence_id}")
        return 200, _feature(found)

    async def delete(self, request: Request, args: list[str]) -> tuple[int, Any]:
        session = await self.api.user(request, change=True)
        fence_id = _fence_id(args[0])
        async with self.pool.acquire() as conn:
            await self._editable(conn, session, fence_id)
            if not await geofences.delete_one(conn, session.user.scope, fence_id):
                raise ApiError(404, f"no geofence {fence_id}")
        return 200, {"deleted": fence_id}

    async def import_(self, request: Request, _: list[str]) -> tuple[int, Any]:
        """A FeatureCollection added or updated by name, all or nothing; 400 lists every
        problem with its feature's index."""
        session = await self.api.user(request, change=True)
        body = json_body(request, MAX_IMPORT_BYTES)
        features = body.get("features")
        if isinstance(features, list) and len(features) > MAX_IMPORT:
            raise ApiError(400, f"{len(features)} features: at most {MAX_IMPORT} in one import")
        try:
            fences = parse_fences(body)
        except GeoJSONError as exc:
            raise ApiError(400, str(exc)) from None
        assert isinstance(features, list)  # parse_fences checked it
        errors, owned = [], []
        for i, (fence, feature) in enumerate(zip(fences, features, strict=True)):
            try:
                owner = _owner(feature, session)
                _check(fence, owner)
            except ApiError as exc:
                errors.append(f"feature {i}: {exc.message}")
            else:
                owned.append((fence, owner))
        if errors:
            raise ApiError(400, "; ".join(errors))
        async with self.pool.acquire() as conn:
            await self._check_vehicles(conn, session, fences)
            try:
                result = await geofences.import_owned(conn, session.user.scope, owned)
            except geofences.NameTaken as exc:
                raise ApiError(409, str(exc)) from None
            except geofences.GeofenceError as exc:
                raise ApiError(400, str(exc)) from None
        return 200, {
            "added": result.added,
            "updated": result.updated,
            "unchanged": result.unchanged,
            "ids": result.ids,
        }

    # ------------------------------------------------------------------ checks

    async def _editable(self, conn: Any, session: Session, fence_id: int) -> None:
        """404 if the user does not see the fence, 403 if it sees but may not change it."""
        found = await geofences.scoped_one(conn, session.user.scope, fence_id)
        if found is None:
            raise ApiError(404, f"no geofence {fence_id}")
        if not found.editable:
            raise ApiError(403, f"geofence {fence_id} is the platform's: only admins and "
                                "supervisors change it")  # fmt: skip

    async def _check_vehicles(self, conn: Any, session: Session, fences: list[Geofence]) -> None:
        """400 if a fence names a vehicle the user does not see (one query for them all)."""
        wanted = {v for fence in fences for v in fence.applies_to.vehicle_ids}
        outside = set(await geofences.vehicles_outside(conn, session.user.scope, wanted))
        for fence in fences:
            named = sorted(fence.applies_to.vehicle_ids & outside)
            if named:
                raise ApiError(400, f"{fence.name!r}: applies_to.vehicles {named}: no such "
                                    "vehicle in your scope")  # fmt: skip


def _fence_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"geofence id {text!r}: not an integer") from None
    if not 1 <= value < 2**31:
        raise ApiError(404, f"no geofence {value}")
    return value


def _feature(owned: geofences.Owned) -> dict[str, Any]:
    feature = dict(fence_to_feature(owned.fence))
    feature["company_id"] = owned.company_id
    feature["editable"] = owned.editable
    return feature


def _owner(feature: Any, session: Session) -> int | None:
    """The fence's owner: a dispatcher's company always; for admins and supervisors the
    Feature's ``company_id`` (absent or null: a platform fence)."""
    value = feature.get("company_id") if isinstance(feature, dict) else None
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ApiError(400, f"company_id {value!r}: a company id or null")
    mine = session.user.scope.company_id
    if mine is None:
        return value
    if value is not None and value != mine:
        raise ApiError(400, f"company_id {value}: a dispatcher's fences are its own company's")
    return mine


def _parse(body: dict[str, Any], session: Session) -> tuple[Geofence, int | None]:
    """One Feature of the request as a fence and its owner; 400 with what is wrong."""
    try:
        fence = fence_from_feature(body, 0)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    owner = _owner(body, session)
    _check(fence, owner)
    return fence, owner


def _check(fence: Geofence, owner: int | None) -> None:
    """What the platform adds to the format's own checks: a vertex budget, and a company's
    fence concerning no other company."""
    vertices = len(shapely.get_coordinates(fence.geometry))
    if vertices > MAX_VERTICES:
        raise ApiError(400, f"{fence.name!r}: {vertices} vertices; at most {MAX_VERTICES}")
    companies = fence.applies_to.company_ids
    if owner is not None and companies - {owner}:
        raise ApiError(
            400,
            f"{fence.name!r}: applies_to.companies {sorted(companies)}: a company's fence "
            "concerns only its own vehicles",
        )
