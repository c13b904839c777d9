"""Quantization benchmark: slimkit vs the stock quantizers, side by side in one run.

    python bench/quantize_bench.py [--threads 1] [--only digits-cnn,mnist1d-cnn,mnist1d-lstm,mnist1d-gru,minilm]
    python bench/quantize_bench.py --only minilm-int4   # the int4 ablation (size and fidelity, no timing)

Peers: ONNX Runtime's quantize_static (QDQ, default settings, same calibration
samples) for the CNNs, ONNX Runtime's quantize_dynamic (default settings) and
torch.ao's quantize_dynamic for MiniLM and the LSTM. The CNN tables also hold
mixed precision under a size budget (4-bit layers packed), as written and
unpacked at load. Every ONNX variant is timed
interleaved with the fp32 file in the same process; ratios are variant / fp32.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

os.environ.setdefault("SLIMKIT_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from slimkit.core import Context  # noqa: E402
from slimkit.evaluate import Candidate, compare  # noqa: E402
from slimkit.evaluate.metrics import fidelity  # noqa: E402
from slimkit.export import export_onnx  # noqa: E402
from slimkit.load import resolve  # noqa: E402
from slimkit.quantize import (DynamicQuantConfig, Int4WeightConfig, MixedPrecisionConfig,  # noqa: E402
                              StaticQuantConfig, int4_weights, int8_dynamic, int8_static, mixed_precision)
from slimkit.quantize.onnx_passes import unpack_low_bit_weights  # noqa: E402


def ort_static_peer(fp32: Path, out: Path, data) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{data.input_names[0]: x[0].numpy()} for x, _ in data.calib.batches(1)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ)


def table(res: dict, metric: str, extra: dict) -> str:
    rows = ["| variant | size (MB) | size vs fp32 | " + metric + " | ORT b1 ms | b1 vs fp32 | ORT bN ms | bN vs fp32 | note |",
            "|---|---|---|---|---|---|---|---|---|"]
    for lbl, m in res["metrics"].items():
        r = res["ratios"].get(lbl, {})
        val = m.get(metric)
        if metric == "fidelity_cos_mean":
            val_s = f"{val:.4f} / min {m['fidelity_cos_min']:.4f} / NN {m['nn_top1']:.3f}"
        else:
            val_s = f"{100 * val:.2f}%"
        rows.append(f"| {lbl} | {m['size_bytes'] / 1e6:.3f} | {r.get('size_bytes', 1.0):.3f} | {val_s} | "
                    f"{m['latency_ms_p50_b1']:.3f} | {r.get('latency_ms_p50_b1', 1.0):.2f} | {m['latency_ms_p50_bN']:.2f} | "
                    f"{r.get('latency_ms_p50_bN', 1.0):.2f} | {extra.get(lbl, '')} |")
    return "\n".join(rows)


def cnn(name: str, work: Path, threads: int) -> str:
    lm, data = resolve(f"zoo:{name}")
    fp = work / f"{name}-fp32.onnx"
    export_onnx(lm.model, data, fp)
    peer = work / f"{name}-ort-static.onnx"
    ort_static_peer(fp, peer, data)
    t0 = time.perf_counter()
    qm = int8_static(lm.model, StaticQuantConfig(calibrator="auto"), Context(data=data))
    ours = work / f"{name}-slimkit-int8.onnx"
    qm.slimkit_export(data, ours)
    cost = time.perf_counter() - t0
    # mixed precision under a size budget: 4-bit layers packed on disk; the same file unpacked at load
    t0 = time.perf_counter()
    mp = mixed_precision(lm.model, MixedPrecisionConfig(target_size=0.18), Context(data=data))
    packed = work / f"{name}-slimkit-mixed.onnx"
    mp.slimkit_export(data, packed)
    cost_mp = time.perf_counter() - t0
    m = onnx.load(packed)
    unpack_low_bit_weights(m)
    unpacked = work / f"{name}-slimkit-mixed-unpacked.onnx"
    onnx.save(m, unpacked)
    lbl_mp = "slimkit mixed_precision, target_size 0.18 (4-bit packed)"
    lbl_un = "same file, unpacked at load"
    res = compare([Candidate("fp32", None, fp), Candidate("ORT quantize_static (default)", None, peer),
                   Candidate("slimkit int8_static", None, ours), Candidate(lbl_mp, None, packed),
                   Candidate(lbl_un, None, unpacked)], data, workdir=work / "cmp", threads=threads,
                  measure_memory=False)
    plan = mp.info["precision_plan"]
    extra = {"slimkit int8_static": f"{cost:.1f} s to quantize; kernels {','.join(qm.info['ort_int8_kernels'])}",
             lbl_mp: f"{cost_mp:.1f} s; {sum(b == 4 for b in plan.values())} of {len(plan)} layers 4-bit, weights "
                     f"{mp.info['weight_bytes_vs_fp32']:.3f} of fp32",
             lbl_un: "size column: int8 in memory; the file on disk is the row above"}
    return f"### {name} (batch N = {res['settings']['batch_N']}, {threads} thread(s))\n\n" + table(res, "accuracy", extra)


def minilm(work: Path, threads: int) -> str:
    from onnxruntime.quantization import quantize_dynamic

    lm, data = resolve("zoo:minilm")
    fp = work / "minilm-fp32.onnx"
    export_onnx(lm.model, data, fp)
    peer = work / "minilm-ort-dynamic.onnx"
    quantize_dynamic(str(fp), str(peer))
    t0 = time.perf_counter()
    qm = int8_dynamic(lm.model, DynamicQuantConfig(), Context(data=data))
    ours = work / "minilm-slimkit-int8.onnx"
    qm.slimkit_export(data, ours)
    cost = time.perf_counter() - t0
    qsep = int8_dynamic(lm.model, DynamicQuantConfig(shared_smoothing=False), Context(data=data))
    ours_sep = work / "minilm-slimkit-int8-sep.onnx"
    qsep.slimkit_export(data, ours_sep)
    qu8 = int8_dynamic(lm.model, DynamicQuantConfig(weight_range="u8"), Context(data=data))
    ours_u8 = work / "minilm-slimkit-int8-u8.onnx"
    qu8.slimkit_export(data, ours_u8)
    t0 = time.perf_counter()
    q4m = int4_weights(lm.model, Int4WeightConfig(), Context(data=data))
    ours4 = work / "minilm-slimkit-int4.onnx"
    q4m.slimkit_export(data, ours4)
    cost4 = time.perf_counter() - t0
    res = compare([Candidate("fp32", None, fp), Candidate("ORT quantize_dynamic (default)", None, peer),
                   Candidate("slimkit int8_dynamic", None, ours),
                   Candidate("slimkit int8_dynamic, shared_smoothing false", None, ours_sep),
                   Candidate("slimkit int8_dynamic, weight_range u8", None, ours_u8),
                   Candidate("slimkit int4_weights", None, ours4)],
                  data, workdir=work / "cmp", threads=threads, measure_memory=False)
    extra = {"slimkit int8_dynamic": f"{cost:.1f} s end to end (calibration + export + parity)",
             "slimkit int8_dynamic, shared_smoothing false": "a SmoothQuant scale per layer: Q/K/V input scaled "
                                                             "and quantized three times",
             "slimkit int8_dynamic, weight_range u8": "full 8-bit weights, u8 x u8 kernels: fidelity for speed",
             "slimkit int4_weights": f"{cost4:.1f} s; MatMulNBits; {len(q4m.info['int8_layers'])} layers 8-bit"}
    out = f"### minilm (batch N = {res['settings']['batch_N']}, {threads} thread(s))\n\n" + table(res, "fidelity_cos_mean", extra)
    ours_b1 = res["metrics"]["slimkit int8_dynamic"]["latency_ms_p50_b1"]
    peer_b1 = res["metrics"]["ORT quantize_dynamic (default)"]["latency_ms_p50_b1"]
    out += f"\n\nslimkit vs ORT quantize_dynamic, batch-1 latency: {ours_b1 / peer_b1:.2f}x (same run)\n"
    # torch.ao dynamic quantization (PyTorch runtime only: it does not export to ONNX)
    tq = torch.ao.quantization.quantize_dynamic(lm.model, {torch.nn.Linear}, dtype=torch.qint8)
    with torch.inference_mode():
        ref = torch.cat([lm.model(*x) for x, _ in data.test.batches(64)]).numpy()
        got = torch.cat([tq(*x) for x, _ in data.test.batches(64)]).numpy()
        x1 = data.example_inputs(1)
        times = {"fp32": [], "tq": []}
        torch.set_num_threads(threads)
        for _ in range(5):
            lm.model(*x1), tq(*x1)
        for _ in range(30):
            for k, m in (("fp32", lm.model), ("tq", tq)):
                t = time.perf_counter()
                m(*x1)
                times[k].append(time.perf_counter() - t)
    f = fidelity(got, ref)
    out += (f"\ntorch.ao quantize_dynamic (PyTorch runtime): cos mean {f['fidelity_cos_mean']:.4f} / min "
            f"{f['fidelity_cos_min']:.4f} / NN {f['nn_top1']:.3f}; PyTorch batch-1 latency "
            f"{np.median(times['tq']) * 1e3:.2f} ms vs fp32 {np.median(times['fp32']) * 1e3:.2f} ms "
            f"({np.median(times['tq']) / np.median(times['fp32']):.2f}x)\n")
    return out


def minilm_int4(work: Path) -> str:
    """Which int4 choices buy MiniLM's fidelity, step by step, all exported and run in ONNX Runtime."""
    from slimkit.export import ort_run, ort_session

    lm, data = resolve("zoo:minilm")
    with torch.inference_mode():
        ref = torch.cat([lm.model(*x) for x, _ in data.test.batches(64)]).numpy()
    variants = [
        ("symmetric g64, float32 scales, table g64 (the third session's default)",
         dict(group_size=64, symmetric=True, scale_dtype="float32", embedding_group_size=64, int8_budget=0)),
        ("asymmetric g64, float16 scales, table g64", dict(group_size=64, embedding_group_size=64, int8_budget=0)),
        ("asymmetric g32, float16 scales, table g64", dict(embedding_group_size=64, int8_budget=0)),
        ("asymmetric g32, float16 scales, table g128", dict(int8_budget=0)),
        ("the default: the above + 8-bit budget 2.5%", dict()),
    ]
    rows = ["| variant | size (MB) | cos mean / min / NN (ORT) | 8-bit layers | time |", "|---|---|---|---|---|"]
    for i, (label, kw) in enumerate(variants):
        t0 = time.perf_counter()
        qm = int4_weights(lm.model, Int4WeightConfig(**kw), Context(data=data))
        path = work / f"minilm-int4-{i}.onnx"
        qm.slimkit_export(data, path)
        cost = time.perf_counter() - t0
        sess = ort_session(path)
        got = np.concatenate([ort_run(sess, x) for x, _ in data.test.batches(64)])
        f = fidelity(got, ref)
        rows.append(f"| {label} | {path.stat().st_size / 1e6:.3f} | {f['fidelity_cos_mean']:.4f} / "
                    f"{f['fidelity_cos_min']:.4f} / {f['nn_top1']:.3f} | {len(qm.info['int8_layers'])} | {cost:.1f} s |")
    return "### minilm int4 ablation (300 test sentences, GPTQ act-order in every row)\n\n" + "\n".join(rows)


def rnn(name: str, work: Path, threads: int) -> str:
    """A recurrent model: slimkit's int8 dynamic (LSTM -> DynamicQuantizeLSTM, Linear -> integer MatMul) vs ORT's
    quantize_dynamic (default op types) and torch.ao's quantize_dynamic (PyTorch runtime, no ONNX)."""
    from onnxruntime.quantization import quantize_dynamic

    lm, data = resolve(f"zoo:{name}")
    fp = work / f"{name}-fp32.onnx"
    export_onnx(lm.model, data, fp)
    peer = work / f"{name}-ort-dynamic.onnx"
    quantize_dynamic(str(fp), str(peer))
    t0 = time.perf_counter()
    qm = int8_dynamic(lm.model, DynamicQuantConfig(), Context(data=data))
    ours = work / f"{name}-slimkit-int8.onnx"
    qm.slimkit_export(data, ours)
    cost = time.perf_counter() - t0
    res = compare([Candidate("fp32", None, fp), Candidate("ORT quantize_dynamic (default)", None, peer),
                   Candidate("slimkit int8_dynamic", None, ours)], data, workdir=work / "cmp", threads=threads,
                  measure_memory=False)
    extra = {"slimkit int8_dynamic": f"{cost:.1f} s; kernels {','.join(qm.info['ort_int8_kernels'])}"}
    out = f"### {name} (batch N = {res['settings']['batch_N']}, {threads} thread(s))\n\n" + table(res, "accuracy", extra)
    tq = torch.ao.quantization.quantize_dynamic(lm.model, {torch.nn.Linear, torch.nn.LSTM, torch.nn.GRU},
                                                dtype=torch.qint8)
    with torch.inference_mode():
        acc = float((tq(*data.test.inputs).argmax(-1) == data.test.targets).float().mean())
    out += f"\n\ntorch.ao quantize_dynamic (Linear + LSTM/GRU, PyTorch runtime): accuracy {100 * acc:.2f}%\n"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="digits-cnn,mnist1d-cnn,mnist1d-lstm,mnist1d-gru,minilm")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        for name in a.only.split(","):
            print(minilm(work, a.threads) if name == "minilm" else minilm_int4(work) if name == "minilm-int4"
                  else rnn(name, work, a.threads)
                  if "lstm" in name or "gru" in name
                  else cnn(name, work, a.threads))
            print()
            sys.stdout.flush()


if __name__ == "__main__":
    main()
