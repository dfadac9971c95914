// The alarm queue: open alarms of the vehicles in scope, acknowledged from here.
"use strict";
import { $, T, addStrings, api, emit, on, when } from "./core.js";

addStrings({
  open_alarms: "未确认报警", no_alarms: "暂无未确认报警", ack: "确认",
  types: { sos: "紧急报警", speeding: "超速", fatigue: "疲劳驾驶", fatigue_continuous: "连续驾驶超时",
    fatigue_daily: "当日累计驾驶超时", offline: "离线", geofence_enter: "进入区域",
    geofence_exit: "离开区域", watchlist: "布控车辆" },
  severity: { 1: "紧急", 2: "高", 3: "中", 4: "低" },
}, {
  open_alarms: "Open alarms", no_alarms: "No open alarms", ack: "Acknowledge",
  types: {}, severity: { 1: "critical", 2: "high", 3: "medium", 4: "low" },
});

const SHOWN = 200; // the newest open alarms listed
const open = new Map(); // alert id -> open alert, from the live feed (live.js)
let latest = 0; // a reload that started before an acknowledgement must not bring it back

on("snapshot", ({ alerts }) => {
  open.clear();
  for (const a of alerts) if (a.status === "open") open.set(a.id, a);
  render();
});
on("alert", (a) => {
  if (a.status === "open") open.set(a.id, a); else open.delete(a.id);
  render();
});
on("alerts-changed", () => loadAlerts());

async function loadAlerts() {
  const mine = ++latest;
  let data;
  try {
    data = await api("GET", "alerts?status=open&limit=" + SHOWN);
  } catch (err) {
    emit("error", err.message);
    return;
  }
  if (mine !== latest) return;
  open.clear();
  for (const a of data.alerts) open.set(a.id, a);
  render();
}

function render() {
  const shown = [...open.values()].sort((x, y) => y.id - x.id).slice(0, SHOWN);
  const list = $("#alerts");
  list.replaceChildren(...shown.map(alertItem));
  $("#alert-count").textContent = String(open.size);
  $("#alerts-empty").hidden = open.size > 0;
  list.dataset.loaded = "true";
}

function alertItem(a) {
  const li = document.createElement("li");
  li.dataset.alertId = String(a.id);
  li.className = "sev-" + a.severity;
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = `${a.plate || "#" + a.vehicle_id} · ${T.types[a.type] || a.type}`;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = `${T.severity[a.severity] || a.severity_name} · ${when(a.start_time)}`;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "ack";
  button.textContent = T.ack;
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api("POST", `alerts/${a.id}/ack`);
      latest++; // an older reload must not bring it back
      open.delete(a.id);
      li.remove();
      emit("error", "");
      render();
    } catch (err) {
      emit("error", err.message);
      button.disabled = false;
    }
  });
  li.append(title, button, meta);
  return li;
}
