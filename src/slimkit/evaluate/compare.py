"""Profile one model, or compare several side by side in the same run.

Every candidate is exported to ONNX (parity-checked), evaluated on the task
metric in ONNX Runtime (the deployment runtime) and in PyTorch, sized on disk,
counted (params, MACs), probed for peak memory in a child process, and timed
interleaved with the others at batch 1 and batch N in both runtimes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..core.context import eval_mode
from ..core.io import ZSTD_LEVEL
from ..core.progress import info
from ..core.result import is_simulated
from ..export.onnx import export_onnx, ort_run, ort_session
from ..core.data import DataBundle
from . import energy as E
from .environment import environment
from .latency import quantiles, ort_runner, summarize, time_interleaved, torch_runner, torch_threads
from .macs import count_macs, count_nonzero_params, count_params
from .memory import peak_memory
from .metrics import primary_metric, task_metrics

#: Metric keys compared as "candidate / baseline" ratios.
RATIO_KEYS = ("params", "macs", "size_bytes", "size_bytes_compressed", "latency_ms_p50_b1", "latency_ms_p50_bN",
              "torch_latency_ms_p50_b1", "torch_latency_ms_p50_bN", "peak_mem_bytes", "energy_mj_est")


@dataclasses.dataclass
class Candidate:
    """A model to measure: a PyTorch module, an ONNX file, or both (the ONNX
    file then is the deployable form of the module, e.g. an int8 QDQ file)."""

    label: str
    model: Optional[nn.Module] = None
    onnx_path: Optional[Path] = None
    extra: dict = dataclasses.field(default_factory=dict)  # metrics a technique adds (e.g. size_bytes_compressed)


def default_batch(data: DataBundle) -> int:
    return min(len(data.test), 360 if data.task == "classification" else 32)


def onnx_weight_stats(path: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path), load_external_data=False)
    total = int8 = nbytes = 0
    layers: dict[str, int] = {}
    for init in m.graph.initializer:
        a = numpy_helper.to_array(init)
        total += a.size
        stored = len(init.raw_data) or a.nbytes  # packed 4-bit weights: the bytes on disk, not the unpacked array
        nbytes += a.nbytes
        layer = _layer_of(init.name)
        layers[layer] = layers.get(layer, 0) + stored
        if a.dtype in (np.int8, np.uint8) or init.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            int8 += a.size
    return {"onnx_params": total, "weight_bytes": nbytes, "int8_fraction": (int8 / total) if total else 0.0,
            "layer_bytes": dict(sorted(layers.items(), key=lambda kv: -kv[1]))}


def _layer_of(name: str) -> str:
    """The layer an initializer belongs to: 'features.0.weight_quantized' -> 'features.0'."""
    if name.startswith("onnx::") or "::" in name:
        return "(unnamed constants)"  # folded by the exporter (e.g. BatchNorm into Conv)
    base = name
    for suffix in (".weight", ".bias", "_weight", "_bias", ".running_mean", ".running_var"):
        if suffix in base:
            base = base[: base.index(suffix)]
            break
    else:
        base = base.rsplit(".", 1)[0] if "." in base else base
    # slimkit's quantized wrappers: gm.<layer>.layer.* is the same layer as <layer>.*
    if base.startswith("gm."):
        base = base[3:]
    return base[: -len(".layer")] if base.endswith(".layer") else base


def _zstd_size(path: Path) -> int:
    import zstandard

    return len(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(path.read_bytes()))


def compare(candidates: Sequence[Candidate], data: DataBundle, *, workdir: str | os.PathLike, threads: int = 1,
            batch: Optional[int] = None, runs: int = 30, check_parity: bool = True, measure_memory: bool = True,
            timing: bool = True) -> dict:
    """Measure every candidate; the first one is the baseline for ratios. The candidates' models keep their
    train/eval mode (they run in eval mode here)."""
    with contextlib.ExitStack() as stack:
        for c in candidates:
            if c.model is not None:
                stack.enter_context(eval_mode(c.model))
        return _compare(candidates, data, workdir=workdir, threads=threads, batch=batch, runs=runs,
                        check_parity=check_parity, measure_memory=measure_memory, timing=timing)


def _compare(candidates, data, *, workdir, threads, batch, runs, check_parity, measure_memory, timing) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    batch = batch or default_batch(data)
    ex1, exN = data.example_inputs(1), data.example_inputs(batch)
    results: dict[str, dict] = {}
    sessions, ref_out = {}, None
    for c in candidates:
        m: dict = {}
        if c.onnx_path is None:
            if c.model is None:
                raise ValueError(f"candidate {c.label} has neither a model nor an ONNX file")
            c.onnx_path = workdir / f"{_safe(c.label)}.onnx"
            info(f"slimkit: exporting {c.label} to ONNX and checking parity")
            parity = export_onnx(c.model, data, c.onnx_path, check=check_parity)
            if parity is not None:
                m["parity"] = parity.to_dict()
        sess = ort_session(c.onnx_path, threads=threads)
        sessions[c.label] = sess
        ws = onnx_weight_stats(c.onnx_path)
        m["size_bytes"] = int(c.onnx_path.stat().st_size)
        m["size_bytes_zstd"] = _zstd_size(c.onnx_path)
        if c.model is not None:
            m["params"] = count_params(c.model)
            m["params_nonzero"] = count_nonzero_params(c.model)
            m["macs"] = count_macs(c.model, ex1)
        else:
            m["params"] = ws["onnx_params"]
            m["macs"] = None
        m["weight_bytes"] = ws["weight_bytes"]
        m["layer_bytes"] = ws["layer_bytes"]
        m["int8_fraction"] = round(ws["int8_fraction"], 4)
        # task metric: ORT (what ships) is the primary value, PyTorch alongside
        ort_out = np.concatenate([ort_run(sess, x) for x, _ in data.test.batches(256)])
        torch_out = None
        if c.model is not None:
            with torch.inference_mode():
                torch_out = torch.cat([c.model.eval()(*x) for x, _ in data.test.batches(256)]).float().numpy()
        if ref_out is None:
            ref_out = torch_out if torch_out is not None else ort_out
        m.update(task_metrics(ort_out, data, ref_out))
        if torch_out is not None:
            m["torch_metrics"] = task_metrics(torch_out, data, ref_out)
        m["energy_mj_est"] = E.energy_mj(m["macs"], m["weight_bytes"], ws["int8_fraction"])
        if measure_memory:
            m.update(peak_memory(c.onnx_path, exN, threads))
        m.update(c.extra)
        results[c.label] = m
    if timing:
        _time_all(candidates, sessions, results, ex1, exN, threads, runs)
    base = candidates[0].label
    ratios = {c.label: _ratios(results[c.label], results[base]) for c in candidates[1:]}
    return {"baseline": base, "metric": primary_metric(data), "metrics": results, "ratios": ratios,
            "verdicts": {c.label: verdicts(ratios[c.label], is_simulated(c.model))
                         for c in candidates[1:]},
            "settings": {"threads": threads, "batch_N": batch, "runs": runs, "data": data.name,
                         "data_description": data.description, "input_shapes": data.input_shapes()},
            "environment": environment(threads)}


def profile(model: nn.Module | Path, data: DataBundle, *, workdir, label: str = "model", **kw) -> dict:
    c = Candidate(label, model if isinstance(model, nn.Module) else None,
                  None if isinstance(model, nn.Module) else Path(model))
    return compare([c], data, workdir=workdir, **kw)


def _time_all(candidates, sessions, results, ex1, exN, threads, runs):
    for bname, ex in (("b1", ex1), ("bN", exN)):
        runners = {}
        for c in candidates:
            runners[(c.label, "ort")] = ort_runner(sessions[c.label], ex)
            if c.model is not None:
                runners[(c.label, "torch")] = torch_runner(c.model, ex)
        with torch_threads(threads):
            times = time_interleaved(runners, runs=max(20, runs if bname == "b1" else max(20, runs // 2)),
                                     desc=f"latency {bname} ({len(runners)} runners)")
        n = int(ex[0].shape[0])
        for (label, rt), ms in times.items():
            s = summarize(ms)
            pre = "" if rt == "ort" else "torch_"
            results[label][f"{pre}latency_ms_p50_{bname}"] = s["p50"]
            results[label][f"{pre}latency_ms_p90_{bname}"] = s["p90"]
            results[label][f"{pre}latency_ms_quantiles_{bname}"] = quantiles(ms)
            if bname == "bN":
                results[label][f"{pre}throughput_sps"] = n / (s["p50"] / 1e3)


def _ratios(m: dict, base: dict) -> dict:
    out = {}
    for k in RATIO_KEYS:
        a, b = m.get(k), base.get(k)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
            out[k] = a / b
    for k in ("accuracy", "fidelity_cos_mean"):
        if k in m and k in base:
            out[f"{k}_delta"] = m[k] - base[k]
    return out


def verdicts(r: dict, simulated: bool = False, tol: float = 0.10) -> list[str]:
    """Plain statements about speed and size, including when nothing improved. ``simulated``: the candidate's
    PyTorch model is a quantization simulation, so its PyTorch timings are flagged as such."""
    names = {"latency_ms_p50_b1": "ONNX Runtime batch-1 latency", "latency_ms_p50_bN": "ONNX Runtime batch-N latency",
             "torch_latency_ms_p50_b1": "PyTorch batch-1 latency", "torch_latency_ms_p50_bN": "PyTorch batch-N latency",
             "size_bytes": "ONNX file size"}
    out = []
    for k, nm in names.items():
        if k not in r:
            continue
        v = r[k]
        if k == "size_bytes":  # sizes are exact: no noise band
            out.append(f"{nm}: {v:.2f}x the baseline ({'smaller' if v < 1 else 'larger' if v > 1 else 'the same'})")
            continue
        if v < 1 - tol:
            out.append(f"{nm}: {v:.2f}x the baseline (better)")
        elif v > 1 + tol:
            out.append(f"{nm}: {v:.2f}x the baseline (WORSE)")
        else:
            out.append(f"{nm}: {v:.2f}x the baseline (within the ±10% noise: no real change)")
        if simulated and k.startswith("torch_"):
            out[-1] += "; PyTorch runs the fake-quant simulation in float, the deployable model is the ONNX file"
    return out


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
