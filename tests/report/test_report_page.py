"""report.html and the compare page, checked the way a person sees them: rendered in headless Chromium at desktop
and phone width. The page must show every table of report.md, draw the run's own plots, make no network request,
log no console error, and not overflow sideways. Screenshots are kept under test-artifacts/ (SLIMKIT_ARTIFACTS)."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slimkit.cli import app

ARTIFACTS = Path(os.environ.get("SLIMKIT_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
WIDTHS = (1400, 420)


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("SLIMKIT_NO_BROWSER"):
            pytest.skip("SLIMKIT_NO_BROWSER is set")
        pytest.fail("no Chromium on PATH: run scripts/system-deps.sh (or set SLIMKIT_NO_BROWSER=1 to skip)")
    return exe


@pytest.fixture(scope="module")
def browser():
    pw = pytest.importorskip("playwright.sync_api")
    exe = _chromium()
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def render(browser, page_path: Path, name: str) -> list[dict]:
    """Open the page at each width; return what was observed (console errors, requests, layout, plots)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    seen = []
    for w in WIDTHS:
        pg = browser.new_page(viewport={"width": w, "height": 900})
        errors, requests = [], []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:", "blob:"))
              else None)
        pg.goto(page_path.resolve().as_uri())
        pg.wait_for_load_state("load")
        pg.wait_for_timeout(300)
        info = pg.evaluate("""() => ({
            overflow: document.documentElement.scrollWidth - window.innerWidth,
            sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
            h3: Array.from(document.querySelectorAll('h3')).map(h => h.textContent),
            plots: Array.from(document.querySelectorAll('[data-figure]')).map(d => {
                const svg = d.querySelector('svg.main-svg'); const r = d.getBoundingClientRect();
                return {name: d.dataset.figure, drawn: !!svg && d.querySelectorAll('.trace, .point, path').length > 0,
                        width: r.width, height: r.height, right: r.right};}),
            viewport: !!document.querySelector('meta[name=viewport]'),
            title: document.title})""")
        pg.screenshot(path=str(ARTIFACTS / f"{name}-{w}.png"), full_page=True)
        pg.close()
        seen.append(dict(info, width=w, errors=errors, requests=requests))
    return seen


def check_page(seen: list[dict], md_text: str) -> None:
    md_tables = re.findall(r"^## (.+)$", md_text, flags=re.M)
    for s in seen:
        assert s["errors"] == [], s["errors"]
        assert s["requests"] == [], f"the page made network requests: {s['requests']}"
        assert s["viewport"]
        assert s["overflow"] <= 1, f"the page is wider than the {s['width']} px window by {s['overflow']} px"
        assert {"summary", "metrics", "verdicts", "stages", "settings"} <= set(s["sections"]), s["sections"]
        assert s["plots"], "no plots on the page"
        for p in s["plots"]:
            assert p["drawn"] and p["width"] > 200 and p["height"] > 200, p
            assert p["right"] <= s["width"] + 1, f"plot {p['name']} sticks out at {s['width']} px"
        # every technique table of report.md is on the page
        for title in md_tables:
            if title.startswith(("Structured", "Low-rank", "Depthwise", "Per-layer")):
                assert title in s["h3"], (title, s["h3"])
    assert seen[0]["plots"] and len({p["name"] for p in seen[0]["plots"]}) == len(seen[0]["plots"])


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, digits_mlp):
    """A structured-pruning run (technique tables, sensitivity, training history, container) on the small MLP."""
    out = tmp_path_factory.mktemp("runs") / "pruned"
    rec = out.parent / "ps.yaml"
    rec.write_text("version: 1\nname: prune-quick\nstages:\n  - name: prune\n    techniques:\n"
                   "      - {type: prune.structured, target_macs: 0.5, allocation: sensitivity, eval_samples: 128}\n"
                   "    finetune: {method: kd, epochs: 3, temperature: 1.0}\n")
    res = CliRunner().invoke(app, ["-q", "compress", "zoo:digits-mlp", "--recipe", str(rec), "--out", str(out)])
    assert res.exit_code == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def quant_run(tmp_path_factory, digits_mlp):
    out = tmp_path_factory.mktemp("runs") / "int8"
    res = CliRunner().invoke(app, ["-q", "compress", "zoo:digits-mlp", "--recipe", "int8-static", "--out", str(out)])
    assert res.exit_code == 0, res.stderr
    return out


def test_pruned_report_page_in_chromium(browser, pruned_run):
    page = pruned_run / "report.html"
    rep = json.loads((pruned_run / "report.json").read_text())
    assert rep["history"] and rep["layer_macs"]["compressed"], "training history and per-layer MACs are stored"
    seen = render(browser, page, "report-pruned")
    check_page(seen, (pruned_run / "report.md").read_text())
    names = {p["name"] for p in seen[0]["plots"]}
    # the plots this run needs: training curve, MACs per layer, size (with the .slim container), latency
    assert {"history", "layer-macs", "size", "latency"} <= names, names
    assert "prune-quick" in seen[0]["title"] and "digits-mlp" in seen[0]["title"]
    html = page.read_text()
    assert ".slim container" in html
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?https?:", html), "an asset is not inlined"


def test_quantized_report_page_in_chromium(browser, quant_run):
    seen = render(browser, quant_run / "report.html", "report-int8")
    check_page(seen, (quant_run / "report.md").read_text())
    names = {p["name"] for p in seen[0]["plots"]}
    assert "layer-macs" not in names, "quantization keeps the MACs: that plot would say nothing"
    assert {"size", "latency", "layer-bytes"} <= names


def test_compare_page_in_chromium(browser, pruned_run, quant_run, tmp_path):
    out = tmp_path / "cmp.html"
    res = CliRunner().invoke(app, ["-q", "compare", str(pruned_run), str(quant_run), "--out", str(out)])
    assert res.exit_code == 0, res.stderr
    seen = render(browser, out, "compare")
    for s in seen:
        assert s["errors"] == [] and s["requests"] == [] and s["overflow"] <= 1
        assert {p["name"] for p in s["plots"]} == {"size", "latency"} and all(p["drawn"] for p in s["plots"])
    res = CliRunner().invoke(app, ["-q", "compare", str(pruned_run), str(quant_run), "--json"])
    d = json.loads(res.stdout)
    names = [r["name"] for r in d["rows"]]
    assert names == ["original", "pruned", "int8"]
    assert set(d["pareto_size"]) <= set(names) and d["pareto_size"]
    # the front really is non-dominated: no row beats a front member on both size and metric
    rows = {r["name"]: r for r in d["rows"]}
    for f in d["pareto_size"]:
        assert not any(r["size_bytes"] < rows[f]["size_bytes"] and r["accuracy"] > rows[f]["accuracy"]
                       for r in d["rows"])


def test_report_md_and_html_carry_the_same_tables(pruned_run):
    md = (pruned_run / "report.md").read_text()
    html = (pruned_run / "report.html").read_text()
    for title in re.findall(r"^## (.+)$", md, flags=re.M):
        if title.startswith("Structured"):
            assert title in html
    rep = json.loads((pruned_run / "report.json").read_text())
    for note in (n for s in rep["stages"] for n in s["notes"]):
        assert note.split(";")[0].replace("&", "&amp;") in html
