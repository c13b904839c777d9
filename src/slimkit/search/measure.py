"""Measuring one candidate the way the planner decides: on the artifact, in the target runtime, against the original.

The original is exported once (ONNX Runtime fp32, and fp32 in the target runtime when that is another one) and
its session stays open; every candidate is exported to the target runtime, scored on the **validation** split
(the decision) and on the **test** split (stated in the front and the report, never used to choose), sized on
disk, and timed interleaved with the original in this process, so that the ratios hold when the machine is
shared. Peak memory (ONNX Runtime: a fresh child process) and the TFLM arena are measured when the objective or a
limit asks for them."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..core.result import is_simulated
from ..core.context import eval_mode, torch_threads
from ..evaluate import energy as E
from ..evaluate.compare import default_batch, onnx_weight_stats
from ..evaluate.latency import summarize, time_interleaved
from ..evaluate.macs import count_macs, count_params
from ..evaluate.memory import peak_memory
from ..evaluate.metrics import paired_drop, primary_metric, sample_scores, task_metrics
from ..runtimes import get_runtime
from ..core.data import DataBundle

#: objective name -> the measured figure it minimises (a ratio to the original in ONNX Runtime fp32)
OBJECTIVES = {"latency_b1": "latency_ms_p50_b1", "latency_bN": "latency_ms_p50_bN", "size": "size_bytes",
              "energy": "energy_mj_est", "peak_mem": "peak_mem_bytes"}


class Meter:
    def __init__(self, baseline: torch.nn.Module, val: DataBundle, test: DataBundle, runtime: str, *, workdir: Path,
                 threads: int = 1, batch: Optional[int] = None, runs: int = 30, memory: bool = False,
                 batch_n: bool = True):
        self.val, self.test, self.threads, self.runs = val, test, threads, runs
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rt = get_runtime(runtime)
        self.ort = get_runtime("ort")
        self.memory = memory
        self.batch = batch or default_batch(test)
        self.batch_n = batch_n and self.rt.batch_n
        self.key = primary_metric(test)
        self.ex1, self.exN = test.example_inputs(1), test.example_inputs(self.batch)
        with eval_mode(baseline), torch.no_grad():
            self.ref_val = _outputs_torch(baseline, val)
            self.ref_test = _outputs_torch(baseline, test)
        art = self.ort.export(baseline, val, self.workdir / "original.onnx", "fp32")
        self.base_sess = self.ort.open(art, threads)
        self.original, self.base_val_scores = self._figures(baseline, art, self.base_sess, "fp32")
        self.original.update(self._time({"x": self.base_sess}, {"x": self.base_sess} if self.batch_n else {})["x"])
        if memory:
            self.original["peak_mem_bytes"] = peak_memory(art.path, self.exN, threads).get("peak_mem_bytes")
        self._n = 0

    # -----------------------------------------------------------------------------------------------
    def measure(self, model: torch.nn.Module, precision: str = "fp32", macs: Optional[int] = None) -> dict:
        """The candidate's figures and its ratios to the original (``ratios``: to ONNX Runtime fp32). ``macs``: the
        count when the model is a quantization simulation that the counter cannot see through (the float model's
        MACs: quantization keeps them)."""
        self._n += 1
        t0 = time.perf_counter()
        stem = self.workdir / f"c{self._n}-{precision}"
        kw = {} if self.rt.name == "ort" else {"batch": 1}
        art = self.rt.export(model, self.val, stem.with_suffix(self.rt.suffix), precision, **kw)
        sess = self.rt.open(art, self.threads)
        m, scores = self._figures(model, art, sess, precision, macs)
        # the standard error of its validation drop, paired with the original's on the same samples (the planner's
        # noise margin): points, as drop_pt
        m["val_drop_se_pt"] = paired_drop(self.base_val_scores, scores)[1] * 100.0
        runners_n = {}
        if self.batch_n:
            if self.rt.name == "ort":
                runners_n = {"base": self.base_sess, "cand": sess}
            else:  # static-shape artifacts: one exported for batch N (timing only)
                art_n = self.rt.export(model, self.val, self.workdir / f"c{self._n}-{precision}-bN{self.rt.suffix}",
                                       precision, batch=self.batch)
                runners_n = {"base": self.base_sess, "cand": self.rt.open(art_n, self.threads)}
        times = self._time({"base": self.base_sess, "cand": sess}, runners_n)
        m.update(times["cand"])
        base_now = times["base"]  # the original, timed in the same rounds: ratios robust to a shared machine
        if self.rt.name == "tflm":
            from ..runtimes import tflm as tflm_mod

            m["arena_bytes"] = tflm_mod.min_arena(art.path, sess.quantize_input(self.test.test.inputs[0][:1]))
        if self.memory and self.rt.name == "ort":
            m["peak_mem_bytes"] = peak_memory(art.path, self.exN, self.threads).get("peak_mem_bytes")
        ratios = {}
        for obj, k in OBJECTIVES.items():
            b = base_now.get(k, self.original.get(k))
            if isinstance(m.get(k), (int, float)) and isinstance(b, (int, float)) and b:
                ratios[obj] = m[k] / b
        m["ratios"] = ratios
        m["measure_seconds"] = round(time.perf_counter() - t0, 2)
        for p in self.workdir.glob(f"c{self._n}-*"):
            p.unlink(missing_ok=True)
        return m

    # -----------------------------------------------------------------------------------------------
    def _figures(self, model, art, sess, precision, macs=None) -> tuple[dict, np.ndarray]:
        """The artifact's figures, and its validation metric sample by sample (``sample_scores``)."""
        chunk = 256 if self.rt.batch_n or art.runtime == "ort" else 1
        out_val = np.concatenate([sess.run(x) for x, _ in self.val.test.batches(chunk)])
        out_test = np.concatenate([sess.run(x) for x, _ in self.test.test.batches(chunk)])
        m = {"runtime": art.runtime, "precision": precision, "size_bytes": Path(art.path).stat().st_size,
             "val": task_metrics(out_val, self.val, self.ref_val)[self.key],
             "test": task_metrics(out_test, self.test, self.ref_test)[self.key]}
        plain = is_simulated(model)
        m["params"] = count_params(model)
        try:
            m["macs"] = macs if plain or macs is not None else count_macs(model, self.ex1)
        except Exception:  # noqa: BLE001 - a counter that cannot see through a wrapper: the figure is left out
            m["macs"] = macs
        if art.runtime == "ort":
            ws = onnx_weight_stats(art.path)
            m["int8_fraction"] = round(ws["int8_fraction"], 4)
            m["energy_mj_est"] = E.energy_mj(m["macs"], ws["weight_bytes"], ws["int8_fraction"])
        else:
            m["int8_fraction"] = 1.0 if precision == "int8" else 0.0
            m["energy_mj_est"] = E.energy_mj(m["macs"], m["size_bytes"], m["int8_fraction"])
        return m, sample_scores(out_val, self.val, self.ref_val)

    def _time(self, sessions_b1: dict, sessions_bn: dict) -> dict:
        out: dict = {k: {} for k in sessions_b1}
        for bname, sessions, ex, runs in (("b1", sessions_b1, self.ex1, self.runs),
                                          ("bN", sessions_bn, self.exN, max(20, self.runs // 2))):
            if not sessions:
                continue
            runners = {k: s.runner(ex) for k, s in sessions.items()}
            with torch_threads(self.threads):
                times = time_interleaved(runners, runs=runs, warmup=3, desc=None)
            for k, ms in times.items():
                s = summarize(ms)
                out[k][f"latency_ms_p50_{bname}"] = s["p50"]
                out[k][f"latency_ms_p90_{bname}"] = s["p90"]
        return out


def _outputs_torch(model, data: DataBundle) -> np.ndarray:
    return torch.cat([model(*x) for x, _ in data.test.batches(256)]).float().numpy()
