"""Zoo models in every runtime, side by side in one process per model: ONNX Runtime fp32 (the reference), LiteRT fp32
and int8 (XNNPACK delegate), LiteRT's reference kernels, TFLM int8 (batch 1, arena measured, fit on a Cortex-M4
board), and a structured-pruned (prune-structured-50 recipe) model in LiteRT int8 against the ORT fp32 original.

The int8 rows are the stock PT2E path (litert-torch's PT2EQuantizer, calibrated on the calibration split): slimkit's
own int8 (its calibrators, bias correction, equalization) exports to ONNX only so far.

    python bench/runtime_bench.py [--only digits-cnn,digits-mlp,mnist1d-cnn,pruned] [--threads 1]
"""
from __future__ import annotations

import argparse
import tempfile

from slimkit.evaluate.runtimes import measure_runtimes
from slimkit.load import resolve
from slimkit.runtimes import parse_runtimes
from slimkit.runtimes.tflm import board


def table(title: str, res: dict) -> str:
    key, base = res["metric"], res["baseline"]
    lines = [f"#### {title} (batch N = {res['settings']['batch_N']}, {res['settings']['threads']} thread(s); ratios vs "
             f"{base})", "",
             f"| artifact | {key} | size (KB) | b1 p50 (ms) | b1 vs {base} | bN p50 (ms) | bN vs {base} | "
             "TFLM arena (KB) | Cortex-M4 (256 KB / 1 MB) |", "|---|---|---|---|---|---|---|---|---|"]
    for lbl, m in res["rows"].items():
        r = next((v for k, v in m.items() if k.startswith("vs_") and k != "vs_same_runtime_fp32"), {})
        acc = f"{100 * m[key]:.2f}%" if key == "accuracy" else f"{m[key]:.4f}"
        bn = m.get("latency_ms_p50_bN")
        cells = [lbl, acc, f"{m['size_bytes'] / 1024:.1f}", f"{m['latency_ms_p50_b1']:.3f}",
                 f"{r.get('latency_ms_p50_b1', 1):.2f}x", f"{bn:.3f}" if bn else "-",
                 f"{r.get('latency_ms_p50_bN', 1):.2f}x" if bn else "-",
                 f"{m['arena_bytes'] / 1024:.2f}" if m.get("arena_bytes") else "-",
                 ("fits" if m["board"]["fits"] else "does NOT fit") if m.get("board") else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="digits-cnn,digits-mlp,mnist1d-cnn,pruned")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    only = args.only.split(",")
    rts = parse_runtimes("ort,litert,litert-builtin,tflm")
    b = board("cortex-m4")
    out = []
    for name in ("digits-cnn", "digits-mlp", "mnist1d-cnn"):
        if name not in only:
            continue
        lm, data = resolve(f"zoo:{name}")
        with tempfile.TemporaryDirectory() as d:
            res = measure_runtimes(lm.model, data, rts, workdir=d, threads=args.threads, runs=args.runs, int8=True,
                                   board=b)
        out.append(table(f"zoo:{name}", res))
        print(out[-1], flush=True)
    if "pruned" in only:
        from slimkit.pipeline import compress

        lm, data = resolve("zoo:digits-cnn")
        pruned = compress(lm.model, "prune-structured-50", data, measure=False).model
        ort, lit, tflm = rts[0], rts[1], rts[3]
        plan = [("original", ort, "fp32"), ("original", lit, "int8"), ("pruned", lit, "fp32"), ("pruned", lit, "int8"),
                ("pruned", tflm, "int8")]
        with tempfile.TemporaryDirectory() as d:
            res = measure_runtimes({"original": lm.model, "pruned": pruned}, data, rts, workdir=d, threads=args.threads,
                                   runs=args.runs, board=b, plan=plan)
        out.append(table("zoo:digits-cnn, prune-structured-50 then LiteRT int8, vs the ORT fp32 original", res))
        print(out[-1], flush=True)


if __name__ == "__main__":
    main()
