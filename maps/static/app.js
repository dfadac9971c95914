// FleetWatch dashboard (first slice): log in, vehicles in scope on a map, open alarms with
// acknowledgement. No build step, no CDN: Leaflet comes from vendor/ (scripts/setup.sh).
// State for tests and screen readers alike: body[data-state] is loading | login | ready.
"use strict";

const I18N = {
  zh: {
    title: "FleetWatch 监控台", username: "用户名", password: "密码", login: "登录", logout: "退出",
    open_alarms: "未确认报警", no_alarms: "暂无未确认报警", ack: "确认",
    no_basemap: "离线模式：未加载底图（非审图号地图，仅示意车辆位置）",
    online: "在线", offline: "离线", vehicles: "车辆", beijing: "北京时间",
    bad_login: "登录失败", roles: { admin: "管理员", supervisor: "监管", dispatcher: "调度员" },
    types: { sos: "紧急报警", speeding: "超速", fatigue: "疲劳驾驶", fatigue_continuous: "连续驾驶超时",
      fatigue_daily: "当日累计驾驶超时", offline: "离线", geofence_enter: "进入区域",
      geofence_exit: "离开区域", watchlist: "布控车辆" },
    severity: { 1: "紧急", 2: "高", 3: "中", 4: "低" },
  },
  en: {
    title: "FleetWatch", username: "User name", password: "Password", login: "Log in", logout: "Log out",
    open_alarms: "Open alarms", no_alarms: "No open alarms", ack: "Acknowledge",
    no_basemap: "Offline: no base map loaded (not an approved map; positions only)",
    online: "online", offline: "offline", vehicles: "vehicles", beijing: "Beijing time",
    bad_login: "Login failed", roles: { admin: "admin", supervisor: "supervisor", dispatcher: "dispatcher" },
    types: {}, severity: { 1: "critical", 2: "high", 3: "medium", 4: "low" },
  },
};
const lang = new URLSearchParams(location.search).get("lang") === "en" ? "en" : "zh";
const T = I18N[lang];
const REFRESH_MS = 10000;
let csrf = null;
let map = null;
let markers = null;
let timer = null;
// Each list shows only the answer of its latest request: a periodic refresh that started before
// an acknowledgement and answers after it must not bring the acknowledged alarm back.
const latest = { vehicles: 0, alerts: 0 };

const $ = (sel) => document.querySelector(sel);

function translatePage() {
  document.documentElement.lang = lang === "en" ? "en" : "zh-CN";
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = T[el.dataset.i18n];
}

async function api(method, path, body) {
  const headers = {};
  if (method !== "GET") headers["X-CSRF-Token"] = csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch("api/" + path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (response.status === 401 && path !== "login") showLogin();
  if (!response.ok) throw new Error(data.error || String(response.status));
  return data;
}

const beijing = new Intl.DateTimeFormat(lang === "en" ? "en-GB" : "zh-CN", {
  timeZone: "Asia/Shanghai", year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});
const when = (iso) => (iso ? beijing.format(new Date(iso)) + " (" + T.beijing + ")" : "");

function showLogin() {
  clearInterval(timer);
  timer = null;
  $("#main").hidden = true;
  $("#login").hidden = false;
  document.body.dataset.state = "login";
  $("#username").focus();
}

async function showMain(user) {
  $("#login").hidden = true;
  $("#main").hidden = false;
  $("#who").textContent = user.username + " · " + (T.roles[user.role] || user.role) +
    (user.company ? " · " + user.company : "");
  if (!map) {
    map = L.map("map", { zoomControl: true, attributionControl: false }).setView([35, 105], 4);
    markers = L.featureGroup().addTo(map);
  }
  map.invalidateSize();
  await refresh(true);
  document.body.dataset.state = "ready";
  if (!timer) timer = setInterval(() => refresh(false), REFRESH_MS);
}

async function refresh(fit) {
  try {
    await Promise.all([loadVehicles(fit), loadAlerts()]);
    $("#api-error").textContent = "";
  } catch (err) {
    $("#api-error").textContent = err.message;
  }
}

async function loadVehicles(fit) {
  const mine = ++latest.vehicles;
  const features = [];
  let after = 0;
  for (let page = 0; page < 50 && after !== null; page++) {  // bounded: 50 x 2000 vehicles
    const data = await api("GET", "vehicles?limit=2000&after=" + after);
    features.push(...data.features);
    after = data.next_after;
  }
  if (mine !== latest.vehicles) return;
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
    markers.addLayer(marker);
  }
  $("#counters").textContent = `${T.vehicles} ${features.length} · ${T.online} ${online} · ` +
    `${T.offline} ${features.length - online}`;
  $("#map").dataset.vehicles = String(markers.getLayers().length);
  if (fit && markers.getLayers().length) map.fitBounds(markers.getBounds().pad(0.3), { maxZoom: 13 });
}

async function loadAlerts() {
  const mine = ++latest.alerts;
  const data = await api("GET", "alerts?status=open&limit=200");
  if (mine !== latest.alerts) return;
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
      await loadAlerts();
      $("#api-error").textContent = "";
    } catch (err) {
      $("#api-error").textContent = err.message;
      button.disabled = false;
    }
  });
  li.append(title, button, meta);
  return li;
}

function escapeHtml(text) {
  const div = document.createElement("div");
  div.textContent = String(text);
  return div.innerHTML;
}

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("#login-error").textContent = "";
  $("#login-submit").disabled = true;
  try {
    const data = await api("POST", "login", {
      username: $("#username").value, password: $("#password").value,
    });
    csrf = data.csrf;
    $("#password").value = "";
    await showMain(data.user);
  } catch (err) {
    $("#login-error").textContent = T.bad_login + ": " + err.message;
  } finally {
    $("#login-submit").disabled = false;
  }
});

$("#logout").addEventListener("click", async () => {
  try { await api("POST", "logout"); } finally {
    const data = await api("GET", "session");
    csrf = data.csrf;
    showLogin();
  }
});

(async function start() {
  translatePage();
  const data = await api("GET", "session");
  csrf = data.csrf;
  if (data.user) await showMain(data.user); else showLogin();
})();
