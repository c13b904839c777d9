"""Pick, on the device, the most accurate model variant that meets a latency target and the memory available,
and switch when conditions change.

Standalone on purpose: it imports numpy and the runtime (``onnxruntime`` for ``.onnx``, ``ai_edge_litert`` for
``.tflite``) and nothing from slimkit or torch, so it ships as one file beside the variants and ``manifest.json``
that ``slimkit optimize --variants K`` writes.

    sel = Selector("variants/manifest.json", latency_target_ms=5.0)
    sel.calibrate()                 # re-times every variant here, briefly, and picks one
    y = sel.run(x)                  # runs the current variant; every `window` runs it re-selects if needed
    sel.events                      # what it switched and why

Re-selection: over the last ``window`` runs, if the observed p90 latency is above the target it steps down to the
most accurate variant predicted to meet it (the prediction scales each variant's calibrated latency by the
slowdown the current one shows now: the same load slows every variant alike); if a more accurate variant is
predicted to fit with ``headroom`` to spare it steps back up. A variant whose measured peak memory exceeds what the
system has available (``/proc/meminfo`` MemAvailable, or ``memory_bytes``) is not chosen.

Command line: ``python selector.py manifest.json --target-ms 5 [--runs 200]`` calibrates, runs on random inputs and
prints each switch.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np


def available_memory() -> Optional[int]:
    """Bytes the system can still give (Linux MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class _Onnx:
    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.name = self.sess.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run(None, {self.name: x})[0]


class _Tflite:
    def __init__(self, path: Path, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_path=str(path), num_threads=threads)
        self.it.allocate_tensors()
        self.inp, self.out = self.it.get_input_details()[0], self.it.get_output_details()[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        d = self.inp
        if d["dtype"] != np.float32:  # an int8 model: quantize the input, dequantize the output
            s, z = d["quantization"]
            x = np.clip(np.round(x / s + z), -128, 127).astype(d["dtype"])
        self.it.set_tensor(d["index"], x)
        self.it.invoke()
        y = self.it.get_tensor(self.out["index"])
        if self.out["dtype"] != np.float32:
            s, z = self.out["quantization"]
            y = (y.astype(np.float32) - z) * s
        return y


class Selector:
    def __init__(self, manifest: str | os.PathLike, *, latency_target_ms: float, memory_bytes: Optional[int] = None,
                 window: int = 20, headroom: float = 0.8, threads: int = 1,
                 timer: Callable[[], float] = time.perf_counter, opener: Optional[Callable] = None):
        self.path = Path(manifest)
        data = json.loads(self.path.read_text())
        self.variants = sorted(data["variants"], key=lambda v: -v["value"])  # most accurate first
        if not self.variants:
            raise ValueError(f"{manifest}: no variants")
        if not latency_target_ms > 0:
            raise ValueError("latency_target_ms must be positive")
        self.target = float(latency_target_ms)
        self.memory_bytes = memory_bytes
        self.window, self.headroom, self.threads = int(window), float(headroom), int(threads)
        self.timer = timer
        self._opener = opener or self._open
        self.sessions: dict[int, Callable] = {}
        self.base_ms: dict[int, float] = {}  # calibrated p90 per variant
        self.current = 0
        self.recent: list[float] = []
        self.events: list[dict] = []

    # -- sessions -----------------------------------------------------------------------------------
    def _open(self, v: dict):
        p = self.path.parent / v["file"]
        return _Tflite(p, self.threads) if p.suffix == ".tflite" else _Onnx(p, self.threads)

    def session(self, i: int):
        if i not in self.sessions:
            self.sessions[i] = self._opener(self.variants[i])
        return self.sessions[i]

    def sample_input(self, i: int = 0) -> np.ndarray:
        shape = self.variants[i].get("input_shape") or [1]
        return np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    # -- choosing -----------------------------------------------------------------------------------
    def _fits_memory(self, i: int) -> bool:
        need = self.variants[i].get("peak_mem_bytes")
        have = self.memory_bytes if self.memory_bytes is not None else available_memory()
        return need is None or have is None or need <= have

    def calibrate(self, runs: int = 20, x: Optional[np.ndarray] = None) -> int:
        """Time every variant here (p90 of ``runs``), then choose."""
        x = self.sample_input() if x is None else x
        for i in range(len(self.variants)):
            s = self.session(i)
            for _ in range(3):
                s(x)
            ms = []
            for _ in range(runs):
                t0 = self.timer()
                s(x)
                ms.append((self.timer() - t0) * 1e3)
            self.base_ms[i] = float(np.percentile(ms, 90))
        pick = self._best_for(1.0)
        self._switch(pick, f"calibrated: p90 {self.base_ms[pick]:.3f} ms <= target {self.target} ms"
                     if self.base_ms[pick] <= self.target else
                     f"calibrated: no variant meets {self.target} ms; the fastest ({self.base_ms[pick]:.3f} ms)")
        return pick

    def _best_for(self, slowdown: float, margin: float = 1.0) -> int:
        ok = [i for i in range(len(self.variants)) if self._fits_memory(i)
              and self.base_ms[i] * slowdown <= self.target * margin]
        if ok:
            return ok[0]
        fitting = [i for i in range(len(self.variants)) if self._fits_memory(i)] or list(range(len(self.variants)))
        return min(fitting, key=lambda i: self.base_ms[i])

    def _switch(self, i: int, why: str) -> None:
        self.events.append({"time": time.time(), "from": self.variants[self.current]["name"] if self.events else None,
                            "to": self.variants[i]["name"], "index": i, "why": why})
        self.current = i
        self.recent = []

    def run(self, x: np.ndarray) -> np.ndarray:
        if not self.base_ms:
            self.calibrate(x=x)
        t0 = self.timer()
        y = self.session(self.current)(x)
        self.recent.append((self.timer() - t0) * 1e3)
        if len(self.recent) >= self.window:
            self.reselect()
        return y

    def reselect(self) -> None:
        """Decide on the last window of observed latencies."""
        obs = np.asarray(self.recent)
        p90 = float(np.percentile(obs, 90))
        cur = self.current
        slowdown = max(p90 / self.base_ms[cur], 1e-3)
        if not self._fits_memory(cur):
            pick = self._best_for(slowdown)
            if pick != cur:
                return self._switch(pick, f"memory: {self.variants[cur]['name']} needs "
                                          f"{self.variants[cur]['peak_mem_bytes']} bytes, more than available")
        if p90 > self.target:
            pick = self._best_for(slowdown)
            if pick != cur and self.base_ms[pick] < self.base_ms[cur]:
                return self._switch(pick, f"observed p90 {p90:.3f} ms > target {self.target} ms over {len(obs)} "
                                          f"runs (slowdown {slowdown:.2f}x)")
        elif cur > 0:
            pick = self._best_for(slowdown, self.headroom)
            if pick < cur:
                return self._switch(pick, f"observed p90 {p90:.3f} ms; {self.variants[pick]['name']} is predicted "
                                          f"at {self.base_ms[pick] * slowdown:.3f} ms, within {self.headroom:.0%} of "
                                          f"the target")
        self.recent = []


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Run slimkit's variants with on-device selection.")
    ap.add_argument("manifest")
    ap.add_argument("--target-ms", type=float, required=True)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    sel = Selector(a.manifest, latency_target_ms=a.target_ms, window=a.window, threads=a.threads)
    sel.calibrate()
    x = sel.sample_input()
    seen = 0
    for _ in range(a.runs):
        sel.run(x)
        for e in sel.events[seen:]:
            print(f"-> {e['to']}: {e['why']}")
        seen = len(sel.events)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
