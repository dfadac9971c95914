// FleetWatch dashboard entry: the login flow; the features are the modules imported below.
// No build step, no CDN: ES modules from this origin, Leaflet and plugins from vendor/
// (scripts/setup.sh). State for tests and screen readers alike: body[data-state] is
// loading | login | ready.
"use strict";
import { $, T, api, emit, lang, on, runReady, session, showError, translatePage } from "./core.js";
// Features: each module registers its strings and runs onReady(fn) after login, listens for "logout".
import "./map.js";
import "./alarms.js";
import "./vehicles.js";
import "./geofences.js";
import "./panel.js";
import "./replay.js";
import "./live.js";

function showLogin() {
  if (session.user) emit("logout");
  session.user = null;
  $("#main").hidden = true;
  $("#login").hidden = false;
  document.body.dataset.state = "login";
  $("#username").focus();
}

async function showMain(user) {
  session.user = user;
  $("#login").hidden = true;
  $("#main").hidden = false;
  $("#who").textContent = user.username + " · " + (T.roles[user.role] || user.role) +
    (user.company ? " · " + user.company : "");
  await runReady(user);
  document.body.dataset.state = "ready";
}

on("unauthorized", showLogin);
on("error", showError);

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("#login-error").textContent = "";
  $("#login-submit").disabled = true;
  try {
    const data = await api("POST", "login", {
      username: $("#username").value, password: $("#password").value,
    });
    session.csrf = data.csrf;
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
    session.csrf = data.csrf;
    showLogin();
  }
});

(async function start() {
  document.documentElement.lang = lang === "en" ? "en" : "zh-CN";
  translatePage();
  const data = await api("GET", "session");
  session.csrf = data.csrf;
  if (data.user) await showMain(data.user); else showLogin();
})();
