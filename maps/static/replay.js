// Track replay: a vehicle's track over a time range (Beijing time) coloured by speed, its stops
// and alarms, played back at 1x-64x with a timeline slider and a speed chart, and exported.
// Opened from the header button, a vehicle's popup, or by any module:
// emit("replay", {vehicleId, from?, to?}) (from/to ISO 8601; default the last 24 hours).
// The server simplifies long tracks (GET api/vehicles/{id}/track); playback interpolates
// between the kept fixes by time. Test hooks (DOM state): #replay[data-state] idle | loading |
// ready | error, data-points, data-load-ms (request to drawn; data-fetch-ms of it the API's
// answer, parsed), data-t (playback time, ms), data-lon/data-lat
// (the moving marker), data-playing.
"use strict";
import { $, T, addStrings, api, emit, escapeHtml, on, when } from "./core.js";
import { addPopupExtender, getMap, mapLatLng } from "./map.js";

addStrings({
  replay: "轨迹回放", replay_vehicle: "车辆", replay_from: "开始", replay_to: "结束",
  replay_load: "查询", replay_play: "播放", replay_pause: "暂停", replay_close: "关闭",
  replay_print: "打印地图", replay_points: "点", replay_of: "/", replay_stop: "停车",
  replay_minutes: "分钟", replay_speed: "速度", replay_empty: "该时段没有轨迹",
  replay_chart: "速度 (km/h)", replay_alarm: "报警",
}, {
  replay: "Track replay", replay_vehicle: "Vehicle", replay_from: "From", replay_to: "To",
  replay_load: "Show", replay_play: "Play", replay_pause: "Pause", replay_close: "Close",
  replay_print: "Print map", replay_points: "points", replay_of: "of", replay_stop: "Stop",
  replay_minutes: "min", replay_speed: "Speed", replay_empty: "No track in this range",
  replay_chart: "Speed (km/h)", replay_alarm: "Alarm",
});

/** Speed bands (upper bound km/h, colour): the same as the print map's (maps/tracks.py). */
const BANDS = [[30, "#2c7bb6"], [60, "#1a9641"], [90, "#fdae61"], [120, "#d7191c"]];
const FASTEST = "#7b3294";
const RATES = [1, 2, 4, 8, 16, 32, 64];
const HOUR = 3600 * 1000;
const colour = (kmh) => (BANDS.find(([top]) => kmh < top) || [0, FASTEST])[1];

const panel = $("#replay");
const state = {
  vehicleId: null, track: null, layers: null, marker: null, t: 0, playing: false,
  rate: 1, frame: null, wall: 0, request: 0, chart: null,
};

// ------------------------------------------------------------------ opening and the form

$("#replay-open").addEventListener("click", () => openPanel({}));
// A vehicle's popup gets a replay button (map.js rebuilds popups on updates: an extender
// is called on each build, so the button stays).
addPopupExtender((box, vehicle) => {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "replay-button";
  button.dataset.vehicleId = String(vehicle.id);
  button.textContent = T.replay;
  button.addEventListener("click", () => emit("replay", { vehicleId: vehicle.id }));
  box.append(document.createElement("br"), button);
});
$("#replay-close").addEventListener("click", closePanel);
on("replay", (detail) => openPanel(detail || {}));
on("logout", closePanel);
on("vehicles", (features) => fillVehicles(features));

function fillVehicles(features) {
  const select = $("#replay-vehicle");
  const chosen = select.value;
  select.replaceChildren(...features.map((f) => {
    const option = document.createElement("option");
    option.value = String(f.id);
    option.textContent = f.properties.plate || "#" + f.id;
    return option;
  }));
  if (chosen) select.value = chosen;
}

/** "YYYY-MM-DDTHH:MM" of this instant in Beijing time (what a datetime-local input holds). */
const beijingInput = (ms) => new Date(ms + 8 * HOUR).toISOString().slice(0, 16);
/** A datetime-local value read as Beijing time, as ISO 8601 with its offset. */
const fromInput = (value) => (value.length === 16 ? value + ":00" : value) + "+08:00";

function openPanel({ vehicleId, from, to }) {
  panel.hidden = false;
  const now = Date.now();
  if (!$("#replay-to").value || to) $("#replay-to").value = beijingInput(to ? Date.parse(to) : now);
  if (!$("#replay-from").value || from) {
    $("#replay-from").value = beijingInput(from ? Date.parse(from) : now - 24 * HOUR);
  }
  if (vehicleId !== undefined) {
    const select = $("#replay-vehicle");
    if (!select.querySelector(`option[value="${Number(vehicleId)}"]`)) {
      const option = document.createElement("option");
      option.value = String(Number(vehicleId));
      option.textContent = "#" + vehicleId;
      select.append(option);
    }
    select.value = String(Number(vehicleId));
  }
  getMap()?.closePopup();
  getMap()?.invalidateSize();
  if (vehicleId !== undefined) load();
}

function closePanel() {
  pause();
  clearLayers();
  state.track = null;
  panel.hidden = true;
  panel.dataset.state = "idle";
  getMap()?.invalidateSize();
}

$("#replay-form").addEventListener("submit", (event) => {
  event.preventDefault();
  load();
});

// ------------------------------------------------------------------ loading and drawing

async function load() {
  const vehicleId = $("#replay-vehicle").value;
  if (!vehicleId) return;
  const mine = ++state.request;
  const query = `from=${encodeURIComponent(fromInput($("#replay-from").value))}` +
    `&to=${encodeURIComponent(fromInput($("#replay-to").value))}`;
  pause();
  panel.dataset.state = "loading";
  $("#replay-info").textContent = "";
  const started = performance.now();
  let data;
  try {
    data = await api("GET", `vehicles/${vehicleId}/track?${query}`);
  } catch (err) {
    if (mine !== state.request) return;
    panel.dataset.state = "error";
    $("#replay-info").textContent = err.message;
    return;
  }
  if (mine !== state.request) return;  // a newer request is on its way
  panel.dataset.fetchMs = String(Math.round(performance.now() - started));
  state.vehicleId = vehicleId;
  for (const [id, ext] of [["#replay-gpx", "gpx"], ["#replay-geojson", "geojson"],
    ["#replay-html", "html"]]) {
    $(id).href = `api/vehicles/${vehicleId}/track.${ext}?${query}`;
  }
  draw(data);
  panel.dataset.points = String(state.track ? state.track.times.length : 0);
  panel.dataset.loadMs = String(Math.round(performance.now() - started));
  panel.dataset.state = "ready";
}

function clearLayers() {
  if (state.layers) state.layers.remove();
  state.layers = null;
  state.marker = null;
}

function draw(collection) {
  clearLayers();
  const map = getMap();
  const line = collection.features.find((f) => f.properties.kind === "track");
  const p = line.properties;
  const coords = !line.geometry ? [] :
    line.geometry.type === "Point" ? [line.geometry.coordinates] : line.geometry.coordinates;
  state.layers = L.layerGroup().addTo(map);
  const renderer = L.canvas({ padding: 0.3 });
  $("#replay-summary").textContent = `${p.plate || ""} · ${p.points} ${T.replay_of} ` +
    `${p.points_total} ${T.replay_points}`;
  if (!coords.length) {
    state.track = null;
    $("#replay-info").textContent = T.replay_empty;
    drawChart();
    return;
  }
  state.track = {
    coords, speeds: p.speeds, times: p.times.map((iso) => Date.parse(iso)),
  };
  // one polyline per run of one colour: a day is dozens of layers, not thousands
  // drawn where the base map puts a WGS-84 point (GCJ-02 on Chinese tiles), as the vehicles
  const at = ([lon, lat]) => mapLatLng(lon, lat);
  let run = [at(coords[0])];
  let runColour = colour(p.speeds[1] ?? p.speeds[0]);
  for (let i = 1; i < coords.length; i++) {
    const c = colour(p.speeds[i]);
    if (c !== runColour) {
      L.polyline(run, { color: runColour, weight: 4, opacity: 0.9, renderer }).addTo(state.layers);
      run = [run[run.length - 1]];
      runColour = c;
    }
    run.push(at(coords[i]));
  }
  L.polyline(run, { color: runColour, weight: 4, opacity: 0.9, renderer }).addTo(state.layers);
  const bounds = L.latLngBounds(coords.map(at));
  for (const f of collection.features) {
    if (!f.geometry || f.properties.kind === "track") continue;
    const point = at(f.geometry.coordinates);
    bounds.extend(point); // an alarm off the kept line is still in view
    const q = f.properties;
    const isStop = q.kind === "stop";
    const label = isStop
      ? `${T.replay_stop} ${Math.round(q.duration_s / 60)} ${T.replay_minutes}<br>${when(q.start)}`
      : `${escapeHtml((T.types && T.types[q.type]) || q.type)}<br>${when(q.start)}`;
    L.circleMarker(point, {
      radius: isStop ? 6 : 7, weight: 2, color: "#fff", fillOpacity: 1,
      fillColor: isStop ? "#2c3e50" : "#c0392b", className: "replay-" + q.kind,
    }).bindTooltip(label).addTo(state.layers);
  }
  state.marker = L.circleMarker(at(coords[0]), {
    radius: 9, weight: 3, color: "#fff", fillColor: "#e67e22", fillOpacity: 1,
  }).addTo(state.layers);
  panel.dataset.markers = String(state.layers.getLayers().length);
  map.fitBounds(bounds.pad(0.1));
  seek(state.track.times[0]);
}

// ------------------------------------------------------------------ playback

$("#replay-play").addEventListener("click", () => (state.playing ? pause() : play()));
$("#replay-rate").replaceChildren(...RATES.map((r) => {
  const option = document.createElement("option");
  option.value = String(r);
  option.textContent = r + "×";
  return option;
}));
$("#replay-rate").addEventListener("change", (e) => { state.rate = Number(e.target.value); });
$("#replay-slider").addEventListener("input", (e) => {
  if (!state.track) return;
  const { times } = state.track;
  seek(times[0] + (times[times.length - 1] - times[0]) * (Number(e.target.value) / 1000));
});
$("#replay-chart").addEventListener("click", (e) => {
  if (!state.track) return;
  const rect = e.target.getBoundingClientRect();
  const { times } = state.track;
  seek(times[0] + (times[times.length - 1] - times[0]) * ((e.clientX - rect.left) / rect.width));
});

function play() {
  if (!state.track) return;
  const { times } = state.track;
  if (state.t >= times[times.length - 1]) seek(times[0]);
  state.playing = true;
  state.wall = performance.now();
  panel.dataset.playing = "true";
  $("#replay-play").textContent = T.replay_pause;
  state.frame = requestAnimationFrame(tick);
}

function pause() {
  state.playing = false;
  panel.dataset.playing = "false";
  if (state.frame) cancelAnimationFrame(state.frame);
  state.frame = null;
  $("#replay-play").textContent = T.replay_play;
}

/** Advance by the real time elapsed times the rate (a slow frame skips ahead, never drifts). */
function tick(now) {
  if (!state.playing || !state.track) return;
  const elapsed = Math.max(0, now - state.wall);
  state.wall = now;
  const { times } = state.track;
  const end = times[times.length - 1];
  seek(Math.min(end, state.t + elapsed * state.rate));
  if (state.t >= end) pause(); else state.frame = requestAnimationFrame(tick);
}

/** Index of the last kept fix at or before t (binary search). */
function indexAt(t) {
  const { times } = state.track;
  let lo = 0;
  let hi = times.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (times[mid] <= t) lo = mid; else hi = mid - 1;
  }
  return lo;
}

function seek(t) {
  if (!state.track) return;
  const { times, coords, speeds } = state.track;
  state.t = Math.max(times[0], Math.min(t, times[times.length - 1]));
  const i = indexAt(state.t);
  const j = Math.min(i + 1, times.length - 1);
  const f = j > i ? (state.t - times[i]) / (times[j] - times[i]) : 0;
  const lon = coords[i][0] + (coords[j][0] - coords[i][0]) * f;
  const lat = coords[i][1] + (coords[j][1] - coords[i][1]) * f;
  state.marker.setLatLng(mapLatLng(lon, lat));
  const span = times[times.length - 1] - times[0] || 1;
  $("#replay-slider").value = String(Math.round(((state.t - times[0]) / span) * 1000));
  $("#replay-info").textContent = `${when(new Date(state.t).toISOString())} · ` +
    `${T.replay_speed} ${speeds[i].toFixed(0)} km/h`;
  panel.dataset.t = String(Math.round(state.t));
  panel.dataset.lon = lon.toFixed(6);
  panel.dataset.lat = lat.toFixed(6);
  drawChart();
}

// ------------------------------------------------------------------ the speed chart

/** Speed against time, drawn once per track and size into an offscreen canvas; each frame
 * copies it and adds the playback cursor. */
function drawChart() {
  const canvas = $("#replay-chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  const w = Math.round(width * ratio);
  const h = Math.round(height * ratio);
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
    state.chart = null;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, w, h);
  if (!state.track || !width) return;
  if (!state.chart || state.chart.track !== state.track) {
    state.chart = { track: state.track, image: chartImage(width, height, ratio) };
  }
  ctx.drawImage(state.chart.image, 0, 0);
  const { times } = state.track;
  const span = times[times.length - 1] - times[0] || 1;
  const cursor = ((state.t - times[0]) / span) * width * ratio;
  ctx.strokeStyle = "#e67e22";
  ctx.lineWidth = 2 * ratio;
  ctx.beginPath();
  ctx.moveTo(cursor, 0);
  ctx.lineTo(cursor, h - 12 * ratio);
  ctx.stroke();
}

function chartImage(width, height, ratio) {
  const image = document.createElement("canvas");
  image.width = Math.round(width * ratio);
  image.height = Math.round(height * ratio);
  const ctx = image.getContext("2d");
  ctx.scale(ratio, ratio);
  const { times, speeds } = state.track;
  const top = Math.max(60, ...speeds) * 1.1;
  const span = times[times.length - 1] - times[0] || 1;
  const x = (t) => ((t - times[0]) / span) * width;
  const y = (v) => height - 14 - (v / top) * (height - 20);
  ctx.font = "10px sans-serif";
  ctx.fillStyle = "#666";
  ctx.strokeStyle = "#e3e3e3";
  ctx.lineWidth = 1;
  for (const [band] of BANDS) {
    if (band > top) break;
    ctx.beginPath();
    ctx.moveTo(0, y(band));
    ctx.lineTo(width, y(band));
    ctx.stroke();
    if (y(band) > 12) ctx.fillText(String(band), 2, y(band) - 2);  // not cut by the top edge
  }
  ctx.lineWidth = 1.5;
  let i = 1;
  while (i < times.length) {  // one path per run of one colour
    const c = colour(speeds[i]);
    ctx.strokeStyle = c;
    ctx.beginPath();
    ctx.moveTo(x(times[i - 1]), y(speeds[i - 1]));
    for (; i < times.length && colour(speeds[i]) === c; i++) ctx.lineTo(x(times[i]), y(speeds[i]));
    ctx.stroke();
  }
  ctx.fillStyle = "#333";
  ctx.fillText(T.replay_chart + " · " + when(new Date(times[0]).toISOString()), 2, height - 2);
  const last = when(new Date(times[times.length - 1]).toISOString());
  ctx.fillText(last, width - ctx.measureText(last).width - 2, height - 2);
  return image;
}

window.addEventListener("resize", () => { if (!panel.hidden) drawChart(); });
