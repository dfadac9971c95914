// The alarm queue: open alarms of the vehicles in scope, acknowledged from here.
"use strict";
import { $, T, addStrings, api, emit, on, onReady, when } from "./core.js";

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

const REFRESH_MS = 10000;
let timer = null;
let latest = 0; // a refresh that started before an acknowledgement must not bring it back

onReady(async () => {
  await loadAlerts();
  if (!timer) timer = setInterval(loadAlerts, REFRESH_MS);
});
on("logout", () => { clearInterval(timer); timer = null; });
on("alerts-changed", () => loadAlerts());

async function loadAlerts() {
  const mine = ++latest;
  let data;
  try {
    data = await api("GET", "alerts?status=open&limit=200");
  } catch (err) {
    emit("error", err.message);
    return;
  }
  if (mine !== latest) return;
  const list = $("#alerts");
  list.replaceChildren(...data.alerts.map(alertItem));
  $("#alert-count").textContent = String(data.alerts.length);
  $("#alerts-empty").hidden = data.alerts.length > 0;
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
      li.remove();
      emit("error", "");
      await loadAlerts();
    } catch (err) {
      emit("error", err.message);
      button.disabled = false;
    }
  });
  li.append(title, button, meta);
  return li;
}
