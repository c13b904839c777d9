"""Calibrators: pick the clipping range of an activation tensor from
calibration data. min-max, moving-average min-max, percentile, entropy
(KL divergence between histograms, as in TensorRT's calibrator) and MSE
(search the clip that minimises the quantization error)."""
from __future__ import annotations


import numpy as np
import torch

from ..core.errors import DataError

CALIBRATORS = ("minmax", "moving_minmax", "percentile", "entropy", "mse")


class Observer:
    """Collects statistics of one tensor over calibration batches: exact
    running min/max, a moving average of per-batch min/max, and a bounded
    random sample of values for the histogram-based calibrators."""

    def __init__(self, max_samples: int = 1 << 20, momentum: float = 0.9, seed: int = 0):
        self.min = None
        self.max = None
        self.avg_min = None
        self.avg_max = None
        self.momentum = momentum
        self.max_samples = max_samples
        self.samples: list[np.ndarray] = []
        self.n_seen = 0
        self.batches = 0
        self._rng = np.random.default_rng(seed)

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if not torch.isfinite(x).all():
            raise DataError("calibration produced NaN or Inf activations; check the calibration data and model")
        lo, hi = float(x.min()), float(x.max())
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)
        m = self.momentum
        self.avg_min = lo if self.avg_min is None else m * self.avg_min + (1 - m) * lo
        self.avg_max = hi if self.avg_max is None else m * self.avg_max + (1 - m) * hi
        flat = x.reshape(-1).numpy()
        self.n_seen += flat.size
        self.batches += 1
        budget = self.max_samples // 8
        if flat.size > budget:
            flat = self._rng.choice(flat, budget, replace=False)
        self.samples.append(flat.astype(np.float32))
        total = sum(s.size for s in self.samples)
        if total > self.max_samples:
            allv = np.concatenate(self.samples)
            self.samples = [self._rng.choice(allv, self.max_samples, replace=False)]

    def values(self) -> np.ndarray:
        if not self.samples:
            raise DataError("no calibration data reached this layer; give at least 2 calibration samples")
        if len(self.samples) > 1:  # joined once: the calibrators asked in turn read the same array
            self.samples = [np.concatenate(self.samples)]
        return self.samples[0]

    def range(self, method: str, *, percentile: float = 99.99, bits: int = 8, unsigned: bool = True) -> tuple[float, float]:
        if self.min is None:
            raise DataError("no calibration data reached this layer; give at least 2 calibration samples")
        if method == "minmax":
            return self.min, self.max
        if method == "moving_minmax":
            return self.avg_min, self.avg_max
        v = self.values()
        if method == "percentile":
            return percentile_range(v, percentile)
        if method == "mse":
            return mse_range(v, bits)
        if method == "entropy":
            return entropy_range(v, bits)
        raise ValueError(f"unknown calibrator {method!r}; known: {', '.join(CALIBRATORS)}")


def percentile_range(v: np.ndarray, pct: float = 99.99) -> tuple[float, float]:
    lo = float(np.percentile(v, 100 - pct)) if v.min() < 0 else 0.0
    hi = float(np.percentile(v, pct))
    return min(lo, 0.0), max(hi, 0.0)


def _qerr(v: np.ndarray, lo: float, hi: float, bits: int) -> float:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    n = 2 ** bits - 1
    scale = max((hi - lo) / n, 1e-12)
    zp = np.round(-lo / scale)
    q = np.clip(np.round(v / scale) + zp, 0, n)
    return float(np.mean(((q - zp) * scale - v) ** 2))


def mse_range(v: np.ndarray, bits: int = 8, steps: int = 100, bins: int = 16384,
              refine: int = 4) -> tuple[float, float]:
    """Shrink [min, max] towards 0 and keep the range with the least squared error.

    The error of every candidate range is computed at once from a fine histogram
    of the values (each bin stands for its centre; `bins` is 64 bins per 8-bit
    step, so the rounding error a bin stands for is within 1/64 step of the
    exact one at the full range, fewer at small clips), and only the `refine`
    best are quantized sample by sample: the exact search's choice (`_qerr` over
    every candidate; tested) from 4 passes over the samples instead of 101."""
    lo0, hi0 = float(min(v.min(), 0.0)), float(max(v.max(), 0.0))
    if hi0 - lo0 <= 0:
        return lo0, hi0
    counts, edges = np.histogram(v, bins=bins, range=(lo0, hi0))
    keep = counts > 0
    c = ((edges[:-1] + edges[1:]) * 0.5)[keep]
    w = counts[keep].astype(np.float64)
    f = np.concatenate([[1.0], np.linspace(0.05, 1.0, steps)])  # the full range first: ties keep it
    lo, hi = lo0 * f, hi0 * f
    n = 2 ** bits - 1
    scale = np.maximum((hi - lo) / n, 1e-12)[:, None]
    zp = np.round(-lo[:, None] / scale)
    q = np.clip(np.round(c[None, :] / scale) + zp, 0, n)
    err = (((q - zp) * scale - c[None, :]) ** 2) @ w
    # the few best by the histogram are scored exactly on the samples; ties keep the earliest candidate,
    # as the per-candidate loop this replaces did
    top = np.sort(np.argsort(err, kind="stable")[:refine])
    exact = [_qerr(v, lo[i], hi[i], bits) for i in top]
    i = int(top[int(np.argmin(exact))])
    return float(lo[i]), float(hi[i])


def entropy_range(v: np.ndarray, bits: int = 8, bins: int = 2048) -> tuple[float, float]:
    """KL-divergence calibration (Migacz, "8-bit inference with TensorRT", 2017)
    on |x|: choose the threshold whose quantized histogram is closest to the
    reference distribution. Symmetric around 0 for signed data."""
    a = np.abs(v)
    amax = float(a.max())
    if amax == 0:
        return 0.0, 0.0
    hist, edges = np.histogram(a, bins=bins, range=(0, amax))
    hist = hist.astype(np.float64)
    nq = 2 ** (bits - 1) if v.min() < 0 else 2 ** bits
    best_kl, best_i = np.inf, bins
    filled = (hist > 0).astype(np.float64)
    for i in range(nq, bins + 1, max(1, (bins - nq) // 256)):
        ref = hist[:i].copy()
        ref[i - 1] += hist[i:].sum()  # clip the outliers into the last bin
        # quantize the first i bins into nq levels: each level's count spread evenly over its non-empty bins
        # (per-level sums by bincount: the counts are integers, so the sums are exact in any order)
        idx = (np.arange(i) * nq // i)
        total = np.bincount(idx, weights=hist[:i], minlength=nq)
        nonempty = np.bincount(idx, weights=filled[:i], minlength=nq)
        q = np.where(hist[:i] > 0, total[idx] / np.maximum(nonempty[idx], 1.0), 0.0)
        p = ref / ref.sum()
        qq = q / max(q.sum(), 1e-12)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(qq[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    t = float(edges[best_i]) if best_i < len(edges) else amax
    lo = -t if v.min() < 0 else 0.0
    return lo, t
