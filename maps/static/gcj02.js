// WGS-84 → GCJ-02 for drawing on tiles of Chinese providers (display only: the platform and its
// API stay WGS-84). The same published transform as geo/geodesy.py (wgs84_to_gcj02); the browser
// test checks this one against it. Identity outside the rough box of mainland China.
"use strict";

const A = 6378245.0;             // Krasovsky 1940
const EE = 0.00669342162296594323;

export const inChina = (lon, lat) => lon >= 72.004 && lon <= 137.8347 && lat >= 0.8293 && lat <= 55.8271;

/** [lon, lat] WGS-84 → [lon, lat] GCJ-02. */
export function wgs84ToGcj02(lon, lat) {
  if (!inChina(lon, lat)) return [lon, lat];
  const x = lon - 105.0, y = lat - 35.0, pi = Math.PI;
  const waves = (20 * Math.sin(6 * x * pi) + 20 * Math.sin(2 * x * pi)) * 2 / 3;
  let dLat = -100 + 2 * x + 3 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * Math.sqrt(Math.abs(x)) + waves;
  dLat += (20 * Math.sin(y * pi) + 40 * Math.sin(y / 3 * pi)) * 2 / 3;
  dLat += (160 * Math.sin(y / 12 * pi) + 320 * Math.sin(y * pi / 30)) * 2 / 3;
  let dLon = 300 + x + 2 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * Math.sqrt(Math.abs(x)) + waves;
  dLon += (20 * Math.sin(x * pi) + 40 * Math.sin(x / 3 * pi)) * 2 / 3;
  dLon += (150 * Math.sin(x / 12 * pi) + 300 * Math.sin(x / 30 * pi)) * 2 / 3;
  const phi = lat * pi / 180, w = 1 - EE * Math.sin(phi) ** 2;
  const m = A * (1 - EE) / (w * Math.sqrt(w)), n = A / Math.sqrt(w);
  return [lon + dLon * 180 / (n * Math.cos(phi) * pi), lat + dLat * 180 / (m * pi)];
}

/** [lon, lat] GCJ-02 → [lon, lat] WGS-84: the inverse by fixed-point iteration, as
 * geo/geodesy.py's gcj02_to_wgs84 (a shape drawn on GCJ-02 tiles is stored in WGS-84). */
export function gcj02ToWgs84(lon, lat) {
  if (!inChina(lon, lat)) return [lon, lat];
  let w = [lon, lat];
  for (let i = 0; i < 30; i++) {
    const g = wgs84ToGcj02(w[0], w[1]);
    const e = [g[0] - lon, g[1] - lat];
    w = [w[0] - e[0], w[1] - e[1]];
    if (Math.abs(e[0]) < 1e-10 && Math.abs(e[1]) < 1e-10) break;
  }
  return w;
}
