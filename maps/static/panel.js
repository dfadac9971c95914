// The vehicle panel: opened by "select-vehicle" (a marker or an alarm clicked), it shows the
// last report, the speed against the limit where the vehicle is, the status flags in words,
// the driver, today's driving against the fatigue limits and the active alarms; its buttons
// send a text, query the position (0x8201) or start temporary tracking (0x8202) through the
// server's command gateway and show the terminal's answer.
// Test hooks: #panel[data-vehicle-id][data-loaded], #panel-reply[data-result].
"use strict";
import { $, T, addStrings, api, emit, on, onReady, when } from "./core.js";
import { getMap, mapLatLng } from "./map.js";

addStrings({
  panel: { title: "车辆详情", close: "关闭", last: "最后上报", speed: "速度", limit: "限速",
    no_limit: "无限速", exempt: "豁免", status: "状态", driver: "驾驶员", unknown: "未知",
    today: "今日驾驶", continuous: "连续驾驶", alarms: "当前报警", none: "无", never: "从未上报",
    send: "发送文本", query: "点名(查询位置)", track: "临时跟踪", interval: "间隔(秒)",
    duration: "时长(秒)", text_placeholder: "发给司机的文字(同时语音播报)", sending: "发送中…",
    online: "在线", offline: "离线", over: "超速", at: "位置", offline_msg: "终端不在线，指令未发送" },
  replies: { accepted: "终端已接受", failed: "终端执行失败", unsupported: "终端不支持" },
  flags: { acc_on: "ACC开", positioned: "已定位", south: "南纬", west: "西经",
    out_of_service: "停运", coords_encrypted: "经纬度已加密", oil_cut: "油路断开",
    circuit_cut: "电路断开", doors_locked: "车门加锁", door1_open: "前门开", door2_open: "中门开",
    door3_open: "后门开", door4_open: "驾驶席门开", door5_open: "自定义门开", gps: "GPS",
    beidou: "北斗", glonass: "GLONASS", galileo: "Galileo", moving: "行驶中",
    load_half: "半载", load_reserved: "载重保留", load_full: "满载" },
}, {
  panel: { title: "Vehicle", close: "Close", last: "Last report", speed: "Speed", limit: "Limit",
    no_limit: "no limit", exempt: "exempt", status: "Status", driver: "Driver", unknown: "unknown",
    today: "Driving today", continuous: "Continuous", alarms: "Active alarms", none: "none",
    never: "never reported", send: "Send text", query: "Query position", track: "Track",
    interval: "every (s)", duration: "for (s)", text_placeholder: "Text for the driver (also read aloud)",
    sending: "sending…", online: "online", offline: "offline", over: "over the limit", at: "at",
    offline_msg: "terminal offline, nothing sent" },
  replies: { accepted: "accepted by the terminal", failed: "the terminal failed",
    unsupported: "not supported by the terminal" },
  flags: { acc_on: "ignition on", positioned: "fix", south: "south", west: "west",
    out_of_service: "out of service", coords_encrypted: "encrypted", oil_cut: "fuel cut",
    circuit_cut: "circuit cut", doors_locked: "doors locked", door1_open: "front door open",
    door2_open: "middle door open", door3_open: "rear door open", door4_open: "driver door open",
    door5_open: "door 5 open", moving: "moving", load_half: "half loaded",
    load_reserved: "load reserved", load_full: "fully loaded" },
});

let current = null; // the vehicle id shown
let loading = 0;

onReady(() => { $("#panel").hidden = true; });
on("logout", () => { current = null; $("#panel").hidden = true; });
on("select-vehicle", (detail) => {
  const id = typeof detail === "object" && detail !== null ? detail.id : detail;
  const center = typeof detail === "object" && detail !== null ? detail.center !== false : true;
  show(Number(id), center);
});
on("alerts-changed-here", () => { if (current !== null) show(current, false); });

const hms = (s) => `${Math.floor(s / 3600)}:${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}`;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function row(dl, term, value, cls) {
  dl.append(el("dt", term), el("dd", value, cls));
}

async function show(id, center) {
  const panel = $("#panel");
  const mine = ++loading;
  let data;
  try {
    data = await api("GET", `vehicles/${id}/panel`);
  } catch (err) {
    emit("error", err.message);
    return;
  }
  if (mine !== loading) return;
  const keepReply = current === id;
  current = id;
  const P = T.panel;
  const v = data.vehicle;
  panel.dataset.vehicleId = String(id);
  $("#panel-title").textContent = `${v.plate || "#" + v.id} · ${v.online ? P.online : P.offline}` +
    (v.company ? ` · ${v.company}` : "");
  const dl = $("#panel-facts");
  dl.replaceChildren();
  const last = data.last;
  if (last) {
    row(dl, P.last, when(last.fix_time));
    const limit = data.limit.exempt ? P.exempt : data.limit.kmh == null ? P.no_limit : `${Math.round(data.limit.kmh)} km/h`;
    const over = data.limit.kmh != null && last.speed_kmh > data.limit.kmh;
    row(dl, P.speed, `${last.speed_kmh} km/h / ${P.limit} ${limit}` + (over ? ` · ${P.over}` : "") +
      (data.limit.fences.length ? ` (${data.limit.fences.join(", ")})` : ""), over ? "warn" : "");
    row(dl, P.at, `${last.lat.toFixed(5)}, ${last.lon.toFixed(5)}`);
  } else {
    row(dl, P.last, P.never);
  }
  row(dl, P.status, data.status.map((f) => T.flags[f] || f).join("、") || "—");
  row(dl, P.driver, data.driver || P.unknown);
  const d = data.driving;
  row(dl, P.today, d.daily_limit_s ? `${hms(d.today_s)} / ${hms(d.daily_limit_s)}` : hms(d.today_s),
    d.daily_limit_s && d.today_s >= d.daily_limit_s ? "warn" : "");
  row(dl, P.continuous, d.continuous_limit_s ? `${hms(d.continuous_s)} / ${hms(d.continuous_limit_s)}` : hms(d.continuous_s),
    d.continuous_limit_s && d.continuous_s >= d.continuous_limit_s ? "warn" : "");
  row(dl, P.alarms, data.alerts.map((a) => T.types[a.type] || a.type).join("、") || P.none,
    data.alerts.length ? "warn" : "");
  if (!keepReply) setReply("", null);
  panel.hidden = false;
  panel.dataset.loaded = "true";
  const map = getMap();
  if (center && map && last) map.setView(mapLatLng(last.lon, last.lat), Math.max(map.getZoom(), 13));
}

function setReply(text, result) {
  const reply = $("#panel-reply");
  reply.textContent = text;
  if (result) reply.dataset.result = result; else delete reply.dataset.result;
}

async function command(body, b) {
  if (current === null) return;
  const id = current;
  b.disabled = true;
  setReply(T.panel.sending, "pending");
  try {
    const data = await api("POST", `vehicles/${id}/commands`, body);
    const r = data.reply;
    let text = `${T.replies[r.result] || r.result} · ${when(r.answered_at)}`;
    if (r.position) text += ` · ${r.position.lat.toFixed(5)}, ${r.position.lon.toFixed(5)} ${r.position.speed_kmh} km/h`;
    if (id === current) setReply(text, r.result);
  } catch (err) {
    if (id === current) {
      setReply((/offline/.test(err.message) ? T.panel.offline_msg + " · " : "") + err.message, "error");
      show(id, false); // its online state has changed
    }
  } finally {
    b.disabled = false;
  }
}

$("#panel-close").addEventListener("click", () => { $("#panel").hidden = true; current = null; });
$("#panel-send").addEventListener("click", (e) => {
  const text = $("#panel-text").value.trim();
  if (!text) { $("#panel-text").focus(); return; }
  command({ kind: "text", text }, e.currentTarget);
});
$("#panel-query").addEventListener("click", (e) => command({ kind: "query_position" }, e.currentTarget));
$("#panel-track").addEventListener("click", (e) => command({
  kind: "track", interval_s: Number($("#panel-interval").value), duration_s: Number($("#panel-duration").value),
}, e.currentTarget));

export function translatePanel() {
  $("#panel-text").placeholder = T.panel.text_placeholder;
  $("#panel-send").textContent = T.panel.send;
  $("#panel-query").textContent = T.panel.query;
  $("#panel-track").textContent = T.panel.track;
  $("#panel-close").title = T.panel.close;
  $("#panel-interval").title = T.panel.interval;
  $("#panel-duration").title = T.panel.duration;
}
translatePanel();
