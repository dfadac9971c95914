"""The vehicle panel's endpoints: what a vehicle is doing now, and commands to its terminal.

``GET /api/vehicles/{id}/panel``: the last report, the speed against the limit where it is
(the speeding rule's own combination of fences and class limits, alerts.speeding.posted_limit),
the status word in words (the wiring passes ingest's decoder: no protocol bit is read here),
the driver if an alert named one, today's driving time (Beijing day) and the continuous
driving since the last rest against the class's fatigue limits, and the open alerts.

``POST /api/vehicles/{id}/commands``: a text, a position query or temporary tracking, through
the command gateway, so it reaches the terminal whichever worker holds it; the answer is the
terminal's (accepted / failed / unsupported, with the position for a query). No answer: 409
when the terminal is connected nowhere (nothing was sent), 504 when it did not answer in time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from twisted.web.server import Request

from alerts.commands import Command, CommandFailed, QueryPosition, Text, Track
from alerts.model import VehicleInfo
from alerts.settings import Profile, RuleSettings
from alerts.speeding import posted_limit
from geo.calendar import is_night
from geo.index import FenceIndex
from maps.alarms import MAX_TEXT, bool_field, no_answer, text_field
from maps.api import Api, Routes
from maps.web import ApiError, json_body
from store import dashboard, geofences

BEIJING = ZoneInfo("Asia/Shanghai")
MAX_TRACK_S = 24 * 3600  # temporary tracking from the panel: at most a day
COMMAND_KINDS = ("text", "query_position", "track")


def driving_time(
    fixes: Sequence[tuple[datetime, float]], now: datetime, profile: Profile
) -> tuple[float, float]:
    """(seconds driven, seconds of continuous driving since the last rest) over these fixes.

    A fix faster than ``moving_kmh`` counts as driving until the next fix, for at most
    ``hold_s`` (a longer silence is a stop, as the fatigue rule sees it); a stop of
    ``rest_s`` or more (slow fixes and silences together) ends the continuous driving. An
    estimate from the stored track for the panel: the rules' own state also knows earlier
    days, drivers and late data.
    """
    driven = continuous = stopped = 0.0
    for i, (at, speed) in enumerate(fixes):
        until = fixes[i + 1][0] if i + 1 < len(fixes) else now
        gap = max(0.0, (until - at).total_seconds())
        if speed > profile.moving_kmh:
            drive = min(gap, profile.hold_s)
            driven += drive
            continuous += drive
            stopped = gap - drive
        else:
            stopped += gap
        if stopped >= profile.rest_s:
            continuous = 0.0
    return driven, continuous


def _int_field(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"{name}: a whole number of seconds from {low} to {high}")
    return value


def command_from_body(body: dict[str, Any]) -> Command:
    """The command a panel request asks for (400 with the reason if it is not one)."""
    kind = body.get("kind")
    if kind == "text":
        text = text_field(body, "text", MAX_TEXT, required=True)
        assert text is not None
        try:
            return Text(
                text,
                tts=bool_field(body, "tts", True),
                display=bool_field(body, "display", True),
                urgent=bool_field(body, "urgent", False),
            )
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
    if kind == "query_position":
        return QueryPosition()
    if kind == "track":
        return Track(
            interval_s=_int_field(body, "interval_s", 0, 3600),
            duration_s=_int_field(body, "duration_s", 0, MAX_TRACK_S),
        )
    raise ApiError(400, f"kind {kind!r}: one of {', '.join(COMMAND_KINDS)}")


class PanelApi:
    """The vehicle panel. ``fences``: the supervision service's fence index (serve passes it,
    so the limit is the rules' own); without it, the panel loads the fences itself.
    ``status_names``: the status word in words (ingest's decoder)."""

    def __init__(
        self,
        api: Api,
        gateway: Any = None,
        *,
        fences: FenceIndex | None = None,
        settings: RuleSettings | None = None,
        status_names: Callable[[int], list[str]] | None = None,
        command_timeout: float = 15.0,
    ) -> None:
        self.api = api
        self.gateway = gateway
        self.fences = fences
        self._own_fences: tuple[int, FenceIndex] | None = None
        self.settings = settings or RuleSettings()
        self.status_names = status_names or (lambda word: [])
        self.command_timeout = command_timeout

    def routes(self) -> Routes:
        return {
            ("GET", ("vehicles", "{}", "panel")): self.panel,
            ("POST", ("vehicles", "{}", "commands")): self.command,
        }

    async def _index(self) -> FenceIndex:
        if self.fences is not None:
            return self.fences
        version = await geofences.fingerprint(self.api.pool)
        if self._own_fences is None or self._own_fences[0] != version:
            index = FenceIndex()
            index.rebuild(await geofences.load(self.api.pool))
            self._own_fences = (version, index)
        return self._own_fences[1]

    async def panel(self, request: Request, args: list[str]) -> tuple[int, Any]:
        session = await self.api.user(request)
        vehicle_id = _vehicle_id(args[0])
        scope = session.user.scope
        now = datetime.now(UTC)
        day = now.astimezone(BEIJING).replace(hour=0, minute=0, second=0, microsecond=0)
        async with self.api.pool.acquire() as conn:
            row = await dashboard.vehicle_panel(conn, scope, vehicle_id)
            if row is None:
                raise ApiError(404, f"no vehicle {vehicle_id}")
            fixes = await dashboard.fixes_since(conn, scope, vehicle_id, day.astimezone(UTC))
            open_alerts = await dashboard.vehicle_alerts(conn, scope, vehicle_id, 50)
        info = VehicleInfo(
            id=row["id"],
            plate=row["plate"],
            vehicle_class=row["class"],
            company_id=row["company_id"],
            overrides=json.loads(row["overrides"] or "{}"),
        )
        profile = self.settings.profile(info)
        driven, continuous = driving_time(fixes, now, profile)
        night = is_night(now.timestamp())
        continuous_limit = (
            profile.night_continuous_s
            if night and profile.night_continuous_s
            else profile.continuous_s
        )
        last = None
        limit: dict[str, Any] = {"kmh": None, "expressway": False, "fences": []}
        if row["fix_time"] is not None:
            last = {
                "fix_time": row["fix_time"].isoformat(),
                "received_time": row["received_time"].isoformat(),
                "lon": row["lon"],
                "lat": row["lat"],
                "speed_kmh": row["speed_kmh"],
                "heading": row["heading"],
                "valid": row["valid"],
            }
            limit = await self._limit(info, profile, row)
        return 200, {
            "vehicle": {
                "id": row["id"],
                "plate": row["plate"],
                "class": row["class"],
                "company": row["company"],
                "online": row["online"],
            },
            "last": last,
            "status": self.status_names(row["status"]) if row["status"] is not None else [],
            "limit": limit,
            "driver": row["driver"],
            "driving": {
                "since": day.isoformat(),
                "today_s": round(driven),
                "daily_limit_s": profile.daily_s if profile.fatigue else None,
                "continuous_s": round(continuous),
                "continuous_limit_s": continuous_limit if profile.fatigue else None,
                "night": night,
            },
            "alerts": [a.to_json() for a in open_alerts],
        }

    async def _limit(self, info: VehicleInfo, profile: Profile, row: Any) -> dict[str, Any]:
        if profile.speed_exempt:
            return {"kmh": None, "expressway": False, "fences": [], "exempt": True}
        index = await self._index()
        inside = [
            index.fences[f]
            for f, sure in index.classify(row["lon"], row["lat"]).items()
            if sure and f in index.fences
        ]
        kmh, express = posted_limit(
            inside, row["fix_time"], info.vehicle_class, info.id, info.company_id, profile
        )
        if (
            kmh is not None
            and profile.night_factor != 1.0
            and is_night(row["fix_time"].timestamp())
        ):
            kmh *= profile.night_factor
        return {"kmh": kmh, "expressway": express, "fences": [f.name for f in inside]}

    async def command(self, request: Request, args: list[str]) -> tuple[int, Any]:
        """``{"kind": "text", "text": ..., "tts", "display", "urgent"}``,
        ``{"kind": "query_position"}`` or ``{"kind": "track", "interval_s", "duration_s"}``."""
        session = await self.api.user(request, change=True)
        vehicle_id = _vehicle_id(args[0])
        command = command_from_body(json_body(request))
        async with self.api.pool.acquire() as conn:
            row = await dashboard.vehicle_panel(conn, session.user.scope, vehicle_id)
        if row is None:
            raise ApiError(404, f"no vehicle {vehicle_id}")
        if self.gateway is None:
            raise ApiError(503, "commands need the server's command gateway")
        what = f"{row['plate'] or vehicle_id}: {command.KIND}"
        try:
            reply = await self.gateway.send(
                vehicle_id,
                command,
                timeout=self.command_timeout,
                requested_by=session.user.username,
            )
        except CommandFailed as failed:
            raise no_answer(failed, what) from None
        return 200, {
            "vehicle_id": vehicle_id,
            "plate": row["plate"],
            "kind": command.KIND,
            "reply": reply.to_json(),
        }


def _vehicle_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"vehicle id {text!r}: not an integer") from None
    if not 0 < value < 2**31:
        raise ApiError(400, f"vehicle id {value}: out of range")
    return value


__all__ = ["COMMAND_KINDS", "PanelApi", "command_from_body", "driving_time"]
