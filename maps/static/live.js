// The live feed: one WebSocket per tab (api/live), opened after login, closed on logout.
// Its messages become bus events, so the map and the alarm queue never poll:
//   "snapshot" {vehicles: [Feature], alerts: [alert]}   on every (re)connection, the whole state
//   "vehicle"  Feature                                   a vehicle's new position (at most 1/s)
//   "alert"    alert                                     an alert created or changed, at once
// A lost connection is retried with a growing, jittered pause (1 s doubling to 30 s); silence
// longer than three keepalives counts as lost. #live shows the state (data-state connecting |
// open | closed) for the duty desk and for tests.
"use strict";
import { $, T, addStrings, emit, on, onReady } from "./core.js";

addStrings(
  { live: { connecting: "连接中…", open: "实时", closed: "已断开，正在重连" } },
  { live: { connecting: "connecting…", open: "live", closed: "disconnected, retrying" } },
);

const SILENCE_MS = 65000; // the server sends a keepalive every 20 s
let socket = null;
let wanted = false;
let pause = 1000;
let retryTimer = null;
let watchdog = null;
let firstSnapshot = null; // resolves the login's ready state once the first snapshot is applied

onReady(() => {
  wanted = true;
  const ready = new Promise((resolve) => { firstSnapshot = resolve; });
  connect();
  // the page is usable (and "ready") even if the feed is down; it keeps retrying
  return Promise.race([ready, new Promise((resolve) => setTimeout(resolve, 15000))]);
});

on("logout", () => {
  wanted = false;
  clearTimeout(retryTimer);
  clearTimeout(watchdog);
  if (socket) socket.close(1000);
  socket = null;
  show("closed");
});

function show(state) {
  const el = $("#live");
  if (!el) return;
  el.dataset.state = state;
  el.textContent = T.live[state];
}

function connect() {
  clearTimeout(retryTimer);
  if (!wanted) return;
  show("connecting");
  const url = new URL("api/live", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url);
  socket = ws;
  ws.onmessage = (event) => {
    if (ws !== socket) return;
    alive();
    let message;
    try { message = JSON.parse(event.data); } catch { return; }
    apply(message);
  };
  ws.onclose = () => {
    if (ws !== socket) return;
    socket = null;
    clearTimeout(watchdog);
    if (!wanted) return;
    show("closed");
    const wait = pause * (0.5 + Math.random() / 2);
    pause = Math.min(pause * 2, 30000);
    retryTimer = setTimeout(connect, wait);
  };
}

function alive() {
  clearTimeout(watchdog);
  watchdog = setTimeout(() => { if (socket) socket.close(); }, SILENCE_MS);
}

function apply(message) {
  switch (message.type) {
    case "snapshot":
      pause = 1000;
      show("open");
      emit("snapshot", { vehicles: message.vehicles.features, alerts: message.alerts });
      if (firstSnapshot) { firstSnapshot(); firstSnapshot = null; }
      break;
    case "vehicles":
      for (const feature of message.features) emit("vehicle", feature);
      break;
    case "alerts":
      for (const alert of message.alerts) emit("alert", alert);
      break;
    default: // keepalive
  }
}
