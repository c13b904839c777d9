"""Uniform affine quantization, the one place slimkit's arithmetic lives: bits
2-8, symmetric or asymmetric, signed or unsigned, per-tensor, per-channel or
per-group (a block of ``group_size`` along the last axis; a group as long as the
row is one scale per token). ``scale`` and ``zero_point`` are computed here and
exported unchanged (ONNX QuantizeLinear semantics:
q = clamp(round(x / scale) + zero_point, qmin, qmax)). Static int8 (weights and
calibrated activations), dynamic int8 (weight rows, run-time activation ranges,
per-token activations), int4 groups (the clip search, the codes) and the packing
of 4-bit codes two per byte all call it."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch

from ..core.config import Config, check_choice, check_range
from ..core.errors import ConfigError, DataError

_EPS = float(torch.finfo(torch.float32).eps)


@dataclasses.dataclass
class QScheme(Config):
    bits: int = 8
    symmetric: bool = True
    signed: bool = True
    granularity: str = "per_tensor"  # per_tensor | per_channel | per_group
    axis: int = 0  # channel axis for per_channel
    group_size: int = 128  # for per_group (along the last axis)
    narrow: bool = False  # symmetric signed range [-(2^(b-1)-1), 2^(b-1)-1] (no -2^(b-1))

    def validate(self) -> None:
        if int(self.bits) != self.bits:
            raise ConfigError(f"bits={self.bits} must be a whole number")
        check_range("bits", self.bits, 2, 8)
        check_choice("granularity", self.granularity, ("per_tensor", "per_channel", "per_group"))
        if self.granularity == "per_group" and self.group_size < 2:
            raise ConfigError(f"group_size={self.group_size} must be >= 2")

    @property
    def qmin(self) -> int:
        if self.signed:
            return -(2 ** (self.bits - 1)) + (1 if self.narrow else 0)
        return 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1


def _by_scale(x: torch.Tensor, scheme: QScheme) -> torch.Tensor:
    """A view whose last axis holds the elements that share one scale (reducing it gives one value per scale)."""
    if scheme.granularity == "per_tensor":
        return x.reshape(-1)
    if scheme.granularity == "per_channel":
        ax = scheme.axis % x.ndim
        return x.transpose(0, ax).reshape(x.shape[ax], -1)
    return _groups(x, scheme.group_size)


def _reduce_dims(x: torch.Tensor, scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """min and max over the dimensions that share one scale."""
    v = _by_scale(x, scheme)
    return v.min(-1).values, v.max(-1).values


def _groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    if x.shape[-1] % group_size:
        raise ConfigError(f"last dimension {x.shape[-1]} is not divisible by group_size={group_size}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, scheme: QScheme, *,
                       clip=1.0, min_scale: float = _EPS, round_scale=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point covering [lo, hi] (always including 0, so that zero
    padding and ReLU zeros are exact), shrunk by the ratio ``clip``.
    ``min_scale`` floors the scale; ``round_scale`` maps it to what the file
    will hold (e.g. float16) before the zero point is chosen from it."""
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise DataError("cannot quantize a tensor holding NaN or Inf; check the model weights and calibration data")
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    qmin, qmax = scheme.qmin, scheme.qmax
    if scheme.symmetric:
        amax = torch.maximum(-lo, hi) * clip
        scale = amax / float(qmax) if scheme.signed else 2 * amax / float(qmax - qmin)
    else:
        scale = (hi - lo) * clip / float(qmax - qmin)
    scale = torch.clamp(scale, min=min_scale)
    if round_scale is not None:
        scale = round_scale(scale)
    if not scheme.symmetric:
        zp = torch.clamp(torch.round(qmin - lo * clip / scale), qmin, qmax).to(torch.int32)
    elif scheme.signed:
        zp = torch.zeros_like(scale, dtype=torch.int32)
    else:  # symmetric unsigned: zero point in the middle
        zp = torch.full_like(scale, (qmax + qmin + 1) // 2, dtype=torch.int32)
    return scale, zp


def compute_qparams(x: torch.Tensor, scheme: QScheme, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point from the tensor's own range, one per scale group (``kw``: as qparams_from_range)."""
    lo, hi = _reduce_dims(x.detach().float(), scheme)
    return qparams_from_range(lo, hi, scheme, **kw)


def fit_clip(x: torch.Tensor, scheme: QScheme, ratios=None, **kw):
    """Per scale group, the clip of the group's range (a ratio in ``ratios``) whose codes reconstruct the group
    with the least squared error, and its scale and zero point (``kw``: as qparams_from_range). Plain max-abs is
    rarely the best grid at 4 bits. ``ratios``: default 0.6-1.0 in 9 steps."""
    x = x.detach().float()
    ratios = torch.linspace(0.6, 1.0, 9) if ratios is None else ratios
    lo, hi = _reduce_dims(x, scheme)
    best_s = best_z = best_e = None
    for f in ratios:
        s, z = qparams_from_range(lo, hi, scheme, clip=f, **kw)
        e = _by_scale((dequantize(quantize(x, s, z, scheme), s, z, scheme) - x).pow(2), scheme).sum(-1)
        if best_e is None:
            best_s, best_z, best_e = s, z, e
        else:  # ties keep the earlier (smaller) clip
            better = e < best_e
            best_e = torch.where(better, e, best_e)
            best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
    return best_s, best_z


def _bshape(x: torch.Tensor, p: torch.Tensor, scheme: QScheme) -> torch.Tensor:
    if p.ndim == 0 or scheme.granularity == "per_tensor":
        return p
    if scheme.granularity == "per_channel":
        shape = [1] * x.ndim
        shape[scheme.axis % x.ndim] = -1
        return p.reshape(shape)
    return p.unsqueeze(-1)  # per_group: applied on the grouped view


def quantize(x: torch.Tensor, scale, zp, scheme: QScheme) -> torch.Tensor:
    """Integer codes (as int32 tensor) of ``x``."""
    xv = _groups(x, scheme.group_size) if scheme.granularity == "per_group" else x
    s, z = _bshape(xv, torch.as_tensor(scale), scheme), _bshape(xv, torch.as_tensor(zp), scheme)
    q = torch.clamp(torch.round(xv / s) + z, scheme.qmin, scheme.qmax).to(torch.int32)
    return q.reshape(x.shape) if scheme.granularity == "per_group" else q


def dequantize(q: torch.Tensor, scale, zp, scheme: QScheme) -> torch.Tensor:
    qv = _groups(q, scheme.group_size) if scheme.granularity == "per_group" else q
    s, z = _bshape(qv, torch.as_tensor(scale), scheme), _bshape(qv, torch.as_tensor(zp), scheme)
    x = (qv.float() - z.float()) * s
    return x.reshape(q.shape) if scheme.granularity == "per_group" else x


def fake_quant(x: torch.Tensor, scale, zp, scheme: QScheme) -> torch.Tensor:
    """Quantize then dequantize, with a straight-through gradient."""
    y = dequantize(quantize(x, scale, zp, scheme), scale, zp, scheme)
    return x + (y - x).detach()


@functools.lru_cache(maxsize=None)
def _scheme(**kw) -> QScheme:
    return QScheme(**kw)


def symmetric_rows(w: torch.Tensor, bits: int, per_channel: bool = True,
                   scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Narrow symmetric codes (in [-(2^(b-1)-1), 2^(b-1)-1], as float) of a [rows, ...] weight and one scale per
    row: per output row, or one shared scale repeated per row. ``scale``: fixed row scales (e.g. GPTQ's)."""
    rows = _scheme(bits=bits, narrow=True, granularity="per_channel", axis=0)
    if scale is None:
        scale, _ = compute_qparams(w, rows if per_channel else _scheme(bits=bits, narrow=True), min_scale=1e-12)
        scale = scale.expand(w.shape[0]) if scale.ndim == 0 else scale
    return quantize(w, scale, 0, rows).float(), scale


def fake_quant_dynamic(x: torch.Tensor) -> torch.Tensor:
    """ONNX DynamicQuantizeLinear, simulated: u8, range [min(x, 0), max(x, 0)] over the whole tensor at run time."""
    sch = _scheme(bits=8, symmetric=False, signed=False)
    s, z = qparams_from_range(x.min(), x.max(), sch, min_scale=1e-12)
    return fake_quant(x, s, z, sch)


def fake_quant_per_token(x: torch.Tensor) -> torch.Tensor:
    """Per-row symmetric 8-bit at run time: one scale max|x| / 127 per token, codes in [-127, 127]."""
    sch = _scheme(bits=8, narrow=True, granularity="per_group", group_size=x.shape[-1])
    s, z = compute_qparams(x, sch, min_scale=1e-12)
    return fake_quant(x, s, z, sch)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """4-bit codes (signed or unsigned) -> uint8, two per byte along the last axis, low nibble first (ONNX's
    INT4/UINT4 and MatMulNBits' layout; an odd count is padded with a zero nibble)."""
    u = (np.asarray(codes).astype(np.int32) & 0xF).astype(np.uint8)
    if u.shape[-1] % 2:
        u = np.concatenate([u, np.zeros(u.shape[:-1] + (1,), np.uint8)], -1)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)


def sqnr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    noise = (x.float() - y.float()).pow(2).mean()
    return float(10 * torch.log10(x.float().pow(2).mean() / noise.clamp(min=1e-30)))
