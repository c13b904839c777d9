"""Distillation and low-rank benchmark (issue 5), measured side by side.

    python bench/distill_bench.py --only kd        # KD vs the same student alone, 3 seeds, digits and MNIST-1D
    python bench/distill_bench.py --only cnn       # low-rank / DS conversion on the zoo CNNs, KD recovery, latency
    python bench/distill_bench.py --only minilm    # low-rank MiniLM (data-aware SVD) + embedding KD, and with int8
    python bench/distill_bench.py --only student   # a 3-block MiniLM initialised from the teacher, embedding KD

Every ONNX variant is timed interleaved with the fp32 model in the same process
(1 thread); ratios are variant / fp32. Fidelity for MiniLM is reported on all
300 built-in sentences and on the 120 never used for training or calibration.
"""
from __future__ import annotations

import argparse
import os
import statistics as st
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("SLIMKIT_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from slimkit.core import Context  # noqa: E402
from slimkit.distill import StudentConfig, distill_student, recover  # noqa: E402
from slimkit.evaluate import Candidate, compare  # noqa: E402
from slimkit.evaluate.metrics import fidelity  # noqa: E402
from slimkit.export import export_onnx  # noqa: E402
from slimkit.factorize import DSConvConfig, LowRankConfig, dsconv, lowrank  # noqa: E402
from slimkit.load import resolve  # noqa: E402
from slimkit.pipeline.recipe import Finetune  # noqa: E402

from _common import latency_cells, side_by_side  # noqa: E402


def _acc(m, data) -> float:
    with torch.no_grad():
        return float((m(data.test.inputs[0]).argmax(1) == data.test.targets).float().mean())


def kd_effect(epochs: int = 60, width: float = 0.5) -> str:
    d = StudentConfig()
    rows = [f"Student: the zoo CNN at width {width} (every prunable channel group thinned), random init, {epochs} "
            f"epochs, AdamW lr {d.lr:g} cosine, batch {d.batch_size}; KD: T = {d.temperature:g}, alpha (hard-label "
            f"weight) = {d.alpha:g}; seeds 0, 1, 2.", "",
            "| data | teacher | student params | alone (mean +- std) | with KD (mean +- std) | KD gain | per seed (alone / KD) |",
            "|---|---|---|---|---|---|---|"]
    for name in ("digits-cnn", "mnist1d-cnn"):
        lm, data = resolve(f"zoo:{name}")
        teacher = lm.model.eval()
        res = {}
        for method in ("plain", "kd"):
            accs = []
            for seed in (0, 1, 2):
                s = distill_student(teacher, StudentConfig(width=width, init="random", method=method, epochs=epochs),
                                    Context(data=data, teacher=teacher, seed=seed))
                accs.append(_acc(s, data))
            res[method] = accs
        params = sum(p.numel() for p in s.parameters())
        a, k = res["plain"], res["kd"]
        rows.append(f"| {data.name} | {100 * _acc(teacher, data):.2f}% | {params:,} | {100 * st.mean(a):.2f} +- "
                    f"{100 * st.stdev(a):.2f} | {100 * st.mean(k):.2f} +- {100 * st.stdev(k):.2f} | "
                    f"{100 * (st.mean(k) - st.mean(a)):+.2f} pt | "
                    f"{', '.join(f'{100 * x:.1f}/{100 * y:.1f}' for x, y in zip(a, k))} |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


def cnn(threads: int, epochs: int = 20) -> str:
    out = []
    for name in ("digits-cnn", "mnist1d-cnn"):
        lm, data = resolve(f"zoo:{name}")
        model = lm.model.eval()
        variants = {}
        for lbl, fn, cfg in (("low-rank auto (Tucker-2 + SVD), 40% MACs", lowrank, LowRankConfig(rank="auto", target=0.4)),
                             ("low-rank auto (spatial SVD + SVD), 40% MACs", lowrank,
                              LowRankConfig(rank="auto", conv="spatial", target=0.4)),
                             ("depthwise-separable", dsconv, DSConvConfig())):
            try:
                m = fn(model, cfg, Context(data=data, teacher=model))
            except Exception as e:  # noqa: BLE001 - e.g. spatial SVD on a Conv1d model
                print(f"{name}: {lbl}: {e}", file=sys.stderr)
                continue
            recover(m, Context(data=data, teacher=model), Finetune(method="kd", epochs=epochs, lr=0.002))
            variants[lbl] = m
        res = side_by_side({"fp32": model, **variants}, data, threads)
        rows = [f"### {name}: factorized, then {epochs} epochs KD", "",
                "| variant | accuracy | params | MACs vs fp32 | ORT b1 | ORT bN | PyTorch b1 | PyTorch bN |",
                "|---|---|---|---|---|---|---|---|"]
        for lbl, m in res["metrics"].items():
            r = res["ratios"].get(lbl, {})
            rows.append(f"| {lbl} | {100 * m['accuracy']:.2f}% | {m['params']:,} | {r.get('macs', 1.0):.3f} | "
                        f"{latency_cells(r)} |")
        out.append("\n".join(rows))
        print(out[-1], flush=True)
    return "\n\n".join(out)


def minilm(threads: int, epochs: int, shares: list[float]) -> str:
    from slimkit.quantize import DynamicQuantConfig, int8_dynamic

    lm, data = resolve("zoo:minilm")
    model = lm.model.eval()
    held = data.test.slice(len(data.train), len(data.test))

    def fid(m, split):
        with torch.no_grad():
            a = torch.cat([m(*b) for b, _ in split.batches(64)]).numpy()
            r = torch.cat([model(*b) for b, _ in split.batches(64)]).numpy()
        return fidelity(a, r)

    def enc(m):
        return sum(x.weight.numel() for n, x in m.named_modules() if isinstance(x, torch.nn.Linear) and ".layer." in n)

    rows = ["| variant | encoder Linear params removed | cos mean (all 300) | cos mean / min / NN top-1 (120 held out) | "
            "ONNX MB | ORT b1 vs fp32 | ORT bN vs fp32 |", "|---|---|---|---|---|---|---|"]
    variants, info = {}, {}
    for share in shares:
        ctx = Context(data=data, teacher=model)
        t0 = time.perf_counter()
        f = lowrank(model, LowRankConfig(rank="auto", budget="params", target=share, eval_samples=48,
                                         targets={"include": [r"re:.*\.layer\.\d+\..*"], "types": ["Linear"]}), ctx)
        recover(f, ctx, Finetune(method="kd", epochs=epochs, lr=3e-4, batch_size=32))
        lbl = f"low-rank auto, {share:.0%} of all params"
        variants[lbl] = f
        info[lbl] = (1 - enc(f) / enc(model), time.perf_counter() - t0)
        q = int8_dynamic(f, DynamicQuantConfig(), Context(data=data))
        variants[lbl + " + int8 dynamic"] = q
        info[lbl + " + int8 dynamic"] = info[lbl]
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        cands = []
        for i, (lbl, m) in enumerate([("fp32", model)] + list(variants.items())):
            p = td / f"v{i}.onnx"
            if hasattr(m, "slimkit_export"):
                m.slimkit_export(data, p)
            else:
                export_onnx(m, data, p)
            cands.append(Candidate(lbl, m, p))
        res = compare(cands, data, workdir=td / "w", threads=threads, measure_memory=False)
    models = {c.label: c.model for c in cands}
    for lbl, m in res["metrics"].items():
        r = res["ratios"].get(lbl, {})
        h = fid(models[lbl], held)
        removed = info.get(lbl, (0.0, 0))[0]
        rows.append(f"| {lbl} | {100 * removed:.1f}% | {m['fidelity_cos_mean']:.4f} | {h['fidelity_cos_mean']:.4f} / "
                    f"{h['fidelity_cos_min']:.4f} / {h['nn_top1']:.3f} | {m['size_bytes'] / 1e6:.2f} | "
                    f"{r.get('latency_ms_p50_b1', 1.0):.2f}x | {r.get('latency_ms_p50_bN', 1.0):.2f}x |")
    out = (f"MiniLM: data-aware (whitened) SVD on every encoder Linear, ranks by the greedy auto search under a "
           f"params budget, then {epochs} epochs of embedding distillation on the 180 training sentences.\n\n"
           + "\n".join(rows))
    print(out, flush=True)
    return out


def minilm_student(threads: int, epochs: int, keep: list[int]) -> str:
    """A shallower MiniLM: blocks dropped, the rest initialised from the teacher, embedding KD."""
    lm, data = resolve("zoo:minilm")
    model = lm.model.eval()
    held = data.test.slice(len(data.train), len(data.test))
    t0 = time.perf_counter()
    ctx = Context(data=data, teacher=model)
    s = distill_student(model, StudentConfig(width=1.0, keep_layers=keep, epochs=epochs, lr=1e-4, batch_size=32), ctx)
    cost = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        export_onnx(model, data, td / "t.onnx")
        export_onnx(s, data, td / "s.onnx")
        res = compare([Candidate("fp32 (6 blocks)", model, td / "t.onnx"),
                       Candidate(f"student (blocks {keep})", s, td / "s.onnx")], data, workdir=td / "w",
                      threads=threads, measure_memory=False)
    with torch.no_grad():
        a = torch.cat([s(*b) for b, _ in held.batches(64)]).numpy()
        r = torch.cat([model(*b) for b, _ in held.batches(64)]).numpy()
    h = fidelity(a, r)
    m, r_ = res["metrics"][f"student (blocks {keep})"], res["ratios"][f"student (blocks {keep})"]
    out = (f"MiniLM student, blocks {keep} of 6 kept (initialised from the teacher), {epochs} epochs of embedding "
           f"KD on 180 sentences ({cost:.0f} s): params {m['params']:,} ({r_['params']:.2f}x), ONNX "
           f"{m['size_bytes'] / 1e6:.1f} MB, cos mean (all 300) {m['fidelity_cos_mean']:.4f}, held-out 120: cos mean "
           f"{h['fidelity_cos_mean']:.4f} / min {h['fidelity_cos_min']:.4f} / NN top-1 {h['nn_top1']:.3f}; ORT latency "
           f"b1 {r_['latency_ms_p50_b1']:.2f}x, bN {r_['latency_ms_p50_bN']:.2f}x the fp32 model")
    print(out, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="kd,cnn,minilm")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--minilm-epochs", type=int, default=10)
    ap.add_argument("--minilm-shares", default="0.05,0.141")
    a = ap.parse_args(argv)
    parts = a.only.split(",")
    if "kd" in parts:
        kd_effect()
    if "cnn" in parts:
        cnn(a.threads)
    if "minilm" in parts:
        minilm(a.threads, a.minilm_epochs, [float(s) for s in a.minilm_shares.split(",")])
    if "student" in parts:
        minilm_student(a.threads, a.minilm_epochs, [0, 2, 4])
    return 0


if __name__ == "__main__":
    sys.exit(main())
