#!/usr/bin/env bash
# Idempotent set-up: system packages (apt, when missing) and the Python venv at .venv.
# Works as root, or as a normal user with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium + fonts-wqy-microhei: the dashboard's browser tests (Chinese plates must render);
# npm: vendoring Leaflet (below), unless an npm is there already (e.g. NodeSource's nodejs).
APT_PACKAGES=(postgresql-15-postgis-3 chromium fonts-wqy-microhei)
command -v npm >/dev/null || APT_PACKAGES+=(npm)
SUDO=()
[ "$(id -u)" = 0 ] || SUDO=(sudo)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.fleetwatch-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi

# The dashboard's browser libraries, from the npm registry into maps/static/vendor (not committed;
# no CDN at run time). Re-run only when the wanted version is not there yet.
vendor_npm() {  # vendor_npm PACKAGE VERSION SUBDIR
  local dest=maps/static/vendor/$1
  if [ "$(cat "$dest/.version" 2>/dev/null)" = "$2" ]; then return; fi
  local tmp; tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$1@$2" >/dev/null)
  rm -rf "$dest" && mkdir -p "$dest"
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  cp -r "$tmp/package/$3/." "$dest/"
  echo "$2" > "$dest/.version"
  rm -rf "$tmp"
  echo "setup: vendored $1 $2"
}
vendor_npm leaflet 1.9.4 dist
vendor_npm @geoman-io/leaflet-geoman-free 2.20.2 dist

echo "setup: ready (.venv)"
