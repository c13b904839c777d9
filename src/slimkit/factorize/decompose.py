"""Low-rank decompositions of single layers, each returning a small
``Factorized`` sequence that computes (approximately, exactly at full rank) what
the layer computed:

* ``svd_linear``: W = U S V^T  ->  Linear(in, r) then Linear(r, out)
* ``tucker2_conv``: channel (Tucker-2) decomposition of a k x k Conv, found by
  HOSVD and refined by a few HOOI sweeps  ->  1x1 (in -> r_in), k x k core
  (r_in -> r_out), 1x1 (r_out -> out)
* ``spatial_svd_conv``: Conv2d k x k -> (k x 1, in -> r) then (1 x k, r -> out)
* ``depthwise_separable``: k x k Conv -> depthwise k x k (x multiplier) +
  pointwise 1 x 1, initialised by the best rank-``multiplier`` fit per input
  channel (least squares, via SVD)

Where a factorization pays off is decided by measuring (``lowrank.py``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..core.errors import ConfigError


class Factorized(nn.Sequential):
    """The pieces that replace one layer, usable where that layer was: the model's own code may read the
    replaced layer's attributes (``in_features``, ``stride``, ``kernel_size``...; Hugging Face reads
    ``projection.weight.dtype`` and a MobileNetV2 layer's ``stride`` for its padding), so they are kept, and
    ``weight``/``bias`` give the dense equivalent of the product (what the pieces compute together)."""

    _ATTRS = ("in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride", "padding",
              "dilation", "groups", "padding_mode")

    def __init__(self, kind: str, original: nn.Module, *pieces: nn.Module):
        super().__init__(*pieces)
        self.kind = kind
        for a in self._ATTRS:
            if hasattr(original, a):
                setattr(self, a, getattr(original, a))

    @property
    def bias(self):
        return self[-1].bias

    @property
    def weight(self) -> torch.Tensor:
        w = [p.weight for p in self]
        if self.kind == "svd":
            return w[1] @ w[0]
        if self.kind == "tucker2":
            first, mid, last = w[0].flatten(1), w[1], w[2].flatten(1)
            return torch.einsum("or,rs...,si->oi...", last, mid, first)
        if self.kind == "spatial":  # (kh x 1) then (1 x kw)
            return torch.einsum("orw,rih->oihw", w[1][:, :, 0], w[0][..., 0])
        if self.kind == "dsconv":  # depthwise (x multiplier) then pointwise
            dw, pw = w[0][:, 0], w[1].flatten(1)
            cin = self.in_channels
            mult = dw.shape[0] // cin
            return torch.einsum("oim,im...->oi...", pw.reshape(pw.shape[0], cin, mult), dw.reshape(cin, mult, *dw.shape[1:]))
        raise AttributeError(f"no dense weight for a {self.kind} factorization")


def _conv_like(conv: nn.Module, cin: int, cout: int, kernel, stride, padding, dilation, groups: int, bias: bool):
    cls = nn.Conv1d if isinstance(conv, nn.Conv1d) else nn.Conv2d
    return cls(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias,
               padding_mode=conv.padding_mode)


def linear_rank_limit(layer: nn.Linear) -> int:
    return min(layer.in_features, layer.out_features)


def svd_linear(layer: nn.Linear, rank: int, cov: torch.Tensor | None = None) -> "Factorized":
    """Truncated SVD: the best rank-``rank`` approximation of W in Frobenius norm
    (Eckart-Young); with ``cov`` = sum of x x^T over calibration inputs, the best
    rank-``rank`` approximation of the *outputs* W x instead (whitened SVD, as in
    SVD-LLM: factor W L where C = L L^T, then undo L)."""
    full = linear_rank_limit(layer)
    if not 1 <= rank <= full:
        raise ConfigError(f"rank {rank} is outside 1..{full} for Linear({layer.in_features}, {layer.out_features})")
    w = layer.weight.detach().double()
    chol = None
    if cov is not None:
        c = cov.double()
        c = c + (1e-5 * c.diagonal().mean() + 1e-12) * torch.eye(c.shape[0], dtype=c.dtype)
        chol = torch.linalg.cholesky(c)
        w = w @ chol
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    right = root[:, None] * vh[:rank]
    if chol is not None:  # right @ L^-1
        right = torch.linalg.solve_triangular(chol, right, upper=False, left=False)
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(right.float())
        second.weight.copy_((u[:, :rank] * root[None]).float())
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return Factorized("svd", layer, first, second)


def singular_values(layer: nn.Module) -> torch.Tensor:
    """Singular values of the matrix a decomposition truncates (Linear: W; Conv: the output-channel unfolding)."""
    w = layer.weight.detach().double()
    return torch.linalg.svdvals(w.reshape(w.shape[0], -1))


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """Smallest rank keeping ``energy`` of the sum of squared singular values."""
    e = (s ** 2).cumsum(0) / (s ** 2).sum()
    return int(min(len(s), int((e < energy - 1e-12).sum()) + 1))


def _unfold(w: torch.Tensor, mode: int) -> torch.Tensor:
    return w.movedim(mode, 0).reshape(w.shape[mode], -1)


def _mode_product(w: torch.Tensor, m: torch.Tensor, mode: int) -> torch.Tensor:
    """w x_mode m: contract ``w``'s dimension ``mode`` with m's columns (m: [new, old])."""
    return torch.tensordot(m, w.movedim(mode, 0), dims=([1], [0])).movedim(0, mode)


def tucker2(w: torch.Tensor, r_out: int, r_in: int, sweeps: int = 5):
    """HOSVD initialisation + HOOI sweeps on modes 0 (out) and 1 (in). Returns (U_out, core, U_in)."""
    u_out = torch.linalg.svd(_unfold(w, 0), full_matrices=False)[0][:, :r_out]
    u_in = torch.linalg.svd(_unfold(w, 1), full_matrices=False)[0][:, :r_in]
    for _ in range(sweeps):
        y = _mode_product(w, u_in.T, 1)
        u_out = torch.linalg.svd(_unfold(y, 0), full_matrices=False)[0][:, :r_out]
        y = _mode_product(w, u_out.T, 0)
        u_in = torch.linalg.svd(_unfold(y, 1), full_matrices=False)[0][:, :r_in]
    core = _mode_product(_mode_product(w, u_out.T, 0), u_in.T, 1)
    return u_out, core, u_in


def tucker_rank_limits(conv: nn.Module) -> tuple[int, int]:
    """Largest useful (output, input) Tucker ranks: the ranks of the two unfoldings."""
    k = math.prod(conv.kernel_size)
    return min(conv.out_channels, conv.in_channels * k), min(conv.in_channels, conv.out_channels * k)


def tucker2_conv(conv: nn.Module, r_out: int, r_in: int, sweeps: int = 5) -> "Factorized":
    if conv.groups != 1:
        raise ConfigError("Tucker-2 needs an ordinary convolution (groups=1)")
    lo, li = tucker_rank_limits(conv)
    if not (1 <= r_out <= lo and 1 <= r_in <= li):
        raise ConfigError(f"Tucker ranks ({r_out}, {r_in}) are outside 1..{lo} / 1..{li} for this convolution")
    o, i = conv.out_channels, conv.in_channels
    # the two ranks bound each other: HOOI takes the output factor from an (o, r_in * k) unfolding and the input
    # factor from an (i, r_out * k) one, so a larger rank has no singular vectors to fill it (a pruned Conv1d with
    # 12 inputs asked for (16, 4) at k = 3); the extra rank would carry nothing, so it is dropped
    k = math.prod(conv.kernel_size)
    r_out = min(r_out, r_in * k)
    r_in = min(r_in, r_out * k)
    w = conv.weight.detach().double()
    u_out, core, u_in = tucker2(w, r_out, r_in, sweeps)
    ones = (1,) * (w.dim() - 2)
    zeros = (0,) * (w.dim() - 2)
    first = _conv_like(conv, i, r_in, ones, 1, zeros, 1, 1, False)
    mid = _conv_like(conv, r_in, r_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation, 1, False)
    last = _conv_like(conv, r_out, o, ones, 1, zeros, 1, 1, conv.bias is not None)
    with torch.no_grad():
        first.weight.copy_(u_in.T.reshape(r_in, i, *ones).float())
        mid.weight.copy_(core.float())
        last.weight.copy_(u_out.reshape(o, r_out, *ones).float())
        if conv.bias is not None:
            last.bias.copy_(conv.bias)
    return Factorized("tucker2", conv, first, mid, last)


def spatial_rank_limit(conv: nn.Conv2d) -> int:
    kh, kw = conv.kernel_size
    return min(conv.in_channels * kh, conv.out_channels * kw)


def spatial_svd_conv(conv: nn.Conv2d, rank: int) -> "Factorized":
    """Separate a k_h x k_w kernel into k_h x 1 (in -> rank) then 1 x k_w (rank -> out)."""
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise ConfigError("spatial SVD needs an ordinary Conv2d (groups=1)")
    o, i, kh, kw = conv.weight.shape
    full = spatial_rank_limit(conv)
    if not 1 <= rank <= full:
        raise ConfigError(f"rank {rank} is outside 1..{full} for this convolution")
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ConfigError("spatial SVD supports numeric zero padding only")
    m = conv.weight.detach().double().permute(1, 2, 0, 3).reshape(i * kh, o * kw)  # [(i,h), (o,w)]
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    root = s[:rank].sqrt()
    a = (u[:, :rank] * root).reshape(i, kh, rank)          # vertical filters
    b = (root[:, None] * vh[:rank]).reshape(rank, o, kw)   # horizontal filters
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    first = nn.Conv2d(i, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), bias=False)
    second = nn.Conv2d(rank, o, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), bias=conv.bias is not None)
    with torch.no_grad():
        first.weight.copy_(a.permute(2, 0, 1).reshape(rank, i, kh, 1).float())
        second.weight.copy_(b.permute(1, 0, 2).reshape(o, rank, 1, kw).float())
        if conv.bias is not None:
            second.bias.copy_(conv.bias)
    return Factorized("spatial", conv, first, second)


def depthwise_separable(conv: nn.Module, multiplier: int = 1) -> "Factorized":
    """Depthwise k x k (in -> in * multiplier, groups=in) + pointwise 1 x 1 (-> out).

    W[o, c] (a k x k kernel per output and input channel) is approximated by
    sum_m P[o, c*M+m] D[c*M+m]: for each input channel the best rank-M fit of the
    [out, k*k] matrix W[:, c], i.e. its top-M singular triplets."""
    if conv.groups != 1:
        raise ConfigError("depthwise-separable conversion needs an ordinary convolution (groups=1)")
    o, i = conv.out_channels, conv.in_channels
    k = math.prod(conv.kernel_size)
    if not 1 <= multiplier <= min(o, k):
        raise ConfigError(f"multiplier {multiplier} is outside 1..{min(o, k)}")
    w = conv.weight.detach().double()
    d = torch.zeros(i * multiplier, 1, *conv.kernel_size, dtype=w.dtype)
    p = torch.zeros(o, i * multiplier, dtype=w.dtype)
    for c in range(i):
        u, s, vh = torch.linalg.svd(w[:, c].reshape(o, k), full_matrices=False)
        for m in range(multiplier):
            d[c * multiplier + m, 0] = (s[m].sqrt() * vh[m]).reshape(conv.kernel_size)
            p[:, c * multiplier + m] = u[:, m] * s[m].sqrt()
    ones = (1,) * len(conv.kernel_size)
    dw = _conv_like(conv, i, i * multiplier, conv.kernel_size, conv.stride, conv.padding, conv.dilation, i, False)
    pw = _conv_like(conv, i * multiplier, o, ones, 1, (0,) * len(ones), 1, 1, conv.bias is not None)
    with torch.no_grad():
        dw.weight.copy_(d.float())
        pw.weight.copy_(p.reshape(o, i * multiplier, *ones).float())
        if conv.bias is not None:
            pw.bias.copy_(conv.bias)
    return Factorized("dsconv", conv, dw, pw)
