// The alarm queue: alarms of the vehicles in scope, worked from the top (most urgent, then the
// longest waiting). Views: pending (open, acknowledged), handled (not closed yet) and, for
// supervisors, "to review". Each item: acknowledge, handle (a note, what was done, optionally a
// text read to the driver), close (a note unless handled), review; its timeline on demand.
// A beep (WebAudio, no file) for new SOS, fatigue and speeding alarms, mutable (localStorage).
// Clicking an alarm centres the map on it, opens the vehicle panel ("select-vehicle") and the
// track around it ("replay", replay.js).
// Test hooks: li[data-alert-id][data-status], #alerts[data-view][data-loaded], body[data-beeps].
"use strict";
import { $, T, addStrings, api, emit, on, onReady, when } from "./core.js";
import { getMap, mapLatLng } from "./map.js";

addStrings({
  open_alarms: "报警队列", no_alarms: "暂无报警", ack: "确认", handle: "处理", close: "关闭",
  review: "复核", details: "记录", submit: "提交", cancel: "取消", note: "备注",
  send_text: "向司机发送语音/文字", text_default: "请注意安全驾驶，按规定休息", mute: "静音", muted: "已静音",
  views: { pending: "待处理", handled: "已处理", review: "待复核" },
  statuses: { open: "未确认", acknowledged: "已确认", handled: "已处理", closed: "已关闭" },
  handling: { text_sent: "已下发文本", phone_call: "电话联系", evidence: "已取证", reported: "已上报",
    note: "仅备注" },
  verdicts: { approved: "处理合格", rejected: "处理不合格" },
  audit: { acknowledge: "确认", handle: "处理", close: "关闭", review: "复核", escalate: "升级",
    text: "下发文本", auto_text: "自动提醒", terminal_confirm: "终端报警确认", open: "报警开始",
    update: "阶段变化", severity: "级别变化", episode_open: "报警开始", episode_close: "报警结束" },
  close_needs_note: "未处理的报警关闭时须填写原因",
  types: { sos: "紧急报警", terminal_alarm: "终端报警", speeding: "超速", speeding_warning: "超速预警",
    fatigue: "疲劳驾驶", fatigue_continuous: "连续驾驶超时", fatigue_daily: "当日累计驾驶超时",
    fatigue_weekly: "每周累计驾驶超时", fatigue_warning: "疲劳预警", fatigue_escalation: "疲劳升级",
    night_driving: "夜间禁行时段行驶", offline: "离线", no_fix: "无定位", geofence_enter: "进入区域",
    geofence_exit: "离开区域", geofence_dwell: "区域停留超时", forbidden_zone: "进入禁区",
    route_deviation: "偏离路线", watchlist: "布控车辆", watchlist_area: "布控车辆进入区域" },
  severity: { 1: "紧急", 2: "高", 3: "中", 4: "低" },
}, {
  open_alarms: "Alarm queue", no_alarms: "No alarms", ack: "Acknowledge", handle: "Handle",
  close: "Close", review: "Review", details: "History", submit: "Submit", cancel: "Cancel",
  note: "Note", send_text: "Send a text / TTS to the driver",
  text_default: "Please drive safely and take your rest", mute: "Mute", muted: "Muted",
  views: { pending: "Pending", handled: "Handled", review: "To review" },
  statuses: { open: "open", acknowledged: "acknowledged", handled: "handled", closed: "closed" },
  handling: { text_sent: "text sent", phone_call: "phoned", evidence: "evidence taken",
    reported: "reported", note: "note only" },
  verdicts: { approved: "handled well", rejected: "handled badly" },
  audit: { acknowledge: "acknowledged", handle: "handled", close: "closed", review: "reviewed",
    escalate: "escalated", text: "text", auto_text: "automatic text",
    terminal_confirm: "confirmed to the terminal", open: "started", update: "stage",
    severity: "severity", episode_open: "started", episode_close: "ended" },
  close_needs_note: "Closing an alarm that was not handled needs a note",
  types: { sos: "SOS", terminal_alarm: "terminal alarm", speeding: "speeding",
    speeding_warning: "speeding warning", fatigue_continuous: "continuous driving",
    fatigue_daily: "daily driving", fatigue_weekly: "weekly driving", fatigue_warning: "fatigue warning",
    fatigue_escalation: "fatigue escalation", night_driving: "night driving", offline: "offline",
    no_fix: "no fix", geofence_enter: "entered area", geofence_exit: "left area",
    geofence_dwell: "dwell", forbidden_zone: "forbidden zone", route_deviation: "off route",
    watchlist: "watchlist", watchlist_area: "watchlist area" },
  severity: { 1: "critical", 2: "high", 3: "medium", 4: "low" },
});

const MUTE_KEY = "fw-alarm-muted";
let reload = null; // a queued re-read of the queue (live events come in bursts)
let latest = 0; // a refresh that started before a change must not bring the old state back
let view = "pending";
let seen = null; // alert ids already announced (null: before the first load)
let open = null; // the item whose form is open: refreshes leave it alone until it closes

/** SOS (the terminal's emergency button), fatigue and speeding alarms beep. */
const loud = (a) => (a.type === "terminal_alarm" && (a.details || {}).name === "emergency") ||
  a.type === "speeding" || a.type.startsWith("fatigue_") && a.type !== "fatigue_warning";
const label = (a) => (a.type === "terminal_alarm" && (a.details || {}).name === "emergency")
  ? T.types.sos : (T.types[a.type] || a.type);

onReady(async (user) => {
  buildControls(user);
  await loadAlerts();
});
on("logout", () => { clearTimeout(reload); reload = null; seen = null; open = null; });
// No polling: the live feed (live.js) says when the queue changed, with a snapshot on each
// (re)connection and an event for each alert created or changed; the queue (its order and
// views are the server's) is read again a quarter of a second after the last of a burst.
const soon = () => { clearTimeout(reload); reload = setTimeout(loadAlerts, 250); };
on("snapshot", soon);
on("alert", soon);
on("alerts-changed", () => loadAlerts());

function buildControls(user) {
  const tabs = $("#alert-views");
  tabs.replaceChildren();
  const views = user.role === "dispatcher" ? ["pending", "handled"] : ["pending", "handled", "review"];
  if (!views.includes(view)) view = "pending";
  for (const name of views) {
    const b = button(T.views[name], "view", () => { view = name; open = null; markTabs(); loadAlerts(); });
    b.dataset.view = name;
    tabs.append(b);
  }
  markTabs();
  const mute = $("#alarm-mute");
  const show = () => {
    const muted = localStorage.getItem(MUTE_KEY) === "1";
    mute.textContent = muted ? T.muted : T.mute;
    mute.setAttribute("aria-pressed", String(muted));
  };
  mute.onclick = () => {
    localStorage.setItem(MUTE_KEY, localStorage.getItem(MUTE_KEY) === "1" ? "0" : "1");
    show();
  };
  show();
}

function markTabs() {
  for (const b of document.querySelectorAll("#alert-views button")) {
    b.classList.toggle("active", b.dataset.view === view);
  }
}

async function loadAlerts() {
  const mine = ++latest;
  let data;
  try {
    data = await api("GET", "alert-queue?view=" + view + "&limit=200");
  } catch (err) {
    emit("error", err.message);
    return;
  }
  if (mine !== latest || data.view !== view) return;
  announce(data.alerts);
  const list = $("#alerts");
  const keep = open && data.alerts.some((a) => String(a.id) === open.dataset.alertId) ? open : null;
  list.replaceChildren(...data.alerts.map((a) =>
    keep && String(a.id) === keep.dataset.alertId ? keep : alertItem(a)));
  if (!keep) open = null;
  $("#alert-count").textContent = String(data.alerts.length);
  $("#alerts-empty").hidden = data.alerts.length > 0;
  list.dataset.view = view;
  list.dataset.loaded = "true";
}

function announce(alerts) {
  if (view !== "pending") return;
  const fresh = alerts.filter((a) => a.status === "open" && loud(a) && !(seen && seen.has(a.id)));
  seen = new Set([...(seen || []), ...alerts.map((a) => a.id)]);
  if (fresh.length) beep(fresh.some((a) => a.severity === 1));
}

let audio = null;
/** Two short tones (three for a critical alarm), made with WebAudio: no sound file needed. */
function beep(urgent) {
  document.body.dataset.beeps = String(Number(document.body.dataset.beeps || 0) + 1);
  if (localStorage.getItem(MUTE_KEY) === "1") return;
  try {
    audio = audio || new AudioContext();
    const start = audio.currentTime;
    for (let i = 0; i < (urgent ? 3 : 2); i++) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = "square";
      osc.frequency.value = urgent ? 1320 : 880;
      gain.gain.setValueAtTime(0.08, start + i * 0.25);
      gain.gain.setValueAtTime(0, start + i * 0.25 + 0.15);
      osc.connect(gain).connect(audio.destination);
      osc.start(start + i * 0.25);
      osc.stop(start + i * 0.25 + 0.16);
    }
  } catch (err) {
    // no audio device: the list and its counter still say it
  }
}

function button(text, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = cls;
  b.textContent = text;
  b.addEventListener("click", (event) => { event.stopPropagation(); onClick(b); });
  return b;
}

function alertItem(a) {
  const li = document.createElement("li");
  li.dataset.alertId = String(a.id);
  li.dataset.status = a.status;
  li.dataset.vehicleId = String(a.vehicle_id);
  li.className = "sev-" + a.severity;
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = `${a.plate || "#" + a.vehicle_id} · ${label(a)}`;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = `${T.severity[a.severity] || a.severity_name} · ${T.statuses[a.status] || a.status}` +
    (a.escalation_level ? ` · ↑${a.escalation_level}` : "") + ` · ${when(a.start_time)}`;
  const actions = document.createElement("span");
  actions.className = "actions";
  if (a.status === "open") actions.append(button(T.ack, "ack", (b) => step(b, a, "ack")));
  if (a.status === "acknowledged" || a.status === "handled") {
    actions.append(button(T.handle, "handle", () => handleForm(li, a)));
  }
  if (a.status !== "closed" && view !== "review") {
    actions.append(button(T.close, "close", () => closeForm(li, a)));
  }
  if (view === "review") actions.append(button(T.review, "review", () => reviewForm(li, a)));
  actions.append(button(T.details, "details", () => showTimeline(li, a)));
  li.append(title, actions, meta);
  li.addEventListener("click", () => focusAlert(a));
  return li;
}

const AROUND_MS = 30 * 60 * 1000;

/** Centre the map where the alarm happened, open the vehicle's panel, and replay its track
 * from half an hour before the alarm to half an hour after its end (now while it lasts): the
 * replay fits the map to that track and its alarm markers, so the panel and the map's own
 * "show the vehicle" keep still (the vehicle may be far from where the alarm was). */
function focusAlert(a) {
  const d = a.details || {};
  const map = getMap();
  if (map && typeof d.lon === "number" && typeof d.lat === "number") {
    map.setView(mapLatLng(d.lon, d.lat), Math.max(map.getZoom(), 14));
  }
  emit("select-vehicle", { id: a.vehicle_id, center: false, show: false });
  const now = Date.now();
  const end = a.end_time ? Math.min(Date.parse(a.end_time) + AROUND_MS, now) : now;
  const from = new Date(Date.parse(a.start_time) - AROUND_MS).toISOString();
  emit("replay", { vehicleId: a.vehicle_id, from, to: new Date(Math.max(end, Date.parse(a.start_time))).toISOString() });
}

async function step(b, a, action, body) {
  if (b) b.disabled = true;
  try {
    await api("POST", `alerts/${a.id}/${action}`, body);
    emit("error", "");
    open = null;
    await loadAlerts();
    emit("alerts-changed-here", a.id);
    return true;
  } catch (err) {
    emit("error", err.message);
    if (b) b.disabled = false;
    return false;
  }
}

/** An inline form under the item (one at a time); refreshes keep it while it is open. */
function inlineForm(li, name, fields, submit) {
  li.querySelector("form")?.remove();
  const form = document.createElement("form");
  form.className = "alarm-form " + name;
  form.addEventListener("click", (e) => e.stopPropagation());
  form.append(...fields);
  const ok = document.createElement("button");
  ok.type = "submit";
  ok.className = "submit";
  ok.textContent = T.submit;
  form.append(ok, button(T.cancel, "cancel", () => { form.remove(); open = null; }));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    ok.disabled = true;
    if (!(await submit(ok))) ok.disabled = false;
  });
  li.append(form);
  open = li;
  form.querySelector("textarea, input, select")?.focus();
  return form;
}

function select(name, options) {
  const s = document.createElement("select");
  s.name = name;
  for (const [value, text] of options) s.append(new Option(text, value));
  return s;
}

function textarea(name, placeholder) {
  const t = document.createElement("textarea");
  t.name = name;
  t.rows = 2;
  t.maxLength = 2000;
  t.placeholder = placeholder;
  return t;
}

function handleForm(li, a) {
  const action = select("action", Object.entries(T.handling));
  const note = textarea("note", T.note);
  const sendLabel = document.createElement("label");
  const send = document.createElement("input");
  send.type = "checkbox";
  send.name = "send";
  sendLabel.append(send, " " + T.send_text);
  const text = document.createElement("input");
  text.name = "text";
  text.maxLength = 200;
  text.value = T.text_default;
  text.hidden = true;
  send.addEventListener("change", () => {
    text.hidden = !send.checked;
    if (send.checked) action.value = "text_sent";
  });
  action.addEventListener("change", () => { send.checked = action.value === "text_sent"; text.hidden = !send.checked; });
  inlineForm(li, "handle", [action, sendLabel, text, note], (ok) => {
    const body = { action: action.value, note: note.value };
    if (action.value === "text_sent") body.text = text.value;
    return step(ok, a, "handle", body);
  });
}

function closeForm(li, a) {
  const note = textarea("note", a.status === "handled" ? T.note : T.close_needs_note);
  inlineForm(li, "close", [note], (ok) => step(ok, a, "close", { note: note.value }));
}

function reviewForm(li, a) {
  const verdict = select("verdict", Object.entries(T.verdicts));
  const note = textarea("note", T.note);
  inlineForm(li, "review", [verdict, note],
    (ok) => step(ok, a, "review", { verdict: verdict.value, note: note.value }));
}

/** The alert's history: the incident's stages and the people's and platform's steps, by time. */
async function showTimeline(li, a) {
  const old = li.querySelector("ol.timeline");
  if (old) { old.remove(); return; }
  let data;
  try {
    data = await api("GET", `alerts/${a.id}/timeline`);
  } catch (err) {
    emit("error", err.message);
    return;
  }
  const rows = [
    ...(data.alert.timeline || []).map((s) => ({ at: s.at, who: "", what: `${T.audit[s.phase] || s.phase}: ${label({ ...data.alert, type: s.type })} (${T.severity[s.severity] || s.severity})` })),
    ...data.audit.filter((e) => !["episode_open", "episode_close", "severity"].includes(e.action) || !(data.alert.timeline || []).length)
      .map((e) => ({ at: e.at, who: e.actor, what: describe(e) })),
  ].sort((x, y) => (x.at < y.at ? -1 : x.at > y.at ? 1 : 0));
  const ol = document.createElement("ol");
  ol.className = "timeline";
  ol.addEventListener("click", (e) => e.stopPropagation());
  for (const r of rows) {
    const item = document.createElement("li");
    item.dataset.at = r.at;
    item.textContent = `${when(r.at)} ${r.who ? r.who + " · " : ""}${r.what}`;
    ol.append(item);
  }
  li.append(ol);
}

function describe(e) {
  const d = e.details || {};
  const parts = [T.audit[e.action] || e.action];
  if (d.handling_action) parts.push(T.handling[d.handling_action] || d.handling_action);
  if (d.verdict) parts.push(T.verdicts[d.verdict] || d.verdict);
  if (d.text) parts.push(`“${d.text}”`);
  if (d.result) parts.push(d.result);
  if (d.level) parts.push("L" + d.level);
  if (d.note) parts.push(d.note);
  return parts.join(" · ");
}
