"""Headless Chromium for the dashboard tests, and a screenshot tool a person can run.

    python -m tests.browser PAGE.html OUT.png [WIDTH]   # the whole page, as a browser draws it

Uses Debian's ``chromium`` with no network, no sandbox (CI runs as root) and a fresh profile.
:func:`layout` measures a copy of the page with a script of the test's own added at its end (the
page itself has none), so a test can read where Chromium put the text at a given width.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(page: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    binary = chromium()
    if binary is None:
        raise RuntimeError("chromium is not installed (Debian package chromium)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )


def dump_dom(page: Path) -> str:
    """The DOM after Chromium has loaded and laid out the page."""
    return _run(page, "--dump-dom").stdout


# Run inside the page (a copy of it): where each element that holds text was drawn. It writes
# what it found into the frame's parent, the document --dump-dom prints.
_MEASURE = """<script>(() => {
  const box = (e) => { const r = e.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width, height: r.height}; };
  const shown = [...document.body.querySelectorAll("*")].filter((e) =>
    e.getClientRects().length && [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim()));
  const body = document.body;
  const out = {
    viewport: window.innerWidth,
    scroll_width: document.documentElement.scrollWidth,
    page_height: Math.ceil(body.getBoundingClientRect().bottom
      + parseFloat(getComputedStyle(body).marginBottom)),
    text: shown.map((e) => ({tag: e.tagName.toLowerCase(), id: e.id, cls: e.getAttribute("class") || "",
      text: e.textContent.trim().slice(0, 80), font_px: parseFloat(getComputedStyle(e).fontSize),
      ...box(e)})),
  };
  const pre = parent.document.createElement("pre");
  pre.id = "measured";
  pre.textContent = JSON.stringify(out);
  parent.document.body.appendChild(pre);
})();</script>"""


def layout(page: Path, width: int) -> dict[str, Any]:
    """The page laid out ``width`` px wide: the viewport, the document's scroll width, the
    page's height, and each element that holds text with its box (px) and font size.

    Chromium's window is at least 500 px wide, so the page is measured in a frame of ``width``
    (its media queries see that width, as a phone's would)."""
    import html

    measured_page = page.read_text().replace("</body>", _MEASURE + "</body>")
    frame = (
        '<!doctype html><html><body style="margin:0">'
        f'<iframe style="border:0;width:{width}px;height:4000px" srcdoc="{html.escape(measured_page)}">'
        "</iframe></body></html>"
    )
    with tempfile.TemporaryDirectory() as work:
        wrapper = Path(work) / "frame.html"
        wrapper.write_text(frame)
        dom = dump_dom(wrapper)
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    if found is None:
        raise RuntimeError(f"chromium ran no measuring script for {page}")
    measured: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return measured


def screenshot(page: Path, out: Path, width: int = 900, height: int | None = 520) -> Path:
    """A PNG of the page ``width`` px wide: ``height`` px of it, or all of it with None."""
    if height is None:
        height = int(layout(page, width)["page_height"])
    _run(page, f"--screenshot={out.resolve()}", f"--window-size={width},{height}")
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m tests.browser PAGE.html OUT.png [WIDTH]")
    print(
        screenshot(
            Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) == 4 else 900, None
        )
    )
