// Vehicle class icons: one small SVG symbol per class (white on the state-coloured badge), drawn
// for FleetWatch, put into the page once as a sprite and used by reference from every marker
// (<use href="#fw-i-CLASS">), so 5,000 markers share six drawings.
"use strict";

const SYMBOLS = {
  // a saloon with a red/blue light bar on the roof
  police: `<path d="M3 13.5l1.6-4.2A2 2 0 0 1 6.5 8h11a2 2 0 0 1 1.9 1.3l1.6 4.2V18h-2.2a2 2 0 0 1-3.6 0H8.8a2 2 0 0 1-3.6 0H3z" fill="#fff"/>
    <path d="M6.4 12.5l1-2.6h9.2l1 2.6z" fill="#34495e"/>
    <rect x="8" y="4.6" width="4" height="2.4" rx=".6" fill="#e53935"/><rect x="12" y="4.6" width="4" height="2.4" rx=".6" fill="#1e6fd9"/>`,
  // a short yellow bus with a stop arm
  school_bus: `<rect x="3" y="6" width="15" height="11" rx="2.5" fill="#ffd21f" stroke="#fff" stroke-width="1"/>
    <rect x="5" y="8" width="3" height="3" fill="#34495e"/><rect x="9" y="8" width="3" height="3" fill="#34495e"/><rect x="13" y="8" width="3" height="3" fill="#34495e"/>
    <circle cx="7" cy="18" r="1.8" fill="#fff"/><circle cx="15" cy="18" r="1.8" fill="#fff"/>
    <path d="M18 9h2.5v4H18z" fill="#fff"/><circle cx="21.2" cy="11" r="1.6" fill="#e53935"/>`,
  // a long coach with a row of windows
  coach: `<rect x="2" y="6" width="20" height="11" rx="2" fill="#fff"/>
    <path d="M4 8h3v3H4zm4 0h3v3H8zm4 0h3v3h-3zm4 0h4v3h-4z" fill="#34495e"/>
    <circle cx="6.5" cy="17.5" r="1.8" fill="#34495e" stroke="#fff"/><circle cx="17.5" cy="17.5" r="1.8" fill="#34495e" stroke="#fff"/>`,
  // a cab and a long box
  heavy_truck: `<rect x="2" y="5" width="13" height="11" rx="1" fill="#fff"/>
    <path d="M15.5 9h3.6l2.9 3.5V16h-6.5z" fill="#fff"/><path d="M16.5 10h2.2l1.8 2.2h-4z" fill="#34495e"/>
    <circle cx="6" cy="17.5" r="1.9" fill="#34495e" stroke="#fff"/><circle cx="18" cy="17.5" r="1.9" fill="#34495e" stroke="#fff"/>`,
  // a tanker with the orange hazard diamond
  hazmat: `<rect x="2" y="7" width="13" height="8" rx="4" fill="#fff"/>
    <path d="M15.5 9h3.6l2.9 3.5V16h-6.5z" fill="#fff"/>
    <path d="M8.5 7.6l3.4 3.4-3.4 3.4L5.1 11z" fill="#ff7a00" stroke="#34495e" stroke-width=".6"/>
    <circle cx="6" cy="17.5" r="1.9" fill="#34495e" stroke="#fff"/><circle cx="18" cy="17.5" r="1.9" fill="#34495e" stroke="#fff"/>`,
  other: `<circle cx="12" cy="12" r="5" fill="#fff"/>`,
};

export const CLASSES = Object.keys(SYMBOLS);

/** Put the sprite into the page (once). */
export function installIcons() {
  if (document.getElementById("fw-icons")) return;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.id = "fw-icons";
  svg.setAttribute("aria-hidden", "true");
  svg.style.display = "none";
  svg.innerHTML = Object.entries(SYMBOLS)
    .map(([name, body]) => `<symbol id="fw-i-${name}" viewBox="0 0 24 24">${body}</symbol>`).join("");
  document.body.prepend(svg);
}

/** The symbol id of a class (unknown classes get the plain dot). */
export const iconRef = (cls) => "#fw-i-" + (SYMBOLS[cls] ? cls : "other");
