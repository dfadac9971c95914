"""Track replay and export: a vehicle's track over a time range as RFC 7946 GeoJSON (simplified
on the server, with its stops and alerts), and as GPX 1.1, GeoJSON and a printable folium map.

``GET /api/vehicles/{id}/track?from=&to=`` is what the replay panel draws; ``track.gpx``,
``track.geojson`` and ``track.html`` are downloads. Times are ISO 8601 with an offset (a time
without one would be read differently by a browser in Beijing and a server in UTC); a range is
at most :data:`MAX_RANGE`. The vehicle must be in the user's scope: another company's vehicle is
a 404, as absent as a missing one. Exports are full resolution unless ``tolerance`` is given,
the printable map is simplified (a browser page with 86,400 vertices prints badly).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import asyncpg
import folium

from maps.web import ApiError, RawBody, in_thread, int_arg, str_arg
from store import tracks
from store.tracks import Track

if TYPE_CHECKING:
    from twisted.web.server import Request

    from maps.api import Api, Routes

MAX_RANGE = timedelta(days=7)
DEFAULT_TOLERANCE_M = 5.0
DEFAULT_MAX_POINTS = 5000
MAX_ALERTS = 1000
BEIJING = timezone(timedelta(hours=8), "北京时间")
GPX_NS = "http://www.topografix.com/GPX/1/1"
#: Garmin's TrackPointExtension carries speed (m/s) and course: GPX 1.1 has no field for them.
GPXTPX_NS = "http://www.garmin.com/xmlschemas/TrackPointExtension/v2"
#: Speed colours (upper bound km/h, colour), the same bands as replay.js draws.
SPEED_BANDS = [(30, "#2c7bb6"), (60, "#1a9641"), (90, "#fdae61"), (120, "#d7191c")]
FASTEST = "#7b3294"
#: Where the printable map finds Leaflet, relative to /api/vehicles/{id}/track.html: the
#: vendored copy under maps/static/vendor (scripts/setup.sh), never a CDN.
VENDOR = "../../../vendor/"
#: The print map's title and legend float over the map (which fills the page), beside the zoom.
TITLE_STYLE = (
    "position:fixed;top:0;left:56px;right:0;z-index:1000;font:14px sans-serif;"
    "padding:4px 8px;background:rgba(255,255,255,.9)"
)
#: The export page runs folium's inline scripts; everything it loads comes from this origin.
EXPORT_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
)


class TrackApi:
    """The track endpoints, authenticated and scoped through the :class:`Api`."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def routes(self) -> Routes:
        base = ("vehicles", "{}")
        return {
            ("GET", (*base, "track")): self.get_track,
            ("GET", (*base, "track.geojson")): self.export_geojson,
            ("GET", (*base, "track.gpx")): self.export_gpx,
            ("GET", (*base, "track.html")): self.export_map,
        }

    async def _load(self, request: Request, arg: str, simplify: bool) -> dict[str, Any]:
        """Authenticate, check the arguments and the vehicle's scope, then read the track, its
        stops and its alerts."""
        session = await self.api.user(request)
        try:
            vehicle_id = int(arg)
        except ValueError:
            raise ApiError(400, f"vehicle id {arg!r}: not an integer") from None
        start, end = time_range(request)
        tolerance = _float_arg(request, "tolerance", DEFAULT_TOLERANCE_M if simplify else None)
        max_points = int_arg(request, "max_points", DEFAULT_MAX_POINTS, 10, 50_000)
        stop_minutes = int_arg(request, "stop_minutes", 5, 1, 24 * 60)
        assert max_points is not None and stop_minutes is not None
        async with self.api.pool.acquire() as conn:
            vehicle = await tracks.vehicle_in_scope(conn, session.user.scope, vehicle_id)
        if vehicle is None:  # another company's vehicle is as absent as a missing one
            raise ApiError(404, f"no vehicle {vehicle_id}")

        async def read(query: Callable[..., Awaitable[Any]], *args: Any) -> Any:
            async with self.api.pool.acquire() as conn:
                return await query(conn, vehicle_id, start, end, *args)

        # Three statements on three connections: the stops' scan runs beside the line's.
        try:
            track, stops, alerts = await asyncio.gather(
                read(tracks.track, tolerance, max_points),
                read(tracks.stops, stop_minutes * 60),
                read(tracks.alerts, MAX_ALERTS),
            )
        except asyncpg.QueryCanceledError:
            raise ApiError(503, "reading the track took too long: ask for less") from None
        return {
            "vehicle": vehicle, "start": start, "end": end, "track": track,
            "stops": stops, "alerts": alerts,
        }  # fmt: skip

    async def get_track(self, request: Request, args: list[str]) -> tuple[int, Any]:
        """The replay's data: the simplified line, stops and alerts as a FeatureCollection."""
        return 200, collection(**await self._load(request, args[0], simplify=True))

    async def export_geojson(self, request: Request, args: list[str]) -> tuple[int, Any]:
        data = await self._load(request, args[0], simplify=False)
        body = json.dumps(collection(**data), ensure_ascii=False).encode()
        return 200, _download(body, "application/geo+json", data, "geojson")

    async def export_gpx(self, request: Request, args: list[str]) -> tuple[int, Any]:
        data = await self._load(request, args[0], simplify=False)
        body = await in_thread(gpx, data)
        return 200, _download(body, "application/gpx+xml", data, "gpx")

    async def export_map(self, request: Request, args: list[str]) -> tuple[int, Any]:
        data = await self._load(request, args[0], simplify=True)
        body = await in_thread(printable_map, data)
        download = _download(body, "text/html; charset=utf-8", data, "html")
        download.headers["Content-Security-Policy"] = EXPORT_CSP
        return 200, download


# ---------------------------------------------------------------------- arguments


def parse_time(name: str, text: str | None) -> datetime:
    """An ISO 8601 time with an offset (``Z`` or ``+08:00``), else a 400 saying so."""
    example = "e.g. 2026-12-01T08:00:00+08:00"
    if not text:
        raise ApiError(400, f"{name}: required, an ISO 8601 time with an offset ({example})")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"{name}={text!r}: not an ISO 8601 time ({example})") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ApiError(400, f"{name}={text!r}: give the offset, Z or +08:00 ({example})")
    return value.astimezone(UTC)


def time_range(request: Request) -> tuple[datetime, datetime]:
    """``from`` and ``to``: from before to, at most :data:`MAX_RANGE` apart."""
    start = parse_time("from", str_arg(request, "from"))
    end = parse_time("to", str_arg(request, "to"))
    if end <= start:
        raise ApiError(400, "to must be after from")
    if end - start > MAX_RANGE:
        raise ApiError(400, f"range longer than {MAX_RANGE.days} days: ask for less")
    return start, end


def _float_arg(request: Request, name: str, default: float | None) -> float | None:
    text = str_arg(request, name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ApiError(400, f"{name}={text!r}: not a number (metres)") from None
    if not 0 <= value <= 10_000:  # also refuses nan and inf
        raise ApiError(400, f"{name}={value}: metres between 0 and 10000")
    return value


# ---------------------------------------------------------------------- GeoJSON


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def _point(lon: float | None, lat: float | None) -> dict[str, Any] | None:
    if lon is None or lat is None:
        return None
    return {"type": "Point", "coordinates": [round(lon, 6), round(lat, 6)]}


def _line(track: Track) -> dict[str, Any] | None:
    coordinates = [[round(p[1], 6), round(p[2], 6)] for p in track.points]
    if len(coordinates) >= 2:
        return {"type": "LineString", "coordinates": coordinates}
    return _point(*coordinates[0]) if coordinates else None


def collection(
    vehicle: dict[str, Any],
    start: datetime,
    end: datetime,
    track: Track,
    stops: list[dict[str, Any]],
    alerts: list[dict[str, Any]],
) -> dict[str, Any]:
    """RFC 7946: lon/lat WGS-84, no ``crs``; the line's per-vertex times (ISO 8601, UTC) and
    speeds (km/h) are arrays in its properties, as GeoJSON has no place for them."""
    features: list[dict[str, Any]] = [
        {
            "type": "Feature",
            "id": "track",
            "geometry": _line(track),
            "properties": {
                "kind": "track", "vehicle_id": vehicle["id"], "plate": vehicle["plate"],
                "company": vehicle["company"], "from": _iso(start), "to": _iso(end),
                "points": len(track.points), "points_total": track.total,
                "tolerance_m": track.tolerance_m,
                "times": track.iso,
                "speeds": [round(p[3], 1) for p in track.points],
                "headings": [p[4] for p in track.points],
            },
        }
    ]  # fmt: skip
    for n, stop in enumerate(stops):
        seconds = (stop["end_time"] - stop["start_time"]).total_seconds()
        features.append({
            "type": "Feature", "id": f"stop-{n}", "geometry": _point(stop["lon"], stop["lat"]),
            "properties": {"kind": "stop", "start": _iso(stop["start_time"]),
                           "end": _iso(stop["end_time"]), "duration_s": int(seconds)},
        })  # fmt: skip
    for alert in alerts:
        features.append({
            "type": "Feature", "id": f"alert-{alert['id']}",
            "geometry": _point(alert["lon"], alert["lat"]),
            "properties": {"kind": "alert", "alert_id": alert["id"], "type": alert["type"],
                           "severity": alert["severity"], "status": alert["status"],
                           "start": _iso(alert["start_time"]), "end": _iso(alert["end_time"])},
        })  # fmt: skip
    out: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if track.points:
        lons = [p[1] for p in track.points]
        lats = [p[2] for p in track.points]
        out["bbox"] = [round(min(lons), 6), round(min(lats), 6), round(max(lons), 6),
                       round(max(lats), 6)]  # fmt: skip
    return out


def _download(body: bytes, kind: str, data: dict[str, Any], ext: str) -> RawBody:
    """An attachment named after the vehicle and the range (ASCII name and RFC 6266's UTF-8)."""
    start = data["start"].astimezone(BEIJING).strftime("%Y%m%d-%H%M")
    end = data["end"].astimezone(BEIJING).strftime("%Y%m%d-%H%M")
    ascii_name = f"track-{data['vehicle']['id']}-{start}-{end}.{ext}"
    plate = data["vehicle"]["plate"] or str(data["vehicle"]["id"])
    quoted = quote(f"{plate}-{start}-{end}.{ext}", safe="-._")
    disposition = "inline" if ext == "html" else "attachment"
    value = f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quoted}"
    return RawBody(body, kind, {"Content-Disposition": value})


# ---------------------------------------------------------------------- GPX


def gpx(data: dict[str, Any]) -> bytes:
    """GPX 1.1: stops and alerts as waypoints, the track as one segment with each fix's time;
    speed (m/s) and course in Garmin's TrackPointExtension."""
    ET.register_namespace("", GPX_NS)
    ET.register_namespace("gpxtpx", GPXTPX_NS)
    vehicle, track = data["vehicle"], data["track"]
    root = ET.Element(f"{{{GPX_NS}}}gpx", {"version": "1.1", "creator": "FleetWatch"})
    meta = ET.SubElement(root, f"{{{GPX_NS}}}metadata")
    name = f"{vehicle['plate'] or vehicle['id']} {_iso(data['start'])}/{_iso(data['end'])}"
    ET.SubElement(meta, f"{{{GPX_NS}}}name").text = name
    ET.SubElement(meta, f"{{{GPX_NS}}}time").text = _iso(datetime.now(UTC))
    for kind, lon, lat, moment, label in _waypoints(data):
        wpt = ET.SubElement(root, f"{{{GPX_NS}}}wpt", {"lat": f"{lat:.6f}", "lon": f"{lon:.6f}"})
        ET.SubElement(wpt, f"{{{GPX_NS}}}time").text = _iso(moment)
        ET.SubElement(wpt, f"{{{GPX_NS}}}name").text = label
        ET.SubElement(wpt, f"{{{GPX_NS}}}type").text = kind
    trk = ET.SubElement(root, f"{{{GPX_NS}}}trk")
    ET.SubElement(trk, f"{{{GPX_NS}}}name").text = str(vehicle["plate"] or vehicle["id"])
    seg = ET.SubElement(trk, f"{{{GPX_NS}}}trkseg")
    for moment, lon, lat, speed, heading in track.points:
        pt = ET.SubElement(seg, f"{{{GPX_NS}}}trkpt", {"lat": f"{lat:.6f}", "lon": f"{lon:.6f}"})
        ET.SubElement(pt, f"{{{GPX_NS}}}time").text = _iso(moment)
        ext = ET.SubElement(ET.SubElement(pt, f"{{{GPX_NS}}}extensions"),
                            f"{{{GPXTPX_NS}}}TrackPointExtension")  # fmt: skip
        ET.SubElement(ext, f"{{{GPXTPX_NS}}}speed").text = f"{speed / 3.6:.2f}"
        ET.SubElement(ext, f"{{{GPXTPX_NS}}}course").text = str(heading % 360)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _waypoints(data: dict[str, Any]) -> Iterable[tuple[str, float, float, datetime, str]]:
    for stop in data["stops"]:
        minutes = (stop["end_time"] - stop["start_time"]).total_seconds() / 60
        yield "stop", stop["lon"], stop["lat"], stop["start_time"], f"停车 {minutes:.0f} 分钟"
    for alert in data["alerts"]:
        if alert["lon"] is not None:
            yield "alert", alert["lon"], alert["lat"], alert["start_time"], alert["type"]


# ---------------------------------------------------------------------- printable map


def speed_colour(kmh: float) -> str:
    return next((colour for top, colour in SPEED_BANDS if kmh < top), FASTEST)


def _beijing(moment: datetime) -> str:
    return moment.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S") + " (北京时间)"


def printable_map(data: dict[str, Any]) -> bytes:
    """A folium page of the track coloured by speed, stops and alerts; Leaflet from the
    dashboard's vendored copy (folium's template would load it, jQuery and Bootstrap from CDNs;
    this map uses none of their plugins, so only Leaflet is kept) and no tile layer."""
    vehicle, track = data["vehicle"], data["track"]
    fmap = folium.Map(tiles=None, control_scale=True, zoom_start=12)  # SVG: prints sharp
    fmap.default_js = [("leaflet", VENDOR + "leaflet/leaflet.js")]
    fmap.default_css = [("leaflet_css", VENDOR + "leaflet/leaflet.css")]
    title = (
        f"<div style='{TITLE_STYLE}'><b>{_html(vehicle['plate'])}</b> "
        f"{_beijing(data['start'])} — {_beijing(data['end'])} · {len(track.points)} / "
        f"{track.total} 点 · 非审图号地图，仅示意轨迹<br>{_legend()}</div>"
    )
    fmap.get_root().html.add_child(folium.Element(title))  # type: ignore[attr-defined]
    points = track.points
    for run in _colour_runs(points):
        folium.PolyLine([(p[2], p[1]) for p in run], color=speed_colour(run[1][3]), weight=4,
                        opacity=0.9).add_to(fmap)  # fmt: skip
    if points:
        for p, colour, label in ((points[0], "#1a9641", "起点"), (points[-1], "#000", "终点")):
            folium.CircleMarker((p[2], p[1]), radius=7, color=colour, fill=True,
                                tooltip=f"{label} {_beijing(p[0])}").add_to(fmap)  # fmt: skip
        lons, lats = [p[1] for p in points], [p[2] for p in points]
        fmap.fit_bounds([(min(lats), min(lons)), (max(lats), max(lons))])
    for kind, lon, lat, moment, label in _waypoints(data):
        colour = "#c0392b" if kind == "alert" else "#2c3e50"
        folium.CircleMarker((lat, lon), radius=6, color=colour, fill=True, fill_opacity=0.8,
                            tooltip=f"{_html(label)} {_beijing(moment)}").add_to(fmap)  # fmt: skip
    return fmap.get_root().render().encode()  # type: ignore[no-any-return]


def _legend() -> str:
    """The speed bands as coloured bars (km/h), then the markers' colours."""
    lows = [0] + [top for top, _ in SPEED_BANDS]
    labels = [f"{low}-{top}" for low, (top, _) in zip(lows, SPEED_BANDS, strict=False)]
    labels.append(f"≥{SPEED_BANDS[-1][0]}")
    colours = [colour for _, colour in SPEED_BANDS] + [FASTEST]
    bar = "<span style='display:inline-block;width:16px;height:4px;background:{}'></span> {}"
    bands = " ".join(bar.format(c, t) for c, t in zip(colours, labels, strict=True))
    return f"{bands} km/h · 起点 绿圈 · 终点 黑圈 · 停车 深蓝 · 报警 红"


def _colour_runs(points: list[Any]) -> list[list[Any]]:
    """Consecutive segments of one colour as one polyline each (a segment's colour is its end's
    speed), so a day is dozens of polylines, not thousands."""
    runs: list[list[Any]] = []
    for before, after in itertools.pairwise(points):
        colour = speed_colour(after[3])
        if runs and speed_colour(runs[-1][-1][3]) == colour:
            runs[-1].append(after)
        else:
            runs.append([before, after])
    return runs


def _html(text: Any) -> str:
    return (
        str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        if text is not None
        else ""
    )
