"""The load report's chart as a self-contained SVG (no plotting library: two panels of
polylines are a few dozen lines, and a new heavy dependency for them is not worth it).

Top panel: positions/s per second, sent and acknowledged, and the target rate. Bottom panel:
that second's p99 ack latency (ms). With ``--connections`` a third panel: terminals connected.
One point per second of ``report["per_second"]``."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape

W = 900
LEFT, RIGHT = 70, 20
PANELS = ((52, 270), (320, 510), (560, 750))  # (top, bottom) y of each plot area


def _nice(top: float) -> float:
    """A round upper bound for an axis (1, 2 or 5 times a power of ten)."""
    if top <= 0:
        return 1.0
    p = 10 ** len(str(int(top)))
    p /= 10
    for m in (1, 2, 5, 10):
        if top <= m * p:
            return m * p
    return 10 * p


def _line(points: list[tuple[float, float]], color: str, dash: str = "") -> str:
    if not points:
        return ""
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    extra = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<polyline fill="none" stroke="{color}" stroke-width="1.5"{extra} points="{pts}"/>'


def _panel(
    rows: list[dict[str, Any]], keys: list[tuple[str, str, str, str]], area: tuple[int, int],
    t_max: float, label: str,
) -> list[str]:  # fmt: skip
    top, bottom = area
    y_max = _nice(max((float(r.get(k) or 0) for r in rows for k, *_ in keys), default=1.0))
    width = W - LEFT - RIGHT

    def x(t: float) -> float:
        return LEFT + width * t / t_max

    def y(v: float) -> float:
        return bottom - (bottom - top) * min(v, y_max) / y_max

    out = [f'<rect x="{LEFT}" y="{top}" width="{width}" height="{bottom - top}" '
           'fill="none" stroke="#999"/>']  # fmt: skip
    for k in range(5):
        v = y_max * k / 4
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                   'stroke="#eee"/>')  # fmt: skip
        text = f"{v:,.0f}" if y_max >= 20 else f"{v:.2f}".rstrip("0").rstrip(".")
        out.append(f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{text}</text>')
    out.append(f'<text x="{LEFT}" y="{top - 8}">{escape(label)}</text>')
    for n, (key, color, name, dash) in enumerate(keys):
        out.append(_line([(x(r["t"]), y(float(r.get(key) or 0))) for r in rows], color, dash))
        lx = W - RIGHT - 160
        ly = top + 16 + 16 * n
        out.append(f'<line x1="{lx}" x2="{lx + 20}" y1="{ly - 4}" y2="{ly - 4}" '
                   f'stroke="{color}" stroke-width="2"/>')  # fmt: skip
        out.append(f'<text x="{lx + 26}" y="{ly}">{escape(name)}</text>')
    return out


def chart_svg(report: dict[str, Any]) -> str:
    """The SVG text of a load report's chart."""
    rows = [r for r in report.get("per_second", []) if "t" in r]
    t_max = max((float(r["t"]) for r in rows), default=1.0) or 1.0
    title = (f"fleetwatch loadtest, {report.get('mode', '')}, {report.get('started', '')}: "
             f"p99 ack {report.get('ack_latency_ms', {}).get('p99', '?')} ms")  # fmt: skip
    panels = 3 if report.get("mode") == "connections" else 2
    h = PANELS[panels - 1][1] + 50
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" '
        f'viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{LEFT}" y="18" font-size="14">{escape(title)}</text>',
    ]
    parts += _panel(rows, [("target", "#999", "target/s", "4 3"), ("sent", "#1f77b4", "sent/s", ""),
                           ("acked", "#2ca02c", "acked/s", "")],
                    PANELS[0], t_max, "positions per second")  # fmt: skip
    parts += _panel(rows, [("ack_p99_ms", "#d62728", "p99 ack, ms", "")], PANELS[1], t_max,
                    "p99 ack latency of each second, ms")  # fmt: skip
    if panels == 3:
        parts += _panel(rows, [("connected", "#9467bd", "connected", "")], PANELS[2], t_max,
                        "terminals connected")  # fmt: skip
    for k in range(6):
        t = t_max * k / 5
        xx = LEFT + (W - LEFT - RIGHT) * k / 5
        parts.append(f'<text x="{xx:.1f}" y="{PANELS[panels - 1][1] + 16}" '
                     f'text-anchor="middle">{t:,.0f} s</text>')  # fmt: skip
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
