"""Check a report page the way a person sees it: rendered in headless Chromium (Playwright driving the system's
Chromium) at desktop and phone widths. Used by the tests and by ``bench/report_pages.py``.

Needs ``pip install playwright`` (the ``test`` extra) and a Chromium on PATH (``scripts/system-deps.sh``)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Optional

from ..core.errors import SlimkitError

WIDTHS = (1400, 420)

_PROBE = """() => ({
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
    h3: Array.from(document.querySelectorAll('h3')).map(h => h.textContent),
    plots: Array.from(document.querySelectorAll('[data-figure]')).map(d => {
        const svg = d.querySelector('svg.main-svg'); const r = d.getBoundingClientRect();
        return {name: d.dataset.figure, drawn: !!svg && d.querySelectorAll('.trace, .point, path').length > 0,
                width: r.width, height: r.height, right: r.right};}),
    viewport: !!document.querySelector('meta[name=viewport]'),
    title: document.title})"""


def chromium() -> Optional[str]:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def launch(playwright):
    exe = chromium()
    if exe is None:
        raise SlimkitError("no Chromium on PATH; run scripts/system-deps.sh")
    return playwright.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])


def render(browser, page_path: Path, shots: Optional[Path] = None, name: str = "page",
           widths=WIDTHS) -> list[dict]:
    """Open the page at each width; return what was observed (console errors, network requests, layout, plots);
    with ``shots``, save a full-page screenshot per width there."""
    seen = []
    for w in widths:
        pg = browser.new_page(viewport={"width": w, "height": 900})
        errors, requests = [], []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("request", lambda r: requests.append(r.url)
              if not r.url.startswith(("file:", "data:", "blob:")) else None)
        pg.goto(Path(page_path).resolve().as_uri())
        pg.wait_for_load_state("load")
        pg.wait_for_timeout(300)
        info = pg.evaluate(_PROBE)
        shot = None
        if shots is not None:
            Path(shots).mkdir(parents=True, exist_ok=True)
            shot = Path(shots) / f"{name}-{w}.png"
            pg.screenshot(path=str(shot), full_page=True)
        pg.close()
        seen.append(dict(info, width=w, errors=errors, requests=requests, screenshot=str(shot) if shot else None))
    return seen


REPORT_SECTIONS = frozenset({"summary", "metrics", "verdicts", "stages", "settings"})
COMPARE_SECTIONS = frozenset({"leaderboard", "scatter", "recipes"})


def md_table_titles(md_text: str) -> list[str]:
    fixed = {"Baseline vs compressed", "What got faster or smaller (and what did not)", "Stages", "Notes",
             "On-device runtimes"}
    return [t for t in re.findall(r"^## (.+)$", md_text, flags=re.M) if t not in fixed]


def problems(seen: list[dict], md_text: str = "", sections=REPORT_SECTIONS) -> list[str]:
    """What is wrong with the rendered page (empty: nothing). ``md_text``: the run's report.md, whose technique
    tables must all be on the page; ``sections``: the section ids the page must have."""
    out = []
    md_tables = md_table_titles(md_text)
    for s in seen:
        w = s["width"]
        out += [f"{w}px: console error: {e}" for e in s["errors"]]
        out += [f"{w}px: network request: {u}" for u in s["requests"]]
        if not s["viewport"]:
            out.append(f"{w}px: no viewport tag")
        if s["overflow"] > 1:
            out.append(f"{w}px: page wider than the window by {s['overflow']} px")
        missing = set(sections) - set(s["sections"])
        if missing:
            out.append(f"{w}px: sections missing: {sorted(missing)}")
        if not s["plots"]:
            out.append(f"{w}px: no plots")
        for p in s["plots"]:
            if not (p["drawn"] and p["width"] > 200 and p["height"] > 200):
                out.append(f"{w}px: plot {p['name']} not drawn ({p['width']:.0f}x{p['height']:.0f})")
            if p["right"] > w + 1:
                out.append(f"{w}px: plot {p['name']} sticks out")
        out += [f"{w}px: table {t!r} of report.md missing" for t in md_tables if t not in s["h3"]]
    return out
