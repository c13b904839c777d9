"""GPTQ (Frantar et al. 2023): quantize a Linear layer's weight one input column at
a time and spread each column's rounding error over the columns not yet quantized,
weighted by the inverse Hessian of the layer's output error (H = sum of x x^T over
calibration inputs). Shared by weight-only int4 (group codes) and dynamic int8
(per-row codes): the grid is given as scales, zero points and a code range."""
from __future__ import annotations

from typing import Callable, Optional

import torch


@torch.no_grad()
def gptq_codes(w: torch.Tensor, h: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, lo: int, hi: int,
               g: int, damp: float = 0.01, act_order: bool = True,
               refit: Optional[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = None) -> torch.Tensor:
    """Integer codes of ``w`` [rows, k] on the grid value = (code - zero) * scale, one scale/zero per group of ``g``
    contiguous inputs ([rows, k / g]; ``g = k`` for per-row scales), codes in [lo, hi].

    With ``act_order`` the columns go in order of decreasing Hessian diagonal (inputs with the most energy first,
    while the most columns are left to absorb their error) and the grid stays fixed ("static groups", so a file keeps
    contiguous groups). Otherwise natural order, and ``refit`` (if given) chooses each group's scale and zero point
    when the group starts, on the error-updated weights; ``scales`` / ``zeros`` are filled in place."""
    w = w.detach().float().clone()
    rows, k = w.shape
    h = h.double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * h.diagonal().mean() * torch.eye(k, dtype=h.dtype)
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(k)
    w, h = w[:, perm], h[perm][:, perm]
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    q = torch.zeros(rows, k)
    for j in range(k):
        i = int(perm[j])
        if refit is not None and not act_order and j % g == 0:
            s_, z_ = refit(w[:, j:j + g])
            scales[:, j // g], zeros[:, j // g] = s_[:, 0], z_[:, 0]
        s, z = scales[:, i // g], zeros[:, i // g]
        col = w[:, j]
        qi = torch.clamp(torch.round(col / s) + z, lo, hi)
        q[:, i] = qi
        err = (col - (qi - z) * s) / hinv[j, j]
        if j + 1 < k:
            w[:, j + 1:] -= err[:, None] * hinv[j, j + 1:][None, :]
    return q
