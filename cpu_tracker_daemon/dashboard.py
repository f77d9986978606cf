"""The network dashboard: one self-contained ``index.html`` beside the aggregate.

No CDN, no script, no fetch: the chart is an inline SVG drawn here, so the page works offline
and from a synced folder opened as ``file://``. It reloads itself every minute
(``<meta http-equiv="refresh">``), and the aggregator rewrites it after every pass.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

WIDTH, HEIGHT = 720, 260
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 48, 16, 16, 32
REFRESH_SECONDS = 60
LOWER, UPPER = 0.0, 100.0  # the percentages a CPU load can be


def _in_range(value: float) -> float:
    return min(max(float(value), LOWER), UPPER)


def _scale(values: Sequence[float], lo: float, hi: float, out_lo: float, out_hi: float) -> list[float]:
    span = (hi - lo) or 1.0
    return [out_lo + (v - lo) / span * (out_hi - out_lo) for v in values]


def _nice_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering [lo, hi]."""
    raw = (hi - lo) / most
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) // step) + 1)]


def chart_svg(history: Sequence[Mapping[str, Any]]) -> str:
    """An SVG line of the mean over time with its 95% interval as a shaded band."""
    if not history:
        return (
            f'<svg id="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="no data yet">'
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data yet</text></svg>'
        )
    times = [datetime.fromisoformat(h["computed_at"]).timestamp() for h in history]
    # Drawn within what a CPU load can be: an interval past 0 or 100% is cut at the axis.
    means = [_in_range(h["mean"]) for h in history]
    lows = [_in_range(h["ci95_low"]) for h in history]
    highs = [_in_range(h["ci95_high"]) for h in history]
    y_lo, y_hi = LOWER, UPPER
    t_lo, t_hi = min(times), max(times)
    xs = _scale(times, t_lo, t_hi if t_hi > t_lo else t_lo + 1, PAD_LEFT, WIDTH - PAD_RIGHT)

    def ys(values: Sequence[float]) -> list[float]:
        return _scale(values, y_lo, y_hi, HEIGHT - PAD_BOTTOM, PAD_TOP)

    band = list(zip(xs, ys(highs), strict=True)) + list(reversed(list(zip(xs, ys(lows), strict=True))))
    line = list(zip(xs, ys(means), strict=True))

    def points(pairs: Sequence[tuple[float, float]]) -> str:
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in pairs)

    ticks = []
    for value in _nice_ticks(y_lo, y_hi):
        (y,) = ys([float(value)])
        ticks.append(
            f'<line x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{PAD_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value:g}%</text>'
        )
    first = html.escape(history[0]["computed_at"][:16].replace("T", " "))
    last = html.escape(history[-1]["computed_at"][:16].replace("T", " "))
    marker = f'<circle cx="{line[-1][0]:.1f}" cy="{line[-1][1]:.1f}" r="3" class="mean"/>'
    return (
        f'<svg id="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="network CPU mean over time with its 95% interval">'
        + "".join(ticks)
        + f'<polygon id="band" points="{points(band)}" class="band"/>'
        + f'<polyline id="line" points="{points(line)}" class="line"/>'
        + marker
        + f'<text x="{PAD_LEFT}" y="{HEIGHT - 8}">{first} UTC</text>'
        + f'<text x="{WIDTH - PAD_RIGHT}" y="{HEIGHT - 8}" text-anchor="end">{last} UTC</text>'
        + "</svg>"
    )


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:760px;color:#1b1f24;background:#fff}
h1{font-size:1.3rem;margin:0 0 1rem}
.value{font-size:2.6rem;font-weight:600}
.sub{color:#57606a}
svg{width:100%;height:auto;margin-top:1rem}
svg text{font-size:11px;fill:#57606a}
.grid{stroke:#d0d7de;stroke-width:1}
.band{fill:#54aeff;fill-opacity:.25;stroke:none}
.line{fill:none;stroke:#0969da;stroke-width:2}
.mean{fill:#0969da}
footer{margin-top:1.5rem;font-size:.8rem;color:#57606a}
"""


def headline(est: Mapping[str, Any]) -> tuple[str, str]:
    """The big line and the one under it: the estimate within 0-100%, or, when its interval is
    too wide to mean anything, that in words, with the network size that would do."""
    seen = est["reading"]
    low, high = seen["ci95"]
    if est["informative"]:
        clipped = " (clipped to the 0\u2013100% a load can be)" if seen["clipped"] else ""
        return f"{seen['mean']:.1f}%", f"95% interval {low:.1f}% to {high:.1f}%{clipped}"
    members = est["peers"]
    figures = f"the estimate is {seen['mean']:.0f}% and its interval {low:.0f}% to {high:.0f}%"
    within = f"Clipped to 0\u2013100%, {figures}" if seen["clipped"] else figures.capitalize()
    return (
        "Too uncertain to read",
        f"With {members} member{'s' if members != 1 else ''} the noise leaves a 95% interval of "
        f"\u00b1{seen['half_width']:.0f} points. {within}. About {seen['members_for_target']:,} "
        f"members, or a larger epsilon per release, give \u00b1{seen['target_half_width']:g} points.",
    )


def secure_lines(secure: Mapping[str, Any]) -> tuple[str, str]:
    """The secure round's value and the line under it, as the dashboard and the CLI show them."""
    est = secure.get("estimate")
    if not est:
        return (
            "no estimate",
            f"round {secure.get('round')} gave none: {secure.get('aborted') or 'no members'}",
        )
    seen = est["reading"]
    low, high = seen["ci95"]
    members = f"{est['members']:,} member{'s' if est['members'] != 1 else ''}"
    return (
        f"{seen['mean']:.2f}%",
        f"exact 95% interval {low:.2f}% to {high:.2f}%, {members}, round {secure.get('round')}",
    )


def _secure_section(secure: Mapping[str, Any] | None) -> str:
    if secure is None:
        return ""
    value, detail = secure_lines(secure)
    return (
        "<h2>Secure aggregation, the last round</h2>"
        f'<div class="value" id="secure-mean">{html.escape(value)}</div>'
        f'<div class="sub" id="secure-interval">{html.escape(detail)}</div>'
        '<div class="sub">The members mask their values so that only the sum can be read, and each '
        "adds a share of one noise draw: the aggregator learns the noisy sum and nothing else.</div>"
    )


def render(record: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> str:
    """The whole page for the latest aggregate ``record`` and its ``history``."""
    est = record.get("estimate")
    if est:
        value, interval = headline(est)
        peers = f"{est['peers']:,} peer{'s' if est['peers'] != 1 else ''}"
    else:
        value, interval, peers = "no data", "no valid peer releases yet", "0 peers"
    computed = html.escape(str(record.get("computed_at", ""))[:19].replace("T", " ") + " UTC")
    data = json.dumps({"latest": record, "history": list(history)}).replace("</", "<\\/")
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<title>cpu-tracker: network CPU</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>Network CPU load (differentially private)</h1>"
        f'<div class="value" id="mean">{html.escape(value)}</div>'
        f'<div class="sub" id="interval">{html.escape(interval)}</div>'
        f'<div class="sub" id="peers">{html.escape(peers)}, computed {computed}</div>'
        + _secure_section(record.get("secure"))
        + chart_svg(history)
        + "<footer>Each member publishes only a noisy mean of its own CPU use; this page averages "
        "them. The band is the 95% interval from the members' declared noise and their spread. "
        f"The page reloads every {REFRESH_SECONDS} s.</footer>"
        f'<script type="application/json" id="data">{data}</script>'
        "</body></html>\n"
    )
