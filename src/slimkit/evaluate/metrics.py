"""Task metrics: accuracy for classifiers, fidelity (cosine to reference
embeddings, nearest-neighbour agreement) for embedding models."""
from __future__ import annotations

from typing import Optional

import copy

import numpy as np
import torch

from ..core.errors import DataError
from ..core.data import DataBundle


def accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean(np.asarray(logits).argmax(-1) == np.asarray(targets)))


def fidelity(emb: np.ndarray, ref: np.ndarray) -> dict:
    """Cosine similarity of each embedding to its reference (mean, min), and the
    share of samples whose nearest neighbour (among the others) is the same
    under both models."""
    emb = np.asarray(emb, dtype=np.float64).reshape(len(emb), -1)
    ref = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    if emb.shape != ref.shape:
        raise DataError(f"embedding shapes differ: {emb.shape} vs reference {ref.shape}")
    en = emb / (np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12)
    rn = ref / (np.linalg.norm(ref, axis=1, keepdims=True) + 1e-12)
    cos = np.sum(en * rn, axis=1)

    def nn_idx(x):
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        return s.argmax(1)

    return {"fidelity_cos_mean": float(cos.mean()), "fidelity_cos_min": float(cos.min()),
            "nn_top1": float(np.mean(nn_idx(en) == nn_idx(rn)))}


def task_metrics(outputs: np.ndarray, data: DataBundle, reference: Optional[np.ndarray] = None) -> dict:
    """Metric dict for ``outputs`` on ``data.test``. For embedding data,
    ``reference`` holds the baseline model's outputs (itself if None)."""
    outputs = np.asarray(outputs)
    if not np.isfinite(outputs).all():
        return {"accuracy": float("nan")} if data.task == "classification" else {"fidelity_cos_mean": float("nan")}
    if data.task == "classification":
        if data.test.targets is None:
            raise DataError(f"data set {data.name!r} has no labels; accuracy cannot be measured")
        return {"accuracy": accuracy(outputs, data.test.targets.numpy())}
    return fidelity(outputs, outputs if reference is None else reference)


def sample_scores(outputs: np.ndarray, data: DataBundle, reference: Optional[np.ndarray] = None) -> np.ndarray:
    """The primary metric sample by sample (its mean is the metric): 1.0 / 0.0 for a right / wrong class, the
    cosine to the reference embedding."""
    outputs = np.asarray(outputs)
    if data.task == "classification":
        if data.test.targets is None:
            raise DataError(f"data set {data.name!r} has no labels; accuracy cannot be measured")
        return (outputs.argmax(-1) == data.test.targets.numpy()).astype(np.float64)
    emb = outputs.astype(np.float64).reshape(len(outputs), -1)
    ref = (outputs if reference is None else np.asarray(reference)).astype(np.float64).reshape(len(outputs), -1)
    return np.sum(emb * ref, 1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)


def paired_drop(base: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    """(drop, its standard error) of a candidate's metric against the baseline's on the same samples: the mean and
    the standard error of the per-sample differences. Paired: for accuracies only the samples on which the two
    disagree count (a candidate that keeps every prediction has no noise, one that trades 4 wins for 4 losses has
    some), not two independent binomials."""
    d = np.asarray(base, np.float64) - np.asarray(cand, np.float64)
    if not np.isfinite(d).all():
        return float("nan"), float("nan")
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0


def primary_metric(data: DataBundle) -> str:
    return "accuracy" if data.task == "classification" else "fidelity_cos_mean"


def held_in_split(data: DataBundle, samples: int, seed: int):
    """A seeded sample of the training split for decisions made while compressing
    (the test split stays untouched for the report)."""
    g = torch.Generator().manual_seed(seed)
    return data.train.take(torch.randperm(len(data.train), generator=g)[:samples])


@torch.no_grad()
def split_score(model, split, data: DataBundle, ref: np.ndarray) -> tuple[float, float]:
    """(primary task metric, output SQNR in dB against ``ref``) of ``model`` on ``split``."""
    out = torch.cat([model(*x) for x, _ in split.batches(256)]).float().numpy()
    view = copy.copy(data)
    view.test = split
    m = task_metrics(out, view, ref)
    sqnr = float(10 * np.log10(np.mean(ref ** 2) / max(np.mean((out - ref) ** 2), 1e-30)))
    return m[primary_metric(data)], sqnr
