"""One page across several runs: ``slimkit compare DIR1 DIR2 ...``.

Each DIR is a ``compress`` output folder (its report.json). The page has a sortable leaderboard (metric, size of
what ships, latency ratios per runtime, MACs, energy, peak memory), two scatters with the Pareto front marked
(size vs metric, latency vs metric), and the recipes side by side.

Latency is compared as each run's ratio against its own baseline, which was timed interleaved in the same process:
absolute times from different runs drift with the machine's load, same-run ratios do not. Sizes are bytes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..core.errors import LoadError
from .html import CSS, GENERATED_TAG, SORT_JS, esc, layout, plotly_js, table, yaml_text


def load_runs(paths: list[str | Path]) -> list[dict]:
    """Read and check every run before anything is written; names are the folder names (made unique)."""
    from .writer import check_report

    runs, seen = [], set()
    for p in paths:
        p = Path(p)
        f = p / "report.json" if p.is_dir() else p
        if not f.is_file():
            raise LoadError(f"no report.json in {p}; give slimkit compress output folders")
        try:
            rep = json.loads(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise LoadError(f"{f} is not a slimkit report ({type(e).__name__})") from None
        check_report(rep, str(f))
        name = (f.parent.name if f.name == "report.json" else f.stem) or str(f)
        base, i = name, 2
        while name in seen:
            name, i = f"{base}#{i}", i + 1
        seen.add(name)
        runs.append({"name": name, "path": str(f.parent), "report": rep})
    return runs


def _ship_size(m: dict) -> Optional[float]:
    return m.get("size_bytes_compressed") or m.get("size_bytes")


def rows(runs: list[dict]) -> list[dict]:
    """One leaderboard row per run, plus the original model of the first run as the reference."""
    out = []
    first = runs[0]["report"]
    key = first.get("metric", "accuracy")
    b = first["baseline"]
    out.append({"name": "original", "model": first.get("model"), "recipe": "-", key: b.get(key),
                "size_bytes": _ship_size({"size_bytes": b.get("size_bytes")}), "size_ratio": 1.0,
                "latency_b1_ratio": 1.0, "latency_bN_ratio": 1.0, "torch_latency_b1_ratio": 1.0,
                "macs": b.get("macs"), "energy_mj_est": b.get("energy_mj_est"), "peak_mem_bytes": b.get("peak_mem_bytes")})
    for run in runs:
        rep = run["report"]
        c, r, base = rep["compressed"], rep.get("ratios") or {}, rep["baseline"]
        ship = _ship_size(c)
        out.append({"name": run["name"], "model": rep.get("model"), "recipe": (rep.get("recipe") or {}).get("name"),
                    key: c.get(key), "size_bytes": ship,
                    "size_ratio": ship / base["size_bytes"] if ship and base.get("size_bytes") else None,
                    "latency_b1_ratio": r.get("latency_ms_p50_b1"), "latency_bN_ratio": r.get("latency_ms_p50_bN"),
                    "torch_latency_b1_ratio": r.get("torch_latency_ms_p50_b1"), "macs": c.get("macs"),
                    "energy_mj_est": c.get("energy_mj_est"), "peak_mem_bytes": c.get("peak_mem_bytes")})
    return out


def pareto(points: list[dict], x: str, y: str) -> list[str]:
    """Names of the points no other point beats on both (lower ``x``, higher ``y``)."""
    pts = [p for p in points if isinstance(p.get(x), (int, float)) and isinstance(p.get(y), (int, float))]
    front = []
    for p in pts:
        dominated = any(q is not p and q[x] <= p[x] and q[y] >= p[y] and (q[x] < p[x] or q[y] > p[y]) for q in pts)
        if not dominated:
            front.append(p["name"])
    return front


def summary(runs: list[dict]) -> dict:
    rs = rows(runs)
    key = runs[0]["report"].get("metric", "accuracy")
    return {"metric": key, "rows": rs, "pareto_size": pareto(rs, "size_bytes", key),
            "pareto_latency_b1": pareto(rs, "latency_b1_ratio", key),
            "recipes": {run["name"]: run["report"].get("recipe") for run in runs}}


def _scatter(rs: list[dict], x: str, key: str, front: list[str], title: str, xtitle: str, log: bool) -> dict:
    pts = [r for r in rs if isinstance(r.get(x), (int, float)) and isinstance(r.get(key), (int, float))]
    fr = sorted([r for r in pts if r["name"] in front], key=lambda r: r[x])
    others = [r for r in pts if r["name"] not in front]
    scale = 100 if key == "accuracy" else 1
    tr = [{"type": "scatter", "mode": "markers", "name": "other runs (hover for names)", "x": [r[x] for r in others],
           "y": [r[key] * scale for r in others], "text": [r["name"] for r in others], "textposition": "top center",
           "marker": {"size": 10, "color": "#98a2b3"}, "hovertemplate": "%{text}<br>%{x:.4g}, %{y:.3f}<extra></extra>"},
          {"type": "scatter", "mode": "lines+markers+text", "name": "Pareto front", "x": [r[x] for r in fr],
           "y": [r[key] * scale for r in fr], "text": [r["name"] for r in fr], "textposition": "top center",
           "line": {"shape": "hv"}, "marker": {"size": 12, "color": "#2a6fb0"},
           "hovertemplate": "%{text}<br>%{x:.4g}, %{y:.3f}<extra>front</extra>"}]
    return {"data": tr, "layout": layout(title, xaxis={"title": xtitle, **({"type": "log"} if log else {})},
                                          yaxis={"title": key + (" (%)" if key == "accuracy" else "")}, height=420)}


def _fmt(v: Any, kind: str) -> str:
    if not isinstance(v, (int, float)):
        return "" if v is None else str(v)
    if kind == "pct":
        return f"{100 * v:.2f}%"
    if kind == "x":
        return f"{v:.3g}x"
    if kind == "kb":
        return f"{v / 1024:,.1f} KB"
    if kind == "int":
        return f"{int(v):,}"
    return f"{v:.4g}"


def to_html(runs: list[dict]) -> str:
    s = summary(runs)
    key, rs = s["metric"], s["rows"]
    mk = "pct" if key == "accuracy" else "f"
    hdr = ["run", "recipe", key, "size (what ships)", "size vs original", "ORT b1 (x original)",
           "ORT bN (x original)", "PyTorch b1 (x original)", "MACs", "energy mJ (est.)", "peak RSS", "on front"]
    body = [[r["name"], r["recipe"], _fmt(r.get(key), mk), _fmt(r.get("size_bytes"), "kb"),
             _fmt(r.get("size_ratio"), "x"), _fmt(r.get("latency_b1_ratio"), "x"), _fmt(r.get("latency_bN_ratio"), "x"),
             _fmt(r.get("torch_latency_b1_ratio"), "x"), _fmt(r.get("macs"), "int"), _fmt(r.get("energy_mj_est"), "f"),
             _fmt(r.get("peak_mem_bytes"), "kb"),
             " ".join(t for t, f in (("size", s["pareto_size"]), ("latency", s["pareto_latency_b1"])) if r["name"] in f)]
            for r in rs]
    figs = {"size": _scatter(rs, "size_bytes", key, s["pareto_size"], f"{key} vs size of what ships",
                             "bytes (log)", True),
            "latency": _scatter(rs, "latency_b1_ratio", key, s["pareto_latency_b1"],
                                f"{key} vs ONNX Runtime batch-1 latency", "latency, x the original (same-run ratio)",
                                False)}
    recipes = "".join(f'<details><summary>{esc(name)}: the resolved recipe</summary><pre class="scroll"><code>'
                      f'{esc(yaml_text(rec or {}))}</code></pre></details>' for name, rec in s["recipes"].items())
    stage_rows = [[run["name"], " → ".join(f"{st.get('name')}: {', '.join(st.get('techniques', [])) or '-'}"
                                           + (f" + {st['finetune'].get('method')} x{st['finetune'].get('epochs')}"
                                              if st.get("finetune") else "")
                                           for st in run["report"].get("stages", [])) or "(none)"] for run in runs]
    models = sorted({str(run["report"].get("model")) for run in runs})
    title = f"slimkit compare: {len(runs)} runs of {', '.join(models)}"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="generator" content="{GENERATED_TAG}">
<title>{esc(title)}</title><style>{CSS}</style></head><body>
<header><div class="muted">slimkit compare</div><h1>{esc(title)}</h1>
<nav><a href="#leaderboard">Leaderboard</a><a href="#scatter">Pareto</a><a href="#recipes">Recipes</a></nav></header>
<section id="leaderboard"><h2>Leaderboard</h2>{table(hdr, body)}
<p class="muted">Latency is each run's ratio against its own original, timed interleaved in the same process (robust to
machine load); sizes are exact bytes of what ships (the .slim container for pruned or clustered runs). Click a header
to sort.</p></section>
<section id="scatter"><h2>Pareto front</h2><div class="plots"><div class="plot" data-figure="size"></div>
<div class="plot" data-figure="latency"></div></div></section>
<section id="recipes"><h2>Recipes side by side</h2>{table(['run', 'stages'], stage_rows, text_cols=(1,))}
{recipes}</section>
<footer class="muted"><p>{GENERATED_TAG}</p></footer>
<script>{plotly_js()}</script>
<script>var FIGS={json.dumps(figs, default=str)};
document.querySelectorAll('[data-figure]').forEach(function(d){{var f=FIGS[d.dataset.figure];
if(window.Plotly&&f){{d.style.height=(f.layout.height||360)+'px';
Plotly.newPlot(d,f.data,f.layout,{{responsive:true,displaylogo:false}});}}}});
{SORT_JS}</script></body></html>"""
