// The live map: every vehicle in scope as a marker with its class icon, a colour per state,
// a heading arrow and its plate; clusters when zoomed out; follow-a-vehicle; counters.
//
// Built for 5,000 vehicles reporting every 10 s: markers are kept by vehicle id and changed in
// place (never cleared and rebuilt); one icon object per vehicle draws from the vehicle's own
// state, and a visible marker's element is patched, not replaced. Changes are queued and
// applied in time slices of a few milliseconds per animation frame, so a burst of 5,000 never
// blocks a frame for long. Feeds: the REST snapshot (GET /api/vehicles, every 10 s) and, from
// other modules (the live WebSocket client), updateVehicle(feature) / setVehicles(features)
// with the same GeoJSON features (a delta may carry only some properties).
//
// Test hooks (DOM state): #map[data-vehicles] markers placed, [data-follow] followed vehicle id,
// [data-pending] queued changes; each marker element .vm[data-vehicle-id][data-state][data-class]
// [data-heading]; #counters [data-online|offline|alarm|total].
"use strict";
import { $, T, addStrings, api, emit, escapeHtml, lang, on, onReady, when } from "./core.js";
import { drawBaseMap } from "./basemap.js";
import { gcj02ToWgs84, wgs84ToGcj02 } from "./gcj02.js";
import { iconRef, installIcons } from "./icons.js";

addStrings({
  alarm: "报警", follow: "跟踪", unfollow: "停止跟踪", following: "跟踪中", theme_dark: "夜间",
  theme_light: "日间", lang_other: "English", no_fix: "无定位",
  no_basemap: "离线底图：行政区划仅作示意，非审图号地图，不作为国界依据",
  layer_tiles: "在线瓦片", layer_offline: "离线行政区划", layer_labels: "地名",
  states: { moving: "行驶", idle: "停车(ACC开)", parked: "停放(ACC关)", offline: "离线", nofix: "未定位", alarm: "报警" },
  classes: { police: "警车", school_bus: "校车", coach: "客车", heavy_truck: "重型货车", hazmat: "危险品运输车", other: "其他" },
  acc: { true: "ACC开", false: "ACC关", null: "ACC未知" },
  last_report: "最后上报", speed: "速度", heading: "方向",
}, {
  alarm: "in alarm", follow: "Follow", unfollow: "Stop following", following: "Following",
  theme_dark: "Night", theme_light: "Day", lang_other: "中文", no_fix: "no fix",
  no_basemap: "Offline base map: administrative areas for orientation only; not an approved map (非审图号), not authoritative for borders",
  layer_tiles: "Tiles", layer_offline: "Offline areas", layer_labels: "Place names",
  states: { moving: "moving", idle: "stopped, ACC on", parked: "parked, ACC off", offline: "offline", nofix: "no fix", alarm: "in alarm" },
  classes: { police: "police car", school_bus: "school bus", coach: "coach", heavy_truck: "heavy truck", hazmat: "hazmat truck", other: "other" },
  acc: { true: "ACC on", false: "ACC off", null: "ACC unknown" },
  last_report: "Last report", speed: "Speed", heading: "Heading",
});

const REFRESH_MS = 10000;
// Queued changes applied per animation frame: at most this many, for at most this long.
const PER_FRAME = 250;
const SLICE_MS = 6;
const DENSE = 150; // more single markers in view than this: plates hidden
const THEME_KEY = "fw-theme";

let map = null;
let cluster = null;
let timer = null;
let latest = 0; // only the newest REST answer is applied (an older, slower one must not win)
let toLatLng = (lon, lat) => L.latLng(lat, lon);
let fromLatLng = (at) => [at.lng, at.lat];
const popupExtenders = [];
/** id → { id, props, lonlat, marker } */
const vehicles = new Map();
const pending = new Map(); // id → feature (newest wins), applied by flush()
let flushScheduled = false;
let following = null;
let fitOnce = true;
let polled = true;
let deltas = false; // changes came by updateVehicle since the last "vehicles" event
let announce = null;

/** The Leaflet map (created on first login). */
export const getMap = () => map;
/** A WGS-84 point where it is drawn on this map (shifted to GCJ-02 when the tiles are). */
export const mapLatLng = (lon, lat) => toLatLng(lon, lat);
/** A point of this map (a LatLng drawn on it) as WGS-84 [lon, lat]: mapLatLng's inverse, for
 * what an operator draws (a geofence) to be stored in the platform's datum. */
export const wgsLonLat = (at) => fromLatLng(L.latLng(at));
/** Add to every vehicle popup: fn(box, vehicle) appends its own controls to the popup's box.
 * The popup is rebuilt on each update of its vehicle, so extras added once would vanish. */
export const addPopupExtender = (fn) => popupExtenders.push(fn);

/** Apply one vehicle's feature (a full one, or a delta with some properties). */
export function updateVehicle(feature) {
  deltas = true;
  const el = $("#map");
  el.dataset.updates = String(Number(el.dataset.updates || 0) + 1);
  const before = pending.get(feature.id);
  pending.set(feature.id, before ? merge(before, feature) : feature);
  schedule();
}

/** Make the map show exactly these vehicles (others are removed). */
export function setVehicles(features) {
  const seen = new Set();
  for (const f of features) { seen.add(f.id); pending.set(f.id, f); }
  for (const id of vehicles.keys()) if (!seen.has(id)) pending.set(id, null);
  for (const id of pending.keys()) if (!seen.has(id) && !vehicles.has(id)) pending.delete(id);
  schedule();
}

/** The next animation frame; a hidden tab gets none, so there a short timer instead. */
const nextFrame = (fn) => (document.hidden ? setTimeout(fn, 50) : requestAnimationFrame(fn));

function merge(old, delta) {
  return {
    ...old, ...delta,
    geometry: delta.geometry === undefined ? old.geometry : delta.geometry,
    properties: { ...(old.properties || {}), ...(delta.properties || {}) },
  };
}

function schedule() {
  if (flushScheduled || !map) return;
  flushScheduled = true;
  $("#map").dataset.pending = String(pending.size);
  nextFrame(flush);
}

function flush() {
  flushScheduled = false;
  const start = performance.now();
  const added = [], moved = [];
  let n = 0;
  for (const [id, feature] of pending) {
    pending.delete(id);
    if (feature === null) remove(id); else apply(id, feature, added, moved);
    if (++n >= PER_FRAME || performance.now() - start > SLICE_MS) break;
  }
  if (moved.length > 20) { // re-file them in the cluster tree in one pass, not one by one
    const markers = moved.map(([m]) => m);
    cluster.removeLayers(markers);
    for (const [m, at] of moved) m.setLatLng(at);
    added.push(...markers);
  } else {
    for (const [m, at] of moved) m.setLatLng(at); // the cluster group re-files each
  }
  if (added.length) cluster.addLayers(added);
  if (following !== null) {
    const v = vehicles.get(following);
    if (v && v.marker) map.panTo(v.marker.getLatLng(), { animate: false });
  }
  afterChange();
  if (pending.size) schedule(); else $("#map").dataset.pending = "0";
}

function apply(id, feature, added, moved) {
  let v = vehicles.get(id);
  const props = v ? { ...v.props, ...(feature.properties || {}) } : { ...(feature.properties || {}) };
  const geometry = feature.geometry === undefined ? (v ? v.geometry : null) : feature.geometry;
  if (feature.properties && !("state" in feature.properties)) props.state = stateOf(props, geometry);
  if (!v) {
    v = { id, props, geometry, marker: null };
    vehicles.set(id, v);
  } else {
    v.props = props;
    v.geometry = geometry;
  }
  if (!geometry) { // no position (yet): counted, not drawn
    if (v.marker) { cluster.removeLayer(v.marker); v.marker = null; }
    return;
  }
  const [lon, lat] = geometry.coordinates;
  const at = toLatLng(lon, lat);
  if (!v.marker) {
    v.marker = L.marker(at, { icon: new VehicleIcon({ v }), keyboard: false });
    v.marker.vehicleId = id;
    v.marker.on("click", () => emit("select-vehicle", id)); // the vehicle panel (panel.js)
    v.marker.bindPopup(() => popup(v), { autoPan: false });
    added.push(v.marker);
    return;
  }
  if (!v.marker.getLatLng().equals(at)) moved.push([v.marker, at]);
  if (v.marker._icon) paint(v.marker._icon, v); // visible: patch its element in place
  if (v.marker.isPopupOpen()) v.marker.setPopupContent(popup(v));
}

function remove(id) {
  const v = vehicles.get(id);
  if (!v) return;
  if (v.marker) cluster.removeLayer(v.marker);
  vehicles.delete(id);
  if (following === id) follow(null);
}

/** The state of a vehicle whose delta did not say it (a live fix): the rule of
 * maps/vehicle_state.py, on what the page knows (the alarm flag and ACC of the last full answer). */
function stateOf(p, geometry) {
  if (p.in_alarm) return "alarm";
  if (!p.online) return "offline";
  if (!geometry || p.valid === false) return "nofix";
  if ((p.speed_kmh || 0) >= 3) return "moving";
  return p.ignition ? "idle" : "parked";
}

/** A vehicle's icon: drawn from the vehicle's current state each time Leaflet creates it. */
const VehicleIcon = L.Icon.extend({
  options: { iconSize: [28, 28], iconAnchor: [14, 14], popupAnchor: [0, -12], className: "vm" },
  createIcon(old) {
    // the vehicle's element is kept: when the cluster group re-files a moved marker (remove,
    // add) the same element comes back, repainted, instead of a new one being built
    const v = this.options.v;
    let div = old && old.tagName === "DIV" ? old : v.element;
    if (!div) {
      div = v.element = document.createElement("div");
      div.innerHTML = '<i class="hd"></i><svg class="badge" viewBox="0 0 28 28"><circle cx="14" cy="14" r="12.5"/>' +
        '<use x="4" y="4" width="20" height="20"/></svg><span class="plate-label"></span>';
      this._setIconStyles(div, "icon");
    }
    paint(div, v);
    return div;
  },
  createShadow() { return null; },
});

function paint(div, v) {
  const p = v.props;
  const state = p.state || (p.online ? "parked" : "offline");
  const cls = p.class || "other";
  const heading = Number(p.heading) || 0;
  div.className = `leaflet-marker-icon vm leaflet-zoom-animated leaflet-interactive s-${state}`;
  div.dataset.vehicleId = String(v.id);
  div.dataset.state = state;
  div.dataset.class = cls;
  div.dataset.heading = String(heading);
  if (v.geometry) { // where it is (WGS-84) and since when: test hooks of the live feed's tests
    div.dataset.lon = String(v.geometry.coordinates[0]);
    div.dataset.lat = String(v.geometry.coordinates[1]);
  }
  div.dataset.fixTime = p.fix_time || "";
  div.title = `${p.plate || ""} · ${T.classes[cls] || cls} · ${T.states[state] || state}`;
  div.firstChild.style.transform = `rotate(${heading}deg)`;
  div.querySelector("use").setAttribute("href", iconRef(cls));
  div.lastChild.textContent = p.plate || "#" + v.id;
}

function popup(v) {
  const p = v.props;
  const box = document.createElement("div");
  box.className = "vehicle-popup";
  box.innerHTML = `<b>${escapeHtml(p.plate || "#" + v.id)}</b> · ${escapeHtml(T.classes[p.class] || p.class || "")}<br>` +
    `${escapeHtml(p.company || "")}<br>` +
    `<span class="state s-${escapeHtml(p.state || "")}">${escapeHtml(T.states[p.state] || p.state || "")}</span> · ` +
    `${escapeHtml(T.acc[String(p.ignition ?? null)])}<br>` +
    `${T.speed} ${Math.round(p.speed_kmh ?? 0)} km/h · ${T.heading} ${p.heading ?? 0}°<br>` +
    `${T.last_report}: ${escapeHtml(when(p.received_time || p.fix_time) || "—")}<br>`;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "follow";
  button.textContent = following === v.id ? T.unfollow : T.follow;
  button.addEventListener("click", () => follow(following === v.id ? null : v.id));
  box.append(button);
  for (const extend of popupExtenders) extend(box, { id: v.id, props: p, geometry: v.geometry });
  return box;
}

/** Poll GET /api/vehicles every 10 s (on: the default) or not (a live feed that keeps the map
 * current by updateVehicle turns it off; its snapshot comes through setVehicles). */
export function polling(on) {
  polled = on;
  if (!on) { clearInterval(timer); timer = null; } else if (!timer && map) timer = setInterval(loadVehicles, REFRESH_MS);
}

/** Keep vehicle `id` in the middle of the map as it moves (null: stop). */
export function follow(id) {
  following = id;
  const el = $("#map");
  const badge = $("#follow-badge");
  if (id === null) {
    delete el.dataset.follow;
    badge.hidden = true;
    return;
  }
  const v = vehicles.get(id);
  el.dataset.follow = String(id);
  badge.hidden = false;
  badge.querySelector("span").textContent = `${T.following}: ${v ? v.props.plate || "#" + id : "#" + id}`;
  if (v && v.marker) {
    map.closePopup();
    cluster.zoomToShowLayer(v.marker, () => map.panTo(v.marker.getLatLng()));
  }
}

function afterChange() {
  let online = 0, alarm = 0, placed = 0;
  for (const v of vehicles.values()) {
    if (v.props.online) online++;
    if (v.props.in_alarm) alarm++;
    if (v.marker) placed++;
  }
  const total = vehicles.size;
  dense();
  const counters = $("#counters");
  Object.assign(counters.dataset, { total, online, offline: total - online, alarm });
  counters.innerHTML = `${T.vehicles} <b>${total}</b> · <span class="c-online">${T.online} <b>${online}</b></span> · ` +
    `<span class="c-offline">${T.offline} <b>${total - online}</b></span> · ` +
    `<span class="c-alarm">${T.alarm} <b>${alarm}</b></span>`;
  $("#map").dataset.vehicles = String(placed);
  if (fitOnce && placed && !pending.size) {
    fitOnce = false;
    const bounds = L.latLngBounds([...vehicles.values()].filter((v) => v.marker).map((v) => v.marker.getLatLng()));
    map.fitBounds(bounds.pad(0.3), { maxZoom: 13, animate: false });
  }
  emit("vehicles-drawn", placed);
  if (deltas && !announce) { // the other modules (the vehicle list) hear of deltas once a second
    announce = setTimeout(() => {
      announce = null;
      deltas = false;
      emit("vehicles", [...vehicles.values()].map((v) => ({ type: "Feature", id: v.id, geometry: v.geometry, properties: v.props })));
    }, 1000);
  }
}

/** Plates are drawn only while few markers are in view: text is most of what a frame paints
 * (hiding 645 plates took frames under load from 358 to 17 ms median); the badge's tooltip
 * and popup still name each vehicle, and zooming in brings the plates back. */
function dense() {
  const shown = map.getPane("markerPane").childElementCount;
  map.getContainer().classList.toggle("dense", shown > DENSE);
}

function clusterIcon(group) {
  const children = group.getAllChildMarkers();
  let alarm = 0;
  for (const m of children) if (vehicles.get(m.vehicleId)?.props.in_alarm) alarm++;
  const n = group.getChildCount();
  const size = n < 100 ? 34 : n < 1000 ? 42 : 50;
  return L.divIcon({
    html: `<span>${n}</span>${alarm ? `<em>${alarm}</em>` : ""}`,
    className: "vcluster" + (alarm ? " has-alarm" : ""), iconSize: [size, size],
  });
}

// ------------------------------------------------------------------ page furniture

function theme() { return document.body.dataset.theme === "dark" ? "dark" : "light"; }

function setTheme(name) {
  document.body.dataset.theme = name;
  try { localStorage.setItem(THEME_KEY, name); } catch { /* private mode: not remembered */ }
  const button = $("#theme-toggle");
  if (button) button.textContent = name === "dark" ? T.theme_light : T.theme_dark;
  emit("theme", name);
}

function furniture() {
  if ($("#theme-toggle")) return;
  const who = $("#who");
  const themeButton = document.createElement("button");
  themeButton.id = "theme-toggle";
  themeButton.type = "button";
  themeButton.addEventListener("click", () => setTheme(theme() === "dark" ? "light" : "dark"));
  const langButton = document.createElement("button");
  langButton.id = "lang-toggle";
  langButton.type = "button";
  langButton.textContent = T.lang_other;
  langButton.addEventListener("click", () => {
    const url = new URL(location.href);
    if (lang === "en") url.searchParams.delete("lang"); else url.searchParams.set("lang", "en");
    location.href = url.toString();
  });
  who.before(themeButton, langButton);
  const badge = document.createElement("div");
  badge.id = "follow-badge";
  badge.hidden = true;
  badge.innerHTML = '<span></span> <button type="button">×</button>';
  badge.querySelector("button").addEventListener("click", () => follow(null));
  badge.querySelector("button").title = T.unfollow;
  $("#map").after(badge);
  setTheme(theme());
}

// the theme before the first paint of the main view (remembered per browser)
try { if (localStorage.getItem(THEME_KEY) === "dark") document.body.dataset.theme = "dark"; } catch { /* none */ }

onReady(async () => {
  try {
    await start();
  } catch (err) {
    console.error("map:", err);
    emit("error", String(err.message || err));
  }
});

async function start() {
  if (!map) {
    installIcons();
    furniture();
    // the notice sits in the map's own corner: under the page it covered the replay panel
    const notice = $("#basemap-notice");
    if (notice) $("#map").append(notice);
    map = L.map("map", { zoomControl: true, attributionControl: false, maxZoom: 18, minZoom: 2, worldCopyJump: true })
      .setView([35, 105], 4);
    cluster = L.markerClusterGroup({
      maxClusterRadius: 50, disableClusteringAtZoom: 14,
      spiderfyOnMaxZoom: true, showCoverageOnHover: false, iconCreateFunction: clusterIcon,
    }).addTo(map);
    map.on("dragstart", () => { if (following !== null) follow(null); });
    map.on("zoomend moveend", dense);
    // markercluster ignores a pan that lands during its zoom animation, which left the old
    // view's markers drawn and the new view's missing until the next move: replay it
    let missedMove = false;
    map.on("moveend", () => { if (cluster._inZoomAnimation) missedMove = true; });
    cluster.on("animationend", () => {
      if (missedMove && !cluster._inZoomAnimation) { missedMove = false; cluster._moveEnd(); }
      dense();
    });
    const config = await api("GET", "basemap").catch(() => ({ tiles: null, gcj02: false }));
    if (config.gcj02) { // tiles drawn in GCJ-02: every position shifted for display
      toLatLng = (lon, lat) => { const [x, y] = wgs84ToGcj02(lon, lat); return L.latLng(y, x); };
      fromLatLng = (at) => gcj02ToWgs84(at.lng, at.lat);
    }
    const overlays = await drawBaseMap(map, config, toLatLng, theme());
    const layers = { [T.layer_offline]: overlays.offline, [T.layer_labels]: overlays.labels };
    if (overlays.tiles) layers[T.layer_tiles] = overlays.tiles;
    L.control.layers(null, layers, { position: "topright", collapsed: true }).addTo(map);
    L.control.scale({ imperial: false, position: "bottomright" }).addTo(map);
  }
  map.invalidateSize();
  await loadVehicles();
  if (!timer && polled) timer = setInterval(loadVehicles, REFRESH_MS);
}
on("logout", () => { clearInterval(timer); timer = null; fitOnce = true; follow(null); setVehicles([]); });
// The live feed (live.js): the whole state on each (re)connection, then each vehicle's new
// positions; while it is connected the 10 s REST poll is off. Alarm changes re-read the
// vehicles (their in-alarm flags) at most every 2 s.
on("snapshot", ({ vehicles: features }) => { polling(false); setVehicles(features); });
on("vehicle", (feature) => updateVehicle(feature));
let alarmReload = null;
on("alert", () => {
  if (!alarmReload) alarmReload = setTimeout(() => { alarmReload = null; loadVehicles(); }, 2000);
});
on("alerts-changed", () => loadVehicles());
on("alerts-changed-here", () => loadVehicles()); // an alarm handled here: its vehicle may leave "in alarm"
on("select-vehicle", (id) => { // chosen elsewhere (the vehicle list): show it and its popup
  if (typeof id === "object" && id !== null && id.show === false) return; // the caller places the map
  const v = vehicles.get(typeof id === "object" && id !== null ? id.id : id);
  // after the others' reactions (the panel re-centres the map): then show it, popup open
  if (v && v.marker) setTimeout(() => cluster.zoomToShowLayer(v.marker, () => v.marker.openPopup()), 300);
});

async function loadVehicles() {
  const mine = ++latest;
  const features = [];
  try {
    let after = 0;
    for (let page = 0; page < 50 && after !== null; page++) { // bounded: 50 x 2000 vehicles
      const data = await api("GET", "vehicles?limit=2000&after=" + after);
      features.push(...data.features);
      after = data.next_after;
    }
  } catch (err) {
    emit("error", err.message);
    return;
  }
  if (mine !== latest) return;
  setVehicles(features);
  await drained();
  emit("vehicles", features);
}

/** Resolves once every queued change is on the map. */
function drained() {
  return new Promise((resolve) => {
    const check = () => (pending.size ? nextFrame(check) : resolve());
    check();
  });
}
