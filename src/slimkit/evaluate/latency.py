"""Latency: warm-up, then many timed runs; several models are timed
interleaved in the same process (every round runs each once, in a seeded
random order), because absolute times on shared machines drift by 10-40%.
The order is shuffled, not rotated: with a rotation each runner always
follows the same neighbour, whose cache footprint then biases it (two
identical ExecuTorch files timed 0.030 and 0.038 ms in one rotated run,
docs/BENCHMARKS.md)."""
from __future__ import annotations

import random
import time
from typing import Callable, Hashable, Sequence

import numpy as np
import torch

from ..core.context import torch_threads  # noqa: F401 (re-exported)
from ..core.progress import track


def torch_runner(model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> Callable[[], None]:
    model.eval()

    def run():
        with torch.inference_mode():
            model(*inputs)

    return run


def ort_runner(sess, inputs: Sequence[torch.Tensor]) -> Callable[[], None]:
    names = [i.name for i in sess.get_inputs()]
    feed = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs)}
    return lambda: sess.run(None, feed)


def time_interleaved(runners: dict[Hashable, Callable[[], None]], *, runs: int = 30, warmup: int = 5,
                     desc: str | None = "timing", seed: int = 0) -> dict[Hashable, np.ndarray]:
    """Return per-runner arrays of wall times in milliseconds (``desc=None``: no progress bar)."""
    keys = list(runners)
    for _ in range(warmup):
        for k in keys:
            runners[k]()
    times: dict[Hashable, list[float]] = {k: [] for k in keys}
    rng = random.Random(seed)
    for _ in (track(range(runs), desc) if desc else range(runs)):
        order = keys[:]
        rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            runners[k]()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: np.asarray(v) for k, v in times.items()}


def summarize(ms: np.ndarray) -> dict:
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)), "mean": float(ms.mean()),
            "runs": int(len(ms))}


def quantiles(ms: np.ndarray) -> dict:
    """The timed distribution, kept for the report's latency plots (min, p5, p25, p50, p75, p95, max in ms)."""
    qs = np.percentile(ms, [0, 5, 25, 50, 75, 95, 100])
    return dict(zip(("min", "p5", "p25", "p50", "p75", "p95", "max"), (round(float(q), 5) for q in qs)))
