// The vehicle list (left panel): plate search, status and class filters, sorting; a click
// centres the map on the vehicle and emits ("select-vehicle", id) for the map to follow up.
// It takes the vehicles from the map's "vehicles" event, so it costs no request of its own
// except the open alarms (for "in alarm") when the features do not say it.
// Fast at 5,000 rows: only the rows in view (and a few around) are in the DOM; filtering and
// sorting are plain array work on each change. Test hooks: #vehicle-list[data-count] (rows
// after filtering), [data-total]; each row has data-vehicle-id and data-status.
"use strict";
import { $, T, addStrings, api, emit, on, when } from "./core.js";
import { getMap, mapLatLng } from "./map.js";

export const CLASS_NAMES = {
  zh: { police: "警车", school_bus: "校车", coach: "客车", heavy_truck: "重型货车", hazmat: "危化品车", other: "其他" },
  en: { police: "Police", school_bus: "School bus", coach: "Coach", heavy_truck: "Heavy truck", hazmat: "Hazmat", other: "Other" },
};
addStrings({
  vl_title: "车辆列表", vl_search: "搜索车牌", vl_all_status: "全部状态", vl_all_classes: "全部车型",
  vl_alarm: "报警中", vl_sort: { plate: "按车牌", status: "按状态", speed: "按速度", time: "按上报时间" },
  vl_none: "无匹配车辆", classes: CLASS_NAMES.zh,
}, {
  vl_title: "Vehicles", vl_search: "Search plate", vl_all_status: "All states", vl_all_classes: "All classes",
  vl_alarm: "in alarm", vl_sort: { plate: "By plate", status: "By state", speed: "By speed", time: "By last report" },
  vl_none: "No matching vehicle", classes: CLASS_NAMES.en,
});

const ROW = 30; // px, fixed: the visible slice is computed from scrollTop
const SPARE = 8; // rows rendered above and below the view
const RANK = { alarm: 0, online: 1, offline: 2 };
let all = []; // rows: {id, plate, klass, status, speed, time, lonlat}
let shown = [];
let alarmed = new Set();
let alarmsAt = 0;

/** The row's colour: in alarm over online over offline (the filters test each on its own:
 * an online vehicle in alarm is both "online" and "in alarm"). */
function statusOf(r) {
  const p = r.props;
  r.alarm = !!(p.in_alarm || p.alarm === true || p.state === "alarm" || alarmed.has(r.id));
  return r.alarm ? "alarm" : r.online ? "online" : "offline";
}
const STATUS_TEST = { online: (r) => r.online, offline: (r) => !r.online, alarm: (r) => r.alarm };

function toRow(f) {
  const p = f.properties || {};
  return {
    id: f.id, plate: p.plate || "#" + f.id, klass: p.class || "other", online: !!p.online,
    props: p, speed: p.speed_kmh ?? null, time: p.fix_time || "",
    lonlat: f.geometry ? f.geometry.coordinates : null,
  };
}

function build() {
  const panel = $("#vehicle-panel");
  panel.innerHTML = `
    <h2>${T.vl_title} (<span id="vehicle-count">0</span>)</h2>
    <input id="vehicle-search" type="search" placeholder="${T.vl_search}" autocomplete="off">
    <div class="vl-filters">
      <select id="vehicle-status">
        <option value="">${T.vl_all_status}</option><option value="online">${T.online}</option>
        <option value="offline">${T.offline}</option><option value="alarm">${T.vl_alarm}</option>
      </select>
      <select id="vehicle-class"><option value="">${T.vl_all_classes}</option>
        ${Object.keys(CLASS_NAMES.zh).map((k) => `<option value="${k}">${T.classes[k]}</option>`).join("")}
      </select>
      <select id="vehicle-sort">
        ${Object.keys(T.vl_sort).map((k) => `<option value="${k}">${T.vl_sort[k]}</option>`).join("")}
      </select>
    </div>
    <div id="vehicle-list" data-count="0" data-total="0"><div id="vehicle-spacer"></div></div>
    <p id="vehicle-none" hidden>${T.vl_none}</p>`;
  for (const id of ["#vehicle-search", "#vehicle-status", "#vehicle-class", "#vehicle-sort"]) {
    $(id).addEventListener("input", refilter);
  }
  $("#vehicle-list").addEventListener("scroll", () => requestAnimationFrame(render), { passive: true });
  $("#vehicle-list").addEventListener("click", (event) => {
    const row = event.target.closest("[data-vehicle-id]");
    if (row) select(Number(row.dataset.vehicleId));
  });
  window.addEventListener("resize", () => requestAnimationFrame(render));
}

function refilter() {
  const text = $("#vehicle-search").value.trim().toUpperCase();
  const status = $("#vehicle-status").value;
  const klass = $("#vehicle-class").value;
  const sort = $("#vehicle-sort").value;
  shown = all.filter((r) => (!text || r.plate.toUpperCase().includes(text)) &&
    (!status || STATUS_TEST[status](r)) && (!klass || r.klass === klass));
  const byPlate = (a, b) => a.plate.localeCompare(b.plate, "zh-CN");
  const order = {
    plate: byPlate,
    status: (a, b) => RANK[a.status] - RANK[b.status] || byPlate(a, b),
    speed: (a, b) => (b.speed ?? -1) - (a.speed ?? -1) || byPlate(a, b),
    time: (a, b) => (b.time > a.time ? 1 : b.time < a.time ? -1 : 0) || byPlate(a, b),
  }[sort];
  shown.sort(order);
  const list = $("#vehicle-list");
  list.dataset.count = String(shown.length);
  list.dataset.total = String(all.length);
  $("#vehicle-count").textContent = shown.length === all.length ? String(all.length) : `${shown.length}/${all.length}`;
  $("#vehicle-spacer").style.height = shown.length * ROW + "px";
  $("#vehicle-none").hidden = shown.length > 0;
  render();
}

function render() {
  const list = $("#vehicle-list");
  const first = Math.max(0, Math.floor(list.scrollTop / ROW) - SPARE);
  const last = Math.min(shown.length, Math.ceil((list.scrollTop + list.clientHeight) / ROW) + SPARE);
  const rows = [];
  for (let i = first; i < last; i++) rows.push(rowElement(shown[i], i));
  $("#vehicle-spacer").replaceChildren(...rows);
}

function rowElement(r, i) {
  const div = document.createElement("div");
  div.className = "vl-row " + r.status;
  div.style.top = i * ROW + "px";
  div.dataset.vehicleId = String(r.id);
  div.dataset.status = r.status;
  div.title = r.time ? when(r.time) : "";
  const plate = document.createElement("span");
  plate.className = "vl-plate";
  plate.textContent = r.plate;
  const meta = document.createElement("span");
  meta.className = "vl-meta";
  meta.textContent = `${T.classes[r.klass] || r.klass}` + (r.speed === null ? "" : ` · ${r.speed} km/h`);
  div.append(plate, meta);
  return div;
}

function select(id) {
  const row = all.find((r) => r.id === id);
  const map = getMap();
  if (row && row.lonlat && map) map.setView(mapLatLng(row.lonlat[0], row.lonlat[1]), Math.max(map.getZoom(), 14));
  for (const el of document.querySelectorAll(".vl-row.selected")) el.classList.remove("selected");
  const el = document.querySelector(`.vl-row[data-vehicle-id="${id}"]`);
  if (el) el.classList.add("selected");
  emit("select-vehicle", id);
}

async function loadAlarmed(features) {
  if (features.some((f) => f.properties && "in_alarm" in f.properties)) return; // the map says it
  if (Date.now() - alarmsAt < 5000) return;
  alarmsAt = Date.now();
  try {
    const data = await api("GET", "alerts?status=active&limit=2000");
    alarmed = new Set(data.alerts.map((a) => a.vehicle_id));
  } catch (err) {
    emit("error", err.message);
  }
}

on("vehicles", async (features) => {
  await loadAlarmed(features);
  all = features.map(toRow);
  for (const r of all) r.status = statusOf(r);
  refilter();
});
on("alerts-changed", () => { alarmsAt = 0; });
build();
