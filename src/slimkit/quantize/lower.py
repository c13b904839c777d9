"""slimkit's int8 simulation as a PT2E-style quantized program, for the runtimes that read one (LiteRT through
litert-torch, ExecuTorch through its XNNPACK partitioner).

A :class:`~slimkit.quantize.static.QuantizedModel` already holds every decision slimkit made: the activation
scales its calibrators chose (min-max, percentile, entropy, MSE, per layer), the per-channel weight codes after
BN folding, cross-layer equalization, bias correction, QAT or mixed precision. This module writes exactly those
numbers as ``quantized_decomposed`` quantize/dequantize ops around the float ops, the graph ``convert_pt2e``
produces from a stock quantizer, so each runtime's own converter fuses them into its integer kernels. The stock
``prepare_pt2e`` would re-observe the activations and re-round the weights; lowering the simulation instead keeps
the runtime's int8 model equal to the one slimkit measured (checked by each runtime's export: agreement with the
simulation on test samples).

Integer grids: activations are unsigned 8-bit in slimkit's ONNX scheme (``u8``); the runtimes want signed int8,
which is the same grid shifted by 128 (zero point - 128), so values are unchanged. Weights are symmetric signed
codes (7-bit on AVX2 CPUs without VNNI, 2-8 bit under QAT or mixed precision) stored in int8 containers. A model
whose output is float (the logits, by default) gets an output quantizer calibrated by min-max on the calibration
split, so the artifact is integer end to end (what microcontrollers run)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..core.errors import ExportError
from .modules import ActQuant, InputQuantLayer, QuantLayer


def _ops():
    import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers torch.ops.quantized_decomposed

    return torch.ops.quantized_decomposed


class QDQ(nn.Module):
    """quantize_per_tensor -> dequantize_per_tensor with fixed int8 qparams (one activation tensor)."""

    def __init__(self, scale: float, zero_point: int, qmin: int = -128, qmax: int = 127):
        super().__init__()
        self.scale, self.zero_point, self.qmin, self.qmax = float(scale), int(zero_point), int(qmin), int(qmax)

    @classmethod
    def of(cls, aq: ActQuant) -> "QDQ":
        g = aq.group
        sc = g.scheme
        scale = float(g.log_scale.detach().exp()) if g.learnable else float(g.scale)
        shift = 0 if sc.signed else -128  # unsigned codes -> the same grid in int8
        return cls(scale, int(g.zero_point) + shift, sc.qmin + shift, sc.qmax + shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = _ops()
        y = q.quantize_per_tensor(x, self.scale, self.zero_point, self.qmin, self.qmax, torch.int8)
        return q.dequantize_per_tensor(y, self.scale, self.zero_point, self.qmin, self.qmax, torch.int8)


class QDQLayer(nn.Module):
    """A quantized Conv/Linear: its int8 weight codes (per output channel) dequantized into the float op, with the
    input and output quantizers slimkit placed around it. The bias is the simulation's (already on the int32 grid
    s_x * s_w, :meth:`QuantLayer.sim_bias`), in float: the converters quantize it to those same codes."""

    def __init__(self, ql: QuantLayer, name: str, fold: bool = False):
        super().__init__()
        sc = ql.scheme
        zp = ql.w_zero_point.detach()
        if sc.granularity == "per_group" or bool((zp != 0).any()):
            raise ExportError(f"layer {name}: {sc.granularity} {'asymmetric ' if (zp != 0).any() else ''}weights do "
                              "not lower to an int8 runtime (it takes symmetric per-channel or per-tensor weights)")
        self.layer = ql.layer  # the float module: its stride/padding/bias (QuantLayer._run reads ``self.layer``)
        n = ql.layer.weight.shape[0]
        scale = (ql.log_scale.detach().exp() if ql.learnable else ql.w_scale.detach()).reshape(-1).float()
        scale = scale.expand(n).clone() if scale.numel() == 1 else scale.clone()
        self.register_buffer("w_scale", scale)
        self.register_buffer("w_zp", torch.zeros(n, dtype=torch.int64))
        w = ql.qweight().detach()
        # fold: the int8 codes themselves (what ExecuTorch's XNNPACK partitioner takes); else the float weight and
        # its quantize op (litert-torch's form, as ``convert_pt2e(fold_quantize=False)`` writes it)
        self.fold = fold
        self.register_buffer("w", _ops().quantize_per_channel(w, scale, self.w_zp, 0, -127, 127, torch.int8)
                             if fold else w.clone())
        self.input_q = QDQ.of(ql.input_quant) if isinstance(ql, InputQuantLayer) and ql.input_quant.mode == "quant" \
            else None
        b = ql.sim_bias(ql.input_quant if isinstance(ql, InputQuantLayer) else ql.__dict__.get("_input_aq"))
        self.register_buffer("b", None if b is None else b.detach().clone())
        oq = getattr(ql, "output_quant", None)
        self.output_q = QDQ.of(oq) if oq is not None and oq.mode == "quant" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = _ops()
        if self.input_q is not None:
            x = self.input_q(x)
        codes = self.w if self.fold else q.quantize_per_channel(self.w, self.w_scale, self.w_zp, 0, -127, 127,
                                                                 torch.int8)
        w = q.dequantize_per_channel(codes, self.w_scale, self.w_zp, 0, -127, 127, torch.int8)
        y = QuantLayer._run(self, x, w, self.b)
        return y if self.output_q is None else self.output_q(y)


class OutputQDQ(nn.Module):
    """The lowered model with its float output quantized (calibrated min-max on the calibration split)."""

    def __init__(self, model: nn.Module, q: QDQ):
        super().__init__()
        self.model = model
        self.q = q

    def forward(self, *x):
        return self.q(self.model(*x))


def _swap(root: nn.Module, fold: bool) -> int:
    """Replace every quantizing module below ``root`` by its Q/DQ form; returns how many layers are int8."""
    n = 0
    for pname, parent in list(root.named_modules()):
        for cname, child in list(parent.named_children()):
            full = f"{pname}.{cname}" if pname else cname
            if isinstance(child, QuantLayer):
                if child.enabled:
                    setattr(parent, cname, QDQLayer(child, full, fold))
                    n += 1
                else:
                    setattr(parent, cname, child.layer)
            elif isinstance(child, ActQuant):
                setattr(parent, cname, QDQ.of(child) if child.mode == "quant" else nn.Identity())
    return n


def _output_quantized(prog: nn.Module, example) -> bool:
    ep = torch.export.export(prog, tuple(example))
    out = next(n for n in ep.graph.nodes if n.op == "output")
    srcs = [a for a in out.args[0] if isinstance(a, torch.fx.Node)] if isinstance(out.args[0], (tuple, list)) \
        else [out.args[0]]
    return all("dequantize" in str(getattr(s, "target", "")) for s in srcs)


@torch.no_grad()
def lower_quantized(qm: nn.Module, data, *, fold_weights: bool = False) -> nn.Module:
    """The Q/DQ program of slimkit's quantized model ``qm`` (not modified), integer end to end: a float output is
    given a quantizer calibrated on ``data``'s calibration split. ``fold_weights``: int8 weight constants instead
    of float weights with a quantize op (the form ExecuTorch's partitioner wants)."""
    m = copy.deepcopy(qm).eval()
    if _swap(m, fold_weights) == 0:
        raise ExportError("no layer of this model is quantized: nothing to lower to an int8 runtime")
    example = data.example_inputs(1)
    if _output_quantized(m, example):
        return m
    calib = data.calib.slice(0, min(256, len(data.calib)))
    y = m(*calib.inputs).float()
    lo, hi = min(float(y.min()), 0.0), max(float(y.max()), 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    zp = int(max(-128, min(127, round(-128 - lo / scale))))
    return OutputQDQ(m, QDQ(scale, zp)).eval()
