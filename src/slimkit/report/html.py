"""report.html: the page a person opens first.

Everything report.md has (every table, every note, the settings and the environment) plus plots chosen by what
the run did: latency distributions per runtime, size per layer, MACs per layer before/after (pruning, low-rank,
depthwise conversion), the technique tables as charts (channels kept, sensitivity), training curves of every
recovery, and the planner's Pareto front when the report holds one. Plots are plotly figures with the plotly.js
bundle inlined once: the page works offline, from a file, with no network request. Tables sort on a click on
their header; the layout stacks at phone widths and wide tables scroll sideways.
"""
from __future__ import annotations

import html
import json
import math
import re
from typing import Any, Optional

from ..core.io import GENERATED_TAG

esc = html.escape

#: a latency ratio within this band of 1.0 is noise (grey), not a win or a loss
NOISE = 0.10

CSS = """
:root{--fg:#1d2330;--muted:#667085;--line:#e4e7ec;--good:#137333;--bad:#b42318;--flat:#667085;--accent:#2a6fb0}
*{box-sizing:border-box}body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--fg);
margin:0 auto;max-width:1180px;padding:1.2rem;line-height:1.45}
h1{font-size:1.55rem;margin:.2rem 0}h2{font-size:1.2rem;margin:2rem 0 .6rem;border-bottom:1px solid var(--line);
padding-bottom:.3rem}h3{font-size:1rem;margin:1.2rem 0 .4rem}.muted{color:var(--muted)}code{font-size:.9em;
background:#f3f4f6;padding:.05rem .3rem;border-radius:4px;word-break:break-all}
nav{display:flex;flex-wrap:wrap;gap:.4rem .9rem;margin:.8rem 0;font-size:.92rem}nav a{color:var(--accent)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:.7rem;margin:1rem 0}
.card{border:1px solid var(--line);border-radius:10px;padding:.7rem .9rem}.card .k{font-size:.8rem;
color:var(--muted)}.card .v{font-size:1.25rem;font-weight:600}.card .r{font-size:.9rem}
.good{color:var(--good)}.bad{color:var(--bad)}.flat{color:var(--flat)}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%}
table{border-collapse:collapse;font-size:.9rem;min-width:100%}th,td{border-bottom:1px solid var(--line);
padding:.35rem .6rem;text-align:right;white-space:nowrap}th:first-child,td:first-child{text-align:left}
th{cursor:pointer;user-select:none;background:#fafafa;position:sticky;top:0}th.sorted-asc::after{content:" \\25B2"}
th.sorted-desc::after{content:" \\25BC"}td.txt{text-align:left;white-space:normal;min-width:14rem}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:1rem}
.plot{border:1px solid var(--line);border-radius:10px;padding:.4rem;min-height:320px}
ul.verdicts li{margin:.2rem 0}
@media (max-width:640px){body{padding:.7rem}.plots{grid-template-columns:1fr}h1{font-size:1.25rem}
.plot{min-height:300px}table{font-size:.82rem}th:first-child,td:first-child{white-space:normal;min-width:8.5rem}}
"""

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
    var rows=Array.from(t.tBodies[0].rows),asc=!th.classList.contains('sorted-asc');
    t.querySelectorAll('th').forEach(function(h){h.classList.remove('sorted-asc','sorted-desc')});
    th.classList.add(asc?'sorted-asc':'sorted-desc');
    function key(r){var s=(r.cells[i]||{}).textContent||'';var n=parseFloat(s.replace(/[,%x\\s]|KB|MB|GB|B$/g,''));
      return isNaN(n)?s.toLowerCase():n}
    rows.sort(function(a,b){var x=key(a),y=key(b);return (x>y?1:x<y?-1:0)*(asc?1:-1)});
    rows.forEach(function(r){t.tBodies[0].appendChild(r)});});});});
"""


def _num(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def table(header: list[str], rows: list[list[Any]], *, text_cols: tuple[int, ...] = ()) -> str:
    """A sortable table inside a sideways-scrolling box."""
    th = "".join(f"<th>{esc(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td{" class=txt" if i in text_cols else ""}>{esc(str(c))}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="scroll"><table class="sortable"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def dict_table(rows: list[dict]) -> str:
    hdr = list(dict.fromkeys(k for r in rows for k in r))
    long = tuple(i for i, h in enumerate(hdr) if any(len(str(r.get(h, ""))) > 40 for r in rows))
    return table(hdr, [[_cell(r.get(h)) for h in hdr] for r in rows], text_cols=long)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def ratio_class(key: str, r: Optional[float]) -> str:
    if r is None:
        return "flat"
    if key.startswith(("size", "params", "macs")):  # exact quantities: any change is real
        return "good" if r < 1 else "bad" if r > 1 else "flat"
    return "good" if r < 1 - NOISE else "bad" if r > 1 + NOISE else "flat"


# --------------------------------------------------------------------------- figures (plotly dicts)

def layout(title: str, **kw) -> dict:
    base = {"title": {"text": title, "font": {"size": 14}}, "margin": {"l": 60, "r": 20, "t": 44, "b": 60},
            "legend": {"orientation": "h", "y": -0.22}, "autosize": True, "template": "plotly_white"}
    base.update(kw)
    return base


COLORS = {"baseline": "#98a2b3", "compressed": "#2a6fb0"}


def fig_latency(report: dict) -> Optional[dict]:
    """Box plots of the timed distributions (precomputed quantiles) per runtime and batch, baseline vs compressed."""
    traces = []
    for side in ("baseline", "compressed"):
        m = report.get(side) or {}
        xs, q1, med, q3, lo, hi = [], [], [], [], [], []
        for pre, rt in (("", "ORT"), ("torch_", "torch")):
            for b in ("b1", "bN"):
                q = m.get(f"{pre}latency_ms_quantiles_{b}")
                if isinstance(q, dict):
                    xs.append(f"{rt} {b}")
                    q1.append(q["p25"]), med.append(q["p50"]), q3.append(q["p75"]), lo.append(q["p5"])
                    hi.append(q["p95"])
        if xs:
            traces.append({"type": "box", "name": side, "x": xs, "q1": q1, "median": med, "q3": q3,
                           "lowerfence": lo, "upperfence": hi, "marker": {"color": COLORS[side]},
                           "hovertemplate": "%{x}<br>p50 %{median:.3f} ms<extra>" + side + "</extra>"})
    if not traces:
        return None
    return {"data": traces, "layout": layout("latency distribution (ms; box p25-p75, whiskers p5-p95)",
                                               boxmode="group", yaxis={"type": "log", "title": "ms", "dtick": 1})}


def fig_size(report: dict) -> Optional[dict]:
    """What ships, in bytes: the ONNX file, and the .slim container when the run wrote one (it is the result of
    pruning and clustering runs)."""
    b, c = report.get("baseline") or {}, report.get("compressed") or {}
    cats = ["ONNX file"]
    bv, cv = [b.get("size_bytes")], [c.get("size_bytes")]
    if c.get("size_bytes_compressed"):
        cats.append(".slim container (zstd)")
        bv.append(b.get("size_bytes_compressed"))
        cv.append(c.get("size_bytes_compressed"))
    if not any(_num(v) for v in bv + cv):
        return None
    kb = lambda vs: [round(v / 1024, 2) if _num(v) else None for v in vs]  # noqa: E731
    return {"data": [{"type": "bar", "name": "baseline", "x": cats, "y": kb(bv), "marker": {"color": COLORS["baseline"]},
                      "hovertemplate": "%{x}: %{y:,.2f} KB<extra>baseline</extra>"},
                     {"type": "bar", "name": "compressed", "x": cats, "y": kb(cv),
                      "marker": {"color": COLORS["compressed"]},
                      "hovertemplate": "%{x}: %{y:,.2f} KB<extra>compressed</extra>"}],
            "layout": layout("size on disk (KB)", barmode="group", yaxis={"title": "KB"})}


def _two_bar(title: str, names: list[str], before: list, after: list, unit: str, *, horizontal=True) -> dict:
    names = [n if len(n) <= 38 else n[:17] + "..." + n[-18:] for n in names]
    tr = []
    for side, vals in (("baseline", before), ("compressed", after)):
        t = {"type": "bar", "name": side, "marker": {"color": COLORS[side]},
             "hovertemplate": "%{" + ("y" if horizontal else "x") + "}: %{" + ("x" if horizontal else "y")
                              + ":,}" + f" {unit}<extra>{side}</extra>"}
        if horizontal:
            t.update(orientation="h", y=names, x=vals)
        else:
            t.update(x=names, y=vals)
        tr.append(t)
    lay = layout(title, barmode="group", height=max(320, 60 + 26 * len(names)) if horizontal else 360)
    if horizontal:
        lay["yaxis"] = {"autorange": "reversed", "automargin": True}
        lay["xaxis"] = {"title": unit}
    return {"data": tr, "layout": lay}


def fig_layer_bytes(report: dict, top: int = 16) -> Optional[dict]:
    b = (report.get("baseline") or {}).get("layer_bytes") or {}
    c = (report.get("compressed") or {}).get("layer_bytes") or {}
    if not b and not c:
        return None
    names = sorted(set(b) | set(c), key=lambda n: -max(b.get(n, 0), c.get(n, 0)))[:top]
    return _two_bar(f"weight bytes per layer (ONNX, largest {len(names)})", names, [b.get(n, 0) for n in names],
                    [c.get(n, 0) for n in names], "bytes")


def fig_layer_macs(report: dict, top: int = 20) -> Optional[dict]:
    lm = report.get("layer_macs") or {}
    b, c = lm.get("baseline") or {}, lm.get("compressed") or {}
    if not b or not c or b == c or abs(sum(b.values()) - sum(c.values())) <= 0.01 * sum(b.values()):
        return None  # quantization keeps every layer's MACs: the plot would say nothing
    names = list(dict.fromkeys(list(b) + list(c)))
    names = sorted(names, key=lambda n: -max(b.get(n, 0), c.get(n, 0)))[:top]
    return _two_bar("MACs per layer, before and after", names, [b.get(n, 0) for n in names],
                    [c.get(n, 0) for n in names], "MACs")


def fig_history(report: dict) -> Optional[dict]:
    hist = report.get("history") or []
    if not hist:
        return None
    traces = []
    stages = list(dict.fromkeys(h.get("stage", "") for h in hist))
    for st in stages:
        rows = [h for h in hist if h.get("stage", "") == st]
        x = list(range(1, len(rows) + 1))
        traces.append({"type": "scatter", "mode": "lines+markers", "name": f"{st or 'training'}: loss", "x": x,
                       "y": [h.get("loss") for h in rows], "hovertemplate": "epoch %{x}: loss %{y:.4f}<extra></extra>"})
        if any(_num(h.get("train_acc")) is not None for h in rows):
            traces.append({"type": "scatter", "mode": "lines+markers", "name": f"{st or 'training'}: training accuracy",
                           "x": x, "y": [h.get("train_acc") for h in rows], "yaxis": "y2", "line": {"dash": "dot"},
                           "hovertemplate": "epoch %{x}: training accuracy %{y:.4f}<extra></extra>"})
        if any(_num(h.get("val")) is not None for h in rows):
            traces.append({"type": "scatter", "mode": "lines+markers", "name": f"{st or 'training'}: held-out score",
                           "x": x, "y": [h.get("val") for h in rows], "yaxis": "y2",
                           "hovertemplate": "epoch %{x}: held-out %{y:.4f}<extra></extra>"})
    losses = [h["loss"] for h in hist if _num(h.get("loss")) and h["loss"] > 0]
    wide = bool(losses) and max(losses) / min(losses) > 100
    lay = layout("fine-tuning: training loss per epoch" + (" and accuracy / held-out score" if len(traces) > len(stages)
                                                             else ""),
                  xaxis={"title": "epoch"}, yaxis={"title": "loss" + (" (log)" if wide else ""),
                                                   **({"type": "log"} if wide else {})})
    if len(traces) > len(stages):
        lay["yaxis2"] = {"title": "accuracy / held-out score", "overlaying": "y", "side": "right"}
    return {"data": traces, "layout": lay}


_KEPT = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_ARROW = re.compile(r"^\s*([\d,\.]+)\s*->\s*([\d,\.]+)\s*$")


def fig_table(title: str, rows: list[dict]) -> Optional[dict]:
    """A chart for a technique's table when its columns say what to draw: 'a/b' (kept of total), 'x -> y'
    (before -> after), or numeric columns (sensitivity, bits per layer)."""
    if not rows or not isinstance(rows[0], dict):
        return None
    cols = list(rows[0])
    key = cols[0]
    names = [str(r.get(key)) for r in rows]
    numeric = [c for c in cols[1:] if all(_num(r.get(c)) is not None for r in rows)]
    if len(set(names)) < len(names) and numeric:
        # several rows per layer (a sensitivity sweep): one curve per layer, the first numeric column as x, the
        # error/drop-like column as y
        x = numeric[0]
        ys = [c for c in numeric[1:] if any(w in c.lower() for w in ("drop", "error", "loss", "sqnr"))] or numeric[1:2]
        if ys:
            y = ys[0]
            traces = [{"type": "scatter", "mode": "lines+markers", "name": n,
                       "x": [r.get(x) for r in rows if str(r.get(key)) == n],
                       "y": [r.get(y) for r in rows if str(r.get(key)) == n],
                       "hovertemplate": n + "<br>" + x + " %{x}: " + y + " %{y:.4g}<extra></extra>"}
                      for n in dict.fromkeys(names)]
            return {"data": traces, "layout": layout(title, xaxis={"title": x}, yaxis={"title": y})}
    if "ranks" in cols and len(rows) >= 1:  # low-rank: the rank chosen per layer (inner ranks joined by 'x')
        inner = [[int(x) for x in re.findall(r"\d+", str(r.get("ranks", "")))] or [0] for r in rows]
        traces = [{"type": "bar", "name": f"rank {i + 1}" if max(map(len, inner)) > 1 else "rank", "x": names,
                   "y": [rk[i] if i < len(rk) else None for rk in inner],
                   "hovertemplate": "%{x}: rank %{y}<extra></extra>"} for i in range(max(map(len, inner)))]
        return {"data": traces, "layout": layout(f"{title}: ranks per layer", barmode="group",
                                                   yaxis={"title": "rank"})}
    for col in cols[1:]:
        vals = [str(r.get(col, "")) for r in rows]
        if all(_KEPT.match(v) for v in vals):
            kept = [int(_KEPT.match(v).group(1)) for v in vals]
            total = [int(_KEPT.match(v).group(2)) for v in vals]
            f = _two_bar(f"{title}", names, total, kept, "channels")
            f["data"][0]["name"], f["data"][1]["name"] = "before", "kept"
            return f
        if all(_ARROW.match(v) for v in vals):
            num = lambda s: float(s.replace(",", ""))  # noqa: E731
            before = [num(_ARROW.match(v).group(1)) for v in vals]
            after = [num(_ARROW.match(v).group(2)) for v in vals]
            f = _two_bar(f"{title}: {col}", names, before, after, col)
            f["data"][0]["name"], f["data"][1]["name"] = "before", "after"
            return f
    if numeric and len(rows) > 1:
        # one row per layer: the error-like measure per layer, and the precision chosen for it on a second axis
        err = [c for c in numeric if any(w in c.lower() for w in ("sqnr", "drop", "error", "loss", "saved"))][:2]
        bits = [c for c in numeric if "bits" in c.lower()][:1]
        show = err or numeric[:1]
        traces = [{"type": "bar", "name": c, "x": names, "y": [r.get(c) for r in rows],
                   "hovertemplate": "%{x}<br>" + c + ": %{y:.4g}<extra></extra>"} for c in show]
        lay = layout(title, barmode="group", xaxis={"automargin": True}, yaxis={"title": ", ".join(show)})
        if bits:
            traces.append({"type": "scatter", "mode": "markers", "name": bits[0], "x": names, "yaxis": "y2",
                           "y": [r.get(bits[0]) for r in rows], "marker": {"size": 12, "symbol": "diamond"},
                           "hovertemplate": "%{x}: %{y} bits<extra></extra>"})
            lay["yaxis2"] = {"title": bits[0], "overlaying": "y", "side": "right", "rangemode": "tozero"}
        return {"data": traces, "layout": lay}
    return None


def fig_pareto(report: dict) -> Optional[dict]:
    """The planner's measured front (when the report is an optimize run): metric against the objective, with the
    built-in recipes and the original as reference points."""
    pts = report.get("pareto") or []
    if not pts:
        return None
    obj = report.get("objective", "latency_ms_p50_b1")
    key = report.get("metric", "accuracy")
    traces = [{"type": "scatter", "mode": "markers+lines", "name": "front",
               "x": [p.get(obj) for p in pts], "y": [p.get(key) for p in pts], "text": [p.get("name") for p in pts],
               "hovertemplate": "%{text}<br>%{x:.4g}, %{y:.4f}<extra></extra>"}]
    refs = report.get("references") or []
    if refs:
        traces.append({"type": "scatter", "mode": "markers", "name": "built-in recipes", "marker": {"symbol": "x"},
                       "x": [p.get(obj) for p in refs], "y": [p.get(key) for p in refs],
                       "text": [p.get("name") for p in refs], "hovertemplate": "%{text}<extra></extra>"})
    return {"data": traces, "layout": layout(f"Pareto front: {key} vs {obj}", xaxis={"title": obj},
                                               yaxis={"title": key})}


def figures(report: dict) -> list[tuple[str, dict]]:
    out = []
    for name, fn in (("size", fig_size), ("latency", fig_latency), ("runtimes", fig_runtimes), ("pareto", fig_pareto),
                     ("history", fig_history),
                     ("layer-macs", fig_layer_macs), ("layer-bytes", fig_layer_bytes)):
        f = fn(report)
        if f is not None:
            out.append((name, f))
    tables = [("Per-layer sensitivity", report.get("sensitivity"))] + list((report.get("tables") or {}).items())
    for i, (title, rows) in enumerate(tables):
        f = fig_table(title, rows) if rows else None
        if f is not None:
            out.append((f"table-{i}", f))
    return out


# --------------------------------------------------------------------------- the page

def plotly_js() -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:  # pragma: no cover - plotly is a dependency; without it the page keeps its tables
        return ""
    return get_plotlyjs()


def fig_runtimes(report: dict) -> Optional[dict]:
    """Batch-1 latency of every artifact in every runtime, baseline and compressed side by side."""
    rt = report.get("runtimes") or {}
    rows = rt.get("rows") or {}
    if not rows:
        return None
    groups = list(dict.fromkeys(f"{m['runtime']} {m['precision']}" for m in rows.values()))
    traces = []
    for side in ("baseline", "compressed"):
        y = []
        for g in groups:
            m = next((m for m in rows.values() if m.get("model") == side and f"{m['runtime']} {m['precision']}" == g),
                     None)
            y.append(m.get("latency_ms_p50_b1") if m else None)
        traces.append({"type": "bar", "name": side, "x": groups, "y": y, "marker": {"color": COLORS[side]},
                       "hovertemplate": "%{x}: %{y:.3f} ms<extra>" + side + "</extra>"})
    return {"data": traces, "layout": layout("batch-1 latency per runtime (ms, p50)", barmode="group",
                                               yaxis={"title": "ms"})}


def page(report: dict, *, metric_rows: list[list[str]], md_tables: list[tuple[str, list[dict]]],
         title_extra: str = "", extra_tables: list = ()) -> str:
    """The whole report page. ``metric_rows`` and ``md_tables`` are report.md's own rows and tables (the page shows
    everything the Markdown does)."""
    b, c, r = report.get("baseline") or {}, report.get("compressed") or {}, report.get("ratios") or {}
    rec = report.get("recipe") or {}
    model, data = str(report.get("model", "")), str(report.get("data", ""))
    title = f"{model} · {rec.get('name', 'recipe')}" + (f" · {title_extra}" if title_extra else "")
    key = report.get("metric", "accuracy")
    st, env = report.get("settings") or {}, report.get("environment") or {}

    cards = []

    def card(label, value, ratio_text, cls):
        cards.append(f'<div class="card"><div class="k">{esc(label)}</div><div class="v">{esc(value)}</div>'
                     f'<div class="r {cls}">{esc(ratio_text)}</div></div>')

    if key in b and key in c:
        d = (c[key] - b[key]) * (100 if key == "accuracy" else 1)
        unit = " pt" if key == "accuracy" else ""
        val = f"{100 * c[key]:.2f}%" if key == "accuracy" else f"{c[key]:.4f}"
        card(key, val, f"{d:+.2f}{unit} vs baseline", "good" if d > 0 else "bad" if d < -0.005 else "flat")
    ship_key = "size_bytes_compressed" if c.get("size_bytes_compressed") else "size_bytes"
    if _num(c.get(ship_key)):
        rr = r.get(ship_key)
        card(".slim container" if ship_key != "size_bytes" else "ONNX file", _kb(c[ship_key]),
             f"{rr:.3g}x the baseline" if rr else "", ratio_class("size", rr))
    for k, lbl in (("latency_ms_p50_b1", "ORT latency, batch 1"), ("latency_ms_p50_bN", "ORT latency, batch N"),
                   ("energy_mj_est", "energy (estimate)")):
        if _num(c.get(k)):
            rr = r.get(k)
            val = f"{c[k]:.3f} ms" if k.startswith("latency") else f"{c[k]:.4f} mJ"
            note = "" if rr is None else f"{rr:.2f}x" + (" (within noise)" if ratio_class(k, rr) == "flat"
                                                          and k.startswith("latency") else "")
            card(lbl, val, note, ratio_class(k, rr))

    figs = figures(report)
    plot_divs = "".join(f'<div class="plot" id="plot-{esc(n)}" data-figure="{esc(n)}"></div>' for n, _ in figs)
    fig_json = json.dumps({n: f for n, f in figs}, default=str)

    sections = [("summary", "Summary"), ("metrics", "Baseline vs compressed"), ("verdicts", "Faster, smaller, or not")]
    if figs:
        sections.append(("plots", "Plots"))
    sections += [("stages", "Stages")]
    if extra_tables:
        sections.append(("runtimes", "On-device runtimes"))
    if md_tables:
        sections.append(("tables", "Technique tables"))
    sections += [("settings", "Measurement and environment")]
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in sections)

    verdicts = "".join(f'<li class="{_verdict_class(v)}">{esc(v)}</li>' for v in report.get("verdicts", []))
    srows = []
    for s in report.get("stages", []):
        m = s.get("metrics", {})
        met = f"{100 * m['accuracy']:.2f}%" if "accuracy" in m else (f"{m['fidelity_cos_mean']:.4f}"
                                                                      if "fidelity_cos_mean" in m else "")
        srows.append([s.get("name"), ", ".join(s.get("techniques", [])) or "-",
                      (s.get("finetune") or {}).get("method", "-"), met, _int(m.get("params_nonzero")),
                      _int(m.get("macs")), f"{s.get('seconds', 0):.1f}"])
    notes = "".join(f"<li><b>{esc(s.get('name', ''))}</b>: {esc(n)}</li>" for s in report.get("stages", [])
                    for n in s.get("notes", []))
    other_notes = [n for n in report.get("notes", []) if not any(n in s.get("notes", []) for s in report.get("stages", []))]
    notes += "".join(f"<li>{esc(n)}</li>" for n in other_notes)
    tables_html = "".join(f"<h3>{esc(t)}</h3>{dict_table(rows)}" for t, rows in md_tables if rows)
    settings_rows = [["threads", st.get("threads")], ["batch N", st.get("batch_N")],
                     ["timed runs at batch 1", st.get("runs")], ["data", st.get("data_description") or st.get("data")],
                     ["input shapes", st.get("input_shapes")]]
    env_rows = [[k, v] for k, v in env.items()]
    recipe_yaml = yaml_text(rec)
    created = report.get("created", "")
    cmd = report.get("command", "")
    js = plotly_js()
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="{GENERATED_TAG}">
<title>slimkit report: {esc(title)}</title><style>{CSS}</style></head><body>
<header><div class="muted">slimkit report</div><h1>{esc(title)}</h1>
<div class="muted">on {esc(data)}{(' · ' + esc(created)) if created else ''}</div>
{f'<div><code>{esc(cmd)}</code></div>' if cmd else ''}
<nav>{nav}</nav></header>
<section id="summary"><h2>Summary</h2><div class="cards">{''.join(cards)}</div>
<p>{esc(rec.get('description', '') or '')}</p></section>
<section id="metrics"><h2>Baseline vs compressed</h2>
{table(['metric', 'baseline', 'compressed', 'ratio / change'], metric_rows)}
<p class="muted">Accuracy and fidelity are measured on the exported file in ONNX Runtime (what ships). Latency ratios
within ±{int(NOISE * 100)}% are shown grey: that is the run-to-run noise on a shared machine. Sizes are exact.</p></section>
<section id="verdicts"><h2>Faster, smaller, or not</h2><ul class="verdicts">{verdicts or '<li>not measured</li>'}</ul></section>
{f'<section id="plots"><h2>Plots</h2><div class="plots">{plot_divs}</div></section>' if figs else ''}
<section id="stages"><h2>Stages</h2>
{table(['stage', 'techniques', 'fine-tune', 'metric (PyTorch)', 'non-zero params', 'MACs', 'seconds'], srows)
 if srows else '<p>No compression stages (the model as it is).</p>'}
{f'<h3>Notes</h3><ul>{notes}</ul>' if notes else ''}
<h3>Recipe</h3><pre class="scroll"><code>{esc(recipe_yaml)}</code></pre></section>
{''.join(f'<section id="runtimes"><h2>{esc(t)}</h2><p class="muted">{esc(note)}</p>{table(hdr, rows, text_cols=(len(hdr) - 1,))}'
         f'</section>' for t, note, hdr, rows in extra_tables)}
{f'<section id="tables"><h2>Technique tables</h2>{tables_html}</section>' if md_tables else ''}
<section id="settings"><h2>Measurement and environment</h2>
{table(['setting', 'value'], settings_rows)}<h3>Environment</h3>{table(['', 'value'], env_rows)}
<p class="muted">Energy is an estimate, not a measurement: {esc(str(report.get('energy_source', '')))}.</p></section>
<footer class="muted"><p>{GENERATED_TAG}</p></footer>
<script>{js}</script>
<script>var FIGS={fig_json};
document.querySelectorAll('[data-figure]').forEach(function(d){{var f=FIGS[d.dataset.figure];
if(window.Plotly&&f){{d.style.height=(f.layout.height||360)+'px';
Plotly.newPlot(d,f.data,f.layout,{{responsive:true,displaylogo:false}});}}}});
{SORT_JS}</script>
</body></html>"""


def _verdict_class(v: str) -> str:
    if "(better)" in v or "(smaller)" in v:
        return "good"
    return "bad" if "WORSE" in v or "(larger)" in v or "MORE than" in v or v.startswith("partial:") else "flat"


def _kb(v: float) -> str:
    return f"{v / 1024:,.2f} KB" if v < 1024 ** 2 else f"{v / 1024 ** 2:,.2f} MB"


def _int(v) -> str:
    return f"{int(v):,}" if _num(v) is not None else ""


def yaml_text(d: dict) -> str:
    try:
        import yaml

        return yaml.safe_dump(d, sort_keys=False)
    except Exception:  # noqa: BLE001
        return json.dumps(d, indent=2)
