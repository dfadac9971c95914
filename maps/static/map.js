// The live map: vehicles in scope as markers with plate labels, counters.
"use strict";
import { $, T, api, emit, escapeHtml, on, onReady, when } from "./core.js";

const REFRESH_MS = 10000;
let map = null;
let markers = null;
let timer = null;
let latest = 0; // only the newest answer is drawn (an older, slower one must not win)

/** The Leaflet map (created on first login). */
export const getMap = () => map;

onReady(async () => {
  if (!map) {
    map = L.map("map", { zoomControl: true, attributionControl: false }).setView([35, 105], 4);
    markers = L.featureGroup().addTo(map);
  }
  map.invalidateSize();
  await loadVehicles(true);
  if (!timer) timer = setInterval(() => loadVehicles(false), REFRESH_MS);
});
on("logout", () => { clearInterval(timer); timer = null; });

async function loadVehicles(fit) {
  const mine = ++latest;
  const features = [];
  try {
    let after = 0;
    for (let page = 0; page < 50 && after !== null; page++) {  // bounded: 50 x 2000 vehicles
      const data = await api("GET", "vehicles?limit=2000&after=" + after);
      features.push(...data.features);
      after = data.next_after;
    }
  } catch (err) {
    emit("error", err.message);
    return;
  }
  if (mine !== latest) return;
  draw(features, fit);
  emit("vehicles", features);
}

function draw(features, fit) {
  markers.clearLayers();
  let online = 0;
  for (const f of features) {
    if (f.properties.online) online++;
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
    marker.bindPopup(() => `<b>${escapeHtml(p.plate || "")}</b><br>${escapeHtml(p.company || "")}<br>` +
      `${p.speed_kmh ?? 0} km/h · ${p.online ? T.online : T.offline}<br>${when(p.fix_time)}`);
    marker.vehicleId = f.id;
    marker.on("click", () => emit("select-vehicle", f.id)); // the vehicle panel (panel.js)
    markers.addLayer(marker);
  }
  $("#counters").textContent = `${T.vehicles} ${features.length} · ${T.online} ${online} · ` +
    `${T.offline} ${features.length - online}`;
  $("#map").dataset.vehicles = String(markers.getLayers().length);
  if (fit && markers.getLayers().length) map.fitBounds(markers.getBounds().pad(0.3), { maxZoom: 13 });
}
