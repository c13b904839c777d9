"""Zoo models in every runtime, side by side in one process per model: ONNX Runtime fp32 (the reference), LiteRT
(XNNPACK delegate, and its reference kernels), ExecuTorch (XNNPACK delegate), TFLM (batch 1, arena measured, fit on
a Cortex-M4 board), each in fp32 where it runs float, in the runtime's stock int8 (its PT2E quantizer on the float
model, calibrated on the calibration split) and in slimkit's int8 (the int8-static recipe's quantized model, lowered
to each runtime with its own scales and codes); then a structured-pruned (prune-structured-50 recipe) model, float
and with slimkit's int8 on top, against the ORT fp32 original.

MiniLM (``--only minilm``, not in the default set: about 10 minutes): the sentence embedder in LiteRT fp32, float16
weights, int8 weight-only, dynamic-range int8, stock static int8 and slimkit static int8, as cosine similarity to
PyTorch's embeddings on held-out sentences.

    python bench/runtime_bench.py [--only digits-cnn,digits-mlp,mnist1d-cnn,mnist1d-lstm,pruned,minilm] [--threads 1]
"""
from __future__ import annotations

import argparse
import tempfile

from slimkit.evaluate.runtimes import measure_runtimes
from slimkit.load import resolve
from slimkit.runtimes import get_runtime, parse_runtimes
from slimkit.runtimes.tflm import board


def table(title: str, res: dict) -> str:
    key, base = res["metric"], res["baseline"]
    lines = [f"#### {title} (batch N = {res['settings']['batch_N']}, {res['settings']['threads']} thread(s); ratios vs "
             f"{base})", "",
             f"| artifact | {key} | top-1 agreement | size (KB) | b1 p50 (ms) | b1 vs {base} | bN p50 (ms) | "
             f"bN vs {base} | peak mem b1 (MB) | TFLM arena (KB) | Cortex-M4 (256 KB / 1 MB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for lbl, m in res["rows"].items():
        r = next((v for k, v in m.items() if k.startswith("vs_") and k != "vs_same_runtime_fp32"), {})
        acc = f"{100 * m[key]:.2f}%" if key == "accuracy" else f"{m[key]:.4f}"
        bn = m.get("latency_ms_p50_bN")
        agree = m.get("top1_agreement")
        cells = [lbl, acc, f"{100 * agree:.1f}%" if agree is not None else "-", f"{m['size_bytes'] / 1024:.1f}", f"{m['latency_ms_p50_b1']:.3f}",
                 f"{r.get('latency_ms_p50_b1', 1):.2f}x", f"{bn:.3f}" if bn else "-",
                 f"{r.get('latency_ms_p50_bN', 1):.2f}x" if bn else "-",
                 f"{m['peak_mem_delta_bytes_b1'] / 2 ** 20:.1f}" if m.get("peak_mem_delta_bytes_b1") else "-",
                 f"{m['arena_bytes'] / 1024:.2f}" if m.get("arena_bytes") else "-",
                 ("fits" if m["board"]["fits"] else "does NOT fit") if m.get("board") else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="digits-cnn,digits-mlp,mnist1d-cnn,mnist1d-lstm,pruned")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    only = args.only.split(",")
    rts = parse_runtimes("ort,litert,litert-builtin,executorch,tflm")
    ort, lit, bi, et, tflm = rts
    b = board("cortex-m4")
    out = []
    for name in ("digits-cnn", "digits-mlp", "mnist1d-cnn"):
        if name not in only:
            continue
        lm, data = resolve(f"zoo:{name}")
        sk = slimkit_int8(lm.model, data)
        ff = "slimkit int8, first layer float"
        variants = {"fp32": lm.model, "stock int8": lm.model, "slimkit int8": sk}
        plan = [("fp32", ort, "fp32"), ("slimkit int8", ort, "int8")]
        for rt in (lit, bi, et):
            plan += [("fp32", rt, "fp32"), ("stock int8", rt, "int8"), ("slimkit int8", rt, "int8")]
        if name != "digits-mlp":  # the CNNs: their first convolution reads one input channel
            variants[ff] = slimkit_int8(lm.model, data, float_first=True)
            plan += [(ff, lit, "int8"), (ff, et, "int8")]
        plan += where_faster(variants, lm.model, data, lit, et, "slimkit int8")
        plan += [("stock int8", tflm, "int8"), ("slimkit int8", tflm, "int8")]
        with tempfile.TemporaryDirectory() as d:
            res = measure_runtimes(variants, data, rts,
                                   workdir=d, threads=args.threads, runs=args.runs, board=b, plan=plan)
        out.append(table(f"zoo:{name}", res))
        print(out[-1], flush=True)
    if "mnist1d-lstm" in only:  # a recurrent model: litert-torch unrolls the LSTM into FULLY_CONNECTED/LOGISTIC/TANH
        from slimkit.core.context import Context
        from slimkit.quantize.dynamic import DynamicQuantConfig, int8_dynamic

        lm, data = resolve("zoo:mnist1d-lstm")
        dyn = int8_dynamic(lm.model, DynamicQuantConfig(), Context(data=data))
        plan = [("fp32", ort, "fp32"), ("slimkit int8-dynamic", ort, "int8"), ("fp32", lit, "fp32"),
                ("fp32", lit, "int8-dynamic"), ("slimkit int8-dynamic", lit, "int8-dynamic"),
                ("stock int8", lit, "int8"), ("fp32", et, "fp32"),
                ("stock int8", et, "int8")]
        with tempfile.TemporaryDirectory() as d:
            res = measure_runtimes({"fp32": lm.model, "stock int8": lm.model, "slimkit int8-dynamic": dyn}, data, rts,
                                   workdir=d, threads=args.threads, runs=args.runs, board=b, plan=plan)
        out.append(table("zoo:mnist1d-lstm", res))
        print(out[-1], flush=True)
    if "pruned" in only:
        from slimkit.pipeline import compress

        lm, data = resolve("zoo:digits-cnn")
        pruned = compress(lm.model, "prune-structured-50", data, measure=False).model
        sk = slimkit_int8(pruned, data)
        ff = "pruned + slimkit int8, first layer float"
        sk_ff = slimkit_int8(pruned, data, float_first=True)
        plan = [("original", ort, "fp32"), ("original", lit, "int8"), ("pruned", lit, "fp32"), ("pruned", lit, "int8"),
                ("pruned + slimkit int8", lit, "int8"), (ff, lit, "int8"), ("pruned", et, "fp32"),
                ("pruned + slimkit int8", et, "int8"), (ff, et, "int8"), ("pruned + slimkit int8", tflm, "int8")]
        variants = {"original": lm.model, "pruned": pruned, "pruned + slimkit int8": sk, ff: sk_ff}
        plan += where_faster(variants, pruned, data, lit, et, "pruned + slimkit int8")
        with tempfile.TemporaryDirectory() as d:
            res = measure_runtimes(variants,
                                   data, rts,
                                   workdir=d, threads=args.threads, runs=args.runs, board=b, plan=plan)
        out.append(table("zoo:digits-cnn, prune-structured-50 then int8, vs the ORT fp32 original", res))
        print(out[-1], flush=True)
    if "minilm" in only:
        print(minilm(lit), flush=True)


def minilm(lit, n: int = 32, runs: int = 30) -> str:
    """MiniLM in LiteRT: each artifact's embeddings against PyTorch's (cosine), size, export time, and its batch-1
    latency timed interleaved with the original in ONNX Runtime fp32 (the ratio column)."""
    import time

    import numpy as np
    import torch

    from slimkit.core.context import Context, torch_threads
    from slimkit.evaluate.latency import summarize, time_interleaved
    import dataclasses

    from slimkit.core.targets import Targets
    from slimkit.quantize.mixed import MixedPrecisionConfig, mixed_precision
    from slimkit.quantize.static import StaticQuantConfig, int8_static

    lm, data = resolve("zoo:minilm")
    split = data.test.slice(0, n)
    with torch.no_grad():
        ref = lm.model.eval()(*split.inputs).numpy()
    cfg = StaticQuantConfig(bias_correction=False, calibration_samples=64, weight_range="full")
    # BERT's outlier channels come out of each block's FFN output projection (output.dense, range +-97 in block 0):
    # those six layers stay float, every other Linear is int8 (the recipe form: targets: {exclude: [...]})
    ffn_out_float = dataclasses.replace(cfg, targets=Targets(types=["Linear"],
                                                             exclude=[r"re:.*layer\.\d+\.output\.dense$"]))
    # the same choice made automatically: mixed precision with int8 or fp32 per layer keeps float the layers whose
    # float copy helps the fidelity most until the drop (on training sentences) is within budget
    auto_float = MixedPrecisionConfig(low_bits=8, max_drop=0.005, min_sqnr_db=0, eval_samples=64,
                                      calibration_samples=64, bias_correction=False, weight_range="full",
                                      calibrator="minmax")
    rows, sessions = [], {}
    with tempfile.TemporaryDirectory() as d:
        ort = get_runtime("ort")
        sessions["ort fp32"] = ort.open(ort.export(lm.model, data, f"{d}/orig.onnx", "fp32"), 1)
        for k, (label, make, prec) in enumerate((
                ("fp32", lambda: lm.model, "fp32"), ("fp16 weights", lambda: lm.model, "fp16"),
                ("int8 weight-only", lambda: lm.model, "int8-weights"),
                ("int8 dynamic-range", lambda: lm.model, "int8-dynamic"),
                ("stock int8 (PT2E)", lambda: lm.model, "int8"),
                ("slimkit int8 (static, min-max/auto, 8-bit weights)",
                 lambda: int8_static(lm.model, cfg, Context(data=data)), "int8"),
                ("slimkit int8 (static, the 6 FFN output projections float)",
                 lambda: int8_static(lm.model, ffn_out_float, Context(data=data)), "int8"),
                ("slimkit int8, float layers chosen by mixed precision (low_bits 8, cos drop <= 0.005)",
                 lambda: mixed_precision(lm.model, auto_float, Context(data=data)), "int8"))):
            t0 = time.perf_counter()
            try:
                art = lit.export(make(), data, f"{d}/m{k}.tflite", prec, batch=1)
                sess = lit.open(art, 1)
                got = sess.run(split.inputs)
                size = art.path.stat().st_size / 1e6
            except Exception as e:  # noqa: BLE001 - a failure is a row of the table
                rows.append((label, None, f"| {label} | - | - | - | {time.perf_counter() - t0:.1f} | - | - | "
                                          f"{str(e)[:160]} |"))
                continue
            a, b = got.reshape(n, -1), ref.reshape(n, -1)
            cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            sessions[label] = sess
            rows.append((label, cos.mean(), f"| {label} | {cos.mean():.4f} | {cos.min():.4f} | {size:.1f} | "
                                            f"{time.perf_counter() - t0:.1f} | {{ms}} | {{x}} | "
                                            f"{'converts' if cos.mean() >= 0.99 else 'converts, below cos 0.99'} |"))
        ex = data.example_inputs(1)
        with torch_threads(1):
            times = time_interleaved({k: s.runner(ex) for k, s in sessions.items()}, runs=runs, warmup=3,
                                     desc="MiniLM latency b1")
        p50 = {k: summarize(v)["p50"] for k, v in times.items()}
    lines = [f"#### zoo:minilm in LiteRT (batch 1; cosine to PyTorch's embeddings on {n} test sentences; latency: "
             f"{runs} runs at batch 1, 1 thread, interleaved with the original in ONNX Runtime fp32, "
             f"{p50['ort fp32']:.2f} ms)", "",
             "| artifact | cos mean | cos min | size (MB) | export (s) | b1 p50 (ms) | b1 vs ORT fp32 | result |",
             "|---|---|---|---|---|---|---|---|"]
    for label, _, row in rows:
        if label in p50:
            row = row.format(ms=f"{p50[label]:.2f}", x=f"{p50[label] / p50['ort fp32']:.2f}x")
        lines.append(row)
    return "\n".join(lines)


def where_faster(variants: dict, model, data, lit, et, label: str) -> list:
    """slimkit's int8 with ``int8_where_faster`` for LiteRT and for ExecuTorch (each layer timed alone in float and
    int8 in that runtime; the slower-in-int8 ones stay float): adds the variants, returns their plan rows."""
    rows = []
    for rt in (lit, et):
        key = f"{label}, int8 where faster in {rt.name}"
        variants[key] = slimkit_int8(model, data, int8_where_faster=rt.name)
        print(f"{key}: kept float {variants[key].info.get('keep_float', [])}; int8 / float per layer "
              + ", ".join(f"{n} {r['ratio']:.2f}x" for n, r in variants[key].info["int8_speed"].items())
              + f"; whole programs (ms, batch 1): {variants[key].info.get('int8_whole_program_ms')}", flush=True)
        rows.append((key, rt, "int8"))
    return rows


def slimkit_int8(model, data, **overrides):
    """The int8-static recipe's quantized model (slimkit's calibrators, bias correction); ``overrides``: config
    fields changed from the recipe's (``float_first=True``)."""
    import dataclasses

    from slimkit.core.context import Context
    from slimkit.core.registry import get_technique
    from slimkit.pipeline import Recipe

    step = Recipe.load("int8-static").stages[0].techniques[0]
    cfg = dataclasses.replace(step.config, **overrides)
    return get_technique(step.type).apply(model, cfg, Context(data=data))


if __name__ == "__main__":
    main()
