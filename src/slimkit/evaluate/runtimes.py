"""One model in several runtimes, measured side by side in one process: each runtime's artifact is exported,
parity-checked against PyTorch, scored on the held-out test split, sized, and timed interleaved with every other
artifact at batch 1 and batch N, its peak memory measured in a fresh process (batch 1); ratios are against ONNX
Runtime fp32 (the first row) and, for int8 rows, against the same runtime's fp32 artifact. TFLM rows add the measured
minimum tensor arena and a board fit verdict (the arena is TFLM's memory figure)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..core.context import eval_mode, torch_threads
from ..core.errors import ExportError
from ..core.progress import info
from ..core.data import DataBundle
from .compare import default_batch
from .latency import quantiles, summarize, time_interleaved
from .memory import peak_memory
from .metrics import primary_metric, task_metrics

#: a float artifact must match PyTorch to this (relative to the output scale) on 64 test samples
FP32_ATOL = 1e-3


def _outputs(sess, data: DataBundle, chunk: int) -> np.ndarray:
    return np.concatenate([sess.run(x) for x, _ in data.test.batches(chunk)])


def plan_for(runtimes: Sequence, int8: bool, precisions: Optional[Sequence[str]] = None) -> list[tuple]:
    """(runtime, precision) pairs: fp32 everywhere but TFLM (integer only); int8 too where asked (not ORT: slimkit's
    own int8 for ORT comes from the quantize techniques). ``precisions``: the ones to measure where a runtime
    exports them (e.g. fp32,int8-dynamic,fp16 for LiteRT); ORT always measures fp32 (the reference)."""
    plan = []
    for rt in runtimes:
        if precisions:
            precs = [p for p in precisions if p in rt.precisions] or list(rt.precisions[:1])
        else:
            precs = ["int8"] if rt.name == "tflm" else (["fp32", "int8"] if int8 and rt.name != "ort" else ["fp32"])
        plan += [(rt, p) for p in precs]
    return plan


def measure_runtimes(model, data: DataBundle, runtimes: Sequence, *, workdir: str | Path,
                     threads: int = 1, batch: Optional[int] = None, runs: int = 30, int8: bool = False,
                     board=None, plan: Optional[list] = None, precisions: Optional[Sequence[str]] = None) -> dict:
    """``model``: one module, or {name: module} to measure several models (e.g. the original and a pruned one) in
    the same run; ``plan``: explicit (model name, runtime, precision) triples instead of every model x runtime."""
    from ..runtimes import tflm as tflm_mod

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    batch = batch or default_batch(data)
    key = primary_metric(data)
    models = model if isinstance(model, dict) else {"": model}
    refs = {}
    for name, m in models.items():
        with eval_mode(m), torch.no_grad():
            refs[name] = torch.cat([m(*x) for x, _ in data.test.batches(256)]).float().numpy()
    if plan is None:
        plan = [(name, rt, p) for name in models for rt, p in plan_for(runtimes, int8, precisions)]
    rows, sessions, owners = {}, {}, {}
    for name, rt, prec in plan:
        model, ref = models[name], refs[name]
        label = f"{name + ': ' if name else ''}{rt.name} {prec}"
        info(f"slimkit: exporting for {label}")
        stem = f"{name.replace(' ', '_') + '-' if name else ''}{rt.name}-{prec}"
        art = rt.export(model, data, workdir / f"{stem}{rt.suffix}", prec,
                        **({} if rt.name == "ort" else {"batch": 1}))
        owners[label] = (model, stem)
        sess = rt.open(art, threads)
        out = _outputs(sess, data, 1 if not rt.batch_n else 256)
        m = {"runtime": rt.name, "precision": prec, "size_bytes": Path(art.path).stat().st_size, "model": name,
             "artifact": str(art.path), "quantizer": art.quantizer,
             "version": rt.version(), "ops": rt.ops(art)}
        m.update(task_metrics(out, data, ref))
        n = min(64, len(ref))
        err = float(np.max(np.abs(out[:n] - ref[:n])))
        scale = float(np.max(np.abs(ref[:n]))) or 1.0
        if prec == "fp32":
            m["parity_max_abs_err"] = err
            if err > FP32_ATOL * max(1.0, scale):
                raise ExportError(f"{label} disagrees with PyTorch: max abs err {err:.3g} on {n} test samples")
        else:
            if data.task == "classification":
                m["top1_agreement"] = float(np.mean(out.argmax(-1) == ref.argmax(-1)))
        if rt.name != "tflm":  # a fresh process runs the batch-1 artifact: its peak resident memory
            mem = peak_memory(art.path, data.example_inputs(1), threads, runtime=rt.name)
            m["peak_mem_bytes_b1"] = mem.get("peak_mem_bytes")
            m["peak_mem_delta_bytes_b1"] = mem.get("peak_mem_delta_bytes")
        if rt.name == "tflm":
            sample = sess.quantize_input(data.test.inputs[0][:1])
            m["arena_bytes"] = tflm_mod.min_arena(art.path, sample)
            if board is not None:
                m["board"] = tflm_mod.fit(art, m["arena_bytes"], board)
        rows[label] = m
        sessions[label] = (rt, sess)
    ex1, exN = data.example_inputs(1), data.example_inputs(batch)
    batch_n = {}
    for lbl, (rt, s) in sessions.items():  # static-shape runtimes get their own batch-N artifact (timing only)
        if rt.batch_n and rt.name != "ort":
            prec = rows[lbl]["precision"]
            m, stem = owners[lbl]
            art = rt.export(m, data, workdir / f"{stem}-b{batch}{rt.suffix}", prec, batch=batch)
            batch_n[lbl] = rt.open(art, threads)
        elif rt.batch_n:
            batch_n[lbl] = s
    for bname, ex in (("b1", ex1), ("bN", exN)):
        runners = ({lbl: s.runner(ex) for lbl, (rt, s) in sessions.items()} if bname == "b1"
                   else {lbl: s.runner(ex) for lbl, s in batch_n.items()})
        with torch_threads(threads):
            times = time_interleaved(runners, runs=max(20, runs if bname == "b1" else runs // 2),
                                     desc=f"latency {bname} ({len(runners)} artifacts)")
        for lbl, ms in times.items():
            s = summarize(ms)
            rows[lbl][f"latency_ms_p50_{bname}"] = s["p50"]
            rows[lbl][f"latency_ms_p90_{bname}"] = s["p90"]
            rows[lbl][f"latency_ms_quantiles_{bname}"] = quantiles(ms)
    base = next(iter(rows))
    for lbl, m in rows.items():
        r = {}
        for k in ("latency_ms_p50_b1", "latency_ms_p50_bN", "size_bytes", "peak_mem_delta_bytes_b1"):
            if m.get(k) and rows[base].get(k):
                r[k] = m[k] / rows[base][k]
        m["vs_" + base.replace(" ", "_")] = r
        prec = m["precision"]
        fp = rows.get(lbl[: lbl.rindex(prec)] + "fp32") if prec != "fp32" and lbl.endswith(prec) else None
        if fp is None and prec != "fp32":  # slimkit's int8 model has no fp32 form: the original's
            fp = next((o for o in rows.values() if o["runtime"] == m["runtime"] and o["precision"] == "fp32"), None)
        if prec != "fp32" and fp is not None and fp is not m:
            m["vs_same_runtime_fp32"] = {k: m[k] / fp[k] for k in ("latency_ms_p50_b1", "latency_ms_p50_bN",
                                                                   "size_bytes") if k in m and k in fp}
    return {"metric": key, "baseline": base, "rows": rows,
            "settings": {"threads": threads, "batch_N": batch, "runs": runs, "data": data.name}}
