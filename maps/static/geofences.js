// The geofence editor: the fences in scope on the map and in a panel (header button), drawn
// and edited with Leaflet-Geoman (circle, rectangle, polygon, and a corridor drawn as a line
// with a width), a form for name, kind, speed limit, time windows (Beijing time) and
// applies-to, GeoJSON import and export. The server decides who may edit what (features carry
// "editable"); the page only hides what it would refuse.
// Test hooks: #geofence-panel[data-mode] (idle | drawing | editing), [data-count] (fences
// listed), [data-saved] (id of the last fence saved); list items have data-fence-id.
"use strict";
import { $, T, addStrings, api, emit, escapeHtml, on, onReady, session } from "./core.js";
import { getMap, mapLatLng, wgsLonLat } from "./map.js";
import { CLASS_NAMES } from "./vehicles.js";

addStrings({
  gf_button: "电子围栏", gf_title: "电子围栏", gf_close: "关闭", gf_draw: "绘制",
  gf_shapes: { circle: "圆形", rectangle: "矩形", polygon: "多边形", corridor: "路线走廊" },
  gf_kinds: { zone: "区域", forbidden: "禁行区", speed_limit: "限速区", route: "路线", hazard: "危险路段" },
  gf_name: "名称", gf_kind: "类型", gf_speed: "限速 (km/h)", gf_radius: "半径 (米)", gf_width: "走廊宽度 (米)",
  gf_windows: "生效时段（北京时间）", gf_add_window: "添加时段", gf_applies: "适用车辆",
  gf_vehicles: "车牌（逗号分隔，空 = 全部）", gf_save: "保存", gf_delete: "删除", gf_cancel: "取消",
  gf_import: "导入 GeoJSON", gf_export: "导出 GeoJSON", gf_readonly: "平台围栏（只读）",
  gf_confirm_delete: "删除围栏", gf_unknown_plate: "未知车牌", gf_imported: "导入完成",
  gf_days: ["一", "二", "三", "四", "五", "六", "日"], gf_draw_hint: "在地图上绘制；折线/多边形双击或点击首点结束",
  gf_none: "暂无围栏", gf_owner: "所属", gf_platform: "平台（全部企业）",
}, {
  gf_button: "Geofences", gf_title: "Geofences", gf_close: "Close", gf_draw: "Draw",
  gf_shapes: { circle: "Circle", rectangle: "Rectangle", polygon: "Polygon", corridor: "Corridor" },
  gf_kinds: { zone: "Zone", forbidden: "Forbidden", speed_limit: "Speed limit", route: "Route", hazard: "Hazard" },
  gf_name: "Name", gf_kind: "Kind", gf_speed: "Speed limit (km/h)", gf_radius: "Radius (m)", gf_width: "Corridor width (m)",
  gf_windows: "In force (Beijing time)", gf_add_window: "Add a window", gf_applies: "Applies to",
  gf_vehicles: "Plates (comma separated, empty = all)", gf_save: "Save", gf_delete: "Delete", gf_cancel: "Cancel",
  gf_import: "Import GeoJSON", gf_export: "Export GeoJSON", gf_readonly: "Platform fence (read-only)",
  gf_confirm_delete: "Delete geofence", gf_unknown_plate: "Unknown plate", gf_imported: "Imported",
  gf_days: ["Mo", "Tu", "We", "Th", "Fr", "Sa", "Su"], gf_draw_hint: "Draw on the map; finish a line or polygon by double-clicking or clicking its first point",
  gf_none: "No geofences", gf_owner: "Owner", gf_platform: "Platform (every company)",
});

const GEOMAN = { circle: "Circle", rectangle: "Rectangle", polygon: "Polygon", corridor: "Line" };
const COLOURS = { zone: "#2980b9", forbidden: "#c0392b", speed_limit: "#d35400", route: "#8e44ad", hazard: "#f1c40f" };
const DEFAULT_WIDTH = 50;
let fences = []; // features from the API
let layers = null; // the fences on the map
let current = null; // {shape, layer, feature (null: new)}
let plates = new Map(); // plate -> vehicle id, and back
let platesById = new Map();
let companies = new Map(); // company id -> name, from the vehicles in scope

const panel = () => $("#geofence-panel");
const r7 = (x) => Math.round(x * 1e7) / 1e7;

function build() {
  const p = panel();
  p.innerHTML = `
    <div class="gf-head"><h2>${T.gf_title} (<span id="gf-count">0</span>)</h2>
      <button type="button" id="gf-close" title="${T.gf_close}">×</button></div>
    <div class="gf-tools">${Object.keys(GEOMAN).map((s) =>
      `<button type="button" data-draw="${s}">${T.gf_shapes[s]}</button>`).join("")}</div>
    <div class="gf-tools">
      <label class="gf-file">${T.gf_import}<input id="gf-import" type="file" accept=".geojson,.json,application/geo+json,application/json"></label>
      <button type="button" id="gf-export">${T.gf_export}</button></div>
    <p id="gf-message" role="status"></p>
    <form id="gf-form" hidden novalidate>
      <p id="gf-shape"></p>
      <label>${T.gf_name}<input id="gf-name" maxlength="100" required></label>
      <label>${T.gf_kind}<select id="gf-kind">${Object.keys(COLOURS).map((k) =>
        `<option value="${k}">${T.gf_kinds[k]}</option>`).join("")}</select></label>
      <label id="gf-owner-row">${T.gf_owner}<select id="gf-owner"></select></label>
      <label>${T.gf_speed}<input id="gf-speed" type="number" min="1" max="200" step="1"></label>
      <label id="gf-radius-row">${T.gf_radius}<input id="gf-radius" type="number" min="1" step="1"></label>
      <label id="gf-width-row">${T.gf_width}<input id="gf-width" type="number" min="1" step="1"></label>
      <fieldset><legend>${T.gf_windows}</legend><div id="gf-windows"></div>
        <button type="button" id="gf-add-window">${T.gf_add_window}</button></fieldset>
      <fieldset><legend>${T.gf_applies}</legend><div id="gf-classes">${Object.keys(CLASS_NAMES.zh).map((k) =>
        `<label><input type="checkbox" value="${k}">${T.classes[k]}</label>`).join("")}</div>
        <label>${T.gf_vehicles}<input id="gf-vehicles"></label></fieldset>
      <p id="gf-error" role="alert"></p>
      <div class="gf-tools"><button type="submit" id="gf-save">${T.gf_save}</button>
        <button type="button" id="gf-delete">${T.gf_delete}</button>
        <button type="button" id="gf-cancel">${T.gf_cancel}</button></div>
    </form>
    <p id="gf-hint" hidden>${T.gf_draw_hint}</p>
    <ul id="gf-list"></ul>`;
  p.dataset.mode = "idle";
  $("#gf-close").addEventListener("click", () => { cancel(); p.hidden = true; getMap().invalidateSize(); });
  for (const b of p.querySelectorAll("[data-draw]")) b.addEventListener("click", () => startDrawing(b.dataset.draw));
  $("#gf-form").addEventListener("submit", (e) => { e.preventDefault(); save(); });
  $("#gf-cancel").addEventListener("click", cancel);
  $("#gf-delete").addEventListener("click", remove);
  $("#gf-add-window").addEventListener("click", () => addWindow({}));
  $("#gf-radius").addEventListener("input", () => {
    const v = Number($("#gf-radius").value);
    if (current && current.shape === "circle" && v > 0) current.layer.setRadius(v);
  });
  $("#gf-width").addEventListener("input", () => styleCorridor(current && current.layer));
  $("#gf-import").addEventListener("change", importFile);
  $("#gf-export").addEventListener("click", exportFile);
  $("#gf-list").addEventListener("click", (e) => {
    const li = e.target.closest("[data-fence-id]");
    if (li) edit(Number(li.dataset.fenceId));
  });
}

// ------------------------------------------------------------------ map <-> GeoJSON

// Stored in WGS-84, drawn where the base map puts it (GCJ-02 on Chinese tiles, as the
// vehicles): mapLatLng on the way in, wgsLonLat (its inverse) for what was drawn.
const latlngs = (coords) => coords.map(([x, y]) => mapLatLng(x, y));
const stored = (at) => wgsLonLat(at).map(r7);
/** GeoJSON coordinates (any nesting) from map positions back to WGS-84. */
const unshift = (c) => (typeof c[0] === "number" ? stored(L.latLng(c[1], c[0])) : c.map(unshift));

function toLayer(f) {
  const p = f.properties;
  const g = f.geometry;
  const style = { color: COLOURS[p.kind] || "#555", weight: 2, fillOpacity: 0.15,
    dashArray: f.editable ? null : "6 4" };
  let layer;
  if (p.shape === "circle") layer = L.circle(mapLatLng(g.coordinates[0], g.coordinates[1]), { ...style, radius: p.radius });
  else if (p.shape === "rectangle") layer = L.rectangle(L.polygon(latlngs(g.coordinates[0])).getBounds(), style);
  else if (p.shape === "polygon") layer = L.polygon(g.coordinates.map(latlngs), style);
  else layer = L.polyline(latlngs(g.coordinates), { ...style, opacity: 0.6 });
  layer.fenceId = f.id;
  layer.bindTooltip(escapeHtml(p.name)); // Leaflet puts a string tooltip in as HTML
  if (p.shape === "corridor") styleCorridor(layer, p.width);
  return layer;
}

/** A corridor's line drawn about as wide as the corridor (pixels follow the zoom). */
function styleCorridor(layer, width) {
  if (!layer || !(layer instanceof L.Polyline) || layer instanceof L.Polygon) return;
  const map = getMap();
  const metres = width || Number($("#gf-width").value) || DEFAULT_WIDTH;
  const lat = layer.getBounds().getCenter().lat;
  const metresPerPixel = 40075016.686 * Math.cos(lat * Math.PI / 180) / Math.pow(2, map.getZoom() + 8);
  layer.setStyle({ weight: Math.max(3, Math.min(60, metres / metresPerPixel)), lineCap: "round" });
}

function geometryOf(shape, layer) {
  if (shape === "circle") return { type: "Point", coordinates: stored(layer.getLatLng()) };
  if (shape === "rectangle") { // its corners back to WGS-84 (metres apart from a true box at most)
    const b = layer.getBounds();
    const [w, s] = stored(b.getSouthWest());
    const [e, n] = stored(b.getNorthEast());
    return { type: "Polygon", coordinates: [[[w, s], [e, s], [e, n], [w, n], [w, s]]] };
  }
  const g = layer.toGeoJSON(10).geometry;
  return { type: g.type, coordinates: unshift(g.coordinates) };
}

// ------------------------------------------------------------------ list and loading

async function load() {
  let data;
  try {
    data = await api("GET", "geofences");
  } catch (err) {
    emit("error", err.message);
    return;
  }
  fences = data.features;
  const map = getMap();
  if (!layers && map) layers = L.featureGroup().addTo(map);
  if (layers) {
    layers.clearLayers();
    for (const f of fences) if (!current || !current.feature || current.feature.id !== f.id) layers.addLayer(toLayer(f));
  }
  const list = $("#gf-list");
  list.replaceChildren(...fences.map((f) => {
    const li = document.createElement("li");
    li.dataset.fenceId = String(f.id);
    li.dataset.editable = String(f.editable);
    li.innerHTML = `<span class="gf-swatch" style="background:${COLOURS[f.properties.kind] || "#555"}"></span>` +
      `<span>${escapeHtml(f.properties.name)}</span><small>${escapeHtml(T.gf_shapes[f.properties.shape] || "")} · ` +
      `${escapeHtml(T.gf_kinds[f.properties.kind] || f.properties.kind)}${f.editable ? "" : " · " + T.gf_readonly}</small>`;
    return li;
  }));
  if (!fences.length) list.innerHTML = `<li class="gf-empty">${T.gf_none}</li>`;
  $("#gf-count").textContent = String(fences.length);
  panel().dataset.count = String(fences.length);
}

// ------------------------------------------------------------------ drawing and editing

function startDrawing(shape) {
  cancel();
  const map = getMap();
  panel().dataset.mode = "drawing";
  panel().dataset.drawing = shape;
  $("#gf-hint").hidden = false;
  map.pm.enableDraw(GEOMAN[shape], { snappable: false, continueDrawing: false,
    pathOptions: { color: "#16a085" }, templineStyle: { color: "#16a085" } });
}

function drawn({ layer }) {
  const shape = panel().dataset.drawing;
  if (!shape || panel().dataset.mode !== "drawing") return;
  getMap().pm.disableDraw();
  $("#gf-hint").hidden = true;
  open({ shape, layer, feature: null });
}

function open(editing) {
  current = editing;
  const f = editing.feature;
  const p = f ? f.properties : { kind: "zone" };
  const editable = !f || f.editable;
  panel().dataset.mode = "editing";
  $("#gf-form").hidden = false;
  $("#gf-shape").textContent = T.gf_shapes[editing.shape] + (f ? " #" + f.id : "") + (editable ? "" : " · " + T.gf_readonly);
  $("#gf-name").value = p.name || "";
  $("#gf-kind").value = p.kind || "zone";
  $("#gf-speed").value = p.speed_limit ?? "";
  // admins and supervisors choose the owner (a dispatcher's fences are always its company's)
  const owner = f ? f.company_id : null;
  $("#gf-owner-row").hidden = !session.user || session.user.role === "dispatcher";
  $("#gf-owner").replaceChildren(new Option(T.gf_platform, ""), ...[...companies].map(([id, name]) =>
    new Option(name, String(id))));
  if (owner !== null && !companies.has(owner)) $("#gf-owner").append(new Option("#" + owner, String(owner)));
  $("#gf-owner").value = owner === null ? "" : String(owner);
  $("#gf-radius-row").hidden = editing.shape !== "circle";
  $("#gf-width-row").hidden = editing.shape !== "corridor";
  if (editing.shape === "circle") $("#gf-radius").value = Math.round(editing.layer.getRadius());
  $("#gf-width").value = p.width ?? DEFAULT_WIDTH;
  $("#gf-windows").replaceChildren();
  for (const w of p.windows || []) addWindow(w);
  const applies = p.applies_to || {};
  for (const box of $("#gf-classes").querySelectorAll("input")) box.checked = (applies.classes || []).includes(box.value);
  $("#gf-vehicles").value = (applies.vehicles || []).map((id) => platesById.get(id) || "#" + id).join(", ");
  $("#gf-error").textContent = "";
  $("#gf-delete").hidden = !f || !editable;
  $("#gf-save").hidden = !editable;
  for (const el of $("#gf-form").querySelectorAll("input, select")) el.disabled = !editable;
  if (editable) {
    editing.layer.pm.enable({ snappable: false });
    editing.layer.on("pm:edit", () => {
      if (editing.shape === "circle") $("#gf-radius").value = Math.round(editing.layer.getRadius());
    });
  }
  if (editing.shape === "corridor") styleCorridor(editing.layer, Number($("#gf-width").value));
  $("#gf-name").focus();
}

function edit(id) {
  const f = fences.find((x) => x.id === id);
  if (!f) return;
  cancel();
  const layer = layers && layers.getLayers().find((l) => l.fenceId === id);
  if (!layer) return;
  layers.removeLayer(layer);
  layer.addTo(getMap());
  getMap().fitBounds(layer.getBounds(), { maxZoom: 16, padding: [40, 40] });
  open({ shape: f.properties.shape, layer, feature: f });
}

function close() {
  if (current) {
    if (current.layer.pm) current.layer.pm.disable();
    current.layer.remove();
  }
  current = null;
  const map = getMap();
  if (map && map.pm) map.pm.disableDraw();
  $("#gf-form").hidden = true;
  $("#gf-hint").hidden = true;
  panel().dataset.mode = "idle";
  delete panel().dataset.drawing;
}

function cancel() {
  const had = current && current.feature;
  close();
  if (had) load(); // put the stored shape back
}

function windowsOf() {
  const out = [];
  for (const row of $("#gf-windows").children) {
    const days = [...row.querySelectorAll("input[type=checkbox]:checked")].map((b) => Number(b.value));
    const from = row.querySelector(".gf-from").value;
    const toInput = row.querySelector(".gf-to");
    // <input type=time> cannot say 24:00: an untouched 23:59 that was 24:00 stays 24:00
    const to = toInput.value === "23:59" && toInput.dataset.original === "24:00" ? "24:00" : toInput.value;
    const w = {};
    if (days.length) w.days = days;
    if (from) w.from = from;
    if (to) w.to = to;
    if (Object.keys(w).length) out.push(w);
  }
  return out;
}

function addWindow(w) {
  const row = document.createElement("div");
  row.className = "gf-window";
  row.innerHTML = T.gf_days.map((d, i) => `<label><input type="checkbox" value="${i + 1}"` +
    `${(w.days || []).includes(i + 1) ? " checked" : ""}>${d}</label>`).join("") +
    `<input class="gf-from" type="time" value="${escapeHtml(w.from || "")}"> – ` +
    `<input class="gf-to" type="time" data-original="${escapeHtml(w.to || "")}" ` +
    `value="${escapeHtml(w.to === "24:00" ? "23:59" : w.to || "")}">` +
    `<button type="button" class="gf-remove">×</button>`;
  row.querySelector(".gf-remove").addEventListener("click", () => row.remove());
  $("#gf-windows").append(row);
}

/** The Feature the form and the layer describe; throws with a message for the user. */
function featureOf() {
  const { shape, layer, feature } = current;
  const props = { ...(feature ? feature.properties : {}) };
  props.name = $("#gf-name").value.trim();
  props.kind = $("#gf-kind").value;
  props.shape = shape;
  const speed = $("#gf-speed").value;
  if (speed === "") delete props.speed_limit; else props.speed_limit = Number(speed);
  if (shape === "circle") props.radius = Math.round(layer.getRadius());
  if (shape === "corridor") props.width = Number($("#gf-width").value);
  const windows = windowsOf();
  if (windows.length) props.windows = windows; else delete props.windows;
  const classes = [...$("#gf-classes").querySelectorAll("input:checked")].map((b) => b.value);
  const vehicles = [];
  for (const plate of $("#gf-vehicles").value.split(/[,，\s]+/).filter(Boolean)) {
    const id = plate.startsWith("#") ? Number(plate.slice(1)) : plates.get(plate.toUpperCase());
    if (!id) throw new Error(T.gf_unknown_plate + ": " + plate);
    vehicles.push(id);
  }
  const applies = { ...(props.applies_to || {}) };
  if (classes.length) applies.classes = classes; else delete applies.classes;
  if (vehicles.length) applies.vehicles = vehicles; else delete applies.vehicles;
  if (Object.keys(applies).length) props.applies_to = applies; else delete props.applies_to;
  const out = { type: "Feature", geometry: geometryOf(shape, layer), properties: props };
  if (!$("#gf-owner-row").hidden) out.company_id = $("#gf-owner").value ? Number($("#gf-owner").value) : null;
  else if (feature) out.company_id = feature.company_id;
  return out;
}

async function save() {
  $("#gf-error").textContent = "";
  let body;
  try {
    body = featureOf();
  } catch (err) {
    $("#gf-error").textContent = err.message;
    return;
  }
  $("#gf-save").disabled = true;
  try {
    const f = current.feature;
    const saved = f ? await api("PUT", `geofences/${f.id}`, body) : await api("POST", "geofences", body);
    close();
    panel().dataset.saved = String(saved.id);
    await load();
  } catch (err) {
    $("#gf-error").textContent = err.message;
  } finally {
    $("#gf-save").disabled = false;
  }
}

async function remove() {
  const f = current && current.feature;
  if (!f || !confirm(T.gf_confirm_delete + " " + f.properties.name + "?")) return;
  try {
    await api("DELETE", `geofences/${f.id}`);
    close();
    await load();
  } catch (err) {
    $("#gf-error").textContent = err.message;
  }
}

// ------------------------------------------------------------------ files

async function importFile(event) {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  $("#gf-message").textContent = "";
  try {
    const data = JSON.parse(await file.text());
    const result = await api("POST", "geofences/import", data);
    $("#gf-message").textContent = `${T.gf_imported}: +${result.added} / ~${result.updated} / =${result.unchanged}`;
    await load();
  } catch (err) {
    $("#gf-message").textContent = file.name + ": " + err.message;
  }
}

async function exportFile() {
  try {
    const data = await api("GET", "geofences/export");
    const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/geo+json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "geofences.geojson";
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  } catch (err) {
    $("#gf-message").textContent = err.message;
  }
}

// ------------------------------------------------------------------ wiring

build();
$("#geofences-open").textContent = T.gf_button;
$("#geofences-open").addEventListener("click", () => {
  const p = panel();
  p.hidden = !p.hidden;
  if (p.hidden) cancel(); else load();
  const map = getMap();
  if (map) map.invalidateSize(); // the panel took (or gave back) the map's width
});
on("vehicles", (features) => {
  plates = new Map();
  platesById = new Map();
  companies = new Map();
  for (const f of features) {
    if (f.properties.company_id != null) companies.set(f.properties.company_id, f.properties.company || "#" + f.properties.company_id);
    if (!f.properties.plate) continue;
    plates.set(f.properties.plate.toUpperCase(), f.id);
    platesById.set(f.id, f.properties.plate);
  }
});
on("logout", () => { close(); panel().hidden = true; if (layers) layers.clearLayers(); });
onReady(async () => {
  const map = getMap();
  if (map && !map._gfWired) {
    map._gfWired = true;
    map.on("pm:create", drawn);
    map.on("zoomend", () => {
      if (layers) for (const l of layers.getLayers()) if (l.fenceId && !(l instanceof L.Polygon) && l instanceof L.Polyline) {
        styleCorridor(l, (fences.find((f) => f.id === l.fenceId) || {}).properties?.width);
      }
      if (current && current.shape === "corridor") styleCorridor(current.layer);
    });
  }
  await load();
});
