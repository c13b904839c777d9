"""report.html and the compare page, checked the way a person sees them: rendered in headless Chromium at desktop
and phone width. The page must show every table of report.md, draw the run's own plots, make no network request,
log no console error, and not overflow sideways. Screenshots are kept under test-artifacts/ (SLIMKIT_ARTIFACTS)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slimkit.cli import app

ARTIFACTS = Path(os.environ.get("SLIMKIT_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


@pytest.fixture(scope="module")
def browser():
    pw = pytest.importorskip("playwright.sync_api")
    from slimkit.report.browser import chromium, launch

    if chromium() is None:
        if os.environ.get("SLIMKIT_NO_BROWSER"):
            pytest.skip("SLIMKIT_NO_BROWSER is set")
        pytest.fail("no Chromium on PATH: run scripts/system-deps.sh (or set SLIMKIT_NO_BROWSER=1 to skip)")
    with pw.sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


def render(browser, page_path: Path, name: str) -> list[dict]:
    from slimkit.report.browser import render as _render

    return _render(browser, page_path, ARTIFACTS, name)


def check_page(seen: list[dict], md_text: str) -> None:
    from slimkit.report.browser import problems

    assert problems(seen, md_text) == []
    assert len({p["name"] for p in seen[0]["plots"]}) == len(seen[0]["plots"])


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
    assert all(0.5 < h["train_acc"] <= 1 and h["loss"] > 0 for h in rep["history"])
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
    from slimkit.report.browser import COMPARE_SECTIONS, problems

    assert problems(seen, sections=COMPARE_SECTIONS) == []
    for s in seen:
        assert {p["name"] for p in s["plots"]} == {"size", "latency"}
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
