// The live map: vehicles in scope as markers with plate labels, counters.
"use strict";
import { $, T, emit, escapeHtml, on, onReady, when } from "./core.js";

let map = null;
let markers = null;
let current = new Map(); // vehicle id -> its newest Feature (from the live feed)
let byId = new Map(); // vehicle id -> its marker
let fitted = false;
let countersTimer = null;
let listTimer = null; // the "vehicles" event (the vehicle list) follows deltas every 5 s at most

/** The Leaflet map (created on first login). */
export const getMap = () => map;

onReady(async () => {
  if (!map) {
    map = L.map("map", { zoomControl: true, attributionControl: false }).setView([35, 105], 4);
    markers = L.featureGroup().addTo(map);
  }
  map.invalidateSize();
});
on("logout", () => { fitted = false; clearTimeout(listTimer); listTimer = null; });

// The data comes from the live feed (live.js): the whole state on each (re)connection, then
// each vehicle's new positions.
on("snapshot", ({ vehicles }) => {
  current = new Map(vehicles.map((f) => [f.id, f]));
  draw(vehicles, !fitted);
  fitted = true;
  emit("vehicles", vehicles);
});
on("vehicle", (f) => {
  const before = current.get(f.id);
  current.set(f.id, f);
  if (!listTimer) {
    listTimer = setTimeout(() => { listTimer = null; emit("vehicles", [...current.values()]); }, 5000);
  }
  const marker = byId.get(f.id);
  if (!marker || !f.geometry || (before && before.properties.online !== f.properties.online)) {
    draw([...current.values()], false); // new on the map, or its colour changes: rare
    return;
  }
  const [lon, lat] = f.geometry.coordinates;
  marker.setLatLng([lat, lon]);
  marker.feature = f;
  mark(marker, f);
  const el = $("#map");
  el.dataset.updates = String(Number(el.dataset.updates || 0) + 1);
  if (!countersTimer) countersTimer = setTimeout(() => { countersTimer = null; counters(); }, 500);
});

/** Test hooks on the marker's element: which vehicle, where it is now. */
function mark(marker, f) {
  const el = marker.getElement && marker.getElement();
  if (!el || !f.geometry) return;
  el.dataset.vehicleId = String(f.id);
  el.dataset.lon = String(f.geometry.coordinates[0]);
  el.dataset.lat = String(f.geometry.coordinates[1]);
  el.dataset.fixTime = f.properties.fix_time || "";
}

function counters() {
  let online = 0;
  for (const f of current.values()) if (f.properties.online) online++;
  $("#counters").textContent = `${T.vehicles} ${current.size} · ${T.online} ${online} · ` +
    `${T.offline} ${current.size - online}`;
}

function draw(features, fit) {
  markers.clearLayers();
  byId = new Map();
  for (const f of features) {
    if (!f.geometry) continue;
    const [lon, lat] = f.geometry.coordinates;
    const p = f.properties;
    const marker = L.circleMarker([lat, lon], {
      radius: 7, weight: 2, color: "#fff", fillOpacity: 1,
      fillColor: p.online ? "#27ae60" : "#7f8c8d",
    });
    marker.bindTooltip(p.plate || "#" + f.id, {
      permanent: true, direction: "right", offset: [8, 0],
      className: "plate-label" + (p.online ? "" : " offline"),
    });
    marker.feature = f;
    marker.bindPopup(() => popup(marker.feature.properties));
    marker.vehicleId = f.id;
    marker.on("click", () => emit("select-vehicle", f.id)); // the vehicle panel (panel.js)
    markers.addLayer(marker);
    byId.set(f.id, marker);
    mark(marker, f);
  }
  counters();
  $("#map").dataset.vehicles = String(markers.getLayers().length);
  if (fit && markers.getLayers().length) map.fitBounds(markers.getBounds().pad(0.3), { maxZoom: 13 });
}

function popup(p) {
  return `<b>${escapeHtml(p.plate || "")}</b><br>${escapeHtml(p.company || "")}<br>` +
    `${p.speed_kmh ?? 0} km/h · ${p.online ? T.online : T.offline}<br>${when(p.fix_time)}`;
}
