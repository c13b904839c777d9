"""Fake-quant modules. They simulate integer execution in PyTorch (for
accuracy work, calibration and QAT) and export to ONNX as
QuantizeLinear/DequantizeLinear pairs with the same scales and zero points."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .calibrate import Observer
from .scheme import QScheme, compute_qparams, qparams_from_range


class ActQuant(nn.Module):
    """Per-tensor activation fake-quant. Modes: ``observe`` (collect ranges,
    pass through), ``quant`` (fake-quantize), ``off`` (pass through).

    Several ActQuant modules may share one :class:`QGroup` so that tensors
    linked by data-movement ops (max-pool, flatten) use identical qparams and
    ONNX Runtime can drop the pairs around those ops.
    """

    def __init__(self, group: "QGroup", keep_inputs: int = 0):
        super().__init__()
        self.group = group
        self.mode = "observe"
        self.keep_inputs = keep_inputs  # for calibrator "auto": inputs of the layer this feeds
        self.inputs: list[torch.Tensor] = []
        self.consumer: Optional[str] = None
        self.const_qparams: Optional[tuple[float, int]] = None  # set by ``constant_qparams`` for torch.export

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.group
        if self.mode == "observe":
            if g.owner is self:
                g.observer.observe(x)
            if self.keep_inputs and sum(len(t) for t in self.inputs) < self.keep_inputs:
                self.inputs.append(x.detach()[: self.keep_inputs - sum(len(t) for t in self.inputs)])
            return x
        if self.mode == "off":
            return x
        if g.learnable:  # QAT with learnable scale (LSQ-style straight-through)
            return _lsq(x, g.log_scale.exp(), g.zero_point, g.scheme.qmin, g.scheme.qmax)
        if self.const_qparams is not None:
            return _qdq_tensor(x, *self.const_qparams, g.scheme.qmin, g.scheme.qmax)
        return torch.fake_quantize_per_tensor_affine(x, float(g.scale), int(g.zero_point), g.scheme.qmin,
                                                     g.scheme.qmax)


def _decomposed():
    """The ``quantized_decomposed`` quantize/dequantize ops of the PyTorch 2 quantization flow: torch.export
    captures them (the ``fake_quantize_*`` ops have no fake-tensor kernel) and the torch.export-based ONNX exporter
    writes them as QuantizeLinear/DequantizeLinear."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers torch.ops.quantized_decomposed

    return torch.ops.quantized_decomposed


def _qdq_tensor(x, scale: float, zp: int, qmin: int, qmax: int):
    qd = _decomposed()
    dt = torch.int8 if qmin < 0 else torch.uint8
    return qd.dequantize_per_tensor(qd.quantize_per_tensor(x, scale, zp, qmin, qmax, dt), scale, zp, qmin, qmax, dt)


def _qdq_channel(w, scale, zp, qmin: int, qmax: int):
    qd = _decomposed()
    dt = torch.int8 if qmin < 0 else torch.uint8
    return qd.dequantize_per_channel(qd.quantize_per_channel(w, scale, zp, 0, qmin, qmax, dt), scale, zp, 0, qmin,
                                     qmax, dt)


@contextlib.contextmanager
def constant_qparams(model: nn.Module) -> Iterator[None]:
    """Inside: every activation quantizer and weight of ``model`` fake-quantizes with its current scales as graph
    constants, through the ``quantized_decomposed`` ops, so that torch.export captures the fake-quant model (its
    buffers are fake tensors there, and ``float(scale)`` would be data-dependent). Used to export programs whose
    sizes depend on the batch with the torch.export-based ONNX exporter; the simulation is unchanged outside."""
    _decomposed()  # registered before the exporter builds its table of ONNX functions
    quants = [m for m in model.modules() if isinstance(m, ActQuant) and m.mode == "quant"]
    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    if any(q.group.learnable for q in quants) or any(m.learnable for m in layers):
        raise ValueError("freeze the learned scales (QAT) before exporting")
    for q in quants:
        q.const_qparams = (float(q.group.scale), int(q.group.zero_point))
    for m in layers:
        m.const_qparams = True
    try:
        yield
    finally:
        for q in quants:
            q.const_qparams = None
        for m in layers:
            m.const_qparams = None


def _lsq(x, scale, zp, qmin, qmax):
    """LSQ (Esser et al. 2020): round with a straight-through estimator, so the
    gradient reaches both x (inside the clip range) and the scale."""
    v = x / scale + zp
    v = v + (torch.round(v) - v).detach()
    return (torch.clamp(v, qmin, qmax) - zp) * scale


class LearnableScale(nn.Module):
    """QAT support shared by activation groups and weight layers: the scale
    buffer named ``_scale_attr`` can be trained in log space (LSQ) and frozen back."""

    _scale_attr = "scale"

    def __init__(self):
        super().__init__()
        self.log_scale = None

    @property
    def learnable(self) -> bool:
        return self.log_scale is not None

    def make_learnable(self) -> None:
        self.log_scale = nn.Parameter(getattr(self, self._scale_attr).clone().log())

    def freeze(self) -> None:
        if self.learnable:
            getattr(self, self._scale_attr).copy_(self.log_scale.detach().exp())
            self.log_scale = None


class QGroup(LearnableScale):
    """Shared quantization parameters of one activation tensor (and of the
    tensors linked to it by data-movement ops)."""

    def __init__(self, scheme: QScheme, name: str):
        super().__init__()
        self.scheme = scheme
        self.name = name
        self.observer = Observer()
        self._owner: list = [None]  # the ActQuant that observes (a list, so that it is not a submodule)
        self.calibrator = ""
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))

    @property
    def owner(self) -> Optional["ActQuant"]:
        return self._owner[0]

    def set_owner(self, aq: "ActQuant") -> None:
        # not an attribute assignment: nn.Module would register aq as a submodule and make a cycle
        self._owner[0] = aq

    def set_range(self, lo: float, hi: float) -> None:
        s, z = qparams_from_range(torch.tensor(lo), torch.tensor(hi), self.scheme)
        self.scale.copy_(s)
        self.zero_point.copy_(z)


class QuantLayer(LearnableScale):
    """Conv1d/Conv2d/Linear with a per-channel (or per-tensor) fake-quantized weight."""

    def __init__(self, layer: nn.Module, scheme: QScheme):
        super().__init__()
        if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            raise TypeError(f"QuantLayer wraps Conv1d/Conv2d/Linear, not {type(layer).__name__}")
        self.layer = layer
        self.scheme = scheme
        self.enabled = True
        s, z = compute_qparams(layer.weight, scheme)
        self.register_buffer("w_scale", s.reshape(-1).float())
        self.register_buffer("w_zero_point", z.reshape(-1).to(torch.int32))
        self.const_qparams: Optional[bool] = None  # set by ``constant_qparams``

    _scale_attr = "w_scale"

    def __getattr__(self, name: str):
        # drop-in: the model's own code may read the layer's attributes (``weight.dtype``, ``in_features``,
        # ``stride``) through the wrapper
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("layer")
            if inner is None or name.startswith("__"):
                raise
            return getattr(inner, name)

    def freeze(self) -> None:
        """End QAT: fix the learned scales and keep every weight inside the scheme's code range."""
        super().freeze()
        s = self.w_scale.reshape([-1] + [1] * (self.layer.weight.ndim - 1))
        with torch.no_grad():
            self.layer.weight.copy_(torch.maximum(torch.minimum(self.layer.weight, s * self.scheme.qmax),
                                                  s * self.scheme.qmin))

    def refresh(self) -> None:
        """Recompute weight qparams after the float weights changed."""
        s, z = compute_qparams(self.layer.weight, self.scheme)
        self.w_scale.copy_(s.reshape(-1))
        self.w_zero_point.copy_(z.reshape(-1).to(torch.int32))

    def qweight(self) -> torch.Tensor:
        w = self.layer.weight
        if not self.enabled:
            return w
        sc = self.scheme
        # the clamp uses the 8-bit container range (what ONNX QuantizeLinear allows); the scale comes from
        # ``scheme.bits``, so codes of fewer bits never reach the container's bounds
        lo, hi = (-128, 127) if sc.signed else (0, 255)
        if self.learnable:
            s = self.log_scale.exp().reshape([-1] + [1] * (w.ndim - 1))
            return _lsq(w, s, 0, sc.qmin, sc.qmax)
        if self.const_qparams:  # torch.export: per-channel ops take the scales as tensors (lifted as constants)
            n = w.shape[0]
            return _qdq_channel(w, self.w_scale.expand(n), self.w_zero_point.expand(n), lo, hi)
        if sc.granularity == "per_channel":
            return torch.fake_quantize_per_channel_affine(w, self.w_scale, self.w_zero_point, 0, lo, hi)
        return torch.fake_quantize_per_tensor_affine(w, float(self.w_scale[0]), int(self.w_zero_point[0]), lo, hi)

    def feeds_from(self, aq: "ActQuant") -> None:
        """The activation quantizer in front of this layer (graph mode): its scale sets the int32 bias grid."""
        object.__setattr__(self, "_input_aq", aq)  # a plain reference: the quantizer belongs to the graph

    def sim_bias(self, aq: Optional["ActQuant"]):
        """The bias as the deployed integer kernel adds it: int32 codes on the grid s_x * s_w (what
        ``onnx_passes.quantize_biases`` and the LiteRT/XNNPACK converters write). Without this rounding a deep
        network accumulates a visible gap between the simulation and the file (measured: a factorized Conv1d net
        differed by up to 9 output quanta of a hidden layer; bit-exact with it). Float while calibrating, in QAT (the
        learned scales move) and where the codes would not fit int32 (the ONNX pass keeps that layer's bias float)."""
        b = self.layer.bias
        if b is None or aq is None or not self.enabled or aq.mode != "quant" or self.learnable or aq.group.learnable:
            return b
        if torch.onnx.is_in_onnx_export() or self.const_qparams:  # the file gets the int32 codes (quantize_biases)
            return b
        s = aq.group.scale * (self.w_scale if self.scheme.granularity == "per_channel" else self.w_scale[0])
        codes = b / s
        if not bool((codes.abs() < 2 ** 31 - 1).all()):
            return b
        return torch.round(codes) * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, self.qweight(), self.sim_bias(self.__dict__.get("_input_aq")))

    def _run(self, x: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
        """The wrapped layer's operation with weight ``w`` and bias ``b``."""
        m = self.layer
        if isinstance(m, nn.Linear):
            return F.linear(x, w, b)
        if isinstance(m, nn.Conv1d):
            return F.conv1d(x, w, b, m.stride, m.padding, m.dilation, m.groups)
        return F.conv2d(x, w, b, m.stride, m.padding, m.dilation, m.groups)


class InputQuantLayer(QuantLayer):
    """A QuantLayer that fake-quantizes its own input: module-level QDQ placement for models torch.fx cannot
    trace (captured by torch.export instead). In ONNX this is QuantizeLinear/DequantizeLinear in front of the
    layer, which ONNX Runtime fuses with the layer's int8 weights (QLinearConv, QGemm, MatMulIntegerToFloat)."""

    def __init__(self, layer: nn.Module, scheme: QScheme, group: "QGroup", keep_inputs: int = 0):
        super().__init__(layer, scheme)
        self.input_quant = ActQuant(group, keep_inputs)
        group.set_owner(self.input_quant)
        self.output_quant: Optional[ActQuant] = None  # set where the output goes to float ops (an add, a pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quant(x)
        y = self._run(x, self.qweight(), self.sim_bias(self.input_quant))
        return y if self.output_quant is None else self.output_quant(y)


class OutputQuant(nn.Module):
    """An activation module (ReLU, GELU...) followed by a fake-quantizer of its output: the Q after a layer's
    activation that lets ONNX Runtime run that layer in int8 end to end (QLinearConv) when the activation feeds
    float ops next. The wrapped module stays reachable as ``inner``."""

    def __init__(self, inner: nn.Module, group: "QGroup"):
        super().__init__()
        self.inner = inner
        self.quant = ActQuant(group)
        group.set_owner(self.quant)

    def forward(self, *x):
        return self.quant(self.inner(*x))
