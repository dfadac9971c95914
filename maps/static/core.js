// FleetWatch dashboard core: strings, the API client, Beijing time, a small event bus.
// Every feature module imports from here and nothing else of ours, so features stay apart:
// map.js, alarms.js, ... each register their strings with addStrings() and listen on `bus`.
// Events: "logout", "vehicles" (detail: features),
// "alerts-changed" (an alert was changed here or elsewhere), "error" (detail: message).
"use strict";

const STRINGS = {
  zh: {
    title: "FleetWatch 监控台", username: "用户名", password: "密码", login: "登录", logout: "退出",
    online: "在线", offline: "离线", vehicles: "车辆", beijing: "北京时间", bad_login: "登录失败",
    roles: { admin: "管理员", supervisor: "监管", dispatcher: "调度员" },
  },
  en: {
    title: "FleetWatch", username: "User name", password: "Password", login: "Log in", logout: "Log out",
    online: "online", offline: "offline", vehicles: "vehicles", beijing: "Beijing time",
    bad_login: "Login failed", roles: { admin: "admin", supervisor: "supervisor", dispatcher: "dispatcher" },
  },
};

export const lang = new URLSearchParams(location.search).get("lang") === "en" ? "en" : "zh";
/** The strings of the page's language; English falls back to Chinese key by key. */
export const T = {};

/** Add a module's strings (nested objects merge one level deep). */
export function addStrings(zh, en) {
  for (const [key, value] of Object.entries(lang === "en" ? { ...zh, ...en } : zh)) {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      T[key] = { ...(T[key] || {}), ...(lang === "en" ? { ...zh[key], ...(en[key] || {}) } : value) };
    } else {
      T[key] = value;
    }
  }
}
addStrings(STRINGS.zh, STRINGS.en);

export const $ = (sel) => document.querySelector(sel);

/** Session state shared by the modules: the logged-in user and the CSRF token. */
export const session = { user: null, csrf: null };

export const bus = new EventTarget();
const readyHooks = [];
/** Run fn(user) after each login; the page is "ready" once every hook's promise settled. */
export const onReady = (fn) => readyHooks.push(fn);
export const runReady = (user) => Promise.allSettled(readyHooks.map((fn) => fn(user)));
export const on = (name, fn) => bus.addEventListener(name, (e) => fn(e.detail));
export const emit = (name, detail) => bus.dispatchEvent(new CustomEvent(name, { detail }));

/** Call the REST API; rejects with the server's message. A 401 sends the page to the login. */
export async function api(method, path, body) {
  const headers = {};
  if (method !== "GET") headers["X-CSRF-Token"] = session.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch("api/" + path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (response.status === 401 && path !== "login") emit("unauthorized");
  if (!response.ok) throw new Error(data.error || String(response.status));
  return data;
}

const beijing = new Intl.DateTimeFormat(lang === "en" ? "en-GB" : "zh-CN", {
  timeZone: "Asia/Shanghai", year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});
/** An ISO time as Beijing time, labelled. */
export const when = (iso) => (iso ? beijing.format(new Date(iso)) + " (" + T.beijing + ")" : "");

export function escapeHtml(text) {
  const div = document.createElement("div");
  div.textContent = String(text);
  return div.innerHTML;
}

export function translatePage(root = document) {
  for (const el of root.querySelectorAll("[data-i18n]")) {
    if (T[el.dataset.i18n] !== undefined) el.textContent = T[el.dataset.i18n];
  }
}

export function showError(message) {
  $("#api-error").textContent = message || "";
}
