"""The network dashboard: one self-contained ``index.html`` beside the aggregate (no CDN, no
script), leading with the estimate a person can use."""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cpu_tracker_daemon.network.estimate import informative

WIDTH, HEIGHT = 720, 300
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 76, 16, 16, 46
REFRESH_SECONDS = 60
LOWER, UPPER = 0.0, 100.0  # the percentages a CPU load can be
SECURE, LOCAL = "secure", "local"  # the two kinds of estimate, as history entries name them


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


def utc(iso: str, day: bool = True) -> str:
    """An ISO time as a person reads it on a page that cannot know their time zone:
    "11:00 UTC on 1 Dec 2026" (without ``day``, "11:00 UTC")."""
    when = datetime.fromisoformat(iso).astimezone(UTC)
    return f"{when:%H:%M} UTC" + (f" on {when.day} {when:%b %Y}" if day else "")


def _axis_time(iso: str) -> str:
    """A chart label: "1 Dec 11:00 UTC"."""
    when = datetime.fromisoformat(iso).astimezone(UTC)
    return f"{when.day} {when:%b %H:%M} UTC"


def kind_of(entry: Mapping[str, Any]) -> str:
    """Which estimate a history entry is of (entries written before secure rounds were kept in
    the history have no kind: they are the members' own releases)."""
    return str(entry.get("kind", LOCAL))


def _runs(readable: Sequence[bool]) -> list[range]:
    """The stretches of consecutive True values, as index ranges."""
    runs, start = [], None
    for i, ok in enumerate([*readable, False]):
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            runs.append(range(start, i))
            start = None
    return runs


def chart_svg(history: Sequence[Mapping[str, Any]]) -> str:
    """An SVG of the mean over time with its 95% interval as a shaded band. The mean is drawn
    only where its interval leaves room to read it (:func:`estimate.informative`): a line inside
    a band that covers the chart would show a figure the noise does not support."""
    if not history:
        return (
            f'<svg id="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="no estimates yet">'
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no estimates yet</text></svg>'
        )
    times = [datetime.fromisoformat(h["computed_at"]).timestamp() for h in history]
    readable = [informative(h["ci95_low"], h["ci95_high"], LOWER, UPPER) for h in history]
    # Drawn within what a CPU load can be: an interval past 0 or 100% is cut at the axis.
    means = [_in_range(h["mean"]) for h in history]
    lows = [_in_range(h["ci95_low"]) for h in history]
    highs = [_in_range(h["ci95_high"]) for h in history]
    t_lo, t_hi = min(times), max(times)
    if t_hi > t_lo:
        xs = _scale(times, t_lo, t_hi, PAD_LEFT, WIDTH - PAD_RIGHT)
    else:  # one point in time: in the middle
        xs = [(PAD_LEFT + WIDTH - PAD_RIGHT) / 2] * len(times)

    def ys(values: Sequence[float]) -> list[float]:
        return _scale(values, LOWER, UPPER, HEIGHT - PAD_BOTTOM, PAD_TOP)

    def points(pairs: Sequence[tuple[float, float]]) -> str:
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in pairs)

    parts = []
    for value in _nice_ticks(LOWER, UPPER):
        (y,) = ys([float(value)])
        parts.append(
            f'<line x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{PAD_LEFT - 8}" y="{y + 7:.1f}" text-anchor="end">{value:g}%</text>'
        )
    tops, bottoms, centres = ys(highs), ys(lows), ys(means)
    if t_hi > t_lo:
        band = list(zip(xs, tops, strict=True)) + list(reversed(list(zip(xs, bottoms, strict=True))))
        parts.append(f'<polygon id="band" points="{points(band)}" class="band"/>')
    else:  # a band needs two times: each interval as a bar
        parts += [
            f'<rect x="{x - 6:.1f}" y="{top:.1f}" width="12" height="{bottom - top:.1f}" class="band"/>'
            for x, top, bottom in zip(xs, tops, bottoms, strict=True)
        ]
    line = list(zip(xs, centres, strict=True))
    for run in _runs(readable):
        if len(run) > 1:
            parts.append(f'<polyline points="{points(line[run.start : run.stop])}" class="line"/>')
    parts += [
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" class="mean"/>'
        for (x, y), ok in zip(line, readable, strict=True)
        if ok
    ]
    if not readable[-1]:
        parts.append(
            f'<text x="{(PAD_LEFT + WIDTH - PAD_RIGHT) / 2:.1f}" y="{PAD_TOP + 34}" text-anchor="middle" '
            'class="note">too uncertain to draw the mean</text>'
        )
    first, last = _axis_time(history[0]["computed_at"]), _axis_time(history[-1]["computed_at"])
    parts.append(f'<text x="{PAD_LEFT}" y="{HEIGHT - 10}">{html.escape(first)}</text>')
    if last != first:
        parts.append(
            f'<text x="{WIDTH - PAD_RIGHT}" y="{HEIGHT - 10}" text-anchor="end">{html.escape(last)}</text>'
        )
    return (
        f'<svg id="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="network CPU mean over time with its 95% interval">' + "".join(parts) + "</svg>"
    )


# Sizes in rem and a padding on the body, so that text never touches a phone's edge; the chart's
# labels are in the SVG's units, which a narrow screen scales down: larger there.
_STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1.5rem 1.25rem;max-width:820px;
color:#1b1f24;background:#fff;line-height:1.4}
h1{font-size:1.3rem;margin:0}
h2{font-size:1.05rem;margin:1.5rem 0 .2rem}
.how{color:#57606a;margin:.1rem 0 1rem}
.value{font-size:2.6rem;font-weight:600;line-height:1.15;overflow-wrap:anywhere}
.other .value{font-size:1.6rem}
.sub{color:#57606a;overflow-wrap:anywhere}
figure{margin:1.25rem 0 0}
figcaption{font-size:.85rem;color:#57606a}
svg{display:block;width:100%;height:auto;margin-bottom:.4rem}
svg text{font-size:12px;fill:#57606a}
svg text.note{font-size:14px;fill:#1b1f24}
.grid{stroke:#d0d7de;stroke-width:1}
.band{fill:#54aeff;fill-opacity:.22;stroke:none}
.line{fill:none;stroke:#0969da;stroke-width:2.5}
.mean{fill:#0969da}
footer{margin-top:1.5rem;font-size:.85rem;color:#57606a}
footer p{margin:.4rem 0}
@media (max-width:560px){
body{padding:1rem}
.value{font-size:2.2rem}
svg text{font-size:24px}
svg text.note{font-size:26px}
}
"""


def headline(est: Mapping[str, Any], secure: bool = False) -> tuple[str, str]:
    """The big line and the one under it: the estimate within 0-100%, or, when its interval is
    too wide to mean anything, that in words, with the network size that would do. ``secure``:
    a secure round's, whose interval may be the noise's exact one (``ci95_exact``)."""
    seen = est["reading"]
    low, high = seen["ci95"]
    if est["informative"]:
        clipped = " (clipped to the 0\u2013100% a load can be)" if seen["clipped"] else ""
        exact = "exact " if est.get("ci95_exact") else ""
        return f"{seen['mean']:.1f}%", f"{exact}95% interval {low:.1f}% to {high:.1f}%{clipped}"
    count = members(est)
    figures = f"the estimate is {seen['mean']:.0f}% and its interval {low:.0f}% to {high:.0f}%"
    within = f"Clipped to 0\u2013100%, {figures}" if seen["clipped"] else figures.capitalize()
    advice = "or a larger epsilon per round" if secure else "or a larger epsilon per release"
    return (
        "Too uncertain to read",
        f"With {plural(count, 'member')} the noise leaves a 95% interval of "
        f"\u00b1{seen['half_width']:.0f} points. {within}. About {seen['members_for_target']:,} "
        f"members, {advice}, give \u00b1{seen['target_half_width']:g} points.",
    )


def members(est: Mapping[str, Any]) -> int:
    """How many members an estimate is of: a pass counts peers, a secure round members."""
    return int(est["members"] if "members" in est else est["peers"])


def plural(count: int, noun: str) -> str:
    """ "1 member", "2 members", "1,000 members"."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def own_releases(est: Mapping[str, Any]) -> str:
    """Whose figure a pass's estimate is: "20 members, each with a noisy release of its own"."""
    return f"{plural(members(est), 'member')}, each with a noisy release of its own"


def secure_lines(secure: Mapping[str, Any]) -> tuple[str, str]:
    """The secure round's value and the line under it, as the dashboard and the CLI show them."""
    est = secure.get("estimate")
    if not est:
        return "no estimate", f"the last secure round gave none: {secure.get('aborted') or 'no members'}"
    return headline(est, secure=True)


def secure_when(secure: Mapping[str, Any]) -> str:
    """Whose and when a secure round's figure is: "100 members, their 50 s window from
    11:00 UTC on 1 Dec 2026 (round 493907)"."""
    est = secure.get("estimate") or {}
    window = secure.get("window") or {}
    start, end = window.get("start"), window.get("end")
    span = ""
    if isinstance(start, str) and isinstance(end, str):
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
        span = f", their {seconds:g} s window from {utc(start)}"
    who = plural(members(est), "member") if est else plural(int(secure.get("members") or 0), "member")
    return f"{who}{span} (round {secure.get('round')})"


def _published(secure: Mapping[str, Any]) -> str:
    """When a round's outcome was published: the time alone on its window's day."""
    published = str(secure["computed_at"])
    start = (secure.get("window") or {}).get("start")
    day = datetime.fromisoformat(published).astimezone(UTC).date()
    same_day = isinstance(start, str) and datetime.fromisoformat(start).astimezone(UTC).date() == day
    return f"published at {utc(published, day=not same_day)}"


def skipped_words(skipped: Mapping[str, int]) -> str:
    """The peers a pass skipped, by reason: "no release (101), too old (2)"; "" for none."""
    return ", ".join(f"{reason} ({count:,})" for reason, count in sorted(skipped.items()))


def lead_kind(record: Mapping[str, Any]) -> str | None:
    """Which estimate the page and ``cpu-tracker aggregate`` lead with: the secure round's when
    it gave one, else the members' own releases', else None (no estimate at all)."""
    secure = record.get("secure")
    if secure and secure.get("estimate"):
        return SECURE
    if record.get("estimate"):
        return LOCAL
    return None


def _unbroken(text: str) -> str:
    """``text`` escaped for the page, its times kept on one line ("11:00 UTC on 1 Dec 2026")."""
    return re.sub(
        r"\d\d:\d\d UTC( on \d+ \w+ \d{4})?", lambda m: m.group(0).replace(" ", "\u00a0"), html.escape(text)
    )


def _lead(record: Mapping[str, Any], kind: str | None) -> tuple[str, str, str]:
    """The lead section's three lines: value, interval, and whose and when."""
    computed = f"at {utc(str(record['computed_at']))}" if record.get("computed_at") else "not yet"
    if kind == SECURE:
        secure = record["secure"]
        value, interval = secure_lines(secure)
        return value, interval, f"{secure_when(secure)}, {_published(secure)}"
    if kind == LOCAL:
        est = record["estimate"]
        value, interval = headline(est)
        return value, interval, f"{own_releases(est)}; computed {computed}"
    secure = record.get("secure")
    why = skipped_words(record.get("skipped") or {})
    detail = (
        secure_lines(secure)[1]
        if secure
        else "no valid release from any member in the last pass" + (f" (skipped: {why})" if why else "")
    )
    return "No estimate yet", detail, f"computed {computed}"


def _other(record: Mapping[str, Any], kind: str | None) -> str:
    """The estimate that does not lead, when there is one: the members' own releases under a
    secure round's figure, or why the last secure round gave none under theirs."""
    secure = record.get("secure")
    if kind == SECURE and record.get("estimate"):
        est = record["estimate"]
        value, interval = headline(est)
        title = "From the members' own releases (local differential privacy)"
        who = f"{own_releases(est)}; computed at {utc(str(record['computed_at']))}"
    elif kind == LOCAL and secure:
        value, interval = secure_lines(secure)
        title, who = "Secure aggregation, the last round", secure_when(secure)
    else:
        return ""
    return (
        f'<section class="other"><h2>{html.escape(title)}</h2>'
        f'<div class="value" id="other-mean">{html.escape(value)}</div>'
        f'<div class="sub" id="other-interval">{html.escape(interval)}</div>'
        f'<div class="sub" id="other-peers">{_unbroken(who)}</div></section>'
    )


def _how(kind: str | None, record: Mapping[str, Any]) -> str:
    if kind == SECURE:
        return "from the last secure aggregation round"
    if kind == LOCAL:
        return "from the members' own noisy releases (local differential privacy)"
    return "secure aggregation" if record.get("secure") else "local differential privacy"


def _footer(record: Mapping[str, Any], kind: str | None) -> str:
    """What happened to make the figures on the page: secure aggregation, local noise, or both."""
    secure = record.get("secure")
    said = []
    if kind == SECURE or (kind is None and secure):
        assert secure is not None
        exact = (secure.get("estimate") or {}).get("ci95_exact")
        said.append(
            "Secure aggregation: each member masked its window's value so that only the sum of all "
            "of them could be read, and added a share of one noise draw (discrete Laplace, epsilon "
            f"{secure.get('epsilon', 0):g} for the round) and noise of its own (epsilon "
            f"{secure.get('local_epsilon', 0):g}, whatever the roster): the aggregator learned the noisy "
            "sum and nothing else. The interval is that noise's 95% interval"
            + (", computed exactly." if exact else ", a bound that holds at least 95% of the time.")
        )
    if kind == LOCAL or record.get("estimate") or (kind is None and not secure):
        said.append(
            "Local differential privacy: each member publishes only a noisy mean of its own CPU use, "
            "and the estimate averages them; its 95% interval comes from the members' declared noise "
            "and their spread."
        )
    said.append(
        "On the chart, the band is the 95% interval; the mean is drawn only where the band is "
        f"narrow enough to read it. The page reloads every {REFRESH_SECONDS} s."
    )
    return '<footer id="footer">' + "".join(f"<p>{html.escape(s)}</p>" for s in said) + "</footer>"


def render(record: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> str:
    """The whole page for the latest aggregate ``record`` and its ``history``."""
    kind = lead_kind(record)
    value, interval, who = _lead(record, kind)
    series = [h for h in history if kind_of(h) == (kind or (SECURE if record.get("secure") else LOCAL))]
    caption = "Each secure round" if kind == SECURE else "Each aggregation pass"
    data = json.dumps({"latest": record, "history": list(history)}).replace("</", "<\\/")
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<title>cpu-tracker: network CPU</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>Network CPU load</h1>"
        f'<p class="how" id="how">{html.escape(_how(kind, record))}</p>'
        f'<section class="lead" data-kind="{kind or "none"}">'
        f'<div class="value" id="mean">{html.escape(value)}</div>'
        f'<div class="sub" id="interval">{html.escape(interval)}</div>'
        f'<div class="sub" id="peers">{_unbroken(who)}</div></section>'
        f"<figure>{chart_svg(series)}"
        f"<figcaption>{caption}: the mean and its 95% interval, within the 0\u2013100% a load can be."
        "</figcaption></figure>"
        + _other(record, kind)
        + _footer(record, kind)
        + f'<script type="application/json" id="data">{data}</script>'
        "</body></html>\n"
    )
