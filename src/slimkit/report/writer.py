"""Reports a person would rather look at than read: report.json (every
number), report.md (tables) and report.html (tables and plots)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..core.errors import LoadError
from ..core.io import GENERATED_TAG, atomic_write_text

ROWS = [  # key, label, formatter
    ("accuracy", "accuracy (ONNX Runtime)", "pct"),
    ("fidelity_cos_mean", "fidelity: cosine mean", "f4"),
    ("fidelity_cos_min", "fidelity: cosine min", "f4"),
    ("nn_top1", "nearest-neighbour top-1 agreement", "f3"),
    ("params", "parameters", "int"),
    ("params_nonzero", "non-zero parameters", "int"),
    ("macs", "MACs per sample", "int"),
    ("size_bytes", "ONNX file size", "bytes"),
    ("size_bytes_zstd", "ONNX file, zstd -10", "bytes"),
    ("size_bytes_compressed", "compressed container", "bytes"),
    ("latency_ms_p50_b1", "ORT latency p50, batch 1 (ms)", "ms"),
    ("latency_ms_p90_b1", "ORT latency p90, batch 1 (ms)", "ms"),
    ("latency_ms_p50_bN", "ORT latency p50, batch N (ms)", "ms"),
    ("throughput_sps", "ORT throughput, batch N (samples/s)", "int"),
    ("torch_latency_ms_p50_b1", "PyTorch latency p50, batch 1 (ms)", "ms"),
    ("torch_latency_ms_p50_bN", "PyTorch latency p50, batch N (ms)", "ms"),
    ("peak_mem_bytes", "peak RSS of ORT inference process", "bytes"),
    ("peak_mem_delta_bytes", "  of which model + run", "bytes"),
    ("energy_mj_est", "energy per inference (estimate, mJ)", "f4"),
]


def fmt(v: Any, kind: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if kind == "pct":
        return f"{100 * v:.2f}%"
    if kind == "int":
        return f"{int(round(v)):,}"
    if kind == "bytes":
        v = float(v)
        for unit in ("B", "KB", "MB", "GB"):
            if v < 1024 or unit == "GB":
                return f"{v:.0f} {unit}" if unit == "B" else f"{v:.2f} {unit}"
            v /= 1024
    if kind == "ms":
        return f"{v:.3f}"
    if kind == "f3":
        return f"{v:.3f}"
    return f"{v:.4f}"


def _ratio_for(report: dict, key: str) -> str:
    r = (report.get("ratios") or {}).get(key)
    return fmt_ratio(r) if isinstance(r, (int, float)) else ""


def fmt_ratio(r: float) -> str:
    """0.29x; below 0.1 three decimals and the factor, e.g. 0.024x (41.9x smaller)."""
    if r < 0.1:
        return f"{r:.3f}x ({1 / r:.1f}x smaller)" if r > 0 else "0x"
    return f"{r:.2f}x"


def metric_rows(report: dict, columns: list[tuple[str, dict]]) -> list[list[str]]:
    rows = []
    for key, label, kind in ROWS:
        if not any(key in m for _, m in columns):
            continue
        row = [label] + [fmt(m.get(key), kind) for _, m in columns]
        vs = columns[-1][1].get("size_ratio_compressed_vs_fp32_onnx")
        if len(columns) == 2:
            if key == "accuracy":
                row.append(f"{100 * (columns[1][1].get(key, 0) - columns[0][1].get(key, 0)):+.2f} pt")
            elif key == "size_bytes_compressed" and vs:  # one ratio: the container against what shipped before
                row[0] = "compressed container (ratio: vs the baseline ONNX file)"
                row.append(fmt_ratio(vs))
            else:
                row.append(_ratio_for(report, key))
        rows.append(row)
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def to_markdown(report: dict) -> str:
    cols = [("baseline", report["baseline"]), ("compressed", report["compressed"])]
    env = report.get("environment", {})
    st = report.get("settings", {})
    lines = [f"# slimkit report: {report.get('model')} · {report['recipe'].get('name')} on {report.get('data')}", ""]
    if report.get("created") or report.get("command"):
        lines += [" · ".join(x for x in (report.get("created", ""), f"`{report['command']}`" if report.get("command")
                                         else "") if x), ""]
    lines += [f"Recipe **{report['recipe'].get('name')}** ({len(report['recipe'].get('stages', []))} stage(s)). "
             f"Measured side by side in one run: {st.get('threads')} thread(s), batch N = {st.get('batch_N')}, "
             f"{st.get('runs')} timed runs at batch 1 after warm-up; CPU {env.get('cpu')}.", "",
             "## Baseline vs compressed", "",
             _md_table(["metric", "baseline", "compressed", "ratio / change"], metric_rows(report, cols)), ""]
    if report.get("verdicts"):
        lines += ["## What got faster or smaller (and what did not)", ""]
        lines += [f"- {v}" for v in report["verdicts"]] + [""]
    if report.get("stages"):
        lines += ["## Stages", ""]
        srows = []
        for s in report["stages"]:
            m = s["metrics"]
            metric = fmt(m.get("accuracy"), "pct") if "accuracy" in m else fmt(m.get("fidelity_cos_mean"), "f4")
            srows.append([s["name"], ", ".join(s["techniques"]) or "-",
                          (s.get("finetune") or {}).get("method", "-"), metric, fmt(m.get("params_nonzero"), "int"),
                          fmt(m.get("macs"), "int"), f"{s['seconds']:.1f}"])
        lines += [_md_table(["stage", "techniques", "fine-tune", "metric (PyTorch)", "non-zero params", "MACs",
                             "seconds"], srows), ""]
    for s in report.get("stages", []):
        for n in s.get("notes", []):
            lines.append(f"- {s['name']}: {n}")
    if report.get("runtimes"):
        lines += ["", "## On-device runtimes", "", runtime_note(report["runtimes"]), "",
                  _md_table(RUNTIME_HEADER, runtime_rows(report["runtimes"])), ""]
    for title, rows in md_tables(report):
        if rows:
            lines += ["", f"## {title}", ""]
            hdr = list(rows[0].keys())
            lines += [_md_table(hdr, [[str(r.get(h)) for h in hdr] for r in rows]), ""]
    lines += ["", "## Notes", "",
              "- Accuracy/fidelity is measured on the exported ONNX file in ONNX Runtime (what ships); "
              "PyTorch values are in report.json under `torch_metrics`.",
              f"- Energy is an estimate, not a measurement: {report.get('energy_source')}.",
              f"- Environment: torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}, "
              f"python {env.get('python')}, {env.get('cores')} cores, AVX2 {env.get('avx2')}, "
              f"AVX512-VNNI {env.get('avx512_vnni')}.", ""]
    return "\n".join(lines)


RUNTIME_HEADER = ["artifact", "metric", "size", "b1 p50 (ms)", "b1 vs ORT fp32", "bN p50 (ms)", "bN vs ORT fp32",
                  "int8 vs same runtime fp32 (b1)", "peak memory (b1, above imports)", "TFLM arena", "board"]


def runtime_note(rt: dict) -> str:
    st = rt.get("settings", {})
    return (f"Every artifact timed interleaved in one process ({st.get('threads')} thread(s), batch N = "
            f"{st.get('batch_N')}); ratios against {rt.get('baseline')}. int8 rows say whose numbers they hold: "
            "(slimkit) is slimkit's own quantized model lowered unchanged to the runtime, (stock) the runtime's PT2E "
            "quantizer run on the float model; TFLM runs one sample at a time (no batch N).")


def runtime_rows(rt: dict) -> list[list[str]]:
    key = rt.get("metric", "accuracy")
    kind = "pct" if key == "accuracy" else "f4"
    base = rt.get("baseline", "")
    rows = []
    for lbl, m in rt.get("rows", {}).items():
        r = m.get("vs_" + base.replace(" ", "_"), {})
        same = (m.get("vs_same_runtime_fp32") or {}).get("latency_ms_p50_b1")
        who = f" ({m['quantizer']})" if m.get("precision") == "int8" and m.get("quantizer") else ""
        rows.append([lbl + who, fmt(m.get(key), kind), fmt(m.get("size_bytes"), "bytes"), fmt(m.get("latency_ms_p50_b1"), "ms"),
                     fmt_ratio(r["latency_ms_p50_b1"]) if "latency_ms_p50_b1" in r else "",
                     fmt(m.get("latency_ms_p50_bN"), "ms") if m.get("latency_ms_p50_bN") else "-",
                     fmt_ratio(r["latency_ms_p50_bN"]) if "latency_ms_p50_bN" in r else "-",
                     fmt_ratio(same) if same else "",
                     fmt(m.get("peak_mem_delta_bytes_b1"), "bytes") if m.get("peak_mem_delta_bytes_b1") else "",
                     fmt(m.get("arena_bytes"), "bytes") if m.get("arena_bytes") else "",
                     (m.get("board") or {}).get("verdict", "")])
    return rows


def md_tables(report: dict) -> list[tuple[str, list[dict]]]:
    """The technique tables, as report.md and report.html both show them."""
    tables = [("Per-layer sensitivity", report.get("sensitivity"))] + list((report.get("tables") or {}).items())
    if report.get("pareto"):  # an optimize run: the front and the built-in recipes it was measured against
        obj, key = report.get("objective", "latency_b1"), report.get("metric", "accuracy")
        kind = "pct" if key == "accuracy" else "f4"

        def rows(points):
            return [{"candidate": p.get("name"), f"{key} (validation, decided on)": fmt(p.get("val"), kind),
                     f"{key} (test)": fmt(p.get(key), kind), f"{obj} vs original": fmt_ratio(p[obj])
                     if isinstance(p.get(obj), (int, float)) else "-"} for p in points]

        pl = report.get("planner") or {}
        tables += [(f"Planner: the measured front ({pl.get('trials', '?')} trials, chosen: trial {pl.get('chosen')})",
                    rows(report["pareto"])), ("Planner: built-in recipes measured the same way",
                                              rows(report.get("references") or []))]
    return [(t, rows) for t, rows in tables if rows]


def to_html(report: dict) -> str:
    from .html import page

    cols = [("baseline", report["baseline"]), ("compressed", report["compressed"])]
    extra = []
    if report.get("runtimes"):
        extra.append(("On-device runtimes", runtime_note(report["runtimes"]), RUNTIME_HEADER,
                      runtime_rows(report["runtimes"])))
    return page(report, metric_rows=metric_rows(report, cols), md_tables=md_tables(report), extra_tables=extra)


def jsonable(o):
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if hasattr(o, "item") and callable(o.item):
        return o.item()
    return o


REQUIRED = {"baseline": dict, "compressed": dict, "recipe": dict}


def check_report(rep: Any, source: str) -> dict:
    """A report.json as ``compress`` writes it, or one LoadError line naming what is missing (before any write)."""
    if not isinstance(rep, dict):
        raise LoadError(f"{source} is not a slimkit report (it holds a JSON {type(rep).__name__}, not an object)")
    for key, kind in REQUIRED.items():
        if not isinstance(rep.get(key), kind):
            raise LoadError(f"{source} is not a slimkit report: '{key}' is missing or not an object; give the "
                            "report.json that slimkit compress wrote")
    for side in ("baseline", "compressed"):
        if not isinstance(rep[side].get("size_bytes"), (int, float)):
            raise LoadError(f"{source} is not a complete slimkit report: {side}.size_bytes is missing")
    if not isinstance(rep.get("stages", []), list) or not isinstance(rep.get("verdicts", []), list):
        raise LoadError(f"{source} is not a slimkit report: 'stages' and 'verdicts' must be lists")
    return rep


def report_outputs(folder: str | Path, stem: str = "report") -> list[Path]:
    folder = Path(folder)
    return [folder / f"{stem}.md", folder / f"{stem}.html"]


def write_reports(report: dict, folder: str | Path, *, stem: str = "report", with_json: bool = True) -> list[Path]:
    """Write STEM.json (unless ``with_json`` is false: re-rendering never rewrites its input), STEM.md and
    STEM.html, each atomically. Returns the paths written."""
    folder = Path(folder)
    md, page = report_outputs(folder, stem)
    written = []
    if with_json:
        body = {"generator": f"{GENERATED_TAG} {_version()}", **jsonable(report)}
        atomic_write_text(folder / f"{stem}.json", json.dumps(body, indent=2))
        written.append(folder / f"{stem}.json")
    atomic_write_text(md, f"<!-- {GENERATED_TAG} {_version()} -->\n" + to_markdown(report))
    written.append(md)
    atomic_write_text(page, to_html(report))
    written.append(page)
    return written


def _version() -> str:
    from .. import __version__

    return __version__
