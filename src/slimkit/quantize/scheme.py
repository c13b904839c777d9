"""Uniform affine quantization: bits 2-8, symmetric or asymmetric, signed or
unsigned, per-tensor, per-channel or per-group. ``scale`` and ``zero_point``
are computed once here and exported unchanged (ONNX QuantizeLinear semantics:
q = clamp(round(x / scale) + zero_point, qmin, qmax))."""
from __future__ import annotations

import dataclasses

import torch

from ..core.config import Config, check_choice, check_range
from ..core.errors import ConfigError, DataError


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


def _reduce_dims(x: torch.Tensor, scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """min and max over the dimensions that share one scale."""
    if scheme.granularity == "per_tensor":
        return x.min(), x.max()
    if scheme.granularity == "per_channel":
        ax = scheme.axis % x.ndim
        xt = x.transpose(0, ax).reshape(x.shape[ax], -1)
        return xt.min(1).values, xt.max(1).values
    g = _groups(x, scheme.group_size)
    return g.min(-1).values, g.max(-1).values


def _groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    if x.shape[-1] % group_size:
        raise ConfigError(f"last dimension {x.shape[-1]} is not divisible by group_size={group_size}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point covering [lo, hi] (always including 0, so that zero
    padding and ReLU zeros are exact)."""
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise DataError("cannot quantize a tensor holding NaN or Inf; check the model weights and calibration data")
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    qmin, qmax = scheme.qmin, scheme.qmax
    eps = torch.finfo(torch.float32).eps
    if scheme.symmetric:
        amax = torch.maximum(-lo, hi)
        if scheme.signed:
            scale = amax / float(qmax)
            zp = torch.zeros_like(scale, dtype=torch.int32)
        else:  # symmetric unsigned: zero point in the middle
            scale = 2 * amax / float(qmax - qmin)
            zp = torch.full_like(scale, (qmax + qmin + 1) // 2, dtype=torch.int32)
    else:
        scale = (hi - lo) / float(qmax - qmin)
        scale = torch.clamp(scale, min=eps)
        zp = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax).to(torch.int32)
    scale = torch.clamp(scale, min=eps)
    return scale, zp


def compute_qparams(x: torch.Tensor, scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = _reduce_dims(x.detach().float(), scheme)
    return qparams_from_range(lo, hi, scheme)


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


def sqnr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    noise = (x.float() - y.float()).pow(2).mean()
    return float(10 * torch.log10(x.float().pow(2).mean() / noise.clamp(min=1e-30)))
